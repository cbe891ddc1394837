"""Listing and joining paths on local disk or any fsspec filesystem (file://, memory://, s3://).

A path is a URL only when it starts with a protocol fsspec knows (``s3://``, ``memory://``,
``simplecache::s3://``); any other string is a local path, whatever it contains (``a::b.jpg``,
``x://y`` are names the OS allows).

File names that are not valid UTF-8 are shown as text (:func:`text_name`): each byte that does not
decode becomes ``\\xNN``. Every output (Parquet, CSV, JSON) holds that text; :func:`os_path` turns
it back into the OS's name when the file is opened.

A URL that carries a password (``s3://KEY:SECRET@bucket/...``) is refused by :func:`filesystem`:
the URL would be shown in messages and recorded in the outputs. :func:`mask_credentials` is the
one place that hides such credentials in any text that is shown or written.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterable

import fsspec
from fsspec.implementations.local import LocalFileSystem

from maskbatch.errors import MaskbatchError

_PROTOCOL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)(://|::)")
_ESCAPED_BYTE = re.compile(r"\\x([89a-fA-F][0-9a-fA-F])")
# `scheme://user:password@`: the user part ends at the first `:`, the password (an AWS secret
# may hold `/` and `+`) at the `@`
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^\s\"'@/:]*:[^\s\"'@]*@")
# a password-like query parameter: Azure SAS `sig=`, presigned S3 `X-Amz-Signature=`, `token=`
_SECRET_QUERY = re.compile(r"(?i)(?P<name>[?&;](?:sig|signature|x-amz-signature|x-amz-credential|"
                           r"x-amz-security-token|[a-z_-]*token|secret|password|[a-z_-]*key)=)"
                           r"[^&\s\"'#]+")
MASK = "***"


def is_url(path: str) -> bool:
    """True for an fsspec URL (a known protocol before ``://`` or ``::``), False for a local path."""
    match = _PROTOCOL.match(path)
    if not match:
        return False
    protocol = match.group(1).lower()
    return protocol in fsspec.registry or protocol in fsspec.available_protocols()


def mask_credentials(text: str, urls: Iterable[object] = ()) -> str:
    """`text` with the credentials of any URL in it, and the secret parts of `urls` wherever
    they appear in it (a storage library quotes ``KEY:SECRET@bucket`` as a bucket name), shown
    as ``***``. The one masking function: every message and record that shows a URL uses it."""
    for url in urls:
        for secret in _secrets_of(url):
            text = text.replace(secret, MASK)
    text = _USERINFO.sub(lambda m: m.group("scheme") + MASK + "@", text)
    return _SECRET_QUERY.sub(lambda m: m.group("name") + MASK, text)


def _secrets_of(url: object) -> list[str]:
    """The pieces of a URL with a `user:password@` part that may be secret: that part, and the
    host a library takes from it (`s3://KEY:SE/CRET@b`: `KEY:SE`, quoted as a bucket name)."""
    match = _USERINFO.match(url) if isinstance(url, str) else None
    if not match:
        return []
    userinfo = match.group(0)[len(match.group("scheme")):-1]
    pieces = [userinfo, userinfo.split("/", 1)[0]]
    return sorted({p for p in pieces if len(p) > 1}, key=len, reverse=True)


def has_credentials(url: str) -> bool:
    """True for a URL that carries a password (`scheme://user:password@...`)."""
    return bool(_secrets_of(url))


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem behind a path or URL, and the path within it."""
    if not is_url(url):
        return LocalFileSystem(), os.path.abspath(url).replace(os.sep, "/")
    if has_credentials(url):
        raise MaskbatchError(
            f"{mask_credentials(url, [url])}: credentials in a URL are not accepted (they would "
            "be shown and recorded with it); give them in the environment (AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_*) or in "
            "fsspec's configuration")
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise MaskbatchError(f"cannot open {url}: {exc}") from None


def full_path(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A path that a worker can read back: plain for local disk, protocol-qualified otherwise."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if protocol in ("file", "local") else fs.unstrip_protocol(path)


def join(url: str, *parts: str) -> str:
    if "://" in url:
        return posixpath.join(url, *parts)
    return posixpath.join(url.rstrip("/") or "/", *parts)


def is_dir(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.isdir(path)


def list_files(url: str, extensions: tuple[str, ...]) -> list[str]:
    """Sorted full paths of the files directly in a folder whose names end in `extensions`."""
    fs, path = filesystem(url)
    if not fs.isdir(path):
        raise MaskbatchError(f"not a folder: {url}")
    names = [p for p in fs.ls(path, detail=False) if p.lower().endswith(extensions)]
    return sorted(full_path(fs, p) for p in names if fs.isfile(p))


def basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/"))


def text_name(name: str) -> str:
    """A name as the OS gave it (undecodable bytes as surrogates) made into valid text.

    Valid UTF-8 names are returned unchanged; in others each undecodable byte becomes ``\\xNN``.
    """
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def os_path(path: str) -> str:
    """The OS's name of a local path written by :func:`text_name` (``\\xNN`` back to its byte).

    A path that exists as written wins, so a name that really contains ``\\x80`` still opens.
    """
    if "\\x" not in path or os.path.lexists(path):
        return path
    raw = _ESCAPED_BYTE.sub(lambda m: chr(0xDC00 + int(m.group(1), 16)), path)
    try:
        return os.fsdecode(os.fsencode(raw))
    except UnicodeError:
        return path

"""Listing and joining paths on local disk or any fsspec filesystem (file://, memory://, s3://)."""

from __future__ import annotations

import posixpath

import fsspec

from maskbatch.errors import MaskbatchError


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem behind a path or URL, and the path within it."""
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

"""Object storage (s3://, gs://, az://) as a first-class path: readable errors, bucket checks,
and no temporary objects left behind.

fsspec does the reading and writing (s3fs, gcsfs, adlfs: the extras `maskbatch[s3]`, `[gcs]`,
`[azure]`). What this module adds:

- :func:`describe_error`: one line for a user instead of a storage library's traceback (no
  credentials, a bucket that does not exist, an invalid bucket name, access denied, a missing
  back-end package, a full file system), credentials masked (files.mask_credentials).
- :func:`check_output_bucket`: `--out s3://bucket/...` into a bucket that does not exist is an
  error; fsspec would otherwise create the bucket, in some default region, with default settings.
- :func:`remove_temporaries`: the atomic writers write `NAME.tmp-XXXXXXXX` and rename it into
  place; on an object store a rename is a copy and a delete, and a run killed in between leaves
  the temporary object behind. predict removes such leftovers of an interrupted run.
"""

from __future__ import annotations

import errno
import os
import re

from maskbatch import files
from maskbatch.errors import MaskbatchError

OBJECT_STORES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs",
                 "abfs": "adlfs", "abfss": "adlfs"}
EXTRAS = {"s3fs": "s3", "gcsfs": "gcs", "adlfs": "azure"}
TEMPORARY = re.compile(r"\.tmp-[0-9a-f]{8}$")

_CREDENTIAL_ERRORS = {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
                      "DefaultCredentialsError", "RefreshError", "ClientAuthenticationError",
                      "CredentialUnavailableError"}
_CREDENTIAL_HINT = {
    "s3": "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run where an IAM "
          "role grants access",
    "gs": "set GOOGLE_APPLICATION_CREDENTIALS or run `gcloud auth application-default login`",
    "az": "set AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY or "
          "AZURE_STORAGE_CONNECTION_STRING, or sign in with `az login`",
}


def protocol(url: str) -> str | None:
    """The object-store protocol of a URL (s3, gs, az, ...), or None for anything else."""
    if "://" not in url:
        return None
    scheme = url.split("://", 1)[0].lower()
    return scheme if scheme in OBJECT_STORES else None


def _family(scheme: str | None) -> str:
    return {"s3a": "s3", "gcs": "gs", "abfs": "az", "abfss": "az"}.get(scheme or "", scheme or "")


def bucket_of(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[0]


def _names(exc: BaseException) -> set[str]:
    names = set()
    seen: BaseException | None = exc
    while seen is not None:
        names.update(cls.__name__ for cls in type(seen).__mro__)
        seen = seen.__cause__ or seen.__context__
    return names


def _codes(exc: BaseException) -> set[str]:
    codes = set()
    seen: BaseException | None = exc
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            codes.add(str(response.get("Error", {}).get("Code", "")))
        seen = seen.__cause__ or seen.__context__
    return codes


def describe_error(exc: BaseException, urls: list[str | None], out: str | None = None
                   ) -> str | None:
    """One line for a storage failure (object storage, or a full file system) while using `urls`
    (`out`: the one written to, when known), or None if it is not one. Credentials in the URLs
    never appear in it."""
    shown = [u for u in [*urls, out] if isinstance(u, str)]
    message = _no_space(exc, shown, out) or _object_store_error(exc, shown)
    return None if message is None else files.mask_credentials(message, shown)


def _object_store_error(exc: BaseException, urls: list[str]) -> str | None:
    stores = [u for u in urls if protocol(u)]
    if not stores:
        return None
    url = stores[0]
    family = _family(protocol(url))
    names, codes = _names(exc), _codes(exc)
    if names & _CREDENTIAL_ERRORS:
        return (f"no credentials for {url}: {_CREDENTIAL_HINT.get(family, 'configure them')} "
                f"({type(exc).__name__})")
    if "NoSuchBucket" in codes or "ContainerNotFound" in codes:
        return f"bucket not found: {bucket_of(url)} (for {url})"
    if "ParamValidationError" in names and "Invalid bucket name" in str(exc):
        quoted = re.search(r'Invalid bucket name "([^"]*)"', str(exc))
        bucket = quoted.group(1) if quoted else ""
        url = next((u for u in stores if bucket_of(u) == bucket), url)
        return (f"invalid bucket name {bucket_of(url)!r} in {url}: a bucket name is 3 to 63 "
                "lowercase letters, digits, dots and hyphens (credentials go in the environment, "
                "not in the URL)")
    if codes & {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403",
                "ExpiredToken", "AuthorizationFailure"} or isinstance(exc, PermissionError):
        return f"access denied to {url}: check the credentials and the bucket's permissions " \
               f"({str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__})"
    if names & {"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError",
                "ServiceRequestError"}:
        return f"cannot reach the storage service for {url} ({type(exc).__name__}: " \
               f"{str(exc).splitlines()[0][:200] if str(exc) else ''})"
    return None


_FULL_BYTES = 1 << 20  # a file system with less than this free for writing counts as full


def _no_space(exc: BaseException, urls: list[str], out: str | None) -> str | None:
    """A write that failed for want of space (ENOSPC, EDQUOT; from the driver or re-raised from
    a worker), named by the folder whose file system is full."""
    seen: BaseException | None = exc
    while seen is not None and not (
            isinstance(seen, OSError) and (seen.errno in (errno.ENOSPC, errno.EDQUOT)
                                           or "No space left on device" in str(seen))):
        seen = seen.__cause__ or seen.__context__
    if seen is None:
        return None
    then = "free some space and run again with --resume (what was committed is kept)"
    if out is not None and _is_full(out) is not False:
        return f"no space left on --out {out}; {then}"
    full = [u for u in urls if _is_full(u)]
    if full:
        return f"no space left on {full[-1]} (its file system is full); {then}"
    where = f" writing {seen.filename}" if getattr(seen, "filename", None) else ""
    return f"no space left on device{where}; {then}"


def _is_full(url: str) -> bool | None:
    """Whether the local file system of `url` (or of its nearest existing parent) is full;
    None for object storage or where it cannot be told."""
    if files.is_url(url):
        return None
    path = os.path.abspath(files.os_path(url))
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        st = os.statvfs(path)
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize < _FULL_BYTES


def check_output_bucket(url: str) -> None:
    """Refuse to write under an object-store bucket that does not exist (fsspec would create it).

    A role allowed to write under a prefix but not to look at the bucket itself passes: only a
    bucket that is known to be missing, or missing credentials, stop the run here."""
    if not protocol(url):
        return
    fs, _ = files.filesystem(url)
    bucket = bucket_of(url)
    try:
        fs.info(bucket)
    except FileNotFoundError:
        raise MaskbatchError(f"bucket not found: {bucket} (for --out {url}); create it first, "
                             "maskbatch does not create buckets") from None
    except PermissionError:
        return
    except Exception as exc:  # noqa: BLE001 - turned into one line where it is a storage error
        message = describe_error(exc, [url])
        if message and not message.startswith("access denied"):
            raise MaskbatchError(message) from None
        if not message:
            raise


def remove_temporaries(out_dir: str) -> list[str]:
    """Delete the `*.tmp-XXXXXXXX` leftovers of interrupted writes under `out_dir`; their paths."""
    fs, path = files.filesystem(out_dir)
    if not fs.exists(path):
        return []
    leftovers = [p for p in fs.find(path) if TEMPORARY.search(p)]
    for p in leftovers:
        fs.rm(p)
    return leftovers


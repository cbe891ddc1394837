"""Read one photo within its budget (bytes, pixels, seconds): local files, fsspec URLs, refusals."""

from __future__ import annotations

import errno
import math
import os
import queue
import stat
import threading
from collections.abc import Callable

import numpy as np
from fsspec.implementations.local import LocalFileSystem

from maskbatch import files
from maskbatch.config import MAX_BYTES, InputLimits
from maskbatch.errors import ImageError, MaskbatchError, SkippedInput
from maskbatch.photos.decoding import Photo, decode_photo, first_line


def read_bytes(path: str, max_bytes: int = MAX_BYTES) -> bytes:
    """The bytes of one regular file, local path or fsspec URL, at most `max_bytes` of them.

    Only regular files are read (symbolic links are followed to one): a folder, FIFO, device or
    socket is never opened for reading, so it cannot block or stream forever. Raises SkippedInput
    for entries that are not photo files, ImageError for a file that cannot be read.
    """
    refusal = refused_reason(path)
    if refusal is not None:
        status, reason = refusal
        raise (SkippedInput if status == "skipped" else ImageError)(reason)
    if not files.is_url(path):
        return _read_local(files.os_path(path), max_bytes)
    fs, local = files.filesystem(path)
    if isinstance(fs, LocalFileSystem):  # file:// URLs get the same checks as plain paths
        return _read_local(files.os_path(local), max_bytes)
    return _read_remote(path, max_bytes)


def _read_local(path: str, max_bytes: int) -> bytes:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise SkippedInput("broken symbolic link (its target does not exist)") from None
        raise ImageError("missing file") from None
    except OSError as exc:
        raise _os_error(exc) from None
    _check_kind(st.st_mode)
    _check_size(st.st_size, max_bytes)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _os_error(exc) from None
    try:
        _check_kind(os.fstat(fd).st_mode)  # replaced by something else since the stat above
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            total += len(chunk)
            _check_size(total, max_bytes)
    except OSError as exc:
        raise _os_error(exc) from None
    finally:
        os.close(fd)


def _read_remote(url: str, max_bytes: int) -> bytes:
    try:
        fs, path = files.filesystem(url)
        info = fs.info(path)
        if info.get("type") == "directory":
            raise SkippedInput("a folder, not a photo")
        if info.get("size") is not None:
            _check_size(int(info["size"]), max_bytes)
        with fs.open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise ImageError("missing file") from None
    except (ImageError, MaskbatchError):
        raise
    except Exception as exc:  # any filesystem's own errors: the photo fails, the job goes on
        raise ImageError(f"unreadable file: {type(exc).__name__}: {first_line(exc)}") from None
    _check_size(len(data), max_bytes)
    return data


_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _check_kind(mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise SkippedInput("a folder, not a photo")
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    raise SkippedInput(f"{kind}, not a regular file: not read")


def _check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise ImageError(f"larger than the {_megabytes(max_bytes)} limit per photo "
                         f"({_megabytes(size)} or more; see --max-bytes)")


def _megabytes(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n < 10 * 2**20 else f"{n / 2**20:.0f} MB"


def _os_error(exc: OSError) -> ImageError:
    if exc.errno == errno.ELOOP:
        return SkippedInput("symbolic link loop")
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return ImageError("missing file")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return ImageError("permission denied: the file cannot be read")
    return ImageError(f"unreadable file: {exc.strerror or type(exc).__name__}")


# A path that starts with NUL (never part of a real path) carries a decision made while listing
# the inputs (a template name outside the images folder...): the worker writes it as the photo's
# row without opening anything.
_REFUSED = "\0"


def refused_path(status: str, reason: str) -> str:
    """A stand-in path that makes the worker record `status` ('failed' or 'skipped') and `reason`."""
    return f"{_REFUSED}{status}{_REFUSED}{reason}"


def refused_reason(path: str) -> tuple[str, str] | None:
    """(status, reason) of a path made by refused_path, else None."""
    if not path.startswith(_REFUSED):
        return None
    status, _, reason = path[1:].partition(_REFUSED)
    return status, reason


def load_image(path: str, limits: InputLimits = InputLimits()) -> np.ndarray:
    """read_bytes + decode_image, within the per-photo budget."""
    return load_photo(path, limits).image


def load_photo(path: str, limits: InputLimits = InputLimits()) -> Photo:
    """Read and decode one photo within `limits`: bytes, pixels and time.

    Reading and decoding run in a helper thread; a photo that takes longer than
    ``limits.read_timeout`` fails with that reason and the caller goes on to the next one (the
    helper is left to finish or block on its own; it holds no lock).
    """
    return _within(limits.read_timeout, lambda: decode_photo(read_bytes(path, limits.max_bytes),
                                                             limits.max_pixels))


def _within(seconds: float, work: Callable[[], Photo]) -> Photo:
    if not seconds or not math.isfinite(seconds) or seconds <= 0:
        return work()
    helper = _helper()
    done, box = threading.Event(), {}
    helper.put((work, box, done))
    if not done.wait(seconds):
        _helpers.current = None  # that helper is stuck: the next photo gets a new one
        raise ImageError(f"gave up after {seconds:g} s reading and decoding it (see "
                         "--read-timeout): a stuck file system or a file that never ends?")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


# One long-lived helper thread per calling thread (a Dask worker thread), reused photo after photo:
# the hand-over costs about 0.1 ms of CPU per photo against 3-4 ms to decode one
# (benchmarks/bench_read.py). A helper stuck in a read is left behind and replaced.
_helpers = threading.local()


def _helper() -> queue.SimpleQueue:
    inbox = getattr(_helpers, "current", None)
    if inbox is None:
        inbox = queue.SimpleQueue()
        threading.Thread(target=_serve, args=(inbox,), name="maskbatch-read", daemon=True).start()
        _helpers.current = inbox
    return inbox


def _serve(inbox: queue.SimpleQueue) -> None:
    while True:
        work, box, done = inbox.get()
        try:
            box["value"] = work()
        except BaseException as exc:  # handed to the waiting thread
            box["error"] = exc
        finally:
            done.set()
        del work, box, done


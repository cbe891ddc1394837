"""Read and decode any image file to 8-bit BGR (or say clearly why not); gamma; boxes and crops.

Every photo is read within a budget (maskbatch.config.InputLimits): only regular files, at most
so many bytes, so many pixels (checked in the header, before decoding) and so many seconds.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import io
import math
import os
import queue
import re
import stat
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from fsspec.implementations.local import LocalFileSystem

from maskbatch import files
from maskbatch.config import MAX_BYTES, MAX_PIXELS, InputLimits
from maskbatch.errors import ImageError, MaskbatchError, SkippedInput

# Formats OpenCV decodes, recognised from the file's first bytes (a photo's name may lie).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".tif", ".tiff",
                    ".gif", ".pbm", ".pgm", ".ppm", ".pnm")
# Photo formats a folder may hold that are not decoded here: listed in the manifest as skipped.
OTHER_PHOTO_EXTENSIONS = (".heic", ".heif", ".avif", ".jp2", ".j2k", ".jxl", ".svg", ".ico",
                          ".psd", ".dng", ".cr2", ".nef", ".arw", ".raw")
PHOTO_EXTENSIONS = IMAGE_EXTENSIONS + OTHER_PHOTO_EXTENSIONS

_SIGNATURES = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "jpeg 2000"),
    (b"\xff\x4f\xff\x51", "jpeg 2000"),
    (b"\xff\x0a", "jpeg xl"),
    (b"8BPS", "photoshop"),
)
_ISO_BRANDS = {b"heic": "heic", b"heix": "heic", b"hevc": "heic", b"heim": "heic", b"heis": "heic",
               b"mif1": "heic", b"msf1": "heic", b"avif": "avif", b"avis": "avif"}
# Formats sniffed here that this OpenCV build may not decode: skipped (not failed) when it cannot.
_MAYBE_UNSUPPORTED = {"heic", "avif", "jpeg 2000", "jpeg xl", "photoshop"}
_MULTI_PAGE = {"tiff": "page", "gif": "frame"}


def sniff_format(data: bytes) -> str | None:
    """The image format named by the file's first bytes (not by its extension), or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[4:8] == b"ftyp" and data[8:12] in _ISO_BRANDS:
        return _ISO_BRANDS[data[8:12]]
    if len(data) > 2 and data[:1] == b"P" and data[1:2] in b"123456" and data[2:3] in b" \t\r\n":
        return "pnm"
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            return name
    return None


@dataclass
class Photo:
    """A decoded photo and a note on what was read when the file holds more than one picture."""

    image: np.ndarray
    note: str = ""


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


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else ""


# --------------------------------------------------------------------------- refusals

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


# --------------------------------------------------------------------------- decoding


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode file bytes to an 8-bit, 3-channel BGR array.

    Any channel count (grey, BGRA) and bit depth (16-bit PNG) is converted, as ``cv2.imread(path, 1)``
    did in the notebook. The format is recognised from content, so a WebP named ``.jpg`` decodes.
    Raises ImageError with the reason (empty, not an image, truncated, too many pixels, undecodable).
    """
    return decode_photo(data, max_pixels).image


def decode_photo(data: bytes, max_pixels: int = MAX_PIXELS) -> Photo:
    """decode_image, and a note on what was read from a multi-page TIFF or an animated GIF."""
    if not data:
        raise ImageError("empty file")
    kind = sniff_format(data)
    if kind == "jpeg" and _jpeg_is_truncated(data):
        raise ImageError("truncated JPEG (no end-of-image marker after the scan data)")
    header = _header(data, kind)
    if header is not None:
        width, height, _ = header
        if width * height > max_pixels:
            raise ImageError(f"{width} x {height} pixels, over the {max_pixels / 1e6:g} megapixel "
                             "limit per photo (see --max-pixels)")
        if width * height == 0:
            raise ImageError(f"its header says {width} x {height} pixels")
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise ImageError(f"cannot decode {kind or 'it'}: {plain_cv_error(exc)}") from None
    if image is None or image.size == 0:
        if kind is None:
            raise ImageError("not an image (unrecognised file signature)")
        if kind in _MAYBE_UNSUPPORTED:
            raise SkippedInput(f"{kind.upper() if len(kind) < 5 else kind} image: a format this "
                               "OpenCV build does not decode")
        raise ImageError(f"cannot decode {kind} (corrupt, truncated or too large)")
    note = ""
    if header is not None and header[2] > 1:
        what = _MULTI_PAGE.get(kind or "", "page")
        source = "animated GIF" if kind == "gif" else f"multi-page {(kind or 'file').upper()}"
        note = f"{what} 1 of {header[2]} read ({source}; the others are not)"
    return Photo(image, note)


def _header(data: bytes, kind: str | None) -> tuple[int, int, int] | None:
    """(width, height, pages) from the file's header without decoding pixels, or None if unknown."""
    from PIL import Image

    # maskbatch applies its own pixel limit (above); Pillow's bomb check would only hide the size
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            pages = int(getattr(im, "n_frames", 1)) if kind in _MULTI_PAGE else 1
            return int(width), int(height), pages
    except Exception:  # unknown to Pillow, or a header Pillow cannot finish: read it by hand
        return _fixed_header(data, kind)


def _fixed_header(data: bytes, kind: str | None) -> tuple[int, int, int] | None:
    """(width, height, 1) of the formats whose size sits at a fixed place in the header."""
    try:
        if kind == "png" and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
        elif kind == "gif":
            width, height = struct.unpack("<HH", data[6:10])
        elif kind == "bmp":
            width, height = struct.unpack("<ii", data[18:26])
        else:
            return None
    except struct.error:
        return None
    return abs(width), abs(height), 1


_CV_ASSERT = re.compile(r"\(-?\d+:[^)]*\)\s*(.*?)\s+in function\s+'([^']*)'", re.S)
_BUILD_PATH = re.compile(r"\S*/\S+\.(?:cpp|hpp|h|c):\d+:?\s*")


def plain_cv_error(exc: BaseException) -> str:
    """OpenCV's error text without its version, build path and assertion syntax."""
    text = str(exc)
    if "CV_IO_MAX_IMAGE_PIXELS" in text or "validateInputImageSize" in text:
        return "too many pixels for the decoder"
    match = _CV_ASSERT.search(text)
    detail = match.group(1) if match else (text.strip().splitlines() or [""])[-1]
    detail = _BUILD_PATH.sub("", re.sub(r"OpenCV\([^)]*\)\s*", "", detail)).strip(" :")
    return f"the decoder refused it ({detail[:100]})" if detail else "the decoder refused it"


def _jpeg_is_truncated(data: bytes) -> bool:
    # A complete JPEG has its end-of-image marker after the start of its last scan.
    last_scan = data.rfind(b"\xff\xda")
    return data.rfind(b"\xff\xd9") < max(last_scan, 2)


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


def adjust_gamma(image: np.ndarray, gamma: float = 1.0) -> np.ndarray:
    """The notebook's gamma correction, bit for bit (its table is truncated to uint8, not rounded)."""
    if gamma == 1.0:
        return image
    return cv2.LUT(image.astype(np.uint8), _gamma_table(gamma))


@functools.lru_cache(maxsize=8)
def _gamma_table(gamma: float) -> np.ndarray:
    inv_gamma = 1.0 / gamma
    table = np.array([((i / 255.0) ** inv_gamma) * 255 for i in np.arange(0, 256)])
    return table.astype(np.uint8)


def clip_box(box: tuple[float, float, float, float], width: int, height: int
             ) -> tuple[int, int, int, int] | None:
    """Integer box (x1, y1, x2, y2) clipped to the image, or None when nothing of it is left."""
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    x1, x2 = max(0, min(x1, width)), max(0, min(x2, width))
    y1, y2 = max(0, min(y1, height)), max(0, min(y2, height))
    if x2 <= x1 or y2 <= y1:
        return None
    return x1, y1, x2, y2


def crop(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The pixels inside a clipped box (a view, not a copy)."""
    x1, y1, x2, y2 = box
    return image[y1:y2, x1:x2]


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Square resize with the notebook's interpolation (cv2 default, bilinear)."""
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)


def encode_png(image: np.ndarray) -> bytes:
    """Lossless PNG bytes of a BGR image."""
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ImageError("cannot encode crop as PNG")
    return buf.tobytes()


def pixel_hash(image: np.ndarray) -> str:
    """Content hash of an image's pixels and shape: equal for byte-identical crops."""
    h = hashlib.sha1(str(image.shape).encode())
    h.update(np.ascontiguousarray(image).data)
    return h.hexdigest()

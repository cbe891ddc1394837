"""Decode any image file's bytes to 8-bit BGR, or say clearly why not: formats, headers, pixel limits."""

from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from maskbatch.config import MAX_JPEG_SCANS, MAX_PIXELS
from maskbatch.errors import ImageError, SkippedInput

# Formats OpenCV decodes, recognised from the file's first bytes (a photo's name may lie).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".tif", ".tiff",
                    ".gif", ".pbm", ".pgm", ".ppm", ".pnm")


# Photo formats a folder may hold that are not decoded here: listed in the manifest as skipped.
OTHER_PHOTO_EXTENSIONS = (".heic", ".heif", ".avif", ".jp2", ".j2k", ".jxl", ".svg", ".ico",
                          ".psd", ".dng", ".cr2", ".nef", ".arw", ".raw")


# Video files, read frame by frame (maskbatch.photos.video); recognised from content too.
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm")
VIDEO_KINDS = ("mp4", "mov", "avi", "mkv/webm")


PHOTO_EXTENSIONS = IMAGE_EXTENSIONS + OTHER_PHOTO_EXTENSIONS
INPUT_EXTENSIONS = PHOTO_EXTENSIONS + VIDEO_EXTENSIONS
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


_VIDEO_BRANDS = {b"qt  ": "mov", **{brand: "mp4" for brand in (
    b"isom", b"iso2", b"iso4", b"iso5", b"iso6", b"mp41", b"mp42", b"M4V ", b"M4VP", b"avc1",
    b"dash", b"mmp4", b"f4v ", b"3gp4", b"3gp5", b"3gp6", b"3g2a", b"MSNV", b"XAVC")}}


# Formats sniffed here that this OpenCV build may not decode: skipped (not failed) when it cannot.
_MAYBE_UNSUPPORTED = {"heic", "avif", "jpeg 2000", "jpeg xl", "photoshop"}
_MULTI_PAGE = {"tiff": "page", "gif": "frame"}


def sniff_format(data: bytes) -> str | None:
    """The image or video format named by the file's first bytes (not by its extension), or None.

    Videos: ISO BMFF (`ftyp` with an MP4 or QuickTime brand), RIFF AVI, EBML (Matroska, WebM).
    """
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[4:8] == b"ftyp" and data[8:12] in _ISO_BRANDS:
        return _ISO_BRANDS[data[8:12]]
    if data[4:8] == b"ftyp" and data[8:12] in _VIDEO_BRANDS:
        return _VIDEO_BRANDS[data[8:12]]
    if data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return "avi"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "mkv/webm"
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


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else ""


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
    if kind in VIDEO_KINDS:
        raise ImageError(f"a video ({kind}) where a photo was expected (`maskbatch predict` on "
                         "a folder reads videos frame by frame)")
    if kind == "jpeg" and _jpeg_is_truncated(data):
        raise ImageError("truncated JPEG (no end-of-image marker after the scan data)")
    if kind == "jpeg" and jpeg_scan_count(data, MAX_JPEG_SCANS + 1) > MAX_JPEG_SCANS:
        raise ImageError(f"JPEG with over {MAX_JPEG_SCANS} scans (a decoding bomb: each repeated "
                         "scan decodes the whole picture again); not decoded")
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
    if header is None and image.shape[0] * image.shape[1] > max_pixels:  # no header read: after
        raise ImageError(f"{image.shape[1]} x {image.shape[0]} pixels, over the "
                         f"{max_pixels / 1e6:g} megapixel limit per photo (see --max-pixels)")
    note = ""
    if header is not None and header[2] > 1:
        what = _MULTI_PAGE.get(kind or "", "page")
        source = "animated GIF" if kind == "gif" else f"multi-page {(kind or 'file').upper()}"
        note = f"{what} 1 of {header[2]} read ({source}; the others are not)"
    return Photo(image, note)


def _header(data: bytes, kind: str | None) -> tuple[int, int, int] | None:
    """(width, height, pages) from the file's header without decoding pixels, or None if unknown."""

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


_NO_LENGTH = frozenset([0x01, *range(0xD0, 0xDA)])  # TEM, RST0-7, SOI, EOI: markers alone


def jpeg_scan_count(data: bytes, stop_at: int | None = None) -> int:
    """Start-of-scan markers (0xFFDA) of a JPEG's first picture, counted by walking its segments
    (lengths skipped, entropy-coded data scanned to its next marker), never inside the data; stops
    at the end-of-image marker, at the end of the bytes, or once `stop_at` scans are found."""
    scans, pos, n = 0, 2, len(data)
    while pos + 1 < n:
        if data[pos] != 0xFF:
            pos = data.find(b"\xff", pos)
            if pos < 0:
                break
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:
            break
        if marker in _NO_LENGTH or marker == 0x00:
            pos += 2
            continue
        if pos + 3 >= n:
            break
        end = pos + 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if marker != 0xDA:
            pos = end
            continue
        scans += 1
        if stop_at is not None and scans >= stop_at:
            break
        # entropy-coded data: up to the next 0xFF that is neither stuffed (0xFF00), nor RSTn, nor
        # a fill byte before another 0xFF (a regular expression: a Python loop over every stuffed
        # byte cost 0.5 ms a photo, a sixth of decoding it)
        found = _NEXT_MARKER.search(data, end)
        if found is None:
            return scans
        pos = found.start()
    return scans


_NEXT_MARKER = re.compile(rb"\xff(?=[^\x00\xd0-\xd7\xff])")


def _jpeg_is_truncated(data: bytes) -> bool:
    # A complete JPEG has its end-of-image marker after the start of its last scan.
    last_scan = data.rfind(b"\xff\xda")
    return data.rfind(b"\xff\xd9") < max(last_scan, 2)


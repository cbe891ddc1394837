"""Read and decode any image file to 8-bit BGR (or say clearly why not); gamma; boxes and crops."""

from __future__ import annotations

import functools
import hashlib

import cv2
import fsspec
import numpy as np

from maskbatch.errors import ImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")

_SIGNATURES = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
)


def sniff_format(data: bytes) -> str | None:
    """The image format named by the file's first bytes (not by its extension), or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            return name
    return None


def read_bytes(path: str) -> bytes:
    """The file's bytes, from a local path or any fsspec URL; ImageError if it cannot be read."""
    try:
        with fsspec.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ImageError("missing file") from None
    except (IsADirectoryError, PermissionError, OSError) as exc:
        raise ImageError(f"unreadable file: {type(exc).__name__}: {exc}") from None


def decode_image(data: bytes) -> np.ndarray:
    """Decode file bytes to an 8-bit, 3-channel BGR array.

    Any channel count (grey, BGRA) and bit depth (16-bit PNG) is converted, as ``cv2.imread(path, 1)``
    did in the notebook. The format is recognised from content, so a WebP named ``.jpg`` decodes.
    Raises ImageError with the reason (empty, not an image, truncated, undecodable).
    """
    if not data:
        raise ImageError("empty file")
    kind = sniff_format(data)
    if kind is None:
        raise ImageError("not an image (unrecognised file signature)")
    if kind == "jpeg" and _jpeg_is_truncated(data):
        raise ImageError("truncated JPEG (no end-of-image marker after the scan data)")
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise ImageError(f"cannot decode {kind}: {str(exc).strip().splitlines()[-1]}") from None
    if image is None or image.size == 0:
        raise ImageError(f"cannot decode {kind} (corrupt, truncated or too large)")
    return image


def _jpeg_is_truncated(data: bytes) -> bool:
    # A complete JPEG has its end-of-image marker after the start of its last scan.
    last_scan = data.rfind(b"\xff\xda")
    return data.rfind(b"\xff\xd9") < max(last_scan, 2)


def load_image(path: str) -> np.ndarray:
    """read_bytes + decode_image."""
    return decode_image(read_bytes(path))


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

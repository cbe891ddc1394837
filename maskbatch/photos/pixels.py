"""Pixels once decoded: gamma, boxes clipped to the image, crops, resizing, PNG bytes and hashes."""

from __future__ import annotations

import functools
import hashlib

import cv2
import numpy as np

from maskbatch.errors import ImageError


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


"""Training samples for the face detector: labelled photos -> augmented fixed-size crops + boxes.

Every labelled face box counts as a face, whatever its mask class (mask_weared_incorrect too).
Augmentation makes small faces plentiful: each sample is the photo rescaled around the scale the
`tuned` mode runs it at, with extra down-scaling, then a random square window (half of the time
centred near a face), a horizontal flip and colour jitter. Faces cut by the window edge or shrunk
below MIN_FACE pixels become ignore regions (neither face nor background), as do the photo's own
ignore regions (a teacher's unsure boxes, maskbatch.train.teacher). numpy + OpenCV only,
no TensorFlow (testable without the train extra).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from maskbatch.datasets import load_records
from maskbatch.datasets.splits import dataset_name, in_part
from maskbatch.photos import reading

MAX_SIDE = 1024  # photos are cached at most this large (the tuned mode never runs above it)
MIN_FACE = 4.0  # px after augmentation: smaller faces are ignore regions
KEEP_VISIBLE = 0.6  # a face cut by the window keeps this share of its area, else it is ignored


@dataclass
class Photo:
    """A decoded training photo (BGR uint8, at most MAX_SIDE), its face boxes (N, 4) x1y1x2y2 and
    its ignore regions (M, 4): neither face nor background (a teacher's unsure boxes)."""

    name: str
    image: np.ndarray
    faces: np.ndarray
    ignore: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))


def load_photos(datasets: list[str], part: str | None = "train") -> list[Photo]:
    """Every labelled photo of the datasets' `part` of their committed split (None: all photos)."""
    photos = []
    for root in datasets:
        records = [r for r in load_records(root) if r.problem is None and r.boxes]
        for record in in_part(records, dataset_name(root), part):
            try:
                image = reading.load_image(record.path)
            except Exception:  # noqa: BLE001 - an unreadable photo is left out of training
                continue
            faces = np.array([[b.x1, b.y1, b.x2, b.y2] for b in record.boxes if b.problem is None],
                             np.float32).reshape(-1, 4)
            scale = min(1.0, MAX_SIDE / max(image.shape[:2]))
            if scale < 1.0:
                image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
                faces *= scale
            h, w = image.shape[:2]
            faces = np.clip(faces, 0, [w, h, w, h])
            faces = faces[(faces[:, 2] - faces[:, 0] >= 1) & (faces[:, 3] - faces[:, 1] >= 1)]
            photos.append(Photo(f"{dataset_name(root)}/{record.name}", image, faces))
    return photos


def inference_scale(width: int, height: int, area: int, max_upscale: float) -> float:
    """The factor the detector mode resizes a photo of this size by."""
    return min(math.sqrt(area / (width * height)), max_upscale)


def augment(photo: Photo, size: int, rng: np.random.Generator, area: int, max_upscale: float,
            zoom: tuple[float, float] = (-1.0, 0.5)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One training sample: (image size x size x 3 float32 BGR, faces (N, 4), ignore (M, 4)).

    The photo is scaled by its inference scale times 2**U(zoom) (mostly smaller: more small
    faces), a size x size window is cut (half of the time around a random face), flipped with
    probability 0.5, and its colours jittered.
    """
    h, w = photo.image.shape[:2]
    scale = inference_scale(w, h, area, max_upscale) * 2.0 ** rng.uniform(*zoom)
    sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
    faces = photo.faces * np.array([sw / w, sh / h, sw / w, sh / h], np.float32)
    if len(faces) and rng.random() < 0.5:
        cx, cy = faces[rng.integers(len(faces))].reshape(2, 2).mean(axis=0)
        x0 = int(np.clip(cx - rng.uniform(0.1, 0.9) * size, min(0, sw - size), max(0, sw - size)))
        y0 = int(np.clip(cy - rng.uniform(0.1, 0.9) * size, min(0, sh - size), max(0, sh - size)))
    else:
        x0 = int(rng.integers(min(0, sw - size), max(0, sw - size) + 1))
        y0 = int(rng.integers(min(0, sh - size), max(0, sh - size) + 1))
    # the window in photo pixels -> one affine warp (scale + shift), grey outside the photo. The
    # boxes are in edge coordinates (pixel i spans [i, i + 1)) and warpAffine maps pixel centres,
    # hence the half pixels: without them a flipped sample's box sat 0.5 (1 + scale) px left of
    # its face, an unflipped one 0.5 (scale - 1) px off (until 2026-12-07). Detectors trained
    # since still lean 0.25-0.75 px, so most of the bundled one's lean came from elsewhere; each
    # card's pixel fit places its own detector's boxes (maskbatch.train.pixel_fit)
    ax, ay = sw / w, sh / h
    matrix = np.array([[ax, 0, 0.5 * (ax - 1) - x0], [0, ay, 0.5 * (ay - 1) - y0]], np.float32)
    flip = rng.random() < 0.5
    if flip:
        matrix[0] = [-ax, 0, size + x0 - 0.5 * (ax + 1)]
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    sample = cv2.warpAffine(photo.image, matrix, (size, size), flags=interp,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=(114, 114, 114))
    boxes = faces - np.array([x0, y0, x0, y0], np.float32)
    regions = photo.ignore * np.array([sw / w, sh / h, sw / w, sh / h], np.float32) - np.array(
        [x0, y0, x0, y0], np.float32)
    if flip:
        boxes[:, [0, 2]] = size - boxes[:, [2, 0]]
        regions[:, [0, 2]] = size - regions[:, [2, 0]]
    regions = np.clip(regions, 0, size)
    regions = regions[(regions[:, 2] > regions[:, 0]) & (regions[:, 3] > regions[:, 1])]
    clipped = np.clip(boxes, 0, size)
    area_before = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    area_after = np.prod(np.clip(clipped[:, 2:] - clipped[:, :2], 0, None), axis=1)
    visible = area_after / np.maximum(area_before, 1e-6)
    side = np.minimum(clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1])
    good = (visible >= KEEP_VISIBLE) & (side >= MIN_FACE)
    ignore = np.concatenate([clipped[~good & (area_after > 0)], regions])
    return _jitter(sample, rng), clipped[good], ignore


def _jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and saturation jitter; float32 BGR 0..255."""
    out = image.astype(np.float32)
    if rng.random() < 0.8:
        grey = out.mean(axis=2, keepdims=True)
        out = grey + (out - grey) * rng.uniform(0.6, 1.4)  # saturation
        out = (out - out.mean()) * rng.uniform(0.7, 1.3) + out.mean() + rng.uniform(-32, 32)
    if rng.random() < 0.1:
        out = np.repeat(out.mean(axis=2, keepdims=True), 3, axis=2)  # greyscale photos exist too
    return np.clip(out, 0, 255)

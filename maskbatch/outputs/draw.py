"""Annotated pictures: boxes with label and probability drawn on a photo."""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Iterable

import cv2
import numpy as np

from maskbatch.config import INCORRECT, MASK
from maskbatch.photos import reading, video

COLOURS = {MASK: (60, 180, 60), "face_no_mask": (40, 40, 230), INCORRECT: (0, 160, 240)}  # BGR
SHORT_NAMES = {INCORRECT: "mask below nose"}  # labels of an N-class model's other classes
# A preview's stem, in UTF-8 bytes: with "-" + 10 hex digits, ".jpg" and the atomic writer's
# ".tmp-XXXXXXXX" it stays far below the 255 bytes most file systems allow in a name.
PREVIEW_STEM_BYTES = 150


def preview_names(names: Iterable[str]) -> list[str]:
    """A file name under previews/ for each photo name, in order: its stem + ".jpg" where that is
    short and not taken yet, else the stem cut to PREVIEW_STEM_BYTES + "-" + a hash of the whole
    name (so `same.jpg`, `same.png` and `same` get three previews, a 300-byte name a file)."""
    taken: set[str] = set()
    out = []
    for name in names:
        stem = posixpath.splitext(posixpath.basename(name))[0] or "photo"
        chosen = f"{fitting_stem(stem, name, force=f'{stem}.jpg' in taken)}.jpg"
        taken.add(chosen)
        out.append(chosen)
    return out


def fitting_stem(stem: str, name: str, force: bool = False) -> str:
    """`stem` for a file name where it is at most PREVIEW_STEM_BYTES long and does not start with
    "." (and not `force`), else cut to that many bytes + "-" + 10 hex digits of the whole `name`."""
    raw = stem.encode("utf-8", "surrogateescape")
    if len(raw) <= PREVIEW_STEM_BYTES and not stem.startswith(".") and not force:
        return stem
    cut = raw[:PREVIEW_STEM_BYTES].decode("utf-8", "ignore").lstrip(".")
    return f"{cut}-{hashlib.sha1(name.encode('utf-8', 'surrogateescape')).hexdigest()[:10]}"


def label_text(classname: str, mask_prob: float, class_prob: float | None = None) -> str:
    """The label of a face: its class and the probability of that class (not always P(mask));
    `class_prob`: an N-class model's P(the face's class)."""
    if class_prob is not None:
        short = {MASK: "mask", "face_no_mask": "no mask"}.get(classname) or SHORT_NAMES.get(
            classname, classname)
        return f"{short} {class_prob:.2f}"
    if classname == MASK:
        return f"mask {mask_prob:.2f}"
    return f"no mask {1.0 - mask_prob:.2f}"


def label_box(left: int, top: int, text_w: int, text_h: int, width: int, height: int
              ) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of a label's background: above the face box where there is room, else
    just inside its top edge; shifted left where it would run off the right edge. Always inside
    the image (unless the label is wider or taller than the image itself)."""
    box_w, box_h = text_w + 4, text_h + 6
    x0 = int(min(max(left, 0), max(width - box_w, 0)))
    y1 = int(top) if top - box_h >= 0 else int(max(top, 0)) + box_h
    y1 = int(min(y1, height))
    return x0, max(y1 - box_h, 0), x0 + box_w, y1


def annotate(image: np.ndarray, detections: list[tuple]) -> np.ndarray:
    """A copy of `image` with (left, top, right, bottom, classname, mask_prob) boxes drawn (an
    N-class model's boxes add P(their class) as a seventh value)."""
    out = image.copy()
    height, width = out.shape[:2]
    thickness = max(1, round(max(height, width) / 500))
    for left, top, right, bottom, classname, mask_prob, *class_prob in detections:
        colour = COLOURS.get(classname, (200, 200, 0))
        cv2.rectangle(out, (int(left), int(top)), (int(right), int(bottom)), colour, thickness)
        text = label_text(classname, float(mask_prob),
                          float(class_prob[0]) if class_prob else None)
        scale = 0.4 * thickness
        (tw, th), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        x0, y0, x1, y1 = label_box(int(left), int(top), tw, th + baseline, width, height)
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), colour, -1)
        cv2.putText(out, text, (x0 + 2, y1 - 3 - baseline), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (255, 255, 255), 1, cv2.LINE_AA)
    return out


def preview_jpeg(path: str, detections: list[tuple], max_side: int = 1280) -> bytes:
    """JPEG bytes of an annotated photo (read on the worker that calls this)."""
    image = annotate(reading.load_image(path), detections)
    scale = max_side / max(image.shape[:2])
    if scale < 1:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 88])
    return buf.tobytes() if ok else b""


def face_crop(path: str, box: tuple, side: int = 160, margin: float = 0.25,
              frame: int | None = None) -> np.ndarray | None:
    """One face with a margin around it, scaled so its longer side is `side` px (for galleries),
    as a BGR image; None when the box lies outside the image. `frame`: the face is on that frame
    of the video at `path`."""
    image = reading.load_image(path) if frame is None else video.read_frame(path, frame)
    height, width = image.shape[:2]
    left, top, right, bottom = (float(v) for v in box[:4])
    pad = margin * max(right - left, bottom - top)
    x0, y0 = int(max(left - pad, 0)), int(max(top - pad, 0))
    x1, y1 = int(min(right + pad, width)), int(min(bottom + pad, height))
    if x1 <= x0 or y1 <= y0:
        return None
    crop = image[y0:y1, x0:x1]
    scale = side / max(crop.shape[:2])
    return cv2.resize(crop, None, fx=scale, fy=scale,
                      interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def face_jpeg(path: str, box: tuple, side: int = 160, margin: float = 0.25,
              frame: int | None = None) -> bytes:
    """JPEG bytes of face_crop (b"" when there is none)."""
    crop = face_crop(path, box, side, margin, frame)
    if crop is None:
        return b""
    ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return buf.tobytes() if ok else b""


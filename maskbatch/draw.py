"""Annotated pictures: boxes with label and probability drawn on a photo."""

from __future__ import annotations

import cv2
import numpy as np

from maskbatch import MASK, images

COLOURS = {MASK: (60, 180, 60), "face_no_mask": (40, 40, 230)}  # BGR


def annotate(image: np.ndarray, detections: list[tuple]) -> np.ndarray:
    """A copy of `image` with (left, top, right, bottom, classname, mask_prob) boxes drawn."""
    out = image.copy()
    thickness = max(1, round(max(out.shape[:2]) / 500))
    for left, top, right, bottom, classname, mask_prob in detections:
        colour = COLOURS.get(classname, (200, 200, 0))
        cv2.rectangle(out, (int(left), int(top)), (int(right), int(bottom)), colour, thickness)
        text = f"{'mask' if classname == MASK else 'no mask'} {mask_prob:.2f}"
        scale = 0.4 * thickness
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        y = max(int(top), th + 4)
        cv2.rectangle(out, (int(left), y - th - 4), (int(left) + tw + 4, y), colour, -1)
        cv2.putText(out, text, (int(left) + 2, y - 3), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (255, 255, 255), 1, cv2.LINE_AA)
    return out


def preview_jpeg(path: str, detections: list[tuple], max_side: int = 1280) -> bytes:
    """JPEG bytes of an annotated photo (read on the worker that calls this)."""
    image = annotate(images.load_image(path), detections)
    scale = max_side / max(image.shape[:2])
    if scale < 1:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 88])
    return buf.tobytes() if ok else b""

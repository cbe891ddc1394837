"""Every labelled face of a rare class, framed by what the run made of it (evaluate writes
``faces_<class>.png`` for each class beyond face_with_mask and face_no_mask): green when found
with that label, orange when found with another label (written under the face), red when never
found. A picture of a class that has a dozen faces says more than its AP does."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd

from maskbatch.config import INCORRECT, MASK, NO_MASK
from maskbatch.errors import ImageError
from maskbatch.outputs import draw

SIDE = 112
COLUMNS = 8
MAX_FACES = 64
FOUND = (40, 170, 40)  # BGR
OTHER_LABEL = (0, 150, 255)
MISSED = (30, 30, 220)
SHORT = {MASK: "mask", NO_MASK: "no mask", INCORRECT: "below nose"}


def rare_classes(class_names: list[str] | tuple[str, ...]) -> list[str]:
    """The scored classes a gallery is drawn for: all but the two main ones."""
    return [c for c in class_names if c not in (MASK, NO_MASK)]


def _tile(path_candidates: list[str], box: tuple) -> np.ndarray | None:
    for path in path_candidates:
        try:
            crop = draw.face_crop(path, box, side=SIDE)
        except (ImageError, OSError):
            continue
        if crop is not None:
            return crop
    return None


def gallery_png(truth: pd.DataFrame, paths: dict[str, list[str]], class_name: str
                ) -> bytes | None:
    """PNG bytes of up to MAX_FACES truth faces of `class_name` (an Evaluation's truth table:
    name, x1..y2, label, found, pred_label), largest first; None when there are none."""
    faces = truth[truth["label"] == class_name]
    if faces.empty:
        return None
    faces = faces.assign(side=np.minimum(faces["x2"] - faces["x1"], faces["y2"] - faces["y1"]))
    faces = faces.sort_values(["side", "name"], ascending=[False, True]).head(MAX_FACES)
    cell = SIDE + 28
    rows = (len(faces) + COLUMNS - 1) // COLUMNS
    sheet = np.full((rows * cell, COLUMNS * cell, 3), 255, np.uint8)
    for k, face in enumerate(faces.itertuples(index=False)):
        y, x = (k // COLUMNS) * cell, (k % COLUMNS) * cell
        if not face.found:
            colour, text = MISSED, "missed"
        elif face.pred_label == class_name:
            colour, text = FOUND, "found"
        else:
            colour, text = OTHER_LABEL, SHORT.get(face.pred_label, str(face.pred_label))
        tile = _tile(paths.get(face.name, []), (face.x1, face.y1, face.x2, face.y2))
        if tile is not None:
            h, w = tile.shape[:2]
            sheet[y + 4:y + 4 + h, x + 4:x + 4 + w] = tile
        cv2.rectangle(sheet, (x + 2, y + 2), (x + SIDE + 5, y + SIDE + 5), colour, 3)
        cv2.putText(sheet, f"{text} {int(face.side)}px", (x + 4, y + SIDE + 22),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.42, colour, 1, cv2.LINE_AA)
    ok, buf = cv2.imencode(".png", sheet)
    return buf.tobytes() if ok else None


__all__ = ["gallery_png", "rare_classes"]

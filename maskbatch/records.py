"""The records a predict run passes along: an input item, the faces of one image, an image's row.

    InputItem("clip.mp4@0000.000-0060.000", segment)   # a photo's (name, path) or a video segment
    Faces(boxes, scores, probs, labels)                # boxes as left, top, right, bottom pixels
    ImageRow(name, path, status, ...)                  # one row of images.parquet

The submission's quirky header (x1, x2, y1, y2 holding left, top, right, bottom) appears only
where detection rows are made (maskbatch.pipeline.face_rows) and where files are read back.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd

from maskbatch.outputs.writers import PREDICT_MANIFEST_COLUMNS
from maskbatch.photos import video


class InputItem(NamedTuple):
    """One item of a run, in output order: a photo (`source` its path or URL) or a video segment
    (`source` a video.Segment). A plain (name, path) pair is one too."""

    name: str
    source: str | video.Segment

    @property
    def segment(self) -> video.Segment | None:
        return self.source if isinstance(self.source, video.Segment) else None

    @property
    def path(self) -> str:
        """The file it is read from (a video segment's video)."""
        segment = self.segment
        return segment.path if segment is not None else str(self.source)

    @property
    def weight(self) -> int:
        """Units of work: 1 for a photo, the frames it samples for a video segment (a task holds
        about as many frames as it would photos; a long video spreads over the workers)."""
        segment = self.segment
        return len(video.sampled_frames(segment)) if segment is not None else 1

    @property
    def duration_s(self) -> float | None:
        segment = self.segment
        return round(segment.stop - segment.start, 3) if segment is not None else None


@dataclass(frozen=True)
class Faces:
    """The faces found in one image: boxes (N x 4: left, top, right, bottom, in pixels), the
    detector's scores (N), the probability of each class of the model's card (N x classes) and
    the label each face gets. `blur_boxes` (--blur only): every box scored above
    --blur-confidence, these faces' among them (left, top, right, bottom, score)."""

    boxes: np.ndarray
    scores: np.ndarray
    probs: np.ndarray
    labels: list[str]
    blur_boxes: np.ndarray | None = None

    @classmethod
    def none(cls, n_classes: int) -> Faces:
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros((0, n_classes), np.float32), [])

    def __len__(self) -> int:
        return len(self.scores)

    def count(self, label: str) -> int:
        return self.labels.count(label)


@dataclass
class ImageRow:
    """One row of images.parquet: an input's status and reason, its size and faces, its time.
    `frames` and `duration_s` are None for a photo."""

    name: str
    path: str
    status: str = "ok"
    reason: str = ""
    n_faces: int = 0
    width: int = 0
    height: int = 0
    seconds: float = 0.0
    frames: int | None = None
    duration_s: float | None = None

    def fail(self, reason: str, status: str = "failed") -> None:
        self.status, self.reason = status, reason


def image_table(rows: list[ImageRow]) -> pd.DataFrame:
    """images.parquet's rows as a DataFrame with its columns and nullable video columns."""
    frame = pd.DataFrame([astuple(row) for row in rows], columns=PREDICT_MANIFEST_COLUMNS)
    frame["frames"] = frame["frames"].astype("Int64")
    frame["duration_s"] = frame["duration_s"].astype("float64")
    return frame


assert [f for f in ImageRow.__dataclass_fields__] == PREDICT_MANIFEST_COLUMNS

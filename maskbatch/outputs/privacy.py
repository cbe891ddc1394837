"""Privacy outputs of a predict run: face crops (--save-crops) and blurred copies (--blur).

Both are made on the worker that decoded the photo (or video frame), from the pixels the
detector saw, and written before the worker commits its part:

    OUT/crops/<class>/<stem>-<face>.jpg    every face the run reports, its box's pixels exactly
    OUT/parts/<part>.crops.parquet         one row per crop; compacted into OUT/crops.parquet
    OUT/blurred/<stem>.jpg                 the photo with every box above --blur-confidence hidden
    OUT/parts/videos/<segment>.mp4         a video segment's blurred sampled frames (blurred_video)

crops.parquet joins detections.parquet one to one on (name, face): `face` is the face's place
among the rows of its image (name) in detections.parquet, 0 first (face_index). File names come
from the photo's name (a video frame's: the video's and its time) and fit any file system: no
folder separators or characters Windows refuses, at most PREVIEW_STEM_BYTES bytes of stem, and a
hash of the whole name where the name had to be changed or another input shares its stem.

How a face is hidden, and how far past its box, was chosen by measurement (docs/privacy.md):
pixelation into PIXEL_BLOCKS blocks across the box grown by BLUR_MARGIN on every side.
"""

from __future__ import annotations

import posixpath
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa

from maskbatch import files
from maskbatch.config import BLUR_CONFIDENCE
from maskbatch.outputs import writers
from maskbatch.outputs.draw import fitting_stem
from maskbatch.outputs.parts import part_stem
from maskbatch.photos import video

CROPS_DIR, BLURRED_DIR, CROPS_TABLE = "crops", "blurred", "crops.parquet"
VIDEO_PIECES_DIR = "videos"  # under OUT/parts: the blurred segments of each video
JPEG_QUALITY = 92
# Chosen in docs/privacy.md (benchmarks/bench_blur.py): the region hidden is the box grown by
# BLUR_MARGIN of its width (height) on the left and right (top and bottom), pixelated into
# PIXEL_BLOCKS blocks along its longer side.
BLUR_MARGIN = 0.25
PIXEL_BLOCKS = 4
CROP_SCHEMA = pa.schema([("name", pa.string()), ("face", pa.int64()), ("classname", pa.string()),
                         ("file", pa.string()), ("crop_width", pa.int64()),
                         ("crop_height", pa.int64())])
CROP_COLUMNS = CROP_SCHEMA.names
# Characters some file system refuses in a name (Windows: <>:"/\|?* and control characters).
UNSAFE = re.compile(r'[<>:"/\\|?*\x00-\x1f\x7f]')
RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)),
            *(f"LPT{i}" for i in range(10))}


def _plain_stem(name: str) -> str:
    return posixpath.splitext(posixpath.basename(name.replace("\\", "/")))[0]


def _clean(stem: str) -> str:
    return UNSAFE.sub("_", stem).rstrip(". ")


def shared_stems(names: Iterable[str]) -> frozenset[str]:
    """The input names (photos, videos) whose file stem another input shares, letter case aside
    (``same.jpg``, ``Same.png``, ``a/same``): their files get a hash of the whole name."""
    names = list(dict.fromkeys(names))
    keys = [_clean(_plain_stem(name)).casefold() for name in names]
    counts = Counter(keys)
    return frozenset(name for name, key in zip(names, keys) if counts[key] > 1)


def file_stem(name: str, shared: frozenset[str] = frozenset()) -> str:
    """The stem of the files made from input `name` (a photo or a video): its stem where it is
    plain, short and its own, else cut and followed by "-" + 10 hex digits of the whole name."""
    stem = _plain_stem(name)
    clean = _clean(stem) or "photo"
    changed = clean != stem or clean.split(".")[0].upper() in RESERVED
    return fitting_stem(clean, name, force=changed or name in shared)


def face_index(detections: pd.DataFrame) -> pd.Series:
    """Each detection row's `face`: its place among its image's rows, in file order (0 first),
    the key crops.parquet joins on with `name`."""
    return detections.groupby("name", sort=False).cumcount().astype("int64")


def grown(box: Iterable[float], width: int, height: int, margin: float = BLUR_MARGIN
          ) -> tuple[int, int, int, int]:
    """A (left, top, right, bottom) box grown by `margin` of its size on each side, clipped."""
    left, top, right, bottom = (float(v) for v in list(box)[:4])
    dx, dy = margin * (right - left), margin * (bottom - top)
    return (max(int(np.floor(left - dx)), 0), max(int(np.floor(top - dy)), 0),
            min(int(np.ceil(right + dx)), width), min(int(np.ceil(bottom + dy)), height))


def pixelate(region: np.ndarray, blocks: int = PIXEL_BLOCKS) -> np.ndarray:
    """`region` as `blocks` flat blocks along its longer side (fewer: coarser)."""
    h, w = region.shape[:2]
    side = max(h, w)
    small = cv2.resize(region, (max(1, round(blocks * w / side)), max(1, round(blocks * h / side))),
                       interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def hide_faces(image: np.ndarray, boxes: np.ndarray, margin: float = BLUR_MARGIN,
               blocks: int = PIXEL_BLOCKS) -> np.ndarray:
    """A copy of `image` with each box (left, top, right, bottom, ...) grown by `margin` and
    pixelated into `blocks` blocks."""
    out = image.copy()
    height, width = out.shape[:2]
    for box in boxes:
        x0, y0, x1, y1 = grown(box[:4], width, height, margin)
        if x1 > x0 and y1 > y0:
            out[y0:y1, x0:x1] = pixelate(out[y0:y1, x0:x1], blocks)
    return out


def jpeg(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


@dataclass(frozen=True)
class PrivacyJob:
    """What a worker writes besides its part tables: crops, blurred copies, or both; `shared`:
    the input names whose stem another one shares (shared_stems, made once by the driver)."""

    out_dir: str
    save_crops: bool = False
    blur: bool = False
    blur_confidence: float = BLUR_CONFIDENCE
    shared: frozenset[str] = field(default_factory=frozenset)

    def writer(self) -> PrivacyWriter:
        return PrivacyWriter(self)


class PrivacyWriter:
    """One partition's crops and blurred copies, written as the faces are found."""

    def __init__(self, job: PrivacyJob) -> None:
        self.job = job
        self.rows: list[tuple] = []
        self.blurred = 0  # boxes hidden
        self.piece: object | None = None  # blurred_video.VideoPiece of the segment being read
        self.piece_name = ""

    def photo(self, name: str, image: np.ndarray, boxes: np.ndarray, labels: list[str],
              blur_boxes: np.ndarray | None) -> None:
        """One photo's outputs: its faces' crops and its blurred copy."""
        stem = file_stem(name, self.job.shared)
        rows = self._crops(name, stem, image, boxes, labels)
        if self.job.blur:
            hidden = self._hide(image, boxes if blur_boxes is None else blur_boxes)
            writers.write_bytes_atomic(files.join(self.job.out_dir, BLURRED_DIR, stem + ".jpg"),
                                       jpeg(hidden))
        self.rows.extend(rows)  # only once all is written: a photo that fails here has none

    def frame(self, clip: str, segment: video.Segment, segment_name: str, time_s: float,
              image: np.ndarray, boxes: np.ndarray, labels: list[str],
              blur_boxes: np.ndarray | None) -> None:
        """One sampled video frame: its faces' crops, and the frame blurred into the segment's
        piece of the blurred video."""
        stem = f"{file_stem(clip, self.job.shared)}-t{time_s:.3f}"
        rows = self._crops(video.frame_name(clip, time_s), stem, image, boxes, labels)
        if self.job.blur:
            from maskbatch.outputs import blurred_video  # PyAV's encoder: only where it is used

            if self.piece is None:
                self.piece = blurred_video.VideoPiece(segment.sample_fps, image.shape[1],
                                                      image.shape[0])
                self.piece_name = segment_name
            hidden = self._hide(image, boxes if blur_boxes is None else blur_boxes)
            self.piece.add(hidden, round(time_s * segment.sample_fps))  # type: ignore[attr-defined]
        self.rows.extend(rows)

    def end_segment(self) -> None:
        """Write the blurred piece of the segment just read (nothing when no frame was read)."""
        piece, self.piece = self.piece, None
        if piece is not None:
            from maskbatch.outputs import blurred_video

            blurred_video.write_piece(self.job.out_dir, self.piece_name, piece)

    def _crops(self, name: str, stem: str, image: np.ndarray, boxes: np.ndarray,
               labels: list[str]) -> list[tuple]:
        """Each face's crop written (--save-crops); their crops.parquet rows."""
        rows: list[tuple] = []
        if not self.job.save_crops:
            return rows
        for face, ((left, top, right, bottom), label) in enumerate(zip(boxes, labels)):
            crop = image[int(top):int(bottom), int(left):int(right)]
            file = f"{CROPS_DIR}/{label}/{stem}-{face}.jpg"
            writers.write_bytes_atomic(files.join(self.job.out_dir, file), jpeg(crop))
            rows.append((name, face, label, file, crop.shape[1], crop.shape[0]))
        return rows

    def _hide(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        self.blurred += len(boxes)
        return hide_faces(image, boxes)

    def commit(self, first: int, count: int) -> dict:
        """Write the partition's crops.parquet rows (parts/<part>.crops.parquet, before the part
        itself is written); the counts its commit log entry adds."""
        counts = {}
        if self.job.save_crops:
            table = pd.DataFrame(self.rows, columns=CROP_COLUMNS)
            if len(table):
                url = files.join(self.job.out_dir, "parts", f"{part_stem(first, count)}.crops.parquet")
                writers.write_table_atomic(table, CROP_SCHEMA, url)
            counts["crops"] = len(table)
        if self.job.blur:
            counts["blurred"] = self.blurred
        return counts

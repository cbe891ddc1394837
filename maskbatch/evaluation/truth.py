"""The two sides of an evaluation read into tables: truth boxes of a labelled set, a run's predictions."""

from __future__ import annotations

import posixpath
import warnings

import numpy as np
import pandas as pd

from maskbatch import files
from maskbatch.config import MAX_PIXELS_CEILING
from maskbatch.datasets import detect_layout, load_records
from maskbatch.errors import MaskbatchError
from maskbatch.outputs import writers

TRUTH_COLUMNS = ["name", "x1", "y1", "x2", "y2", "classname"]
BOX_COLUMNS = ["x1", "y1", "x2", "y2"]
QUIRK_COLUMNS = ["name", "x1", "x2", "y1", "y2", "classname"]
# No photo the job reads is wider or taller than the pixels it may hold: a coordinate beyond
# this is no position in any of them (`1e30` would overflow every drawing and integer cast).
MAX_COORDINATE = float(MAX_PIXELS_CEILING)


class EvaluationWarning(UserWarning):
    """Something about the inputs the user should know; the numbers are still computed."""


def boxes_from_submission(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of a train.csv / submission / detections table with honest box columns.

    In the dataset's files the header ``x1,x2,y1,y2`` holds left, top, right, bottom in that
    order; the result has ``x1,y1,x2,y2`` = left, top, right, bottom (floats).
    """
    out = df.copy()
    left, top, right, bottom = (pd.to_numeric(df[c], errors="coerce").astype(float)
                                for c in ("x1", "x2", "y1", "y2"))
    out["x1"], out["y1"], out["x2"], out["y2"] = left, top, right, bottom
    first = ["name", "x1", "y1", "x2", "y2"]
    return out[first + [c for c in out.columns if c not in first]]


def boxes_to_submission(df: pd.DataFrame) -> pd.DataFrame:
    """Inverse of :func:`boxes_from_submission`: header x1,x2,y1,y2 = left, top, right, bottom."""
    out = df.copy()
    out["x1"], out["x2"], out["y1"], out["y2"] = df["x1"], df["y1"], df["x2"], df["y2"]
    first = QUIRK_COLUMNS[:5]
    return out[first + [c for c in out.columns if c not in first]]


def read_truth(truth: str) -> tuple[pd.DataFrame, list[str], str | None]:
    """Ground truth from a labelled folder, a train.csv file or an annotations folder.

    Returns (boxes: name, x1, y1, x2, y2 (left, top, right, bottom), classname as in the source;
    every image name of the truth, in order, including images without boxes; the folder that
    holds the images, or None when unknown).
    """
    fs, path = files.filesystem(truth)
    if not fs.exists(path):
        raise MaskbatchError(f"truth not found: {truth}")
    if fs.isfile(path):
        if not path.lower().endswith(".csv"):
            raise MaskbatchError(f"truth file must be a train.csv, not {truth}")
        boxes, names = _read_truth_csv(truth)
        boxes = check_boxes(boxes, truth)
        parent = posixpath.dirname(truth.rstrip("/"))
        return boxes, names, files.join(parent, "images") if parent else "images"
    root, layout, annotations = truth, "auto", "auto"
    if files.basename(truth) == "annotations":
        names_inside = fs.ls(path, detail=False)
        parent = posixpath.dirname(truth.rstrip("/")) or "."
        if any(n.endswith(".xml") for n in names_inside):
            root, layout = parent, "voc"
        elif any(n.endswith(".json") for n in names_inside):
            root, layout, annotations = parent, "kaggle", "json"
    if layout == "auto":
        layout = detect_layout(root)
        if layout == "crops":
            raise MaskbatchError(
                f"{truth} holds one folder of crops per class, not boxes: give a folder with "
                "annotations/*.json, annotations/*.xml or train.csv"
            )
    records = load_records(root, layout, annotations)
    broken = [r.name for r in records if r.problem]
    if broken:
        warn_user(f"{len(broken)} truth image(s) with a broken annotation file left out "
              f"(e.g. {broken[0]})")
    rows, names = [], []
    for rec in records:
        if rec.problem:
            continue
        names.append(rec.name)
        rows.extend((rec.name, b.x1, b.y1, b.x2, b.y2, b.classname)
                    for b in rec.boxes if b.problem is None)
    boxes = pd.DataFrame(rows, columns=TRUTH_COLUMNS)
    return check_boxes(boxes, truth), list(dict.fromkeys(names)), files.join(root, "images")


def _read_truth_csv(path: str) -> tuple[pd.DataFrame, list[str]]:
    fs, p = files.filesystem(path)
    with fs.open(p, "rb") as f:
        raw = pd.read_csv(f, dtype={"name": str, "classname": str}, encoding="utf-8-sig")
    if not set(QUIRK_COLUMNS) <= set(raw.columns):
        raise MaskbatchError(f"{path}: expected header {','.join(QUIRK_COLUMNS)}")
    raw = raw.dropna(subset=["name"])
    names = list(dict.fromkeys(raw["name"]))
    boxes = boxes_from_submission(raw[QUIRK_COLUMNS])
    bad = boxes[BOX_COLUMNS].isna().any(axis=1) | boxes["classname"].isna()
    if bad.any():
        warn_user(f"{path}: {int(bad.sum())} row(s) without a usable box left out")
    return boxes.loc[~bad, TRUTH_COLUMNS].reset_index(drop=True), names


def _example(boxes: pd.DataFrame, where: pd.Series) -> str:
    row = boxes.loc[where].iloc[0]
    return f"{row['name']}: " + ", ".join(f"{row[c]:g}" for c in BOX_COLUMNS)


def check_boxes(boxes: pd.DataFrame, source: str) -> pd.DataFrame:
    """Truth boxes fit to score and draw (x1, y1, x2, y2 = left, top, right, bottom), each fix
    or drop one EvaluationWarning with a count and an example (as rows without a box are):

    - a coordinate that is not a finite pixel position (inf, NaN, beyond MAX_COORDINATE):
      left out;
    - left > right or top > bottom: the two swapped into place;
    - zero width or height: left out (no face is, and no box can match it);
    - wholly at negative coordinates (right or bottom <= 0): left out, outside every image.
    """
    xy = boxes[BOX_COLUMNS].astype(float)
    bad = ~(np.isfinite(xy) & (xy.abs() <= MAX_COORDINATE)).all(axis=1)
    if bad.any():
        warn_user(f"{source}: {int(bad.sum())} truth box(es) with a coordinate that is no pixel "
                  f"position (inf, NaN or beyond ±{MAX_COORDINATE:.0f}) left out (e.g. "
                  f"{_example(boxes, bad)})")
        boxes, xy = boxes.loc[~bad], xy.loc[~bad]
    swapped = (xy["x1"] > xy["x2"]) | (xy["y1"] > xy["y2"])
    if swapped.any():
        warn_user(f"{source}: {int(swapped.sum())} truth box(es) with left > right or top > "
                  f"bottom swapped into place (e.g. {_example(boxes, swapped)}; the columns read "
                  "x1,x2,y1,y2 = left, top, right, bottom)")
        boxes = boxes.assign(x1=np.minimum(xy["x1"], xy["x2"]), x2=np.maximum(xy["x1"], xy["x2"]),
                             y1=np.minimum(xy["y1"], xy["y2"]), y2=np.maximum(xy["y1"], xy["y2"]))
        xy = boxes[BOX_COLUMNS].astype(float)
    empty = (xy["x1"] == xy["x2"]) | (xy["y1"] == xy["y2"])
    if empty.any():
        warn_user(f"{source}: {int(empty.sum())} truth box(es) of zero width or height left out "
                  f"(e.g. {_example(boxes, empty)})")
    outside = ~empty & ((xy["x2"] <= 0) | (xy["y2"] <= 0))
    if outside.any():
        warn_user(f"{source}: {int(outside.sum())} truth box(es) wholly at negative coordinates, "
                  f"outside the image, left out (e.g. {_example(boxes, outside)})")
    return boxes.loc[~(empty | outside)].reset_index(drop=True)


def drop_off_image(boxes: pd.DataFrame, manifest: pd.DataFrame | None, source: str
                   ) -> pd.DataFrame:
    """Truth boxes that start at or beyond the right or bottom edge of their image (its width and
    height in the run's images.parquet) left out, with one EvaluationWarning; boxes reaching
    past an edge are kept as they are (VOC's reach one pixel past it)."""
    if manifest is None or not {"name", "width", "height"} <= set(manifest.columns):
        return boxes
    sizes = manifest.drop_duplicates("name").set_index("name")[["width", "height"]]
    width = boxes["name"].map(sizes["width"]).astype(float)
    height = boxes["name"].map(sizes["height"]).astype(float)
    known = (width > 0) & (height > 0)
    off = known & ((boxes["x1"] >= width) | (boxes["y1"] >= height))
    if off.any():
        warn_user(f"{source}: {int(off.sum())} truth box(es) beyond the right or bottom edge of "
                  f"their image left out (e.g. {_example(boxes, off)})")
    return boxes.loc[~off].reset_index(drop=True)


def read_predictions(pred_dir: str) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(detections with honest box columns x1, y1, x2, y2, images.parquet or None) of a run."""
    det_path = files.join(pred_dir, "detections.parquet")
    fs, p = files.filesystem(det_path)
    if not fs.isfile(p):
        raise MaskbatchError(f"no detections.parquet in {pred_dir}: run `maskbatch predict` first")
    det = writers.read_parquet(det_path)
    missing = {"name", "x1", "x2", "y1", "y2", "classname", "score"} - set(det.columns)
    if missing:
        raise MaskbatchError(f"{det_path} lacks column(s) {', '.join(sorted(missing))}")
    if "mask_prob" not in det.columns:
        det["mask_prob"] = np.nan
    det = boxes_from_submission(det)
    manifest_path = files.join(pred_dir, "images.parquet")
    fs, p = files.filesystem(manifest_path)
    manifest = writers.read_parquet(manifest_path) if fs.isfile(p) else None
    return det, manifest


def warn_user(message: str) -> None:
    warnings.warn(message, EvaluationWarning, stacklevel=3)


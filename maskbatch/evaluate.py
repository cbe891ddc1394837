"""Score a prediction run against ground truth: AP per class, mAP, recall by face size, confusion.

``maskbatch evaluate --truth TRUTH --pred OUT_DIR`` reads the job's ``detections.parquet`` (and
``images.parquet``) and a labelled set, and computes at one IoU threshold (0.5 by default):

* **AP per class** (``face_with_mask``, ``face_no_mask``), Pascal VOC 2010+ all-point interpolation,
  and **mAP** over the two classes. A predicted row takes part only in the AP of the class the job
  wrote for it (its hard label, as users see it); rows are ranked by ``score * P(class)`` with
  ``P(face_with_mask) = mask_prob`` and ``P(face_no_mask) = 1 - mask_prob``, so the ranking uses
  both the detector's and the classifier's confidence. A face given the wrong label is therefore a
  miss for its true class and a false alarm for the predicted one.
* **Matching**, per image and class, greedy by descending ranking score: a prediction takes the
  still-unmatched truth box of its class with the highest IoU (>= the threshold): true positive.
  Each truth box is matched at most once, so a duplicate of a matched face is a false positive. If
  no such box is left but the prediction overlaps an *ignore region* (IoU >= threshold), it is
  neither a hit nor a false alarm and leaves the ranking. Otherwise it is a false positive.
  IoU uses continuous pixel coordinates: area = (right - left) * (bottom - top).
* **Ignore regions**: truth boxes whose class is not in ``DEFAULT_LABEL_MAP`` (e.g.
  ``mask_weared_incorrect``, ``hijab_niqab``). They count in no recall.
* **COCO AP** (``metrics["coco"]``, :mod:`maskbatch.coco`): AP@[.5:.95], AP@0.5 and AP@0.75
  by pycocotools itself, whatever ``iou`` is, with the same ranking score; COCO interpolates
  precision at 101 recall points, so ``metrics["classes"][c]["ap_101"]`` is maskbatch's own
  curve interpolated that way: it equals pycocotools' per-class AP@0.5 (tests/test_coco.py).
* **Precision / recall at the chosen thresholds**: every row the job wrote (its detector and
  classifier thresholds), per class and class-agnostic (detection only: was the face found at all).
* **Detection recall by face size**: class-agnostic matching (ranked by the detector score alone),
  truth faces binned by the shorter side of their box: < 16, 16-32, 32-64, >= 64 px.
* **Label confusion** on the faces found by the class-agnostic matching: truth label (rows) against
  predicted label (columns).

Images evaluated are the images of the truth; predictions for other images are left out. An
image of the truth that the run did not predict (absent from images.parquet, or failed) counts as
all faces missed, with a warning. The matching is per image (numpy IoU matrices); above
``PARALLEL_MIN_IMAGES`` images the images are matched in parallel with a Dask bag.

The detections' box columns keep the dataset's quirk: headers ``x1,x2,y1,y2`` hold left, top,
right, bottom in that order (as ``train.csv``); :func:`boxes_from_submission` turns them into
``x1,y1,x2,y2`` = left, top, right, bottom.
"""

from __future__ import annotations

import io
import math
import os
import posixpath
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from maskbatch import CLASS_NAMES, files, output
from maskbatch.datasets import DEFAULT_LABEL_MAP, detect_layout, load_records
from maskbatch.errors import MaskbatchError
from maskbatch.intervals import (
    default_resamples,
    difference_text,
    interval_text,
    photo_intervals,
)

SIZE_BINS: tuple[tuple[float, float, str], ...] = (
    (0.0, 16.0, "<16"),
    (16.0, 32.0, "16-32"),
    (32.0, 64.0, "32-64"),
    (64.0, math.inf, ">=64"),
)
PARALLEL_MIN_IMAGES = 20_000
RANKING = ("score * P(class), P(face_with_mask) = mask_prob, P(face_no_mask) = 1 - mask_prob; "
           "a row counts only for the class the job wrote")

TP, FP, IGNORED = 1, 0, -1  # prediction status
IGNORE_CLASS = -1  # truth class index of an ignore region
UNKNOWN_CLASS = -2  # predicted class that is neither of CLASS_NAMES
STATUS_NAMES = {TP: "tp", FP: "fp", IGNORED: "ignored"}

TRUTH_COLUMNS = ["name", "x1", "y1", "x2", "y2", "classname"]
BOX_COLUMNS = ["x1", "y1", "x2", "y2"]
QUIRK_COLUMNS = ["name", "x1", "x2", "y1", "y2", "classname"]


class EvaluationWarning(UserWarning):
    """Something about the inputs the user should know; the numbers are still computed."""


@dataclass
class Evaluation:
    """Everything the scoring produced: the metrics dict and the per-box tables behind it.

    truth: one row per truth box (name, x1, y1, x2, y2 (left, top, right, bottom), classname as in
      the source, label (mapped class or "ignore"), size (shorter side), found (class-agnostic
      match), pred_label (label of the matched prediction or "")).
    predictions: one row per predicted box of an evaluated image (name, x1, y1, x2, y2,
      classname, score, mask_prob, rank_score, status ("tp", "fp", "ignored": class-aware
      matching), det_status (same, class-agnostic), truth_label (label of the truth box matched
      class-agnostically or "")).
    per_image: name, n_truth, n_pred, found, missed, wrong_label, fp, predicted (was in the run).
    curves: class (and "detection") -> (recall, precision) arrays along the ranking.
    """

    metrics: dict
    truth: pd.DataFrame
    predictions: pd.DataFrame
    per_image: pd.DataFrame
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


# --------------------------------------------------------------------------- reading inputs


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
        _warn(f"{len(broken)} truth image(s) with a broken annotation file left out "
              f"(e.g. {broken[0]})")
    rows, names = [], []
    for rec in records:
        if rec.problem:
            continue
        names.append(rec.name)
        rows.extend((rec.name, b.x1, b.y1, b.x2, b.y2, b.classname)
                    for b in rec.boxes if b.problem is None)
    boxes = pd.DataFrame(rows, columns=TRUTH_COLUMNS)
    return boxes, list(dict.fromkeys(names)), files.join(root, "images")


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
        _warn(f"{path}: {int(bad.sum())} row(s) without a usable box left out")
    return boxes.loc[~bad, TRUTH_COLUMNS].reset_index(drop=True), names


def read_predictions(pred_dir: str) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(detections with honest box columns x1, y1, x2, y2, images.parquet or None) of a run."""
    det_path = files.join(pred_dir, "detections.parquet")
    fs, p = files.filesystem(det_path)
    if not fs.isfile(p):
        raise MaskbatchError(f"no detections.parquet in {pred_dir}: run `maskbatch predict` first")
    det = output.read_parquet(det_path)
    missing = {"name", "x1", "x2", "y1", "y2", "classname", "score"} - set(det.columns)
    if missing:
        raise MaskbatchError(f"{det_path} lacks column(s) {', '.join(sorted(missing))}")
    if "mask_prob" not in det.columns:
        det["mask_prob"] = np.nan
    det = boxes_from_submission(det)
    manifest_path = files.join(pred_dir, "images.parquet")
    fs, p = files.filesystem(manifest_path)
    manifest = output.read_parquet(manifest_path) if fs.isfile(p) else None
    return det, manifest


# --------------------------------------------------------------------------- matching


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of each box of `a` (n, 4) with each box of `b` (m, 4); boxes left, top, right, bottom."""
    a = np.asarray(a, dtype=float).reshape(-1, 4)
    b = np.asarray(b, dtype=float).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def _greedy(iou: np.ndarray, allowed: np.ndarray, order: np.ndarray, ignore_hit: np.ndarray,
            thr: float) -> tuple[np.ndarray, np.ndarray]:
    """Greedy matching of predictions (rows, visited in `order`) to truth boxes (columns)."""
    n, m = iou.shape
    status = np.where(ignore_hit, IGNORED, FP).astype(np.int8)
    match = np.full(n, -1, dtype=np.int64)
    cand = np.where(allowed, iou, -1.0)
    if m == 0 or not (cand >= thr).any():
        return status, match
    taken = np.zeros(m, dtype=bool)
    for i in order:
        if not (cand[i] >= thr).any():
            continue
        row = np.where(taken, -1.0, cand[i])
        j = int(row.argmax())
        if row[j] >= thr:
            status[i], match[i], taken[j] = TP, j, True
    return status, match


def _match_image(pred_boxes: np.ndarray, pred_cls: np.ndarray, rank: np.ndarray,
                 score: np.ndarray, truth_boxes: np.ndarray, truth_cls: np.ndarray, thr: float
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Class-aware and class-agnostic matching within one image: (status, match) for each."""
    iou = iou_matrix(pred_boxes, truth_boxes)
    ignore = truth_cls == IGNORE_CLASS
    ignore_hit = (iou[:, ignore] >= thr).any(axis=1) if ignore.any() \
        else np.zeros(len(pred_boxes), dtype=bool)
    # stable sorts: ties keep the input order, so results do not depend on the sort algorithm
    by_rank = np.argsort(-rank, kind="stable")
    by_score = np.argsort(-score, kind="stable")
    s_cls, m_cls = _greedy(iou, pred_cls[:, None] == truth_cls[None, :], by_rank, ignore_hit, thr)
    s_det, m_det = _greedy(iou, np.broadcast_to(~ignore, iou.shape), by_score, ignore_hit, thr)
    return s_cls, m_cls, s_det, m_det


def _match_chunk(chunk: list[tuple]) -> list[tuple]:
    """_match_image over several images (a unit of parallel work)."""
    return [(p_idx, t_idx, *_match_image(*args)) for p_idx, t_idx, args in chunk]


def _match_all(jobs: list[tuple], parallel: bool) -> list[tuple]:
    if not parallel:
        return _match_chunk(jobs)
    import dask.bag as db

    n_parts = max(2, min(64, (os.cpu_count() or 2) * 4))
    size = max(1, math.ceil(len(jobs) / n_parts))
    chunks = [jobs[i:i + size] for i in range(0, len(jobs), size)]
    results = db.from_sequence(chunks, npartitions=len(chunks)).map(_match_chunk).compute()
    return [r for part in results for r in part]


# --------------------------------------------------------------------------- metrics


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Pascal VOC 2010+ average precision: area under the all-point interpolated PR curve.

    `recall` and `precision` are the cumulative values along the ranked predictions; the
    precision envelope (max precision at any recall >= r) is integrated where recall changes.
    """
    mrec = np.concatenate([[0.0], np.asarray(recall, dtype=float), [1.0]])
    mpre = np.concatenate([[0.0], np.asarray(precision, dtype=float), [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    idx = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def _pr_curve(status: np.ndarray, rank: np.ndarray, n_truth: int
              ) -> tuple[np.ndarray, np.ndarray, float]:
    """(recall, precision, AP) of predictions with their status, ranked by `rank` descending."""
    keep = status != IGNORED
    status, rank = status[keep], rank[keep]
    order = np.argsort(-rank, kind="stable")
    tp = np.cumsum(status[order] == TP)
    fp = np.cumsum(status[order] == FP)
    if n_truth == 0:
        return np.zeros(0), np.zeros(0), math.nan
    recall = tp / n_truth
    precision = tp / np.maximum(tp + fp, 1)
    return recall, precision, voc_ap(recall, precision) if len(tp) else 0.0


def _ap_101(recall: np.ndarray, precision: np.ndarray, n_truth: int) -> float:
    """The same curve's AP with COCO's 101-point interpolation (to compare with pycocotools)."""
    from maskbatch.coco import ap_101

    return ap_101(recall, precision) if n_truth else math.nan


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else math.nan


def _counts(status: np.ndarray, n_truth: int) -> dict:
    tp, fp = int((status == TP).sum()), int((status == FP).sum())
    return {
        "n_truth": int(n_truth),
        "n_pred": int(len(status)),
        "tp": tp,
        "fp": fp,
        "fn": int(n_truth - tp),
        "ignored": int((status == IGNORED).sum()),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, n_truth),
    }


def score_detections(truth: pd.DataFrame, predictions: pd.DataFrame,
                     image_names: list[str] | None = None, iou: float = 0.5,
                     label_map: dict[str, str] | None = None,
                     parallel_min_images: int = PARALLEL_MIN_IMAGES) -> Evaluation:
    """Match predictions to truth and compute every metric (pure: no files).

    truth: name, x1, y1, x2, y2 (left, top, right, bottom), classname (source names, mapped
      with `label_map`, default DEFAULT_LABEL_MAP; unmapped classes are ignore regions).
    predictions: name, x1, y1, x2, y2 (honest order, see :func:`boxes_from_submission`),
      classname, score, mask_prob (NaN: rank by score alone).
    image_names: the images evaluated (default: the names in `truth`); predictions on other
      images are left out.
    """
    if not 0.0 < iou <= 1.0:
        raise MaskbatchError(f"--iou must be in (0, 1], got {iou}")
    label_map = DEFAULT_LABEL_MAP if label_map is None else label_map
    names = list(dict.fromkeys(image_names if image_names is not None else truth["name"]))
    index = {n: i for i, n in enumerate(names)}
    class_index = {c: k for k, c in enumerate(CLASS_NAMES)}

    t = truth.loc[truth["name"].isin(index), TRUTH_COLUMNS].reset_index(drop=True)
    t[BOX_COLUMNS] = t[BOX_COLUMNS].astype(float)
    t["label"] = t["classname"].map(lambda c: label_map.get(c, "ignore"))
    t_cls = t["label"].map(lambda c: class_index.get(c, IGNORE_CLASS)).to_numpy(np.int64)
    t["size"] = np.minimum(t["x2"] - t["x1"], t["y2"] - t["y1"])

    p = predictions.loc[predictions["name"].isin(index)].reset_index(drop=True)
    p = p[["name", *BOX_COLUMNS, "classname", "score", "mask_prob"]].copy()
    p[BOX_COLUMNS + ["score", "mask_prob"]] = p[BOX_COLUMNS + ["score", "mask_prob"]].astype(float)
    p_cls = p["classname"].map(lambda c: class_index.get(c, UNKNOWN_CLASS)).to_numpy(np.int64)
    prob = p["mask_prob"].to_numpy()
    p_class_prob = np.where(p_cls == 0, prob, np.where(p_cls == 1, 1.0 - prob, np.nan))
    score = p["score"].to_numpy()
    rank = np.where(np.isnan(p_class_prob), score, score * p_class_prob)
    p["rank_score"] = rank

    # group rows by image: positions of each image's rows
    t_img = t["name"].map(index).to_numpy(np.int64)
    p_img = p["name"].map(index).to_numpy(np.int64)
    t_order, p_order = np.argsort(t_img, kind="stable"), np.argsort(p_img, kind="stable")
    t_bounds = np.searchsorted(t_img[t_order], np.arange(len(names) + 1))
    p_bounds = np.searchsorted(p_img[p_order], np.arange(len(names) + 1))
    t_boxes, p_boxes = t[BOX_COLUMNS].to_numpy(), p[BOX_COLUMNS].to_numpy()
    jobs = []
    for k in range(len(names)):
        pi = p_order[p_bounds[k]:p_bounds[k + 1]]
        ti = t_order[t_bounds[k]:t_bounds[k + 1]]
        if len(pi) == 0:
            continue
        jobs.append((pi, ti, (p_boxes[pi], p_cls[pi], rank[pi], score[pi], t_boxes[ti],
                              t_cls[ti], iou)))
    results = _match_all(jobs, parallel=len(names) >= parallel_min_images)

    status_cls = np.full(len(p), FP, dtype=np.int8)
    status_det = np.full(len(p), FP, dtype=np.int8)
    det_match = np.full(len(p), -1, dtype=np.int64)  # truth row matched class-agnostically
    for pi, ti, s_cls, _m_cls, s_det, m_det in results:
        status_cls[pi], status_det[pi] = s_cls, s_det
        if len(ti):  # an image with predictions but no truth box matches nothing
            det_match[pi] = np.where(m_det >= 0, ti[np.clip(m_det, 0, None)], -1)

    # truth side of the class-agnostic matching
    found_by = np.full(len(t), -1, dtype=np.int64)
    hit = det_match >= 0
    found_by[det_match[hit]] = np.nonzero(hit)[0]
    t["found"] = found_by >= 0
    t["pred_label"] = ""
    t.loc[t["found"], "pred_label"] = p["classname"].to_numpy()[found_by[found_by >= 0]]
    p["status"] = pd.Series(status_cls).map(STATUS_NAMES).to_numpy()
    p["det_status"] = pd.Series(status_det).map(STATUS_NAMES).to_numpy()
    p["truth_label"] = ""
    p.loc[hit, "truth_label"] = t["label"].to_numpy()[det_match[hit]]

    metrics: dict = {"iou": float(iou), "ranking": RANKING, "classes": {}}
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    aps = []
    for k, c in enumerate(CLASS_NAMES):
        sel = p_cls == k
        n_truth = int((t_cls == k).sum())
        recall, precision, ap = _pr_curve(status_cls[sel], rank[sel], n_truth)
        curves[c] = (recall, precision)
        metrics["classes"][c] = {"ap": ap, "ap_101": _ap_101(recall, precision, n_truth),
                                 **_counts(status_cls[sel], n_truth)}
        if not math.isnan(ap):
            aps.append(ap)
    metrics["map"] = float(np.mean(aps)) if aps else math.nan
    n_faces = int((t_cls != IGNORE_CLASS).sum())
    recall, precision, ap = _pr_curve(status_det, score, n_faces)
    curves["detection"] = (recall, precision)
    metrics["detection"] = {"ap": ap, **_counts(status_det, n_faces)}

    faces = t[t_cls != IGNORE_CLASS]
    by_size = []
    for lo, hi, label in SIZE_BINS:
        in_bin = faces[(faces["size"] >= lo) & (faces["size"] < hi)]
        by_size.append({"bin": label, "min_px": lo, "max_px": None if math.isinf(hi) else hi,
                        "n_truth": int(len(in_bin)), "found": int(in_bin["found"].sum()),
                        "recall": _ratio(int(in_bin["found"].sum()), len(in_bin))})
    metrics["recall_by_size"] = by_size

    matched = faces[faces["found"]]
    matrix = [[int(((matched["label"] == tl) & (matched["pred_label"] == pl)).sum())
               for pl in CLASS_NAMES] for tl in CLASS_NAMES]
    n_matched = sum(map(sum, matrix))
    metrics["confusion"] = {
        "labels": list(CLASS_NAMES),
        "rows": "truth",
        "columns": "predicted",
        "matrix": matrix,
        "label_accuracy": _ratio(matrix[0][0] + matrix[1][1], n_matched),
    }

    g_t = t.assign(missed=~t["found"] & (t["label"] != "ignore"),
                   wrong=t["found"] & (t["pred_label"] != t["label"]),
                   face=t["label"] != "ignore").groupby("name")
    g_p = p.assign(fp=p["det_status"] == "fp").groupby("name")
    per_image = pd.DataFrame({"name": names}).set_index("name")
    per_image["n_truth"] = g_t["face"].sum()
    per_image["n_pred"] = g_p.size()
    per_image["missed"] = g_t["missed"].sum()
    per_image["wrong_label"] = g_t["wrong"].sum()
    per_image["fp"] = g_p["fp"].sum()
    per_image = per_image.fillna(0).astype(int)
    per_image["found"] = per_image["n_truth"] - per_image["missed"]
    per_image = per_image.reset_index()

    metrics["n_images"] = len(names)
    metrics["n_truth_faces"] = n_faces
    metrics["n_truth_by_class"] = {c: int((t_cls == k).sum()) for k, c in enumerate(CLASS_NAMES)}
    metrics["n_ignore_regions"] = int((t_cls == IGNORE_CLASS).sum())
    metrics["ignore_classes"] = sorted(set(t.loc[t_cls == IGNORE_CLASS, "classname"]))
    metrics["n_predictions"] = int(len(p))
    metrics["n_predictions_unknown_class"] = int((p_cls == UNKNOWN_CLASS).sum())
    return Evaluation(metrics, t, p, per_image, curves)


# --------------------------------------------------------------------------- the command


def _warn(message: str) -> None:
    warnings.warn(message, EvaluationWarning, stacklevel=3)


def _json_safe(obj: object) -> object:
    """NaN -> None (JSON has no NaN), numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def evaluate(truth: str, pred_dir: str, out_dir: str | None = None, iou: float = 0.5,
             images_dir: str | None = None, resamples: int | None = None,
             baseline: str | None = None) -> dict:
    """Score the run in `pred_dir` against `truth`; write metrics.json, plots and report.html.

    truth: a labelled folder (Kaggle: annotations/*.json or train.csv; Pascal VOC:
      annotations/*.xml), a train.csv file, or an annotations folder.
    out_dir: default ``pred_dir/evaluation``. images_dir: where to find the photos to draw
      (default: images.parquet's paths, else the truth folder's images/).
    resamples: photo resamples for the 95 % intervals of mAP, faces found and right label
      (maskbatch.intervals; 0: none; None: 1000, fewer for very large evaluations).
    baseline: the output folder of another run on the same photos; metrics["baseline"] then
      holds its numbers and this run's differences to them, with paired intervals.
    Returns the metrics dict (as written to metrics.json, NaN as None); `format_table` prints it.
    """
    from maskbatch import report

    if resamples is not None and resamples < 0:
        raise MaskbatchError(f"--resamples must be 0 or more, got {resamples}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EvaluationWarning)
        ev, paths = _evaluate(truth, pred_dir, iou, images_dir)
        base = None if baseline is None else _evaluate(truth, baseline, iou, images_dir)[0]
    names = list(ev.per_image["name"])
    if resamples is None:
        resamples = default_resamples(len(ev.truth) + len(ev.predictions))
    if resamples:
        ev.metrics["intervals"] = photo_intervals(ev.truth, ev.predictions, names, resamples)
    if base is not None:
        difference = photo_intervals(ev.truth, ev.predictions, names, resamples,
                                     baseline=(base.truth, base.predictions))
        ev.metrics["baseline"] = {"pred": baseline, **_headline(base.metrics),
                                  "difference": difference}
    messages = [str(w.message) for w in caught if issubclass(w.category, EvaluationWarning)]
    for w in caught:  # re-emit, so callers see them as ordinary warnings too
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    ev.metrics["warnings"] = messages
    out_dir = out_dir or files.join(pred_dir, "evaluation")
    ev.metrics["truth"], ev.metrics["pred"], ev.metrics["out"] = truth, pred_dir, out_dir
    ev.metrics = _json_safe(ev.metrics)
    report.write_report(ev, out_dir, paths)
    output.write_json_atomic(ev.metrics, files.join(out_dir, "metrics.json"))
    return ev.metrics


def _evaluate(truth: str, pred_dir: str, iou: float, images_dir: str | None
              ) -> tuple[Evaluation, dict[str, list[str]]]:
    det, manifest = read_predictions(pred_dir)
    boxes, names, truth_images = read_truth(truth)
    if not names or boxes.empty:
        raise MaskbatchError(f"no ground-truth boxes in {truth}")
    predicted = set(det["name"])
    if manifest is not None:
        ok = manifest["status"] == "ok" if "status" in manifest.columns else True
        predicted = set(manifest.loc[ok, "name"]) | predicted
    in_run = [n for n in names if n in predicted]
    if not in_run:
        example = next(iter(sorted(predicted)), None)
        raise MaskbatchError(
            f"none of the {len(names)} truth images is in the predictions of {pred_dir} "
            f"(truth names look like {names[0]!r}"
            + (f", predicted ones like {example!r})" if example else ", and it has none)")
        )
    if len(in_run) < len(names):
        missing = [n for n in names if n not in predicted]
        _warn(f"{len(missing)} of {len(names)} truth images were not predicted (absent or failed "
              f"in the run, e.g. {missing[0]}): all their faces count as missed")
    if manifest is None:
        _warn(f"no images.parquet in {pred_dir}: truth images without detections are taken as "
              "predicted with no faces")
    outside = int((~det["name"].isin(set(names))).sum())
    ev = score_detections(boxes, det, names, iou)
    from maskbatch.coco import coco_metrics

    ev.metrics["coco"] = coco_metrics(boxes, det, names)
    ev.metrics["n_images_not_predicted"] = len(names) - len(in_run)
    ev.metrics["n_predictions_outside_truth"] = outside
    if ev.metrics["n_predictions_unknown_class"]:
        _warn(f"{ev.metrics['n_predictions_unknown_class']} predicted row(s) with a class other "
              f"than {', '.join(CLASS_NAMES)}: false positives for every class")
    ev.per_image["predicted"] = ev.per_image["name"].isin(predicted)

    # where to find each photo for drawing, best first
    paths: dict[str, list[str]] = {n: [] for n in names}
    if images_dir:
        for n in names:
            paths[n].append(files.join(images_dir, n))
    if manifest is not None and "path" in manifest.columns:
        for n, p in zip(manifest["name"], manifest["path"], strict=True):
            if n in paths and isinstance(p, str) and p:
                paths[n].append(p)
    if truth_images:
        for n in names:
            paths[n].append(files.join(truth_images, n))
    return ev, paths


# --------------------------------------------------------------------------- the printed table


def _fmt(value: object, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _headline(metrics: dict) -> dict:
    """The three numbers issue-style targets are set on."""
    return {"map": metrics["map"], "faces_found": metrics["detection"]["recall"],
            "label_accuracy": metrics["confusion"]["label_accuracy"]}


def _baseline_lines(metrics: dict) -> str:
    """'This run minus the baseline' lines, with paired intervals when there are any."""
    base = metrics.get("baseline")
    if not base:
        return ""
    ours = _headline(metrics)
    lines = [f"\nAgainst the baseline run {base['pred']} (same photos; this run minus it):\n"]
    for key, label in (("map", "mAP"), ("faces_found", "faces found"),
                       ("label_accuracy", "right label")):
        lines.append(f"  {label:12} {_fmt(base[key])} -> {_fmt(ours[key])}  "
                     f"{difference_text(base['difference'], key)}\n")
    return "".join(lines)


def _interval(metrics: dict, name: str) -> str:
    """'  (95 % interval over 1000 photo resamples: 0.797-0.891)', or '' without intervals."""
    text = interval_text(metrics.get("intervals"), name)
    return f"  ({text})" if text else ""


def format_table(metrics: dict) -> str:
    """The metrics as a plain-text table for the terminal."""
    buf = io.StringIO()
    w = buf.write
    by_class = metrics.get("n_truth_by_class", {})
    w(f"Evaluation at IoU {_fmt(metrics['iou'], 2)}: {metrics['n_images']} images, "
      f"{metrics['n_truth_faces']} faces ("
      + ", ".join(f"{n} {c}" for c, n in by_class.items())
      + f"), {metrics['n_ignore_regions']} ignore regions, "
      f"{metrics['n_predictions']} predictions\n\n")
    header = f"{'':18}{'AP':>7}{'precision':>11}{'recall':>8}{'truth':>7}{'pred':>7}" \
             f"{'TP':>7}{'FP':>7}{'FN':>7}{'ignored':>9}\n"
    w(header)
    rows = [(c, metrics["classes"][c]) for c in CLASS_NAMES] + \
        [("detection (any)", metrics["detection"])]
    for label, m in rows:
        w(f"{label:18}{_fmt(m['ap']):>7}{_fmt(m['precision']):>11}{_fmt(m['recall']):>8}"
          f"{m['n_truth']:>7}{m['n_pred']:>7}{m['tp']:>7}{m['fp']:>7}{m['fn']:>7}"
          f"{m['ignored']:>9}\n")
    w(f"{'mAP':18}{_fmt(metrics['map']):>7}{_interval(metrics, 'map')}\n")
    coco = metrics.get("coco") or {}
    if coco.get("available"):
        w(f"COCO ({coco['tool']}): AP@[.5:.95] {_fmt(coco['ap'])}, AP@0.5 {_fmt(coco['ap50'])}, "
          f"AP@0.75 {_fmt(coco['ap75'])} (101-point; the AP above is VOC all-point)\n")
    elif coco:
        w(f"COCO AP: not computed: {coco.get('reason')}\n")
    w("\n")
    w("Detection recall by face size (shorter side, px):\n")
    for b in metrics["recall_by_size"]:
        w(f"  {b['bin']:>6}  recall {_fmt(b['recall']):>6}  ({b['found']}/{b['n_truth']})\n")
    conf = metrics["confusion"]
    labels = conf["labels"]
    w("\nLabel confusion on matched faces (rows: truth, columns: predicted):\n")
    w(f"  {'':16}" + "".join(f"{c:>16}" for c in labels) + "\n")
    for label, row in zip(labels, conf["matrix"], strict=True):
        w(f"  {label:16}" + "".join(f"{v:>16}" for v in row) + "\n")
    w(f"  label accuracy {_fmt(conf['label_accuracy'])}{_interval(metrics, 'label_accuracy')}\n")
    found = metrics["detection"]["recall"]
    w(f"  faces found {_fmt(found)}{_interval(metrics, 'faces_found')}\n")
    w(_baseline_lines(metrics))
    for message in metrics.get("warnings", []):
        w(f"warning: {message}\n")
    return buf.getvalue()


__all__ = [
    "Evaluation",
    "EvaluationWarning",
    "SIZE_BINS",
    "boxes_from_submission",
    "boxes_to_submission",
    "evaluate",
    "format_table",
    "iou_matrix",
    "read_predictions",
    "read_truth",
    "score_detections",
    "voc_ap",
]

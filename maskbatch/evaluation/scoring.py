"""Every metric of an evaluation from matched boxes: AP per class, mAP, recall by size, confusion."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from maskbatch.datasets import label_map_for
from maskbatch.errors import MaskbatchError
from maskbatch.evaluation.coco_ap import ap_101
from maskbatch.evaluation.matching import (
    FP,
    IGNORE_CLASS,
    IGNORED,
    STATUS_NAMES,
    TP,
    UNKNOWN_CLASS,
    MapChunks,
    match_all,
)
from maskbatch.evaluation.truth import BOX_COLUMNS, TRUTH_COLUMNS
from maskbatch.outputs.coco import class_score
from maskbatch.outputs.writers import prob_columns, run_classes

SIZE_BINS: tuple[tuple[float, float, str], ...] = (
    (0.0, 16.0, "<16"),
    (16.0, 32.0, "16-32"),
    (32.0, 64.0, "32-64"),
    (64.0, math.inf, ">=64"),
)


RANKING = ("score * P(class), P(face_with_mask) = mask_prob, P(face_no_mask) = 1 - mask_prob; "
           "a row counts only for the class the job wrote")
RANKING_N = ("score * P(class), P(class) = prob_<class> (an N-class model's softmax); "
             "a row counts only for the class the job wrote")


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


def _truth_table(truth: pd.DataFrame, index: dict[str, int], label_map: dict[str, str],
                 class_index: dict[str, int]) -> tuple[pd.DataFrame, np.ndarray]:
    """The truth rows of the evaluated images with their label and size, and each row's class
    index (IGNORE_CLASS for an ignore region)."""
    t = truth.loc[truth["name"].isin(index), TRUTH_COLUMNS].reset_index(drop=True)
    t[BOX_COLUMNS] = t[BOX_COLUMNS].astype(float)
    t["label"] = t["classname"].map(lambda c: label_map.get(c, "ignore"))
    t_cls = t["label"].map(lambda c: class_index.get(c, IGNORE_CLASS)).to_numpy(np.int64)
    t["size"] = np.minimum(t["x2"] - t["x1"], t["y2"] - t["y1"])
    return t, t_cls


def _prediction_table(predictions: pd.DataFrame, index: dict[str, int], probs: list[str],
                      class_index: dict[str, int]) -> tuple[pd.DataFrame, np.ndarray]:
    """The predicted rows of the evaluated images with their rank_score (see RANKING), and each
    row's class index (UNKNOWN_CLASS for a class not scored)."""
    p = predictions.loc[predictions["name"].isin(index)].reset_index(drop=True)
    p = p[["name", *BOX_COLUMNS, "classname", "score", "mask_prob", *probs]].copy()
    floats = BOX_COLUMNS + ["score", "mask_prob", *probs]
    p[floats] = p[floats].astype(float)
    p_cls = p["classname"].map(lambda c: class_index.get(c, UNKNOWN_CLASS)).to_numpy(np.int64)
    prob = p["mask_prob"].to_numpy()
    score = p["score"].to_numpy()
    if probs:  # an N-class model: P(class) from its prob_<class> columns
        rank = class_score(p["classname"], p["score"], p["mask_prob"], p[probs])
    else:
        p_class_prob = np.where(p_cls == 0, prob, np.where(p_cls == 1, 1.0 - prob, np.nan))
        rank = np.where(np.isnan(p_class_prob), score, score * p_class_prob)
    p["rank_score"] = rank
    return p, p_cls


def _match(t: pd.DataFrame, t_cls: np.ndarray, p: pd.DataFrame, p_cls: np.ndarray,
           names: list[str], index: dict[str, int], iou: float,
           map_chunks: MapChunks | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Match each image's predictions to its truth boxes: (class-aware status, class-agnostic
    status, truth row matched class-agnostically or -1) per prediction."""
    rank, score = p["rank_score"].to_numpy(), p["score"].to_numpy()
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
    results = match_all(jobs, map_chunks)

    status_cls = np.full(len(p), FP, dtype=np.int8)
    status_det = np.full(len(p), FP, dtype=np.int8)
    det_match = np.full(len(p), -1, dtype=np.int64)  # truth row matched class-agnostically
    for pi, ti, s_cls, _m_cls, s_det, m_det in results:
        status_cls[pi], status_det[pi] = s_cls, s_det
        if len(ti):  # an image with predictions but no truth box matches nothing
            det_match[pi] = np.where(m_det >= 0, ti[np.clip(m_det, 0, None)], -1)
    return status_cls, status_det, det_match


def _mark_matches(t: pd.DataFrame, p: pd.DataFrame, status_cls: np.ndarray,
                  status_det: np.ndarray, det_match: np.ndarray) -> None:
    """Write the matching into the tables: truth found / pred_label, prediction status /
    det_status / truth_label (see Evaluation)."""
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


def _ap_metrics(classes: tuple[str, ...], t_cls: np.ndarray, p: pd.DataFrame, p_cls: np.ndarray,
                status_cls: np.ndarray, status_det: np.ndarray,
                curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    """classes (AP and counts per class), map and detection (class-agnostic, ranked by score);
    each PR curve goes into `curves`."""
    rank, score = p["rank_score"].to_numpy(), p["score"].to_numpy()
    metrics: dict = {"classes": {}}
    aps = []
    for k, c in enumerate(classes):
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
    return metrics


def _recall_by_size(faces: pd.DataFrame) -> list[dict]:
    """Class-agnostic recall of the truth faces in each SIZE_BINS bin of their shorter side."""
    by_size = []
    for lo, hi, label in SIZE_BINS:
        in_bin = faces[(faces["size"] >= lo) & (faces["size"] < hi)]
        by_size.append({"bin": label, "min_px": lo, "max_px": None if math.isinf(hi) else hi,
                        "n_truth": int(len(in_bin)), "found": int(in_bin["found"].sum()),
                        "recall": _ratio(int(in_bin["found"].sum()), len(in_bin))})
    return by_size


def _confusion(faces: pd.DataFrame, classes: tuple[str, ...]) -> dict:
    """Truth label against the label of the matched prediction, over the faces found."""
    matched = faces[faces["found"]]
    matrix = [[int(((matched["label"] == tl) & (matched["pred_label"] == pl)).sum())
               for pl in classes] for tl in classes]
    n_matched = sum(map(sum, matrix))
    return {
        "labels": list(classes),
        "rows": "truth",
        "columns": "predicted",
        "matrix": matrix,
        "label_accuracy": _ratio(sum(matrix[k][k] for k in range(len(classes))), n_matched),
    }


def _per_image(t: pd.DataFrame, p: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """One row per evaluated image: n_truth, n_pred, missed, wrong_label, fp, found."""
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
    return per_image.reset_index()


def score_detections(truth: pd.DataFrame, predictions: pd.DataFrame,
                     image_names: list[str] | None = None, iou: float = 0.5,
                     label_map: dict[str, str] | None = None,
                     map_chunks: MapChunks | None = None,
                     class_names: tuple[str, ...] | None = None) -> Evaluation:
    """Match predictions to truth and compute every metric (pure: no files).

    truth: name, x1, y1, x2, y2 (left, top, right, bottom), classname (source names, mapped
      with `label_map`, default DEFAULT_LABEL_MAP; unmapped classes are ignore regions).
    predictions: name, x1, y1, x2, y2 (honest order, see :func:`boxes_from_submission`),
      classname, score, mask_prob (NaN: rank by score alone).
    image_names: the images evaluated (default: the names in `truth`); predictions on other
      images are left out.
    map_chunks: runs the per-image matching in parallel (see matching.match_all); None: here.
    class_names: the classes scored, in order (default: the run's, from its prob_<class>
      columns, else CLASS_NAMES). With face_with_mask_incorrect among them, the default label
      map also maps VOC's mask_weared_incorrect to it (else those boxes are ignore regions).
    """
    if not 0.0 < iou <= 1.0:
        raise MaskbatchError(f"--iou must be in (0, 1], got {iou}")
    classes = tuple(class_names or run_classes(list(predictions.columns)))
    label_map = label_map_for(classes) if label_map is None else label_map
    probs = prob_columns(classes)  # none for a 2-class run (also when scored for more classes)
    probs = probs if set(probs) <= set(predictions.columns) else []
    names = list(dict.fromkeys(image_names if image_names is not None else truth["name"]))
    index = {n: i for i, n in enumerate(names)}
    class_index = {c: k for k, c in enumerate(classes)}
    t, t_cls = _truth_table(truth, index, label_map, class_index)
    p, p_cls = _prediction_table(predictions, index, probs, class_index)
    status_cls, status_det, det_match = _match(t, t_cls, p, p_cls, names, index, iou, map_chunks)
    _mark_matches(t, p, status_cls, status_det, det_match)

    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    metrics: dict = {"iou": float(iou), "ranking": RANKING_N if probs else RANKING,
                     **_ap_metrics(classes, t_cls, p, p_cls, status_cls, status_det, curves)}
    faces = t[t_cls != IGNORE_CLASS]
    metrics["recall_by_size"] = _recall_by_size(faces)
    metrics["confusion"] = _confusion(faces, classes)
    metrics["n_images"] = len(names)
    metrics["n_truth_faces"] = int((t_cls != IGNORE_CLASS).sum())
    metrics["n_truth_by_class"] = {c: int((t_cls == k).sum()) for k, c in enumerate(classes)}
    metrics["n_ignore_regions"] = int((t_cls == IGNORE_CLASS).sum())
    metrics["ignore_classes"] = sorted(set(t.loc[t_cls == IGNORE_CLASS, "classname"]))
    metrics["n_predictions"] = int(len(p))
    metrics["n_predictions_unknown_class"] = int((p_cls == UNKNOWN_CLASS).sum())
    return Evaluation(metrics, t, p, _per_image(t, p, names), curves)

"""COCO AP from the reference implementation (pycocotools), and maskbatch's curve interpolated COCO's way."""

from __future__ import annotations

import contextlib
import io
import math
from importlib import metadata

import numpy as np
import pandas as pd

from maskbatch.datasets import label_map_for
from maskbatch.outputs.coco import categories, class_score
from maskbatch.outputs.writers import prob_columns, run_classes

RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def ap_101(recall: np.ndarray, precision: np.ndarray) -> float:
    """pycocotools' AP of one precision-recall curve: the precision envelope sampled at the 101
    recall points 0, 0.01, ..., 1 (0 beyond the last recall reached), averaged."""
    recall = np.asarray(recall, dtype=float)
    if len(recall) == 0:
        return 0.0
    envelope = np.maximum.accumulate(np.asarray(precision, dtype=float)[::-1])[::-1]
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    return float(np.where(idx < len(envelope), envelope[np.minimum(idx, len(envelope) - 1)],
                          0.0).mean())


def summary_ap(precision: np.ndarray, iou_thresholds: np.ndarray | None = None,
               iou: float | None = None) -> float:
    """pycocotools' summarized AP (COCOeval.summarize's first three numbers) of an accumulated
    precision array [iou threshold, recall point, class, area, max dets], for all areas and the
    last max-detections setting: the mean over the entries that exist (-1 marks a missing one)."""
    s = precision[:, :, :, 0, -1]
    if iou is not None:
        s = s[np.where(np.isclose(iou_thresholds, iou))[0]]
    s = s[s > -1]
    return float(s.mean()) if s.size else -1.0


def _truth_dataset(truth: pd.DataFrame, names: list[str], label_map: dict[str, str],
                   class_names: tuple[str, ...]) -> dict:
    """A COCO ground-truth dict: faces of the classes, ignore regions as crowd boxes."""
    cats = categories(class_names)
    category_ids = {c["name"]: c["id"] for c in cats}
    ids = {n: k + 1 for k, n in enumerate(names)}
    t = truth[truth["name"].isin(ids.keys())]
    annotations = []
    for row in t.itertuples(index=False):
        w, h = float(row.x2 - row.x1), float(row.y2 - row.y1)
        box = {"image_id": ids[row.name], "bbox": [float(row.x1), float(row.y1), w, h],
               "area": w * h}
        label = label_map.get(row.classname)
        if label in category_ids:
            annotations.append({**box, "category_id": category_ids[label], "iscrowd": 0})
        else:  # an ignore region counts for no class
            annotations.extend({**box, "category_id": c, "iscrowd": 1}
                               for c in category_ids.values())
    for k, a in enumerate(annotations):
        a["id"] = k + 1
    return {"images": [{"id": i, "file_name": n} for n, i in ids.items()],
            "categories": cats, "annotations": annotations}


def coco_metrics(truth: pd.DataFrame, predictions: pd.DataFrame, names: list[str],
                 label_map: dict[str, str] | None = None,
                 class_names: tuple[str, ...] | None = None) -> dict:
    """COCO bbox AP of `predictions` against `truth`, computed by pycocotools.

    truth: name, x1, y1, x2, y2 (left, top, right, bottom), classname; predictions: the same
    honest box columns plus classname, score, mask_prob (``evaluate.read_predictions``).
    Returns {"available": False, "reason": ...} when pycocotools is not installed.
    """
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as exc:
        return {"available": False, "reason": f"pycocotools not installed ({exc})"}

    class_list = tuple(class_names or run_classes(list(predictions.columns)))
    label_map = label_map_for(class_list) if label_map is None else label_map
    gt_dict = _truth_dataset(truth, names, label_map, class_list)
    category_ids = {c["name"]: c["id"] for c in gt_dict["categories"]}
    ids = {img["file_name"]: img["id"] for img in gt_dict["images"]}
    p = predictions[predictions["name"].isin(ids.keys())
                    & predictions["classname"].isin(category_ids.keys())]
    probs = [c for c in prob_columns(class_list) if c in p.columns]
    ranked = class_score(p["classname"], p["score"], p["mask_prob"],
                         p[probs] if len(probs) == len(class_list) else None)
    dets = [{"image_id": ids[n], "category_id": category_ids[c],
             "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)], "score": float(s)}
            for n, c, x1, y1, x2, y2, s in zip(p["name"], p["classname"], p["x1"], p["y1"],
                                               p["x2"], p["y2"], ranked)]
    per_image = p.groupby("name").size()
    max_dets = max(100, int(per_image.max()) if len(per_image) else 0)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_dict
        gt.createIndex()
        if not dets:
            return {"available": True, "ap": 0.0, "ap50": 0.0, "ap75": 0.0,
                    "classes": {c: {"ap50": 0.0} for c in class_list}}
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.maxDets = [1, 10, max_dets]
        ev.evaluate()
        ev.accumulate()
    # not ev.summarize(): its AP@[.5:.95] asks for maxDets 100 and is -1 when the last one is not
    precision = ev.eval["precision"]  # [iou threshold, recall point, class, area, max dets]
    iou_thresholds = ev.params.iouThrs
    classes = {}
    for k, name in enumerate(class_list):
        q = precision[0, :, k, 0, -1]
        classes[name] = {"ap50": float(q.mean()) if (q > -1).all() else math.nan}
    return {
        "available": True,
        "tool": f"pycocotools {metadata.version('pycocotools')}",
        "ap": summary_ap(precision), "ap50": summary_ap(precision, iou_thresholds, 0.5),
        "ap75": summary_ap(precision, iou_thresholds, 0.75),
        "classes": classes,
        "interpolation": "101 recall points (COCO); maskbatch's own AP is all-point (VOC)",
        "max_detections_per_image": max_dets,
        "ignore_regions": "COCO crowd boxes (matched by intersection over detection area)",
    }


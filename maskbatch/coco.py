"""COCO for a run: its detections as COCO files, and COCO AP from the reference implementation.

predict writes two files beside detections.parquet (schemas below; boxes in COCO's
[left, top, width, height], pixels, floats):

  detections.coco.json   COCO *results* format: a list of {image_id, category_id, bbox, score}
                         (plus `detector_score` and `mask_prob`), what pycocotools' ``loadRes``,
                         faster-coco-eval and supervision read. `score` is the ranking that
                         ``maskbatch evaluate`` uses: detector score * P(class).
  images.coco.json       a COCO *dataset* file: `images` (id, file_name, width, height: every
                         photo read, in the manifest's order, ids from 1), `categories`
                         (1 face_with_mask, 2 face_no_mask) and `annotations` (the same detections
                         with their score), so FiftyOne / CVAT import the run as one file, and
                         ``COCO("images.coco.json").loadRes("detections.coco.json")`` works.

``coco_metrics`` scores predictions against truth with pycocotools (COCOeval, bbox): AP@[.5:.95],
AP@0.5, AP@0.75 and AP@0.5 per class. Its AP interpolates precision at 101 recall points;
``maskbatch evaluate``'s own AP is Pascal VOC's all-point area, so the two differ slightly. For
a like-for-like check, :func:`ap_101` is pycocotools' interpolation on maskbatch's own
precision-recall curve (``metrics["classes"][c]["ap_101"]``). Ignore regions become COCO crowd
boxes, which COCO matches by intersection over the *detection's* area (maskbatch: IoU).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from importlib import metadata

import numpy as np
import pandas as pd

from maskbatch import CLASS_NAMES, MASK, NO_MASK, files, output

CATEGORIES = [{"id": k + 1, "name": name, "supercategory": "face"}
              for k, name in enumerate(CLASS_NAMES)]
CATEGORY_IDS = {c["name"]: c["id"] for c in CATEGORIES}
RESULTS_FILE = "detections.coco.json"
DATASET_FILE = "images.coco.json"
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def class_score(classname: pd.Series, score: pd.Series, mask_prob: pd.Series) -> np.ndarray:
    """detector score * P(the written class): the ranking ``maskbatch evaluate`` uses."""
    prob = mask_prob.to_numpy(dtype=float)
    p_class = np.where(classname.to_numpy() == MASK, prob,
                       np.where(classname.to_numpy() == NO_MASK, 1.0 - prob, np.nan))
    s = score.to_numpy(dtype=float)
    return np.where(np.isnan(p_class), s, s * p_class)


def image_entries(manifest: pd.DataFrame) -> list[dict]:
    """COCO `images` of every photo that was read (status ok), ids from 1 in manifest order."""
    entries = []
    for k, row in enumerate(manifest.itertuples(index=False)):
        if getattr(row, "status", "ok") != "ok":
            continue
        entries.append({"id": k + 1, "file_name": str(row.name), "width": int(row.width),
                        "height": int(row.height)})
    return entries


def result_entries(detections: pd.DataFrame, image_ids: dict[str, int]) -> list[dict]:
    """COCO results of a detections table (the dataset's quirk: x1, x2, y1, y2 = left, top,
    right, bottom); rows of images without an id are left out."""
    det = detections[detections["name"].isin(image_ids.keys())]
    if det.empty:
        return []
    left, top = det["x1"].to_numpy(float), det["x2"].to_numpy(float)
    width = det["y1"].to_numpy(float) - left
    height = det["y2"].to_numpy(float) - top
    mask_prob = det["mask_prob"] if "mask_prob" in det else pd.Series(np.nan, index=det.index)
    ranked = class_score(det["classname"], det["score"], mask_prob)
    out = []
    for i, (name, cls) in enumerate(zip(det["name"], det["classname"])):
        if cls not in CATEGORY_IDS:
            continue
        entry = {"image_id": image_ids[name], "category_id": CATEGORY_IDS[cls],
                 "bbox": [round(float(v), 2) for v in (left[i], top[i], width[i], height[i])],
                 "score": round(float(ranked[i]), 6),
                 "detector_score": round(float(det["score"].iloc[i]), 6)}
        p = float(mask_prob.iloc[i])
        if not math.isnan(p):
            entry["mask_prob"] = round(p, 6)
        out.append(entry)
    return out


def coco_files(detections: pd.DataFrame, manifest: pd.DataFrame) -> tuple[list[dict], dict]:
    """(results list, dataset dict) of a run: what :func:`write_coco` writes."""
    images = image_entries(manifest)
    ids = {entry["file_name"]: entry["id"] for entry in images}
    results = result_entries(detections, ids)
    annotations = [{"id": k + 1, **r, "area": round(r["bbox"][2] * r["bbox"][3], 2), "iscrowd": 0}
                   for k, r in enumerate(results)]
    dataset = {"info": {"description": "maskbatch predictions", "format": "COCO; annotations "
                        "are predictions, `score` = detector score * P(class)"},
               "images": images, "categories": CATEGORIES, "annotations": annotations}
    return results, dataset


def write_coco(out_dir: str, detections: pd.DataFrame, manifest: pd.DataFrame) -> list[str]:
    """Write detections.coco.json and images.coco.json into `out_dir`; their paths."""
    results, dataset = coco_files(detections, manifest)
    paths = [files.join(out_dir, RESULTS_FILE), files.join(out_dir, DATASET_FILE)]
    for obj, path in zip((results, dataset), paths):
        output.write_bytes_atomic(path, json.dumps(obj, separators=(",", ":")).encode())
    return paths


# --------------------------------------------------------------------------- AP, the COCO way


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


def _truth_dataset(truth: pd.DataFrame, names: list[str], label_map: dict[str, str]) -> dict:
    """A COCO ground-truth dict: faces of the two classes, ignore regions as crowd boxes."""
    ids = {n: k + 1 for k, n in enumerate(names)}
    t = truth[truth["name"].isin(ids.keys())]
    annotations = []
    for row in t.itertuples(index=False):
        w, h = float(row.x2 - row.x1), float(row.y2 - row.y1)
        box = {"image_id": ids[row.name], "bbox": [float(row.x1), float(row.y1), w, h],
               "area": w * h}
        label = label_map.get(row.classname)
        if label in CATEGORY_IDS:
            annotations.append({**box, "category_id": CATEGORY_IDS[label], "iscrowd": 0})
        else:  # an ignore region counts for neither class
            annotations.extend({**box, "category_id": c, "iscrowd": 1}
                               for c in CATEGORY_IDS.values())
    for k, a in enumerate(annotations):
        a["id"] = k + 1
    return {"images": [{"id": i, "file_name": n} for n, i in ids.items()],
            "categories": CATEGORIES, "annotations": annotations}


def coco_metrics(truth: pd.DataFrame, predictions: pd.DataFrame, names: list[str],
                 label_map: dict[str, str] | None = None) -> dict:
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
    from maskbatch.datasets import DEFAULT_LABEL_MAP

    label_map = DEFAULT_LABEL_MAP if label_map is None else label_map
    gt_dict = _truth_dataset(truth, names, label_map)
    ids = {img["file_name"]: img["id"] for img in gt_dict["images"]}
    p = predictions[predictions["name"].isin(ids.keys())
                    & predictions["classname"].isin(CATEGORY_IDS.keys())]
    ranked = class_score(p["classname"], p["score"], p["mask_prob"])
    dets = [{"image_id": ids[n], "category_id": CATEGORY_IDS[c],
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
                    "classes": {c: {"ap50": 0.0} for c in CLASS_NAMES}}
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.maxDets = [1, 10, max_dets]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # [iou threshold, recall point, class, area, max dets]
    classes = {}
    for k, name in enumerate(CLASS_NAMES):
        q = precision[0, :, k, 0, -1]
        classes[name] = {"ap50": float(q.mean()) if (q > -1).all() else math.nan}
    return {
        "available": True,
        "tool": f"pycocotools {metadata.version('pycocotools')}",
        "ap": float(ev.stats[0]), "ap50": float(ev.stats[1]), "ap75": float(ev.stats[2]),
        "classes": classes,
        "interpolation": "101 recall points (COCO); maskbatch's own AP is all-point (VOC)",
        "max_detections_per_image": max_dets,
        "ignore_regions": "COCO crowd boxes (matched by intersection over detection area)",
    }

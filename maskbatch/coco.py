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
from collections.abc import Iterator
from importlib import metadata

import numpy as np
import pandas as pd

from maskbatch import CLASS_NAMES, MASK, NO_MASK, files, output
from maskbatch.errors import MaskbatchError

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


def image_entries(manifest: pd.DataFrame, first_id: int = 1) -> list[dict]:
    """COCO `images` of every photo that was read (status ok); ids count every row of the
    manifest, the first being `first_id` (1 for a whole manifest, so ids follow its order)."""
    ok = manifest["status"].to_numpy() == "ok" if "status" in manifest else np.ones(len(manifest),
                                                                                    bool)
    ids = np.arange(first_id, first_id + len(manifest))[ok]
    rows = manifest[ok]
    return [{"id": int(i), "file_name": str(n), "width": int(w), "height": int(h)}
            for i, n, w, h in zip(ids, rows["name"], rows["width"], rows["height"])]


def result_json(detections: pd.DataFrame, image_ids: dict[str, int], first_id: int = 1
                ) -> tuple[list[str], list[str]]:
    """COCO entries of a detections table as JSON texts: (results, annotations); annotations are
    the results with an id (from `first_id`), area and iscrowd. Boxes keep the dataset's quirk
    (x1, x2, y1, y2 = left, top, right, bottom); rows of images without an id, or of another
    class, are left out. Written as text, not through json.dumps: a million faces take seconds."""
    det = detections[detections["name"].isin(image_ids.keys())
                     & detections["classname"].isin(CATEGORY_IDS.keys())]
    if det.empty:
        return [], []
    left, top = det["x1"].to_numpy(float), det["x2"].to_numpy(float)
    width = np.round(det["y1"].to_numpy(float) - left, 2)
    height = np.round(det["y2"].to_numpy(float) - top, 2)
    area = np.round(width * height, 2).tolist()
    mask_prob = (det["mask_prob"] if "mask_prob" in det
                 else pd.Series(np.nan, index=det.index))
    ranked = np.round(class_score(det["classname"], det["score"], mask_prob), 6).tolist()
    detector = np.round(det["score"].to_numpy(float), 6).tolist()
    probs = np.round(mask_prob.to_numpy(float), 6).tolist()
    image = [image_ids[n] for n in det["name"].tolist()]
    category = [CATEGORY_IDS[c] for c in det["classname"].tolist()]
    results, annotations = [], []
    for k, (i, c, x, y, w, h, sc, raw, p, ar) in enumerate(zip(
            image, category, np.round(left, 2).tolist(), np.round(top, 2).tolist(),
            width.tolist(), height.tolist(), ranked, detector, probs, area)):
        body = (f'"image_id":{i},"category_id":{c},"bbox":[{x!r},{y!r},{w!r},{h!r}],'
                f'"score":{sc!r},"detector_score":{raw!r}'
                + ("" if math.isnan(p) else f',"mask_prob":{p!r}'))
        results.append("{" + body + "}")
        annotations.append(f'{{"id":{first_id + k},{body},"area":{ar!r},"iscrowd":0}}')
    return results, annotations


DATASET_HEAD = {"info": {"description": "maskbatch predictions", "format": "COCO; annotations "
                         "are predictions, `score` = detector score * P(class)"}}
BATCH_ROWS = 65_536  # rows of a Parquet file read at a time by write_coco


def write_coco(out_dir: str) -> list[str]:
    """Write detections.coco.json and images.coco.json from OUT_DIR's images.parquet and
    detections.parquet; their paths.

    Streamed: both tables are read BATCH_ROWS rows at a time, in their (input) order, and the
    JSON is written as it goes, so memory does not grow with the run. Each file appears whole
    (written under a temporary name, then renamed).
    """
    paths = [files.join(out_dir, RESULTS_FILE), files.join(out_dir, DATASET_FILE)]
    with output.open_write_all(paths) as (results_file, dataset_file):
        head = json.dumps(DATASET_HEAD, separators=(",", ":"))[:-1]
        dataset_file.write(f'{head},"categories":{_json(CATEGORIES)},"images":['.encode())
        first, comma = 1, ""
        for batch in _batches(out_dir, "images.parquet", ["name", "status", "width", "height"]):
            entries = image_entries(batch, first)
            first += len(batch)
            if entries:
                dataset_file.write((comma + _json(entries)[1:-1]).encode())
                comma = ","
        dataset_file.write(b'],"annotations":[')
        results_file.write(b"[")
        ids = _ImageIds(_batches(out_dir, "images.parquet", ["name", "status"]))
        n, comma = 0, ""
        for batch in _batches(out_dir, "detections.parquet",
                              ["name", "x1", "x2", "y1", "y2", "classname", "score",
                               "mask_prob"]):
            results, annotations = result_json(batch, ids.of(batch["name"]), n + 1)
            if results:
                results_file.write((comma + ",".join(results)).encode())
                dataset_file.write((comma + ",".join(annotations)).encode())
                comma = ","
                n += len(results)
        results_file.write(b"]")
        dataset_file.write(b"]}")
    return paths


def _json(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _batches(out_dir: str, name: str, columns: list[str]) -> Iterator[pd.DataFrame]:
    """A Parquet file of OUT_DIR, BATCH_ROWS rows at a time, in order."""
    return output.read_parquet_batches(files.join(out_dir, name), columns, BATCH_ROWS)


class _ImageIds:
    """COCO image ids (manifest row + 1) of read photos, for detections in manifest order:
    holds only the manifest rows between the last photo asked for and the next ones."""

    def __init__(self, batches: Iterator[pd.DataFrame]) -> None:
        self._batches = batches
        self._window: dict[str, int] = {}
        self._next_id = 1

    def of(self, names: pd.Series) -> dict[str, int]:
        """{name: id} for every name of this batch of detections (read photos only)."""
        wanted = pd.unique(names)
        if not len(wanted):
            return {}
        while wanted[-1] not in self._window:
            batch = next(self._batches, None)
            if batch is None:
                break
            ids = np.arange(self._next_id, self._next_id + len(batch))
            ids = np.where(batch["status"].to_numpy() == "ok", ids, 0).tolist()
            self._next_id += len(batch)
            self._window.update(zip(batch["name"], ids))  # 0: a photo that was not read
        missing = [n for n in wanted if n not in self._window]
        if missing:
            raise MaskbatchError(f"detections of {missing[0]!r} are not in images.parquet's "
                                 "order (or not in it at all); cannot write the COCO files")
        found = {n: self._window[n] for n in wanted if self._window[n]}
        # photos before the batch's last one are done with: keep the window small
        keys = list(self._window)
        self._window = {k: self._window[k] for k in keys[keys.index(wanted[-1]):]}
        return found


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

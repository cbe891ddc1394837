"""A run's detections as COCO files: a results file and the image list it refers to (a photo is
one COCO image, and so is each sampled frame of a video)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from maskbatch import files
from maskbatch.config import CLASS_NAMES, MASK, NO_MASK
from maskbatch.errors import MaskbatchError
from maskbatch.outputs import writers
from maskbatch.photos.video import frame_name, video_of


def categories(class_names: tuple[str, ...] | list[str] = CLASS_NAMES) -> list[dict]:
    """COCO categories of a model's classes (its card's order, ids from 1)."""
    return [{"id": k + 1, "name": name, "supercategory": "face"} for k, name in enumerate(class_names)]


CATEGORIES = categories()  # a 2-class model's: 1 face_with_mask, 2 face_no_mask
CATEGORY_IDS = {c["name"]: c["id"] for c in CATEGORIES}
RESULTS_FILE = "detections.coco.json"
DATASET_FILE = "images.coco.json"


def class_score(classname: pd.Series, score: pd.Series, mask_prob: pd.Series,
                class_probs: pd.DataFrame | None = None) -> np.ndarray:
    """detector score * P(the written class): the ranking ``maskbatch evaluate`` uses.
    `class_probs`: an N-class model's prob_<class> columns (P(class) read from them)."""
    if class_probs is not None and len(class_probs.columns):
        table = class_probs.to_numpy(dtype=float)
        column = {c[len(writers.PROB_PREFIX):]: k for k, c in enumerate(class_probs.columns)}
        k = np.array([column.get(c, -1) for c in classname.tolist()], dtype=np.int64)
        p_class = np.where(k >= 0, table[np.arange(len(k)), np.clip(k, 0, None)], np.nan) \
            if len(k) else np.zeros(0)
        s = score.to_numpy(dtype=float)
        return np.where(np.isnan(p_class), s, s * p_class)
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
    ids = (manifest["id"].to_numpy() if "id" in manifest
           else np.arange(first_id, first_id + len(manifest)))[ok]
    rows = manifest[ok]
    return [{"id": int(i), "file_name": str(n), "width": int(w), "height": int(h)}
            for i, n, w, h in zip(ids, rows["name"], rows["width"], rows["height"])]


def result_json(detections: pd.DataFrame, image_ids: dict[str, int], first_id: int = 1,
                class_names: tuple[str, ...] | list[str] = CLASS_NAMES) -> tuple[list[str], list[str]]:
    """COCO entries of a detections table as JSON texts: (results, annotations); annotations are
    the results with an id (from `first_id`), area and iscrowd. Boxes keep the dataset's quirk
    (x1, x2, y1, y2 = left, top, right, bottom); rows of images without an id, or of another
    class, are left out. Written as text, not through json.dumps: a million faces take seconds."""
    category_ids = {c["name"]: c["id"] for c in categories(class_names)}
    det = detections[detections["name"].isin(image_ids.keys())
                     & detections["classname"].isin(category_ids.keys())]
    if det.empty:
        return [], []
    left, top = det["x1"].to_numpy(float), det["x2"].to_numpy(float)
    width = np.round(det["y1"].to_numpy(float) - left, 2)
    height = np.round(det["y2"].to_numpy(float) - top, 2)
    area = np.round(width * height, 2).tolist()
    mask_prob = (det["mask_prob"] if "mask_prob" in det
                 else pd.Series(np.nan, index=det.index))
    ranked = np.round(class_score(det["classname"], det["score"], mask_prob,
                                  det[writers.prob_columns(class_names)]), 6).tolist()
    detector = np.round(det["score"].to_numpy(float), 6).tolist()
    probs = np.round(mask_prob.to_numpy(float), 6).tolist()
    image = [image_ids[n] for n in det["name"].tolist()]
    category = [category_ids[c] for c in det["classname"].tolist()]
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


def write_coco(out_dir: str, class_names: tuple[str, ...] | list[str] = CLASS_NAMES) -> list[str]:
    """Write detections.coco.json and images.coco.json from OUT_DIR's images.parquet and
    detections.parquet; their paths. `class_names`: the model card's (the categories, in order).

    Streamed: both tables are read BATCH_ROWS rows at a time, in their (input) order, and the
    JSON is written as it goes, so memory does not grow with the run. Each file appears whole
    (written under a temporary name, then renamed).
    """
    paths = [files.join(out_dir, RESULTS_FILE), files.join(out_dir, DATASET_FILE)]
    with writers.open_write_all(paths) as (results_file, dataset_file):
        head = json.dumps(DATASET_HEAD, separators=(",", ":"))[:-1]
        dataset_file.write(f'{head},"categories":{_json(categories(class_names))},"images":['
                           .encode())
        comma = ""
        for batch in _images(out_dir):
            entries = image_entries(batch)
            if entries:
                dataset_file.write((comma + _json(entries)[1:-1]).encode())
                comma = ","
        dataset_file.write(b'],"annotations":[')
        results_file.write(b"[")
        ids = _ImageIds(_images(out_dir))
        n, comma = 0, ""
        for batch in _batches(out_dir, "detections.parquet",
                              ["name", "x1", "x2", "y1", "y2", "classname", "score",
                               "mask_prob", *writers.prob_columns(class_names)]):
            results, annotations = result_json(batch, ids.of(batch["name"]), n + 1, class_names)
            if results:
                results_file.write((comma + ",".join(results)).encode())
                dataset_file.write((comma + ",".join(annotations)).encode())
                comma = ","
                n += len(results)
        results_file.write(b"]")
        dataset_file.write(b"]}")
    return paths


def _images(out_dir: str) -> Iterator[pd.DataFrame]:
    """COCO images in input order, as batches (id, name, status, width, height): one per photo
    (a photo that was not read keeps its id, unused), one per sampled frame of a video segment,
    named as its detections are (``clip.mp4#t=12.000``), from frames.parquet."""
    frames_path = files.join(out_dir, "frames.parquet")
    fs, local = files.filesystem(frames_path)
    frames = _rows(_batches(out_dir, "frames.parquet", ["segment", "time_s"])) \
        if fs.exists(local) else iter(())
    pending: tuple | None = None
    next_id = 1
    columns = ["name", "status", "width", "height"]
    for batch in _batches(out_dir, "images.parquet",
                          columns + (["frames"] if _has_frames(out_dir) else [])):
        if "frames" not in batch or batch["frames"].isna().all():
            ids = np.arange(next_id, next_id + len(batch))
            next_id += len(batch)
            yield batch[columns].assign(id=ids)
            continue
        out = []
        for row in batch.itertuples(index=False):
            if pd.isna(row.frames):
                out.append((next_id, row.name, row.status, row.width, row.height))
                next_id += 1
                continue
            for _ in range(int(row.frames)):
                pending = pending or next(frames, None)
                if pending is None or pending[0] != row.name:
                    raise MaskbatchError(f"frames.parquet lacks frames of {row.name!r}; cannot "
                                         "write the COCO files")
                name = frame_name(video_of(row.name), float(pending[1]))
                out.append((next_id, name, "ok", row.width, row.height))
                next_id, pending = next_id + 1, None
        yield pd.DataFrame(out, columns=["id", "name", "status", "width", "height"])


def _has_frames(out_dir: str) -> bool:
    """Whether images.parquet has the `frames` column (tables written before videos had not)."""
    fs, path = files.filesystem(files.join(out_dir, "images.parquet"))
    with fs.open(path, "rb") as f:
        return "frames" in pq.ParquetFile(f).schema_arrow.names


def _rows(batches: Iterator[pd.DataFrame]) -> Iterator[tuple]:
    for batch in batches:
        yield from batch.itertuples(index=False, name=None)


def _json(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _batches(out_dir: str, name: str, columns: list[str]) -> Iterator[pd.DataFrame]:
    """A Parquet file of OUT_DIR, BATCH_ROWS rows at a time, in order."""
    return writers.read_parquet_batches(files.join(out_dir, name), columns, BATCH_ROWS)


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
            ids = batch["id"].to_numpy() if "id" in batch else \
                np.arange(self._next_id, self._next_id + len(batch))
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


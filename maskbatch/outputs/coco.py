"""A run's detections as COCO files: a results file and the image list it refers to (a photo is
one COCO image, and so is each sampled frame of a video)."""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import tempfile
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
DETECTION_FIELDS = ["name", "x1", "x2", "y1", "y2", "classname", "score", "mask_prob"]


class CocoWriter:
    """detections.coco.json and images.coco.json, written as they are fed: images (id, name,
    status, width, height; `image_rows`) and the detections of those images, both in input order.

    The image list comes before the annotations in images.coco.json, so the annotations wait in
    a local temporary file until the end. Both files appear whole when the block ends without an
    error (written under temporary names, then renamed); memory does not grow with the run.
    """

    def __init__(self, out_dir: str, class_names: tuple[str, ...] | list[str] = CLASS_NAMES
                 ) -> None:
        self.paths = [files.join(out_dir, RESULTS_FILE), files.join(out_dir, DATASET_FILE)]
        self.class_names = tuple(class_names)
        self.columns = DETECTION_FIELDS + writers.prob_columns(self.class_names)
        self.results = 0
        self._stack = contextlib.ExitStack()
        self._image_comma = self._result_comma = ""
        self._part_images = PartImages()

    def __enter__(self) -> CocoWriter:
        self._results, self._dataset = self._stack.enter_context(
            writers.open_write_all(self.paths))
        self._annotations = self._stack.enter_context(tempfile.TemporaryFile())
        head = json.dumps(DATASET_HEAD, separators=(",", ":"))[:-1]
        self._dataset.write(f'{head},"categories":{_json(categories(self.class_names))},'
                            '"images":['.encode())
        self._results.write(b"[")
        return self

    def add_images(self, images: pd.DataFrame) -> None:
        entries = image_entries(images)
        if entries:
            self._dataset.write((self._image_comma + _json(entries)[1:-1]).encode())
            self._image_comma = ","

    def add_detections(self, detections: pd.DataFrame, image_ids: dict[str, int]) -> None:
        """Detections of images already added; `image_ids`: {name: id} of the read ones."""
        results, annotations = result_json(detections, image_ids, self.results + 1,
                                           self.class_names)
        if results:
            self._results.write((self._result_comma + ",".join(results)).encode())
            self._annotations.write((self._result_comma + ",".join(annotations)).encode())
            self._result_comma = ","
            self.results += len(results)

    def add_part(self, manifest: pd.DataFrame, detections: pd.DataFrame,
                 frames: pd.DataFrame | None) -> None:
        """Consecutive committed parts of a run (maskbatch.outputs.parts.compact): their images
        (photos and sampled frames), then their detections."""
        images, ids = self._part_images.of_part(manifest, frames)
        self.add_images(images)
        unknown = set(pd.unique(detections["name"])) - set(images["name"])
        if unknown:
            raise MaskbatchError(f"detections of {sorted(unknown)[0]!r} are not in their part's "
                                 "images; cannot write the COCO files")
        self.add_detections(detections, ids)

    def __exit__(self, exc_type: type | None, *rest: object) -> bool | None:
        if exc_type is None:
            self._results.write(b"]")
            self._dataset.write(b'],"annotations":[')
            self._annotations.seek(0)
            shutil.copyfileobj(self._annotations, self._dataset, 1 << 20)
            self._dataset.write(b"]}")
        return self._stack.__exit__(exc_type, *rest)


def write_coco(out_dir: str, class_names: tuple[str, ...] | list[str] = CLASS_NAMES) -> list[str]:
    """Write detections.coco.json and images.coco.json from OUT_DIR's final tables (images.parquet,
    frames.parquet, detections.parquet; a run writes them as its parts stream by instead,
    maskbatch.outputs.parts.compact); their paths. Read BATCH_ROWS rows at a time, in order."""
    with CocoWriter(out_dir, class_names) as writer:
        for batch in _images(out_dir):
            writer.add_images(batch)
        ids = _ImageIds(_images(out_dir))
        for batch in _batches(out_dir, "detections.parquet", writer.columns):
            writer.add_detections(batch, ids.of(batch["name"]))
    return writer.paths


class PartImages:
    """COCO image ids of a run's parts as they stream by (compact): photos and sampled frames
    numbered in input order from 1, and each part's {name: id} for its detections."""

    def __init__(self) -> None:
        self.next_id = 1

    def of_part(self, manifest: pd.DataFrame, frames: pd.DataFrame | None
                ) -> tuple[pd.DataFrame, dict[str, int]]:
        """(the part's images: id, name, status, width, height; {name: id} of the read ones)."""
        rows = iter(()) if frames is None else frames[["segment", "time_s"]].itertuples(
            index=False, name=None)
        images, self.next_id = image_rows(manifest, rows, self.next_id)
        ok = images[images["status"] == "ok"]
        return images, dict(zip(ok["name"], ok["id"].tolist()))


def image_rows(batch: pd.DataFrame, frames: Iterator[tuple], next_id: int
               ) -> tuple[pd.DataFrame, int]:
    """COCO images (id, name, status, width, height) of a manifest batch in input order: one per
    photo (a photo that was not read keeps its id, unused), one per sampled frame of a video
    segment, named as its detections are (``clip.mp4#t=12.000``), taken from `frames`
    ((segment, time_s) rows in order); and the next id."""
    columns = ["name", "status", "width", "height"]
    if "frames" not in batch or batch["frames"].isna().all():
        ids = np.arange(next_id, next_id + len(batch))
        return batch[columns].assign(id=ids), next_id + len(batch)
    out, pending = [], None
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
    return pd.DataFrame(out, columns=["id", "name", "status", "width", "height"]), next_id


def _images(out_dir: str) -> Iterator[pd.DataFrame]:
    """COCO images of a run's final tables in input order, as batches (image_rows)."""
    frames_path = files.join(out_dir, "frames.parquet")
    fs, local = files.filesystem(frames_path)
    frames = _rows(_batches(out_dir, "frames.parquet", ["segment", "time_s"])) \
        if fs.exists(local) else iter(())
    next_id = 1
    columns = ["name", "status", "width", "height"]
    for batch in _batches(out_dir, "images.parquet",
                          columns + (["frames"] if _has_frames(out_dir) else [])):
        images, next_id = image_rows(batch, frames, next_id)
        yield images


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


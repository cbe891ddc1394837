"""The Dask-native API: a `dask.bag.Bag` of photos in, a `dask.bag.Bag` of detection records out.

In the spirit of dask-ml's ParallelPostFit, the model stays a plain object and Dask only maps it:
each bag partition runs maskbatch.pipeline.predict_partition (the batch job's own per-partition
function) on its photos, and every worker process loads the classifier once (maskbatch.models.
classifier.get_classifier caches it per process; what travels in the graph is the small ModelRef).

    import dask.bag as db
    import maskbatch.dask

    photos = db.from_sequence(paths, npartitions=8)        # paths, or (name, path) pairs
    records = maskbatch.dask.predict(photos)                # a Bag of dicts, lazily
    frame = maskbatch.dask.to_dataframe(records)            # a dask DataFrame, detections.parquet's dtypes
    frame.to_parquet("detections/")                         # or .compute(), DuckDB, ...

A record is one face: a dict with detections.parquet's columns (maskbatch.outputs.writers.
DETECTION_COLUMNS / DETECTION_SCHEMA). A photo that fails (unreadable, over `limits`, no detector
result) or is skipped yields no detection record; `predict_with_manifest` gives, in the same tasks,
the manifest records too (one per photo, images.parquet's columns, with its status and reason).
Unlike `maskbatch.predict`, nothing is written, committed or resumable: this is the plain Dask
building block; the batch job adds the commit log, `--resume` and poison-photo narrowing.
"""

from __future__ import annotations

import operator
import posixpath
from pathlib import Path
from typing import Any

import dask.bag as db
import dask.dataframe as dd
import pandas as pd
import pyarrow as pa

from maskbatch.config import DetectorConfig, InputLimits, PredictSettings
from maskbatch.errors import MaskbatchError
from maskbatch.models import classifier, detect
from maskbatch.models.classifier import ModelRef, read_model
from maskbatch.outputs.writers import DETECTION_SCHEMA, MANIFEST_SCHEMA, detection_schema
from maskbatch.pipeline import predict_partition
from maskbatch.runtime import cluster, dask_config
from maskbatch.runtime.hpc import jobqueue_cluster
from maskbatch.tasks import in_output_order


def model_ref(model: str | None = None) -> ModelRef:
    """The picklable handle of a classifier folder (default: $MASKBATCH_MODEL or the bundled one),
    checksum-verified here; workers load the model from its path once per process."""
    return classifier.model_ref(model, read_model(model)[1])


def register_model(client: Any = None, model: str | None = None) -> None:
    """Send the classifier to every worker of `client` (default: the active client, as
    `distributed.get_client()`) with the job's worker plugin, now and later ones, for clusters
    whose workers cannot read the model's path: each loads it once."""
    onnx_bytes, card = read_model(model)
    if client is None:
        client = dask_config.active_client()
        if client is None:
            raise MaskbatchError("register_model needs a client: pass one, or call it inside "
                                 "`with Client(...):`")
    cluster.install_plugin(client, cluster.MaskbatchSetup(onnx_bytes, card))


def _line(text: str) -> str:
    """A path as `db.read_text` gives it: without its line end (\n, \r\n)."""
    return text.rstrip("\r\n")


def _pair(item: Any) -> tuple[str, str]:
    if isinstance(item, (tuple, list)) and len(item) == 2:
        name, path = item
        return _line(str(name)), _line(str(path))
    if isinstance(item, (str, Path)):
        path = _line(str(item))
        return posixpath.basename(path.rstrip("/")), path
    raise MaskbatchError(f"a photo is a path or a (name, path) pair, got {type(item).__name__}")


def _blank(item: Any) -> bool:
    """An empty line of a paths file (db.read_text keeps them): no photo, skipped."""
    return isinstance(item, str) and not item.strip()


def _predict_records(items: list, detector: DetectorConfig, model: ModelRef,
                     limits: InputLimits) -> tuple[list[dict], list[dict]]:
    """One bag partition: (detection records, manifest records), in input order."""
    pairs = [_pair(item) for item in items if not _blank(item)]
    detections, manifest = predict_partition(pairs, detector, model, limits)
    return (in_output_order(detections, manifest).to_dict("records"),
            manifest.to_dict("records"))


Photos = db.Bag | dd.Series | dd.DataFrame


def as_bag(paths: Photos) -> db.Bag:
    """The photos as a bag of paths or (name, path) pairs: a bag as it is (`db.read_text`'s
    lines lose their line ends later), a dask Series of paths (`ddf.path`), or a dask DataFrame
    of one column of paths or of `name` and `path` columns."""
    if isinstance(paths, db.Bag):
        return paths
    if isinstance(paths, dd.Series):
        return paths.to_bag()
    if isinstance(paths, dd.DataFrame):
        columns = list(paths.columns)
        if {"name", "path"} <= set(columns):
            return paths[["name", "path"]].to_bag()
        if len(columns) == 1 or "path" in columns:
            return paths["path" if "path" in columns else columns[0]].to_bag()
        raise MaskbatchError(f"a DataFrame of photos needs a `path` column (and optionally "
                             f"`name`), got columns {columns}")
    raise MaskbatchError("paths must be a dask.bag.Bag, a dask Series of paths or a dask "
                         f"DataFrame with a path column, got {type(paths).__name__}")


# The class names of the model behind each predict() bag, by the bag's graph layer name: what
# to_dataframe reads (from any bag made from it: filter, map...) to keep the prob_<class> columns.
_CLASS_NAMES: dict[str, tuple[str, ...]] = {}


def predict_with_manifest(paths: Photos, *, detector: DetectorConfig = DetectorConfig(),
                          model: str | None = None, limits: InputLimits = InputLimits()
                          ) -> tuple[db.Bag, db.Bag]:
    """(detection records, manifest records) of a bag of photos, both from the same tasks:
    computed together (`dask.compute(d, m)`, or their to_dataframe frames), each partition's
    photos are processed once."""
    bag = as_bag(paths)
    PredictSettings(detector=detector, limits=limits, model=model)  # what the batch job checks
    detect.load_mode(detector.mode)  # a missing detector fails here, once, not in every task
    _, card = read_model(model)
    both = bag.map_partitions(_predict_records, detector=detector,
                              model=classifier.model_ref(model, card), limits=limits,
                              token="maskbatch-predict")
    _CLASS_NAMES[both.name] = classifier.class_names_of(card)
    return (both.map_partitions(operator.itemgetter(0), token="detections"),
            both.map_partitions(operator.itemgetter(1), token="manifest"))


def predict(paths: Photos, *, detector: DetectorConfig = DetectorConfig(),
            model: str | None = None, limits: InputLimits = InputLimits()) -> db.Bag:
    """A lazy bag of detection records (dicts with detections.parquet's columns) of a bag of
    photos: paths (the name is the path's basename) or (name, path) pairs, on any fsspec
    filesystem the workers can read; or a dask Series / DataFrame of them (`as_bag`).

    One record per face, per partition in input order then by score (as detections.parquet); a
    photo that fails or is skipped yields none (see `predict_with_manifest` for why). `model` is
    a classifier folder or its model.onnx (default: $MASKBATCH_MODEL or the bundled model).
    """
    return predict_with_manifest(paths, detector=detector, model=model, limits=limits)[0]


def _meta(schema: pa.Schema) -> pd.DataFrame:
    return schema.empty_table().to_pandas()


DETECTION_META = _meta(DETECTION_SCHEMA)
MANIFEST_META = _meta(MANIFEST_SCHEMA)


def class_names_of(records: db.Bag) -> tuple[str, ...] | None:
    """The class names of the model whose predict() made `records` (or the bag it came from),
    None for a bag predict() did not make."""
    for layer in records.__dask_graph__().layers:
        if layer in _CLASS_NAMES:
            return _CLASS_NAMES[layer]
    return None


def to_dataframe(records: db.Bag, *, manifest: bool = False,
                 class_names: tuple[str, ...] | None = None, model: str | None = None
                 ) -> dd.DataFrame:
    """A dask DataFrame of detection records (or, with `manifest`, of manifest records), with the
    columns and dtypes of detections.parquet (images.parquet): ready for `dd.to_parquet`,
    `.compute()` into pandas, or DuckDB. An N-class model's records add the prob_<class>
    columns of its card's classes: those of the model predict() used, or of `model` (a
    classifier folder), or `class_names`; default the two classes.

    The bag's graph is kept as it is (not fused into this frame's), so that frames of the same
    predict_with_manifest computed together share its tasks: every photo is processed once."""
    if manifest:
        return records.to_dataframe(meta=MANIFEST_META, optimize_graph=False)
    if class_names is None and model is not None:
        class_names = classifier.class_names_of(read_model(model)[1])
    class_names = class_names or class_names_of(records)
    meta = DETECTION_META if class_names is None else _meta(detection_schema(class_names))
    return records.to_dataframe(meta=meta, optimize_graph=False)


__all__ = ["DETECTION_META", "MANIFEST_META", "as_bag", "class_names_of", "jobqueue_cluster",
           "model_ref", "predict", "predict_with_manifest", "register_model", "to_dataframe"]

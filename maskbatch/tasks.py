"""What a worker runs for one partition: the Dask-free partition functions plus their part files.

Light imports only (no matplotlib, no pycocotools): every worker process imports this module.
"""

from __future__ import annotations

import hashlib

import pandas as pd

from maskbatch import files
from maskbatch.config import DetectorConfig, InputLimits
from maskbatch.models.classifier import ModelRef
from maskbatch.outputs import parts, privacy, writers
from maskbatch.pipeline import extract_partition, predict_partition_frames
from maskbatch.records import ImageRow, InputItem, image_table


def part_name(names: list[str]) -> str:
    """A partition's stable file stem, derived from the inputs it covers."""
    return "p-" + hashlib.sha1("\n".join(names).encode()).hexdigest()[:16]


def extract_and_write(pairs: list, label_map: dict, crop_size: int, out_dir: str) -> pd.DataFrame:
    """Worker side: crop a partition, write its crops shard itself, return only the manifest."""
    records = [record for _, record in pairs]
    crops, manifest = extract_partition(records, label_map, crop_size)
    if len(crops):
        shard = files.join(out_dir, "crops", part_name([r.name for r in records]) + ".parquet")
        writers.write_parquet_atomic(crops, shard)
    return manifest


def extract_poisoned(pairs: list, attempts: int) -> pd.DataFrame:
    """Driver side: an image whose workers kept dying gets a failed manifest row."""
    (_, record), = pairs
    row = {c: 0 for c in writers.EXTRACT_MANIFEST_COLUMNS}
    row.update(image=record.name, path=record.path, source_dataset=record.dataset,
               status="failed", reason=POISON_REASON.format(attempts=attempts),
               n_boxes=len(record.boxes), skipped_detail="", seconds=0.0)
    return pd.DataFrame([row], columns=writers.EXTRACT_MANIFEST_COLUMNS)


def predict_and_commit(pairs: list[tuple[int, tuple[str, object]]], out_dir: str,
                        detector: DetectorConfig, model: ModelRef,
                        limits: InputLimits = InputLimits(),
                        private: privacy.PrivacyJob | None = None) -> dict:
    """Worker side: one contiguous run of inputs (photos, video segments) -> its part files;
    returns the small summary. `private` (--save-crops, --blur): its crops and blurred copies are
    written before the part (privacy.PrivacyWriter.commit)."""
    writer = private.writer() if private is not None else None
    detections, manifest, frames = predict_partition_frames([item for _, item in pairs], detector,
                                                            model, limits, writer)
    counts = writer.commit(pairs[0][0], len(manifest)) if writer is not None else {}
    return {**parts.write_part(out_dir, pairs[0][0], in_output_order(detections, manifest),
                               manifest, frames), **counts}


def in_output_order(detections: pd.DataFrame, manifest: pd.DataFrame) -> pd.DataFrame:
    """Detections in detections.parquet's order: by input (the manifest's order; a video's frames
    in time order), then by score, highest first. predict_partition gives each image's rows
    together, in input order: the order a name first appears is its place."""
    rank = {name: i for i, name in enumerate(pd.unique(detections["name"]))}
    detections = detections.assign(_rank=detections["name"].map(rank), _neg=-detections["score"])
    return detections.sort_values(["_rank", "_neg"], kind="stable", ignore_index=True
                                  ).drop(columns=["_rank", "_neg"])


POISON_REASON = "the worker died while reading it ({attempts} attempts)"


def predict_poisoned(out_dir: str, pairs: list[tuple[int, tuple[str, object]]], attempts: int
                     ) -> dict:
    """Driver side: a photo (or video segment) whose workers kept dying gets a failed row."""
    (index, pair), = pairs
    item = InputItem._make(pair)
    row = ImageRow(item.name, item.path, "failed", POISON_REASON.format(attempts=attempts),
                   frames=0 if item.segment is not None else None, duration_s=item.duration_s)
    detections = pd.DataFrame(columns=writers.DETECTION_COLUMNS)
    return parts.write_part(out_dir, index, detections, image_table([row]))

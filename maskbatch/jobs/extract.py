"""`maskbatch extract`: crop every labelled face of a dataset on the cluster, write shards and manifest."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from maskbatch import files
from maskbatch.config import (
    CROP_SIZE,
    INCORRECT,
    MASK,
    NO_MASK,
    ClusterConfig,
    __version__,
    resolved_cluster,
)
from maskbatch.datasets import class_names_for, load_records, parse_label_map, splits
from maskbatch.errors import MaskbatchError
from maskbatch.jobs.outdir import prepare_out_dir, with_out_dir_lock
from maskbatch.outputs import writers
from maskbatch.runtime.executor import JobSession
from maskbatch.tasks import extract_and_write, extract_poisoned


@dataclass
class ExtractResult:
    manifest: pd.DataFrame
    crops: int
    counts: dict[str, dict[str, int]]
    duplicates: int
    seconds: float
    out_dir: str
    files: list[str] = field(default_factory=list)


@with_out_dir_lock
def extract(dataset: str, out_dir: str, *, layout: str = "auto", annotations: str = "auto",
            label_map: list[str] | None = None, crop_size: int = CROP_SIZE,
            cluster_config: ClusterConfig = ClusterConfig(), overwrite: bool = False,
            split: str | None = None, classes: int = 2) -> ExtractResult:
    """Crop every labelled face of a dataset folder into Parquet shards, in parallel on Dask.

    `split` ('train' or 'val') keeps only the photos of that part of the committed split of the
    dataset named by the folder's last component (maskbatch.datasets.splits).
    `classes` 3 keeps face_with_mask_incorrect (VOC's mask_weared_incorrect) as a label of its
    own; with 2 (the default) those boxes are skipped with a reason unless `label_map` maps them.
    """
    mapping = parse_label_map(label_map, class_names_for(classes))
    records = load_records(dataset, layout, annotations)
    if split is not None:
        records = splits.in_part(records, splits.dataset_name(dataset), split)
    if not records:
        raise MaskbatchError(f"no annotated images found in {dataset}"
                             + (f" in the {split} split" if split else ""))
    prepare_out_dir(out_dir, overwrite, inputs=[dataset])
    writers.write_json_atomic({"command": "extract", "dataset": dataset, "version": __version__,
                              "crop_size": crop_size, "label_map": mapping, "split": split,
                              **({"classes": classes} if classes != 2 else {})},
                             files.join(out_dir, "run.json"))
    started = time.perf_counter()
    manifests: dict[int, pd.DataFrame] = {}
    with JobSession(resolved_cluster(cluster_config)) as session:
        session.check_writable(out_dir)  # workers write the crops themselves
        session.run(list(enumerate(records)), extract_and_write,
                    lambda pairs, m: manifests.__setitem__(pairs[0][0], m),
                    size=session.partition_size(len(records)), on_poison=extract_poisoned,
                    label="extract", label_map=mapping, crop_size=crop_size, out_dir=out_dir)
    seconds = time.perf_counter() - started
    manifest = pd.concat([manifests[i] for i in sorted(manifests)], ignore_index=True)
    writers.write_parquet_atomic(manifest, files.join(out_dir, "manifest.parquet"))

    index = writers.read_crops(out_dir, columns=["crop_id", "label", "source_dataset", "pixel_hash"])
    duplicates = int(index.duplicated("pixel_hash").sum())
    counts = {label: int(n) for label, n in index["label"].value_counts().sort_index().items()}
    statuses = {s: int(n) for s, n in manifest["status"].value_counts().items()}
    summary = {"dataset": dataset, "images": len(manifest), "status": statuses,
               "crops": len(index), "crops_per_class": counts, "duplicate_crops": duplicates,
               "seconds": round(seconds, 2), "images_per_second": round(len(manifest) / seconds, 2)}
    writers.write_json_atomic(summary, files.join(out_dir, "summary.json"))
    _class_count_plot(counts, dataset, files.join(out_dir, "class_counts.png"))
    return ExtractResult(manifest, len(index), {dataset: counts}, duplicates, seconds, out_dir)


def _class_count_plot(counts: dict[str, int], dataset: str, url: str) -> None:
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    labels, names, colours = [MASK, NO_MASK], ["mask", "no mask"], ["#3cb43c", "#e62828"]
    if counts.get(INCORRECT):  # `--classes 3`
        labels, names, colours = labels + [INCORRECT], names + ["below nose"], colours + ["#f0a000"]
    values = [counts.get(label, 0) for label in labels]
    bars = ax.bar(names, values, color=colours)
    ax.bar_label(bars)
    ax.set_ylabel("face crops")
    ax.set_title(f"Crops per class: {Path(dataset.rstrip('/')).name}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    writers.write_bytes_atomic(url, buf.getvalue())


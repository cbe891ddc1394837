"""The job's Python API: extract() and predict() orchestrate readers, Dask and writers.

Notebook use:  ``df = maskbatch.predict("photos/", out_dir="out/")``.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from maskbatch import (
    MASK,
    NO_MASK,
    __version__,
    cluster,
    coco,
    detect,
    files,
    inputs,
    output,
    parts,
    run_report,
    storage,
)
from maskbatch.classify import Classifier, ModelRef, default_model_dir, read_model
from maskbatch.config import CROP_SIZE, ClusterConfig, DetectorConfig, InputLimits
from maskbatch.datasets import load_records, parse_label_map, splits
from maskbatch.errors import MaskbatchError
from maskbatch.pipeline import extract_partition, predict_partition

# --------------------------------------------------------------------------- shared


def _prepare_out_dir(out_dir: str, overwrite: bool, resume: bool = False) -> None:
    """Refuse to mix a new run into a folder holding an older one, unless told what to do."""
    storage.check_output_bucket(out_dir)  # fsspec would create a missing bucket
    fs, path = files.filesystem(out_dir)
    if fs.exists(path) and not fs.isdir(path):
        raise MaskbatchError(f"--out {out_dir} is a file, not a folder")
    existing = fs.ls(path, detail=False) if fs.exists(path) else []
    if existing and resume and not is_maskbatch_output(out_dir):
        raise MaskbatchError(f"refusing to --resume into {out_dir}: it is not a maskbatch output "
                             "folder (no run.json written by maskbatch); nothing was changed")
    if existing and not resume:
        if not overwrite:
            raise MaskbatchError(
                f"output folder {out_dir} is not empty (an earlier run?); use --resume to finish "
                "that run or --overwrite to replace it"
            )
        if not is_maskbatch_output(out_dir):
            raise MaskbatchError(f"refusing to --overwrite {out_dir}: it is not a maskbatch output "
                                 "folder (no run.json written by maskbatch)")
        fs.rm(path, recursive=True)
    fs.makedirs(path, exist_ok=True)


def is_maskbatch_output(out_dir: str) -> bool:
    """True when the folder's run.json was written by maskbatch (extract or predict)."""
    import json

    fs, path = files.filesystem(files.join(out_dir, "run.json"))
    try:
        with fs.open(path, "rb") as f:
            record = json.loads(f.read())
    except (OSError, ValueError):
        return False
    return (isinstance(record, dict) and record.get("command") in ("extract", "predict")
            and "version" in record)


def _part_name(names: list[str]) -> str:
    """A partition's stable file stem, derived from the inputs it covers."""
    return "p-" + hashlib.sha1("\n".join(names).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- extract


@dataclass
class ExtractResult:
    manifest: pd.DataFrame
    crops: int
    counts: dict[str, dict[str, int]]
    duplicates: int
    seconds: float
    out_dir: str
    files: list[str] = field(default_factory=list)


def _extract_and_write(pairs: list, label_map: dict, crop_size: int, out_dir: str) -> pd.DataFrame:
    """Worker side: crop a partition, write its crops shard itself, return only the manifest."""
    records = [record for _, record in pairs]
    crops, manifest = extract_partition(records, label_map, crop_size)
    if len(crops):
        shard = files.join(out_dir, "crops", _part_name([r.name for r in records]) + ".parquet")
        output.write_parquet_atomic(crops, shard)
    return manifest


def _extract_poisoned(pairs: list, attempts: int) -> pd.DataFrame:
    """Driver side: an image whose workers kept dying gets a failed manifest row."""
    (_, record), = pairs
    row = {c: 0 for c in output.EXTRACT_MANIFEST_COLUMNS}
    row.update(image=record.name, path=record.path, source_dataset=record.dataset,
               status="failed", reason=POISON_REASON.format(attempts=attempts),
               n_boxes=len(record.boxes), skipped_detail="", seconds=0.0)
    return pd.DataFrame([row], columns=output.EXTRACT_MANIFEST_COLUMNS)


def extract(dataset: str, out_dir: str, *, layout: str = "auto", annotations: str = "auto",
            label_map: list[str] | None = None, crop_size: int = CROP_SIZE,
            cluster_config: ClusterConfig = ClusterConfig(), overwrite: bool = False,
            split: str | None = None) -> ExtractResult:
    """Crop every labelled face of a dataset folder into Parquet shards, in parallel on Dask.

    `split` ('train' or 'val') keeps only the photos of that part of the committed split of the
    dataset named by the folder's last component (maskbatch.datasets.splits).
    """
    mapping = parse_label_map(label_map)
    records = load_records(dataset, layout, annotations)
    if split is not None:
        records = splits.in_part(records, splits.dataset_name(dataset), split)
    if not records:
        raise MaskbatchError(f"no annotated images found in {dataset}"
                             + (f" in the {split} split" if split else ""))
    _prepare_out_dir(out_dir, overwrite)
    output.write_json_atomic({"command": "extract", "dataset": dataset, "version": __version__,
                              "crop_size": crop_size, "label_map": mapping, "split": split},
                             files.join(out_dir, "run.json"))
    started = time.perf_counter()
    manifests: dict[int, pd.DataFrame] = {}
    with cluster.dask_client(cluster_config) as client:
        size = cluster_config.partition_size or cluster.choose_partition_size(
            len(records), cluster.total_threads(client))
        cluster.run_partitions(
            client, cluster.contiguous_partitions(enumerate(records), size), _extract_and_write,
            lambda pairs, m: manifests.__setitem__(pairs[0][0], m),
            on_poison=_extract_poisoned, total_items=len(records),
            progress=cluster_config.progress, label="extract", label_map=mapping,
            crop_size=crop_size, out_dir=out_dir)
    seconds = time.perf_counter() - started
    manifest = pd.concat([manifests[i] for i in sorted(manifests)], ignore_index=True)
    output.write_parquet_atomic(manifest, files.join(out_dir, "manifest.parquet"))

    index = output.read_crops(out_dir, columns=["crop_id", "label", "source_dataset", "pixel_hash"])
    duplicates = int(index.duplicated("pixel_hash").sum())
    counts = {label: int(n) for label, n in index["label"].value_counts().sort_index().items()}
    statuses = {s: int(n) for s, n in manifest["status"].value_counts().items()}
    summary = {"dataset": dataset, "images": len(manifest), "status": statuses,
               "crops": len(index), "crops_per_class": counts, "duplicate_crops": duplicates,
               "seconds": round(seconds, 2), "images_per_second": round(len(manifest) / seconds, 2)}
    output.write_json_atomic(summary, files.join(out_dir, "summary.json"))
    _class_count_plot(counts, dataset, files.join(out_dir, "class_counts.png"))
    return ExtractResult(manifest, len(index), {dataset: counts}, duplicates, seconds, out_dir)


def _class_count_plot(counts: dict[str, int], dataset: str, url: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    values = [counts.get(label, 0) for label in (MASK, NO_MASK)]
    bars = ax.bar(["mask", "no mask"], values, color=["#3cb43c", "#e62828"])
    ax.bar_label(bars)
    ax.set_ylabel("face crops")
    ax.set_title(f"Crops per class: {Path(dataset.rstrip('/')).name}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    output.write_bytes_atomic(url, buf.getvalue())


# --------------------------------------------------------------------------- predict


class PredictResult:
    """What predict() did. `detections` and `manifest` are read from the output files when first
    asked for, so a run of millions of photos never holds them in the driver unless you do (or
    pass them in: `detections=`, `manifest=`)."""

    def __init__(self, out_dir: str, seconds: float, processed: int,
                 counts: parts.Compacted | None = None, dashboard: str | None = None,
                 wall_seconds: float = 0.0, startup_seconds: float = 0.0,
                 partition_size: int = 0, stats: cluster.RunStats | None = None,
                 worker_restarts: int = 0, detections: pd.DataFrame | None = None,
                 manifest: pd.DataFrame | None = None) -> None:
        self.out_dir = out_dir
        self.seconds = seconds  # processing: from the first task submitted to the last committed
        self.processed = processed  # images processed by this call (fewer after --resume)
        self.counts = counts or parts.Compacted()
        self.dashboard = dashboard
        self.wall_seconds = wall_seconds  # the whole call, cluster start-up and final files included
        self.startup_seconds = startup_seconds  # from the call to the first task submitted
        self.partition_size = partition_size
        self.stats = stats or cluster.RunStats()
        self.worker_restarts = worker_restarts  # worker processes lost while this call ran
        self._frames: dict[str, pd.DataFrame] = {}
        if detections is not None:
            self._frames["detections.parquet"] = detections
        if manifest is not None:
            self._frames["images.parquet"] = manifest

    def _read(self, name: str) -> pd.DataFrame:
        if name not in self._frames:
            self._frames[name] = output.read_parquet(files.join(self.out_dir, name))
        return self._frames[name]

    @property
    def detections(self) -> pd.DataFrame:
        return self._read("detections.parquet")

    @property
    def manifest(self) -> pd.DataFrame:
        return self._read("images.parquet")


def list_inputs(images_arg: str, images_dir: str | None = None) -> list[tuple[str, str]]:
    """(name, path) of every photo to process, from a folder/URL or a submission template CSV."""
    if images_arg.lower().endswith(".csv"):
        return inputs.template_inputs(images_arg, images_dir)
    return inputs.folder_inputs(images_arg)


def _run_record(inputs: list, model: ModelRef, detector: DetectorConfig,
                partition_size: int | str) -> dict:
    return {"command": "predict", "version": __version__, "model_sha256": model.sha256,
            "detector": detector.as_dict(), "partition_size": partition_size,
            "inputs": len(inputs),
            "inputs_sha1": hashlib.sha1("\n".join(n for n, _ in inputs).encode()).hexdigest()}


def _check_resumable(out_dir: str, record: dict) -> None:
    run_json = files.join(out_dir, "run.json")
    fs, path = files.filesystem(run_json)
    if not fs.exists(path) or not is_maskbatch_output(out_dir):
        return  # nothing to resume; _prepare_out_dir refuses a folder that is not maskbatch's
    import json

    with fs.open(path, "rb") as f:
        old = json.loads(f.read())
    if old.get("command") != "predict":
        raise MaskbatchError(f"cannot --resume {out_dir}: it holds a maskbatch "
                             f"{old.get('command')} run, not a predict run")
    for key in ("model_sha256", "detector", "inputs_sha1"):
        if old.get(key) != record.get(key):
            raise MaskbatchError(f"cannot --resume {out_dir}: its run used a different {key} "
                                 "(use --overwrite to start again)")


def predict(images_arg: str, out_dir: str, *, images_dir: str | None = None,
            model: str | None = None, detector: DetectorConfig = DetectorConfig(),
            cluster_config: ClusterConfig = ClusterConfig(), previews: int = 0,
            resume: bool = False, overwrite: bool = False,
            limits: InputLimits = InputLimits()) -> PredictResult:
    """Detect and classify every face in a folder of photos; write detections, submission, manifest.

    Workers commit each partition under OUT_DIR/parts and the driver logs it (so --resume skips
    finished work); at the end the committed parts are streamed, in input order, into
    detections.parquet, submission.csv and images.parquet. Every photo is read within `limits`
    (bytes, pixels, seconds); one that is not fails alone.
    """
    if resume and overwrite:
        raise MaskbatchError("--resume and --overwrite contradict each other; pick one")
    check_predict_arguments(detector, previews, limits)
    called = time.perf_counter()
    detect.load_mode(detector.mode)  # a missing detector or too old an OpenCV fails here, once
    inputs = list_inputs(images_arg, images_dir)
    onnx_bytes, card = read_model(model)
    check_model_loads(onnx_bytes, card, model or str(default_model_dir()))
    model_dir = Path(model) if model else default_model_dir()
    onnx_path = model_dir if model_dir.suffix == ".onnx" else model_dir / "model.onnx"
    ref = ModelRef(card["onnx_sha256"], str(onnx_path))
    record = _run_record(inputs, ref, detector, cluster_config.partition_size or "auto")
    if resume:
        _check_resumable(out_dir, record)
    _prepare_out_dir(out_dir, overwrite, resume)
    storage.remove_temporaries(out_dir)  # an interrupted run's half-renamed objects
    for stale in ("detections.parquet", "submission.csv", "images.parquet", "summary.json",
                  "detections.coco.json", "images.coco.json", "report.html"):
        fs, p = files.filesystem(files.join(out_dir, stale))
        if fs.exists(p):
            fs.rm(p)
    output.write_json_atomic(record, files.join(out_dir, "run.json"))

    log = parts.CommitLog(out_dir)
    done = parts.done_ranges(log.entries())
    todo = sum(1 for _ in parts.not_done(len(inputs), done))
    wall_started, events_since = time.perf_counter(), time.time()
    with cluster.dask_client(cluster_config) as client:
        dash = cluster.dashboard(client)
        if dash and cluster_config.progress:
            print(f"Dask dashboard: {dash}", flush=True)
        cluster.install_plugin(client, cluster.MaskbatchSetup(onnx_bytes, card))
        size = cluster_config.partition_size or cluster.choose_partition_size(
            todo, cluster.total_threads(client))
        started = time.perf_counter()
        timeline = run_report.Timeline()  # photos committed over time, for report.html

        def commit(_: list, entry: dict) -> None:
            log.append(entry)
            timeline.add(entry["count"])

        try:
            stats = cluster.run_partitions(
                client, cluster.contiguous_partitions(
                    ((i, inputs[i]) for i in parts.not_done(len(inputs), done)), size),
                _predict_and_commit, commit,
                on_poison=functools.partial(_poisoned, out_dir), total_items=todo,
                progress=cluster_config.progress, label="predict", out_dir=out_dir,
                detector=detector, model=ref, limits=limits)
        finally:
            log.close()
        seconds = time.perf_counter() - started
        restarts = cluster.workers_lost(client, events_since)
        final_started = time.perf_counter()
        counts = parts.compact(out_dir, [name for name, _ in inputs], previews)
        if previews:
            _write_previews(client, out_dir, counts.previews)
        result = PredictResult(out_dir, seconds, todo, counts, dash,
                               time.perf_counter() - wall_started,
                               (stats.first_submit or started) - called, size, stats, restarts)
        # the report's digest and the COCO files read the final tables in batches: the driver
        # never holds every detection (docs/benchmarks.md)
        digest = run_report.Digest.of_out_dir(out_dir, float(card.get("threshold", 0.5)),
                                              n_first=min(previews, 8) or run_report.N_FIRST)
        gallery = run_report.draw_gallery(digest, functools.partial(cluster.call_each, client))
        coco.write_coco(out_dir)
        # the final step: compaction, previews, the report's digest and gallery, COCO files
        counts.seconds = time.perf_counter() - final_started
        result.wall_seconds = time.perf_counter() - wall_started
    output.write_json_atomic(summary(result), files.join(out_dir, "summary.json"))
    run_report.write_run_report(out_dir, summary=summary(result),
                                run={**record, "images": images_arg}, model_card=card,
                                detector=detector, timeline=timeline.points, gallery=gallery,
                                digest=digest)
    storage.remove_temporaries(out_dir)  # e.g. a part written twice by a retried task
    return result


def _predict_and_commit(pairs: list[tuple[int, tuple[str, str]]], out_dir: str,
                        detector: DetectorConfig, model: ModelRef,
                        limits: InputLimits = InputLimits()) -> dict:
    """Worker side: one contiguous run of inputs -> its part files; returns the small summary."""
    detections, manifest = predict_partition([item for _, item in pairs], detector, model, limits)
    rank = {name: i for i, name in enumerate(manifest["name"])}
    detections = detections.assign(_rank=detections["name"].map(rank), _neg=-detections["score"])
    detections = detections.sort_values(["_rank", "_neg"], kind="stable", ignore_index=True
                                        ).drop(columns=["_rank", "_neg"])
    return parts.write_part(out_dir, pairs[0][0], detections, manifest)


def check_predict_arguments(detector: DetectorConfig, previews: int, limits: InputLimits) -> None:
    """One readable error for a setting that cannot work (the CLI checks the same when parsing)."""
    if not (math.isfinite(detector.gamma) and detector.gamma > 0):
        raise MaskbatchError(f"gamma must be a finite number above 0, got {detector.gamma}")
    if detector.confidence is not None and not 0 <= detector.confidence <= 1:
        raise MaskbatchError(f"confidence must be between 0 and 1, got {detector.confidence}")
    if not detector.min_face >= 0:
        raise MaskbatchError(f"min_face must be 0 or more pixels, got {detector.min_face}")
    if previews < 0:
        raise MaskbatchError(f"previews must be 0 or more, got {previews}")
    if limits.max_bytes < 1 or limits.max_pixels < 1:
        raise MaskbatchError("max_bytes and max_pixels must be at least 1")
    if not limits.read_timeout > 0:
        raise MaskbatchError(f"read_timeout must be above 0 seconds, got {limits.read_timeout}")


def check_model_loads(onnx_bytes: bytes, card: dict, where: str) -> None:
    """Load the model once here, so that a file that matches its card but is no ONNX model stops
    the job with one line before anything is written (not in every worker with a traceback)."""
    try:
        Classifier(onnx_bytes, card)
    except MaskbatchError:
        raise
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        detail = lines[0][:200] if lines else type(exc).__name__
        raise MaskbatchError(f"model {where} does not load: {detail}") from None


POISON_REASON = "the worker died while reading it ({attempts} attempts)"


def _poisoned(out_dir: str, pairs: list[tuple[int, tuple[str, str]]], attempts: int) -> dict:
    """Driver side: a photo whose workers kept dying gets a failed row of its own."""
    (index, (name, path)), = pairs
    manifest = pd.DataFrame([{"name": name, "path": path, "status": "failed",
                              "reason": POISON_REASON.format(attempts=attempts), "n_faces": 0,
                              "width": 0, "height": 0, "seconds": 0.0}],
                            columns=output.PREDICT_MANIFEST_COLUMNS)
    detections = pd.DataFrame(columns=output.DETECTION_COLUMNS)
    return parts.write_part(out_dir, index, detections, manifest)


def _write_previews(client: object, out_dir: str, chosen: list[tuple[str, str, list]]) -> None:
    from maskbatch.draw import preview_jpeg

    futures = [(name, client.submit(preview_jpeg, path, boxes, pure=False))
               for name, path, boxes in chosen]
    for name, future in futures:
        try:
            data = future.result()
        except MaskbatchError:  # the photo changed or went away since it was read: no preview
            continue
        if data:
            stem = Path(name).stem
            output.write_bytes_atomic(files.join(out_dir, "previews", f"{stem}.jpg"), data)


def summary(result: PredictResult) -> dict:
    c = result.counts
    return {
        "images": c.images, "processed_now": result.processed,
        "ok": c.ok, "failed": c.failed, "skipped": c.skipped,
        "failures": c.failures,  # the first parts.FAILURES_LISTED; images.parquet has them all
        "skipped_entries": c.skipped_entries,  # the first parts.FAILURES_LISTED too
        "worker_restarts": result.worker_restarts,
        "faces": c.faces, "faces_per_class": {k: c.faces_per_class.get(k, 0) for k in (MASK, NO_MASK)},
        "seconds": round(result.seconds, 2), "wall_seconds": round(result.wall_seconds, 2),
        "images_per_second": round(result.processed / result.seconds, 2) if result.seconds else None,
        "startup_seconds": round(result.startup_seconds, 2),
        "final_seconds": round(c.seconds, 2), "partition_size": result.partition_size,
        "tasks": result.stats.tasks, "tasks_killed": result.stats.killed,
        "driver_cpu_seconds": round(result.stats.cpu_seconds, 2),
        "out_dir": result.out_dir,
    }

"""`maskbatch predict`: the batch job. Detect and classify every face of many photos on Dask.

Notebook use:  ``result = maskbatch.predict("photos/", "out/")``.
"""

from __future__ import annotations

import functools
import hashlib
import math
import time

import numpy as np
import pandas as pd

from maskbatch import files, storage
from maskbatch.config import (
    CLASS_NAMES,
    MAX_PIXELS_CEILING,
    VIDEO_FPS,
    VIDEO_SEGMENT_SECONDS,
    ClusterConfig,
    DetectorConfig,
    InputLimits,
    __version__,
)
from maskbatch.errors import MaskbatchError
from maskbatch.jobs.outdir import (
    check_apart_from_inputs,
    check_resumable,
    prepare_out_dir,
    with_out_dir_lock,
)
from maskbatch.models import detect
from maskbatch.models.classifier import (
    Classifier,
    ModelRef,
    check_class_count,
    class_names_of,
    default_model_dir,
    model_for_classes,
    model_ref,
    preprocess,
    read_model,
)
from maskbatch.outputs import coco, parts, run_digest, run_page, writers
from maskbatch.outputs.draw import preview_jpeg, preview_names
from maskbatch.photos import inputs, video
from maskbatch.runtime import cluster, window
from maskbatch.tasks import predict_and_commit, predict_poisoned


class PredictResult:
    """What predict() did. `detections` and `manifest` are read from the output files when first
    asked for, so a run of millions of photos never holds them in the driver unless you do (or
    pass them in: `detections=`, `manifest=`)."""

    def __init__(self, out_dir: str, seconds: float, processed: int,
                 counts: parts.Compacted | None = None, dashboard: str | None = None,
                 wall_seconds: float = 0.0, startup_seconds: float = 0.0,
                 partition_size: int = 0, stats: window.RunStats | None = None,
                 worker_restarts: int = 0, detections: pd.DataFrame | None = None,
                 manifest: pd.DataFrame | None = None,
                 class_names: tuple[str, ...] = CLASS_NAMES) -> None:
        self.out_dir = out_dir
        self.seconds = seconds  # processing: from the first task submitted to the last committed
        self.processed = processed  # images processed by this call (fewer after --resume)
        self.counts = counts or parts.Compacted()
        self.dashboard = dashboard
        self.wall_seconds = wall_seconds  # the whole call, cluster start-up and final files included
        self.startup_seconds = startup_seconds  # from the call to the first task submitted
        self.partition_size = partition_size
        self.stats = stats or window.RunStats()
        self.worker_restarts = worker_restarts  # worker processes lost while this call ran
        self.class_names = class_names  # the model card's, in its order
        self._frames: dict[str, pd.DataFrame] = {}
        if detections is not None:
            self._frames["detections.parquet"] = detections
        if manifest is not None:
            self._frames["images.parquet"] = manifest

    def _read(self, name: str) -> pd.DataFrame:
        if name not in self._frames:
            self._frames[name] = writers.read_parquet(files.join(self.out_dir, name))
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


def input_places(images_arg: str, images_dir: str | None = None) -> list[str]:
    """The folders and files a run reads from, that its --out must keep apart from."""
    if not images_arg.lower().endswith(".csv"):
        return [images_arg]
    return [images_arg, images_dir or inputs.template_folder(images_arg)]


def _run_record(inputs: list, model: ModelRef, detector: DetectorConfig,
                partition_size: int | str, fps: float = VIDEO_FPS,
                segment_seconds: float = VIDEO_SEGMENT_SECONDS) -> dict:
    record = {"command": "predict", "version": __version__, "model_sha256": model.sha256,
              "detector": detector.as_dict(), "partition_size": partition_size,
              "inputs": len(inputs),
              "inputs_sha1": hashlib.sha1("\n".join(n for n, _ in inputs).encode()).hexdigest()}
    if any(isinstance(path, video.Segment) for _, path in inputs):
        record["video"] = {"fps": fps, "segment_seconds": segment_seconds}
    return record


@with_out_dir_lock
def predict(images_arg: str, out_dir: str, *, images_dir: str | None = None,
            model: str | None = None, detector: DetectorConfig = DetectorConfig(),
            cluster_config: ClusterConfig = ClusterConfig(), previews: int = 0,
            resume: bool = False, overwrite: bool = False,
            limits: InputLimits = InputLimits(), fps: float = VIDEO_FPS,
            segment_seconds: float = VIDEO_SEGMENT_SECONDS,
            classes: int | None = None) -> PredictResult:
    """Detect and classify every face in a folder of photos and videos; write detections,
    submission, manifest.

    Each video is probed here once and cut into items of `segment_seconds` (one row each in
    images.parquet, named ``clip.mp4@0000.000-0060.000``); the frames at t = 0, 1/fps, 2/fps ...
    go through the same detection as photos, their faces named ``clip.mp4#t=12.000``.

    Workers commit each partition under OUT_DIR/parts and the driver logs it (so --resume skips
    finished work); at the end the committed parts are streamed, in input order, into
    detections.parquet, submission.csv and images.parquet. Every photo is read within `limits`
    (bytes, pixels, seconds); one that is not fails alone. `classes` 2 or 3 picks the bundled
    model of that many classes (with `model`: checks that it has them).
    """
    model = model_for_classes(model, classes)
    if resume and overwrite:
        raise MaskbatchError("--resume and --overwrite contradict each other; pick one")
    check_predict_arguments(detector, previews, limits)
    if not (math.isfinite(fps) and fps > 0):
        raise MaskbatchError(f"fps must be a finite number above 0, got {fps}")
    if not (math.isfinite(segment_seconds) and segment_seconds > 0):
        raise MaskbatchError(f"segment_seconds must be above 0, got {segment_seconds}")
    called = time.perf_counter()
    detect.load_mode(detector.mode)  # a missing or corrupt detector fails here, once
    listed = list_inputs(images_arg, images_dir)
    places = input_places(images_arg, images_dir)
    check_apart_from_inputs(out_dir, places)
    inputs = video.expand_videos(listed, fps, segment_seconds, limits)
    onnx_bytes, card = read_model(model)
    where = model or str(default_model_dir())
    check_class_count(card, classes, where)
    check_model_loads(onnx_bytes, card, where)
    ref = model_ref(model, card)
    class_names = class_names_of(card)
    record = _run_record(inputs, ref, detector, cluster_config.partition_size or "auto", fps,
                         segment_seconds)
    if resume:
        check_resumable(out_dir, record)
    prepare_out_dir(out_dir, overwrite, resume, places)
    storage.remove_temporaries(out_dir)  # an interrupted run's half-renamed objects
    for stale in ("detections.parquet", "submission.csv", "images.parquet", "frames.parquet",
                  "summary.json", "detections.coco.json", "images.coco.json", "report.html"):
        fs, p = files.filesystem(files.join(out_dir, stale))
        if fs.exists(p):
            fs.rm(p)
    writers.write_json_atomic(record, files.join(out_dir, "run.json"))

    log = parts.CommitLog(out_dir)
    done = parts.done_ranges(log.entries())
    todo = sum(1 for _ in parts.not_done(len(inputs), done))
    wall_started, events_since = time.perf_counter(), time.time()
    with cluster.dask_client(cluster_config) as client:
        dash = cluster.dashboard(client)
        if dash and cluster_config.progress:
            print(f"Dask dashboard: {dash}", flush=True)
        cluster.install_plugin(client, cluster.MaskbatchSetup(onnx_bytes, card))
        # a video segment counts as the frames it samples: a task holds about as many frames
        # as it would hold photos, and a long video's segments spread over the workers
        weights = [_weight(path) for _, path in inputs]
        work = sum(weights[i] for i in parts.not_done(len(inputs), done))
        size = cluster_config.partition_size or window.choose_partition_size(
            work, window.total_threads(client))
        started = time.perf_counter()
        timeline = run_digest.Timeline()  # photos committed over time, for report.html

        def commit(_: list, entry: dict) -> None:
            log.append(entry)
            timeline.add(entry["count"])

        try:
            stats = window.run_partitions(
                client, window.contiguous_partitions(
                    ((i, inputs[i]) for i in parts.not_done(len(inputs), done)), size,
                    weight=lambda item: _weight(item[1])),
                predict_and_commit, commit,
                on_poison=functools.partial(predict_poisoned, out_dir), total_items=todo,
                progress=cluster_config.progress, label="predict", out_dir=out_dir,
                detector=detector, model=ref, limits=limits)
        finally:
            log.close()
        seconds = time.perf_counter() - started
        restarts = cluster.workers_lost(client, events_since)
        final_started = time.perf_counter()
        counts = parts.compact(out_dir, [name for name, _ in inputs], previews, class_names)
        if previews:
            _write_previews(client, out_dir, counts.previews)
        result = PredictResult(out_dir, seconds, todo, counts, dash,
                               time.perf_counter() - wall_started,
                               (stats.first_submit or started) - called, size, stats, restarts,
                               class_names=class_names)
        # the report's digest and the COCO files read the final tables in batches: the driver
        # never holds every detection (docs/benchmarks.md)
        digest = run_digest.Digest.of_out_dir(out_dir, float(card.get("threshold", 0.5)),
                                              n_first=min(previews, 8) or run_digest.N_FIRST,
                                              class_names=class_names)
        gallery = run_digest.draw_gallery(digest, functools.partial(window.call_each, client))
        coco.write_coco(out_dir, class_names)
        # the final step: compaction, previews, the report's digest and gallery, COCO files
        counts.seconds = time.perf_counter() - final_started
        result.wall_seconds = time.perf_counter() - wall_started
    totals = summary(result)
    writers.write_json_atomic(totals, files.join(out_dir, "summary.json"))
    run_page.write_run_report(out_dir, summary=totals,
                                run={**record, "images": images_arg}, model_card=card,
                                detector=detector, timeline=timeline.points, gallery=gallery,
                                digest=digest)
    storage.remove_temporaries(out_dir)  # e.g. a part written twice by a retried task
    return result


def _weight(path: object) -> int:
    """Units of work of one item: 1 for a photo, the frames it samples for a video segment."""
    return len(video.sampled_frames(path)) if isinstance(path, video.Segment) else 1


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
    if limits.max_pixels > MAX_PIXELS_CEILING:
        raise MaskbatchError(f"max_pixels can be at most {MAX_PIXELS_CEILING:,} (OpenCV's decoder "
                             f"limit here), got {limits.max_pixels:,}")
    if not limits.read_timeout > 0:
        raise MaskbatchError(f"read_timeout must be above 0 seconds, got {limits.read_timeout}")


def check_model_loads(onnx_bytes: bytes, card: dict, where: str) -> None:
    """Load the model once here, so that a file that matches its card but is no ONNX model stops
    the job with one line before anything is written (not in every worker with a traceback)."""
    try:
        classifier = Classifier(onnx_bytes, card)
    except MaskbatchError:
        raise
    except Exception as exc:
        raise MaskbatchError(f"model {where} does not load: {_first_line(exc)}") from None
    try:  # two blank crops of the card's input size: a model that does not fit its card fails here
        out = classifier.raw_output(preprocess(
            [np.zeros((classifier.input_size,) * 2 + (3,), np.uint8)] * 2, classifier.input_size))
    except Exception as exc:
        raise MaskbatchError(f"model {where} does not fit its card (input_size "
                             f"{classifier.input_size}, one P(mask) per face): {_first_line(exc)}"
                             ) from None
    n_classes = len(classifier.class_names)
    expected = 1 if n_classes == 2 else n_classes
    if out.size != 2 * expected:
        per_face = out.size / 2 if out.size % 2 == 0 else out.size
        what = "one P(class_names[0]) per face" if n_classes == 2 else f"{n_classes} per face"
        raise MaskbatchError(f"model {where} does not fit its card: its class_names list "
                             f"{n_classes} classes ({what}) but it gave {out.shape} values for "
                             f"2 faces ({per_face:g} per face)")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def _write_previews(client: object, out_dir: str, chosen: list[tuple[str, str, list]]) -> None:

    futures = [(name, client.submit(preview_jpeg, path, boxes, pure=False))
               for name, path, boxes in chosen]
    names = preview_names(name for name, _ in futures)
    for (_, future), file_name in zip(futures, names):
        try:
            data = future.result()
        except MaskbatchError:  # the photo changed or went away since it was read: no preview
            continue
        if data:
            writers.write_bytes_atomic(files.join(out_dir, "previews", file_name), data)


def summary(result: PredictResult) -> dict:
    c = result.counts
    return {
        "images": c.images, "processed_now": result.processed,
        "ok": c.ok, "failed": c.failed, "skipped": c.skipped,
        "failures": c.failures,  # the first parts.FAILURES_LISTED; images.parquet has them all
        "skipped_entries": c.skipped_entries,  # the first parts.FAILURES_LISTED too
        "video_frames": c.frames,  # sampled video frames read
        "video_notes": c.video_notes,  # segments read in part (ends early...), the first 1000
        "worker_restarts": result.worker_restarts,
        "faces": c.faces, "faces_per_class": {k: c.faces_per_class.get(k, 0)
                                               for k in result.class_names},
        "seconds": round(result.seconds, 2), "wall_seconds": round(result.wall_seconds, 2),
        "images_per_second": round(result.processed / result.seconds, 2) if result.seconds else None,
        "startup_seconds": round(result.startup_seconds, 2),
        "final_seconds": round(c.seconds, 2), "partition_size": result.partition_size,
        "tasks": result.stats.tasks, "tasks_killed": result.stats.killed,
        "driver_cpu_seconds": round(result.stats.cpu_seconds, 2),
        "out_dir": result.out_dir,
    }


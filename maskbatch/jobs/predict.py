"""`maskbatch predict`: the batch job. Detect and classify every face of many photos on Dask.

Notebook use:  ``result = maskbatch.predict("photos/", "out/")``.

A run is three steps: prepare (maskbatch.jobs.plan: the checked plan, before any work), execute
(the partitions on the cluster, each committed by its worker and logged here) and finalize (the
committed parts streamed into the final files, previews, COCO files, summary and report).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

import pandas as pd

from maskbatch import files, storage
from maskbatch.config import (
    BLUR_CONFIDENCE,
    CLASS_NAMES,
    VIDEO_FPS,
    VIDEO_SEGMENT_SECONDS,
    ClusterConfig,
    DetectorConfig,
    InputLimits,
    OutputOptions,
    VideoSampling,
    predict_settings,
)
from maskbatch.jobs import privacy
from maskbatch.jobs.outdir import with_out_dir_lock
from maskbatch.jobs.plan import PredictPlan, item_weight, list_inputs, prepare
from maskbatch.outputs import coco, parts, run_digest, run_page, writers
from maskbatch.outputs.draw import preview_jpeg, preview_names
from maskbatch.runtime import window
from maskbatch.runtime.cluster import MaskbatchSetup
from maskbatch.runtime.executor import JobSession
from maskbatch.tasks import predict_and_commit, predict_poisoned


@dataclass
class PredictResult:
    """What predict() did. `detections` and `manifest` are read from the output files when first
    asked for, so a run of millions of photos never holds them in the driver unless you do."""

    out_dir: str
    seconds: float  # processing: from the first task submitted to the last committed
    processed: int  # images processed by this call (fewer after --resume)
    counts: parts.Compacted = field(default_factory=parts.Compacted)
    dashboard: str | None = None
    wall_seconds: float = 0.0  # the whole call, cluster start-up and final files included
    startup_seconds: float = 0.0  # from the call to the first task submitted
    partition_size: int = 0
    stats: window.RunStats = field(default_factory=window.RunStats)
    worker_restarts: int = 0  # worker processes lost while this call ran
    class_names: tuple[str, ...] = CLASS_NAMES  # the model card's, in its order
    # the final tables read so far, by file name (detections.parquet, images.parquet)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)

    def _read(self, name: str) -> pd.DataFrame:
        if name not in self.tables:
            self.tables[name] = writers.read_parquet(files.join(self.out_dir, name))
        return self.tables[name]

    @property
    def detections(self) -> pd.DataFrame:
        return self._read("detections.parquet")

    @property
    def manifest(self) -> pd.DataFrame:
        return self._read("images.parquet")


@dataclass
class Execution:
    """What the cluster did for one run (execute)."""

    processed: int  # inputs run now (the rest were committed by an earlier run)
    partition_size: int
    stats: window.RunStats
    started: float  # time.perf_counter() when the first partition was asked for
    seconds: float  # from then to the last committed
    timeline: run_digest.Timeline  # photos committed over time, for report.html


@with_out_dir_lock
def predict(images_arg: str, out_dir: str, *, images_dir: str | None = None,
            model: str | None = None, detector: DetectorConfig | None = None,
            cluster_config: ClusterConfig | None = None, previews: int = 0,
            resume: bool = False, overwrite: bool = False, limits: InputLimits | None = None,
            fps: float = VIDEO_FPS, segment_seconds: float = VIDEO_SEGMENT_SECONDS,
            classes: int | None = None, save_crops: bool = False, blur: bool = False,
            blur_confidence: float = BLUR_CONFIDENCE) -> PredictResult:
    """Detect and classify every face in a folder of photos and videos; write detections,
    submission, manifest.

    Each video is probed here once and cut into items of `segment_seconds` (one row each in
    images.parquet, named ``clip.mp4@0000.000-0060.000``); the frames at t = 0, 1/fps, 2/fps ...
    go through the same detection as photos, their faces named ``clip.mp4#t=12.000``.

    Workers commit each partition under OUT_DIR/parts and the driver logs it (so --resume skips
    finished work); at the end the committed parts are streamed, in input order, into
    detections.parquet, submission.csv and images.parquet. Every photo is read within `limits`
    (bytes, pixels, seconds); one that is not fails alone. `classes` 2 or 3 picks the bundled
    model of that many classes (with `model`: checks that it has them). Every setting is checked
    before anything is read (maskbatch.config.predict_settings): one MaskbatchError line.
    `save_crops`, `blur`, `blur_confidence`: the privacy outputs (maskbatch.jobs.privacy).
    """
    settings = predict_settings(
        detector=detector, limits=limits, video=VideoSampling(fps, segment_seconds),
        cluster=cluster_config, model=model, classes=classes,
        outputs=OutputOptions(previews, resume, overwrite, save_crops, blur, blur_confidence))
    plan = prepare(images_arg, out_dir, images_dir, settings)
    with JobSession(settings.cluster, MaskbatchSetup(plan.onnx_bytes, plan.card)) as session:
        session.check_writable(out_dir)  # workers commit the parts themselves
        execution = execute(plan, session)
        result = finalize(plan, execution, session)
    storage.remove_temporaries(out_dir)  # e.g. a part written twice by a retried task
    return result


def execute(plan: PredictPlan, session: JobSession) -> Execution:
    """Run every input not committed yet, a partition per task; each commit is logged here."""
    log = parts.CommitLog(plan.out_dir)
    done = parts.done_ranges(log.entries())
    todo = [(i, plan.inputs[i]) for i in parts.not_done(len(plan.inputs), done)]
    size = session.partition_size(sum(item_weight(path) for _, (_, path) in todo))
    started = time.perf_counter()
    timeline = run_digest.Timeline()

    def commit(_: list, entry: dict) -> None:
        log.append(entry)
        timeline.add(entry["count"])

    try:
        stats = session.run(todo, predict_and_commit, commit, size=size,
                            weight=lambda item: item_weight(item[1]),
                            on_poison=functools.partial(predict_poisoned, plan.out_dir),
                            label="predict", out_dir=plan.out_dir,
                            detector=plan.settings.detector, model=plan.model,
                            limits=plan.settings.limits, private=plan.private)
    finally:
        log.close()
    return Execution(len(todo), size, stats, started, time.perf_counter() - started, timeline)


def finalize(plan: PredictPlan, execution: Execution, session: JobSession) -> PredictResult:
    """The final files from the committed parts: tables, previews, COCO, summary, report."""
    finished = time.perf_counter()
    previews = plan.settings.outputs.previews
    # one read of the committed parts, in input order, feeds every final file: the tables, the
    # COCO files and the report's digest (the driver holds one part at a time)
    digest = run_digest.Digest.for_run(float(plan.card.get("threshold", 0.5)),
                                       n_first=min(previews, 8) or run_digest.N_FIRST,
                                       class_names=plan.class_names)
    with coco.CocoWriter(plan.out_dir, plan.class_names) as coco_files:
        counts = parts.compact(plan.out_dir, [name for name, _ in plan.inputs], previews,
                               plan.class_names, sinks=[digest, coco_files])
    digest.finish()
    if previews:
        _write_previews(session, plan.out_dir, counts.previews)
    gallery = run_digest.draw_gallery(digest, session.call_each)
    shown = (privacy.finish(plan.out_dir, plan.private, plan.inputs, session)  # --save-crops, --blur
             if plan.private else {})
    counts.seconds = time.perf_counter() - finished
    result = PredictResult(
        out_dir=plan.out_dir, seconds=execution.seconds, processed=execution.processed,
        counts=counts, dashboard=session.dashboard,
        wall_seconds=time.perf_counter() - plan.called,
        startup_seconds=(execution.stats.first_submit or execution.started) - plan.called,
        partition_size=execution.partition_size, stats=execution.stats,
        worker_restarts=session.workers_lost(), class_names=plan.class_names)
    totals = {**summary(result), **{k: v for k, v in shown.items() if "examples" not in k}}
    writers.write_json_atomic(totals, files.join(plan.out_dir, "summary.json"))
    run_page.write_run_report(plan.out_dir, summary=totals,
                              run={**plan.record, "images": plan.images_arg},
                              model_card=plan.card, detector=plan.settings.detector,
                              timeline=execution.timeline.points, gallery=gallery, digest=digest,
                              extra_html=privacy.report_html(shown))
    return result


def _write_previews(session: JobSession, out_dir: str, chosen: list[tuple[str, str, list]]
                    ) -> None:
    """Annotated copies of the chosen photos, drawn by the workers (which read the photos); a
    photo that changed or went away since it was read gets none."""
    pictures = session.call_each([(preview_jpeg, (path, boxes)) for _, path, boxes in chosen])
    for data, file_name in zip(pictures, preview_names(name for name, _, _ in chosen)):
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



__all__ = ["Execution", "PredictResult", "execute", "finalize", "list_inputs", "predict",
           "summary"]

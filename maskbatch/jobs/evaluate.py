"""`maskbatch evaluate`: score a run against ground truth and write metrics.json and the report."""

from __future__ import annotations

import math
import warnings

import numpy as np

from maskbatch import files
from maskbatch.datasets import class_names_for
from maskbatch.errors import MaskbatchError
from maskbatch.evaluation import page
from maskbatch.evaluation.coco_ap import coco_metrics
from maskbatch.evaluation.intervals import default_resamples, photo_intervals
from maskbatch.evaluation.scoring import Evaluation, score_detections
from maskbatch.evaluation.truth import (
    EvaluationWarning,
    drop_off_image,
    read_predictions,
    read_truth,
    warn_user,
)
from maskbatch.outputs import writers
from maskbatch.runtime import bags

PARALLEL_MIN_IMAGES = 20_000


def json_safe(obj: object) -> object:
    """NaN -> None (JSON has no NaN), numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def evaluate(truth: str, pred_dir: str, out_dir: str | None = None, iou: float = 0.5,
             images_dir: str | None = None, resamples: int | None = None,
             baseline: str | None = None, classes: int | None = None) -> dict:
    """Score the run in `pred_dir` against `truth`; write metrics.json, plots and page.html.

    truth: a labelled folder (Kaggle: annotations/*.json or train.csv; Pascal VOC:
      annotations/*.xml), a train.csv file, or an annotations folder.
    out_dir: default ``pred_dir/evaluation``. images_dir: where to find the photos to draw
      (default: images.parquet's paths, else the truth folder's images/).
    resamples: photo resamples for the 95 % intervals of mAP, faces found and right label
      (maskbatch.intervals; 0: none; None: 1000, fewer for very large evaluations).
    baseline: the output folder of another run on the same photos; metrics["baseline"] then
      holds its numbers and this run's differences to them, with paired intervals.
    classes: score these many classes (2 or 3; maskbatch.datasets.class_names_for) instead of the
      run's own (an N-class model's prob_<class> columns, else the two). With
      face_with_mask_incorrect among them, VOC's mask_weared_incorrect boxes are faces of that
      class; otherwise they are ignore regions.
    Returns the metrics dict (as written to metrics.json, NaN as None); `format_table` prints it.
    """

    if resamples is not None and resamples < 0:
        raise MaskbatchError(f"--resamples must be 0 or more, got {resamples}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EvaluationWarning)
        class_names = None if classes is None else class_names_for(classes)
        ev, paths = _evaluate(truth, pred_dir, iou, images_dir, class_names)
        base = None if baseline is None else _evaluate(truth, baseline, iou, images_dir,
                                                       class_names)[0]
    names = list(ev.per_image["name"])
    if resamples is None:
        resamples = default_resamples(len(ev.truth) + len(ev.predictions))
    if resamples:
        ev.metrics["intervals"] = photo_intervals(ev.truth, ev.predictions, names, resamples,
                                                  class_names=class_names)
    if base is not None:
        difference = photo_intervals(ev.truth, ev.predictions, names, resamples,
                                     baseline=(base.truth, base.predictions),
                                     class_names=class_names)
        ev.metrics["baseline"] = {"pred": baseline, **headline(base.metrics),
                                  "difference": difference}
    messages = [str(w.message) for w in caught if issubclass(w.category, EvaluationWarning)]
    for w in caught:  # re-emit, so callers see them as ordinary warnings too
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    ev.metrics["warnings"] = messages
    out_dir = out_dir or files.join(pred_dir, "evaluation")
    ev.metrics["truth"], ev.metrics["pred"], ev.metrics["out"] = truth, pred_dir, out_dir
    ev.metrics = json_safe(ev.metrics)
    page.write_report(ev, out_dir, paths)
    writers.write_json_atomic(ev.metrics, files.join(out_dir, "metrics.json"))
    return ev.metrics


def _evaluate(truth: str, pred_dir: str, iou: float, images_dir: str | None,
              class_names: tuple[str, ...] | None = None
              ) -> tuple[Evaluation, dict[str, list[str]]]:
    det, manifest = read_predictions(pred_dir)
    boxes, names, truth_images = read_truth(truth)
    boxes = drop_off_image(boxes, manifest, truth)
    if not names or boxes.empty:
        raise MaskbatchError(f"no ground-truth boxes in {truth}")
    predicted = set(det["name"])
    if manifest is not None:
        ok = manifest["status"] == "ok" if "status" in manifest.columns else True
        predicted = set(manifest.loc[ok, "name"]) | predicted
    in_run = [n for n in names if n in predicted]
    if not in_run:
        example = next(iter(sorted(predicted)), None)
        raise MaskbatchError(
            f"none of the {len(names)} truth images is in the predictions of {pred_dir} "
            f"(truth names look like {names[0]!r}"
            + (f", predicted ones like {example!r})" if example else ", and it has none)")
        )
    if len(in_run) < len(names):
        missing = [n for n in names if n not in predicted]
        warn_user(f"{len(missing)} of {len(names)} truth images were not predicted (absent or failed "
              f"in the run, e.g. {missing[0]}): all their faces count as missed")
    if manifest is None:
        warn_user(f"no images.parquet in {pred_dir}: truth images without detections are taken as "
              "predicted with no faces")
    outside = int((~det["name"].isin(set(names))).sum())
    parallel = bags.map_chunks if len(names) >= PARALLEL_MIN_IMAGES else None
    ev = score_detections(boxes, det, names, iou, map_chunks=parallel, class_names=class_names)

    ev.metrics["coco"] = coco_metrics(boxes, det, names, class_names=class_names)
    ev.metrics["n_images_not_predicted"] = len(names) - len(in_run)
    ev.metrics["n_predictions_outside_truth"] = outside
    if ev.metrics["n_predictions_unknown_class"]:
        warn_user(f"{ev.metrics['n_predictions_unknown_class']} predicted row(s) with a class other "
              f"than {', '.join(class_names or writers.run_classes(list(det.columns)))}: false "
              "positives for "
              "every class")
    ev.per_image["predicted"] = ev.per_image["name"].isin(predicted)

    # where to find each photo for drawing, best first
    paths: dict[str, list[str]] = {n: [] for n in names}
    if images_dir:
        for n in names:
            paths[n].append(files.join(images_dir, n))
    if manifest is not None and "path" in manifest.columns:
        for n, p in zip(manifest["name"], manifest["path"], strict=True):
            if n in paths and isinstance(p, str) and p:
                paths[n].append(p)
    if truth_images:
        for n in names:
            paths[n].append(files.join(truth_images, n))
    return ev, paths


def headline(metrics: dict) -> dict:
    """The three numbers issue-style targets are set on."""
    return {"map": metrics["map"], "faces_found": metrics["detection"]["recall"],
            "label_accuracy": metrics["confusion"]["label_accuracy"]}


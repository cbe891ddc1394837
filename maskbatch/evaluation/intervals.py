"""How sure a score is: percentile intervals of evaluation metrics, by resampling photos.

A validation set of a hundred photos gives an mAP that another hundred photos of the same kind
would not repeat; the interval says by how much. Photos, not faces, are resampled (with
replacement, a seeded multinomial count per photo), because the faces of one photo are not
independent: one crowd, one light, one camera. Matching is per photo, so every prediction keeps
the status :func:`maskbatch.evaluate.score_detections` gave it; a resample only weights rows by
their photo's count, and AP is recomputed from the weighted cumulative hits and false alarms
along the same ranking (weights all 1 give the evaluation's own numbers, tested).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from maskbatch.config import MASK, MIN_RESAMPLES, NO_MASK, RESAMPLE_ROWS, RESAMPLES
from maskbatch.evaluation.scoring import voc_ap
from maskbatch.outputs.writers import run_classes

LEVEL = 0.95
METRICS = ("map", "faces_found", "label_accuracy")
# scored over more than two classes, also: each class's AP ("ap:<class>") and the mAP of the two
# main classes alone ("map_main"), the number to set beside a 2-class run's mAP
MAIN_CLASSES = (MASK, NO_MASK)


def class_metrics(class_names: tuple[str, ...]) -> tuple[str, ...]:
    """The extra interval names of an evaluation over `class_names` (none for two classes)."""
    if len(class_names) <= 2:
        return ()
    main = ("map_main",) if set(MAIN_CLASSES) <= set(class_names) else ()
    return (*(f"ap:{c}" for c in class_names), *main)


def default_resamples(rows: int) -> int:
    """RESAMPLES, or fewer (at least MIN_RESAMPLES) for an evaluation of `rows` faces +
    predictions, keeping resamples x rows near RESAMPLE_ROWS."""
    return max(MIN_RESAMPLES, min(RESAMPLES, RESAMPLE_ROWS // max(rows, 1)))


def _weighted_ap(hit: np.ndarray, weight: np.ndarray, n_truth: float) -> float:
    """VOC all-point AP of ranked rows (`hit`: 1 true positive, 0 false alarm), each counted
    `weight` times (see maskbatch.evaluation.scoring.voc_ap)."""

    if n_truth <= 0:
        return math.nan
    tp = np.cumsum(weight * hit)
    seen = np.cumsum(weight)
    used = weight > 0
    if not used.any():
        return 0.0
    return voc_ap(tp[used] / n_truth, tp[used] / seen[used])


class _Rows:
    """The evaluation's rows as arrays of photo indices, in ranking order per class."""

    def __init__(self, truth: pd.DataFrame, predictions: pd.DataFrame, names: list[str],
                 class_names: tuple[str, ...] | None = None) -> None:
        index = {n: i for i, n in enumerate(names)}
        self.n_images = len(names)
        # the scored classes: given, else the run's (prob_<class> columns, or the two)
        self.classes = tuple(class_names or run_classes(list(predictions.columns)))
        faces = truth[truth["label"].isin(self.classes)]
        self.face_image = faces["name"].map(index).to_numpy(np.int64)
        self.face_class = faces["label"].to_numpy()
        self.face_found = faces["found"].to_numpy(bool)
        self.face_right = (faces["found"] & (faces["pred_label"] == faces["label"])).to_numpy(bool)
        self.ranked = {}
        for c in self.classes:
            rows = predictions[(predictions["classname"] == c)
                               & (predictions["status"] != "ignored")]
            order = np.argsort(-rows["rank_score"].to_numpy(), kind="stable")
            self.ranked[c] = (rows["name"].map(index).to_numpy(np.int64)[order],
                              (rows["status"].to_numpy()[order] == "tp").astype(float))

    def metrics(self, count: np.ndarray) -> dict[str, float]:
        """The metrics with photo i counted count[i] times."""
        face_w = count[self.face_image].astype(float)
        per_class = {}
        for c in self.classes:
            image, hit = self.ranked[c]
            per_class[c] = _weighted_ap(hit, count[image].astype(float),
                                        float(face_w[self.face_class == c].sum()))
        aps = [ap for ap in per_class.values() if not math.isnan(ap)]
        found = float((face_w * self.face_found).sum())
        values = {"map": float(np.mean(aps)) if aps else math.nan,
                  "faces_found": found / float(face_w.sum()) if face_w.sum() else math.nan,
                  "label_accuracy": float((face_w * self.face_right).sum()) / found
                  if found else math.nan}
        for name in class_metrics(self.classes):
            if name == "map_main":
                main = [per_class[c] for c in MAIN_CLASSES if not math.isnan(per_class[c])]
                values[name] = float(np.mean(main)) if main else math.nan
            else:
                values[name] = per_class[name[3:]]
        return values


def photo_intervals(truth: pd.DataFrame, predictions: pd.DataFrame, names: list[str],
                    resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL,
                    baseline: tuple[pd.DataFrame, pd.DataFrame] | None = None,
                    class_names: tuple[str, ...] | None = None) -> dict:
    """Percentile intervals of mAP, faces found and right label over photo resamples.

    `truth` and `predictions` are an Evaluation's tables (truth: name, label, found, pred_label;
    predictions: name, classname, status, rank_score), `names` its photos. Returns
    {"resamples", "seed", "level", "unit": "photo", METRIC: [low, high], "point": {METRIC: ...}}.
    `baseline`: the (truth, predictions) of another run scored on the same photos; then every
    number is this run's minus the baseline's, both on the same resample (a paired interval:
    the photos' own difficulty cancels, so it is narrower than the two intervals side by side).
    Over more than two classes, also each class's AP and the main classes' mAP
    (:func:`class_metrics`).
    """
    rows = _Rows(truth, predictions, names, class_names)
    other = None if baseline is None else _Rows(*baseline, names, class_names)

    def measure(count: np.ndarray) -> dict[str, float]:
        values = rows.metrics(count)
        if other is None:
            return values
        base = other.metrics(count)
        return {m: values[m] - base[m] for m in values}

    point = measure(np.ones(rows.n_images, dtype=np.int64))
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {m: [] for m in point}
    for _ in range(resamples):
        count = rng.multinomial(rows.n_images, np.full(rows.n_images, 1.0 / rows.n_images))
        for m, v in measure(count).items():
            samples[m].append(v)
    tail = (1.0 - level) / 2.0 * 100.0
    out: dict = {"resamples": resamples, "seed": seed, "level": level, "unit": "photo",
                 "point": point}
    for m, values in samples.items():
        finite = np.asarray([v for v in values if not math.isnan(v)])
        out[m] = ([float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail))]
                  if len(finite) else [math.nan, math.nan])
    return out


def _missing(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def interval_text(intervals: dict | None, name: str) -> str:
    """'95 % interval over 1000 photo resamples: 0.797-0.891' for one metric of a
    photo_intervals result (as read back from JSON: NaN may be None), or '' without one."""
    bounds = (intervals or {}).get(name)
    if not bounds or any(_missing(v) for v in bounds):
        return ""
    return (f"{intervals['level'] * 100:g} % interval over {intervals['resamples']} photo "
            f"resamples: {bounds[0]:.3f}-{bounds[1]:.3f}")


def difference_text(difference: dict, name: str) -> str:
    """'+0.117 (95 % paired interval +0.075 to +0.166)' for one metric of a paired
    photo_intervals result; '-' for a difference that is not a number."""
    change, bounds = difference["point"][name], difference.get(name)
    if _missing(change):
        return "-"
    if not bounds or any(_missing(v) for v in bounds):
        return f"{change:+.3f}"
    return (f"{change:+.3f} ({difference['level'] * 100:g} % paired interval {bounds[0]:+.3f} "
            f"to {bounds[1]:+.3f})")


"""Photo-resampling intervals: the weights reproduce real resamples, and the command reports them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_evaluate import FACES, as_predictions, pred_df, truth_df, write_run, write_train_csv

from maskbatch.config import MASK, NO_MASK
from maskbatch.evaluation.intervals import METRICS, _Rows, photo_intervals
from maskbatch.evaluation.scoring import score_detections
from maskbatch.jobs.console import format_table
from maskbatch.jobs.evaluate import evaluate

# three photos: a found and right, b one face missed and one wrong label, c a false alarm
TRUTH = FACES + [("c.jpg", 10, 10, 60, 70, NO_MASK)]
PREDS = pred_df([
    ("a.jpg", 10, 20, 50, 80, MASK, 0.95, 0.9),
    ("a.jpg", 100, 20, 140, 70, MASK, 0.91, 0.8),
    ("a.jpg", 200, 30, 260, 100, NO_MASK, 0.88, 0.2),
    ("b.jpg", 5, 5, 45, 65, NO_MASK, 0.83, 0.3),
    ("c.jpg", 10, 10, 60, 70, NO_MASK, 0.77, 0.1),
    ("c.jpg", 200, 200, 260, 260, MASK, 0.71, 0.7),
])


def _metrics(ev) -> dict:
    m = ev.metrics
    return {"map": m["map"], "faces_found": m["detection"]["recall"],
            "label_accuracy": m["confusion"]["label_accuracy"]}


def test_weights_of_one_give_the_evaluations_own_numbers() -> None:
    names = ["a.jpg", "b.jpg", "c.jpg"]
    ev = score_detections(truth_df(TRUTH), PREDS, names)
    assert 0 < ev.metrics["map"] < 1 and ev.metrics["confusion"]["label_accuracy"] < 1
    rows = _Rows(ev.truth, ev.predictions, names)
    assert rows.metrics(np.ones(3, dtype=np.int64)) == pytest.approx(_metrics(ev))


def test_a_photo_counted_twice_scores_as_that_photo_copied() -> None:
    """count [1, 2, 0] is the set {a, b, b'} with b' a renamed copy of b (and c left out)."""
    names = ["a.jpg", "b.jpg", "c.jpg"]
    ev = score_detections(truth_df(TRUTH), PREDS, names)
    weighted = _Rows(ev.truth, ev.predictions, names).metrics(np.array([1, 2, 0]))

    def copy_b(df):
        b = df[df["name"] == "b.jpg"].assign(name="b2.jpg")
        return pd.concat([df[df["name"] != "c.jpg"], b], ignore_index=True)

    copied = score_detections(copy_b(truth_df(TRUTH)), copy_b(PREDS), ["a.jpg", "b.jpg", "b2.jpg"])
    assert weighted == pytest.approx(_metrics(copied))


def test_intervals_hold_the_estimate_are_seeded_and_collapse_when_all_is_right() -> None:
    names = ["a.jpg", "b.jpg", "c.jpg"]
    ev = score_detections(truth_df(TRUTH), PREDS, names)
    ci = photo_intervals(ev.truth, ev.predictions, names, resamples=300, seed=1)
    for name, value in _metrics(ev).items():
        low, high = ci[name]
        assert low <= value <= high and low < high, name
    assert ci == photo_intervals(ev.truth, ev.predictions, names, resamples=300, seed=1)
    perfect = score_detections(truth_df(FACES), as_predictions(FACES))
    ci = photo_intervals(perfect.truth, perfect.predictions, ["a.jpg", "b.jpg"], resamples=50)
    assert ci["map"] == ci["faces_found"] == ci["label_accuracy"] == [1.0, 1.0]


def test_evaluate_writes_and_prints_the_intervals(tmp_path: Path) -> None:
    csv_path = tmp_path / "train.csv"
    write_train_csv(csv_path, TRUTH)
    run = write_run(tmp_path / "run", PREDS, ["a.jpg", "b.jpg", "c.jpg"])
    m = evaluate(str(csv_path), str(run), resamples=200)
    ci = m["intervals"]
    assert ci["resamples"] == 200 and ci["unit"] == "photo" and ci["level"] == 0.95
    assert ci["map"][0] <= m["map"] <= ci["map"][1]
    assert json.loads((run / "evaluation" / "metrics.json").read_text())["intervals"] == ci
    table = format_table(m)
    assert "95 % interval over 200 photo resamples" in table and "faces found" in table
    assert "photo resamples" in (run / "evaluation" / "report.html").read_text()
    assert "intervals" not in evaluate(str(csv_path), str(run), str(tmp_path / "e0"), resamples=0)


def test_paired_interval_is_the_difference_on_the_same_resamples(tmp_path: Path) -> None:
    """--baseline: this run minus another on the same photos, resample by resample; a run against
    itself differs by exactly 0, and a better run's gain shows with its sign."""
    names = ["a.jpg", "b.jpg", "c.jpg"]
    worse_preds = PREDS.drop(index=[1]).reset_index(drop=True)  # misses a face of a.jpg
    ev = score_detections(truth_df(TRUTH), PREDS, names)
    worse = score_detections(truth_df(TRUTH), worse_preds, names)
    same = photo_intervals(ev.truth, ev.predictions, names, 100, baseline=(ev.truth, ev.predictions))
    assert all(same[m] == [0.0, 0.0] and same["point"][m] == 0.0 for m in METRICS)
    diff = photo_intervals(ev.truth, ev.predictions, names, 100,
                           baseline=(worse.truth, worse.predictions))
    assert diff["point"]["faces_found"] == pytest.approx(1 / 6) and diff["point"]["map"] > 0
    count = np.random.default_rng(0).multinomial(3, [1 / 3] * 3)
    ours, theirs = (_Rows(e.truth, e.predictions, names).metrics(count) for e in (ev, worse))
    assert diff["faces_found"][0] <= ours["faces_found"] - theirs["faces_found"] <= 1 / 6 + 1e-9

    csv_path = tmp_path / "train.csv"
    write_train_csv(csv_path, TRUTH)
    run = write_run(tmp_path / "run", PREDS, names)
    base = write_run(tmp_path / "base", worse_preds, names)
    m = evaluate(str(csv_path), str(run), resamples=100, baseline=str(base))
    assert m["baseline"]["pred"] == str(base)
    assert m["baseline"]["faces_found"] == pytest.approx(4 / 6) and m["detection"]["recall"] == 5 / 6
    assert m["baseline"]["difference"]["point"]["faces_found"] == pytest.approx(1 / 6)
    assert "Against the baseline run" in format_table(m) and "+0.167" in format_table(m)
    assert "vs baseline" in (run / "evaluation" / "report.html").read_text()


def test_large_evaluations_take_fewer_resamples() -> None:
    from maskbatch.evaluation.intervals import default_resamples

    assert default_resamples(2_000) == 1000  # a validation set
    assert default_resamples(200_000) == 250
    assert default_resamples(1_400_000) == 100  # 700k faces + predictions: about 12 s

"""Scoring against ground truth: AP on hand-made cases with known answers, and one real run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from maskbatch.config import MASK, NO_MASK
from maskbatch.datasets import DEFAULT_LABEL_MAP, truth_table
from maskbatch.errors import MaskbatchError
from maskbatch.evaluation.matching import iou_matrix
from maskbatch.evaluation.scoring import score_detections, voc_ap
from maskbatch.evaluation.truth import (
    EvaluationWarning,
    boxes_from_submission,
    boxes_to_submission,
    read_truth,
)
from maskbatch.jobs.console import format_table
from maskbatch.jobs.evaluate import evaluate
from maskbatch.runtime import bags

TRUTH_COLS = ["name", "x1", "y1", "x2", "y2", "classname"]
PRED_COLS = ["name", "x1", "y1", "x2", "y2", "classname", "score", "mask_prob"]

# two images; boxes are left, top, right, bottom and deliberately not square
FACES = [
    ("a.jpg", 10, 20, 50, 80, MASK),
    ("a.jpg", 100, 20, 140, 70, MASK),
    ("a.jpg", 200, 30, 260, 100, NO_MASK),
    ("b.jpg", 5, 5, 45, 65, MASK),
    ("b.jpg", 300, 40, 380, 150, NO_MASK),
]


def truth_df(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=TRUTH_COLS)


def pred_df(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=PRED_COLS)


def as_predictions(rows: list[tuple], score: float = 0.9, swap: bool = False) -> pd.DataFrame:
    """Predictions that copy truth rows; `swap` gives every face the other label."""
    out = []
    for name, x1, y1, x2, y2, c in rows:
        if swap:
            c = NO_MASK if c == MASK else MASK
        out.append((name, x1, y1, x2, y2, c, score, 0.9 if c == MASK else 0.1))
    return pred_df(out)


def test_voc_ap_known_values() -> None:
    assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 1.0])) == pytest.approx(1.0)
    # envelope: precision 1 up to recall .5, then 2/3 up to recall 1
    assert voc_ap(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])) == pytest.approx(5 / 6)
    assert voc_ap(np.array([]), np.array([])) == 0.0


def test_voc_ap_integrates_the_precision_envelope() -> None:
    # ranked FP, TP, TP on two faces: recall 0 .5 1, precision 0 .5 2/3. The envelope lifts the
    # precision on the first recall step to the best later one (2/3): AP 2/3, not .5*.5+.5*2/3.
    assert voc_ap(np.array([0.0, 0.5, 1.0]), np.array([0.0, 0.5, 2 / 3])) == pytest.approx(2 / 3)
    # the same through the matcher: a false alarm ranked above both faces
    truth = truth_df([("a.jpg", 0, 0, 40, 50, MASK), ("a.jpg", 100, 0, 140, 50, MASK)])
    preds = pred_df([("a.jpg", 200, 0, 240, 50, MASK, 0.95, 1.0),
                     ("a.jpg", 0, 0, 40, 50, MASK, 0.9, 1.0), ("a.jpg", 100, 0, 140, 50, MASK, 0.8, 1.0)])
    m = score_detections(truth, preds).metrics
    assert m["classes"][MASK]["ap"] == pytest.approx(2 / 3)
    assert m["detection"]["ap"] == pytest.approx(2 / 3)
    # a dip in the middle: TP, FP, FP, TP on two faces -> 1 * .5 + .5 * .5
    assert voc_ap(np.array([0.5, 0.5, 0.5, 1.0]), np.array([1.0, 0.5, 1 / 3, 0.5])) \
        == pytest.approx(0.75)


def test_iou_matrix() -> None:
    iou = iou_matrix(np.array([[0, 0, 10, 10], [20, 20, 30, 30]]), np.array([[5, 0, 15, 10]]))
    assert iou[0, 0] == pytest.approx(50 / 150)
    assert iou[1, 0] == 0.0
    assert iou_matrix(np.zeros((0, 4)), np.zeros((3, 4))).shape == (0, 3)


def test_perfect_predictions() -> None:
    ev = score_detections(truth_df(FACES), as_predictions(FACES))
    m = ev.metrics
    assert m["map"] == 1.0
    for c in (MASK, NO_MASK):
        assert m["classes"][c]["ap"] == 1.0
        assert m["classes"][c]["precision"] == 1.0
        assert m["classes"][c]["recall"] == 1.0
    assert m["classes"][MASK]["tp"] == 3 and m["classes"][NO_MASK]["tp"] == 2
    assert m["detection"]["ap"] == 1.0
    assert m["confusion"]["matrix"] == [[3, 0], [0, 2]]
    assert m["confusion"]["label_accuracy"] == 1.0
    assert set(ev.predictions["status"]) == {"tp"}
    assert ev.per_image[["missed", "wrong_label", "fp"]].to_numpy().sum() == 0
    assert "mAP" in format_table(m)


def test_empty_predictions() -> None:
    ev = score_detections(truth_df(FACES), pred_df([]), ["a.jpg", "b.jpg"])
    m = ev.metrics
    assert m["map"] == 0.0
    for c in (MASK, NO_MASK):
        assert m["classes"][c]["ap"] == 0.0
        assert m["classes"][c]["recall"] == 0.0
        assert math.isnan(m["classes"][c]["precision"])  # no predictions: undefined
        assert m["classes"][c]["fn"] == m["classes"][c]["n_truth"]
    assert sum(b["found"] for b in m["recall_by_size"]) == 0
    assert m["confusion"]["matrix"] == [[0, 0], [0, 0]]
    assert ev.per_image.set_index("name")["missed"].to_dict() == {"a.jpg": 3, "b.jpg": 2}
    format_table(m)  # NaN values print


def test_all_wrong_label() -> None:
    ev = score_detections(truth_df(FACES), as_predictions(FACES, swap=True))
    m = ev.metrics
    assert m["classes"][MASK]["ap"] == 0.0
    assert m["classes"][NO_MASK]["ap"] == 0.0
    assert m["map"] == 0.0
    assert m["classes"][MASK]["fp"] == 2 and m["classes"][MASK]["fn"] == 3
    # every face was found, with the other label
    assert m["detection"]["ap"] == 1.0 and m["detection"]["recall"] == 1.0
    assert m["confusion"]["matrix"] == [[0, 3], [2, 0]]  # rows truth, columns predicted
    assert m["confusion"]["label_accuracy"] == 0.0
    assert ev.per_image["wrong_label"].sum() == 5


def test_duplicates_are_false_positives() -> None:
    truth = truth_df([("a.jpg", 0, 0, 40, 50, MASK), ("a.jpg", 100, 0, 140, 50, MASK)])
    preds = pred_df([
        ("a.jpg", 0, 0, 40, 50, MASK, 0.9, 1.0),   # TP on face 1
        ("a.jpg", 1, 1, 40, 50, MASK, 0.8, 1.0),   # duplicate of face 1: FP
        ("a.jpg", 100, 0, 140, 50, MASK, 0.7, 1.0),  # TP on face 2
    ])
    ev = score_detections(truth, preds)
    assert list(ev.predictions["status"]) == ["tp", "fp", "tp"]
    row = ev.per_image.set_index("name").loc["a.jpg"]
    assert (row["n_truth"], row["n_pred"], row["found"], row["missed"], row["fp"]) == (2, 3, 2, 0, 1)
    # ranked TP, FP, TP: recall .5 .5 1, precision 1 .5 2/3 -> AP = .5 * 1 + .5 * 2/3 = 5/6
    c = ev.metrics["classes"][MASK]
    assert c["ap"] == pytest.approx(5 / 6)
    assert (c["tp"], c["fp"], c["fn"]) == (2, 1, 0)
    assert c["precision"] == pytest.approx(2 / 3)
    assert ev.metrics["detection"]["ap"] == pytest.approx(5 / 6)
    assert math.isnan(ev.metrics["classes"][NO_MASK]["ap"])  # no such faces: left out of mAP
    assert ev.metrics["map"] == pytest.approx(5 / 6)


def test_duplicate_with_higher_score_takes_the_match() -> None:
    truth = truth_df([("a.jpg", 0, 0, 40, 50, MASK)])
    preds = pred_df([("a.jpg", 2, 2, 40, 50, MASK, 0.5, 1.0), ("a.jpg", 0, 0, 40, 50, MASK, 0.9, 1.0)])
    ev = score_detections(truth, preds)
    assert list(ev.predictions["status"]) == ["fp", "tp"]
    assert ev.metrics["classes"][MASK]["ap"] == 1.0  # the FP ranks below the only face


def test_greedy_takes_the_best_unmatched_face() -> None:
    # two neighbouring faces; the second prediction overlaps both but face 1 is taken
    truth = truth_df([("a.jpg", 0, 0, 40, 40, MASK), ("a.jpg", 8, 0, 48, 40, MASK)])
    preds = pred_df([("a.jpg", 0, 0, 40, 40, MASK, 0.9, 1.0), ("a.jpg", 2, 0, 42, 40, MASK, 0.8, 1.0)])
    ev = score_detections(truth, preds)
    assert list(ev.predictions["status"]) == ["tp", "tp"]
    assert ev.metrics["classes"][MASK]["ap"] == 1.0


def test_ranking_uses_score_times_class_probability() -> None:
    truth = truth_df([("a.jpg", 0, 0, 40, 50, MASK)])
    preds = pred_df([
        ("a.jpg", 0, 0, 40, 50, MASK, 0.6, 0.9),       # 0.54 for face_with_mask: TP
        ("a.jpg", 200, 0, 240, 50, MASK, 0.9, 0.5),    # 0.45: FP, ranked second
    ])
    ev = score_detections(truth, preds)
    assert list(ev.predictions["rank_score"]) == pytest.approx([0.54, 0.45])
    assert ev.metrics["classes"][MASK]["ap"] == 1.0
    # the detection AP ranks by the detector score alone: FP first
    assert ev.metrics["detection"]["ap"] == pytest.approx(0.5)
    # face_no_mask ranks by score * (1 - mask_prob)
    nomask = pred_df([("a.jpg", 0, 0, 40, 50, NO_MASK, 0.8, 0.25)])
    assert score_detections(truth, nomask).predictions["rank_score"][0] == pytest.approx(0.6)


def test_ignore_regions_change_nothing() -> None:
    ignore = [("a.jpg", 400, 10, 440, 60, "mask_weared_incorrect"),
              ("b.jpg", 150, 10, 190, 60, "hijab_niqab")]
    base = score_detections(truth_df(FACES), as_predictions(FACES[:4])).metrics
    on_ignore = pred_df([("a.jpg", 401, 11, 440, 60, MASK, 0.99, 0.9),
                         ("b.jpg", 150, 10, 190, 60, NO_MASK, 0.95, 0.1)])
    ev = score_detections(truth_df(FACES + ignore),
                          pd.concat([as_predictions(FACES[:4]), on_ignore], ignore_index=True))
    m = ev.metrics
    assert list(ev.predictions["status"].tail(2)) == ["ignored", "ignored"]
    assert list(ev.predictions["det_status"].tail(2)) == ["ignored", "ignored"]
    for c in (MASK, NO_MASK):
        for key in ("ap", "tp", "fp", "fn", "precision", "recall", "n_truth"):
            assert m["classes"][c][key] == base["classes"][c][key], (c, key)
    assert m["map"] == base["map"]
    assert m["detection"]["ap"] == base["detection"]["ap"]
    assert m["recall_by_size"] == base["recall_by_size"]  # ignore regions are not faces
    assert m["n_ignore_regions"] == 2 and m["n_truth_faces"] == 5
    assert m["classes"][MASK]["ignored"] == 1
    assert m["ignore_classes"] == ["hijab_niqab", "mask_weared_incorrect"]
    # a prediction that overlaps an ignore region too little is still a false alarm
    off = pred_df([("a.jpg", 420, 10, 470, 60, MASK, 0.99, 0.9)])
    assert score_detections(truth_df(FACES + ignore), off).predictions["status"][0] == "fp"


def test_recall_by_size_bins() -> None:
    # shorter side: 10 (wide box), 15.9, 16, 31, 32, 63, 64, 200
    sizes = [(100, 10), (15.9, 40), (16, 16), (31, 90), (32, 32), (63, 70), (64, 64), (300, 200)]
    rows = [("a.jpg", 1000 * i, 0, 1000 * i + w, h, MASK) for i, (w, h) in enumerate(sizes)]
    found = [0, 2, 4, 6, 7]  # predictions for these faces only
    ev = score_detections(truth_df(rows), as_predictions([rows[i] for i in found]))
    bins = {b["bin"]: (b["n_truth"], b["found"]) for b in ev.metrics["recall_by_size"]}
    assert bins == {"<16": (2, 1), "16-32": (2, 1), "32-64": (2, 1), ">=64": (2, 2)}
    recalls = [b["recall"] for b in ev.metrics["recall_by_size"]]
    assert recalls == [0.5, 0.5, 0.5, 1.0]
    assert list(ev.truth["size"]) == pytest.approx([10, 15.9, 16, 31, 32, 63, 64, 200])


def test_predictions_outside_truth_images_are_left_out() -> None:
    preds = pd.concat([as_predictions(FACES), as_predictions([("c.jpg", 0, 0, 9, 9, MASK)])])
    m = score_detections(truth_df(FACES), preds).metrics
    assert m["map"] == 1.0 and m["n_predictions"] == 5


def test_parallel_matching_gives_the_same_numbers() -> None:
    preds = as_predictions(FACES[1:], swap=False)
    preds.loc[0, "classname"] = NO_MASK
    serial = score_detections(truth_df(FACES), preds)
    parallel = score_detections(truth_df(FACES), preds, map_chunks=bags.map_chunks)
    assert json.dumps(serial.metrics) == json.dumps(parallel.metrics)
    assert serial.predictions.equals(parallel.predictions)


# --------------------------------------------------------------------------- files


def write_run(folder: Path, preds: pd.DataFrame, names: list[str], paths: dict | None = None,
              quirk: bool = True) -> Path:
    """A fake `maskbatch predict` output folder: detections.parquet (+ images.parquet)."""
    folder.mkdir(parents=True, exist_ok=True)
    det = boxes_to_submission(preds) if quirk else preds.copy()
    det = det.assign(width=0, height=0, model_sha256="test")
    det.to_parquet(folder / "detections.parquet", index=False)
    paths = paths or {}
    pd.DataFrame({"name": names, "path": [paths.get(n, "") for n in names], "status": "ok",
                  "reason": "", "n_faces": 0, "width": 0, "height": 0, "seconds": 0.0}
                 ).to_parquet(folder / "images.parquet", index=False)
    return folder


def write_train_csv(path: Path, rows: list[tuple]) -> None:
    """The dataset's train.csv: header x1,x2,y1,y2 over the values left, top, right, bottom."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["name,x1,x2,y1,y2,classname"]
    lines += [f"{n},{x1},{y1},{x2},{y2},{c}" for n, x1, y1, x2, y2, c in rows]
    path.write_text("\n".join(lines) + "\n")


def test_csv_column_quirk_round_trip(tmp_path: Path) -> None:
    csv_path = tmp_path / "set" / "train.csv"
    write_train_csv(csv_path, FACES)
    boxes, names, images = read_truth(str(csv_path))
    assert names == ["a.jpg", "b.jpg"]
    assert images == str(tmp_path / "set" / "images")
    expected = truth_df(FACES).astype({c: float for c in ("x1", "y1", "x2", "y2")})
    pd.testing.assert_frame_equal(boxes, expected)
    # the project's own reader agrees, given the folder
    pd.testing.assert_frame_equal(truth_table(str(tmp_path / "set")), expected)
    # submission order and back
    sub = boxes_to_submission(truth_df(FACES))
    assert list(sub.columns[:5]) == ["name", "x1", "x2", "y1", "y2"]
    assert list(sub.iloc[0, 1:5]) == [10, 20, 50, 80]  # left, top, right, bottom
    pd.testing.assert_frame_equal(boxes_from_submission(sub), expected)
    # detections in the dataset's order score perfectly; honest columns under the quirky
    # header (x2 holding the right edge) would not
    good = evaluate(str(csv_path), str(write_run(tmp_path / "good", as_predictions(FACES),
                                                 names)), images_dir=str(tmp_path))
    assert good["map"] == 1.0
    bad = evaluate(str(csv_path), str(write_run(tmp_path / "bad", as_predictions(FACES), names,
                                                quirk=False)))
    assert bad["map"] == 0.0


def test_evaluate_warns_on_unpredicted_images_and_writes_files(tmp_path: Path) -> None:
    csv_path = tmp_path / "train.csv"
    write_train_csv(csv_path, FACES)
    run = write_run(tmp_path / "run", as_predictions(FACES[:3]), ["a.jpg"])
    with pytest.warns(EvaluationWarning, match="1 of 2 truth images were not predicted"):
        m = evaluate(str(csv_path), str(run))
    assert m["n_images"] == 2 and m["n_images_not_predicted"] == 1
    assert m["detection"]["recall"] == pytest.approx(3 / 5)
    assert m["warnings"] and "warning:" in format_table(m)
    out = run / "evaluation"
    for name in ("pr_curve.png", "recall_by_size.png"):
        picture = plt.imread(out / name)
        assert picture.ndim == 3 and min(picture.shape[:2]) > 200, name
        assert picture[..., :3].std() > 0.05, f"{name} is blank"
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["map"] == m["map"]
    assert "b.jpg" in (out / "report.html").read_text()  # worst image, even without pixels


def test_bad_inputs_raise_one_line_errors(tmp_path: Path) -> None:
    csv_path = tmp_path / "train.csv"
    write_train_csv(csv_path, FACES)
    run = write_run(tmp_path / "run", as_predictions(FACES), ["a.jpg", "b.jpg"])
    with pytest.raises(MaskbatchError, match="no detections.parquet"):
        evaluate(str(csv_path), str(tmp_path / "nowhere"))
    with pytest.raises(MaskbatchError, match="truth not found"):
        evaluate(str(tmp_path / "missing.csv"), str(run))
    empty = tmp_path / "empty" / "train.csv"
    write_train_csv(empty, [])
    with pytest.raises(MaskbatchError, match="no ground-truth boxes"):
        evaluate(str(empty), str(run))
    other = tmp_path / "other.csv"
    write_train_csv(other, [("zzz.jpg", 0, 0, 10, 10, MASK)])
    with pytest.raises(MaskbatchError, match="none of the 1 truth images"):
        evaluate(str(other), str(run))
    with pytest.raises(MaskbatchError, match="iou"):
        evaluate(str(csv_path), str(run), iou=0)


# --------------------------------------------------------------------------- real data


def truth_as_predictions(truth: pd.DataFrame) -> pd.DataFrame:
    faces = truth[truth["classname"].isin(DEFAULT_LABEL_MAP)]
    faces = faces.assign(classname=faces["classname"].map(DEFAULT_LABEL_MAP))
    return as_predictions(list(faces.itertuples(index=False, name=None)), score=0.99)


def test_real_truth_as_predictions_scores_one_and_reports(data: Path, tmp_path: Path) -> None:
    source = data / "medical-mask"
    chosen = sorted(p.name for p in (source / "annotations").glob("*.json"))[:20]
    folder = tmp_path / "truth"
    (folder / "annotations").mkdir(parents=True)
    for name in chosen:
        (folder / "annotations" / name).symlink_to(source / "annotations" / name)
    (folder / "images").symlink_to(source / "images")
    truth = truth_table(str(folder))
    names = sorted(truth["name"].unique())
    assert len(names) == 20
    preds = truth_as_predictions(truth)
    paths = {n: str(source / "images" / n) for n in names}

    m = evaluate(str(folder), str(write_run(tmp_path / "run", preds, names, paths)))
    assert m["map"] == 1.0
    assert m["detection"]["recall"] == 1.0 and m["detection"]["precision"] == 1.0
    assert m["n_truth_faces"] == len(truth)
    out = tmp_path / "run" / "evaluation"
    for name in ("metrics.json", "pr_curve.png", "recall_by_size.png", "report.html"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "pr_curve.png").read_bytes()[:4] == b"\x89PNG"

    # the annotations folder itself and the train.csv give the same answer
    assert evaluate(str(folder / "annotations"), str(tmp_path / "run"),
                    str(tmp_path / "e2"))["map"] == 1.0

    # now miss every face of one image and mislabel one face of another
    worst, flipped = names[0], names[1]
    hurt = preds[preds["name"] != worst].reset_index(drop=True)
    k = hurt.index[hurt["name"] == flipped][0]
    hurt.loc[k, "classname"] = NO_MASK if hurt.loc[k, "classname"] == MASK else MASK
    m2 = evaluate(str(folder), str(write_run(tmp_path / "hurt", hurt, names, paths)))
    assert m2["map"] < 1.0
    assert m2["confusion"]["label_accuracy"] < 1.0
    drawn = sorted((tmp_path / "hurt" / "evaluation" / "worst").glob("*.jpg"))
    assert len(drawn) == 2
    assert drawn[0].name.startswith("01_" + Path(worst).stem)
    assert drawn[0].read_bytes()[:3] == b"\xff\xd8\xff"
    html = (tmp_path / "hurt" / "evaluation" / "report.html").read_text()
    assert "worst/01_" in html and "pr_curve.png" in html


def test_real_voc_set_scores_one_against_itself(data: Path) -> None:
    truth = truth_table(str(data / "voc-masks"))
    ev = score_detections(truth, truth_as_predictions(truth))
    assert ev.metrics["map"] == 1.0
    assert ev.metrics["n_ignore_regions"] == int((truth["classname"] == "mask_weared_incorrect").sum())
    assert sum(b["n_truth"] for b in ev.metrics["recall_by_size"]) == ev.metrics["n_truth_faces"]


def test_worst_image_file_names_fit_the_file_system() -> None:
    """A photo name of 300 bytes gave `worst/01_<300 bytes>.jpg`, over the 255 bytes a name may
    have: the drawings' stems are cut and hashed as the previews' are (two such names differ)."""
    from maskbatch.evaluation import page

    long_a, long_b = "a" * 300 + "1.jpg", "a" * 300 + "2.jpg"
    stems = {page._safe_stem(long_a), page._safe_stem(long_b)}
    assert len(stems) == 2 and all(len(s.encode()) <= 161 for s in stems)
    assert page._safe_stem("0001 (copy).jpg") == "0001__copy_"  # short names as before

"""COCO: the files predict writes load in pycocotools, and maskbatch's AP agrees with the
reference implementation (pycocotools' COCOeval) on the sample sets, interpolation for
interpolation (COCO: 101 recall points; maskbatch's reported AP: VOC all-point)."""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pandas as pd
import pytest

from maskbatch.config import CLASS_NAMES, MASK, NO_MASK, DetectorConfig
from maskbatch.datasets import DEFAULT_LABEL_MAP
from maskbatch.evaluation import coco_ap
from maskbatch.evaluation.coco_ap import ap_101, coco_metrics
from maskbatch.evaluation.scoring import score_detections
from maskbatch.evaluation.truth import boxes_from_submission, read_truth
from maskbatch.models.classifier import ModelRef, default_model_dir, read_model
from maskbatch.outputs import coco, writers
from maskbatch.outputs.coco import CATEGORY_IDS, write_coco
from maskbatch.pipeline import predict_partition

pytest.importorskip("pycocotools", reason="pycocotools is the test extra's reference AP")
N_IMAGES = 60  # per sample set: enough boxes for a real curve, quick on one core


@pytest.fixture(scope="module")
def model_ref() -> ModelRef:
    _, card = read_model()
    return ModelRef(card["onnx_sha256"], str(default_model_dir() / "model.onnx"))


@pytest.fixture(scope="module", params=["medical-mask", "voc-masks"])
def sample(request, data, model_ref):
    """(truth boxes, image names, raw detections, manifest) on the first images of a set."""
    truth, names, images_dir = read_truth(str(data / request.param))
    names = names[:N_IMAGES]
    items = [(n, f"{images_dir}/{n}") for n in names]
    detections, manifest = predict_partition(items, DetectorConfig(), model_ref)
    return request.param, truth[truth["name"].isin(names)], names, detections, manifest


def test_ap_101_is_cocos_interpolation():
    # one truth box found at rank 1 of 2: precision 1 up to recall 1 -> AP 1 (all points)
    assert ap_101([1.0, 1.0], [1.0, 0.5]) == 1.0
    # half the truth found, precision 1: recall points 0..0.5 are 1, the other 50 are 0
    assert ap_101([0.5], [1.0]) == pytest.approx(51 / 101)
    assert ap_101([], []) == 0.0


def _without_ignore_regions(truth: pd.DataFrame) -> pd.DataFrame:
    return truth[truth["classname"].isin(DEFAULT_LABEL_MAP.keys())]


def test_ap_agrees_with_pycocotools(sample):
    """Same boxes, same ranking score, same interpolation: the same AP@0.5 per class."""
    dataset, truth, names, detections, _ = sample
    faces = _without_ignore_regions(truth)  # ignore regions: see the next test
    predictions = boxes_from_submission(detections)
    ours = score_detections(faces, predictions, names, iou=0.5).metrics
    ref = coco_metrics(faces, predictions, names)
    assert ref["available"], ref
    for c in CLASS_NAMES:
        assert ours["classes"][c]["n_truth"] > 0, (dataset, c)
        assert ours["classes"][c]["ap_101"] == pytest.approx(ref["classes"][c]["ap50"], abs=1e-9), \
            (dataset, c)
        # the AP maskbatch reports (all-point) is the area under the same envelope: close
        assert abs(ours["classes"][c]["ap"] - ref["classes"][c]["ap50"]) < 0.02, (dataset, c)
    assert ref["ap"] < ref["ap50"]  # AP@[.5:.95] averages stricter thresholds


def test_ignore_regions_are_coco_crowd_boxes(sample):
    """With ignore regions (voc-masks' mask_weared_incorrect) the two differ only in how a
    prediction on an ignore region is matched (COCO crowd rule vs IoU): a small gap."""
    dataset, truth, names, detections, _ = sample
    predictions = boxes_from_submission(detections)
    ours = score_detections(truth, predictions, names, iou=0.5).metrics
    ref = coco_metrics(truth, predictions, names)
    for c in CLASS_NAMES:
        assert abs(ours["classes"][c]["ap_101"] - ref["classes"][c]["ap50"]) < 0.02, (dataset, c)


def test_coco_files_load_in_pycocotools(sample, tmp_path):
    """detections.coco.json (results) + images.coco.json (images, categories) as written by
    predict: pycocotools loads them, and evaluating the run's own boxes as truth is perfect."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    dataset, _, _, detections, manifest = sample
    writers.write_table_atomic(detections, writers.DETECTION_SCHEMA,
                              str(tmp_path / "detections.parquet"))
    writers.write_table_atomic(manifest, writers.MANIFEST_SCHEMA, str(tmp_path / "images.parquet"))
    write_coco(str(tmp_path))
    results = json.loads((tmp_path / "detections.coco.json").read_text())
    data = json.loads((tmp_path / "images.coco.json").read_text())
    assert len(results) == len(detections) == len(data["annotations"])
    assert [c["id"] for c in data["categories"]] == [CATEGORY_IDS[c] for c in CLASS_NAMES]
    ok = manifest[manifest["status"] == "ok"]
    assert [i["file_name"] for i in data["images"]] == list(ok["name"])
    first = detections.iloc[0]
    box = results[0]["bbox"]  # [left, top, width, height]; detections keep the x1,x2,y1,y2 quirk
    assert box == pytest.approx([first["x1"], first["x2"], first["y1"] - first["x1"],
                                 first["y2"] - first["x2"]], abs=0.01)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(tmp_path / "images.coco.json"))
        dt = gt.loadRes(str(tmp_path / "detections.coco.json"))
        ev = COCOeval(gt, dt, "bbox")
        ev.params.maxDets = [1, 10, 1000]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert len(dt.getAnnIds()) == len(results)
    assert math.isclose(ev.stats[1], 1.0), dataset  # the predictions match themselves


def test_evaluate_reports_coco_ap(data, tmp_path, model_ref):
    from maskbatch.jobs.console import format_table
    from maskbatch.jobs.evaluate import evaluate

    names = ["0001.jpg", "0002.jpg", "0003.jpg", "0005.jpg"]
    items = [(n, str(data / "medical-mask" / "images" / n)) for n in names]
    detections, manifest = predict_partition(items, DetectorConfig(), model_ref)
    detections.to_parquet(tmp_path / "detections.parquet")
    manifest.to_parquet(tmp_path / "images.parquet")
    truth = pd.read_csv(data / "medical-mask" / "train.csv")
    truth[truth["name"].isin(names)].to_csv(tmp_path / "train.csv", index=False)
    metrics = evaluate(str(tmp_path / "train.csv"), str(tmp_path), str(tmp_path / "ev"))
    coco = metrics["coco"]
    assert coco["available"] and 0 < coco["ap"] < coco["ap50"] <= 1
    assert coco["tool"].startswith("pycocotools ")
    table = format_table(metrics)
    assert "AP@[.5:.95]" in table and "101-point" in table
    assert "COCO AP@[.5:.95]" in (tmp_path / "ev" / "report.html").read_text()


def test_image_with_predictions_but_no_truth_box(sample):
    """An evaluated image without a truth box (e.g. only ignore-class boxes removed) scores its
    predictions as false alarms, in maskbatch and pycocotools alike (was an IndexError)."""
    _, truth, names, detections, _ = sample
    predictions = boxes_from_submission(detections)
    with_preds = [n for n in names if n in set(predictions["name"])]
    faces = _without_ignore_regions(truth)
    faces = faces[faces["name"] != with_preds[0]]
    ours = score_detections(faces, predictions, names).metrics
    ref = coco_metrics(faces, predictions, names)
    for c in CLASS_NAMES:
        assert ours["classes"][c]["ap_101"] == pytest.approx(ref["classes"][c]["ap50"], abs=1e-9)


def test_coco_files_are_streamed_in_batches(tmp_path, monkeypatch):
    """write_coco reads both tables a few rows at a time: ids follow the manifest (failed photos
    keep their number but get no entry), every detection is written once, in order, and
    detections out of the manifest's order are refused rather than dropped."""
    from maskbatch.errors import MaskbatchError

    names = [f"p{i:03d}.jpg" for i in range(40)]
    status = ["failed" if i % 9 == 4 else "ok" for i in range(40)]
    manifest = pd.DataFrame({"name": names, "path": "", "status": status, "reason": "",
                             "n_faces": 0, "width": 64, "height": 48, "seconds": 0.0})
    rows = [(n, 1 + k, 2, 11 + k, 12, CLASS_NAMES[k % 2], 0.9, 0.3, 64, 48, "sha", None, None)
            for i, n in enumerate(names) if status[i] == "ok" for k in range(i % 3)]
    detections = pd.DataFrame(rows, columns=writers.DETECTION_COLUMNS)
    writers.write_table_atomic(detections, writers.DETECTION_SCHEMA,
                              str(tmp_path / "detections.parquet"))
    writers.write_table_atomic(manifest, writers.MANIFEST_SCHEMA, str(tmp_path / "images.parquet"))
    monkeypatch.setattr(coco, "BATCH_ROWS", 4)
    write_coco(str(tmp_path))
    results = json.loads((tmp_path / "detections.coco.json").read_text())
    data = json.loads((tmp_path / "images.coco.json").read_text())
    ok = [i for i, s in enumerate(status) if s == "ok"]
    assert [(im["id"], im["file_name"]) for im in data["images"]] == [(i + 1, names[i]) for i in ok]
    assert len(results) == len(detections) == len(data["annotations"]) > 0
    assert [r["image_id"] for r in results] == [names.index(n) + 1 for n in detections["name"]]
    assert [a["id"] for a in data["annotations"]] == list(range(1, len(results) + 1))
    assert results[0]["bbox"] == [1.0, 2.0, 10.0, 10.0] and results[0]["mask_prob"] == 0.3
    shuffled = detections.iloc[::-1]
    writers.write_table_atomic(shuffled, writers.DETECTION_SCHEMA,
                              str(tmp_path / "detections.parquet"))
    with pytest.raises(MaskbatchError, match="order"):
        write_coco(str(tmp_path))


def _crowd(names_and_offsets: list[tuple[str, int]], faces: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Truth and predictions: per (image, x offset), a grid of `faces` 20 px faces, found with
    jitter and made-up scores, with a few misses and false positives (a real curve, not AP 1)."""
    truth, preds = [], []
    rng = np.random.default_rng(7)
    for name, dx in names_and_offsets:
        for k in range(faces):
            x, y = dx + 30 * (k % 10), 30 * (k // 10)
            cls = MASK if k % 3 else NO_MASK
            truth.append((name, x, y, x + 20, y + 20, cls))
            if k % 7 == 0:
                continue  # a miss
            j = rng.integers(-4, 5, size=2)
            preds.append((name, x + j[0], y + j[1], x + 20 + j[0], y + 20 + j[1], cls,
                          float(rng.uniform(0.3, 1.0)), 0.9 if cls == MASK else 0.1))
        for k in range(faces // 10):  # false positives between the faces
            x = dx + 30 * (k % 10) + 21
            preds.append((name, x, 5, x + 8, 15, MASK, float(rng.uniform(0.3, 1.0)), 0.9))
    truth_df = pd.DataFrame(truth, columns=["name", "x1", "y1", "x2", "y2", "classname"])
    pred_df = pd.DataFrame(preds, columns=["name", "x1", "y1", "x2", "y2", "classname", "score",
                                           "mask_prob"])
    return truth_df, pred_df


def test_coco_ap_on_a_photo_with_over_100_detections():
    """maxDets [1, 10, N] made pycocotools' AP@[.5:.95] (which asks for maxDets 100) -1.

    The crowded photo holds two far-apart halves of 140 faces each (over 200 detections);
    COCO matches per photo, so the same halves as two photos give the same curve, and there
    pycocotools' own summarize() (standard maxDets [1, 10, 100]) gives the reference numbers."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    truth, preds = _crowd([("crowd.jpg", 0), ("crowd.jpg", 1000)], 140)
    ours = coco_metrics(truth, preds, ["crowd.jpg"])
    assert ours["max_detections_per_image"] > 100
    assert ours["ap"] != -1 and 0 < ours["ap"] < ours["ap50"] <= 1

    split_truth, split_preds = _crowd([("left.jpg", 0), ("right.jpg", 1000)], 140)
    names = ["left.jpg", "right.jpg"]
    for per_class in (MASK, NO_MASK):  # each photo and class stays within maxDets 100
        assert (split_preds[split_preds.classname == per_class].groupby("name").size() <= 100).all()
    ids = {n: i + 1 for i, n in enumerate(names)}
    gt_dict = coco_ap._truth_dataset(split_truth, names, DEFAULT_LABEL_MAP, CLASS_NAMES)
    dets = [{"image_id": ids[r.name], "category_id": CATEGORY_IDS[r.classname],
             "bbox": [float(r.x1), float(r.y1), float(r.x2 - r.x1), float(r.y2 - r.y1)],
             "score": float(s)}
            for r, s in zip(split_preds.itertuples(), coco.class_score(
                split_preds.classname, split_preds.score, split_preds.mask_prob))]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_dict
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")  # the standard maxDets [1, 10, 100]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ours["ap"] == pytest.approx(ev.stats[0], abs=1e-12)
    assert ours["ap50"] == pytest.approx(ev.stats[1], abs=1e-12)
    assert ours["ap75"] == pytest.approx(ev.stats[2], abs=1e-12)

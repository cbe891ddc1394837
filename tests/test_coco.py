"""COCO: the files predict writes load in pycocotools, and maskbatch's AP agrees with the
reference implementation (pycocotools' COCOeval) on the sample sets, interpolation for
interpolation (COCO: 101 recall points; maskbatch's reported AP: VOC all-point)."""

from __future__ import annotations

import contextlib
import io
import json
import math

import pandas as pd
import pytest

from maskbatch.config import CLASS_NAMES, DetectorConfig
from maskbatch.datasets import DEFAULT_LABEL_MAP
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

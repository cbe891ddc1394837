"""The `maskbatch` commands run as a user runs them (a subprocess each): evaluate on predictions
with known scores, predict with --model, another --mode, --gamma and file:// URLs, a tiny real
train run, and the suite itself refusing to skip its data tests in CI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_contract import other_model

from maskbatch.config import MASK, NO_MASK, DetectorConfig
from maskbatch.evaluation.truth import boxes_to_submission, read_truth
from maskbatch.models.classifier import ModelRef, read_model
from maskbatch.pipeline import predict_partition

REPO = Path(__file__).resolve().parents[1]


def maskbatch(*args: str, timeout: float = 300, env: dict | None = None
              ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "maskbatch.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


# --------------------------------------------------------------------------- evaluate


def test_evaluate_command(data: Path, tmp_path: Path) -> None:
    """Predictions that copy the truth of two photos out of three, one false alarm added: every
    number of the printed table and metrics.json is known in advance."""
    names = ["0003.jpg", "0004.jpg", "0007.jpg"]  # 2, 4 and 1 labelled faces
    truth_csv = data / "medical-mask" / "train.csv"
    truth = pd.read_csv(truth_csv)
    truth = truth[truth["name"].isin(names)]
    (tmp_path / "truth").mkdir()
    truth.to_csv(tmp_path / "truth" / "train.csv", index=False)
    honest, _, _ = read_truth(str(tmp_path / "truth" / "train.csv"))
    assert honest["name"].value_counts().to_dict() == {"0003.jpg": 2, "0004.jpg": 4, "0007.jpg": 1}
    found = honest[honest["name"] != "0004.jpg"]  # the 3 faces of 0003 and 0007 found
    rows = [(r.name, r.x1, r.y1, r.x2, r.y2, r.classname, 0.9, 0.9 if r.classname == MASK else 0.1)
            for r in found.itertuples()]
    rows.append(("0007.jpg", 0.0, 0.0, 5.0, 5.0, MASK, 0.95, 0.9))  # a false alarm ranked first
    det = boxes_to_submission(pd.DataFrame(rows, columns=["name", "x1", "y1", "x2", "y2",
                                                          "classname", "score", "mask_prob"]))
    pred = tmp_path / "pred"
    pred.mkdir()
    det.to_parquet(pred / "detections.parquet")
    pd.DataFrame({"name": names, "path": [str(data / "medical-mask" / "images" / n) for n in names],
                  "status": "ok", "n_faces": [2, 0, 2]}).to_parquet(pred / "images.parquet")

    proc = maskbatch("evaluate", "--truth", str(tmp_path / "truth" / "train.csv"), "--pred",
                     str(pred), "--out", str(tmp_path / "report"))
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    n_faces = 7
    assert metrics["n_images"] == 3 and metrics["n_truth_faces"] == n_faces
    d = metrics["detection"]
    assert (d["tp"], d["fp"], d["fn"]) == (3, 1, 4)
    # ranked FP then 3 TP: the envelope gives precision 3/4 up to recall 3/7
    assert d["ap"] == pytest.approx(3 / 4 * 3 / 7)
    assert d["recall"] == pytest.approx(3 / 7) and d["precision"] == pytest.approx(3 / 4)
    assert metrics["confusion"]["label_accuracy"] == 1.0
    per_image = {b["bin"]: b for b in metrics["recall_by_size"]}
    assert sum(b["found"] for b in per_image.values()) == 3
    assert f"{'detection (any)':18}{d['ap']:>7.3f}{0.75:>11.3f}{3 / 7:>8.3f}" in proc.stdout
    assert f"{'mAP':18}{metrics['map']:>7.3f}" in proc.stdout
    assert (tmp_path / "report" / "report.html").is_file()

    bad = maskbatch("evaluate", "--truth", str(tmp_path / "nothing.csv"), "--pred", str(pred))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "truth not found" in bad.stderr


# --------------------------------------------------------------------------- predict


def test_predict_command_with_model_mode_gamma_and_file_urls(data: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    names = ["0002.jpg", "0005.jpg", "0009.jpg"]
    for name in names:
        shutil.copy(data / "medical-mask" / "images" / name, photos / name)
    model, sha = other_model(tmp_path / "model", threshold=0.99)
    out = tmp_path / "out"
    proc = maskbatch("predict", f"file://{photos}", "--out", f"file://{out}", "--model", str(model),
                     "--mode", "seed", "--gamma", "1.5", "--workers", "1", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["model_sha256"] == sha
    assert run["detector"] == {"mode": "seed", "confidence": None, "gamma": 1.5,
                               "min_face": 5}
    det = pd.read_parquet(out / "detections.parquet")
    assert len(det) > 0 and (det["model_sha256"] == sha).all()
    # the model's own card threshold (0.99) labels the faces, not the bundled model's
    assert list(det["classname"]) == [MASK if p >= 0.99 else NO_MASK for p in det["mask_prob"]]
    # the boxes are seed's at gamma 1.5, which differ from its default gamma 2.0
    items = [(n, str(photos / n)) for n in names]
    ref = ModelRef(sha, str(model / "model.onnx"))
    same, _ = predict_partition(items, DetectorConfig(mode="seed", gamma=1.5), ref)
    default, _ = predict_partition(items, DetectorConfig(mode="seed"), ref)
    cols = ["name", "x1", "x2", "y1", "y2", "classname"]
    pd.testing.assert_frame_equal(det[cols], same[cols])
    assert not det[cols].equals(default[cols])
    assert np.allclose(det["score"], same["score"], atol=1e-6)


# --------------------------------------------------------------------------- train


@pytest.mark.slow
def test_train_command_tiny_real_run(data: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    pytest.importorskip("tf2onnx")
    from maskbatch.datasets import DEFAULT_LABEL_MAP, load_records
    from maskbatch.outputs.writers import write_parquet_atomic
    from maskbatch.pipeline import extract_partition

    records = [r for r in load_records(str(data / "medical-mask")) if r.boxes][:24]
    crops, _ = extract_partition(records, DEFAULT_LABEL_MAP)
    assert set(crops["label"]) == {MASK, NO_MASK}
    write_parquet_atomic(crops, str(tmp_path / "crops" / "crops" / "part-0.parquet"))
    out = tmp_path / "model"
    proc = maskbatch("train", str(tmp_path / "crops"), "--out", str(out), "--epochs", "1",
                     "--batch-size", "16", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    onnx_bytes, card = read_model(out)  # checksum-verified
    assert f"model written to {out} (sha256 {card['onnx_sha256'][:12]}" in proc.stdout
    assert card["training"]["epochs_run"] == 1
    assert card["training_data"]["crops_used"] <= len(crops)
    again = maskbatch("train", str(tmp_path / "crops"), "--out", str(out), "--epochs", "0")
    assert again.returncode == 2 and "--epochs" in again.stderr


# --------------------------------------------------------------------------- the suite itself


@pytest.mark.parametrize("env", [{"CI": "true", "MASKBATCH_DATA": "/nonexistent/data"},
                                 {"MASKBATCH_DATA": "{tmp}"}])
def test_the_suite_fails_instead_of_skipping_without_data(env: dict, tmp_path: Path) -> None:
    (tmp_path / "medical-mask").mkdir()  # a misnamed or partial copy: voc-masks etc. missing
    env = {k: v.format(tmp=tmp_path) for k, v in env.items()}
    full = {k: v for k, v in os.environ.items() if k not in ("CI", "MASKBATCH_DATA")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_images.py"], capture_output=True, text=True, cwd=REPO,
                          env={**full, **env}, timeout=120)
    assert proc.returncode == 4, proc.stdout[-2000:]
    assert "sample data not found" in proc.stdout + proc.stderr
    assert "lacks" in proc.stdout + proc.stderr and "voc-masks" in proc.stdout + proc.stderr

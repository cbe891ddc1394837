"""`maskbatch predict` on real photos with the real detector and the bundled ONNX classifier."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import copy_photos, write_broken_files

from maskbatch.config import MASK, NO_MASK, ClusterConfig, DetectorConfig
from maskbatch.errors import MaskbatchError
from maskbatch.jobs.predict import list_inputs, predict
from maskbatch.models.classifier import ModelRef, default_model_dir, read_model
from maskbatch.outputs.writers import DETECTION_COLUMNS, SUBMISSION_COLUMNS
from maskbatch.pipeline import predict_partition

LOCAL2 = ClusterConfig(workers=2, partition_size=8, progress=False)


@pytest.fixture(scope="module")
def model_ref() -> ModelRef:
    _, card = read_model()
    return ModelRef(card["onnx_sha256"], str(default_model_dir() / "model.onnx"))


@pytest.fixture(scope="module")
def sample_dir(data, tmp_path_factory):
    """40 real photos: 30 from medical-mask, 10 from voc-masks (small faces)."""
    return copy_photos(data, tmp_path_factory.mktemp("photos"), medical_mask=30, voc_masks=10)


@pytest.fixture(scope="module")
def cluster_run(sample_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    return predict(str(sample_dir), str(out), cluster_config=LOCAL2, previews=3), out


def test_multiprocess_cluster_equals_single_process(sample_dir, cluster_run, model_ref):
    result, _ = cluster_run
    single, manifest = predict_partition(list_inputs(str(sample_dir)), DetectorConfig(), model_ref)
    pd.testing.assert_frame_equal(result.detections.reset_index(drop=True),
                                  single.reset_index(drop=True), check_exact=False, atol=1e-6)
    assert list(result.manifest["name"]) == list(manifest["name"])
    assert (result.manifest["n_faces"].to_numpy() == manifest["n_faces"].to_numpy()).all()


@pytest.mark.parametrize("mode", ["tuned", "seed"])
def test_several_threads_per_worker_give_the_same_answers(sample_dir, cluster_run, model_ref,
                                                          mode, tmp_path):
    """Two Dask threads in one worker detect at the same time: each thread has its own OpenCV
    detector (maskbatch.per_thread). Sharing one crashed the worker (a segmentation fault) or mixed
    up input sizes."""
    threads = ClusterConfig(workers=1, threads_per_worker=2, processes=False, partition_size=4,
                            progress=False)
    result = predict(str(sample_dir), str(tmp_path / "out"), cluster_config=threads,
                     detector=DetectorConfig(mode=mode))
    single, _ = predict_partition(list_inputs(str(sample_dir)), DetectorConfig(mode=mode),
                                  model_ref)
    pd.testing.assert_frame_equal(result.detections.reset_index(drop=True),
                                  single.reset_index(drop=True), check_exact=False, atol=1e-6)


def test_per_thread_cache_gives_each_thread_its_own_object():
    import threading

    from maskbatch.models.per_thread import per_thread

    made = []

    @per_thread
    def load(name: str) -> object:
        made.append(name)
        return object()

    mine = load("a")
    assert load("a") is mine and load("b") is not mine
    other = []
    thread = threading.Thread(target=lambda: other.append(load("a")))
    thread.start()
    thread.join()
    assert other[0] is not mine and made == ["a", "b", "a"]
    load.cache_clear()
    assert load("a") is not mine


def test_output_files_are_consistent(sample_dir, cluster_run):
    result, out = cluster_run
    det = pd.read_parquet(out / "detections.parquet")
    sub = pd.read_csv(out / "submission.csv")
    images = pd.read_parquet(out / "images.parquet")
    assert list(det.columns) == DETECTION_COLUMNS
    assert list(sub.columns) == SUBMISSION_COLUMNS
    assert len(det) == len(sub) == images["n_faces"].sum() > 20
    assert sorted(images["name"]) == sorted(p.name for p in sample_dir.iterdir())
    assert set(sub["classname"]) <= {MASK, NO_MASK}
    assert all(pd.api.types.is_integer_dtype(sub[c]) for c in ("x1", "x2", "y1", "y2"))
    # values are left, top, right, bottom under the header x1, x2, y1, y2
    assert (sub["y1"] > sub["x1"]).all() and (sub["y2"] > sub["x2"]).all()
    assert (sub["y1"] <= det["width"]).all() and (sub["y2"] <= det["height"]).all()
    assert det["mask_prob"].between(0, 1).all() and (det["score"] > 0).all()
    order = {n: i for i, n in enumerate(images["name"])}
    assert sub["name"].map(order).is_monotonic_increasing
    assert len(list((out / "previews").glob("*.jpg"))) == 3
    assert json.loads((out / "summary.json").read_text())["faces"] == len(det)


def test_template_csv_limits_and_orders_rows(data, tmp_path):
    template = tmp_path / "submission.csv"
    names = ["0005.jpg", "0002.jpg", "0009.jpg"]
    template.write_text("name,x1,x2,y1,y2,classname\n" + "".join(f"{n},,,,,\n" for n in names))
    result = predict(str(template), str(tmp_path / "out"),
                     images_dir=str(data / "medical-mask" / "images"),
                     cluster_config=ClusterConfig(workers=1, progress=False))
    assert list(result.manifest["name"]) == names
    sub = pd.read_csv(tmp_path / "out" / "submission.csv")
    assert len(sub) == result.manifest["n_faces"].sum() > 0  # an empty file does not pass
    assert set(sub["name"]) <= set(names)
    firsts = [n for n in dict.fromkeys(sub["name"])]
    assert firsts == [n for n in names if n in firsts]


def test_broken_files_land_in_the_manifest(data, tmp_path):
    folder = tmp_path / "photos"
    good = (data / "medical-mask" / "images" / "0001.jpg").read_bytes()
    broken = write_broken_files(folder, good)
    for f in (data / "messy").iterdir():
        shutil.copy(f, folder / f.name)
    gray = cv2.cvtColor(cv2.imread(str(data / "medical-mask" / "images" / "0001.jpg")),
                        cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(folder / "grayscale.png"), gray)
    (folder / "good.jpg").write_bytes(good)
    result = predict(str(folder), str(tmp_path / "out"), cluster_config=LOCAL2)
    m = result.manifest.set_index("name")
    assert len(m) == len(list(folder.iterdir()))
    for name in broken:
        assert m.loc[name, "status"] == "failed" and m.loc[name, "reason"], name
    for name in ["good.jpg", "grayscale.png", "rgba-16bit.png", "webp-named-jpg.jpg", "face.webp"]:
        assert m.loc[name, "status"] == "ok", (name, m.loc[name, "reason"])
    assert m.loc["good.jpg", "n_faces"] > 0
    assert m.loc["face.webp", "n_faces"] >= 1


def test_older_run_is_not_mixed_in(sample_dir, cluster_run, tmp_path):
    _, out = cluster_run
    with pytest.raises(MaskbatchError, match="not empty"):
        predict(str(sample_dir), str(out), cluster_config=LOCAL2)
    stranger = tmp_path / "notes"
    stranger.mkdir()
    (stranger / "keep.txt").write_text("mine")
    with pytest.raises(MaskbatchError, match="not a maskbatch output"):
        predict(str(sample_dir), str(stranger), cluster_config=LOCAL2, overwrite=True)
    assert (stranger / "keep.txt").exists()


def test_cli_end_to_end_with_previews(data, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("0001.jpg", "0003.jpg"):
        shutil.copy(data / "medical-mask" / "images" / name, folder / name)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "maskbatch.cli", "predict", str(folder), "--out", str(out),
           "--workers", "1", "--previews", "2", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "images        2 (2 ok" in proc.stdout
    preview = cv2.imread(str(out / "previews" / "0001.jpg"))
    photo = cv2.imread(str(folder / "0001.jpg"))
    assert preview.shape == photo.shape  # drawn on the photo itself (under 1280 px: not shrunk)
    boxes = pd.read_parquet(out / "detections.parquet").query("name == '0001.jpg'")
    assert len(boxes) > 0
    x1, y1, x2, y2 = boxes.iloc[0][["x1", "x2", "y1", "y2"]].astype(int)  # left, top, right, bottom
    left_edge = preview[y1 + 10:y2 - 10, x1].astype(int) - photo[y1 + 10:y2 - 10, x1].astype(int)
    assert np.abs(left_edge).mean() > 40  # a box edge is drawn where the face was found
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "--resume" in again.stderr


def test_crops_do_not_keep_their_photo_alive():
    """A partition holds one decoded photo at a time: a crop is resized into a new array, with
    exactly the bilinear resize the classifier's preprocess would apply (docs/benchmarks.md)."""
    import cv2
    import numpy as np

    from maskbatch.models.classifier import fit_crop, preprocess

    photo = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    for face in (photo[10:90, 20:80], photo[0:128, 0:128]):
        fitted = fit_crop(face, 128)
        assert fitted.shape == (128, 128, 3) and not np.shares_memory(fitted, photo)
        assert np.array_equal(preprocess([fitted], 128), preprocess([face], 128))
    assert np.array_equal(fit_crop(photo[10:90, 20:80], 128),
                          cv2.resize(photo[10:90, 20:80], (128, 128), interpolation=cv2.INTER_LINEAR))

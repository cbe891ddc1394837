"""What `predict` promises about its inputs and outputs, checked fast (a cluster of threads, a few
photos): the submission-template contract, --resume refusing another run's folder, the output
writers, and paths on fsspec filesystems.

The template contract (README, "Submission template"): the template's `name` column says which
photos to process and in which order; a name listed twice is processed once, empty names are
skipped, a name with no photo becomes a manifest row with status `failed` and a reason, photos
beside the template that it does not list are not processed. submission.csv has one row per
detected face: a photo with no face (or a failed one) has no row there, only its row in
images.parquet (status, n_faces 0). The dataset's own template, whose box columns are empty,
is read as it is.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import cv2
import fsspec
import numpy as np
import pandas as pd
import pytest
from fsspec.implementations.local import LocalFileSystem

from maskbatch import files
from maskbatch.config import MASK, NO_MASK, ClusterConfig, DetectorConfig, InputLimits, PredictSettings
from maskbatch.errors import MaskbatchError
from maskbatch.jobs.outdir import check_resumable as check_resumable
from maskbatch.jobs.plan import list_inputs, run_record
from maskbatch.jobs.predict import predict
from maskbatch.models.classifier import ModelRef, default_model_dir, read_model
from maskbatch.outputs import writers
from maskbatch.outputs.writers import DETECTION_COLUMNS, PREDICT_MANIFEST_COLUMNS, SUBMISSION_COLUMNS
from maskbatch.photos import pixels, reading

THREADS = ClusterConfig(workers=1, processes=False, progress=False, partition_size=2)


@pytest.fixture(scope="module")
def photos(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two real photos with faces, one grey photo without any, and one not in the template."""
    folder = tmp_path_factory.mktemp("photos")
    for name in ("0005.jpg", "0002.jpg", "0003.jpg"):
        shutil.copy(data / "medical-mask" / "images" / name, folder / name)
    cv2.imwrite(str(folder / "grey.jpg"), np.full((240, 320, 3), 128, np.uint8))
    return folder


@pytest.fixture(scope="module")
def template_run(photos: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("template")
    template = folder / "submission.csv"
    # the dataset's own template format (empty box columns), a duplicate, an empty name, a name
    # without a photo; 0003.jpg is in the photo folder but not in the template
    template.write_text("name,x1,x2,y1,y2,classname\n0005.jpg,,,,,\ngrey.jpg,,,,,\n"
                        "absent.jpg,,,,,\n0005.jpg,,,,,\n,,,,,\n0002.jpg,,,,,\n")
    out = folder / "out"
    result = predict(str(template), str(out), images_dir=str(photos), cluster_config=THREADS)
    return result, out


def test_template_names_are_processed_once_in_template_order(template_run):
    result, out = template_run
    manifest = pd.read_parquet(out / "images.parquet")
    assert list(manifest.columns) == PREDICT_MANIFEST_COLUMNS
    assert list(manifest["name"]) == ["0005.jpg", "grey.jpg", "absent.jpg", "0002.jpg"]
    status = manifest.set_index("name")
    assert status.loc["absent.jpg", "status"] == "failed"
    assert status.loc["absent.jpg", "reason"] == "missing file"
    assert status.loc["grey.jpg", "status"] == "ok" and status.loc["grey.jpg", "n_faces"] == 0
    assert status.loc["0005.jpg", "n_faces"] >= 1 and status.loc["0002.jpg", "n_faces"] >= 1
    assert result.processed == 4


def test_submission_has_one_row_per_face_and_none_for_photos_without(template_run):
    result, out = template_run
    manifest = pd.read_parquet(out / "images.parquet").set_index("name")
    sub = pd.read_csv(out / "submission.csv")
    assert list(sub.columns) == SUBMISSION_COLUMNS
    counts = sub["name"].value_counts().to_dict()
    assert counts == {n: int(k) for n, k in manifest["n_faces"].items() if k}
    assert "grey.jpg" not in counts and "absent.jpg" not in counts
    assert list(dict.fromkeys(sub["name"])) == ["0005.jpg", "0002.jpg"]  # template order
    assert sub[["x1", "x2", "y1", "y2"]].notna().all().all()
    assert all(pd.api.types.is_integer_dtype(sub[c]) for c in ("x1", "x2", "y1", "y2"))
    assert set(sub["classname"]) <= {MASK, NO_MASK}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 4 and summary["ok"] == 3 and summary["failed"] == 1
    assert summary["failures"] == {"absent.jpg": "missing file"}
    assert summary["faces"] == len(sub) == len(result.detections)
    assert summary["faces_per_class"] == sub["classname"].value_counts().reindex(
        [MASK, NO_MASK], fill_value=0).to_dict()
    # both rounded to 2 decimals in summary.json
    seconds = summary["seconds"]  # rounded to 0.01 s: the rate lies within what that allows
    assert 4 / (seconds + 0.005) - 0.01 <= summary["images_per_second"] <= 4 / max(
        seconds - 0.005, 1e-9) + 0.01


def test_detections_are_in_template_order_best_face_first(template_run):
    result, out = template_run
    det = pd.read_parquet(out / "detections.parquet")
    pd.testing.assert_frame_equal(det, result.detections)
    assert list(dict.fromkeys(det["name"])) == ["0005.jpg", "0002.jpg"]
    assert (det["name"] == "0005.jpg").sum() >= 5  # a crowd: the order inside a photo shows
    for _, scores in det.groupby("name", sort=False)["score"]:
        assert scores.is_monotonic_decreasing
    assert (det["model_sha256"] == read_model()[1]["onnx_sha256"]).all()


def test_the_datasets_own_template_is_read_as_it_is(data: Path):
    template = data / "medical-mask" / "submission.csv"
    names = [line.split(",")[0] for line in template.read_text().splitlines()[1:]]
    inputs = list_inputs(str(template))
    assert [n for n, _ in inputs] == names and len(names) == 152
    assert all(Path(p) == data / "medical-mask" / "images" / n for n, p in inputs)


def test_template_without_a_name_column_or_photos_folder_is_refused(tmp_path: Path):
    bad = tmp_path / "bad.csv"
    bad.write_text("file,x1\na.jpg,1\n")
    with pytest.raises(MaskbatchError, match="needs a `name` column"):
        list_inputs(str(bad))
    good = tmp_path / "good.csv"
    good.write_text("name\na.jpg\n")
    with pytest.raises(MaskbatchError, match="images folder for the template not found"):
        list_inputs(str(good))
    with pytest.raises(MaskbatchError, match="template CSV not found"):
        list_inputs(str(tmp_path / "none.csv"))


# --------------------------------------------------------------------------- resume


def other_model(folder: Path, threshold: float | None = None) -> tuple[Path, str]:
    """A copy of the bundled model with other bytes (a doc_string field appended to the ONNX
    protobuf: the same network) and its own card; returns (folder, sha256)."""
    import hashlib

    onnx_bytes, card = read_model()
    note = b"maskbatch test copy"
    data = onnx_bytes + bytes([6 << 3 | 2, len(note)]) + note  # ModelProto.doc_string = 6
    card = dict(card, onnx_sha256=hashlib.sha256(data).hexdigest())
    if threshold is not None:
        card["threshold"] = threshold
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(data)
    (folder / "model_card.json").write_text(json.dumps(card))
    return folder, card["onnx_sha256"]


def test_resume_refuses_another_model_detector_or_input(photos: Path, tmp_path: Path):
    out = tmp_path / "out"
    first = predict(str(photos), str(out), cluster_config=THREADS)
    assert first.processed == 4
    with pytest.raises(MaskbatchError, match="different detector"):
        predict(str(photos), str(out), detector=DetectorConfig(mode="seed"),
                cluster_config=THREADS, resume=True)
    with pytest.raises(MaskbatchError, match="different detector"):
        predict(str(photos), str(out), detector=DetectorConfig(gamma=1.5),
                cluster_config=THREADS, resume=True)
    model, _ = other_model(tmp_path / "model")
    with pytest.raises(MaskbatchError, match="different model_sha256"):
        predict(str(photos), str(out), model=str(model), cluster_config=THREADS, resume=True)
    fewer = tmp_path / "fewer"
    fewer.mkdir()
    shutil.copy(photos / "0002.jpg", fewer / "0002.jpg")
    with pytest.raises(MaskbatchError, match="different inputs_sha1"):
        predict(str(fewer), str(out), cluster_config=THREADS, resume=True)
    # the refusals left the finished run as it was; the same run resumes with nothing to do
    again = predict(str(photos), str(out), cluster_config=THREADS, resume=True)
    assert again.processed == 0
    pd.testing.assert_frame_equal(again.detections, first.detections)
    assert json.loads((out / "run.json").read_text())["model_sha256"] == read_model()[1]["onnx_sha256"]


def test_check_resumable_compares_each_recorded_key(tmp_path: Path):
    inputs = [("a.jpg", "/x/a.jpg"), ("b.jpg", "/x/b.jpg")]
    ref = ModelRef("f" * 64, str(default_model_dir() / "model.onnx"))
    sixteen = PredictSettings(cluster=ClusterConfig(partition_size=16))
    record = run_record(inputs, ref, sixteen)
    check_resumable(str(tmp_path), record)  # no run.json yet: nothing to compare
    writers.write_json_atomic(record, str(tmp_path / "run.json"))
    check_resumable(str(tmp_path), dict(record, partition_size=4))  # may change on resume
    for key, value in (("model_sha256", "0" * 64), ("detector", DetectorConfig("seed").as_dict()),
                       ("limits", InputLimits(max_pixels=10**6).as_dict()),
                       ("inputs_sha1", run_record(inputs[:1], ref, sixteen)["inputs_sha1"])):
        with pytest.raises(MaskbatchError, match=f"different {key}"):
            check_resumable(str(tmp_path), dict(record, **{key: value}))


# --------------------------------------------------------------------------- writers, paths


def test_predict_reads_and_writes_fsspec_memory_urls(photos: Path):
    fs = fsspec.filesystem("memory")
    for name in ("0002.jpg", "grey.jpg"):
        fs.pipe(f"/contract-in/{name}", (photos / name).read_bytes())
    try:
        result = predict("memory://contract-in", "memory://contract-out", cluster_config=THREADS)
        assert list(result.manifest["name"]) == ["0002.jpg", "grey.jpg"]
        assert result.manifest["path"].str.startswith("memory://").all()
        with fs.open("/contract-out/detections.parquet", "rb") as f:
            det = pd.read_parquet(f)
        assert list(det.columns) == DETECTION_COLUMNS and len(det) == result.manifest["n_faces"].sum()
        assert set(det["name"]) == {"0002.jpg"}
        assert fs.isfile("/contract-out/submission.csv") and fs.isfile("/contract-out/run.json")
    finally:
        for folder in ("/contract-in", "/contract-out"):
            if fs.exists(folder):
                fs.rm(folder, recursive=True)


def test_atomic_writers_leave_only_the_finished_file(tmp_path: Path):
    url = str(tmp_path / "deep" / "a.json")
    writers.write_json_atomic({"b": 1, "when": np.float64(0.5)}, url)
    assert json.loads(Path(url).read_text()) == {"b": 1, "when": 0.5}
    df = pd.DataFrame({"name": ["x.jpg"], "x1": [1.0]})
    writers.write_parquet_atomic(df, str(tmp_path / "deep" / "a.parquet"))
    writers.write_csv_atomic(df, str(tmp_path / "deep" / "a.csv"))
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["a.csv", "a.json", "a.parquet"]
    pd.testing.assert_frame_equal(writers.read_parquet(str(tmp_path / "deep" / "a.parquet")), df)
    assert (tmp_path / "deep" / "a.csv").read_text() == "name,x1\nx.jpg,1.0\n"


def test_submission_frame_keeps_the_quirk_order_and_integer_pixels():
    det = pd.DataFrame([("a.jpg", 10.0, 20.0, 30.0, 40.0, MASK, 0.9, 0.8, 100, 80, "s", None, None)],
                       columns=DETECTION_COLUMNS)
    sub = writers.submission_frame(det)
    assert list(sub.columns) == SUBMISSION_COLUMNS
    assert sub.iloc[0].tolist() == ["a.jpg", 10, 20, 30, 40, MASK]
    assert all(sub[c].dtype == np.int64 for c in ("x1", "x2", "y1", "y2"))


def test_read_crops_joins_shards_sorted_by_crop_id(tmp_path: Path):
    assert list(writers.read_crops(str(tmp_path)).columns) == writers.CROP_COLUMNS  # no shards yet
    for shard, ids in (("b", ["img2#0", "img1#1"]), ("a", ["img1#0"])):
        writers.write_parquet_atomic(pd.DataFrame({"crop_id": ids, "label": [MASK] * len(ids)}),
                                    str(tmp_path / "crops" / f"{shard}.parquet"))
    (tmp_path / "crops" / "notes.txt").write_text("not a shard")
    crops = writers.read_crops(str(tmp_path), columns=["label"])
    assert list(crops.columns) == ["label"] and len(crops) == 3
    assert list(writers.read_crops(str(tmp_path))["crop_id"]) == ["img1#0", "img1#1", "img2#0"]


def test_files_on_local_disk_and_memory(tmp_path: Path):
    (tmp_path / "sub").mkdir()
    for name in ("b.JPG", "a.jpg", "c.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub" / "d.jpg").write_bytes(b"x")
    assert files.list_files(str(tmp_path), (".jpg",)) == [str(tmp_path / "a.jpg"),
                                                           str(tmp_path / "b.JPG")]
    with pytest.raises(MaskbatchError, match="not a folder"):
        files.list_files(str(tmp_path / "a.jpg"), (".jpg",))
    assert files.is_dir(str(tmp_path / "sub")) and not files.is_dir(str(tmp_path / "a.jpg"))
    assert files.join("memory://bucket", "x", "y.jpg") == "memory://bucket/x/y.jpg"
    assert files.join("/data/", "y.jpg") == "/data/y.jpg" and files.join("/", "y") == "/y"
    assert files.join("s3://", "bucket", "y.jpg") == "s3://bucket/y.jpg"  # a bare protocol
    assert files.basename("s3://b/photos/") == "photos" and files.basename("/a/b.jpg") == "b.jpg"
    fs = fsspec.filesystem("memory")
    fs.pipe("/files-test/p.jpg", b"x")
    try:
        (url,) = files.list_files("memory://files-test", (".jpg",))
        assert url.startswith("memory://") and url.endswith("/files-test/p.jpg")
        with fsspec.open(url, "rb") as f:  # a worker can read it back
            assert f.read() == b"x"
        local, path = files.filesystem(str(tmp_path))
        assert files.full_path(local, path + "/a.jpg") == str(tmp_path / "a.jpg")
    finally:
        fs.rm("/files-test", recursive=True)
    # an unknown "protocol" is part of a local name (issue #14: local paths are never URLs)
    local, path = files.filesystem("nosuchproto://x")
    assert isinstance(local, LocalFileSystem) and path.endswith("/nosuchproto:/x")


# --------------------------------------------------------------------------- extraction, in-process


def test_extract_partition_crops_skips_and_fails_with_reasons(data: Path, tmp_path: Path):
    from maskbatch.datasets import DEFAULT_LABEL_MAP, FaceBox, ImageRecord
    from maskbatch.pipeline import decode_crop, extract_partition

    photo = str(data / "medical-mask" / "images" / "0003.jpg")
    boxes = (FaceBox(100, 50, 220, 200, MASK), FaceBox(-20, -10, 60, 90, NO_MASK),  # clipped
             FaceBox(10, 10, 50, 50, "hijab_niqab"), FaceBox(5000, 10, 5100, 50, MASK),
             FaceBox(0, 0, 0, 0, MASK, problem="box has no size"))
    cv2.imwrite(str(tmp_path / "whole.png"), np.full((60, 40, 3), 200, np.uint8))
    records = [ImageRecord(photo, "0003.jpg", "kaggle-json", boxes),
               ImageRecord(str(tmp_path / "absent.jpg"), "absent.jpg", "kaggle-json", boxes[:1]),
               ImageRecord(photo, "broken.jpg", "kaggle-json", problem="annotation is not JSON"),
               ImageRecord(str(tmp_path / "whole.png"), "whole.png", "crops",
                           whole_image_label="without_mask"),
               ImageRecord(str(tmp_path / "whole.png"), "other.png", "crops",
                           whole_image_label="selfies"),
               ImageRecord(photo, "nothing.jpg", "kaggle-json", boxes[2:4])]
    started = time.perf_counter()
    crops, manifest = extract_partition(records, DEFAULT_LABEL_MAP, 32)
    wall = time.perf_counter() - started
    assert 0 <= manifest["seconds"].sum() <= wall  # each row: the time spent on that image
    m = manifest.set_index("image")
    assert list(manifest["image"]) == [r.name for r in records]
    assert m.loc["0003.jpg", ["status", "n_boxes", "n_faces", "n_skipped_boxes"]].tolist() == \
        ["ok", 5, 2, 3]
    assert m.loc["0003.jpg", "skipped_detail"] == (
        "box 2: class 'hijab_niqab' is not a training label; box 3: empty or outside the image "
        "after clipping; box 4: box has no size")
    source = reading.load_image(photo)
    assert (m.loc["0003.jpg", "height"], m.loc["0003.jpg", "width"]) == source.shape[:2]
    assert m.loc["absent.jpg", ["status", "reason"]].tolist() == ["failed", "missing file"]
    assert m.loc["broken.jpg", ["status", "reason"]].tolist() == ["failed", "annotation is not JSON"]
    assert m.loc[["absent.jpg", "broken.jpg", "other.png"], "n_faces"].tolist() == [0, 0, 0]
    assert m.loc["whole.png", ["status", "n_faces"]].tolist() == ["ok", 1]
    assert m.loc["other.png", "status"] == "skipped" and "'selfies'" in m.loc["other.png", "reason"]
    assert m.loc["nothing.jpg", "status"] == "skipped"
    assert m.loc["nothing.jpg", "reason"].startswith("no usable box (box 0: class 'hijab_niqab'")
    assert list(crops["crop_id"]) == ["0003.jpg#0", "0003.jpg#1", "whole.png#0"]
    assert list(crops["label"]) == [MASK, NO_MASK, NO_MASK]
    assert crops.iloc[1][["x1", "y1", "x2", "y2"]].tolist() == [0, 0, 60, 90]
    first = decode_crop(crops.iloc[0]["image"])
    assert first.shape == (32, 32, 3)
    assert np.array_equal(first, pixels.resize(source[50:200, 100:220], 32))
    assert crops["pixel_hash"].nunique() == 3


def test_predict_partition_rows_share_out_the_time_spent(photos: Path, tmp_path: Path):
    from maskbatch.pipeline import predict_partition

    _, card = read_model()
    ref = ModelRef(card["onnx_sha256"], str(default_model_dir() / "model.onnx"))
    items = [("grey.jpg", str(photos / "grey.jpg")), ("absent.jpg", str(tmp_path / "absent.jpg"))]
    predict_partition(items, DetectorConfig(), ref)  # nets and model loaded once
    started = time.perf_counter()
    detections, manifest = predict_partition(items, DetectorConfig(), ref)
    wall = time.perf_counter() - started
    assert detections.empty and list(manifest["status"]) == ["ok", "failed"]
    assert list(manifest["n_faces"]) == [0, 0]
    assert (manifest["seconds"] >= 0).all() and manifest["seconds"].sum() <= wall + 1e-3


def test_every_environment_variable_is_read_in_one_place_and_documented() -> None:
    """maskbatch reads its environment through config.setting alone, and the README's table
    lists exactly the variables of config.ENVIRONMENT."""
    import re

    from maskbatch.config import ENVIRONMENT

    repo = Path(__file__).resolve().parents[1]
    readme = (repo / "README.md").read_text()
    table = readme[readme.index("### Environment variables"):]
    table = table[:table.index("\n\n", table.index("| variable"))]
    assert set(re.findall(r"^\| `(\w+)` \|", table, re.M)) == set(ENVIRONMENT)
    for path in (repo / "maskbatch").rglob("*.py"):
        text = path.read_text()
        for name in re.findall(r"\"((?:MASKBATCH|DASK)_[A-Z_]+)\"", text):
            assert name in ENVIRONMENT, f"{path}: {name} is not in config.ENVIRONMENT"
        if path.name != "config.py":
            assert "os.environ.get(" not in text.replace('os.environ.get("LD_PRELOAD")', ""), path

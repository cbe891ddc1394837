"""--save-crops and --blur on real photos and a real video, with the real detector and real Dask."""

from __future__ import annotations

import json
import os
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import copy_photos

from maskbatch.config import ClusterConfig, DetectorConfig, OutputOptions
from maskbatch.errors import MaskbatchError
from maskbatch.jobs import outdir
from maskbatch.jobs.predict import predict
from maskbatch.models import detect
from maskbatch.outputs import blurred_video, parts, privacy
from maskbatch.photos import reading, video

THREADS = ClusterConfig(workers=1, threads_per_worker=2, processes=False, partition_size=4,
                        progress=False)
PRIVACY_FILES = {"crops", "blurred", "crops.parquet"}


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, float)[:, None, :4], np.asarray(b, float)[None, :, :4]
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    area = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]) + (b[..., 2] - b[..., 0]) * (
        b[..., 3] - b[..., 1])
    return w * h / np.maximum(area - w * h, 1e-9)


def _found_again(faces: np.ndarray, image: np.ndarray) -> int:
    """Faces (left, top, right, bottom) the default detector finds again in `image`."""
    again = detect.detect_faces(image, DetectorConfig())
    if not len(faces) or not len(again):
        return 0
    return int((_iou(faces, again) >= 0.3).any(axis=1).sum())


def _boxes(rows: pd.DataFrame) -> np.ndarray:
    return rows[["x1", "x2", "y1", "y2"]].to_numpy(float)  # left, top, right, bottom


@pytest.fixture(scope="module")
def photos(data, tmp_path_factory):
    return copy_photos(data, tmp_path_factory.mktemp("photos"), medical_mask=10, voc_masks=2)


@pytest.fixture(scope="module")
def runs(photos, tmp_path_factory):
    """The same photos without the flags and with both."""
    root = tmp_path_factory.mktemp("runs")
    plain = predict(str(photos), str(root / "plain"), cluster_config=THREADS)
    private = predict(str(photos), str(root / "private"), cluster_config=THREADS,
                      save_crops=True, blur=True)
    return plain, private


# --------------------------------------------------------------------------- unit


def test_one_pass_split_gives_the_detectors_own_faces(data):
    """The boxes above the run's threshold out of a pass at --blur-confidence are exactly what
    detect_faces reports at the run's threshold (the answers of a --blur run do not change)."""
    for path in sorted((data / "medical-mask" / "images").iterdir())[:8]:
        image = reading.load_image(str(path))
        for mode in ("tuned", "yunet", "seed"):
            config = DetectorConfig(mode=mode)
            faces, below = detect.detect_faces_and_below(image, config, 0.05)
            np.testing.assert_array_equal(faces, detect.detect_faces(image, config))
            assert len(below) >= len(faces) and (below[:, 4] > 0.05).all()


def test_file_stems_fit_any_file_system_and_never_meet():
    names = ["0001.jpg", "same.jpg", "Same.png", "same", "a:b?.jpg", "CON.jpg", ".hidden.jpg",
             "x" * 300 + ".jpg", "é" * 200 + ".png", "dir/sub.jpg", "other\\sub.jpg", "trail. .jpg"]
    shared = privacy.shared_stems(names)
    stems = [privacy.file_stem(name, shared) for name in names]
    assert stems[0] == "0001"  # a plain name stays as it is
    assert len({s.casefold() for s in stems}) == len(names)  # also on case-blind file systems
    for stem in stems:
        assert len((stem + "-t9999.000-99.jpg.tmp-12345678").encode()) < 255
        assert not privacy.UNSAFE.search(stem) and not stem.startswith(".")
        assert stem.split(".")[0].upper() not in privacy.RESERVED and stem == stem.rstrip(". ")


def test_hidden_region_is_the_grown_box_in_flat_blocks(data):
    image = reading.load_image(str(data / "medical-mask" / "images" / "0001.jpg"))
    box = np.array([[100.0, 120.0, 180.0, 220.0, 0.9]])
    out = privacy.hide_faces(image, box)
    x0, y0, x1, y1 = privacy.grown(box[0], image.shape[1], image.shape[0])
    assert (x0, y0, x1, y1) == (80, 95, 200, 245)
    outside = np.ones(image.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert (out[outside] == image[outside]).all()
    region = out[y0:y1, x0:x1].reshape(-1, 3)
    assert len(np.unique(region, axis=0)) <= privacy.PIXEL_BLOCKS ** 2


def test_blur_confidence_is_checked_once():
    with pytest.raises(MaskbatchError, match="blur_confidence must be between 0 and 1"):
        OutputOptions(blur=True, blur_confidence=1.5)


# --------------------------------------------------------------------------- runs


def test_crops_join_detections_one_to_one(runs):
    _, private = runs
    out = private.out_dir
    detections = private.detections.assign(face=privacy.face_index(private.detections))
    crops = pd.read_parquet(os.path.join(out, "crops.parquet"))
    assert len(crops) == len(detections) > 20
    joined = detections.merge(crops, on=["name", "face"], validate="one_to_one",
                              suffixes=("", "_crop"))
    assert len(joined) == len(detections)
    assert (joined["classname"] == joined["classname_crop"]).all()
    assert (joined["crop_width"] == joined["y1"] - joined["x1"]).all()  # right - left
    assert (joined["crop_height"] == joined["y2"] - joined["x2"]).all()  # bottom - top
    for row in joined.itertuples():
        assert row.file.startswith(f"crops/{row.classname}/")
        picture = cv2.imread(os.path.join(out, row.file))
        assert picture.shape[:2] == (row.crop_height, row.crop_width)


def test_blurred_copies_hide_the_faces_from_the_detector(runs, photos):
    _, private = runs
    faces = refound = 0
    for name in sorted(os.listdir(photos)):
        copy = cv2.imread(os.path.join(private.out_dir, "blurred", privacy.file_stem(name) + ".jpg"))
        original = reading.load_image(str(photos / name))
        assert copy.shape == original.shape
        found = _boxes(private.detections[private.detections["name"] == name])
        faces += len(found)
        refound += _found_again(found, copy)
    assert faces > 20 and refound <= 0.05 * faces
    summary = json.loads(open(os.path.join(private.out_dir, "summary.json")).read())
    assert summary["faces_blurred"] >= faces and summary["crops"] == faces


def test_a_run_without_the_flags_writes_what_it_wrote_before(runs):
    plain, private = runs
    pd.testing.assert_frame_equal(plain.detections, private.detections)
    columns = ["name", "status", "reason", "n_faces", "width", "height"]
    pd.testing.assert_frame_equal(plain.manifest[columns], private.manifest[columns])
    listed = set(os.listdir(plain.out_dir))
    assert not listed & PRIVACY_FILES and set(os.listdir(private.out_dir)) == listed | PRIVACY_FILES
    run = json.loads(open(os.path.join(plain.out_dir, "run.json")).read())
    summary = json.loads(open(os.path.join(plain.out_dir, "summary.json")).read())
    assert "privacy" not in run and not {"crops", "faces_blurred"} & summary.keys()
    assert "Privacy outputs" not in open(os.path.join(plain.out_dir, "report.html")).read()
    page = open(os.path.join(private.out_dir, "report.html")).read()
    assert "Privacy outputs" in page and "href='blurred/" in page and "href='crops/" in page


def test_resume_redoes_only_the_uncommitted_parts_files(runs, photos, tmp_path):
    _, private = runs
    out = tmp_path / "out"
    shutil.copytree(private.out_dir, out)
    log = parts.CommitLog(str(out))
    entries = log.entries()
    last = max(entries, key=lambda e: e["first"])
    for path in (out / "parts").glob("commits-*"):  # the last part was never committed
        kept = [line for line in path.read_text().splitlines()
                if json.loads(line)["part"] != last["part"]]
        path.write_text("".join(line + "\n" for line in kept))
    crops = pd.read_parquet(out / "crops.parquet")
    names = sorted(os.listdir(photos))[last["first"]:last["first"] + last["count"]]
    redone = [out / "blurred" / f"{privacy.file_stem(n)}.jpg" for n in names]
    redone += [out / f for f in crops.loc[crops["name"].isin(names), "file"]]
    kept = sorted(set((out / "blurred").iterdir()) - set(redone))
    for path in redone:
        path.unlink()
    stamps = {path: path.stat().st_mtime_ns for path in kept}
    with pytest.raises(MaskbatchError, match="different privacy"):
        predict(str(photos), str(out), cluster_config=THREADS, resume=True, save_crops=True)
    again = predict(str(photos), str(out), cluster_config=THREADS, resume=True, save_crops=True,
                    blur=True)
    assert again.processed == last["count"] and all(path.exists() for path in redone)
    assert {path: path.stat().st_mtime_ns for path in kept} == stamps
    pd.testing.assert_frame_equal(pd.read_parquet(out / "crops.parquet"), crops)


def test_overwrite_removes_both_folders_and_nothing_else(runs, photos, tmp_path):
    _, private = runs
    out = tmp_path / "out"
    shutil.copytree(private.out_dir, out)
    (out / "notes.txt").write_text("mine")
    predict(str(photos), str(out), cluster_config=THREADS, overwrite=True)
    assert not set(os.listdir(out)) & PRIVACY_FILES and (out / "notes.txt").read_text() == "mine"


def test_extract_overwrite_removes_them_too(runs, tmp_path):
    """`extract --overwrite` replaces a folder through the same policy (jobs.outdir): a predict
    folder's crops/ (JPEGs, not extract's Parquet shards), blurred/ and crops.parquet go."""
    _, private = runs
    out = tmp_path / "out"
    shutil.copytree(private.out_dir, out)
    (out / "notes.txt").write_text("mine")
    outdir.prepare_out_dir(str(out), overwrite=True)
    assert os.listdir(out) == ["notes.txt"]


# --------------------------------------------------------------------------- video


def _make_video(path, photos: list, fps: float = 5.0, size=(640, 480)) -> None:
    """Each photo resized and held for 1 s."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for photo in photos:
        image = cv2.resize(cv2.imread(str(photo)), size, interpolation=cv2.INTER_AREA)
        for _ in range(int(fps)):
            writer.write(image)
    writer.release()


def test_a_video_gives_a_blurred_video_of_its_sampled_frames(data, tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    _make_video(folder / "clip.mp4", sorted((data / "medical-mask" / "images").iterdir())[:6])
    out = tmp_path / "out"
    result = predict(str(folder), str(out), cluster_config=THREADS, segment_seconds=2.5,
                     save_crops=True, blur=True)
    frames = pd.read_parquet(out / "frames.parquet")
    assert len(frames) == 6 and result.manifest["frames"].sum() == 6  # t = 0 ... 5 s, 3 segments
    data_bytes = (out / "blurred" / "clip.mp4").read_bytes()
    assert blurred_video.frame_count(data_bytes) == 6
    path = str(out / "blurred" / "clip.mp4")
    faces = refound = 0
    for index in range(6):
        image = video.read_frame(path, index)
        time_s = float(frames["time_s"].iloc[index])
        found = _boxes(result.detections[result.detections["name"] == f"clip.mp4#t={time_s:.3f}"])
        faces += len(found)
        refound += _found_again(found, image)
    assert faces > 10 and refound <= 0.05 * faces
    crops = pd.read_parquet(out / "crops.parquet")
    detections = result.detections.assign(face=privacy.face_index(result.detections))
    assert len(detections.merge(crops, on=["name", "face"], validate="one_to_one")) == len(crops)
    assert crops["file"].str.contains("/clip-t").all()

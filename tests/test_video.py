"""Videos as inputs: sniffing, segments, seeking, bad files, and `maskbatch predict` on real videos
made here from sample photos (each photo 640x480, held 1 s at 5 fps), on a real local cluster."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from maskbatch.config import ClusterConfig, DetectorConfig, InputLimits
from maskbatch.jobs.plan import item_weight as _weight
from maskbatch.jobs.predict import predict
from maskbatch.models.classifier import ModelRef, default_model_dir, read_model
from maskbatch.outputs.parts import CommitLog
from maskbatch.outputs.run_digest import Digest, gallery_jobs
from maskbatch.outputs.writers import DETECTION_COLUMNS, PREDICT_MANIFEST_COLUMNS
from maskbatch.photos import decoding, video
from maskbatch.pipeline import predict_partition
from maskbatch.runtime.window import contiguous_partitions
from maskbatch.tasks import predict_poisoned

FPS_VIDEO = 5.0
SIZE = (640, 480)
LOCAL2 = ClusterConfig(workers=2, partition_size=1, progress=False)
SEGMENT = 2.5  # seconds: a 6 s video is 3 segments, the 2nd and 3rd decoded after a seek


def make_video(path: Path, photos: list[Path], fourcc: str = "mp4v") -> Path:
    """Each photo resized to 640x480 and held for 1 s at 5 frames/s."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), FPS_VIDEO, SIZE)
    assert writer.isOpened(), path
    for photo in photos:
        image = cv2.resize(cv2.imread(str(photo)), SIZE, interpolation=cv2.INTER_AREA)
        for _ in range(int(FPS_VIDEO)):
            writer.write(image)
    writer.release()
    return path


def decoded_frames(path: Path) -> list[np.ndarray]:
    """Every frame of a video, read from the start without seeking."""
    capture, frames = cv2.VideoCapture(str(path)), []
    while True:
        ok, image = capture.read()
        if not ok:
            return frames
        frames.append(image)


@pytest.fixture(scope="module")
def model_ref() -> ModelRef:
    _, card = read_model()
    return ModelRef(card["onnx_sha256"], str(default_model_dir() / "model.onnx"))


@pytest.fixture(scope="module")
def videos(data, tmp_path_factory) -> dict[str, Path]:
    """clip.mp4 (mp4v) and walk.avi (MJPG), 6 s each, from 12 sample photos; a truncated copy of
    each, an empty .mp4 and a text file named .mp4."""
    photos = sorted((data / "medical-mask" / "images").iterdir())[:12]
    folder = tmp_path_factory.mktemp("videos")
    clip = make_video(folder / "clip.mp4", photos[:6])
    walk = make_video(folder / "walk.avi", photos[6:], "MJPG")
    cut = folder / "cut"
    cut.mkdir()
    (cut / "walk-cut.avi").write_bytes(walk.read_bytes()[:int(walk.stat().st_size * 0.55)])
    (cut / "clip-cut.mp4").write_bytes(clip.read_bytes()[:clip.stat().st_size // 2])
    (cut / "empty.mp4").write_bytes(b"")
    (cut / "notes.mp4").write_text("not a video at all\n")
    return {"folder": folder, "clip": clip, "walk": walk, "cut": cut}


# --------------------------------------------------------------------------- unit


def test_sniff_format_knows_video_containers(videos, tmp_path):
    assert decoding.sniff_format(videos["clip"].read_bytes()[:32]) == "mp4"
    assert decoding.sniff_format(videos["walk"].read_bytes()[:32]) == "avi"
    assert decoding.sniff_format(b"\x00\x00\x00\x14ftypqt  \x00\x00\x02\x00") == "mov"
    assert decoding.sniff_format(b"\x00\x00\x00\x18ftypM4V \x00\x00\x00\x00") == "mp4"
    assert decoding.sniff_format(b"\x1a\x45\xdf\xa3\x9fB\x86\x81\x01") == "mkv/webm"
    assert decoding.sniff_format(b"\x00\x00\x00\x18ftypheic") == "heic"  # still a photo
    webm = tmp_path / "a.webm"
    writer = cv2.VideoWriter(str(webm), cv2.VideoWriter_fourcc(*"VP80"), 5.0, (320, 240))
    for _ in range(3):
        writer.write(np.zeros((240, 320, 3), np.uint8))
    writer.release()
    assert decoding.sniff_format(webm.read_bytes()[:32]) == "mkv/webm"
    # listed by content too: a video without an extension is an input
    shutil.copy(videos["clip"], tmp_path / "noext")
    from maskbatch.photos.inputs import folder_inputs
    assert [n for n, _ in folder_inputs(str(tmp_path))] == ["a.webm", "noext"]


def test_segments_sample_each_time_once(videos):
    items = video.expand_videos([("clip.mp4", str(videos["clip"]))], fps=2.0, segment_seconds=SEGMENT)
    assert [n for n, _ in items] == ["clip.mp4@0000.000-0002.500", "clip.mp4@0002.500-0005.000",
                                     "clip.mp4@0005.000-0006.000"]
    segments = [s for _, s in items]
    assert segments[0].info == video.VideoInfo(30, 5.0, 640, 480)
    # t = 0, 0.5, 1 ... 5.5 s: frames 0, 2 (t=0.5 -> frame 2.5 shown from 0.4 s), 5, 7, ...
    sampled = [f for s in segments for f in video.sampled_frames(s)]
    assert sampled == [int(np.floor(k / 2 * 5 + 1e-6)) for k in range(12)]
    assert len(set(sampled)) == len(sampled)


def test_seeking_into_a_segment_gives_the_frames_of_a_read_from_the_start(videos):
    for path in (videos["clip"], videos["walk"]):
        frames = decoded_frames(path)
        for _, segment in video.expand_videos([(path.name, str(path))], 1.0, SEGMENT):
            got = list(video.read_segment(segment, InputLimits(), video.SegmentRead()))
            assert [i for i, _, _ in got] == video.sampled_frames(segment)
            for index, time_s, image in got:
                assert time_s == index / FPS_VIDEO
                assert np.array_equal(image, frames[index]), (path.name, index)


def test_decoded_frames_are_opencvs_frames_of_the_same_index(tmp_path):
    """A 25 fps mp4v video (a keyframe every 12 frames) with its frame number drawn on each frame:
    PyAV's frames, decoded from the keyframe before each wanted frame, are the frames OpenCV reads
    from the start, pixel for pixel, at sampling gaps below, at and above the keyframe interval."""
    path = tmp_path / "counter.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (320, 240))
    for i in range(300):
        image = np.full((240, 320, 3), (i * 7) % 256, np.uint8)
        cv2.putText(image, str(i), (20, 160), cv2.FONT_HERSHEY_SIMPLEX, 3, (0, 0, 255), 6)
        writer.write(image)
    writer.release()
    frames = decoded_frames(path)
    assert len(frames) == 300
    for wanted in ([0, 1, 2, 3], list(range(5, 300, 7)), list(range(11, 300, 25)),
                   [13, 24, 25, 36, 200, 299], [150]):
        got = list(video.decode_frames(str(path), wanted))
        assert [i for i, _ in got] == wanted
        for index, image in got:
            assert np.array_equal(image, frames[index]), index
    for fps, segment in ((1.0, 4.0), (2.0, 3.0), (5.0, 12.0)):
        for _, part in video.expand_videos([(path.name, str(path))], fps, segment):
            assert part.info == video.VideoInfo(300, 25.0, 320, 240)
            got = list(video.read_segment(part, InputLimits(), video.SegmentRead()))
            assert [i for i, _, _ in got] == video.sampled_frames(part)
            assert all(np.array_equal(image, frames[i]) for i, _, image in got)
    assert np.array_equal(video.read_frame(str(path), 123), frames[123])


def _stuck_decoder(path: str, wanted: list[int]):
    """A decoder that opens, then never hands back a frame."""
    time.sleep(30)
    yield from ()


def test_a_stalled_decoder_ends_the_segment_with_a_reason(videos):
    (_, segment), = video.expand_videos([("clip.mp4", str(videos["clip"]))], 1.0, 60.0)
    result = video.SegmentRead()
    started = time.monotonic()
    got = list(video.read_segment(segment, InputLimits(read_timeout=0.5), result,
                                  decoder=_stuck_decoder))
    assert got == [] and time.monotonic() - started < 5
    assert result.problem.startswith("gave up after 0.5 s decoding it (see --read-timeout)")


def test_bad_videos_get_rows_with_reasons_in_process(videos, model_ref):
    cut = videos["cut"]
    items = video.expand_videos(sorted((p.name, str(p)) for p in cut.iterdir()), 1.0, 60.0)
    items += video.expand_videos([("clip.mp4", str(videos["clip"]))], 1.0, 60.0)
    detections, manifest = predict_partition(items, DetectorConfig(), model_ref,
                                             InputLimits(max_pixels=200_000))
    rows = manifest.set_index("name")
    assert rows.loc["empty.mp4", "reason"] == "empty file"
    assert rows.loc["notes.mp4", "reason"] == "not a video (unrecognised file signature)"
    assert rows.loc["clip-cut.mp4", "reason"].startswith("cannot open it as a video")
    over = rows.loc["clip.mp4@0000.000-0006.000"]
    assert over["status"] == "failed" and over["reason"] == (
        "640 x 480 pixels, over the 0.2 megapixel limit per frame (see --max-pixels)")
    assert rows.loc["walk-cut.avi@0000.000-0006.000", "reason"].startswith("640 x 480 pixels")
    assert (manifest["status"] == "failed").sum() == 5 and detections.empty
    assert list(manifest.columns) == PREDICT_MANIFEST_COLUMNS


# --------------------------------------------------------------------------- the job


@pytest.fixture(scope="module")
def expected_pngs(videos, tmp_path_factory) -> Path:
    """The frames the job should sample at 1 frame/s (t = 0 ... 5 s), as PNG photos named after
    the frame: clip.mp4#t=3.000 -> clip.mp4_t3.png."""
    folder = tmp_path_factory.mktemp("pngs")
    for path in (videos["clip"], videos["walk"]):
        frames = decoded_frames(path)
        for t in range(6):
            cv2.imwrite(str(folder / f"{path.name}_t{t}.png"), frames[int(t * FPS_VIDEO)])
    return folder


@pytest.fixture(scope="module")
def runs(videos, expected_pngs, tmp_path_factory) -> dict[str, Path]:
    """Three runs on 2 worker processes: the intact videos; the intact videos beside the broken
    files; the expected frames as PNG photos."""
    root = tmp_path_factory.mktemp("runs")
    mixed = root / "mixed"
    mixed.mkdir()
    for p in [videos["clip"], videos["walk"], *videos["cut"].iterdir()]:
        shutil.copy(p, mixed / p.name)
    intact = root / "intact"
    intact.mkdir()
    for p in (videos["clip"], videos["walk"]):
        shutil.copy(p, intact / p.name)
    out = {}
    for name, folder in (("intact", intact), ("mixed", mixed), ("pngs", expected_pngs)):
        out[name] = root / f"out-{name}"
        predict(str(folder), str(out[name]), cluster_config=LOCAL2, segment_seconds=SEGMENT)
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, x2 - x1) * max(0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def test_sampled_frames_find_the_faces_of_the_same_frames_as_photos(runs):
    det = pd.read_parquet(runs["intact"] / "detections.parquet")
    assert list(det.columns) == DETECTION_COLUMNS
    photos = pd.read_parquet(runs["pngs"] / "detections.parquet")
    assert photos["frame"].isna().all() and photos["time_s"].isna().all()
    det = det.assign(photo=[f"{n.split('#')[0]}_t{round(t)}.png" for n, t in zip(det["name"],
                                                                                 det["time_s"])])
    assert sorted(set(det["photo"])) == sorted(set(photos["name"])) and len(photos) >= 12
    matched = same_label = 0
    for row in photos.itertuples():
        mine = det[det["photo"] == row.name]
        box = np.array([row.x1, row.x2, row.y1, row.y2], float)  # left, top, right, bottom
        ious = [_iou(box, np.array([r.x1, r.x2, r.y1, r.y2], float)) for r in mine.itertuples()]
        if ious and max(ious) >= 0.5:
            matched += 1
            same_label += mine.iloc[int(np.argmax(ious))]["classname"] == row.classname
    assert matched >= 0.9 * len(photos) and same_label >= 0.9 * len(photos)
    # names, frames and times: clip.mp4#t=3.000 is frame 15 at 3.0 s
    first = det[det["name"] == "clip.mp4#t=3.000"]
    assert len(first) and set(first["frame"]) == {15} and set(first["time_s"]) == {3.0}
    sub = pd.read_csv(runs["intact"] / "submission.csv")
    assert list(sub["name"]) == list(det["name"])


def test_segments_are_rows_of_images_parquet_and_frames_parquet_counts_faces(runs):
    manifest = pd.read_parquet(runs["intact"] / "images.parquet")
    assert list(manifest["name"]) == [f"{v}@{a}" for v in ("clip.mp4", "walk.avi")
                                      for a in ("0000.000-0002.500", "0002.500-0005.000",
                                                "0005.000-0006.000")]
    assert list(manifest["frames"]) == [3, 2, 1] * 2 and (manifest["status"] == "ok").all()
    assert list(manifest["duration_s"]) == [2.5, 2.5, 1.0] * 2
    frames = pd.read_parquet(runs["intact"] / "frames.parquet")
    assert len(frames) == 12 and list(frames["time_s"][:6]) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    det = pd.read_parquet(runs["intact"] / "detections.parquet")
    assert int(frames[["face_with_mask", "face_no_mask"]].sum().sum()) == len(det)
    per_segment = frames.groupby("segment", sort=False)[["face_with_mask", "face_no_mask"]].sum()
    assert (per_segment.sum(axis=1).to_numpy() == manifest["n_faces"].to_numpy()).all()
    # COCO: one image per sampled frame
    coco = json.loads((runs["intact"] / "images.coco.json").read_text())
    assert [i["file_name"] for i in coco["images"]][:2] == ["clip.mp4#t=0.000", "clip.mp4#t=1.000"]
    assert len(coco["images"]) == 12 and len(coco["annotations"]) == len(det)
    # photos keep null video columns
    photos = pd.read_parquet(runs["pngs"] / "images.parquet")
    assert photos["frames"].isna().all() and photos["duration_s"].isna().all()
    assert not (runs["pngs"] / "frames.parquet").exists()


def test_broken_videos_beside_intact_ones(runs):
    mixed = pd.read_parquet(runs["mixed"] / "images.parquet").set_index("name")
    assert mixed.loc["empty.mp4", "status"] == "failed"
    assert mixed.loc["empty.mp4", "reason"] == "empty file"
    assert mixed.loc["notes.mp4", "reason"] == "not a video (unrecognised file signature)"
    assert mixed.loc["clip-cut.mp4", "status"] == "failed"
    assert "cannot open it as a video" in mixed.loc["clip-cut.mp4", "reason"]
    cut = mixed[mixed.index.str.startswith("walk-cut.avi@")]
    # the header says 6 s; the frames before the cut are kept, and the row says where it stopped
    assert 0 < cut["frames"].sum() < 6
    stopped = cut[cut["reason"] != ""]
    assert stopped.iloc[0]["reason"].startswith("video ends early: read frames up to t=")
    assert stopped.iloc[0]["reason"].endswith(" s of 6.000 s")
    assert "Traceback" not in " ".join(mixed["reason"])
    summary = json.loads((runs["mixed"] / "summary.json").read_text())
    # read in part: ok with the reason; a later segment with no frame at all: failed
    part = stopped[stopped["status"] == "ok"]
    assert len(part) == 1 and summary["video_notes"] == dict(part["reason"].items())
    assert all(summary["failures"][n].startswith("video ends early: no frame read from t=")
               for n in stopped.index.difference(part.index))
    assert summary["video_frames"] == mixed["frames"].sum()
    # the intact videos' rows are the same as in a run without the broken files
    intact = pd.read_parquet(runs["intact"] / "detections.parquet")
    det = pd.read_parquet(runs["mixed"] / "detections.parquet")
    mine = det[det["name"].str.startswith(("clip.mp4#", "walk.avi#"))].reset_index(drop=True)
    pd.testing.assert_frame_equal(mine, intact)
    cut_faces = det[det["name"].str.startswith("walk-cut.avi#")]
    assert len(cut_faces) == cut["n_faces"].sum()
    keep = ["status", "reason", "n_faces", "width", "height", "frames", "duration_s"]
    pd.testing.assert_frame_equal(
        mixed.loc[mixed.index.str.startswith(("clip.mp4@", "walk.avi@")), keep],
        pd.read_parquet(runs["intact"] / "images.parquet").set_index("name")[keep])


def test_resume_after_a_killed_run_finishes_the_other_segments(videos, runs, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "maskbatch.cli", "predict", str(videos["folder"]), "--out",
           str(out), "--workers", "1", "--partition-size", "1", "--segment-seconds", "1",
           "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    job = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                           start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len(CommitLog(str(out)).entries()) < 2:
            assert job.poll() is None and time.monotonic() < deadline, "nothing committed"
            time.sleep(0.05)
    finally:
        os.killpg(job.pid, signal.SIGKILL)  # the driver and the local cluster it started
        job.wait(timeout=30)
    done = len(CommitLog(str(out)).entries())
    assert 2 <= done < 12 and not (out / "detections.parquet").exists()
    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300,
                             env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processed_now"] == 12 - done and summary["images"] == 12
    manifest = pd.read_parquet(out / "images.parquet")
    assert manifest["name"].is_unique and list(manifest["frames"]) == [1] * 12
    # the same faces as the run cut into 2.5 s segments
    det = pd.read_parquet(out / "detections.parquet")
    pd.testing.assert_frame_equal(det, pd.read_parquet(runs["intact"] / "detections.parquet"))


def test_report_plots_faces_over_time_and_draws_frame_faces(videos, runs):
    page = (runs["intact"] / "report.html").read_text()
    assert "Videos: faces over time (2)" in page
    digest = Digest.of_out_dir(str(runs["intact"]))
    assert digest.first.empty and digest.crowded.empty  # segments are no pictures to show
    framed = digest.uncertain[digest.uncertain["frame"].notna()]
    assert len(framed) and set(framed["path"]) <= {str(runs["intact"].parent / "intact" / n)
                                                   for n in ("clip.mp4", "walk.avi")}
    jobs = gallery_jobs(digest)[1]
    pictures = [fn(*args) for fn, args in jobs]
    assert all(p[:2] == b"\xff\xd8" for p in pictures)  # every face drawn from its frame


def test_a_segment_that_kills_its_workers_becomes_a_failed_row(videos, tmp_path):
    (name, segment), = video.expand_videos([("clip.mp4", str(videos["clip"]))], 1.0, 60.0)
    entry = predict_poisoned(str(tmp_path), [(0, (name, segment))], 2)
    manifest = pd.read_parquet(tmp_path / "parts" / f"{entry['part']}.images.parquet")
    assert manifest.iloc[0][["name", "path", "status", "frames", "duration_s"]].tolist() == [
        name, str(videos["clip"]), "failed", 0, 6.0]
    assert manifest.iloc[0]["reason"] == "the worker died while reading it (2 attempts)"


def test_a_segment_weighs_the_frames_it_samples_when_partitions_are_cut(videos):
    """The default partition size counts photos; a 60 s segment at 1 frame/s counts 60, so a
    long video's segments land in different tasks instead of one task of 16 segments."""
    photos = [(f"p{i}.jpg", f"/x/p{i}.jpg") for i in range(3)]
    (name, segment), = video.expand_videos([("clip.mp4", str(videos["clip"]))], 5.0, 60.0)
    assert _weight(segment) == 30 and _weight("/x/p.jpg") == 1
    items = list(enumerate(photos + [(name, segment)] * 3 + photos))
    cut = contiguous_partitions(items, 32, weight=lambda item: _weight(item[1]))
    assert [[i for i, _ in part] for part in cut] == [[0, 1, 2], [3], [4], [5, 6, 7], [8]]
    # photos alone: as before
    assert [len(p) for p in contiguous_partitions(list(enumerate(photos * 3)), 4,
                                                  weight=lambda item: _weight(item[1]))] == [4, 4, 1]

"""How to hide a face so that the detector no longer finds it: blur vs pixelation, strength, margin,
and which boxes (--blur-confidence), measured with the default detector on blurred photos.

    python benchmarks/bench_blur.py                   # the choice: medical-mask train photos
    python benchmarks/bench_blur.py --limit 60        # fewer photos
    python benchmarks/bench_blur.py --done-when       # the issue's check: 100 photos through predict --blur
    python benchmarks/bench_blur.py --video           # what --blur costs on a 720p video
    python benchmarks/bench_blur.py --encoder         # the blurred video's x264 preset and crf

Each photo is detected once (default mode, every box above 0.02 kept, split at the thresholds);
each way of hiding is applied to the boxes above --blur-confidence's default, and the default
detector runs again on the hidden copy. "re-found" is the share of the faces it found in the
original (at its threshold) that it finds again in the copy (IoU >= 0.3): the issue's measure.
"labelled found" is the same for the labelled faces of train.csv, "boxes" the detector's boxes in
the copies per box in the originals (new boxes count: a box on a hidden face is a leak), "hidden"
the share of labelled faces with at least half their area inside hidden regions.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir, table  # noqa: E402

from maskbatch.config import BLUR_CONFIDENCE, ClusterConfig, DetectorConfig  # noqa: E402
from maskbatch.datasets import truth_table  # noqa: E402
from maskbatch.datasets.splits import split_names  # noqa: E402
from maskbatch.models import detect  # noqa: E402
from maskbatch.outputs import privacy  # noqa: E402
from maskbatch.photos import reading  # noqa: E402

FLOOR = 0.02  # the lowest --blur-confidence tried


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of `a` (N x 4+) with every box of `b` (M x 4+): N x M."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    a, b = np.asarray(a, float)[:, None, :4], np.asarray(b, float)[None, :, :4]
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = w * h
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


def found_again(faces: np.ndarray, boxes: np.ndarray) -> int:
    return int((iou(faces, boxes) >= 0.3).any(axis=1).sum()) if len(faces) else 0


def gaussian(region: np.ndarray, strength: float) -> np.ndarray:
    side = max(region.shape[:2])
    return cv2.GaussianBlur(region, (0, 0), max(strength * side, 0.5))


def hide(image: np.ndarray, boxes: np.ndarray, how: tuple[str, float], margin: float
         ) -> np.ndarray:
    kind, strength = how
    if kind == "pixelate":
        return privacy.hide_faces(image, boxes, margin, int(strength))
    out = image.copy()
    height, width = out.shape[:2]
    for box in boxes:
        x0, y0, x1, y1 = privacy.grown(box[:4], width, height, margin)
        if x1 > x0 and y1 > y0:
            region = out[y0:y1, x0:x1]
            out[y0:y1, x0:x1] = gaussian(region, strength) if kind == "gaussian" else 0
    return out


def hidden_share(truth: np.ndarray, boxes: np.ndarray, shape: tuple, margin: float) -> int:
    """Labelled faces with at least half their area inside the hidden regions."""
    mask = np.zeros(shape[:2], bool)
    for box in boxes:
        x0, y0, x1, y1 = privacy.grown(box[:4], shape[1], shape[0], margin)
        mask[y0:y1, x0:x1] = True
    count = 0
    for x0, y0, x1, y1 in truth.astype(int):
        area = mask[max(y0, 0):y1, max(x0, 0):x1]
        count += bool(area.size and area.mean() >= 0.5)
    return count


def load(limit: int | None, part: str = "train") -> list[tuple[np.ndarray, np.ndarray]]:
    root = data_dir() / "medical-mask"
    truth = truth_table(str(root))
    names = sorted(set(split_names("medical-mask", part)) & set(truth["name"]))[:limit]
    out = []
    for name in names:
        rows = truth[truth["name"] == name]
        boxes = rows[["x1", "y1", "x2", "y2"]].to_numpy(float)
        out.append((reading.load_image(str(root / "images" / name)), boxes))
    return out


def measure(photos: list, ways: list[tuple[str, float, float, float]]) -> list[list]:
    """One row per (kind, strength, margin, blur confidence)."""
    config = DetectorConfig()
    first = [detect.detect_faces_and_below(image, config, FLOOR) for image, _ in photos]
    rows = []
    for kind, strength, margin, floor in ways:
        faces = refound = labelled = labelled_found = boxes_before = boxes_after = hidden = 0
        hidden_boxes, seconds = 0, 0.0
        for (image, truth), (found, everything) in zip(photos, first):
            chosen = everything[everything[:, 4] > floor]
            started = time.perf_counter()
            copy = hide(image, chosen, (kind, strength), margin)
            seconds += time.perf_counter() - started
            again = detect.detect_faces(copy, config)
            faces += len(found)
            refound += found_again(found, again)
            labelled += len(truth)
            labelled_found += found_again(truth, again)
            boxes_before += len(found)
            boxes_after += len(again)
            hidden += hidden_share(truth, chosen, image.shape, margin)
            hidden_boxes += len(chosen)
        rows.append([kind, strength, margin, floor, faces, refound / max(faces, 1),
                     labelled_found / max(labelled, 1), boxes_after / max(boxes_before, 1),
                     hidden / max(labelled, 1), hidden_boxes / len(photos),
                     1000 * seconds / len(photos)])
        print("  done:", rows[-1], file=sys.stderr, flush=True)
    return rows


HEADERS = ["hiding", "strength", "margin", "blur confidence", "faces found", "re-found",
           "labelled found", "boxes after/before", "labelled hidden", "boxes hidden / photo",
           "hide ms / photo"]


def choose(limit: int | None) -> None:
    photos = load(limit)
    default = BLUR_CONFIDENCE
    ways = [("pixelate", b, 0.25, default) for b in (3, 4, 5, 6, 8, 12)]
    ways += [("gaussian", s, 0.25, default) for s in (0.1, 0.2)]
    ways += [("black", 0.0, 0.25, default)]
    print(f"medical-mask train photos: {len(photos)}; default detector "
          f"({DetectorConfig().mode}); hidden: every box above {default}")
    print(table(HEADERS, measure(photos, ways)))
    kind, blocks = "pixelate", privacy.PIXEL_BLOCKS
    print(f"\nmargin, {kind} {blocks}")
    print(table(HEADERS, measure(photos, [(kind, blocks, m, default) for m in (0.0, 0.1, 0.25, 0.4)])))
    print(f"\nblur confidence, {kind} {blocks}, margin {privacy.BLUR_MARGIN}")
    print(table(HEADERS, measure(photos, [(kind, blocks, privacy.BLUR_MARGIN, f)
                                          for f in (0.3, 0.2, 0.1, 0.05, 0.02)])))


def done_when(count: int = 100) -> None:
    """predict --blur --save-crops on `count` medical-mask photos (the val split's first: photos
    the choice above never saw), beside a run without the flags; then the default detector on the
    blurred copies against the run's own detections."""
    from maskbatch.jobs.predict import predict

    root = data_dir() / "medical-mask"
    names = (split_names("medical-mask", "val") + split_names("medical-mask", "train"))[:count]
    cluster = ClusterConfig(workers=1, threads_per_worker=1, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        photos.mkdir()
        for name in names:
            (photos / name).symlink_to(root / "images" / name)
        plain = predict(str(photos), str(Path(tmp) / "plain"), cluster_config=cluster)
        out = Path(tmp) / "out"
        result = predict(str(photos), str(out), blur=True, save_crops=True, cluster_config=cluster)
        summary = json.loads((out / "summary.json").read_text())
        faces = refound = boxes_after = 0
        for name in names:
            found = result.detections[result.detections["name"] == name]
            copy = reading.load_image(str(out / "blurred" / f"{privacy.file_stem(name)}.jpg"))
            again = detect.detect_faces(copy, DetectorConfig())
            faces += len(found)
            refound += found_again(found[["x1", "x2", "y1", "y2"]].to_numpy(float), again)
            boxes_after += len(again)
        same = plain.detections.equals(result.detections)
    print(f"predict --blur --save-crops on {len(names)} medical-mask val photos: the default "
          f"detector found {faces} faces in the originals and {refound} of them again in the "
          f"blurred copies ({100 * refound / max(faces, 1):.1f} %); {boxes_after} boxes in all "
          f"in the copies; {summary['faces_blurred']} boxes blurred, {summary['crops']} crops; "
          f"detections equal to the run without the flags: {same}; processing "
          f"{plain.seconds:.1f} s without the flags, {result.seconds:.1f} s with them (one "
          "worker)")


def video_cost(seconds: int = 120) -> None:
    """predict on a made 720p video (25 fps, 1 frame/s sampled, 60 s segments), without the flags
    and with --blur --save-crops, one worker each, twice in turns: processing seconds."""
    from bench_video import make_video

    from maskbatch.jobs.predict import predict
    from maskbatch.outputs import blurred_video

    cluster = ClusterConfig(workers=1, threads_per_worker=1, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "clip"
        folder.mkdir()
        make_video(folder / "clip.mp4", seconds, (1280, 720))
        times: dict[str, list[float]] = {"plain": [], "--blur --save-crops": []}
        for turn in range(2):
            for label, flags in (("plain", {}), ("--blur --save-crops", {"blur": True,
                                                                       "save_crops": True})):
                out = Path(tmp) / f"{label[:5]}{turn}"
                result = predict(str(folder), str(out), cluster_config=cluster, **flags)
                times[label].append(result.seconds)
        frames = blurred_video.frame_count((out / "blurred" / "clip.mp4").read_bytes())
        size = (out / "blurred" / "clip.mp4").stat().st_size
    print(f"{seconds} s of 1280x720 video, 1 frame/s sampled: processing "
          + "; ".join(f"{k} {', '.join(f'{t:.1f}' for t in v)} s" for k, v in times.items())
          + f"; blurred video: {frames} frames, {size / 1e6:.2f} MB")


def encoder_cost(count: int = 60) -> None:
    """x264 presets and crf on `count` medical-mask photos resized to 1280x720 as the frames of
    one piece (one thread), beside JPEG at the copies' quality."""
    from maskbatch.outputs import blurred_video

    photos = sorted((data_dir() / "medical-mask" / "images").iterdir())[:count]
    frames = [cv2.resize(cv2.imread(str(p)), (1280, 720)) for p in photos]
    started = time.perf_counter()
    size = sum(len(privacy.jpeg(f)) for f in frames)
    rows = [["JPEG", privacy.JPEG_QUALITY, 1000 * (time.perf_counter() - started) / count,
             size / count / 1e3]]
    for preset in ("ultrafast", "veryfast", "medium"):
        for crf in ("20", "23"):
            piece = blurred_video.VideoPiece(1.0, 1280, 720)
            piece.stream.codec_context.options = {"crf": crf, "preset": preset}
            started = time.perf_counter()
            for k, frame in enumerate(frames):
                piece.add(frame, k)
            data = piece.finish()
            rows.append([preset, crf, 1000 * (time.perf_counter() - started) / count,
                         len(data) / count / 1e3])
    print(table(["x264 preset", "crf (JPEG: quality)", "ms / frame", "kB / frame"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--done-when", action="store_true")
    parser.add_argument("--video", action="store_true", help="what --blur costs on a video")
    parser.add_argument("--encoder", action="store_true", help="x264 presets and crf")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    if args.done_when:
        done_when()
    elif args.video:
        video_cost()
    elif args.encoder:
        encoder_cost()
    else:
        choose(args.limit)


if __name__ == "__main__":
    main()

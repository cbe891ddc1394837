"""Speed of `maskbatch predict` on a video: sampled frames per second on one core, and one long
video on 1 vs 2 worker processes (its segments spread over them).

    python benchmarks/bench_video.py                      # 120 s of 640x480 at 25 fps, 2 frames/s
    python benchmarks/bench_video.py --seconds 30 --fps 1 --segment-seconds 10
    python benchmarks/bench_video.py --seconds 600 --size 1280x720 --fps 1 --segment-seconds 60

The video is made here from sample photos (each held 2 s, mp4v). Rows:
  decode      read_segment on the whole video: seek + decode the sampled frames (no detection)
  one core    predict_partition on the whole video as one segment, in this process
  as JPEGs    the same sampled frames saved as JPEG photos (quality 95), predict_partition on them
              in this process: what the video's decoding costs against decoding photos
  segments    predict_partition on each --segment-seconds segment in turn, in this process, run
              just before the worker rows: what 1 worker is to be compared with (same items)
  N workers   `predict` on a LocalCluster of N single-threaded worker processes, the video cut
              into --segment-seconds segments (seconds: processing time, first task to last
              commit; CPU: the worker processes' whole lives, start-up and model loading included;
              in tasks: the sum of images.parquet's per-segment seconds, the work itself)
CPU is this process's (or the workers') user + system time; CPU / wall above 1 means more than
one core was busy.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir, table  # noqa: E402

from maskbatch.config import ClusterConfig, DetectorConfig, InputLimits  # noqa: E402
from maskbatch.jobs.predict import predict  # noqa: E402
from maskbatch.models.classifier import ModelRef, default_model_dir, read_model  # noqa: E402
from maskbatch.photos import video  # noqa: E402
from maskbatch.pipeline import predict_partition  # noqa: E402

VIDEO_FPS = 25


def children_cpu() -> float:
    """CPU seconds of the child processes that have ended and been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def row(run: str, frames: int, seconds: float, cpu: float, in_tasks: float | None = None
        ) -> list[object]:
    return [run, frames, f"{seconds:.2f}", f"{cpu:.2f}", f"{frames / seconds:.1f}",
            f"{cpu / seconds:.2f}", "" if in_tasks is None else f"{in_tasks:.2f}"]


def make_video(path: Path, seconds: int, size: tuple[int, int], hold: int = 2) -> Path:
    photos = sorted((data_dir() / "medical-mask" / "images").iterdir())
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), VIDEO_FPS, size)
    for k in range(seconds // hold):
        image = cv2.resize(cv2.imread(str(photos[k % len(photos)])), size)
        for _ in range(hold * VIDEO_FPS):
            writer.write(image)
    writer.release()
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=120)
    parser.add_argument("--fps", type=float, default=2.0)
    parser.add_argument("--segment-seconds", type=float, default=15.0)
    parser.add_argument("--size", default="640x480", help="frame size WxH")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "videos"
        folder.mkdir()
        clip = make_video(folder / "long.mp4", args.seconds, size)
        (name, whole), = video.expand_videos([(clip.name, str(clip))], args.fps, 1e9)
        frames = len(video.sampled_frames(whole))
        rows = []

        started, cpu = time.perf_counter(), time.process_time()
        decoded = sum(1 for _ in video.read_segment(whole, InputLimits(), video.SegmentRead()))
        rows.append(row("decode", decoded, time.perf_counter() - started,
                        time.process_time() - cpu))

        _, card = read_model()
        ref = ModelRef(card["onnx_sha256"], str(default_model_dir() / "model.onnx"))
        predict_partition([(name, whole)], DetectorConfig(), ref)  # models loaded, warm
        started, cpu = time.perf_counter(), time.process_time()
        det, manifest = predict_partition([(name, whole)], DetectorConfig(), ref)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        assert int(manifest["frames"].iloc[0]) == frames
        rows.append(row("one core (in process)", frames, seconds, cpu))

        jpegs = Path(tmp) / "jpegs"
        jpegs.mkdir()
        items = []
        for index, _, image in video.read_segment(whole, InputLimits(), video.SegmentRead()):
            path = jpegs / f"frame-{index:06d}.jpg"
            cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
            items.append((path.name, str(path)))
        started, cpu_j = time.perf_counter(), time.process_time()
        as_photos, _ = predict_partition(items, DetectorConfig(), ref)
        photo_seconds, cpu_j = time.perf_counter() - started, time.process_time() - cpu_j
        rows.append(row("the same frames as JPEG photos (in process)", len(items), photo_seconds,
                        cpu_j))
        extra = (cpu / frames) / (cpu_j / len(items)) - 1

        segments = video.expand_videos([(clip.name, str(clip))], args.fps, args.segment_seconds)
        started, cpu_s = time.perf_counter(), time.process_time()
        for item in segments:
            predict_partition([item], DetectorConfig(), ref)
        rows.append(row(f"{len(segments)} segments one by one (in process)", frames,
                        time.perf_counter() - started, time.process_time() - cpu_s))
        rates = {}
        for workers in (1, 2):
            cpu_w = children_cpu()
            result = predict(str(folder), str(Path(tmp) / f"out-{workers}"), fps=args.fps,
                             segment_seconds=args.segment_seconds,
                             cluster_config=ClusterConfig(workers=workers, partition_size=1,
                                                          progress=False))
            assert len(result.detections) == len(det)
            rows.append(row(f"{workers} worker(s), {result.processed} segments", frames,
                            result.seconds, children_cpu() - cpu_w,
                            float(result.manifest["seconds"].sum())))
            rates[workers] = frames / result.seconds
    print(f"{args.seconds} s of {size[0]}x{size[1]} mp4v at {VIDEO_FPS} fps, sampled at "
          f"{args.fps:g} frames/s ({frames} frames), segments of {args.segment_seconds:g} s")
    print(table(["run", "frames", "seconds", "CPU s", "frames/s", "CPU / wall", "in tasks s"],
                rows))
    speedup = rates[2] / rates[1]
    print(f"a frame from the video costs {extra:+.1%} CPU against the same frame as a JPEG photo; "
          f"2 workers run {speedup:.2f}x the frames/s of 1")


if __name__ == "__main__":
    main()

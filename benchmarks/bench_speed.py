"""The whole job's speed per core against OpenCV's bare detector pass (issue 37's ratio).

    python benchmarks/bench_speed.py                      # 762 medical-mask photos, 3 rounds
    python benchmarks/bench_speed.py --rounds 5 --workers 2 --job-arg=--mode=yunet

Each round runs, one after the other on the same photos:
- reference: a bare loop in this process, one thread: cv2.imread + one pass of the pretrained
  YuNet (opencv_zoo face_detection_yunet_2023mar_int8bq.onnx) through cv2.FaceDetectorYN at about
  440k pixels (at most 2x enlarged), nothing else;
- job: `maskbatch predict IMAGES --out TMP --workers N --overwrite` as a user runs it (a fresh
  process and local cluster), its images/s from summary.json (processing time: first task
  submitted to last partition committed), divided by the N workers = images/s per core.
The ratio is job per core / reference, per round; the table gives each round and the medians.
Run it on a quiet machine: the job's N workers and its driver share the machine's cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import yunet_cv2  # noqa: E402  (cv2.FaceDetectorYN over an ONNX file)
from common import data_dir, table  # noqa: E402

from maskbatch.models import detect, yunet  # noqa: E402

REFERENCE_AREA = 440_000
REFERENCE_THRESHOLD = 0.65  # the yunet mode's threshold (the loop's cost barely depends on it)
MAX_UPSCALE = 2.0


def reference_rate(paths: list[Path]) -> float:
    """images/s of cv2.imread + one cv2.FaceDetectorYN pass (pretrained int8bq, 440k), 1 thread."""
    cv2.setNumThreads(1)
    net = yunet_cv2.create(yunet.locate_model())
    started = time.perf_counter()
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        height, width = image.shape[:2]
        size = detect.pass_size(width, height, REFERENCE_AREA, MAX_UPSCALE)
        yunet_cv2.forward(net, image, size, REFERENCE_THRESHOLD)
    return len(paths) / (time.perf_counter() - started)


def job_rate(images: Path, workers: int, extra: list[str]) -> tuple[float, dict]:
    """(images/s per core, summary.json) of one `maskbatch predict` run in a fresh process."""
    with tempfile.TemporaryDirectory(prefix="mb-speed-") as out:
        command = [str(Path(sys.executable).with_name("maskbatch")), "predict", str(images),
                   "--out", out, "--workers", str(workers), "--overwrite", "--previews", "0",
                   *extra]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        summary = json.loads((Path(out) / "summary.json").read_text())
    return summary["images_per_second"] / workers, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=None,
                        help="photo folder (default: the medical-mask sample's images)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--job-arg", action="append", default=[],
                        help="one more argument for maskbatch predict (repeatable)")
    args = parser.parse_args()
    images = args.images or data_dir() / "medical-mask" / "images"
    paths = sorted(p for p in images.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    reference_rate(paths[:20])  # warm the page cache and the net
    rows, refs, jobs = [], [], []
    for round_ in range(1, args.rounds + 1):
        ref = reference_rate(paths)
        job, summary = job_rate(images, args.workers, args.job_arg)
        refs.append(ref)
        jobs.append(job)
        rows.append([round_, ref, job, summary["images_per_second"], summary["faces"],
                     round(job / ref, 3)])
        print(f"round {round_}: reference {ref:.1f} img/s, job {job:.1f} img/s per core, "
              f"ratio {job / ref:.3f}", flush=True)
    ratios = [row[-1] for row in rows]
    rows.append(["median", statistics.median(refs), statistics.median(jobs), "", "",
                 round(statistics.median(ratios), 3)])
    print(f"\n{len(paths)} photos of {images}, {args.workers} workers, job args {args.job_arg}\n")
    print(table(["round", "reference img/s (1 core)", "job img/s per core", "job img/s",
                 "faces", "job per core / reference"], rows))


if __name__ == "__main__":
    main()

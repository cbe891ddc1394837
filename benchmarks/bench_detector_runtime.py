"""YuNet in cv2.FaceDetectorYN against the same net in onnxruntime: ms per photo, both weight sets.

    python benchmarks/bench_detector_runtime.py [--medical 150] [--voc 100] [--rounds 1]

Photos: every k-th photo of medical-mask and voc-masks (name order) so that `--medical` and `--voc`
of them are used, each decoded and resized to its mode's pass size (detect.pass_size at 440k
pixels, at most 2x enlarged) before the clock starts. One thread everywhere: cv2.setNumThreads(1),
onnxruntime intra_op 1 / inter_op 1, sequential. Per photo and weight set, timed:

- "cv2": maskbatch.yunet.forward on a cv2.FaceDetectorYN (setInputSize, pad, blob, forward,
  decode, NMS, the relative rows): what the `tuned` and `yunet` modes run today;
- "ort fwd": onnxruntime's session.run alone on the padded blob (the net, nothing else);
- "ort all": maskbatch.models.yunet_onnx.YunetOnnx.forward (pad + blob, session.run, numpy decode,
  cv2.dnn.NMSBoxes, the relative rows): the drop-in.

The three take turns on each photo, in an order that rotates from photo to photo, so that the shared
machine's noise hits them alike. Wall ms (perf_counter) and CPU ms of the calling thread
(time.thread_time: with one thread all the work runs there) are both given, median and mean over
the photos; "ratio" is cv2 over ort all. The last columns check parity on the way: faces found by
each, the photos where the counts differ, and over the photos the largest 1 - IoU and score
difference between a cv2 face and its best-overlapping onnxruntime face.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from common import data_dir, table  # noqa: E402

from maskbatch.evaluation.matching import iou_matrix  # noqa: E402
from maskbatch.models import detect, yunet, yunet_onnx  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import yunet_cv2  # noqa: E402  (the reference: cv2.FaceDetectorYN)

THRESHOLDS = {"tuned": detect.TUNED_THRESHOLD, "yunet": detect.MODES["yunet"].confidence}
RUNS = ("cv2", "ort fwd", "ort all")


def spread(paths: list[Path], n: int) -> list[Path]:
    step = max(1, len(paths) // n)
    return paths[::step][:n]


def clock(fn: Callable[..., object], *args: object) -> tuple[object, float, float]:
    """fn(*args), its wall seconds and the CPU seconds of this thread."""
    wall, cpu = time.perf_counter(), time.thread_time()
    value = fn(*args)
    return value, time.perf_counter() - wall, time.thread_time() - cpu


def parity(expected: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    """(largest 1 - IoU, largest score difference) of each cv2 face and its best onnxruntime one
    (same count assumed; (1, 1) when the counts differ)."""
    if len(expected) != len(got):
        return 1.0, 1.0
    if len(expected) == 0:
        return 0.0, 0.0
    iou = iou_matrix(expected[:, :4].astype(np.float64), got[:, :4].astype(np.float64))
    best = iou.argmax(axis=1)
    return (float(1 - iou[np.arange(len(best)), best].min()),
            float(np.abs(expected[:, 4] - got[best, 4]).max()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--medical", type=int, default=150)
    parser.add_argument("--voc", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=1, help="passes over the photos")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    data = data_dir()
    sets = {"medical-mask": spread(sorted((data / "medical-mask" / "images").iterdir()), args.medical),
            "voc-masks": spread(sorted((data / "voc-masks" / "images").iterdir()), args.voc)}
    nets = {}
    for net in THRESHOLDS:
        path = yunet.model_path(net)
        nets[net] = (yunet_cv2.create(path), yunet_onnx.YunetOnnx(path.read_bytes(), threads=1))
    rows = []
    turn = 0
    for name, paths in sets.items():
        photos = []
        for path in paths:
            image = cv2.imread(str(path))
            size = detect.pass_size(image.shape[1], image.shape[0], 440_000, 2.0)
            photos.append((cv2.resize(image, size), size))
        for net, threshold in THRESHOLDS.items():
            cv_net, ort_net = nets[net]
            for resized, size in photos[:3]:  # warm-up, untimed
                yunet_cv2.forward(cv_net, resized, size, threshold)
                ort_net.forward(resized, size, threshold)
            wall = {run: [] for run in RUNS}
            cpu = {run: [] for run in RUNS}
            faces = {"cv2": 0, "ort all": 0}
            differ, deficit, score_diff = 0, 0.0, 0.0
            for _ in range(args.rounds):
                for resized, size in photos:
                    blob = yunet_onnx.make_blob(resized)
                    calls = {"cv2": (yunet_cv2.forward, cv_net, resized, size, threshold),
                             "ort fwd": (ort_net.run, blob),
                             "ort all": (ort_net.forward, resized, size, threshold)}
                    order = RUNS[turn % 3:] + RUNS[:turn % 3]
                    turn += 1
                    found = {}
                    for run in order:
                        found[run], seconds, cpu_seconds = clock(*calls[run])
                        wall[run].append(seconds)
                        cpu[run].append(cpu_seconds)
                    faces["cv2"] += len(found["cv2"])
                    faces["ort all"] += len(found["ort all"])
                    differ += len(found["cv2"]) != len(found["ort all"])
                    d_iou, d_score = parity(found["cv2"], found["ort all"])
                    deficit, score_diff = max(deficit, d_iou), max(score_diff, d_score)
            med = {run: 1000 * statistics.median(wall[run]) for run in RUNS}
            mean = {run: 1000 * statistics.fmean(wall[run]) for run in RUNS}
            cpu_med = {run: 1000 * statistics.median(cpu[run]) for run in RUNS}
            rows.append([name, net, len(photos) * args.rounds,
                         med["cv2"], mean["cv2"], med["ort fwd"], mean["ort fwd"],
                         med["ort all"], mean["ort all"], med["cv2"] / med["ort all"],
                         cpu_med["cv2"], cpu_med["ort fwd"], cpu_med["ort all"],
                         cpu_med["cv2"] / cpu_med["ort all"],
                         faces["cv2"], faces["ort all"], differ, f"{deficit:.1e}", f"{score_diff:.1e}"])
    print(f"YuNet, one thread, ms per photo at the modes' pass size (440k px), {args.rounds} "
          f"round(s); onnxruntime {yunet_onnx.ort.__version__}, OpenCV {cv2.__version__}")
    print(table(["set", "net", "photos", "cv2 med", "cv2 mean", "ort fwd med", "ort fwd mean",
                 "ort all med", "ort all mean", "ratio (med)", "cv2 CPU med", "ort fwd CPU med",
                 "ort all CPU med", "ratio (CPU)", "faces cv2", "faces ort", "count differs", "max 1-IoU",
                 "max score diff"],
                rows))
    print("pad + blob + numpy decode + NMS (ort all - ort fwd, CPU medians): "
          + ", ".join(f"{r[0]} {r[1]} {r[12] - r[11]:.2f} ms" for r in rows))


if __name__ == "__main__":
    main()

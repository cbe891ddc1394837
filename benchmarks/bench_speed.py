"""The whole job's speed per core against OpenCV's bare detector pass (issue 37's ratio).

    python benchmarks/bench_speed.py                      # 762 medical-mask photos, 3 rounds
    python benchmarks/bench_speed.py --rounds 5 --workers 2 --job-arg=--mode=yunet
    python benchmarks/bench_speed.py --rounds 0 --profile   # where a worker's time goes (py-spy)
    python benchmarks/bench_speed.py --free-classifier      # the ceiling of any classifier change

Each round runs, one after the other on the same photos:
- reference: a bare loop in this process, one thread: cv2.imread + one pass of the pretrained
  YuNet (opencv_zoo face_detection_yunet_2023mar_int8bq.onnx) through cv2.FaceDetectorYN at about
  440k pixels (at most 2x enlarged), nothing else;
- job: `maskbatch predict IMAGES --out TMP --workers N --overwrite` as a user runs it (a fresh
  process and local cluster), its images/s from summary.json (processing time: first task
  submitted to last partition committed), divided by the N workers = images/s per core.
The ratio is job per core / reference, per round; the table gives each round and the medians.
Run it on a quiet machine: the job's N workers and its driver share the machine's cores.

--free-classifier: the job runs a stand-in classifier that costs about nothing (one ONNX graph,
P(mask) = 0.9 + 0 x the crop's mean, with the bundled card's size, threshold and classes; the
crops are still cut and fed to it): what the job would give if the classifier were free, at the
same detector pass.

--profile: one more job run with py-spy (`pip install py-spy`) sampling every worker process from
start to exit (Python frames, 50 Hz); each sample of a busy thread goes to the stage its innermost
maskbatch frame names (STAGES), and the table gives each stage's share of the workers' busy
samples and its ms per photo: the share times the worker milliseconds per photo of the rounds'
median job (py-spy's own sampling slows the profiled run by 20-40 % on 2 cores, so that run's
rate is only shown beside it).
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import yunet_cv2  # noqa: E402  (cv2.FaceDetectorYN over an ONNX file)
from common import data_dir, table  # noqa: E402

from maskbatch.models import detect, yunet  # noqa: E402
from maskbatch.models.classifier import read_model, sha256_bytes  # noqa: E402

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


def free_classifier(folder: Path) -> Path:
    """A classifier folder (model.onnx + model_card.json) that costs about nothing: the bundled
    card with a constant-output graph over the same NHWC crops."""
    from onnx import TensorProto, helper, numpy_helper

    _, card = read_model()
    size = int(card["input_size"])
    crops = helper.make_tensor_value_info(card["input_name"], TensorProto.FLOAT,
                                          ["N", size, size, 3])
    prob = helper.make_tensor_value_info(card["output_name"], TensorProto.FLOAT, ["N", 1])
    consts = [numpy_helper.from_array(np.array(v, dtype), name) for v, dtype, name in
              (([0.0], np.float32, "zero"), ([0.9], np.float32, "base"), ([1], np.int64, "axis"))]
    nodes = [helper.make_node("ReduceMean", [card["input_name"]], ["mean"], axes=[1, 2, 3],
                              keepdims=0),
             helper.make_node("Unsqueeze", ["mean", "axis"], ["mean_1"]),
             helper.make_node("Mul", ["mean_1", "zero"], ["nothing"]),
             helper.make_node("Add", ["nothing", "base"], [card["output_name"]])]
    graph = helper.make_graph(nodes, "free_classifier", [crops], [prob], consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    data = model.SerializeToString()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(data)
    card = {**card, "onnx_sha256": sha256_bytes(data), "onnx_bytes": len(data),
            "architecture": "free stand-in (benchmarks/bench_speed.py --free-classifier)"}
    (folder / "model_card.json").write_text(json.dumps(card))
    return folder


def predict_command(images: Path, out: str | Path, workers: int, extra: list[str]) -> list[str]:
    """`maskbatch predict` as a user runs it, from this interpreter's environment."""
    return [str(Path(sys.executable).with_name("maskbatch")), "predict", str(images),
            "--out", str(out), "--workers", str(workers), "--overwrite", *extra]


def job_rate(images: Path, workers: int, extra: list[str]) -> tuple[float, dict]:
    """(images/s per core, summary.json) of one `maskbatch predict` run in a fresh process."""
    with tempfile.TemporaryDirectory(prefix="mb-speed-") as out:
        subprocess.run(predict_command(images, out, workers, extra), check=True,
                       stdout=subprocess.DEVNULL)
        summary = json.loads((Path(out) / "summary.json").read_text())
    return summary["images_per_second"] / workers, summary


# (stage, text of a py-spy frame): the innermost frame of a sample that matches names its stage
STAGES = [
    ("detector: onnxruntime", "run (maskbatch/models/yunet_onnx.py"),
    ("detector: input blob", "make_blob (maskbatch/models/yunet_onnx.py"),
    ("detector: decode + NMS", "decode (maskbatch/models/yunet_onnx.py"),
    ("detector: decode + NMS", "suppress (maskbatch/models/yunet_onnx.py"),
    ("detector: decode + NMS", "relative (maskbatch/models/yunet_onnx.py"),
    ("detector: resize", "forward (maskbatch/models/yunet_onnx.py"),
    ("detector: boxes", "(maskbatch/models/detect.py"),
    ("classifier: onnxruntime", "(maskbatch/models/cascade.py"),
    ("classifier: onnxruntime", "raw_output (maskbatch/models/classifier.py"),
    ("classifier: crops + preprocess", "(maskbatch/models/classifier.py"),
    ("classifier: crops + preprocess", "face_crops (maskbatch/pipeline.py"),
    ("photo: imdecode", "decode_photo (maskbatch/photos/decoding.py:1"),
    ("photo: read + checks", "(maskbatch/photos/"),
    ("rows + manifest", "(maskbatch/pipeline.py"),
    ("rows + manifest", "(maskbatch/records.py"),
    ("parts: Parquet commit", "(maskbatch/outputs/"),
    ("parts: Parquet commit", "(maskbatch/storage.py"),
    ("task wrapper", "(maskbatch/"),
]
# innermost frames of a thread that waits: for a lock or event, on a socket, or (the photo
# reader's helper thread, maskbatch.photos.reading._serve) for the next photo to read
RATE_HZ = 50  # py-spy samples a second (more slows the workers it samples)
STARTUP = "prepare (multiprocessing/spawn.py"  # a spawned worker importing the driver's modules
STARTUP_STAGE = "worker start-up (imports; before the first task, outside the job's seconds)"
WAITS = ("wait (threading.py", "select (selectors.py", "_recv (multiprocessing", "get (queue.py",
         "poll (", "_serve (maskbatch/photos/reading.py")


def stage_of(frames: list[str]) -> str | None:
    """The stage of one sample (innermost frame first), None for a thread that waits."""
    if frames and any(w in frames[-1] for w in WAITS):
        return None
    if any(STARTUP in frame for frame in frames):
        return STARTUP_STAGE
    for frame in reversed(frames):
        for stage, text in STAGES:
            if text in frame:
                return stage
    return "Dask worker (scheduling, comms, serialization)"


def profile_job(images: Path, workers: int, extra: list[str], rate: float | None) -> None:
    """Run the job once with py-spy on every worker; print the stage table (ms per photo at
    `rate` images/s per worker, default the profiled run's own)."""
    import psutil

    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        raise SystemExit("--profile needs py-spy: pip install py-spy")
    with tempfile.TemporaryDirectory(prefix="mb-profile-") as tmp:
        out = Path(tmp) / "out"
        job = subprocess.Popen(predict_command(images, out, workers, extra),
                               stdout=subprocess.DEVNULL)
        spies, seen = [], set()
        while job.poll() is None and len(spies) < workers:
            for child in psutil.Process(job.pid).children(recursive=True):
                if child.pid not in seen and "spawn_main" in " ".join(child.cmdline()):
                    seen.add(child.pid)
                    spies.append(subprocess.Popen(
                        [str(spy), "record", "--pid", str(child.pid), "--rate", str(RATE_HZ), "--format",
                         "raw", "--nonblocking", "--output", f"{tmp}/w{child.pid}.txt"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(0.05)
        job.wait()
        for each in spies:
            each.wait()
        summary = json.loads((out / "summary.json").read_text())
        counts: collections.Counter = collections.Counter()
        for raw in Path(tmp).glob("w*.txt"):
            for line in raw.read_text().splitlines():
                stack, _, count = line.rpartition(" ")
                stage = stage_of(stack.split(";"))
                if stage is not None:
                    counts[stage] += int(count)
    startup = counts.pop(STARTUP_STAGE, 0)
    busy = sum(counts.values())
    per_photo = 1000 / rate if rate else 1000 * workers * summary["seconds"] / summary["images"]
    rows = [[stage, round(100 * n / busy, 1), round(per_photo * n / busy, 2)]
            for stage, n in counts.most_common()]
    rows.append(["all (worker ms per photo)", 100.0, round(per_photo, 2)])
    rows.append([f"{STARTUP_STAGE}: {startup / RATE_HZ / workers:.2f} s a worker", "-", "-"])
    print(f"\nprofile: {summary['images']} photos, {summary['images_per_second']} images/s "
          f"under py-spy, {busy} busy samples of {workers} workers; ms per photo at "
          f"{1000 / per_photo:.1f} images/s per worker\n")
    print(table(["stage", "% of busy samples", "ms per photo"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=None,
                        help="photo folder (default: the medical-mask sample's images)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--job-arg", action="append", default=[],
                        help="one more argument for maskbatch predict (repeatable)")
    parser.add_argument("--free-classifier", action="store_true",
                        help="the job with a stand-in classifier that costs about nothing")
    parser.add_argument("--profile", action="store_true",
                        help="then one job run with py-spy on its workers: the stage table")
    args = parser.parse_args()
    if args.free_classifier:
        stand_in = free_classifier(Path(tempfile.mkdtemp(prefix="mb-free-classifier-")))
        args.job_arg.append(f"--model={stand_in}")
    images = args.images or data_dir() / "medical-mask" / "images"
    paths = sorted(p for p in images.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    reference_rate(paths[:20])  # warm the page cache and the net
    if args.profile and args.rounds == 0:
        profile_job(images, args.workers, args.job_arg, None)
        return
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
    if args.profile:
        profile_job(images, args.workers, args.job_arg, statistics.median(jobs))


if __name__ == "__main__":
    main()

"""Speed, memory and quality of `maskbatch predict` against the bare detector and the notebook.

    python benchmarks/bench_predict.py                       # speed table on medical-mask photos
    python benchmarks/bench_predict.py --notebook MODEL.keras # + the notebook loop (needs TensorFlow)
    python benchmarks/bench_predict.py --partitions 64 1024   # worker memory by partition size
    python benchmarks/bench_predict.py --memory              # peak worker memory: 1x (3 runs) vs 10x,
                                                             # tcmalloc (when installed) and system malloc

Rows (one run, same photos, this machine):
  bare        decode + one 300x300 res10 forward per photo, one process, one core
  pipeline    `predict` on a LocalCluster of 1 and 2 single-threaded worker processes: decode,
              detect, crop, one onnxruntime call per partition, commit, final files; workers
              with tcmalloc when installed (the default), then with the system malloc, then
              with plain Dask's malloc setting, for comparison
  notebook    the seed notebook's loop: cv2.imread, gamma, 300x300 forward, one Keras
              model.predict per face (crops from the gamma-corrected photo, as it did)
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import cv2
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir, median_ms, table  # noqa: E402

from maskbatch.config import MASK, NO_MASK, ClusterConfig, DetectorConfig  # noqa: E402  # noqa: E402
from maskbatch.jobs.predict import list_inputs, predict  # noqa: E402
from maskbatch.models import detect
from maskbatch.photos import pixels, reading


def bare_rate(paths: list[str]) -> tuple[float, float]:
    """(images/s, median ms) of decode + gamma + one 300x300 forward, one core."""
    cv2.setNumThreads(1)
    net = detect.load_detector()
    samples = []
    started = time.perf_counter()
    for path in paths:
        t0 = time.perf_counter()
        image = pixels.adjust_gamma(reading.load_image(path), 2.0)
        detect.forward(net, image, (300, 300))
        samples.append(time.perf_counter() - t0)
    return len(paths) / (time.perf_counter() - started), median_ms(samples)


def pipeline_rate(folder: str, workers: int, mode: str, out: str, system_malloc: bool = False,
                  dask_malloc: bool = False) -> tuple[float, float, object]:
    """(images/s processing, images/s wall, result). For comparison rows: system_malloc: workers
    keep the C library's malloc instead of tcmalloc; dask_malloc: keep the nanny's
    MALLOC_TRIM_THRESHOLD_=65536 in the workers, as plain Dask does."""
    from maskbatch.runtime import cluster

    saved = cluster.NANNY_ENV
    if dask_malloc:
        cluster.NANNY_ENV = {}
    try:
        with mock.patch.dict(os.environ, {cluster.WORKER_MALLOC_ENV: "system"}
                             if system_malloc else {}):
            result = predict(folder, out, detector=DetectorConfig(mode=mode),
                             cluster_config=ClusterConfig(workers=workers, partition_size=16,
                                                          progress=False), overwrite=True)
    finally:
        cluster.NANNY_ENV = saved
    return len(result.manifest) / result.seconds, len(result.manifest) / result.wall_seconds, result


def notebook_loop(paths: list[tuple[str, str]], keras_path: str) -> tuple[float, pd.DataFrame]:
    """The notebook's test loop, faithfully (its try/except included), timed per photo."""
    import keras

    model = keras.models.load_model(keras_path)
    size = int(model.input_shape[1])
    net = detect.load_detector()
    rows, started = [], time.perf_counter()
    for name, path in paths:
        image = cv2.imread(path, 1)
        if image is None:
            continue
        image = pixels.adjust_gamma(image, gamma=2.0)
        (h, w) = image.shape[:2]
        blob = cv2.dnn.blobFromImage(cv2.resize(image, (300, 300)), 1.0, (300, 300),
                                     (104.0, 177.0, 123.0))
        net.setInput(blob)
        detections = net.forward()
        for i in range(0, detections.shape[2]):
            try:
                box = detections[0, 0, i, 3:7] * np.array([w, h, w, h])
                (sx, sy, ex, ey) = box.astype("int")
                frame = image[sy:ey, sx:ex]
                confidence = detections[0, 0, i, 2]
                if confidence > 0.2:
                    im = cv2.resize(frame, (size, size))
                    im = np.array(im) / 255.0
                    im = im.reshape(1, size, size, 3)
                    p_mask = float(model.predict(im, verbose=0)[0, 0])
                    rows.append((name, sx, sy, ex, ey, MASK if p_mask >= 0.5 else NO_MASK,
                                 float(confidence), p_mask))
            except Exception:  # noqa: BLE001,S110 - the notebook's `except: pass`
                pass
    rate = len(paths) / (time.perf_counter() - started)
    cols = ["name", "x1", "y1", "x2", "y2", "classname", "score", "mask_prob"]
    return rate, pd.DataFrame(rows, columns=cols)


def map_of(truth_folder: Path, detections: pd.DataFrame, honest_order: bool) -> float:
    from maskbatch.evaluation.scoring import score_detections
    from maskbatch.evaluation.truth import boxes_from_submission, read_truth

    truth, names, _ = read_truth(str(truth_folder))
    preds = detections if honest_order else boxes_from_submission(detections)
    return score_detections(truth, preds, names).metrics["map"]


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_peak_rss(folder: str, workers: int, out: str, partition_size: int = 16
                    ) -> tuple[list[float], float, int, list[tuple[int, float]]]:
    """Peak resident MB of each worker process after a full run, seconds, images processed, and
    the highest worker peak sampled every few seconds as (images committed, MB) along the run."""
    import threading

    from maskbatch.runtime.cluster import dask_client

    samples: list[tuple[int, float]] = []
    with dask_client(ClusterConfig(workers=workers, progress=False)) as client:
        done = threading.Event()

        def sample() -> None:
            while not done.wait(3.0):
                parts = Path(out, "parts")
                committed = (partition_size * len(list(parts.glob("*.images.parquet")))
                             if parts.is_dir() else 0)
                samples.append((committed, max(client.run(_peak_mb).values())))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            result = predict(folder, out, cluster_config=ClusterConfig(
                scheduler=client.scheduler.address, partition_size=partition_size, progress=False),
                overwrite=True)
        finally:
            done.set()
            sampler.join()
        peaks = client.run(_peak_mb)
    return sorted(peaks.values()), result.seconds, len(result.manifest), samples


def partition_table(folder: Path, sizes: list[int], copies: int, tmp: Path) -> None:
    """Peak worker memory and images/s by partition size, on `copies` x the photos (2 workers)."""
    many = tmp / "many"
    many.mkdir()
    for k in range(copies):
        for p in sorted(folder.iterdir()):
            os.symlink(p.resolve(), many / f"{k}-{p.name}")
    rows = []
    for size in sizes:
        peaks, seconds, n, _ = worker_peak_rss(str(many), 2, str(tmp / f"p{size}"), size)
        rows.append([size, n, f"{seconds:.1f}", f"{n / seconds:.1f}",
                     " / ".join(f"{p:.0f}" for p in peaks)])
    print(table(["partition size", "images", "seconds", "images/s", "peak RSS per worker (MB)"],
                rows))


def memory_tables(folder: Path, inputs: list[tuple[str, str]], tmp: Path) -> None:
    """Peak worker memory for 1x (three runs, each on a fresh cluster: how much equal runs differ)
    and 10x the photos on 2 workers, and one worker running the photos PASSES times in a row; with
    the allocator local workers get by default (tcmalloc, when installed) and with the system's."""
    from maskbatch.runtime.cluster import WORKER_MALLOC_ENV, worker_malloc

    tenfold = tmp / "tenfold"
    tenfold.mkdir()
    for k in range(10):
        for name, path in inputs:
            os.symlink(Path(path).resolve(), tenfold / f"r{k}_{name}")
    default = worker_malloc()
    allocators = ([(Path(default).name, None)] if default else []) + [("system malloc", "system")]
    rows, along, passes = [], [], []
    for allocator, env in allocators:
        with mock.patch.dict(os.environ, {WORKER_MALLOC_ENV: env} if env else {}):
            runs = [(f"1x (run {k})", folder) for k in (1, 2, 3)] + [("10x", tenfold)]
            for label, src in runs:
                out = tmp / f"mem-{len(rows)}"
                peaks, seconds, n, samples = worker_peak_rss(str(src), 2, str(out))
                rows.append([allocator, label, n, f"{seconds:.1f}",
                             " / ".join(f"{p:.0f}" for p in peaks)])
            tenfold_samples = samples  # of the last run, the 10x one
            passes.append([allocator] + [f"{mb:.0f}" for mb in one_worker_passes(
                str(folder), PASSES, tmp / f"passes-{len(passes)}")])
        # the 10x run, after k times the input had been committed
        seen = [[mb for committed, mb in tenfold_samples if committed <= k * len(inputs)]
                for k in (1, 2, 3, 5, 8)]
        along.append([allocator] + [f"{max(s):.0f}" if s else "-" for s in seen])
    if not default:
        print("(no tcmalloc installed: only the system malloc is measured)\n")
    print(table(["worker allocator", "input", "images", "seconds", "peak RSS per worker (MB)"],
                rows))
    print("\nduring the 10x run: highest worker peak RSS once N x the input was committed (MB)")
    print(table(["worker allocator", "1x", "2x", "3x", "5x", "8x"], along))
    print(f"\none worker, the same {len(inputs)} photos {PASSES} times in a row on one cluster: "
          "its peak RSS after each pass (MB)")
    print(table(["worker allocator"] + [f"pass {k + 1}" for k in range(PASSES)], passes))
    driver = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\ndriver peak RSS over all runs: {driver:.0f} MB")


PASSES = 5


def one_worker_passes(folder: str, passes: int, out: Path) -> list[float]:
    """A single worker sees every photo in every pass, so which partitions it happens to get
    cannot move its peak: the peak after each pass shows growth with the input alone."""
    from maskbatch.runtime.cluster import dask_client

    peaks = []
    with dask_client(ClusterConfig(workers=1, progress=False)) as client:
        for k in range(passes):
            predict(folder, str(out / str(k)), cluster_config=ClusterConfig(
                scheduler=client.scheduler.address, partition_size=16, progress=False))
            peaks.append(max(client.run(_peak_mb).values()))
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", help="photo folder (default: medical-mask/images)")
    parser.add_argument("--limit", type=int, help="first N photos only")
    parser.add_argument("--notebook", metavar="MODEL.keras",
                        help="also time the notebook loop with this Keras model, and score mAP")
    parser.add_argument("--memory", action="store_true", help="peak worker memory, 1x vs 10x")
    parser.add_argument("--mode", default="seed", help="detector mode for the pipeline rows")
    parser.add_argument("--partitions", type=int, nargs="+", metavar="SIZE",
                        help="peak worker memory and images/s at these partition sizes, on "
                             "--copies x the photos (2 workers, tuned mode)")
    parser.add_argument("--copies", type=int, default=3)
    args = parser.parse_args()
    data = data_dir()
    folder = Path(args.images or data / "medical-mask" / "images")
    tmp = Path(tempfile.mkdtemp(prefix="bench-predict-"))
    if args.limit:
        sub = tmp / "photos"
        sub.mkdir()
        for p in sorted(folder.iterdir())[: args.limit]:
            os.symlink(p.resolve(), sub / p.name)
        folder = sub
    inputs = list_inputs(str(folder))
    print(f"{len(inputs)} photos from {folder}; {os.cpu_count()} cores; "
          f"OpenCV {cv2.__version__}\n")

    if args.memory:
        memory_tables(folder, inputs, tmp)
        return
    if args.partitions:
        partition_table(folder, args.partitions, args.copies, tmp)
        return

    paths = [p for _, p in inputs]
    bare, bare_ms = bare_rate(paths)
    rows = [["bare: decode + 1 forward (1 core)", f"{bare:.1f}", f"{bare_ms:.1f}", "1.00", ""]]
    results = {}
    from maskbatch.runtime.cluster import worker_malloc

    default = worker_malloc()
    allocator = Path(default).name if default else "system malloc"
    variants = [(1, False, False), (2, False, False)]
    if default:  # else the rows above already ran on the system malloc
        variants.append((2, True, False))
    variants.append((2, True, True))
    for workers, system_malloc, dask_malloc in variants:
        rate, wall_rate, result = pipeline_rate(str(folder), workers, args.mode,
                                                str(tmp / f"w{workers}"), system_malloc,
                                                dask_malloc)
        what = f"pipeline {args.mode}, {workers} worker(s)"
        if dask_malloc:
            what += ", system malloc with Dask's MALLOC_TRIM_THRESHOLD_"
            note = "plain Dask's worker malloc setting, for comparison"
        elif system_malloc:
            what += ", system malloc"
            note = "for comparison"
        else:
            results[workers] = result
            what += f" ({allocator})"
            note = f"wall incl. cluster start: {wall_rate:.1f} img/s"
        rows.append([what, f"{rate:.1f}", f"{1000 * workers / rate:.1f}",
                     f"{rate / workers / bare:.2f}", note])
    if args.notebook:
        nb_rate, _ = notebook_loop(inputs, args.notebook)
        ratio = results[2].processed / results[2].seconds / nb_rate
        rows.append(["notebook loop (1 process)", f"{nb_rate:.1f}", f"{1000 / nb_rate:.1f}",
                     f"{nb_rate / bare:.2f}", f"pipeline with 2 workers is {ratio:.1f}x faster"])
    print(table(["what", "images/s", "ms per image per core", "per-core rate / bare", "note"],
                rows))
    if args.notebook and not args.limit and not args.images:
        quality = []
        for name in ("medical-mask", "voc-masks"):
            truth = data / name
            photos = str(truth / "images")
            out = str(tmp / f"q-{name}")
            pipe = predict(photos, out, cluster_config=ClusterConfig(workers=2, progress=False),
                           overwrite=True)
            _, nb_det = notebook_loop(list_inputs(photos), args.notebook)
            quality.append([name, DetectorConfig().mode, map_of(truth, pipe.detections, False),
                            map_of(truth, nb_det, True)])
        print()
        print(table(["set (labelled images)", "pipeline mode", "mAP@0.5 pipeline",
                     "mAP@0.5 notebook loop"], quality))

if __name__ == "__main__":
    main()

"""The bundled mask classifier's cost by batch size: ms per crop, peak memory, and int8 quantization.

    python benchmarks/bench_classifier_batch.py [--crops 1700] [--rounds 3] [--big 7000]
                                                [--no-memory] [--no-quantize]

Crops: the labelled faces (face_with_mask, face_no_mask boxes of train.csv) of the medical-mask
photos in name order, cut from the photo (pixels.clip_box, pixels.crop) and resized to the
classifier's input (classify.fit_crop), as `predict` cuts them; the first `--crops` of them.

Speed: maskbatch.models.classifier.Classifier (the bundled model.onnx and its card, one onnxruntime thread,
no memory arena, as the job loads it) over the crops preprocessed once (classify.preprocess), in one
call of all of them, then in batches of 1 ... 256: ms per crop, wall (perf_counter) and CPU of the
calling thread (time.thread_time), median over `--rounds` rounds whose batch sizes take turns.

Memory: one subprocess per way of classifying `--big` distinct crops (the timing crops, copied
round): RSS before the work (crops held, model loaded and warmed), then the peak RSS during it
(Linux VmHWM, reset just before).
"one call": preprocess all, one call (what predict_partition does with a partition's crops);
"64 per call, one input": preprocess all, call in slices of 64; "64 per call": preprocess and
call 64 crops at a time.

Quantization: onnxruntime.quantization.quantize_static (QDQ, int8 weights and activations, MinMax
calibration) with a calibration reader over crops of medical-mask TRAINING photos only
(maskbatch/datasets/splits), per tensor and per channel; then ms per crop (one call, batches of
16 and 64) and, on the validation crops of both labelled sets (never calibrated on), how many labels flip
against fp32 at the card's threshold, the largest change of P(mask), and each model's share of
right labels. Nothing is bundled: the quantized files live in a temporary folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from common import data_dir, table  # noqa: E402

from maskbatch.config import MASK, NO_MASK  # noqa: E402
from maskbatch.datasets import DEFAULT_LABEL_MAP, truth_table  # noqa: E402
from maskbatch.datasets.splits import split_names  # noqa: E402
from maskbatch.models.classifier import Classifier, fit_crop, preprocess, read_model  # noqa: E402
from maskbatch.photos import pixels  # noqa: E402

BATCHES = (1, 4, 8, 16, 32, 64, 128, 256)
MEMORY_WAYS = ("one call", "64 per call, one input", "64 per call")


def face_crops(folder: Path, size: int, names: list[str] | None = None, limit: int | None = None
               ) -> tuple[list[np.ndarray], list[str]]:
    """(crops resized to size x size, their labels MASK / NO_MASK) of a labelled set's photos
    (`names`, else all, in name order), at most `limit` of them."""
    truth = truth_table(str(folder))
    truth = truth[truth["classname"].map(DEFAULT_LABEL_MAP).isin([MASK, NO_MASK])]
    if names is not None:
        truth = truth[truth["name"].isin(set(names))]
    crops, labels = [], []
    for name, boxes in truth.groupby("name", sort=True):
        image = cv2.imread(str(folder / "images" / name))
        if image is None:
            continue
        for row in boxes.itertuples():
            box = pixels.clip_box((row.x1, row.y1, row.x2, row.y2), image.shape[1], image.shape[0])
            if box is None:
                continue
            crops.append(fit_crop(pixels.crop(image, box), size))
            labels.append(DEFAULT_LABEL_MAP[row.classname])
            if limit is not None and len(crops) >= limit:
                return crops, labels
    return crops, labels


def session_ms(classifier: Classifier, batch: np.ndarray, size: int | None) -> tuple[float, float]:
    """(wall, CPU) ms per crop to classify `batch` in calls of `size` crops (None: one call)."""
    step = size or len(batch)
    wall, cpu = time.perf_counter(), time.thread_time()
    for start in range(0, len(batch), step):
        classifier.predict_faces(batch[start:start + step])
    return (1000 * (time.perf_counter() - wall) / len(batch),
            1000 * (time.thread_time() - cpu) / len(batch))


def speed_table(classifier: Classifier, batch: np.ndarray, sizes: tuple, rounds: int) -> list[list]:
    configs = [None, *sizes]
    wall: dict = {c: [] for c in configs}
    cpu: dict = {c: [] for c in configs}
    session_ms(classifier, batch[:64], 64)  # warm-up
    for r in range(rounds):
        for c in configs[r % len(configs):] + configs[:r % len(configs)]:
            w, u = session_ms(classifier, batch, c)
            wall[c].append(w)
            cpu[c].append(u)
    one = statistics.median(cpu[None])
    return [[f"all {len(batch)} in one call" if c is None else str(c),
             statistics.median(wall[c]), statistics.median(cpu[c]), statistics.median(cpu[c]) / one]
            for c in configs]


def rss_mib(peak: bool) -> float:
    """This process's resident memory now, or its peak (VmHWM) since the last reset_peak()."""
    key = "VmHWM:" if peak else "VmRSS:"
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # (not Linux: KiB, no reset)


def reset_peak() -> None:
    """Linux: start VmHWM afresh from the current RSS (writing 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def memory_child(crops_file: str, big: int, way: str) -> None:
    """(In a subprocess.) Peak RSS before and after classifying `big` crops the `way` says."""
    stored = np.load(crops_file)
    crops = [stored[i % len(stored)].copy() for i in range(big)]  # distinct arrays, as predict's
    del stored
    data, card = read_model()
    classifier = Classifier(data, card, threads=1)
    size = classifier.input_size
    classifier.predict_faces(preprocess(crops[:64], size))
    reset_peak()
    before = rss_mib(peak=False)
    started = time.perf_counter()
    if way == "one call":
        classifier.predict_faces(preprocess(crops, size))
    elif way == "64 per call, one input":
        batch = preprocess(crops, size)
        for start in range(0, big, 64):
            classifier.predict_faces(batch[start:start + 64])
    else:
        for start in range(0, big, 64):
            classifier.predict_faces(preprocess(crops[start:start + 64], size))
    seconds = time.perf_counter() - started
    print(json.dumps({"before": before, "peak": rss_mib(peak=True), "seconds": seconds}))


def memory_table(crops: list[np.ndarray], big: int) -> list[list]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        crops_file = str(Path(tmp) / "crops.npy")
        np.save(crops_file, np.stack(crops))
        for way in MEMORY_WAYS:
            out = subprocess.run([sys.executable, __file__, "--memory-child", way, "--big", str(big),
                                  "--crops-file", crops_file],
                                 check=True, capture_output=True, text=True).stdout
            got = json.loads(out.strip().splitlines()[-1])
            rows.append([way, big, got["before"], got["peak"], got["peak"] - got["before"],
                         1000 * got["seconds"] / big])
    return rows


class CropReader:
    """onnxruntime.quantization CalibrationDataReader over preprocessed crops, 32 at a time."""

    def __init__(self, batch: np.ndarray, input_name: str) -> None:
        self.batches = iter([{input_name: batch[i:i + 32]} for i in range(0, len(batch), 32)])

    def get_next(self) -> dict | None:
        return next(self.batches, None)


def quantize_tables(data: bytes, card: dict, folder: Path, speed_batch: np.ndarray, rounds: int
                    ) -> tuple[list[list], list[list], dict]:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    size = int(card["input_size"])
    calib_crops, _ = face_crops(folder / "medical-mask", size, split_names("medical-mask", "train"),
                                limit=480)
    calib = preprocess(calib_crops, size)
    eval_crops, eval_labels = [], []
    for name in ("medical-mask", "voc-masks"):
        c, lab = face_crops(folder / name, size, split_names(name, "val"))
        eval_crops += c
        eval_labels += lab
    evaluation = preprocess(eval_crops, size)
    truth = np.array(eval_labels)
    fp32 = Classifier(data, card, threads=1)
    p32 = fp32.predict_batch(evaluation)
    labels32 = np.array(fp32.label(p32))
    speed_rows, flip_rows = [], []
    speed_rows += [["fp32", *r] for r in speed_table(fp32, speed_batch, (16, 64), rounds)]
    flip_rows.append(["fp32", len(truth), 0, 0.0, float((labels32 == truth).mean())])
    with tempfile.TemporaryDirectory() as tmp:
        src, pre = Path(tmp) / "model.onnx", Path(tmp) / "model.pre.onnx"
        src.write_bytes(data)
        quant_pre_process(str(src), str(pre))
        for per_channel in (False, True):
            name = "int8 per channel" if per_channel else "int8 per tensor"
            out = Path(tmp) / f"model.{per_channel}.onnx"
            quantize_static(str(pre), str(out), CropReader(calib, fp32.input_name),
                            quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
            qbytes = out.read_bytes()
            qcard = dict(card, onnx_sha256=hashlib.sha256(qbytes).hexdigest())
            quantized = Classifier(qbytes, qcard, threads=1)
            p8 = quantized.predict_batch(evaluation)
            labels8 = np.array(quantized.label(p8))
            speed_rows += [[name, *r] for r in speed_table(quantized, speed_batch, (16, 64), rounds)]
            flip_rows.append([name, len(truth), int((labels8 != labels32).sum()),
                              float(np.abs(p8 - p32).max()), float((labels8 == truth).mean())])
    info = {"calibration crops": len(calib), "evaluation crops": len(truth)}
    return speed_rows, flip_rows, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, default=1700)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--big", type=int, default=7000, help="crops of the memory runs")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--no-quantize", action="store_true")
    parser.add_argument("--memory-child", choices=MEMORY_WAYS, help=argparse.SUPPRESS)
    parser.add_argument("--crops-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.crops_file, args.big, args.memory_child)
        return
    cv2.setNumThreads(1)
    data, card = read_model()
    classifier = Classifier(data, card, threads=1)
    folder = data_dir()
    crops, _ = face_crops(folder / "medical-mask", classifier.input_size, limit=args.crops)
    batch = preprocess(crops, classifier.input_size)
    print(f"classifier {card['onnx_sha256'][:12]} ({card['architecture']}, "
          f"{classifier.input_size} px), one onnxruntime thread; {len(crops)} medical-mask face "
          f"crops, {args.rounds} rounds")
    print(table(["crops per call", "wall ms/crop", "CPU ms/crop", "CPU vs one call"],
                speed_table(classifier, batch, BATCHES, args.rounds)))
    if not args.no_memory:
        print(f"\npeak RSS (MiB), {args.big} crops, one subprocess each")
        print(table(["way", "crops", "RSS before", "peak RSS during", "added", "wall ms/crop"],
                    memory_table(crops, args.big)))
    if not args.no_quantize:
        speed_rows, flip_rows, info = quantize_tables(data, card, folder, batch, args.rounds)
        print(f"\nstatic int8 quantization (QDQ, MinMax; {info['calibration crops']} calibration "
              f"crops of medical-mask train photos), ms per crop on the {len(batch)} crops")
        print(table(["model", "crops per call", "wall ms/crop", "CPU ms/crop", "CPU vs one call"],
                    speed_rows))
        print(f"\nlabels on the {info['evaluation crops']} validation crops of medical-mask and "
              f"voc-masks (threshold {card['threshold']})")
        print(table(["model", "crops", "labels flipped vs fp32", "max |dP(mask)|",
                     "right labels"], flip_rows))


if __name__ == "__main__":
    main()

"""Detector modes against each other on the labelled sets: quality, recall by face size, speed.

    python benchmarks/bench_modes.py                    # every mode, both labelled sets, all images
    python benchmarks/bench_modes.py --limit 40         # quick: the first 40 labelled images per set
    python benchmarks/bench_modes.py --modes seed,tuned --sets voc-masks
    python benchmarks/bench_modes.py --tune             # + threshold sweep per mode (medical-mask)
    python benchmarks/bench_modes.py --no-map           # detection only (no classifier, no Dask)

Images: the validation photos of each set's committed split (maskbatch/datasets/splits: 122 of
medical-mask's 610 labelled photos, 82 of voc-masks' 412), which no model was trained on and no
threshold or box fit tuned on; `--split train` or `--split all` picks the others, in name order,
`--limit` keeps the first N of each set. Thresholds are tuned with `--split train --tune`.

Detection columns (no classifier): each mode runs through `detect_faces` at its own tuned
threshold over the images, in one process with one OpenCV thread; the modes take turns on each
image (so a busy machine slows them alike) and the time per image is the median over the images
(gamma, resizes, forward passes, merging: what `detect_faces` does, not the decode). Detection AP is
class-agnostic, VOC all-point, at IoU 0.5: truth faces are the two classes (face_with_mask,
face_no_mask / with_mask, without_mask); other classes (mask_weared_incorrect) are ignore regions:
a detection on one is neither a hit nor a false alarm. Recall by face size bins the truth faces by
the shorter side of their box (< 16, 16-32, 32-64, >= 64 px).

mAP columns (when maskbatch/models/model.onnx and maskbatch.evaluate exist; else "-"):
`maskbatch.jobs.predict.predict` with the mode on the same images (one worker process), scored by
`maskbatch.jobs.evaluate.evaluate` at IoU 0.5: AP per class and their mean. "predict ms" is the median
per-image time the job records (decode, detection, crops, its share of the classifier call).
"mAP 95 % interval": the evaluation's percentile interval over 1000 resamples of the photos
(maskbatch.intervals): how much the mAP of another set of photos like these could differ.

--tune: each mode once more at confidence 0.1 (not timed); detection AP, precision, recall and F1
per threshold on medical-mask. A mode's threshold is the one with the best F1 there (see
docs/detector-modes.md); the same sweep on voc-masks is printed as a check.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, data_dir, table  # noqa: E402

from maskbatch.config import ClusterConfig, DetectorConfig  # noqa: E402
from maskbatch.datasets import DEFAULT_LABEL_MAP, truth_table  # noqa: E402
from maskbatch.datasets.splits import split_names  # noqa: E402
from maskbatch.evaluation.matching import iou_matrix  # noqa: E402
from maskbatch.evaluation.scoring import voc_ap  # noqa: E402
from maskbatch.models import detect
from maskbatch.photos import reading

SETS = ("medical-mask", "voc-masks")
SIZE_BINS = ((0.0, 16.0, "<16"), (16.0, 32.0, "16-32"), (32.0, 64.0, "32-64"),
             (64.0, float("inf"), ">=64"))
TUNE_FLOOR = 0.1
TUNE_GRID = tuple(round(0.1 + 0.05 * i, 2) for i in range(15))  # 0.1 to 0.8


# --------------------------------------------------------------------------- ground truth


@dataclass
class Truth:
    """One image's truth: face boxes (the two classes) and ignore regions, (N, 4) float."""

    faces: np.ndarray
    ignore: np.ndarray


def labelled_images(folder: Path, limit: int | None, split: str = "all"
                    ) -> tuple[list[tuple[str, str]], dict[str, Truth]]:
    """(name, path) of the labelled images of a set's `split` part ('train', 'val' or 'all'), name
    order, the first `limit`; their truth."""
    boxes = truth_table(str(folder))
    names = sorted(boxes["name"].unique())
    if split != "all":
        keep = set(split_names(folder.name, split))
        names = [n for n in names if n in keep]
    names = names[:limit]
    truth = {}
    for name, rows in boxes[boxes["name"].isin(names)].groupby("name"):
        face = rows["classname"].isin(DEFAULT_LABEL_MAP)
        xyxy = rows[["x1", "y1", "x2", "y2"]].to_numpy(float)
        truth[name] = Truth(xyxy[face.to_numpy()], xyxy[~face.to_numpy()])
    return [(n, str(folder / "images" / n)) for n in names], truth


# --------------------------------------------------------------------------- matching


def match(pred: np.ndarray, truth: Truth, iou: float = 0.5) -> tuple[np.ndarray, np.ndarray,
                                                                     np.ndarray]:
    """Greedy class-agnostic matching of one image's detections (N, 5) [x1, y1, x2, y2, score].

    Best score first, a detection takes the unmatched face with the highest IoU (>= iou): hit (1).
    Else, overlapping an ignore region (IoU >= iou): left out (-1). Else a false alarm (0).
    Returns (scores, status) of the detections, and per truth face the score of the detection
    that found it (NaN: missed).
    """
    pred = pred[np.argsort(-pred[:, 4], kind="stable")]
    overlaps = iou_matrix(pred[:, :4], truth.faces)
    on_ignore = iou_matrix(pred[:, :4], truth.ignore)
    taken = np.zeros(len(truth.faces), bool)
    status = np.zeros(len(pred), int)
    found = np.full(len(truth.faces), np.nan)
    for i in range(len(pred)):
        if len(truth.faces):
            candidates = np.where(taken, -1.0, overlaps[i])
            j = int(np.argmax(candidates))
            if candidates[j] >= iou:
                taken[j], status[i], found[j] = True, 1, pred[i, 4]
                continue
        if len(truth.ignore) and on_ignore[i].max() >= iou:
            status[i] = -1
    return pred[:, 4], status, found


def detection_ap(hits: np.ndarray, n_truth: int) -> float:
    """VOC all-point AP of a ranked list of hits (1) and false alarms (0)."""
    if n_truth == 0:
        return float("nan")
    tp = np.cumsum(hits)
    return voc_ap(tp / n_truth, tp / np.arange(1, len(hits) + 1))


@dataclass
class Matched:
    """Matching of one mode over one set, at the lowest threshold it ran with."""

    scores: np.ndarray  # detections not on ignore regions, best first
    hits: np.ndarray
    found: np.ndarray  # per truth face: score of its detection, NaN when missed
    face_sizes: np.ndarray  # per truth face: shorter side, px

    @classmethod
    def of(cls, predictions: dict[str, np.ndarray], truth: dict[str, Truth]) -> Matched:
        scores, status, found, sizes = [], [], [], []
        for name, t in truth.items():
            s, st, f = match(predictions.get(name, np.zeros((0, 5))), t)
            scores.append(s)
            status.append(st)
            found.append(f)
            sizes.append(np.minimum(t.faces[:, 2] - t.faces[:, 0], t.faces[:, 3] - t.faces[:, 1]))
        s, st = np.concatenate(scores), np.concatenate(status)
        s, st = s[st >= 0], st[st >= 0]
        order = np.argsort(-s, kind="stable")
        return cls(s[order], st[order], np.concatenate(found), np.concatenate(sizes))

    def at(self, threshold: float) -> dict:
        """Detection AP, precision, recall, F1 and recall by face size above `threshold`."""
        keep = self.scores > threshold
        hits = self.hits[keep]
        n = len(self.found)
        tp = int(hits.sum())
        precision = tp / max(len(hits), 1)
        recall = tp / max(n, 1)
        found = self.found > threshold  # NaN compares False
        by_size = {}
        for lo, hi, label in SIZE_BINS:
            in_bin = (self.face_sizes >= lo) & (self.face_sizes < hi)
            by_size[label] = float(found[in_bin].mean()) if in_bin.any() else float("nan")
        return {"det_ap": detection_ap(hits, n), "precision": precision, "recall": recall,
                "f1": 2 * precision * recall / max(precision + recall, 1e-9),
                "recall_by_size": by_size, "n_faces": n}


# --------------------------------------------------------------------------- detection runs


@dataclass
class Run:
    """Detections and per-image seconds of every mode over one set."""

    predictions: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    seconds: dict[str, list[float]] = field(default_factory=dict)


def detect_all(items: list[tuple[str, str]], modes: list[str], floor: float | None = None,
               timed: bool = True) -> Run:
    """Every mode on every image, modes taking turns per image; `floor` overrides thresholds."""
    cv2.setNumThreads(1)
    net = detect.load_detector()
    run = Run({m: {} for m in modes}, {m: [] for m in modes})
    for i, (name, path) in enumerate(items):
        image = reading.load_image(path)
        turn = i % len(modes)
        for mode in modes[turn:] + modes[:turn]:
            config = DetectorConfig(mode=mode, confidence=floor)
            started = time.perf_counter()
            found = detect.detect_faces(image, config, net)
            if timed:
                run.seconds[mode].append(time.perf_counter() - started)
            run.predictions[mode][name] = found
    return run


# --------------------------------------------------------------------------- full mAP


def map_available(model: str | None) -> str | None:
    """None when the classifier and the evaluator are there, else what is missing."""
    folder = Path(model) if model else REPO / "maskbatch" / "models"
    if not (folder / "model.onnx").is_file():
        return f"no model ({folder / 'model.onnx'} missing)"
    try:
        import maskbatch.evaluate  # noqa: F401
    except ImportError as exc:
        return f"maskbatch.evaluate not importable ({exc})"
    return None


def model_id(model: str | None) -> str:
    """The classifier's architecture and ONNX sha256 prefix, from its model card."""
    card = (Path(model) if model else REPO / "maskbatch" / "models") / "model_card.json"
    try:
        info = json.loads(card.read_text())
    except (OSError, ValueError):
        return "no model card"
    return f"{info.get('architecture', '?')}, onnx sha256 {str(info.get('onnx_sha256', '?'))[:12]}"


def truth_for(folder: Path, items: list[tuple[str, str]], subset: bool, work: Path) -> str:
    """What `evaluate` scores against: the set itself, or (`subset`) a train.csv of the images
    given (its quirky header x1,x2,y1,y2 holds left, top, right, bottom)."""
    if not subset:
        return str(folder)
    boxes = truth_table(str(folder))
    boxes = boxes[boxes["name"].isin({n for n, _ in items})]
    path = work / f"{folder.name}-truth.csv"
    pd.DataFrame({"name": boxes["name"], "x1": boxes["x1"], "x2": boxes["y1"],
                  "y1": boxes["x2"], "y2": boxes["y2"], "classname": boxes["classname"]}
                 ).to_csv(path, index=False)
    return str(path)


def full_map(folder: Path, items: list[tuple[str, str]], mode: str, truth: str, work: Path,
             model: str | None = None, figures: Path | None = None,
             confidence: float | None = None) -> dict:
    """`predict` with `mode` on the images (one worker process), `evaluate` against `truth`."""
    from maskbatch.jobs.evaluate import evaluate
    from maskbatch.jobs.predict import predict

    template = work / f"{folder.name}-{mode}.csv"
    pd.DataFrame({"name": [n for n, _ in items]}).to_csv(template, index=False)
    out = work / f"{folder.name}-{mode}"
    predict(str(template), str(out), images_dir=str(folder / "images"), model=model,
            detector=DetectorConfig(mode=mode, confidence=confidence),
            cluster_config=ClusterConfig(workers=1, progress=False), overwrite=True)
    report = work / f"{folder.name}-{mode}-eval"
    metrics = evaluate(truth, str(out), out_dir=str(report))
    if figures is not None:
        figures.mkdir(parents=True, exist_ok=True)
        for png in report.glob("*.png"):
            (figures / f"{folder.name}-{mode}-{png.name}").write_bytes(png.read_bytes())
    seconds = pd.read_parquet(out / "images.parquet")["seconds"]
    return {"map": metrics["map"], "map_interval": metrics["intervals"]["map"],
            "ap": {c: v["ap"] for c, v in metrics["classes"].items()},
            "label_accuracy": metrics["confusion"]["label_accuracy"],
            "predict_ms": 1000 * float(seconds.median())}


# --------------------------------------------------------------------------- report


def ratio(value: float, base: float) -> str:
    return "-" if not base or value != value or base != base else f"{value / base:.2f}x"


def num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def set_table(name: str, rows: list[dict]) -> str:
    """The markdown table of one set."""
    headers = ["mode", "threshold", "mAP@0.5", "mAP 95 % interval", "AP face_with_mask",
               "AP face_no_mask",
               "det AP", "faces found", "recall <16", "16-32", "32-64", ">=64", "label acc",
               "det ms/img", "img/s",
               "time vs seed", "mAP vs seed", "det AP vs seed", "predict ms/img"]
    seed = next((r for r in rows if r["mode"] == "seed"), None)
    out = []
    for r in rows:
        ap = r.get("ap") or {}
        out.append([
            r["mode"], f"{r['threshold']:g}", num(r.get("map")),
            "-" if not r.get("map_interval") else "-".join(num(v) for v in r["map_interval"]),
            num(ap.get("face_with_mask")), num(ap.get("face_no_mask")), num(r["det_ap"]),
            num(r["recall"]), *(num(r["recall_by_size"][b], 3) for _, _, b in SIZE_BINS),
            num(r.get("label_accuracy")),
            f"{r['ms']:.1f}", f"{1000 / r['ms']:.1f}",
            ratio(r["ms"], seed["ms"]) if seed else "-",
            ratio(r.get("map") or float("nan"), (seed.get("map") or float("nan"))) if seed else "-",
            ratio(r["det_ap"], seed["det_ap"]) if seed else "-",
            num(r.get("predict_ms"), 1),
        ])
    return f"**{name}** ({rows[0]['n_images']} images, {rows[0]['n_faces']} faces)\n\n" + table(
        headers, out)


def tune_table(matched: dict[str, Matched]) -> str:
    """Detection F1, AP, precision, recall per mode and threshold; each mode's best F1 in bold."""
    headers = ["mode", "threshold", "F1", "det AP", "precision", "recall", "recall 16-32"]
    rows = []
    for mode, m in matched.items():
        results = [m.at(t) for t in TUNE_GRID]
        best = int(np.argmax([r["f1"] for r in results]))
        for k, (t, r) in enumerate(zip(TUNE_GRID, results)):
            f1 = f"**{r['f1']:.3f}**" if k == best else f"{r['f1']:.3f}"
            rows.append([mode, f"{t:g}", f1, num(r["det_ap"]), num(r["precision"]),
                         num(r["recall"]), num(r["recall_by_size"]["16-32"])])
    return table(headers, rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    parser.add_argument("--modes", default=",".join(detect.MODES),
                        help="comma-separated (default: all)")
    parser.add_argument("--split", default="val", choices=["val", "train", "all"],
                        help="which photos of each set's committed split (default: val)")
    parser.add_argument("--limit", type=int, help="first N labelled images of each set")
    parser.add_argument("--confidence", type=float,
                        help="one detector threshold for every mode (default: each mode's own)")
    parser.add_argument("--figures", type=Path,
                        help="copy each mode's PR curves and confusion matrix PNGs here")
    parser.add_argument("--tune", action="store_true", help="threshold sweep per mode")
    parser.add_argument("--no-map", action="store_true", help="skip predict + evaluate")
    parser.add_argument("--model", help="classifier folder for the mAP columns (default: bundled)")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in detect.MODES:
            parser.error(f"unknown mode {m!r}; choose from {', '.join(detect.MODES)}")
    data = data_dir()
    missing = None if args.no_map else map_available(args.model)
    started = time.time()
    print(f"python benchmarks/bench_modes.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"{datetime.date.today()}, OpenCV {cv2.__version__}, one OpenCV thread; "
          + ("mAP columns skipped (--no-map)" if args.no_map else
             f"mAP columns skipped: {missing}" if missing else
             f"classifier: {args.model or 'the bundled model'} ({model_id(args.model)})")
          + f"; {os.cpu_count()} CPUs\n")
    with tempfile.TemporaryDirectory(prefix="bench-modes-") as tmp:
        for name in args.sets:
            folder = data / name
            items, truth = labelled_images(folder, args.limit, args.split)
            run = detect_all(items, modes, floor=args.confidence)
            subset = args.limit is not None or args.split != "all"
            truth_arg = truth_for(folder, items, subset, Path(tmp))
            rows = []
            for mode in modes:
                threshold = (detect.MODES[mode].confidence if args.confidence is None
                             else args.confidence)
                metrics = Matched.of(run.predictions[mode], truth).at(threshold)
                row = {"mode": mode, "threshold": threshold, "n_images": len(items),
                       "ms": 1000 * statistics.median(run.seconds[mode]), **metrics}
                if not args.no_map and missing is None:
                    row.update(full_map(folder, items, mode, truth_arg, Path(tmp), args.model,
                                        args.figures, args.confidence))
                rows.append(row)
            print(f"{args.split} photos of the committed split", end=": ")
            print(set_table(name, rows) + "\n", flush=True)
            if args.tune:
                sweep = detect_all(items, modes, floor=TUNE_FLOOR, timed=False)
                print(f"threshold sweep, {name} (detection, class-agnostic; best F1 in bold)\n")
                print(tune_table({m: Matched.of(sweep.predictions[m], truth) for m in modes})
                      + "\n", flush=True)
    print(f"({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()

"""Which detector pass finds the faces still missed, at what cost: the tuned net at several pass
sizes (pixels, largest enlargement), detection only, on one part of the committed split.

    python benchmarks/bench_pass.py                     # training photos of both sets (choose here)
    python benchmarks/bench_pass.py --split val         # report the chosen pass on validation photos
    python benchmarks/bench_pass.py --passes 440k:2 1m:4 --limit 50
    python benchmarks/bench_pass.py --passes 640k:3 --truncate   # rounded boxes vs truncated

Each pass is the `tuned` mode with another `Pass(area, max_upscale)`, at the mode's own threshold;
the passes take turns on each photo (one thread, onnxruntime), so the machine's noise hits them
alike. Faces are the two classes of each set (other classes are ignore regions), matched
class-agnostically at IoU 0.5 by maskbatch's evaluation; "found" is recall, by face size (shorter
side of the labelled box) and for unmasked faces; "det ms" the median detect_faces time a photo.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir, table  # noqa: E402

from maskbatch.config import NO_MASK, DetectorConfig  # noqa: E402
from maskbatch.datasets import DEFAULT_LABEL_MAP, truth_table  # noqa: E402
from maskbatch.datasets.splits import split_names  # noqa: E402
from maskbatch.evaluation.scoring import score_detections  # noqa: E402
from maskbatch.models import detect  # noqa: E402
from maskbatch.photos import reading  # noqa: E402

SETS = ("medical-mask", "voc-masks")


def parse_pass(text: str) -> tuple[int, float]:
    """'640k:3' -> (640_000, 3.0); '1.2m:4' -> (1_200_000, 4.0)."""
    area, _, upscale = text.lower().partition(":")
    scale = 1_000_000 if area.endswith("m") else 1_000
    return int(float(area.rstrip("km")) * scale), float(upscale or 2)


def mode_for(area: int, upscale: float, truncate: bool = False) -> detect.Mode:
    """The tuned mode with this pass (and the notebook's truncated pixel boxes if asked)."""
    base = detect.MODES["tuned"]
    name = f"tuned@{area // 1000}k:{upscale:g}" + (" truncated" if truncate else "")
    return dataclasses.replace(
        base, name=name, scan=dataclasses.replace(base.scan, area=area, max_upscale=upscale),
        pixels=detect.PixelFit() if truncate else base.pixels)


def detect_as_tuned(image: np.ndarray, mode: detect.Mode) -> np.ndarray:
    """detect_faces as the job calls it, with `mode` standing in for the tuned mode."""
    tuned = detect.MODES["tuned"]
    detect.MODES["tuned"] = mode
    try:
        return detect.detect_faces(image, DetectorConfig(mode="tuned"))
    finally:
        detect.MODES["tuned"] = tuned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", nargs="+", default=["440k:2", "640k:3", "900k:3", "900k:4",
                                                        "1.2m:4"])
    parser.add_argument("--split", default="train", choices=["train", "val"])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--truncate", action="store_true",
                        help="each pass also with the boxes truncated to pixels (before 2026-12-07)")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    modes = [mode_for(*parse_pass(p), truncate) for p in args.passes
             for truncate in ((False, True) if args.truncate else (False,))]
    rows = []
    for name in args.sets:
        root = data_dir() / name
        truth = truth_table(str(root))
        photos = sorted(set(split_names(name, args.split)) & set(truth["name"]))[:args.limit]
        found = {m: [] for m in modes}
        seconds = {m: [] for m in modes}
        for photo in photos:
            image = reading.load_image(str(root / "images" / photo))
            for mode in modes:
                started = time.perf_counter()
                boxes = detect_as_tuned(image, mode)
                seconds[mode].append(time.perf_counter() - started)
                found[mode] += [(photo, *b[:4], b[4]) for b in boxes
                                if min(b[2] - b[0], b[3] - b[1]) >= DetectorConfig().min_face]
        for mode in modes:
            pred = pd.DataFrame(found[mode], columns=["name", "x1", "y1", "x2", "y2", "score"])
            pred = pred.assign(classname="face_with_mask", mask_prob=math.nan)
            ev = score_detections(truth, pred, image_names=photos)
            faces = ev.truth[ev.truth["label"] != "ignore"]
            by_size = {b["bin"]: b["recall"] for b in ev.metrics["recall_by_size"]}
            unmasked = faces["classname"].map(DEFAULT_LABEL_MAP) == NO_MASK
            rows.append([name, mode.name.split("@")[1], len(photos), ev.metrics["detection"]["ap"],
                         ev.metrics["detection"]["recall"], by_size["<16"], by_size["16-32"],
                         float(faces.loc[unmasked, "found"].mean()),
                         float(faces.loc[~unmasked, "found"].mean()), len(pred),
                         1000 * statistics.median(seconds[mode])])
    print(f"tuned net, {args.split} photos, one thread; passes take turns on each photo")
    print(table(["set", "pass (pixels:max enlargement)", "photos", "det AP", "faces found", "<16 px",
                 "16-32 px", "unmasked found", "masked found", "boxes", "det ms"], rows))


if __name__ == "__main__":
    main()

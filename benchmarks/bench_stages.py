"""Where a photo's time goes: decode / detect / classify, ms per photo, before and after issue 27.

    python benchmarks/bench_stages.py                  # 200 photos of each labelled set
    python benchmarks/bench_stages.py --photos 762 --sets medical-mask

One process, one thread (cv2.setNumThreads(1), onnxruntime intra-op 1), the three ways taking
turns on each photo so the machine's noise hits them alike:
- "before": the job until issue 27: cv2.FaceDetectorYN (tests/yunet_cv2.py) at the 440k pass, and
  the classifier called once per partition (here: per 64 photos) on every crop of it;
- "440k": the detector in onnxruntime (maskbatch.models.yunet_onnx) at the same 440k pass, the
  classifier per photo in calls of at most CLASSIFY_BATCH crops;
- "640k": the same at the tuned mode's pass now (detect.TUNED_PASS).
decode = reading.load_photo; detect = the tuned mode's detect_faces (gamma, resize, forward, post-
processing, box conversion); classify = crop + resize + preprocess + onnxruntime. What the job adds
around them (Parquet parts, Dask) is in bench_predict's whole-job numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import yunet_cv2  # noqa: E402  (the reference: cv2.FaceDetectorYN)
from common import data_dir, table  # noqa: E402

from maskbatch.config import DetectorConfig  # noqa: E402
from maskbatch.models import detect, yunet  # noqa: E402
from maskbatch.models.classifier import Classifier, fit_crop, preprocess, read_model  # noqa: E402
from maskbatch.photos import pixels, reading  # noqa: E402
from maskbatch.pipeline import keep_faces  # noqa: E402

PARTITION = 64


class Cv2Yunet:
    """cv2.FaceDetectorYN with the product detector's forward(image, size, threshold)."""

    def __init__(self, path: Path) -> None:
        self.net = yunet_cv2.create(path)

    def forward(self, image: np.ndarray, size: tuple[int, int], threshold: float) -> np.ndarray:
        return yunet_cv2.forward(self.net, image, size, threshold)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["medical-mask", "voc-masks"])
    parser.add_argument("--photos", type=int, default=200)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    classifier = Classifier(*read_model())
    tuned = detect.MODES["tuned"]
    detect.MODES["before"] = dataclasses.replace(
        tuned, name="before", scan=dataclasses.replace(tuned.scan, area=440_000, max_upscale=2.0))
    detect.MODES["440k"] = dataclasses.replace(detect.MODES["before"], name="440k")
    cv_net = Cv2Yunet(yunet.model_path("tuned"))
    ways = ["before", "440k", "tuned"]
    rows = []
    for name in args.sets:
        folder = data_dir() / name / "images"
        paths = sorted(folder.iterdir())[:args.photos]
        ms = {w: {"decode": [], "detect": [], "classify": []} for w in ways}
        faces = dict.fromkeys(ways, 0)
        pending: list[np.ndarray] = []
        for i, path in enumerate(paths):
            for way in ways:
                started = time.perf_counter()
                image = reading.load_photo(str(path)).image
                decoded = time.perf_counter()
                found = keep_faces(_detect_cv2(image, cv_net) if way == "before"
                                   else detect.detect_faces(image, DetectorConfig(mode=way)), 5)
                detected = time.perf_counter()
                crops = [fit_crop(pixels.crop(image, tuple(int(v) for v in b[:4])),
                                  classifier.input_size) for b in found]
                if way == "before":  # the crops wait for the partition's one call
                    pending += crops
                    if (i + 1) % PARTITION == 0 or i + 1 == len(paths):
                        classifier.predict_batch(preprocess(pending, classifier.input_size))
                        pending = []
                else:
                    classifier.mask_probability(crops)
                done = time.perf_counter()
                faces[way] += len(found)
                ms[way]["decode"].append(decoded - started)
                ms[way]["detect"].append(detected - decoded)
                ms[way]["classify"].append(done - detected)
        for way in ways:
            means = {k: 1000 * statistics.fmean(v) for k, v in ms[way].items()}
            rows.append([name, {"tuned": "640k"}.get(way, way), len(paths), faces[way],
                         means["decode"], means["detect"], means["classify"],
                         sum(means.values())])
    print("ms per photo (means; 'before' classifies per 64 photos, so its classify is a share)")
    print(table(["set", "way", "photos", "faces", "decode", "detect", "classify", "total"], rows))


def _detect_cv2(image: np.ndarray, net: Cv2Yunet) -> np.ndarray:
    """detect_faces of the 440k tuned pass with cv2.FaceDetectorYN in place of onnxruntime."""
    saved = yunet.load_yunet
    try:
        yunet.load_yunet = lambda _net="tuned": net  # type: ignore[assignment]
        return detect.detect_faces(image, DetectorConfig(mode="before"))
    finally:
        yunet.load_yunet = saved


if __name__ == "__main__":
    main()

"""What the evaluation's photo-resampling intervals cost, by evaluation size.

    python benchmarks/bench_intervals.py [--sizes 1000,10000,100000,700000]

Synthetic evaluations (5 faces a photo, one prediction a face, 90 % found, 80 % hits, random
ranking scores) through the call `maskbatch evaluate` makes, maskbatch.evaluation.intervals.photo_intervals,
at the number of resamples `evaluate` takes without --resamples. "seconds" is that call's wall
time, i.e. what the intervals add to an evaluation of that size (a --baseline run doubles it).
No sample data needed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from common import table  # noqa: E402

from maskbatch.config import CLASS_NAMES  # noqa: E402
from maskbatch.evaluation.intervals import default_resamples, photo_intervals  # noqa: E402

FACES_PER_PHOTO = 5


def synthetic(faces: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(truth, predictions, names) shaped like an Evaluation's tables."""
    rng = np.random.default_rng(seed)
    n_photos = max(1, faces // FACES_PER_PHOTO)
    names = [f"{i}.jpg" for i in range(n_photos)]
    photo = np.array(names)[rng.integers(0, n_photos, faces)]
    label = rng.choice(CLASS_NAMES, faces)
    truth = pd.DataFrame({"name": photo, "label": label, "found": rng.random(faces) < 0.9,
                          "pred_label": label})
    predictions = pd.DataFrame({"name": photo, "classname": label,
                                "status": np.where(rng.random(faces) < 0.8, "tp", "fp"),
                                "rank_score": rng.random(faces)})
    return truth, predictions, names


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000,700000",
                        help="faces per synthetic evaluation, comma-separated")
    args = parser.parse_args(argv)
    rows = []
    for faces in (int(s) for s in args.sizes.split(",")):
        truth, predictions, names = synthetic(faces)
        resamples = default_resamples(len(truth) + len(predictions))
        started = time.perf_counter()
        photo_intervals(truth, predictions, names, resamples)
        seconds = time.perf_counter() - started
        rows.append([f"{faces:,}", f"{len(names):,}", resamples,
                     round(1000 * seconds / resamples, 2), round(seconds, 2)])
    print(table(["faces", "photos", "default resamples", "ms per resample", "seconds"], rows))


if __name__ == "__main__":
    main()

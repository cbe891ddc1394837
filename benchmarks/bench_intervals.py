"""What the evaluation's photo-resampling intervals cost, by evaluation size.

    python benchmarks/bench_intervals.py [--sizes 1000,10000,100000,700000] [--rounds 5]

Synthetic evaluations (5 faces a photo, one prediction a face, 90 % found, 80 % hits, random
ranking scores) through the same code `maskbatch evaluate` runs: maskbatch.intervals. "ms per
resample" is the median over `--rounds` resamples of one evaluation (drawing the counts and
scoring); "default resamples" is what
`evaluate` takes without --resamples, and "seconds" their product (plus the setup), i.e. what the
intervals add to an evaluation of that size. No sample data needed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from common import table  # noqa: E402

from maskbatch import CLASS_NAMES  # noqa: E402
from maskbatch.intervals import _Rows, default_resamples  # noqa: E402

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
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    rows = []
    for faces in (int(s) for s in args.sizes.split(",")):
        truth, predictions, names = synthetic(faces)
        started = time.perf_counter()
        scored = _Rows(truth, predictions, names)
        setup = time.perf_counter() - started
        rng = np.random.default_rng(1)
        samples = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            scored.metrics(rng.multinomial(len(names), np.full(len(names), 1.0 / len(names))))
            samples.append(time.perf_counter() - started)
        per = statistics.median(samples)
        resamples = default_resamples(len(truth) + len(predictions))
        rows.append([f"{faces:,}", f"{len(names):,}", round(1000 * per, 2), resamples,
                     round(setup + resamples * per, 2)])
    print(table(["faces", "photos", "ms per resample", "default resamples", "seconds"], rows))


if __name__ == "__main__":
    main()

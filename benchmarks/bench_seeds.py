"""Seed-to-seed spread of the compact classifier, and the mean of the seeds (an ensemble).

    maskbatch extract ../shared/data/medical-mask --out /tmp/mb-crops-medical
    python benchmarks/bench_seeds.py /tmp/mb-crops-medical              # init seeds 0 1 2
    python benchmarks/bench_seeds.py /tmp/mb-crops-medical --seeds 1 2 --threads 1

Every model uses `maskbatch train`'s recipe (`fit_model`) on the same split (split seed 0); only the
initialisation / augmentation / shuffle seed changes (and, with --threads, TensorFlow's thread
count, which alone moves the result: op determinism holds for a fixed thread count). Each row's
threshold is its own best macro-F1 on the validation split, as `maskbatch train` picks it. Needs
the `train` extra; takes about 5-7 minutes per seed on 2 CPU cores. Results: docs/classifier.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("crops", help="an extract folder of medical-mask crops")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, help="TensorFlow intra-op threads (default: TF's)")
    args = parser.parse_args()
    if args.threads:
        os.environ["TF_NUM_INTRAOP_THREADS"] = os.environ["TF_NUM_INTEROP_THREADS"] = str(args.threads)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from maskbatch.train import data as tdata
    from maskbatch.train.architectures import INPUT_SIZES
    from maskbatch.train.fit import DEFAULT_EPOCHS, fit_model
    from maskbatch.train.metrics import choose_threshold, classification_report

    df, _ = tdata.drop_duplicates(tdata.load_crop_table(args.crops))
    train_mask, val_mask = tdata.split_train_val(df, seed=0)
    size = INPUT_SIZES["compact"]
    train, val = tdata.to_arrays(df[train_mask], size), tdata.to_arrays(df[val_mask], size)
    probs, rows = {}, []
    for seed in args.seeds:
        started = time.perf_counter()
        model, _ = fit_model("compact", train, val, epochs=DEFAULT_EPOCHS["compact"], seed=seed,
                             verbose=0)
        probs[f"seed {seed}"] = model.predict(val.x, verbose=0).reshape(-1)
        print(f"seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)
    probs[f"mean of {len(args.seeds)} seeds"] = np.mean(list(probs.values()), axis=0)
    for name, prob in probs.items():
        threshold = choose_threshold(val.y, prob)
        report = classification_report(val.y, prob, threshold)
        recall = report["per_class"]["face_no_mask"]["recall"]
        rows.append([name, f"{threshold:.2f}", f"{report['accuracy']:.3f}", f"{recall:.3f}",
                     "yes" if report["accuracy"] >= 0.97 and recall >= 0.93 else "no"])
    print(table(["model", "threshold", "validation accuracy", "face_no_mask recall",
                 "both targets (0.97 / 0.93)"], rows))


if __name__ == "__main__":
    main()

"""The whole notebook as one batch job: extract crops -> train -> predict -> evaluate.

    python jobs/full_pipeline.py DATASET_DIR WORK_DIR [--scheduler tcp://host:8786]

DATASET_DIR is a Kaggle-layout folder (images/, annotations/ or train.csv, submission.csv).
Training needs the train extra (TensorFlow); every other stage runs on the Dask cluster.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from maskbatch.cli import main


def run(dataset: str, work: str, scheduler: list[str]) -> int:
    work_dir = Path(work)
    steps = [
        ["extract", dataset, "--out", str(work_dir / "crops"), "--overwrite", *scheduler],
        ["train", str(work_dir / "crops"), "--out", str(work_dir / "model")],
        ["predict", str(Path(dataset) / "images"), "--out", str(work_dir / "predictions"),
         "--model", str(work_dir / "model"), "--overwrite", *scheduler],
        ["evaluate", "--truth", dataset, "--pred", str(work_dir / "predictions")],
    ]
    for step in steps:
        print("$ maskbatch " + " ".join(step), flush=True)
        code = main(step)
        if code:
            return code
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("work")
    parser.add_argument("--scheduler")
    args = parser.parse_args()
    sys.exit(run(args.dataset, args.work, ["--scheduler", args.scheduler] if args.scheduler else []))

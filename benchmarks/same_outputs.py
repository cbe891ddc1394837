"""Do two versions of maskbatch write the same files? Runs predict, extract and evaluate on the
sample sets with the maskbatch found on PYTHONPATH, then compares two such runs.

    PYTHONPATH=/path/to/old python benchmarks/same_outputs.py run /tmp/before
    PYTHONPATH=/path/to/new python benchmarks/same_outputs.py run /tmp/after
    python benchmarks/same_outputs.py compare /tmp/before /tmp/after

Files without timings are compared byte for byte (detections.parquet, submission.csv, the COCO
files, every crops shard); tables and JSON that hold timings (images.parquet, manifest.parquet,
metrics.json) are compared with their timing fields (and metrics.json's own folder names) left
out. Prints one line per file and exits
1 on any difference.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

DATA = Path(os.environ.get("MASKBATCH_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SETS = {"medical-mask": "train.csv", "voc-masks": "annotations"}
BYTES = ["detections.parquet", "submission.csv", "detections.coco.json", "images.coco.json"]
TIMED_TABLES = {"images.parquet": "seconds", "manifest.parquet": "seconds"}
TIMED_KEYS = {"seconds", "wall_seconds", "images_per_second"}
PATH_KEYS = {"out", "pred"}  # metrics.json names the folders it read and wrote


def maskbatch(*args: str) -> None:
    command = [sys.executable, "-m", "maskbatch.cli", *args]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def run(root: Path) -> None:
    for name, truth in SETS.items():
        images = DATA / name / "images"
        pred = root / "predict" / name
        maskbatch("predict", str(images), "--out", str(pred), "--overwrite", "--no-progress",
                  "--workers", "2")
        maskbatch("evaluate", "--truth", str(DATA / name / truth), "--pred", str(pred),
                  "--out", str(root / "evaluate" / name), "--resamples", "50")
        maskbatch("extract", str(DATA / name), "--out", str(root / "extract" / name),
                  "--overwrite", "--no-progress", "--workers", "2")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _untimed(value: object) -> object:
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if k not in TIMED_KEYS | PATH_KEYS}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def _same(a: Path, b: Path) -> bool:
    if a.name in TIMED_TABLES:
        drop = TIMED_TABLES[a.name]
        return pd.read_parquet(a).drop(columns=drop).equals(pd.read_parquet(b).drop(columns=drop))
    if a.name == "metrics.json":
        return _untimed(json.loads(a.read_text())) == _untimed(json.loads(b.read_text()))
    return _sha(a) == _sha(b)


def files_to_compare(root: Path) -> list[Path]:
    names = [*BYTES, *TIMED_TABLES, "metrics.json"]
    found = [p for p in root.rglob("*") if p.is_file()
             and (p.name in names or (p.parent.name == "crops" and p.suffix == ".parquet"))]
    return sorted(p.relative_to(root) for p in found)


def compare(a: Path, b: Path) -> int:
    left, right = files_to_compare(a), files_to_compare(b)
    differ = 0
    for rel in sorted(set(left) | set(right)):
        if rel not in left or rel not in right:
            print(f"only in {'the first' if rel in left else 'the second'}: {rel}")
            differ += 1
            continue
        same = _same(a / rel, b / rel)
        differ += not same
        print(f"{'same' if same else 'DIFFERENT'}  {rel}")
    print(f"{len(set(left) | set(right)) - differ} same, {differ} different")
    return 1 if differ else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "run":
        run(Path(sys.argv[2]))
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        sys.exit(compare(Path(sys.argv[2]), Path(sys.argv[3])))
    else:
        sys.exit(__doc__)

"""Extraction throughput (images/s) with 1 and 2 worker processes, and crops per class per dataset.

    python benchmarks/bench_extract.py [--datasets medical-mask voc-masks crops]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir, table  # noqa: E402

from maskbatch.config import (  # noqa: E402
    MASK,
    NO_MASK,
    ClusterConfig,  # noqa: E402
)
from maskbatch.jobs.extract import extract  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["medical-mask", "voc-masks", "crops"])
    args = parser.parse_args()
    data = data_dir()
    tmp = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    rows = []
    for name in args.datasets:
        rates, result = {}, None
        for workers in (1, 2):
            result = extract(str(data / name), str(tmp / f"{name}-{workers}"),
                             cluster_config=ClusterConfig(workers=workers, partition_size=32,
                                                          progress=False))
            rates[workers] = len(result.manifest) / result.seconds
        counts = next(iter(result.counts.values()))
        m = result.manifest
        rows.append([name, len(m), int((m.status == "ok").sum()), int((m.status != "ok").sum()),
                     counts.get(MASK, 0), counts.get(NO_MASK, 0), result.duplicates,
                     f"{rates[1]:.0f}", f"{rates[2]:.0f}", f"{rates[2] / rates[1]:.2f}"])
    print(table(["dataset", "images", "ok", "skipped/failed", "face_with_mask crops",
                 "face_no_mask crops", "duplicate crops", "images/s 1 worker",
                 "images/s 2 workers", "speed-up"], rows))


if __name__ == "__main__":
    main()

"""What the per-photo budget costs: reading and decoding real photos with and without it.

    python benchmarks/bench_read.py [--photos 120] [--rounds 3]

"plain" is what a worker did before the budget (open, read, cv2.imdecode); "budget" is
reading.load_photo: stat and regular-file checks, capped read, header size check with Pillow, and
the read+decode handed to a helper thread that the caller waits for (the time budget). CPU time
of the whole process is the number to compare: on a shared machine the wall time mostly measures
the wait for a free core.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from common import data_dir, table  # noqa: E402

from maskbatch.config import InputLimits  # noqa: E402
from maskbatch.photos import reading


def plain(path: str) -> np.ndarray:
    with open(path, "rb") as f:
        return cv2.imdecode(np.frombuffer(f.read(), np.uint8), cv2.IMREAD_COLOR)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    paths = [str(p) for p in sorted((data_dir() / "medical-mask" / "images").iterdir())]
    paths = paths[: args.photos]
    no_thread = InputLimits(read_timeout=float("inf"))
    ways = {
        "plain (open + imdecode)": plain,
        "budget, no watchdog thread": lambda p: reading.load_photo(p, no_thread),
        "budget (load_photo)": lambda p: reading.load_photo(p),
    }
    wall: dict[str, list[float]] = {name: [] for name in ways}
    cpu: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):  # interleaved, so that a noisy neighbour hits every way alike
        for path in paths:
            for name, way in ways.items():
                started, cpu_started = time.perf_counter(), time.process_time()
                way(path)
                cpu[name].append(time.process_time() - cpu_started)
                wall[name].append(time.perf_counter() - started)
    base = statistics.mean(cpu["plain (open + imdecode)"])
    rows = [[name, 1000 * statistics.mean(cpu[name]), statistics.mean(cpu[name]) / base,
             1000 * statistics.median(wall[name])] for name in ways]
    print(f"{len(paths)} photos of medical-mask x {args.rounds} rounds, per photo")
    print(table(["read + decode", "CPU ms (mean)", "CPU vs plain", "wall ms (median)"], rows))


if __name__ == "__main__":
    main()

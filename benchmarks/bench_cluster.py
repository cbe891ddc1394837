"""Wall time of `maskbatch predict` on a real cluster: 1 vs 2 `dask worker` processes.

    python benchmarks/bench_cluster.py [--images DIR]

Starts `dask scheduler` and `dask worker --nthreads 1 --no-nanny` processes on 127.0.0.1, runs the
CLI against them (a separate client process, like a user would), and reports the scaling efficiency
= (T1 / T2) / 2.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DASK, data_dir, free_port, table  # noqa: E402


def run_on_cluster(images: str, workers: int, out: str) -> tuple[float, float]:
    from distributed import Client

    address = f"tcp://127.0.0.1:{free_port()}"
    procs = [subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port",
                               address.rsplit(":", 1)[1], "--no-dashboard"],
                              stderr=subprocess.DEVNULL)]
    try:
        for _ in range(workers):
            procs.append(subprocess.Popen([DASK, "worker", address, "--nthreads", "1",
                                           "--no-nanny", "--no-dashboard", "--host", "127.0.0.1"],
                                          stderr=subprocess.DEVNULL))
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(workers, timeout=60)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "maskbatch.cli", "predict", images, "--out", out,
                        "--scheduler", address, "--no-progress"], check=True,
                       stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        return wall, json.loads((Path(out) / "summary.json").read_text())["seconds"]
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", help="photo folder (default: medical-mask/images, 762 photos)")
    args = parser.parse_args()
    images = args.images or str(data_dir() / "medical-mask" / "images")
    tmp = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    n = len(list(Path(images).iterdir()))
    results = {w: run_on_cluster(images, w, str(tmp / f"w{w}")) for w in (1, 2)}
    rows = [[w, n, f"{wall:.1f}", f"{proc:.1f}", f"{n / proc:.1f}"]
            for w, (wall, proc) in results.items()]
    print(table(["workers", "images", "client wall s", "processing s", "images/s"], rows))
    t1, t2 = results[1][1], results[2][1]
    print(f"\nspeed-up {t1 / t2:.2f}x, scaling efficiency {(t1 / t2) / 2:.0%} "
          "(processing time; 2 cores)")


if __name__ == "__main__":
    main()

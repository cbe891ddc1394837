"""The job's hand-written window (runtime/window.run_partitions) against Dask's own queuing.

    python benchmarks/bench_window.py [--photos 200000 1000000] [--task-ms 50] [--repeat 3]

Both submit the same stream of partitions of (index, (name, path)) pairs, of the size the job
chooses for the cluster (window.choose_partition_size), to a fresh `dask scheduler` with 2
single-threaded `dask worker --no-nanny` processes on 127.0.0.1, from a separate driver process:

- window: the job's run_partitions (3 tasks per worker thread in flight, each refill one small
  bag, results handed back as they land);
- dask: every partition as one bag (window.partition_bag), `client.compute(bag.to_delayed())`
  at once, results taken with `as_completed`: what reaches the workers is left to the
  scheduler's queuing (distributed.scheduler.worker-saturation, default 1.1).

The work is a sleep of --task-ms per task (what is measured is the submission, not the photos).
Reported per run: wall seconds, seconds to the first result, the driver's peak RSS and the
scheduler's (VmHWM from /proc), the median of --repeat runs each.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DASK, free_port, table  # noqa: E402


def work(items: list, seconds: float) -> int:
    time.sleep(seconds)
    return len(items)


def drive(address: str, strategy: str, photos: int, task_s: float) -> dict:
    """One run in this (driver) process; what it measured."""
    from distributed import Client, as_completed

    from maskbatch.runtime import window

    pairs = ((i, (f"{i:08d}.jpg", f"/photos/{i:08d}.jpg")) for i in range(photos))
    with Client(address, timeout="30s") as client:
        client.wait_for_workers(2, timeout=60)
        size = window.choose_partition_size(photos, window.total_threads(client))
        parts = window.contiguous_partitions(pairs, size)
        started = time.perf_counter()
        first: list[float] = []
        done = 0

        def landed(part: list, result: int) -> None:
            nonlocal done
            if not first:
                first.append(time.perf_counter() - started)
            done += result

        if strategy == "window":
            stats = window.run_partitions(client, parts, work, landed, progress=False,
                                          label="bench", seconds=task_s)
            tasks = stats.tasks
        else:
            every = list(parts)
            bag = window.partition_bag(every).map_partitions(work, seconds=task_s)
            futures = client.compute(bag.to_delayed())
            tasks = len(futures)
            del bag
            for future in as_completed(futures):
                landed([], future.result())
                future.release()
            del futures
        wall = time.perf_counter() - started
    assert done == photos, (done, photos)
    return {"wall": wall, "first": first[0], "tasks": tasks, "partition": size,
            "driver_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one_run(strategy: str, photos: int, task_s: float) -> dict:
    address = f"tcp://127.0.0.1:{free_port()}"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    scheduler = subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port",
                                  address.rsplit(":", 1)[1], "--no-dashboard"], **quiet)
    workers = [subprocess.Popen([DASK, "worker", address, "--host", "127.0.0.1", "--nthreads",
                                 "1", "--no-nanny", "--no-dashboard"], **quiet) for _ in range(2)]
    try:
        out = subprocess.run([sys.executable, __file__, "--drive", address, strategy,
                              str(photos), str(task_s)], capture_output=True, text=True,
                             check=True, timeout=3600)
        got = json.loads(out.stdout.strip().splitlines()[-1])
        got["scheduler_mb"] = peak_mb(scheduler.pid)
        return got
    finally:
        for proc in [*workers, scheduler]:
            proc.terminate()
        for proc in [*workers, scheduler]:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--drive":
        address, strategy, photos, task_s = sys.argv[2:6]
        print(json.dumps(drive(address, strategy, int(photos), float(task_s))))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, nargs="+", default=[200_000, 1_000_000])
    parser.add_argument("--task-ms", type=float, default=50.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for photos in args.photos:
        runs: dict[str, list[dict]] = {"window": [], "dask": []}
        for _ in range(args.repeat):  # interleaved: both see the same load
            for strategy in runs:
                runs[strategy].append(one_run(strategy, photos, args.task_ms / 1000))
        for strategy, got in runs.items():
            med = {k: statistics.median(r[k] for r in got)
                   for k in ("wall", "first", "driver_mb", "scheduler_mb")}
            rows.append([strategy, photos, got[0]["partition"], got[0]["tasks"], med["wall"],
                         med["first"], med["driver_mb"], med["scheduler_mb"]])
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    print(table(["submission", "photos", "partition", "tasks", "wall s", "first result s",
                 "driver peak MB", "scheduler peak MB"], rows))


if __name__ == "__main__":
    main()

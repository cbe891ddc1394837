"""How the job's cost grows with the input: 10k to 1M photos, and many workers on one driver.

    python benchmarks/bench_scale.py [--real 10000 100000] [--noop 1000000]
                                     [--resume 100000] [--many 16 --many-photos 20000]

Inputs are symlinks to one small JPEG the bench makes (a real photo shrunk to 96x64) in a temp
folder. Each run starts its own `dask scheduler` and `dask worker` processes on 127.0.0.1 and runs
`maskbatch predict` as a separate client process, like a user would, then reports:
images/s and whole-run time per photo; the driver's CPU seconds and peak RSS (wait4 on the
client process); the scheduler's peak RSS and CPU seconds (/proc); the final step's seconds; the
files written; tasks and partition size.

--real runs the real detector and classifier. --noop runs the same job path with workers started
with `--preload benchmarks/scale_noop.py` (every photo an `ok` row with 7 made-up faces, as the real
detector finds in the bench photo, not read), to push a million photos and seven million faces
through the driver, the scheduler and the final step on one machine. "final s" is the whole final
step: compaction into detections.parquet / images.parquet / submission.csv, the report's digest
and gallery, the COCO files. --resume kills a
no-op run once half its photos are committed and times `--resume` up to its first new task.
--many starts that many single-threaded no-op workers at a partition size of 16 to measure what
one task costs the driver and the scheduler, and from that how many cores one driver can feed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DASK, data_dir, free_port, table  # noqa: E402

NOOP = str(Path(__file__).resolve().with_name("scale_noop.py"))
# Today's whole-pipeline cost per photo on one core: bench_cluster.py, 1 worker, yunet, 762
# medical-mask photos at 27.9 images/s (docs/benchmarks.md).
PHOTO_SECONDS = 1 / 27.9


def make_inputs(folder: Path, n: int) -> None:
    import cv2

    folder.mkdir(parents=True)
    photo = cv2.imread(str(data_dir() / "medical-mask" / "images" / "0001.jpg"))
    jpeg = folder.parent / f"one-{folder.name}.jpg"
    cv2.imwrite(str(jpeg), cv2.resize(photo, (96, 64), interpolation=cv2.INTER_AREA))
    for i in range(n):
        os.symlink(jpeg, folder / f"{i:07d}.jpg")


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Cluster:
    """A scheduler and `workers` single-threaded workers (with nannies), each its own process."""

    def __init__(self, workers: int, noop: bool) -> None:
        from maskbatch.runtime.cluster import worker_malloc

        self.address = f"tcp://127.0.0.1:{free_port()}"
        env = dict(os.environ, OMP_NUM_THREADS="1")
        self.scheduler = subprocess.Popen(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", self.address.rsplit(":", 1)[1],
             "--no-dashboard"], stderr=subprocess.DEVNULL, env=env)
        malloc = worker_malloc()
        if malloc:
            env["LD_PRELOAD"] = malloc
        extra = ["--preload", NOOP] if noop else []
        self.workers = subprocess.Popen(
            [DASK, "worker", self.address, "--nworkers", str(workers), "--nthreads", "1",
             "--no-dashboard", "--host", "127.0.0.1", "--memory-limit", "0", *extra],
            stderr=subprocess.DEVNULL, env=env)
        from distributed import Client

        with Client(self.address, timeout="60s") as client:
            client.wait_for_workers(workers, timeout=600)
        self.cpu_before = proc_cpu(self.scheduler.pid)

    def close(self) -> tuple[float, float]:
        """(scheduler CPU seconds since start-up, scheduler peak RSS MB)."""
        cpu, peak = proc_cpu(self.scheduler.pid) - self.cpu_before, proc_peak_mb(
            self.scheduler.pid)
        for proc in (self.workers, self.scheduler):
            proc.terminate()
        for proc in (self.workers, self.scheduler):
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        return cpu, peak


def committed(out: Path) -> int:
    from maskbatch.outputs.parts import CommitLog

    return sum(e["count"] for e in CommitLog(str(out)).entries())


def run_client(photos: Path, out: Path, address: str, extra: list[str] = (),
               kill_at: int | None = None) -> dict:
    """One `maskbatch predict` client process; its wall time, CPU seconds and peak RSS."""
    cmd = [sys.executable, "-m", "maskbatch.cli", "predict", str(photos), "--out", str(out),
           "--scheduler", address, "--no-progress", *extra]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if kill_at is not None:
        while committed(out) < kill_at:
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if kill_at is None and status != 0:
        raise SystemExit(f"predict failed: {proc.stderr.read().decode()[-2000:]}")
    proc.stderr.close()
    summary = json.loads((out / "summary.json").read_text()) if kill_at is None else {}
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime,
            "rss_mb": usage.ru_maxrss / 1024, "summary": summary,
            "files": sum(len(f) for _, _, f in os.walk(out))}


def one_run(tmp: Path, n: int, workers: int, noop: bool, extra: list[str] = ()) -> dict:
    photos = tmp / f"photos-{n}"
    if not photos.exists():
        make_inputs(photos, n)
    out = tmp / f"out-{n}-{workers}-{'noop' if noop else 'real'}"
    cluster = Cluster(workers, noop)
    try:
        run = run_client(photos, out, cluster.address, extra)
    finally:
        run["sched_cpu"], run["sched_mb"] = cluster.close()
    shutil.rmtree(out)
    return run


def resume_run(tmp: Path, n: int, workers: int) -> dict:
    photos = tmp / f"photos-{n}"
    if not photos.exists():
        make_inputs(photos, n)
    out = tmp / f"out-resume-{n}"
    cluster = Cluster(workers, noop=True)
    try:
        run_client(photos, out, cluster.address, kill_at=n // 2)
        done = committed(out)
        run = run_client(photos, out, cluster.address, ["--resume"])
        run["done_before"] = done
    finally:
        cluster.close()
    shutil.rmtree(out)
    return run


def row(label: str, n: int, workers: int, run: dict) -> list:
    s = run["summary"]
    return [label, n, workers, s["partition_size"], s["tasks"], round(n / run["wall"], 1),
            round(1000 * run["wall"] / n, 3), round(s["final_seconds"], 2),
            round(100 * s["final_seconds"] / run["wall"], 1), round(run["cpu"], 1),
            round(run["rss_mb"]), round(run["sched_cpu"], 1), round(run["sched_mb"]),
            run["files"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--noop", type=int, nargs="*", default=[1_000_000])
    parser.add_argument("--resume", type=int, default=100_000, help="0: skip")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--many", type=int, default=16, help="workers of the per-task run; 0: skip")
    parser.add_argument("--many-photos", type=int, default=20_000)
    parser.add_argument("--tmp", help="folder for inputs and outputs (default: a temp folder)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=args.tmp))
    headers = ["run", "photos", "workers", "partition", "tasks", "images/s", "ms/photo whole run",
               "final s", "final % of run", "driver CPU s", "driver peak MB",
               "scheduler CPU s", "scheduler peak MB", "files written"]
    rows = []
    try:
        for n in args.real:
            rows.append(row("real", n, args.workers, one_run(tmp, n, args.workers, False)))
            print(table(headers, rows[-1:]), flush=True)
        for n in args.noop:
            rows.append(row("no-op", n, args.workers, one_run(tmp, n, args.workers, True)))
            print(table(headers, rows[-1:]), flush=True)
        print(table(headers, rows))
        if args.resume:
            run = resume_run(tmp, args.resume, args.workers)
            s = run["summary"]
            print(f"\n--resume of a no-op run of {args.resume} photos killed with "
                  f"{run['done_before']} committed: first new task {s['startup_seconds']} s after "
                  f"the call ({s['processed_now']} processed, whole resume {run['wall']:.1f} s)")
        if args.many:
            n = args.many_photos
            run = one_run(tmp, n, args.many, True, ["--partition-size", "16"])
            s = run["summary"]
            tasks = s["tasks"]
            per_task_driver = s["driver_cpu_seconds"] / tasks
            per_task_sched = run["sched_cpu"] / tasks
            print()
            print(table(headers, [row("no-op, many workers", n, args.many, run)]))
            print(f"\nper task: driver {1000 * per_task_driver:.2f} ms CPU (client process while "
                  f"tasks ran), scheduler {1000 * per_task_sched:.2f} ms CPU (whole run)")
            bottleneck = max(per_task_driver, per_task_sched)
            for size in (16, 125, 1024):
                cores = size * PHOTO_SECONDS / bottleneck
                print(f"partition {size:>5}: a task is {size * PHOTO_SECONDS:.2f} s of work at "
                      f"{1000 * PHOTO_SECONDS:.0f} ms/photo; one driver feeds ~{cores:,.0f} cores")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

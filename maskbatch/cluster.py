"""The only Dask module: a client (local cluster or existing scheduler), the worker plugin that
loads models once per worker, and running a stream of partitions in a bounded window of tasks,
with results handed back as they land and partitions that kill workers narrowed down.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ctypes.util
import functools
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import dask
from distributed import Client, LocalCluster, WorkerPlugin, as_completed
from distributed.scheduler import KilledWorker
from distributed.security import Security

from maskbatch.config import ClusterConfig
from maskbatch.errors import MaskbatchError

# Dask's nanny exports MALLOC_TRIM_THRESHOLD_=65536 to its worker processes. Any explicit glibc
# malloc setting switches off glibc's dynamic mmap threshold, so every res10 forward maps and
# unmaps its multi-MB buffers again: measured 17-19 % slower per image (docs/benchmarks.md).
# Local clusters leave glibc's defaults; deploy/dask.yaml does the same in the image. A value the
# user exports in the environment still wins.
NANNY_ENV = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}

# glibc's malloc fragments under this job's mix of buffer sizes (photos of every size, the
# detector's layer buffers): a worker's peak memory crept up 1.2x over ten times the input.
# tcmalloc (gperftools; Debian/Ubuntu package libtcmalloc-minimal4) kept it flat at the same speed
# (docs/benchmarks.md, memory), so local workers preload it when it is installed.
WORKER_MALLOC_ENV = "MASKBATCH_WORKER_MALLOC"


def worker_malloc() -> str | None:
    """The malloc library local worker processes preload, or None for the C library's own.

    $MASKBATCH_WORKER_MALLOC picks one: a library's path, or "system" for the C library's malloc.
    Unset: tcmalloc where it is installed (Linux only; LD_PRELOAD is how it gets in).
    """
    choice = os.environ.get(WORKER_MALLOC_ENV, "").strip()
    if choice == "system":
        return None
    if choice:
        if not os.path.isfile(choice):
            raise MaskbatchError(f"${WORKER_MALLOC_ENV}={choice}: no such file (give the path of a "
                                 "malloc library such as libtcmalloc_minimal.so.4, or 'system')")
        return choice
    if not sys.platform.startswith("linux"):
        return None
    return ctypes.util.find_library("tcmalloc_minimal")


@contextlib.contextmanager
def _preload_in_workers(library: str | None) -> Iterator[None]:
    """Nannies started inside this block give their worker processes `library` via LD_PRELOAD.

    The nanny exports its pre-spawn variables into this process's environment too; LD_PRELOAD is
    put back afterwards so the driver's own subprocesses do not inherit it.
    """
    before = os.environ.get("LD_PRELOAD")
    if not library or library in (before or ""):
        yield
        return
    preload = f"{library} {before}" if before else library
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ.LD_PRELOAD": preload}):
            yield
    finally:
        if before is None:
            os.environ.pop("LD_PRELOAD", None)
        else:
            os.environ["LD_PRELOAD"] = before


def _forget_half_started_clusters(before: set[int]) -> None:
    """Ctrl-C while a LocalCluster starts leaves one that never finished starting; Dask's exit hook
    would then try to close it and print an AssertionError traceback. Its worker processes end
    by themselves once the driver is gone."""
    from distributed.deploy.spec import SpecCluster

    with contextlib.suppress(Exception):
        for cluster in list(SpecCluster._instances):
            if id(cluster) not in before:
                SpecCluster._instances.discard(cluster)


def dask_setup(worker: Any = None) -> None:
    """Preloaded into local worker processes (LocalCluster(preload=[this module])): ignore Ctrl-C.

    Ctrl-C in a terminal reaches every process of the group, and each local worker printed its own
    KeyboardInterrupt traceback (about 70 lines). The driver alone handles it: it closes the
    cluster, which ends the workers. Workers the user starts (`dask worker`) are left alone.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A task's error reaches the driver with the task; what a local worker would still log is the
    # noise of a driver closing the cluster under it (heartbeats to a scheduler already gone).
    logging.getLogger("distributed").setLevel(logging.CRITICAL)


# A local cluster's scheduler gives a task this many retries after the worker running it died
# (Dask's default: 3). One retry survives a worker lost for another reason; a photo that kills
# its worker is then narrowed down quickly (run_partitions). A remote scheduler keeps its own.
LOCAL_ALLOWED_FAILURES = 1


def scheduler_address(config: ClusterConfig) -> str | None:
    """--scheduler, else $DASK_SCHEDULER_ADDRESS, else None (start a local cluster)."""
    return config.scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS") or None


@contextlib.contextmanager
def dask_client(config: ClusterConfig) -> Iterator[Client]:
    """A connected Client: to an existing scheduler, or to a LocalCluster of worker processes."""
    address = scheduler_address(config)
    if address:
        # without flags, Security() takes TLS settings from dask config (distributed.comm.tls.*)
        security = config.security or Security()
        if address.startswith("tls://") and not security.tls_client_cert:
            raise MaskbatchError(f"scheduler {address} uses TLS: give --tls-ca-file, --tls-cert and "
                                 "--tls-key (or set them in dask config distributed.comm.tls)")
        try:
            client = Client(address, security=security, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise MaskbatchError(f"cannot reach Dask scheduler at {address}: {exc}") from None
        with client:
            yield client
        return
    workers = config.workers or max(1, (os.cpu_count() or 1) // max(config.threads_per_worker, 1))
    extra: dict[str, Any] = {}
    if config.processes:
        extra["preload"] = [__name__]  # dask_setup below: the workers leave Ctrl-C to the driver
        # one library thread per Dask thread: onnxruntime and OpenCV must not oversubscribe
        extra["env"] = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                        "MKL_NUM_THREADS": "1"}
    preload = worker_malloc() if config.processes else None
    with _preload_in_workers(preload), dask.config.set(
            {**NANNY_ENV, "distributed.scheduler.allowed-failures": LOCAL_ALLOWED_FAILURES}):
        from distributed.deploy.spec import SpecCluster

        before = {id(c) for c in SpecCluster._instances}
        try:
            cluster = LocalCluster(
                n_workers=workers, threads_per_worker=config.threads_per_worker,
                processes=config.processes, dashboard_address=":0", silence_logs=logging.ERROR,
                **extra,
            )
        except KeyboardInterrupt:
            _forget_half_started_clusters(before)
            raise
        # a worker the nanny restarts later gets the same variables from the nanny itself
    # A worker that died is restarted by its nanny; LocalCluster closes the nanny for good when
    # the restart takes longer than lost-worker-timeout (15 s), which a loaded machine reaches
    # while a photo kills its workers again and again: the cluster would shrink to nothing.
    with dask.config.set({"distributed.deploy.lost-worker-timeout": "1h"}), cluster, \
            Client(cluster) as client:
        yield client


def dashboard(client: Client) -> str | None:
    with contextlib.suppress(Exception):
        return client.dashboard_link
    return None


def workers_lost(client: Client, since: float) -> int:
    """Worker processes the scheduler lost unexpectedly (killed, crashed, out of memory) since
    `since` (time.time()); Dask restarts them and reruns their tasks, the summary says so."""
    try:
        events = client.get_events("all")
    except Exception:  # an old or unreachable scheduler: nothing to report rather than a crash
        return 0
    return sum(1 for stamp, msg in events
               if stamp >= since and isinstance(msg, dict) and msg.get("action") == "remove-worker"
               and not msg.get("expected"))


class MaskbatchSetup(WorkerPlugin):
    """Runs once in every worker process: pins library threads and loads the classifier.

    The ONNX bytes travel inside the plugin (once per worker, not per task) and are
    checksum-verified on arrival; the detector weights come from the worker's own install.
    """

    def __init__(self, onnx_bytes: bytes | None = None, card: dict | None = None,
                 library_threads: int = 1) -> None:
        self.onnx_bytes = onnx_bytes
        self.card = card
        self.library_threads = library_threads
        sha = (card or {}).get("onnx_sha256", "none")[:12]
        self.name = f"maskbatch-setup-{sha}"

    def setup(self, worker: Any = None) -> None:
        import cv2

        cv2.setNumThreads(self.library_threads)
        if self.onnx_bytes is not None and self.card is not None:
            from maskbatch.classify import register_model

            register_model(self.onnx_bytes, self.card, threads=self.library_threads)


def install_plugin(client: Client, plugin: MaskbatchSetup) -> None:
    client.register_plugin(plugin, name=plugin.name)


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where there is nothing to trim: no glibc (macOS, musl), or a
    preloaded tcmalloc, which serves every malloc and hands freed memory back by itself."""
    try:
        if hasattr(ctypes.CDLL(None), "tc_malloc"):
            return None
        return getattr(ctypes.CDLL("libc.so.6"), "malloc_trim", None)
    except OSError:
        return None


# Partitions a worker process runs between two malloc_trim calls. Trimming after every partition
# kept memory lowest but cost about 6 % of the speed (freed pages are faulted in again); every 2nd
# or 8th cost about 1 % and held most of the gain (docs/benchmarks.md, memory).
TRIM_EVERY = 4
_partitions_run = 0


def _work_then_trim(items: Sequence, work: Callable[..., Any], **kwargs: Any) -> Any:
    """Run one partition; every TRIM_EVERY partitions, hand freed memory back to the OS.

    A task runs in a worker thread, whose glibc arena keeps freed detector and image buffers
    instead of returning them, so without malloc_trim a worker's resident memory creeps up
    partition after partition (docs/benchmarks.md, memory).
    """
    global _partitions_run
    try:
        return work(items, **kwargs)
    finally:
        _partitions_run += 1
        if _partitions_run % TRIM_EVERY == 0 and (trim := _malloc_trim()) is not None:
            trim(0)


# Partition size when none is given: enough tasks per worker thread that the last ones finish
# together (TASKS_PER_THREAD), never fewer photos than MIN_PARTITION (per-task overhead) nor more
# than MAX_PARTITION (a task stays seconds to tens of seconds; a lost worker loses little).
TASKS_PER_THREAD = 16
MIN_PARTITION, MAX_PARTITION = 16, 1024
# Tasks in flight per worker thread: enough that no thread waits for the driver, few enough that
# the driver's and the scheduler's memory depend on the cluster's size, not on the input's.
WINDOW_PER_THREAD = 3
# How often the submission loop asks the scheduler how many threads the cluster has now.
WINDOW_REFRESH_S = 5.0


def choose_partition_size(n_items: int, threads: int) -> int:
    """Items per task for a run of `n_items` on `threads` worker threads."""
    per_task = -(-max(n_items, 1) // (max(threads, 1) * TASKS_PER_THREAD))
    return max(MIN_PARTITION, min(MAX_PARTITION, per_task))


def total_threads(client: Client) -> int:
    """Worker threads the cluster has now (at least 1, so a window is never empty)."""
    try:
        return max(1, sum(client.nthreads().values()))
    except Exception:  # a scheduler that cannot answer now: keep going with one
        return 1


def contiguous_partitions(items: Iterable[tuple[int, Any]], size: int
                          ) -> Iterator[list[tuple[int, Any]]]:
    """Cut (index, item) pairs into lists of at most `size`, each a run of consecutive indices.

    A gap in the indices (work finished by an earlier run) starts a new partition, so every
    partition covers one contiguous range of the input.
    """
    size = max(1, size)
    current: list[tuple[int, Any]] = []
    for pair in items:
        if current and (len(current) == size or pair[0] != current[-1][0] + 1):
            yield current
            current = []
        current.append(pair)
    if current:
        yield current


@dataclass
class RunStats:
    """What run_partitions did: tasks, worker deaths it saw, photos it isolated."""

    tasks: int = 0  # tasks submitted, narrowed retries included
    completed: int = 0
    killed: int = 0  # tasks that ended in KilledWorker (workers died running them)
    poisoned: int = 0  # single items given up on (on_poison called)
    max_in_flight: int = 0
    first_submit: float | None = None  # time.perf_counter() of the first submission
    cpu_seconds: float = 0.0  # this process's CPU time (all threads) while the tasks ran


def run_partitions(client: Client, partitions: Iterable[Sequence], work: Callable[..., Any],
                   on_result: Callable[[Sequence, Any], None], *,
                   on_poison: Callable[[Sequence, int], Any] | None = None,
                   total_items: int | None = None, window_per_thread: int = WINDOW_PER_THREAD,
                   progress: bool = True, label: str = "", **kwargs: Any) -> RunStats:
    """Run `work(partition, **kwargs)` on the cluster for each partition of a stream.

    At most `window_per_thread` tasks per worker thread are in flight: the next partition is
    taken from `partitions` (an iterator is fine) only when one finishes, so the driver and the
    scheduler hold a window of the input, never all of it. Each result is handed to
    `on_result(partition, result)` on the driver as soon as it lands, then released.

    Dask reruns the tasks of a worker that dies. A task whose workers keep dying (KilledWorker,
    after the scheduler's allowed-failures) is narrowed when `on_poison` is given: its halves run
    again, one suspect at a time, down to single items; a single item that still kills its
    workers goes to `on_poison([item], attempts)`, whose result is handed to `on_result` like any
    other. Without `on_poison` the KilledWorker is raised.
    """
    stats = RunStats()
    cpu_started = time.process_time()
    source = iter(partitions)
    bar = ProgressBar(total_items or 0, label, enabled=progress)
    pending = as_completed()
    in_flight: dict[Any, tuple[Sequence, bool]] = {}  # future -> (partition, is a suspect)
    suspects: collections.deque[Sequence] = collections.deque()
    wrapped = functools.partial(_work_then_trim, work=work)
    threads, checked = total_threads(client), time.monotonic()
    exhausted = False

    def submit(part: Sequence, suspect: bool) -> None:
        future = client.submit(wrapped, part, pure=False, **kwargs)
        in_flight[future] = (part, suspect)
        pending.add(future)
        stats.tasks += 1
        stats.max_in_flight = max(stats.max_in_flight, len(in_flight))
        if stats.first_submit is None:
            stats.first_submit = time.perf_counter()

    def fill() -> None:
        nonlocal exhausted, threads, checked
        if time.monotonic() - checked > WINDOW_REFRESH_S:
            threads, checked = total_threads(client), time.monotonic()
        window = max(2, window_per_thread * threads)
        if suspects and not any(s for _, s in in_flight.values()):
            submit(suspects.popleft(), True)  # one suspect at a time: a death names its culprit
        while not exhausted and len(in_flight) < window:
            part = next(source, None)
            if part is None:
                exhausted = True
            elif len(part):
                submit(part, False)

    try:
        fill()
        while in_flight:
            future = next(pending)
            part, _ = in_flight.pop(future)
            try:
                # raises what the task raised; a result lost with its worker is computed again
                result = future.result()
            except KilledWorker as killed:
                if on_poison is None:
                    raise
                stats.killed += 1
                if len(part) > 1:
                    half = len(part) // 2
                    suspects.extendleft([part[half:], part[:half]])
                else:
                    stats.poisoned += 1
                    on_result(part, on_poison(part, killed.allowed_failures + 1))
                    bar.advance(len(part))
            else:
                future.release()
                on_result(part, result)
                stats.completed += 1
                bar.advance(len(part))
            del future
            fill()
    finally:
        bar.close()
        for future in in_flight:
            future.cancel()
        stats.cpu_seconds = time.process_time() - cpu_started
    return stats


class ProgressBar:
    """A one-line text progress bar on stderr (a no-op when disabled or not a terminal in CI)."""

    def __init__(self, total: int, label: str, enabled: bool = True, unit: str = "photos"
                 ) -> None:
        self.unit = unit
        self.total, self.label, self.done = total, label, 0
        self.enabled = enabled and total > 0
        self.started = time.perf_counter()
        self._draw()

    def advance(self, n: int = 1) -> None:
        before = self.done
        self.done += n
        self._draw(before)

    def _draw(self, before: int = -1) -> None:
        if not self.enabled:
            return
        width = 30
        filled = int(width * self.done / self.total)
        elapsed = time.perf_counter() - self.started
        end = "\r" if sys.stderr.isatty() else "\n"
        tenth = max(1, self.total // 10)
        if not sys.stderr.isatty() and self.done not in (0, self.total) and (
                self.done // tenth == before // tenth):
            return  # in a log, one line per tenth
        sys.stderr.write(f"{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{self.done}/{self.total} {self.unit}, {elapsed:.0f}s{end}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and sys.stderr.isatty():
            sys.stderr.write("\n")


def call_each(client: Client, jobs: Sequence[tuple[Callable[..., Any], tuple]]) -> list[Any]:
    """Run each (function, args) job as one task on the workers; a job that fails gives b""
    (small side work, e.g. the run report's pictures, which workers draw from the photos)."""
    futures = [client.submit(fn, *args, pure=False) for fn, args in jobs]
    out = []
    for future in futures:
        try:
            out.append(future.result())
        except Exception:  # noqa: BLE001 - one missing picture is not worth failing the run
            out.append(b"")
    return out

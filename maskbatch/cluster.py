"""The only Dask module: a client (local cluster or existing scheduler), the worker plugin that
loads models once per worker, and running a bag's partitions with results handed back as they land.
"""

from __future__ import annotations

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
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import dask
import dask.bag as db
from distributed import Client, LocalCluster, WorkerPlugin, as_completed
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
    with _preload_in_workers(preload), dask.config.set(NANNY_ENV):
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
    with cluster, Client(cluster) as client:
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


def run_partitions(client: Client, items: Sequence, partition_size: int,
                   work: Callable[..., Any], on_result: Callable[[int, Any], None],
                   progress: bool = True, label: str = "", **kwargs: Any) -> None:
    """Map `work(partition_items, **kwargs)` over a Dask bag of `items`.

    Each partition's result is handed to `on_result(partition_index, result)` on the driver as soon
    as it finishes (so results can be committed one by one). Dask reruns the partitions of a worker
    that dies.
    """
    if not items:
        return
    bag = db.from_sequence(list(items), partition_size=max(1, partition_size))
    parts = bag.map_partitions(functools.partial(_work_then_trim, work=work), **kwargs).to_delayed()
    futures = client.compute(parts)
    index = {f.key: i for i, f in enumerate(futures)}
    bar = ProgressBar(len(futures), label, enabled=progress)
    try:
        for future in as_completed(futures):
            on_result(index[future.key], future.result())
            future.release()
            bar.advance()
    finally:
        bar.close()
        for f in futures:
            f.cancel()


def partition_ranges(n: int, partition_size: int) -> list[range]:
    """The index ranges db.from_sequence makes for `n` items at `partition_size`."""
    size = max(1, partition_size)
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


class ProgressBar:
    """A one-line text progress bar on stderr (a no-op when disabled or not a terminal in CI)."""

    def __init__(self, total: int, label: str, enabled: bool = True) -> None:
        self.total, self.label, self.done = total, label, 0
        self.enabled = enabled and total > 0
        self.started = time.perf_counter()
        self._draw()

    def advance(self) -> None:
        self.done += 1
        self._draw()

    def _draw(self) -> None:
        if not self.enabled:
            return
        width = 30
        filled = int(width * self.done / self.total)
        elapsed = time.perf_counter() - self.started
        end = "\r" if sys.stderr.isatty() else "\n"
        if not sys.stderr.isatty() and self.done not in (0, self.total) and self.done % max(
                1, self.total // 10):
            return
        sys.stderr.write(f"{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{self.done}/{self.total} partitions, {elapsed:.0f}s{end}")
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

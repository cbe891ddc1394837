"""The Dask client: a local cluster of worker processes or an existing scheduler, and the worker
plugin that loads models once per worker."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

import cv2
import dask
from distributed import Client, LocalCluster, WorkerPlugin
from distributed.client import FutureCancelledError
from distributed.deploy.spec import SpecCluster
from distributed.security import Security

from maskbatch.config import ClusterConfig, setting
from maskbatch.errors import MaskbatchError
from maskbatch.models.classifier import register_model
from maskbatch.runtime import dask_config

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
    choice = (setting(WORKER_MALLOC_ENV) or "").strip()
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
        _set_environ("LD_PRELOAD", before)


def _set_environ(name: str, value: str | None) -> None:
    """os.environ[name] = value, or no such variable when value is None."""
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _forget_half_started_clusters(before: set[int]) -> None:
    """Ctrl-C while a LocalCluster starts leaves one that never finished starting; Dask's exit hook
    would then try to close it and print an AssertionError traceback. Its worker processes end
    by themselves once the driver is gone."""

    with contextlib.suppress(Exception):
        for cluster in list(SpecCluster._instances):
            if id(cluster) not in before:
                SpecCluster._instances.discard(cluster)


def dask_setup(worker: Any = None) -> None:
    """Preloaded into local worker processes (LocalCluster(preload=[this module])): ignore Ctrl-C.

    Ctrl-C in a terminal reaches every process of the group, and each local worker printed its own
    KeyboardInterrupt traceback (about 70 lines). The driver alone handles it: it closes the
    cluster, which ends the workers. Workers the user starts (`dask worker`) are left alone.
    The workers' logging is Dask's (LocalCluster's silence_logs, or the user's Dask config): their
    memory warnings reach the terminal. Dropped: what a worker logs once it is closing (the noise
    of a driver closing the cluster under it: tasks cancelled, heartbeats to a scheduler already
    gone, which Ctrl-C printed above the driver's one line) and a failed task's traceback.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if worker is not None:
        quiet = _WhileRunning(worker)
        for name in ("distributed", ""):
            for handler in logging.getLogger(name).handlers:
                handler.addFilter(quiet)


class _WhileRunning(logging.Filter):
    """Passes a worker's log records until the worker starts closing, except a task's "Compute
    Failed" traceback: the task's error reaches the driver with its result, which says it in one
    line (a full --out, a lost file system)."""

    def __init__(self, worker: Any) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Compute Failed"):
            return False
        status = getattr(getattr(self.worker, "status", None), "name", "")
        return status not in _CLOSING


_CLOSING = {"closing", "closing_gracefully", "closed", "stopping", "stopped"}


# A local cluster's scheduler gives a task this many retries after the worker running it died
# (Dask's default: 3). One retry survives a worker lost for another reason; a photo that kills
# its worker is then narrowed down quickly (run_partitions). A remote scheduler keeps its own, and
# so does a local one where the user set distributed.scheduler.allowed-failures in Dask config.
LOCAL_ALLOWED_FAILURES = 1
# The local cluster's dashboard listens on this machine only (any free port): it shows file names
# and runs no authentication. To share it, tunnel it (ssh -L) or run your own scheduler with
# `dask scheduler --dashboard-address 0.0.0.0:8787` and pass --scheduler (README).
DASHBOARD_ADDRESS = "127.0.0.1:0"
# What a local cluster's Dask config gets from the job, where the user set nothing of their own
# (deploy/README.md, "What the job sets in Dask config"): the retries above, and a nanny that
# keeps restarting a worker a photo killed (LocalCluster closes a nanny for good once a restart
# takes longer than lost-worker-timeout, 15 s, which a loaded machine reaches while a photo kills
# its workers again and again: the cluster would shrink to nothing).
LOCAL_DEFAULTS = {"distributed.scheduler.allowed-failures": LOCAL_ALLOWED_FAILURES,
                  "distributed.deploy.lost-worker-timeout": "1h"}


@contextlib.contextmanager
def dask_client(config: ClusterConfig) -> Iterator[Client]:
    """A connected Client, in this order: the user's active client (`with Client(cluster):`),
    never closed here; the scheduler `config` names (the jobs resolve it from the flag or the
    environment: maskbatch.config.resolved_cluster), or its --scheduler-file; the scheduler named
    in Dask config (`scheduler-address`); else a LocalCluster of processes, closed afterwards."""
    user = dask_config.active_client()
    if user is not None and _is_users(user, config):
        yield user
        return
    address = config.scheduler or dask_config.configured_scheduler()
    if address or config.scheduler_file:
        with _remote_client(address, config) as client:
            yield client
        return
    with _local_client(config) as client:
        yield client


def _is_users(client: Client, config: ClusterConfig) -> bool:
    """Whether the job runs on the user's active client: no other scheduler is named, or it is
    the one that client is connected to."""
    if config.scheduler_file:
        return False
    if not config.scheduler:
        return True
    with contextlib.suppress(Exception):
        return client.scheduler.address == config.scheduler
    return False


@contextlib.contextmanager
def _remote_client(address: str | None, config: ClusterConfig) -> Iterator[Client]:
    """A client of a running scheduler (its address, or --scheduler-file), closed afterwards."""
    # without flags, Security() takes TLS settings from dask config (distributed.comm.tls.*)
    security = config.security or Security()
    where = address or f"--scheduler-file {config.scheduler_file}"
    if address and address.startswith("tls://") and not security.tls_client_cert:
        raise MaskbatchError(f"scheduler {address} uses TLS: give --tls-ca-file, --tls-cert and "
                             "--tls-key (or set them in dask config distributed.comm.tls)")
    if config.scheduler_file and not os.path.isfile(config.scheduler_file):
        raise MaskbatchError(f"--scheduler-file {config.scheduler_file}: no such file (start "
                             f"`dask scheduler --scheduler-file {config.scheduler_file}` first)")
    try:
        if config.scheduler_file:
            client = Client(scheduler_file=config.scheduler_file, security=security,
                            timeout="20s")
        else:
            client = Client(address, security=security, timeout="20s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise MaskbatchError(f"cannot reach Dask scheduler at {where}: {exc}") from None
    with client, _comm_closed_unlogged():
        try:
            yield client
        except Exception as exc:
            if isinstance(exc, MaskbatchError) or not _scheduler_lost(client, exc):
                raise
            _silence_dask_logs()  # the client's reconnect attempts while it closes
            raise MaskbatchError(f"lost the Dask scheduler at {where} mid-run "
                                 f"({type(exc).__name__}); finished partitions are kept: run "
                                 "again with --resume once it is back") from None


@contextlib.contextmanager
def _local_client(config: ClusterConfig) -> Iterator[Client]:
    """A LocalCluster of worker processes (threads with processes=False) and its client."""
    workers = config.workers or max(1, (os.cpu_count() or 1) // max(config.threads_per_worker, 1))
    extra: dict[str, Any] = {}
    if config.processes:
        extra["preload"] = [__name__]  # dask_setup above: the workers leave Ctrl-C to the driver
        # one library thread per Dask thread: onnxruntime and OpenCV must not oversubscribe
        extra["env"] = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                        "MKL_NUM_THREADS": "1"}
    preload = worker_malloc() if config.processes else None
    # Dask's own default level (WARNING: memory warnings show), or the user's logging config
    silence = False if dask_config.user_logging() else logging.WARNING
    chosen = dask_config.defaults_where_unset({**NANNY_ENV, **LOCAL_DEFAULTS})
    driver_preload = os.environ.get("LD_PRELOAD")
    with _preload_in_workers(preload), dask.config.set(chosen):
        before = {id(c) for c in SpecCluster._instances}
        try:
            cluster = LocalCluster(
                n_workers=workers, threads_per_worker=config.threads_per_worker,
                processes=config.processes, dashboard_address=DASHBOARD_ADDRESS,
                silence_logs=silence, **extra,
            )
        except KeyboardInterrupt:
            _forget_half_started_clusters(before)
            raise
    # a worker the nanny restarts later gets the same variables from the nanny itself, which
    # exports them into this process again: put the driver's LD_PRELOAD back once the cluster is
    # closed (a program it starts later must not run with tcmalloc preloaded)
    try:
        with dask.config.set(chosen), cluster, Client(cluster) as client:
            yield client
    finally:
        _set_environ("LD_PRELOAD", driver_preload)


@contextlib.contextmanager
def _comm_closed_unlogged() -> Iterator[None]:
    """The client's "Batched Comm Closed" record (INFO, with a traceback) dropped while the job
    runs: when the scheduler is lost its sender can notice before the job does, and the
    traceback came above the one line that says so."""
    sender = logging.getLogger("distributed.batched")
    quiet = _NotCommClosed()
    sender.addFilter(quiet)
    try:
        yield
    finally:
        sender.removeFilter(quiet)


class _NotCommClosed(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Batched Comm Closed")


def _silence_dask_logs() -> None:
    for name in [*logging.root.manager.loggerDict, "distributed", "tornado", "asyncio"]:
        if name.split(".")[0] in ("distributed", "tornado", "asyncio"):
            logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def _scheduler_lost(client: Client, exc: BaseException) -> bool:
    """Whether `exc` came from losing the scheduler's connection (its futures cancelled, its comm
    closed) rather than from the job itself."""
    if isinstance(exc, FutureCancelledError):  # Dask says why it cancelled the future
        return exc.reason == "scheduler-connection-lost" or client.status != "running"
    if "scheduler-connection-lost" in str(exc) or "scheduler connection" in str(exc).lower():
        return True
    with contextlib.suppress(Exception):
        return client.status != "running"
    return True


def tls_security(ca_file: str, cert: str, key: str) -> Security:
    """Client TLS settings for a scheduler at tls://: the CA to trust and this client's own pair."""
    return Security(tls_ca_file=ca_file, tls_client_cert=cert, tls_client_key=key,
                    require_encryption=True)


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

        cv2.setNumThreads(self.library_threads)
        if self.onnx_bytes is not None and self.card is not None:

            register_model(self.onnx_bytes, self.card, threads=self.library_threads)


def install_plugin(client: Client, plugin: MaskbatchSetup) -> None:
    client.register_plugin(plugin, name=plugin.name)



def wait_for_workers(client: Client, config: ClusterConfig) -> None:
    """Wait until the cluster has `config.min_workers` workers (at least one), so that the
    partition size is chosen for the threads that do the work, at most config.worker_timeout
    seconds; then one MaskbatchError saying how many joined."""
    wanted = config.min_workers or 1
    try:
        if len(client.nthreads()) >= wanted:
            return
        client.wait_for_workers(wanted, timeout=config.worker_timeout)
    except TimeoutError:  # distributed's WorkerStartTimeoutError
        joined = len(client.nthreads())
        raise MaskbatchError(
            f"{joined} of {wanted} Dask worker(s) joined the scheduler within "
            f"{config.worker_timeout:g} s: start workers (dask worker SCHEDULER), or lower "
            "--min-workers") from None

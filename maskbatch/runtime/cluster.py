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
from distributed.deploy.spec import SpecCluster
from distributed.security import Security

from maskbatch.config import ClusterConfig, setting
from maskbatch.errors import MaskbatchError
from maskbatch.models.classifier import register_model

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
        if before is None:
            os.environ.pop("LD_PRELOAD", None)
        else:
            os.environ["LD_PRELOAD"] = before


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
# The local cluster's dashboard listens on this machine only (any free port): it shows file names
# and runs no authentication. To share it, tunnel it (ssh -L) or run your own scheduler with
# `dask scheduler --dashboard-address 0.0.0.0:8787` and pass --scheduler (README).
DASHBOARD_ADDRESS = "127.0.0.1:0"


@contextlib.contextmanager
def dask_client(config: ClusterConfig) -> Iterator[Client]:
    """A connected Client: to the scheduler `config` names (the jobs resolve it from the flag or
    the environment: maskbatch.config.resolved_cluster), else to a LocalCluster of processes."""
    address = config.scheduler
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
            try:
                yield client
            except Exception as exc:
                if isinstance(exc, MaskbatchError) or not _scheduler_lost(client, exc):
                    raise
                _silence_dask_logs()  # the client's reconnect attempts while it closes
                raise MaskbatchError(f"lost the Dask scheduler at {address} mid-run "
                                     f"({type(exc).__name__}); finished partitions are kept: run "
                                     "again with --resume once it is back") from None
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

        before = {id(c) for c in SpecCluster._instances}
        try:
            cluster = LocalCluster(
                n_workers=workers, threads_per_worker=config.threads_per_worker,
                processes=config.processes, dashboard_address=DASHBOARD_ADDRESS, silence_logs=logging.ERROR,
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


def _silence_dask_logs() -> None:
    for name in [*logging.root.manager.loggerDict, "distributed", "tornado", "asyncio"]:
        if name.split(".")[0] in ("distributed", "tornado", "asyncio"):
            logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def _scheduler_lost(client: Client, exc: BaseException) -> bool:
    """Whether `exc` came from losing the scheduler's connection (its futures cancelled, its comm
    closed) rather than from the job itself."""
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


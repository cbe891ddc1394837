"""A job's time on the cluster, as one object the jobs call without touching a Dask `Client`.

    with JobSession(cluster_config, setup) as session:   # a client: local cluster or scheduler
        stats = session.run(items, work, commit, ...)    # partitions in a bounded window
        pictures = session.call_each(jobs)               # small side work on the workers

The session opens the client (maskbatch.runtime.cluster), prints the dashboard link, installs
the worker plugin, cuts the items into partitions sized for the cluster and runs them through
maskbatch.runtime.window; the jobs (maskbatch.jobs) only say what to run and what to keep.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from maskbatch.config import ClusterConfig
from maskbatch.runtime import cluster, probe, window


class JobSession:
    """A connected client for one job; use it as a context manager."""

    def __init__(self, config: ClusterConfig, setup: cluster.MaskbatchSetup | None = None
                 ) -> None:
        self.config = config
        self.setup = setup
        self.dashboard: str | None = None
        self._client: Any = None
        self._stack = contextlib.ExitStack()
        self._opened = time.time()

    def __enter__(self) -> JobSession:
        self._opened = time.time()
        self._client = self._stack.enter_context(cluster.dask_client(self.config))
        self.dashboard = cluster.dashboard(self._client)
        if self.dashboard:  # printed with --no-progress too: the dashboard is how to watch a run
            print(f"Dask dashboard: {self.dashboard}", flush=True)
        try:
            cluster.wait_for_workers(self._client, self.config)
            if self.setup is not None:
                cluster.install_plugin(self._client, self.setup)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> bool | None:
        return self._stack.__exit__(*exc_info)

    def partition_size(self, work_units: int) -> int:
        """Items per task: the configured size, else one chosen for `work_units` units of work
        on the threads the cluster has now."""
        return self.config.partition_size or window.choose_partition_size(
            work_units, window.total_threads(self._client))

    def run(self, items: Sequence[tuple[int, Any]], work: Callable[..., Any],
            on_result: Callable[[Sequence, Any], None], *, size: int,
            weight: Callable[[Any], int] | None = None,
            on_poison: Callable[[Sequence, int], Any] | None = None, label: str = "",
            **kwargs: Any) -> window.RunStats:
        """`work(partition, **kwargs)` over (index, item) pairs cut into contiguous partitions of
        `size` units (window.contiguous_partitions), each result handed to `on_result` as it
        lands (window.run_partitions)."""
        return window.run_partitions(
            self._client, window.contiguous_partitions(iter(items), size, weight=weight), work,
            on_result, on_poison=on_poison, total_items=len(items),
            progress=self.config.progress, label=label, **kwargs)

    def call_each(self, jobs: Sequence[tuple[Callable[..., Any], tuple]]) -> list[Any]:
        """Each (function, args) as one task on the workers; a job that fails gives b""."""
        return window.call_each(self._client, jobs)

    def check_writable(self, out_dir: str) -> None:
        """Every worker can write under `out_dir` (they commit the parts themselves), else one
        MaskbatchError naming the fix; checked before any work."""
        probe.check_workers_write(self._client, out_dir)

    def workers_lost(self) -> int:
        """Worker processes lost unexpectedly since the session opened."""
        return cluster.workers_lost(self._client, self._opened)

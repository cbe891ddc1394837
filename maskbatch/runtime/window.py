"""Running a stream of partitions as Dask bag partitions in a bounded window: results handed back
as they land, partitions that kill workers narrowed down to the one input that does.

The job's parallel layer is a `dask.bag.Bag`: each refill of the window turns the partitions it
takes from the stream into a small bag (one bag partition per partition, `partition_bag`), maps
the Dask-free partition function over it (`Bag.map_partitions`) and computes each of its
partitions through the client (`Bag.to_delayed` + `Client.compute`). The graph in the driver and
the scheduler is therefore never bigger than the window, whatever the length of the stream.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import functools
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import dask.bag as db
from distributed import Client, as_completed
from distributed.scheduler import KilledWorker


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


def contiguous_partitions(items: Iterable[tuple[int, Any]], size: int,
                          weight: Callable[[Any], int] | None = None
                          ) -> Iterator[list[tuple[int, Any]]]:
    """Cut (index, item) pairs into lists of at most `size`, each a run of consecutive indices.

    A gap in the indices (work finished by an earlier run) starts a new partition, so every
    partition covers one contiguous range of the input. With `weight` (item -> units of work,
    e.g. the frames a video segment samples), a partition holds items worth at most `size`
    units (at least one item): a video's segments spread over tasks like that many photos.
    """
    size = max(1, size)
    current: list[tuple[int, Any]] = []
    load = 0
    for pair in items:
        units = 1 if weight is None else max(1, weight(pair[1]))
        if current and (load + units > size or pair[0] != current[-1][0] + 1):
            yield current
            current, load = [], 0
        current.append(pair)
        load += units
    if current:
        yield current


def partition_bag(partitions: Sequence[Sequence]) -> db.Bag:
    """A dask.bag.Bag with exactly one bag partition per given partition, in order (each bag
    partition the list of that partition's elements, e.g. (index, item) pairs).

    Built as db.from_sequence builds its bags (a graph of list literals), but with partition
    boundaries kept as given and a random name: no hashing of a thousand photo paths per task.
    """
    name = f"partitions-{uuid.uuid4().hex}"
    graph = {(name, i): list(part) for i, part in enumerate(partitions)}
    return db.Bag(graph, name, len(graph))


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


class _Flight:
    """The tasks in flight of one run_partitions call, refilled from the stream of partitions."""

    def __init__(self, client: Client, source: Iterator[Sequence], work: Callable[..., Any],
                 kwargs: dict, token: str, window_per_thread: int, stats: RunStats) -> None:
        self.client, self.source, self.work, self.kwargs = client, source, work, kwargs
        self.token, self.window_per_thread, self.stats = token, window_per_thread, stats
        self.pending = as_completed()
        self.tasks: dict[Any, tuple[Sequence, bool]] = {}  # future -> (partition, is a suspect)
        self.suspects: collections.deque[Sequence] = collections.deque()
        self.threads, self.checked = total_threads(client), time.monotonic()
        self.exhausted = False

    def submit(self, batch: list[tuple[Sequence, bool]]) -> None:
        """One small bag for the partitions of this refill; each bag partition one task."""
        if not batch:
            return
        bag = partition_bag([part for part, _ in batch]).map_partitions(
            self.work, token=self.token, **self.kwargs)
        futures = self.client.compute(bag.to_delayed())  # one graph per refill, one future a task
        for (part, suspect), future in zip(batch, futures, strict=True):
            self.tasks[future] = (part, suspect)
            self.pending.add(future)
            self.stats.tasks += 1
            self.stats.max_in_flight = max(self.stats.max_in_flight, len(self.tasks))
            if self.stats.first_submit is None:
                self.stats.first_submit = time.perf_counter()

    def fill(self) -> None:
        """Submit partitions until the window is full (a suspect alone: its death names it)."""
        if time.monotonic() - self.checked > WINDOW_REFRESH_S:
            self.threads, self.checked = total_threads(self.client), time.monotonic()
        window = max(2, self.window_per_thread * self.threads)
        batch: list[tuple[Sequence, bool]] = []
        if self.suspects and not any(s for _, s in self.tasks.values()):
            batch.append((self.suspects.popleft(), True))
        while not self.exhausted and len(self.tasks) + len(batch) < window:
            part = next(self.source, None)
            if part is None:
                self.exhausted = True
            elif len(part):
                batch.append((part, False))
        self.submit(batch)

    def next_done(self) -> tuple[Sequence, Any]:
        """The next task to finish: (its partition, its future)."""
        future = next(self.pending)
        part, _ = self.tasks.pop(future)
        return part, future

    def narrow(self, part: Sequence) -> None:
        """Run the halves of a partition that killed its workers again, one suspect at a time."""
        half = len(part) // 2
        self.suspects.extendleft([part[half:], part[:half]])

    def cancel(self) -> None:
        for future in self.tasks:
            future.cancel()


def run_partitions(client: Client, partitions: Iterable[Sequence], work: Callable[..., Any],
                   on_result: Callable[[Sequence, Any], None], *,
                   on_poison: Callable[[Sequence, int], Any] | None = None,
                   total_items: int | None = None, window_per_thread: int = WINDOW_PER_THREAD,
                   progress: bool = True, label: str = "", **kwargs: Any) -> RunStats:
    """Run `work(partition, **kwargs)` on the cluster for each partition of a stream, as the
    partitions of dask bags (`Bag.map_partitions`), computed through `client`.

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
    bar = ProgressBar(total_items or 0, label, enabled=progress)
    # keys unique to this call (as client.submit(pure=False) made them): two runs on one
    # scheduler never share a task, whatever their inputs
    token = f"{label or getattr(work, '__name__', 'work')}-{uuid.uuid4().hex[:8]}"
    flight = _Flight(client, iter(partitions), functools.partial(_work_then_trim, work=work),
                     kwargs, token, window_per_thread, stats)
    try:
        flight.fill()
        while flight.tasks:
            part, future = flight.next_done()
            try:
                # raises what the task raised; a result lost with its worker is computed again
                result = future.result()
            except KilledWorker as killed:
                if on_poison is None:
                    raise
                stats.killed += 1
                if len(part) > 1:
                    flight.narrow(part)
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
            flight.fill()
    finally:
        bar.close()
        flight.cancel()
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


"""A cache of one object per thread and argument tuple, for OpenCV detectors.

A ``cv2.FaceDetectorYN`` or ``cv2.dnn.Net`` keeps per-call state (its input size, its input blob),
so two threads of one Dask worker (``--threads-per-worker 2``) sharing one crash the process. Each
thread therefore gets its own, loaded on its first call; the weights are small (res10 10 MB, YuNet
0.2 MB) and a worker has few threads.
"""

from __future__ import annotations

import functools
import itertools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def per_thread(fn: Callable[..., T]) -> Callable[..., T]:
    """`fn` memoised per thread and positional arguments; ``cache_clear()`` empties every
    thread's cache (each thread drops its entries on its next call)."""
    local = threading.local()
    generation = itertools.count(1)
    current = [next(generation)]

    @functools.wraps(fn)
    def cached(*args: Any) -> T:
        if getattr(local, "generation", None) != current[0]:
            local.cache, local.generation = {}, current[0]
        if args not in local.cache:
            local.cache[args] = fn(*args)
        return local.cache[args]

    def cache_clear() -> None:
        current[0] = next(generation)

    cached.cache_clear = cache_clear  # type: ignore[attr-defined]
    return cached


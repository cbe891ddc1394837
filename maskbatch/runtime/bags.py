"""Dask bags for work that runs on the local machine's cores, without a cluster (evaluate's matching)."""

from __future__ import annotations

from collections.abc import Callable

import dask.bag as db


def map_chunks(fn: Callable[[list], list], chunks: list[list]) -> list[list]:
    """`fn` over each chunk, one bag partition per chunk, on Dask's local scheduler."""
    return db.from_sequence(chunks, npartitions=len(chunks)).map(fn).compute()

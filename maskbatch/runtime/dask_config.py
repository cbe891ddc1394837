"""What the user already told Dask: the active client, the scheduler named in Dask config, and the
settings they chose themselves (which the job never overrides).

maskbatch.config resolves maskbatch's own settings and imports no Dask; what Dask's own
configuration says (YAML files in ~/.config/dask or $DASK_CONFIG, DASK_* environment variables,
`dask.config.set`) is read here, when a job opens its client.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import dask
from distributed import Client, default_client

_UNSET = object()


def active_client() -> Client | None:
    """The client the user made current (`with Client(cluster):`, `Client(...)` in a notebook,
    `client.as_current()`), if it is still connected; None when there is none."""
    try:
        client = default_client()
    except ValueError:  # "No clients found"
        return None
    return client if client.status == "running" else None


def configured_scheduler() -> str | None:
    """The scheduler address in Dask config: `scheduler-address` (or `scheduler_address`) in a
    YAML file, $DASK_SCHEDULER_ADDRESS, or `dask.config.set(scheduler_address=...)`."""
    for key in ("scheduler-address", "scheduler_address"):
        value = dask.config.get(key, None)
        if value:
            return str(value)
    return None


@functools.lru_cache(maxsize=1)
def _defaults() -> dict:
    """Dask's and distributed's own defaults (their YAML files), without what the user set."""
    return dask.config.merge(*dask.config.defaults)


def user_set(key: str) -> bool:
    """Whether the user gave the Dask setting `key` (e.g. "distributed.scheduler.allowed-failures")
    a value of their own: in a YAML file or a DASK_* variable (dask.config.collect), or through
    `dask.config.set` (a value other than the default)."""
    with contextlib.suppress(Exception):
        if dask.config.get(key, _UNSET, config=dask.config.collect()) is not _UNSET:
            return True
    return dask.config.get(key, _UNSET) != dask.config.get(key, _UNSET, config=_defaults())


def defaults_where_unset(values: dict[str, Any]) -> dict[str, Any]:
    """`values` (Dask config key -> the job's choice) less the keys the user set themselves."""
    return {key: value for key, value in values.items() if not user_set(key)}


def user_logging() -> bool:
    """Whether the user configured Dask's logging (the `logging` section of Dask config) for the
    `distributed` loggers: then local workers log as they say, the job silences nothing."""
    section = dask.config.get("logging", {}, config=dask.config.collect()) or {}
    if not section:
        section = dask.config.get("logging", {}) or {}
        if section == (dask.config.get("logging", {}, config=_defaults()) or {}):
            return False
    if isinstance(section, dict) and "version" in section:  # a logging.config.dictConfig
        return True
    return any(str(name).split(".")[0] == "distributed" for name in section)

"""Settings a user may want to change, with the seed notebook's values as defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass

CROP_SIZE = 124  # the notebook's classifier input, and the size `extract` writes crops at


@dataclass(frozen=True)
class DetectorConfig:
    """How faces are found. `mode` picks a strategy from maskbatch.detect.MODES."""

    mode: str = "yunet"  # chosen in docs/detector-modes.md; "seed" = the notebook's detector
    confidence: float | None = None  # None: the mode's own tuned threshold
    gamma: float = 2.0  # applied to the detector's input only
    nms_iou: float = 0.3

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ClusterConfig:
    """Where the Dask work runs: an existing scheduler, or a local cluster of processes."""

    scheduler: str | None = None
    workers: int | None = None
    threads_per_worker: int = 1
    partition_size: int | None = None  # None: chosen for the run (cluster.choose_partition_size)
    security: object | None = None  # distributed.security.Security, for TLS clusters
    progress: bool = True
    processes: bool = True  # local cluster of processes; False = threads (memory:// tests)

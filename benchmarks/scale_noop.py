"""Dask worker preload for bench_scale.py: the job's per-partition work becomes a no-op.

    dask worker ADDR --preload benchmarks/scale_noop.py

Every photo gets an `ok` manifest row without being read; everything around it is the real job:
listing, bounded submission, the worker's part commit, the commit log, the final step. It lets one
machine push a million photos through the job's own path to measure the driver and the scheduler.
"""

from __future__ import annotations

import pandas as pd

from maskbatch import api
from maskbatch.output import DETECTION_COLUMNS, PREDICT_MANIFEST_COLUMNS


def noop_partition(items: list[tuple[str, str]], detector: object, model: object
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    manifest = pd.DataFrame([(name, path, "ok", "", 0, 0, 0, 0.0) for name, path in items],
                            columns=PREDICT_MANIFEST_COLUMNS)
    return pd.DataFrame(columns=DETECTION_COLUMNS), manifest


api.predict_partition = noop_partition

"""Dask worker preload for bench_scale.py: the job's per-partition work becomes a no-op.

    dask worker ADDR --preload benchmarks/scale_noop.py

Every photo gets an `ok` manifest row and FACES made-up face rows (7: what the real detector finds
in the bench's photo) without being read; everything around it is the real job: listing, bounded
submission, the worker's part commit, the commit log, the final step (compaction, report digest,
COCO files). It lets one machine push a million photos and seven million faces through the job's
own path to measure the driver and the scheduler.
"""

from __future__ import annotations

import pandas as pd

from maskbatch import tasks
from maskbatch.config import MASK, NO_MASK
from maskbatch.outputs.writers import DETECTION_COLUMNS, PREDICT_MANIFEST_COLUMNS

FACES = 7


def noop_partition(items: list[tuple[str, str]], detector: object, model: object,
                   limits: object = None) -> tuple[pd.DataFrame, pd.DataFrame, None]:
    manifest = pd.DataFrame([(name, path, "ok", "", FACES, 96, 64, 0.0, None, None)
                             for name, path in items], columns=PREDICT_MANIFEST_COLUMNS)
    rows = [(name, 4 + 12 * k, 10, 14 + 12 * k, 22, MASK if k % 2 else NO_MASK, 0.9 - 0.1 * k,
             0.1 * k, 96, 64, "0" * 64, None, None) for name, _ in items for k in range(FACES)]
    return pd.DataFrame(rows, columns=DETECTION_COLUMNS), manifest, None  # no video frames


tasks.predict_partition_frames = noop_partition

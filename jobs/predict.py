"""Run the batch prediction job against a Dask cluster (or a local one).

    python jobs/predict.py IMAGES --out OUT_DIR [--scheduler tcp://host:8786] [any predict flag]

Without --scheduler the job reads $DASK_SCHEDULER_ADDRESS (set by the Dask operator's DaskJob),
else it starts a local cluster. Same code path as `maskbatch predict`.
"""

import sys

from maskbatch.cli import main

if __name__ == "__main__":
    sys.exit(main(["predict", *sys.argv[1:]]))

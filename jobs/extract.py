"""Run face-crop extraction against a Dask cluster (or a local one).

    python jobs/extract.py DATASET --out CROPS_DIR [--scheduler tcp://host:8786] [any extract flag]

Same code path as `maskbatch extract`; workers read the images themselves through fsspec.
"""

import sys

from maskbatch.cli import main

if __name__ == "__main__":
    sys.exit(main(["extract", *sys.argv[1:]]))

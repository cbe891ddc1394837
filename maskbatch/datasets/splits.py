"""Fixed image-level train / validation splits of the labelled sets, committed as name lists.

Every quality number in the docs is measured on the validation photos of a split: no model was
trained, and no threshold or box fit tuned, on them. The lists live beside this module
(``splits/<dataset>.<part>.txt``, one image name a line) and were made once by :func:`make_split`
(seeded shuffle of the sorted labelled image names, VAL_FRACTION to validation); they are never
regenerated at run time, so adding photos to a dataset does not move old ones between parts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from maskbatch.errors import MaskbatchError

SPLITS_DIR = Path(__file__).with_name("splits")
PARTS = ("train", "val")
VAL_FRACTION = 0.2
SEED = 0


def make_split(names: Iterable[str], seed: int = SEED, val_fraction: float = VAL_FRACTION
               ) -> dict[str, list[str]]:
    """A seeded image-level split: {'train': [...], 'val': [...]}, each sorted."""
    ordered = np.array(sorted(set(names)), dtype=object)
    np.random.default_rng(seed).shuffle(ordered)
    n_val = int(round(len(ordered) * val_fraction))
    return {"train": sorted(ordered[n_val:].tolist()), "val": sorted(ordered[:n_val].tolist())}


def known_datasets() -> list[str]:
    """Dataset names that have a committed split (e.g. medical-mask, voc-masks)."""
    return sorted({p.name.split(".")[0] for p in SPLITS_DIR.glob("*.val.txt")})


def split_file(dataset: str, part: str) -> Path:
    return SPLITS_DIR / f"{dataset}.{part}.txt"


def split_names(dataset: str, part: str) -> list[str]:
    """The image names of one part ('train' or 'val') of a dataset's committed split."""
    if part not in PARTS:
        raise MaskbatchError(f"split part must be one of {', '.join(PARTS)}, not {part!r}")
    path = split_file(dataset, part)
    if not path.is_file():
        raise MaskbatchError(f"no committed split for dataset {dataset!r} (have: "
                             f"{', '.join(known_datasets()) or 'none'})")
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line]


def dataset_name(root: str) -> str:
    """The split name of a dataset folder: its last path component (medical-mask, voc-masks)."""
    return root.rstrip("/").rsplit("/", 1)[-1]


def select(names: Sequence[str], dataset: str, part: str | None) -> list[bool]:
    """Which of `names` belong to `part` of the dataset's split (all of them when part is None)."""
    if part is None:
        return [True] * len(names)
    keep = set(split_names(dataset, part))
    return [n in keep for n in names]


def in_part(records: Sequence, dataset: str, part: str | None) -> list:
    """The records (anything with a `.name`) of one part of a dataset's committed split;
    MaskbatchError when the dataset has none."""
    return [r for r, k in zip(records, select([r.name for r in records], dataset, part)) if k]


def write_split(dataset: str, names: Iterable[str], seed: int = SEED) -> dict[str, list[str]]:
    """Make and write a dataset's split lists (a one-off, used to create the committed files)."""
    split = make_split(names, seed)
    SPLITS_DIR.mkdir(exist_ok=True)
    for part, part_names in split.items():
        split_file(dataset, part).write_text("".join(n + "\n" for n in part_names), encoding="utf-8")
    return split

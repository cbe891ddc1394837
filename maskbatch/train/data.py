"""Training data: crops from an extract folder, de-duplicated, split 80/20 without leakage.

No TensorFlow here (the split and the arrays are plain numpy/pandas), so tests of the split run
without the training extra. The arrays fed to a model are exactly :func:`maskbatch.classify.preprocess`
output, the function inference uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from maskbatch import CLASS_NAMES, MASK, NO_MASK
from maskbatch.classify import preprocess
from maskbatch.errors import MaskbatchError

# Model target: 1 = face_with_mask, 0 = face_no_mask; the model outputs P(face_with_mask).
TARGET = {MASK: 1, NO_MASK: 0}
VAL_FRACTION = 0.2


def load_crop_table(crops_dir: str, limit: int | None = None, seed: int = 0) -> pd.DataFrame:
    """The labelled crops of an extract folder (face_with_mask / face_no_mask rows only).

    `limit` keeps a seeded random subset of whole source images (for quick runs and tests).
    """
    from maskbatch.output import read_crops

    df = read_crops(crops_dir)
    if df.empty:
        raise MaskbatchError(
            f"no crops in {crops_dir} (expected crops/part-*.parquet from `maskbatch extract`)"
        )
    df = df[df["label"].isin(CLASS_NAMES)].reset_index(drop=True)
    if df.empty:
        raise MaskbatchError(f"{crops_dir} has no crops labelled {' or '.join(CLASS_NAMES)}")
    if limit is not None and limit < len(df):
        df = _limit_by_image(df, limit, seed)
    return df


def _limit_by_image(df: pd.DataFrame, limit: int, seed: int) -> pd.DataFrame:
    """About `limit` crops, taking whole source images in a seeded order."""
    keys = (df["source_dataset"].astype(str) + "/" + df["source_image"].astype(str))
    images = np.array(sorted(keys.unique()))
    np.random.default_rng(seed).shuffle(images)
    sizes = keys.value_counts()
    chosen, total = [], 0
    for image in images:
        if total >= limit:
            break
        chosen.append(image)
        total += int(sizes[image])
    return df[keys.isin(set(chosen))].reset_index(drop=True)


def drop_duplicates(df: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Keep one crop per pixel_hash; drop every copy of a crop that carries conflicting labels."""
    labels_per_hash = df.groupby("pixel_hash")["label"].nunique()
    conflicting = set(labels_per_hash[labels_per_hash > 1].index)
    conflict_mask = df["pixel_hash"].isin(conflicting)
    kept = df[~conflict_mask]
    dup_mask = kept["pixel_hash"].duplicated(keep="first")
    out = kept[~dup_mask].reset_index(drop=True)
    return out, {
        "duplicates_dropped": int(dup_mask.sum()),
        "conflicting_label_crops_dropped": int(conflict_mask.sum()),
    }


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def leakage_groups(df: pd.DataFrame) -> np.ndarray:
    """A group id per crop: crops sharing a source image or a pixel_hash are in one group."""
    uf = _UnionFind(len(df))
    keys = {
        "image": (df["source_dataset"].astype(str) + "/" + df["source_image"].astype(str)).tolist(),
        "pixels": df["pixel_hash"].astype(str).tolist(),
    }
    for values in keys.values():
        first: dict[str, int] = {}
        for i, value in enumerate(values):
            if value in first:
                uf.union(first[value], i)
            else:
                first[value] = i
    return np.array([uf.find(i) for i in range(len(df))])


def split_train_val(df: pd.DataFrame, seed: int = 0, val_fraction: float = VAL_FRACTION
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (train, val) of a grouped, roughly class-stratified split.

    Whole groups (see :func:`leakage_groups`) go to one side. Groups are visited in a seeded
    order and put in validation while that keeps each class at or under `val_fraction` of its
    crops; everything else trains. So no source image and no pixel-identical crop is on both sides.
    """
    if len(df) < 2:
        raise MaskbatchError(f"need at least 2 crops to split, got {len(df)}")
    groups = leakage_groups(df)
    labels = df["label"].to_numpy()
    target = {c: val_fraction * int((labels == c).sum()) for c in CLASS_NAMES}
    in_val = {c: 0 for c in CLASS_NAMES}
    group_ids = np.unique(groups)
    np.random.default_rng(seed).shuffle(group_ids)
    members = {g: np.flatnonzero(groups == g) for g in group_ids}
    val = np.zeros(len(df), dtype=bool)
    for g in group_ids:
        counts = {c: int((labels[members[g]] == c).sum()) for c in CLASS_NAMES}
        if all(in_val[c] + counts[c] <= target[c] for c in CLASS_NAMES):
            val[members[g]] = True
            for c in CLASS_NAMES:
                in_val[c] += counts[c]
    if not val.any():  # tiny inputs: put the smallest group in validation
        smallest = min(group_ids, key=lambda g: len(members[g]))
        val[members[smallest]] = True
    if val.all():
        raise MaskbatchError("all crops come from one source image; cannot make a validation split")
    return ~val, val


def class_weights(y: np.ndarray) -> dict[int, float]:
    """Balanced weights (n / (2 * n_class)) so both classes weigh the same in the loss."""
    n = len(y)
    weights = {}
    for cls in (0, 1):
        count = int((y == cls).sum())
        weights[cls] = float(n / (2.0 * count)) if count else 1.0
    return weights


@dataclass
class Arrays:
    """Model-ready arrays of one side of the split, and the rows they came from."""

    x: np.ndarray  # preprocess() output, float32 NHWC in [0, 1], BGR
    y: np.ndarray  # int 1 = face_with_mask
    rows: pd.DataFrame


def to_arrays(df: pd.DataFrame, size: int) -> Arrays:
    """Decode the PNG crops and run the shared preprocess()."""
    from maskbatch.pipeline import decode_crop

    faces = [decode_crop(png) for png in df["image"]]
    x = preprocess(faces, size)
    y = df["label"].map(TARGET).to_numpy(dtype=np.int64)
    return Arrays(x, y, df.reset_index(drop=True))


def class_counts(df: pd.DataFrame) -> dict[str, int]:
    counts = df["label"].value_counts()
    return {c: int(counts.get(c, 0)) for c in CLASS_NAMES}

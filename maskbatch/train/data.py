"""Training data: crops from an extract folder, de-duplicated, split 80/20 without leakage.

No TensorFlow here (the split and the arrays are plain numpy/pandas), so tests of the split run
without the training extra. The arrays fed to a model are exactly
:func:`maskbatch.models.classifier.preprocess` output, the function inference uses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from maskbatch import files
from maskbatch.config import CLASS_NAMES, MASK, NO_MASK
from maskbatch.datasets import splits
from maskbatch.datasets.splits import dataset_name
from maskbatch.errors import MaskbatchError
from maskbatch.models.classifier import preprocess
from maskbatch.outputs.writers import read_crops
from maskbatch.pipeline import decode_crop

# Model target: 1 = face_with_mask, 0 = face_no_mask; the model outputs P(face_with_mask).
TARGET = {MASK: 1, NO_MASK: 0}


def targets(class_names: tuple[str, ...] = CLASS_NAMES) -> dict[str, int]:
    """Label -> model target: TARGET for two classes; for more (a softmax model) the class's
    index in `class_names`."""
    return dict(TARGET) if len(class_names) == 2 else {c: k for k, c in enumerate(class_names)}
VAL_FRACTION = 0.2


def load_crop_table(crops_dir: str, limit: int | None = None, seed: int = 0,
                    class_names: tuple[str, ...] = CLASS_NAMES) -> pd.DataFrame:
    """The labelled crops of an extract folder (rows labelled one of `class_names`).

    `limit` keeps a seeded random subset of whole source images (for quick runs and tests).
    """

    df = read_crops(crops_dir)
    if df.empty:
        raise MaskbatchError(
            f"no crops in {crops_dir} (expected crops/part-*.parquet from `maskbatch extract`)"
        )
    df = df[df["label"].isin(class_names)].reset_index(drop=True)
    if not df["label"].isin(class_names).any():
        raise MaskbatchError(f"{crops_dir} has no crops labelled {' or '.join(class_names)}")
    if limit is not None and limit < len(df):
        df = _limit_by_image(df, limit, seed)
    return df


def _limit_by_image(df: pd.DataFrame, limit: int, seed: int) -> pd.DataFrame:
    """About `limit` crops, taking whole source images in a seeded order."""
    keys = (df["source_dataset"].astype(str) + "/" + df["source_image"].astype(str))
    images = np.array(sorted(keys.unique()))
    # not default_rng(seed): that is the committed splits' stream, whose first images are the
    # val photos, so a subset would be all val
    np.random.default_rng((seed, 1)).shuffle(images)
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


def split_train_val(df: pd.DataFrame, seed: int = 0, val_fraction: float = VAL_FRACTION,
                    class_names: tuple[str, ...] = CLASS_NAMES) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (train, val) of a grouped, roughly class-stratified split.

    Whole groups (see :func:`leakage_groups`) go to one side. Groups are visited in a seeded
    order and put in validation while that keeps each class at or under `val_fraction` of its
    crops; everything else trains. So no source image and no pixel-identical crop is on both sides.
    """
    if len(df) < 2:
        raise MaskbatchError(f"need at least 2 crops to split, got {len(df)}")
    groups = leakage_groups(df)
    labels = df["label"].to_numpy()
    target = {c: val_fraction * int((labels == c).sum()) for c in class_names}
    in_val = {c: 0 for c in class_names}
    group_ids = np.unique(groups)
    np.random.default_rng(seed).shuffle(group_ids)
    members = {g: np.flatnonzero(groups == g) for g in group_ids}
    val = np.zeros(len(df), dtype=bool)
    for g in group_ids:
        counts = {c: int((labels[members[g]] == c).sum()) for c in class_names}
        if all(in_val[c] + counts[c] <= target[c] for c in class_names):
            val[members[g]] = True
            for c in class_names:
                in_val[c] += counts[c]
    if not val.any():  # tiny inputs: put the smallest group in validation
        smallest = min(group_ids, key=lambda g: len(members[g]))
        val[members[smallest]] = True
    if val.all():
        raise MaskbatchError("all crops come from one source image; cannot make a validation split")
    return ~val, val


def class_weights(y: np.ndarray, n_classes: int = 2) -> dict[int, float]:
    """Balanced weights (n / (n_classes * n_class)) so every class weighs the same in the loss."""
    n = len(y)
    weights = {}
    for cls in range(n_classes):
        count = int((y == cls).sum())
        weights[cls] = float(n / (float(n_classes) * count)) if count else 1.0
    return weights


@dataclass
class Arrays:
    """Model-ready arrays of one side of the split, and the rows they came from."""

    x: np.ndarray  # preprocess() output, float32 NHWC in [0, 1], BGR
    y: np.ndarray  # int 1 = face_with_mask (two classes), else the index in class_names
    rows: pd.DataFrame


def to_arrays(df: pd.DataFrame, size: int, class_names: tuple[str, ...] = CLASS_NAMES) -> Arrays:
    """Decode the PNG face crops and run the shared preprocess()."""

    df = df[df["label"].isin(class_names)]
    faces = [decode_crop(png) for png in df["image"]]
    x = preprocess(faces, size)
    y = df["label"].map(targets(class_names)).to_numpy(dtype=np.int64)
    return Arrays(x, y, df.reset_index(drop=True))


def class_counts(df: pd.DataFrame, class_names: tuple[str, ...] = CLASS_NAMES) -> dict[str, int]:
    counts = df["label"].value_counts()
    return {c: int(counts.get(c, 0)) for c in class_names}


# --------------------------------------------------------------------------- several sets

TUNE_FRACTION = 0.1  # of the train part: early stopping and the threshold, never the val part
PARTS = ("train", "tune", "val")


def set_name(crops_dir: str) -> str:
    """The name of the dataset an extract folder came from (run.json's dataset, last component),
    else the folder's own name. medical-mask and voc-masks have committed splits."""


    try:
        fs, path = files.filesystem(files.join(crops_dir, "run.json"))
        with fs.open(path, "rb") as f:
            dataset = json.loads(f.read().decode("utf-8")).get("dataset")
    except (OSError, ValueError, AttributeError):
        dataset = None
    return dataset_name(str(dataset or crops_dir))


def load_sets(crops_dirs: list[str], limit: int | None = None, seed: int = 0,
              class_names: tuple[str, ...] = CLASS_NAMES) -> tuple[pd.DataFrame, dict]:
    """The labelled crops of several extract folders, one table with a `set` column.

    Folders of the same dataset (e.g. its --split train and --split val extracts) are one set; a
    crop read twice is kept once. Rows are in a canonical order (set, crop_id) whatever the order
    of the folders, so the split and the training order do not depend on it. `limit` keeps about
    that many crops per set (whole source images, seeded).
    """
    frames, info = [], {}
    for crops_dir in crops_dirs:
        df = load_crop_table(crops_dir, class_names=class_names)
        name = set_name(crops_dir)
        frames.append(df.assign(set=name))
        info.setdefault(name, {"crops_dirs": []})["crops_dirs"].append(crops_dir)
    table = pd.concat(frames, ignore_index=True)
    table = table.drop_duplicates(["set", "crop_id"]).sort_values(["set", "crop_id"],
                                                                  ignore_index=True)
    if limit is not None:
        table = pd.concat([_limit_by_image(g.reset_index(drop=True), limit, seed)
                           for _, g in table.groupby("set", sort=True)], ignore_index=True)
    for name, g in table.groupby("set", sort=True):
        info[name]["crops_read"] = int(len(g))
    return table, info


def assign_parts(df: pd.DataFrame, seed: int = 0, tune_fraction: float = TUNE_FRACTION,
                 class_names: tuple[str, ...] = CLASS_NAMES) -> np.ndarray:
    """'train', 'tune' or 'val' per crop of a (de-duplicated) load_sets table.

    val: a set with a committed image-level split (maskbatch.datasets.splits) uses its val
    photos; any other set (e.g. folder-per-class crops/) gets the grouped leak-free 80/20 split of
    :func:`split_train_val`. A crop whose pixels equal a val crop of any set never trains.
    tune: a grouped share of what is left, for early stopping and the decision threshold, so
    that no number reported on val was tuned on it.
    """

    parts = np.full(len(df), "train", dtype=object)
    known = set(splits.known_datasets())
    for name in sorted(df["set"].unique()):
        idx = np.flatnonzero((df["set"] == name).to_numpy())
        rows = df.iloc[idx]
        if name in known:
            val_names = set(splits.split_names(name, "val"))
            is_val = rows["source_image"].isin(val_names).to_numpy()
        else:
            is_val = split_train_val(rows.reset_index(drop=True), seed=seed,
                                     class_names=class_names)[1]
        parts[idx[is_val]] = "val"
    parts[_leaked(df, parts)] = "dropped"
    rest = np.flatnonzero(parts == "train")
    if len(rest) >= 2:
        tune = split_train_val(df.iloc[rest].reset_index(drop=True), seed=seed,
                               val_fraction=tune_fraction, class_names=class_names)[1]
        parts[rest[tune]] = "tune"
    return parts


def _leaked(df: pd.DataFrame, parts: np.ndarray) -> np.ndarray:
    """True for a crop outside val whose pixels equal a val crop's (it must never train)."""
    val_hashes = set(df.loc[parts == "val", "pixel_hash"])
    return (parts != "val") & df["pixel_hash"].isin(val_hashes).to_numpy()

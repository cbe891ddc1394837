"""The common record every dataset reader produces, and the class-name mapping."""

from __future__ import annotations

from dataclasses import dataclass, field

from maskbatch.config import CLASS_NAMES, INCORRECT, MASK, NO_MASK, THREE_CLASS_NAMES
from maskbatch.errors import MaskbatchError

# Source class name -> training label. Names missing here are skipped with a reason.
DEFAULT_LABEL_MAP: dict[str, str] = {
    MASK: MASK,
    NO_MASK: NO_MASK,
    "with_mask": MASK,  # Pascal VOC set and folder-per-class crops
    "without_mask": NO_MASK,
}
# Source names of the third class: mapped only for models (and crops) that have that class
# (label_map_for); elsewhere those boxes stay what they are today (ignore regions, skipped crops).
INCORRECT_LABEL_MAP: dict[str, str] = {INCORRECT: INCORRECT, "mask_weared_incorrect": INCORRECT}


def class_names_for(n_classes: int) -> tuple[str, ...]:
    """The classes of `--classes N`: 2 = face_with_mask, face_no_mask; 3 adds
    face_with_mask_incorrect."""
    if n_classes == 2:
        return CLASS_NAMES
    if n_classes == 3:
        return THREE_CLASS_NAMES
    raise MaskbatchError(f"--classes must be 2 or 3, got {n_classes}")


def label_map_for(class_names: tuple[str, ...] | list[str] = CLASS_NAMES) -> dict[str, str]:
    """DEFAULT_LABEL_MAP, plus the third class's source names where `class_names` has it."""
    if INCORRECT in class_names:
        return {**DEFAULT_LABEL_MAP, **INCORRECT_LABEL_MAP}
    return dict(DEFAULT_LABEL_MAP)


@dataclass(frozen=True)
class FaceBox:
    """One annotated face: pixel box (left, top, right, bottom) and the source's class name."""

    x1: float
    y1: float
    x2: float
    y2: float
    classname: str
    problem: str | None = None  # the annotation itself is broken (reason), box unusable


@dataclass(frozen=True)
class ImageRecord:
    """One image of a dataset with its boxes; what a Dask bag of extraction work holds."""

    path: str  # readable by a worker: local path or fsspec URL
    name: str  # the name the dataset uses (train.csv's `name`)
    dataset: str  # layout it came from: kaggle-json, kaggle-csv, voc, crops
    boxes: tuple[FaceBox, ...] = ()
    whole_image_label: str | None = None  # crops layout: the whole image is one face of this class
    problem: str | None = None  # the annotation file is broken: the reason
    extra: dict = field(default_factory=dict, compare=False)


def parse_label_map(items: list[str] | None, class_names: tuple[str, ...] | list[str] = CLASS_NAMES
                    ) -> dict[str, str]:
    """label_map_for(class_names) updated with `SRC=DST` items; DST may be `skip` to drop a class."""
    mapping = label_map_for(class_names)
    for item in items or []:
        src, sep, dst = item.partition("=")
        if not sep or not src or not dst:
            raise MaskbatchError(f"--label-map expects SRC=DST, got {item!r}")
        if dst == "skip":
            mapping.pop(src, None)
        elif dst not in class_names:
            raise MaskbatchError(f"--label-map target must be {', '.join(class_names)} or skip, "
                                 f"not {dst!r}")
        else:
            mapping[src] = dst
    return mapping

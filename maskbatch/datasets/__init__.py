"""Dataset readers: each annotated source becomes ImageRecords holding FaceBoxes (no pixels).

Layouts: the Kaggle "Face Mask Detection Dataset" (annotations/*.json and/or train.csv),
Pascal VOC (annotations/*.xml) and folder-per-class crops (with_mask/, without_mask/).
"""

from __future__ import annotations

from maskbatch.datasets.layouts import detect_layout, load_records, truth_table
from maskbatch.datasets.records import (
    DEFAULT_LABEL_MAP,
    INCORRECT_LABEL_MAP,
    FaceBox,
    ImageRecord,
    class_names_for,
    label_map_for,
    parse_label_map,
)

__all__ = [
    "DEFAULT_LABEL_MAP",
    "INCORRECT_LABEL_MAP",
    "FaceBox",
    "ImageRecord",
    "class_names_for",
    "label_map_for",
    "detect_layout",
    "load_records",
    "parse_label_map",
    "truth_table",
]

"""The model card of a third-class head (``maskbatch train --classes 3 --base``), and the crops
and the fitted head it is written from.

:mod:`maskbatch.train.head` fits and measures; this module only puts what it found into the
card's words and numbers (model_card.json). numpy and onnx only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime
import pandas as pd

from maskbatch.config import INCORRECT, __version__
from maskbatch.train import data as tdata
from maskbatch.train.export import CLASS_PROBS_NAME

GRID = 3  # each feature map averaged to GRID x GRID cells
PCA_DIMS = 256
FOLDS = 5


@dataclass(frozen=True)
class HeadRequest:
    """What a head run was asked for."""

    crops_dirs: list[str]
    out_dir: str
    base_dir: str | None  # None: the bundled 2-class model
    limit: int | None
    seed: int

    def command(self) -> str:
        """The `maskbatch train` command line that repeats the run."""
        return ("maskbatch train " + " ".join(self.crops_dirs) + f" --out {self.out_dir} "
                "--classes 3" + (f" --base {self.base_dir}" if self.base_dir else " --base bundled")
                + (f" --limit {self.limit}" if self.limit else "")
                + (f" --seed {self.seed}" if self.seed else ""))


@dataclass
class HeadCrops:
    """The de-duplicated crops of the run, split, with what the head fits and scores on."""

    df: pd.DataFrame
    class_names: tuple[str, ...]
    info: dict  # per set: its crops folders and the crops read
    dedup: dict
    parts: np.ndarray  # train / tune / val / dropped per row
    labels: np.ndarray  # class name per row
    arrays: tdata.Arrays  # every row, model-ready; arrays.y: class index
    fitting: np.ndarray  # rows outside val: the head fits (and cross-validates) on them
    y: np.ndarray  # True where the label is INCORRECT
    labelling: list[str]  # the sets that label the third class
    scored: np.ndarray  # rows of those sets: the head's choices are scored on them alone


@dataclass
class FittedHead:
    """The head on the base model's features: its weights and the cross-validation behind it."""

    prob: np.ndarray  # the base model's P(face_with_mask) per row
    feats: np.ndarray  # the pooled feature maps per row
    mirrored: np.ndarray  # the same of each row's mirror image
    cv: dict  # see head.cross_validate
    weights: np.ndarray
    bias: float


def _training_data(crops: HeadCrops) -> dict:
    parts, labels, class_names = crops.parts, crops.labels, crops.class_names
    return {"sets": crops.info, "duplicates": crops.dedup,
            "parts": {p: {c: int(((parts == p) & (labels == c)).sum()) for c in class_names}
                      for p in ("train", "tune", "val", "dropped")}}


def head_card(request: HeadRequest, base_card: dict, base_input: str,
              base_shapes: list[tuple[int, int, int]], threshold: float, onnx_bytes: bytes,
              parity: float, crops: HeadCrops, head: FittedHead, cv_scores: dict, by_set: dict,
              started: float) -> dict:
    """The card's fields after the four that load the model (input_size, onnx_sha256,
    output_name, class_names), in the card's order. `cv_scores`: the out-of-fold AP and
    reports (head.out_of_fold_scores); `by_set`: each set's val report; `started`: the run's
    time.perf_counter() at its start."""
    cv = head.cv
    return {
        "format": "maskbatch-classifier/1",
        "architecture": f"{base_card.get('architecture', 'base')}+incorrect-head",
        "architecture_description": (
            f"the 2-class model {base_card['onnx_sha256'][:12]} kept whole, plus a logistic head "
            f"on its feature maps ({', '.join(f'{c}x{h}x{w}' for c, h, w in base_shapes)}, each "
            f"averaged to {GRID}x{GRID}) giving q = P({INCORRECT}); output [(1-q) m, (1-q)(1-m), "
            f"q], m = sigmoid(logit(P(face_with_mask)) - logit({threshold:g}))"),
        "base_model": {"onnx_sha256": base_card["onnx_sha256"], "threshold": threshold,
                       "architecture": base_card.get("architecture")},
        "input_name": base_input,
        "outputs": [CLASS_PROBS_NAME],
        "input_layout": "NHWC float32", "color_order": "BGR", "scaling": "x/255",
        "preprocess": base_card.get("preprocess"),
        "output": "P(class) over class_names", "label_rule": "argmax over class_names",
        "onnx_bytes": len(onnx_bytes),
        "parity_max_abs_diff": parity,
        "parity": "ONNX graph vs the numpy head, every crop",
        "training_data": _training_data(crops),
        "head": {"features": int(head.feats.shape[1]), "pca_dims": PCA_DIMS, "l2": cv["l2"],
                 "logit_shift": cv["shift"], "augmentation": "mirror image (each crop twice)",
                 "fitted_on": "train + tune parts (every crop outside val)", "seed": request.seed},
        "cross_validation": {
            "rule": f"{FOLDS} folds of whole leakage groups (source photo, pixel copies) over "
                    "the train + tune crops; L2 by CV AP of the third class, then the logit "
                    "shift by CV F1 of its argmax label, both on the crops of the sets that "
                    "label it",
            "sets_labelling_the_class": crops.labelling,
            "ap_by_l2": {str(k): v for k, v in cv["cv_ap_by_l2"].items()},
            "f1_by_shift": {str(k): v for k, v in cv["cv_f1_by_shift"].items()},
            **cv_scores,
        },
        "validation_per_set": by_set,
        "command": request.command(),
        "versions": {"maskbatch": __version__, "onnx": onnx.__version__,
                     "onnxruntime": onnxruntime.__version__, "numpy": np.__version__},
        "train_seconds": round(time.perf_counter() - started, 1),
    }

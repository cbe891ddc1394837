"""The model card of a `maskbatch train` run, and the facts of the run it is written from.

:mod:`maskbatch.train.fit` trains and measures; this module only turns what it found into the
card's words and numbers (model_card.json) and the one line printed at the end. No TensorFlow at
import (the versions and the nets' descriptions are read when a card is made).
"""

from __future__ import annotations

import os
import platform
import shlex
from dataclasses import dataclass

import cv2
import numpy as np
import onnxruntime
import pandas as pd

from maskbatch.config import CLASS_NAMES, __version__
from maskbatch.datasets import splits
from maskbatch.models.classifier import sha256_bytes
from maskbatch.train import data as tdata
from maskbatch.train.export import INPUT_NAME, OPSET

LEARNING_RATE = 1e-3
PATIENCE = 3
PLATEAU_PATIENCE = 2


@dataclass(frozen=True)
class TrainRequest:
    """What a training run was asked for, checked, with its defaults resolved."""

    crops_dirs: list[str]
    out_dir: str
    arch: str
    archs: list[str]  # the nets of `arch`, one per ensemble member
    epochs: int
    batch_size: int
    seed: int
    eval_crops: str | None
    limit: int | None
    classes: int
    class_names: tuple[str, ...]
    size: int  # the nets' input size

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


@dataclass
class Fitted:
    """The fitted model (one net, or the average of the ensemble's) and how each member went."""

    model: object  # keras.Model
    histories: list[dict[str, list[float]]]  # one per member
    members: list[dict]  # the card's `training.members`
    fit_seconds: float

    @property
    def history(self) -> dict[str, list[float]]:
        return self.histories[0]

    @property
    def best_epoch(self) -> int:
        return self.members[0]["best_epoch"]


@dataclass
class Measured:
    """The exported model's numbers: threshold (None for N classes) and every report."""

    threshold: float | None
    tune: dict
    validation: dict
    per_set: dict
    cross: dict
    bench: dict


def loss_name(n_classes: int) -> str:
    return "binary_crossentropy" if n_classes == 2 else "sparse_categorical_crossentropy"


def versions() -> dict[str, str]:
    import keras
    import onnx
    import tensorflow as tf
    import tf2onnx

    return {"maskbatch": __version__, "python": platform.python_version(),
            "tensorflow": tf.__version__, "keras": keras.__version__,
            "tf2onnx": tf2onnx.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "opencv": cv2.__version__,
            "numpy": np.__version__}


def command(request: TrainRequest) -> str:
    """The `maskbatch train` command line that repeats the run."""
    parts = ["maskbatch", "train", *request.crops_dirs, "--out", request.out_dir, "--arch",
             request.arch, "--epochs", str(request.epochs), "--batch-size",
             str(request.batch_size), "--seed", str(request.seed)]
    if request.classes != 2:
        parts += ["--classes", str(request.classes)]
    if request.eval_crops:
        parts += ["--eval-crops", request.eval_crops]
    if request.limit is not None:
        parts += ["--limit", str(request.limit)]
    return shlex.join(parts)


def _part_summary(df: pd.DataFrame, parts: np.ndarray, part: str,
                  class_names: tuple[str, ...] = CLASS_NAMES) -> dict:
    rows = df[parts == part]
    images = rows["set"].astype(str) + "/" + rows["source_image"].astype(str)
    return {"crops": int(len(rows)), "images": int(images.nunique()),
            "counts": tdata.class_counts(rows, class_names)}


def data_summary(df: pd.DataFrame, parts: np.ndarray, dedup: dict, info: dict,
                 class_names: tuple[str, ...] = CLASS_NAMES) -> dict:
    """The card's training_data: per set and in all, what trained, tuned and validated."""

    known = set(splits.known_datasets())
    sets = {}
    for name in sorted(info):
        in_set = (df["set"] == name).to_numpy()
        sets[name] = {
            **info[name],
            "crops_used": int(in_set.sum()),
            "datasets": sorted(df.loc[in_set, "source_dataset"].astype(str).unique().tolist()),
            "split": (f"committed image-level split (maskbatch/datasets/splits/{name}.*.txt)"
                      if name in known else "80/20 by groups: crops sharing a source image or a "
                      "pixel_hash stay together (union-find), classes kept near 20% each"),
            **{part: _part_summary(df[in_set], parts[in_set], part, class_names)
               for part in tdata.PARTS},
        }
    return {
        "sets": sets,
        **dedup,
        "crops_dropped_as_copies_of_val_crops": int((parts == "dropped").sum()),
        "crops_used": int((parts != "dropped").sum()),
        "counts": tdata.class_counts(df[parts != "dropped"], class_names),
        **{part: _part_summary(df, parts, part, class_names) for part in tdata.PARTS},
        "split": "val: each set's committed split, else a grouped 80/20; tune: a grouped "
                 f"{tdata.TUNE_FRACTION:.0%} of the rest (early stopping, threshold); train: the "
                 "rest. No source image or pixel-identical crop is on two sides.",
    }


def description(archs: list[str], seed: int) -> str:
    """The card's words for one net, or for an ensemble of `archs` (one net each)."""
    from maskbatch.train.architectures import DESCRIPTIONS

    if len(archs) == 1:
        return DESCRIPTIONS[archs[0]]
    nets = "; ".join(DESCRIPTIONS[a] for a in archs)
    return (f"an ensemble: {' + '.join(archs)} (seed {seed} each), output = mean of their outputs; "
            f"{nets}")


def _decision(n_classes: int, threshold: float | None) -> dict:
    """How the card's output becomes a label: a threshold (2 classes) or the argmax."""
    if n_classes != 2:
        return {"output": "softmax over class_names", "label_rule": "argmax over class_names"}
    return {"output": "P(face_with_mask)",
            "threshold": threshold,
            "threshold_rule": ">= threshold -> face_with_mask; chosen on the tune part of the "
                              "training photos (best macro-averaged F1, median of ties), never on "
                              "val"}


def training_section(request: TrainRequest, fitted: Fitted, weights: dict[int, float],
                     thread_pools: dict[str, int]) -> dict:
    """The card's `training`: the recipe, the members' epochs and how repeatable it is."""
    from maskbatch.train.architectures import AUGMENTATIONS

    archs, class_names = request.archs, request.class_names
    return {
        "seed": request.seed, "epochs_max": request.epochs,
        "epochs_run": len(fitted.history["loss"]), "best_epoch": fitted.best_epoch,
        "members": fitted.members, "batch_size": request.batch_size, "limit": request.limit,
        "optimizer": f"Adam lr={LEARNING_RATE:g}, ReduceLROnPlateau(tune loss, x0.5, "
                     f"patience {PLATEAU_PATIENCE})",
        "loss": loss_name(request.n_classes),
        "class_weight": ({CLASS_NAMES[0]: round(weights[1], 4),
                          CLASS_NAMES[1]: round(weights[0], 4)} if request.n_classes == 2 else
                         {c: round(weights[k], 4) for k, c in enumerate(class_names)}),
        "augmentation": "; ".join(f"{a}: {AUGMENTATIONS[a]}" if len(archs) > 1 else
                                  AUGMENTATIONS[a] for a in archs)
                        + "; fill nearest; training only",
        "early_stopping": f"tune loss, patience {PATIENCE}, best weights restored",
        "tensorflow_threads": thread_pools,
        "deterministic": "keras.utils.set_random_seed(seed), "
                         "tf.config.experimental.enable_op_determinism(), fixed thread pools",
        "fit_seconds": round(fitted.fit_seconds, 1),
        "total_seconds": None,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
    }


def model_card(request: TrainRequest, onnx_bytes: bytes, output_name: str, parity: float,
               summary: dict, training: dict, fitted: Fitted, measured: Measured) -> dict:
    """model_card.json of a trained classifier (its `training.total_seconds` is set last)."""
    from maskbatch.train.architectures import pretrained_backbone

    archs = request.archs
    return {
        "format": "maskbatch-classifier/1",
        "architecture": request.arch,
        "architecture_description": description(archs, request.seed),
        "members": len(archs),
        **({"pretrained": pretrained_backbone()} if "backbone" in archs else {}),
        "parameters": int(fitted.model.count_params()),
        "input_size": request.size,
        "input_name": INPUT_NAME,
        "output_name": output_name,
        "outputs": [output_name],
        "input_layout": "NHWC float32",
        "color_order": "BGR",
        "scaling": "x/255",
        "preprocess": "maskbatch.models.classifier.preprocess: square bilinear resize to input_size, "
                      "BGR kept, x/255",
        "class_names": list(request.class_names),
        **_decision(request.n_classes, measured.threshold),
        "onnx_sha256": sha256_bytes(onnx_bytes),
        "onnx_bytes": len(onnx_bytes),
        "onnx_opset": OPSET,
        "parity_max_abs_diff": parity,
        "training_data": summary,
        "training": training,
        "tune": measured.tune,
        "validation": measured.validation,
        "validation_per_set": measured.per_set,
        "cross_dataset": measured.cross,
        "inference_benchmark": {"onnxruntime_threads": 1, "median_of_repeats": True,
                                **measured.bench, "machine": platform.machine(),
                                "cpu_count": os.cpu_count()},
        "versions": versions(),
        "command": command(request),
    }


def print_result(card: dict) -> None:
    """The run's one line: parameters, validation accuracy, per set and cross-dataset."""
    v = card["validation"]
    line = (f"{card['architecture']}: {card['parameters']:,} params, "
            f"val acc {v['accuracy']:.4f} (threshold {card.get('threshold', 'argmax')}), "
            f"no-mask recall {v['per_class'][CLASS_NAMES[1]]['recall']:.4f}")
    for name, rep in card.get("validation_per_set", {}).items():
        line += f", {name} val acc {rep['accuracy']:.4f}"
    for name, rep in card["cross_dataset"].items():
        line += f", {name} acc {rep['accuracy']:.4f}"
    print(line)

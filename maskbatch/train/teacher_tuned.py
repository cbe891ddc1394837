"""The stronger teacher of issue 41, `train-detector --teacher tuned+centerface`.

Two sources, each scored on its own (their scores are not on one scale):

- ``tuned``: the fine-tuned detector (maskbatch.models.yunet's ``tuned`` weights, the bundled
  ``detector.onnx`` unless MASKBATCH_DETECTOR_MODEL names another) at the looks refused for their
  cost at inference, which cost nothing in a teacher (LOOKS: three passes up to 1.6M pixels,
  NMS-merged); its boxes are cached beside CenterFace's (``teacher-tuned.json``, keyed by
  the detector's sha256 and the looks);
- ``centerface``: maskbatch.train.teacher's CenterFace, unchanged (``teacher-centerface.json``).

Each source gets teacher.py's box-style correction and per-bin score rule on the training photos,
and its unmatched boxes become faces (>= its `high`) or ignore regions (>= its `low`). Then the
union: a face if either source calls it a face, else an ignore region if either is unsure; a box
of the second source at IoU >= DUPLICATE_IOU with one already taken is dropped (a face always
wins over an ignore region; between two faces the tuned detector's box, drawn in the annotators'
style, is kept).

A subtlety: the bundled tuned detector was itself trained on these training photos, labels only,
so a box of its that matches no label is either a face it learned although the labels called it
background, or a false positive it keeps making; the card counts them (``sources.tuned``), and
they are few (docs/detector-training.md).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from maskbatch.errors import MaskbatchError
from maskbatch.models import yunet
from maskbatch.models.detect import pass_size
from maskbatch.train.detector_data import MAX_SIDE, Photo
from maskbatch.train.detector_targets import iou
from maskbatch.train.teacher import (
    CACHE_FORMAT,
    FLOOR,
    TEACHERS,
    cached_boxes,
    label_photos,
    locate_teacher,
    merge_all,
    nms,
    score_source,
    teacher_boxes,
)

UNION = "tuned+centerface"
NAMES = (*TEACHERS, UNION)
DUPLICATE_IOU = 0.5
# (pixels, at most enlarged, mirrored look too): chosen on the non-held-out training photos of
# the issue 41 screen by faces found against the labels, small ones above all: the three passes
# found as many as the six looks with the mirrored ones, at half the cost and with fewer boxes
# matching no label (docs/detector-training.md).
LOOKS = ((640_000, 3.0, False), (1_200_000, 4.0, False), (1_600_000, 5.0, False))


def check_teacher(name: str) -> None:
    """One clear error before any training if teacher `name` is unknown or its files are not
    there (the wheel, the checksum, the tuned detector and its card)."""
    if name == UNION:
        locate_teacher("centerface")
        yunet.read_tuned_card()
    elif name in TEACHERS:
        locate_teacher(name)
    else:
        raise MaskbatchError(f"unknown teacher {name!r}; choose from {', '.join(NAMES)}")


def label_with(photos: list[Photo], name: str, cache: Path) -> tuple[list[Photo], dict]:
    """The photos labelled by teacher `name` (cache: OUT/teacher-NAME.json) and its card entry."""
    check_teacher(name)
    if name == UNION:
        return label_union(photos, cache)
    return label_photos(photos, name, cache)


def describe(card: dict) -> str:
    """One line for the training log: what the teacher added, at which thresholds."""
    sources = card.get("sources", {card["name"]: card})
    cuts = ", ".join(f"{k} >= {v['thresholds']['high']:g} / {v['thresholds']['low']:g}"
                     for k, v in sources.items())
    return (f"teacher {card['name']}: +{card['added_faces']} faces, "
            f"+{card['added_ignore_regions']} ignore regions (scores: {cuts})")


def tuned_look(net, image: np.ndarray, looks=LOOKS, floor: float = FLOOR) -> np.ndarray:
    """The tuned detector's boxes (N, 5) in `image` pixels over `looks`, NMS-merged."""
    h, w = image.shape[:2]
    scale = np.array([w, h, w, h, 1], np.float32)
    flipped = None  # the mirrored photo, made once and only if a look asks for it
    found = []
    for area, max_upscale, mirrored in looks:
        size = pass_size(w, h, area, max_upscale)
        found.append(net.forward(image, size, floor) * scale)
        if mirrored:
            if flipped is None:
                flipped = np.ascontiguousarray(image[:, ::-1])
            rows = net.forward(flipped, size, floor) * scale
            rows[:, [0, 2]] = w - rows[:, [2, 0]]
            found.append(rows)
    return nms(np.concatenate(found))


def tuned_boxes(photos: list[Photo], cache: Path, looks=LOOKS) -> tuple[dict[str, np.ndarray], dict]:
    """Per photo name, the tuned detector's raw boxes, cached under its sha256 and the looks."""
    model, card = yunet.read_tuned_card()
    key = {"format": CACHE_FORMAT, "teacher": "tuned", "sha256": card["onnx_sha256"],
           "pass": {"looks": [{"area": a, "max_upscale": u, "mirrored": m} for a, u, m in looks],
                    "photo_max_side": MAX_SIDE}, "floor": FLOOR}
    boxes, info = cached_boxes(photos, key, cache, lambda: lambda image: tuned_look(
        yunet.load_yunet("tuned"), image, looks))
    return boxes, {**info, "file": str(model), "trained_on": card.get("training_data")}


def union(photo: Photo, parts: list[tuple[str, Photo]]) -> tuple[Photo, dict]:
    """`photo` with the faces and ignore regions the sources' merged photos added (`parts`, in
    order of preference), duplicates across sources dropped; and the counts of what each gave."""
    n_faces, n_ignore = len(photo.faces), len(photo.ignore)
    faces, ignore = np.zeros((0, 4), np.float32), np.zeros((0, 4), np.float32)
    counts = {f"{kind}_{src}": 0 for kind in ("faces", "ignore") for src, _ in parts}
    counts.update(faces_duplicate=0, ignore_duplicate=0)
    for kind in ("faces", "ignore"):
        for src, merged in parts:
            new = merged.faces[n_faces:] if kind == "faces" else merged.ignore[n_ignore:]
            taken = np.concatenate([faces, ignore])
            dup = (iou(new, taken).max(axis=1) >= DUPLICATE_IOU if len(new) and len(taken)
                   else np.zeros(len(new), bool))
            if kind == "faces":
                faces = np.concatenate([faces, new[~dup]])
            else:
                ignore = np.concatenate([ignore, new[~dup]])
            counts[f"{kind}_{src}"] += int((~dup).sum())
            counts[f"{kind}_duplicate"] += int(dup.sum())
    out = replace(photo, faces=np.concatenate([photo.faces, faces]).astype(np.float32),
                  ignore=np.concatenate([photo.ignore, ignore]).astype(np.float32))
    return out, counts


def _source(photos: list[Photo], raw: dict[str, np.ndarray], info: dict
            ) -> tuple[dict[str, Photo], dict]:
    """One source's merged photos (by name) and its card entry (as if it taught alone)."""
    fixed, scored = score_source(photos, raw)
    high, low = scored["thresholds"]["high"], scored["thresholds"]["low"]
    out, faces, ignore = merge_all(photos, fixed, low, high)
    merged = {photo.name: each for photo, each in zip(photos, out)}
    entry = {"sha256": info["sha256"], "pass": info["pass"], **scored,
             "boxes": int(sum(len(v) for v in raw.values())),
             "added_faces_alone": faces, "added_ignore_regions_alone": ignore,
             "cache": info["cache"], "boxes_computed": info["computed"],
             "boxes_reused": info["reused"], "seconds": info["seconds"]}
    return merged, entry


def label_union(photos: list[Photo], cache: Path) -> tuple[list[Photo], dict]:
    """The photos with the union of the two sources' labels (module doc), and the card entry."""
    tuned_raw, tuned_info = tuned_boxes(photos, cache.with_name("teacher-tuned.json"))
    center_raw, center_info = teacher_boxes(photos, "centerface",
                                            cache.with_name("teacher-centerface.json"))
    tuned, tuned_entry = _source(photos, tuned_raw, tuned_info)
    center, center_entry = _source(photos, center_raw, center_info)
    tuned_entry.update(file=tuned_info["file"], trained_on=tuned_info["trained_on"], note=(
        "trained on these training photos (labels only): its unmatched boxes are faces it "
        "learned although the labels call them background, or its own false positives"))
    teacher = TEACHERS["centerface"]
    center_entry.update(file=teacher.file, licence=teacher.licence,
                        distribution=f"{teacher.distribution}=={teacher.version}")
    out, totals = [], {}
    for photo in photos:
        merged, counts = union(photo, [("tuned", tuned[photo.name]),
                                       ("centerface", center[photo.name])])
        out.append(merged)
        totals = {k: totals.get(k, 0) + v for k, v in counts.items()}
    card = {"name": UNION, "sources": {"tuned": tuned_entry, "centerface": center_entry},
            "added_faces": sum(len(b.faces) - len(a.faces) for a, b in zip(photos, out)),
            "added_ignore_regions": sum(len(b.ignore) - len(a.ignore) for a, b in zip(photos, out)),
            "added_by_source": totals, "duplicate_iou": DUPLICATE_IOU, "rule": (
                "each source's boxes corrected and thresholded on its own; union: a face if "
                "either source calls it one, else an ignore region if either is unsure; a box at "
                f"IoU >= {DUPLICATE_IOU:g} with one taken (tuned's first, faces before ignore "
                "regions) dropped"),
            "labelled_faces": int(sum(len(p.faces) for p in photos)), "photos": len(photos),
            "cache": str(cache.parent)}
    return out, card

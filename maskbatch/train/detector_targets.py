"""Which grid cells of YuNet's three heads learn which face: SimOTA-style dynamic assignment.

YuNet is anchor-free: each cell (r, c) of the stride-s maps predicts one box centred at
((c + dx) s, (r + dy) s) with size (exp(dw) s, exp(dh) s), a class score and an objectness; the
detection score is sqrt(cls * obj). For every labelled face, the candidate cells are those whose
centre lies inside the face box and within 2.5 strides of its centre; each face takes the k
cheapest of them (cost = -log of the predicted score + 3 x -log IoU), k being the sum of its ten
best IoUs (at least 1), and a cell wanted by two faces goes to the cheaper one. This is the
recipe of YOLOX and of YuNet's own training (libfacedetection.train), written here from the paper's
description in numpy. Cells whose centre lies in an ignore region and that are not assigned are
left out of the objectness loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from maskbatch.train.yunet_graph import STRIDES

CENTER_RADIUS = 2.5
TOP_IOUS = 10
IOU_WEIGHT = 3.0


def priors(size: int) -> np.ndarray:
    """(P, 3) grid points (x, y, stride) of a size x size input, stride 8 rows first, row-major:
    the row order of YuNet's concatenated outputs."""
    rows = []
    for s in STRIDES:
        n = size // s
        ys, xs = np.mgrid[0:n, 0:n]
        rows.append(np.stack([xs.ravel() * s, ys.ravel() * s, np.full(n * n, s)], axis=1))
    return np.concatenate(rows).astype(np.float32)


def decode(grid: np.ndarray, bbox: np.ndarray) -> np.ndarray:
    """Boxes (P, 4) x1y1x2y2 from YuNet's bbox outputs (P, 4), as cv2.FaceDetectorYN decodes."""
    s = grid[:, 2:3]
    centre = grid[:, :2] + bbox[:, :2] * s
    half = np.exp(np.clip(bbox[:, 2:], -10, 10)) * s / 2
    return np.concatenate([centre - half, centre + half], axis=1)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU (len(a), len(b)) of x1y1x2y2 boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


@dataclass
class Targets:
    """Per cell: positive (bool), objectness weight, IoU target for cls, assigned face box."""

    positive: np.ndarray  # (P,)
    obj_weight: np.ndarray  # (P,) 0 for ignored cells
    iou: np.ndarray  # (P,) IoU of the cell's box with its face (positives only)
    boxes: np.ndarray  # (P, 4) assigned face box (positives only)


def assign(grid: np.ndarray, score: np.ndarray, pred_boxes: np.ndarray, faces: np.ndarray,
           ignore: np.ndarray) -> Targets:
    """SimOTA assignment of one image's cells (see the module doc)."""
    n = len(grid)
    positive = np.zeros(n, bool)
    target_iou = np.zeros(n, np.float32)
    boxes = np.zeros((n, 4), np.float32)
    obj_weight = np.ones(n, np.float32)
    centres = grid[:, :2] + grid[:, 2:3] * 0.5
    if len(ignore):
        inside = ((centres[:, None, 0] >= ignore[None, :, 0]) & (centres[:, None, 0] <= ignore[None, :, 2])
                  & (centres[:, None, 1] >= ignore[None, :, 1]) & (centres[:, None, 1] <= ignore[None, :, 3]))
        obj_weight[inside.any(axis=1)] = 0.0
    if len(faces) == 0:
        return Targets(positive, obj_weight, target_iou, boxes)
    in_box = ((centres[:, None, 0] > faces[None, :, 0]) & (centres[:, None, 0] < faces[None, :, 2])
              & (centres[:, None, 1] > faces[None, :, 1]) & (centres[:, None, 1] < faces[None, :, 3]))
    face_centre = (faces[:, :2] + faces[:, 2:]) / 2
    radius = CENTER_RADIUS * grid[:, 2:3]
    in_centre = ((np.abs(centres[:, None, 0] - face_centre[None, :, 0]) < radius)
                 & (np.abs(centres[:, None, 1] - face_centre[None, :, 1]) < radius))
    candidate = (in_box | in_centre).any(axis=1)
    idx = np.flatnonzero(candidate)
    if len(idx) == 0:
        return Targets(positive, obj_weight, target_iou, boxes)
    ious = iou(pred_boxes[idx], faces)  # (C, F)
    both = in_box[idx] & in_centre[idx]
    cls_cost = -np.log(np.sqrt(np.clip(score[idx], 1e-8, 1.0)))[:, None]
    cost = cls_cost + IOU_WEIGHT * -np.log(ious + 1e-8) + 1e5 * ~both
    match = np.zeros_like(cost, bool)
    for f in range(len(faces)):
        k = max(1, int(np.sort(ious[:, f])[::-1][:TOP_IOUS].sum()))
        match[np.argsort(cost[:, f], kind="stable")[:k], f] = True
    several = match.sum(axis=1) > 1
    if several.any():
        best = np.argmin(np.where(match[several], cost[several], np.inf), axis=1)
        match[several] = False
        match[np.flatnonzero(several), best] = True
    rows, face_of = np.nonzero(match)
    cells = idx[rows]
    positive[cells] = True
    target_iou[cells] = ious[rows, face_of]
    boxes[cells] = faces[face_of]
    obj_weight[cells] = 1.0
    return Targets(positive, obj_weight, target_iou, boxes)

"""Predicted boxes matched to truth boxes, per image: IoU matrices and the greedy matching."""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import numpy as np

TP, FP, IGNORED = 1, 0, -1  # prediction status
IGNORE_CLASS = -1  # truth class index of an ignore region
UNKNOWN_CLASS = -2  # predicted class that is neither of CLASS_NAMES
STATUS_NAMES = {TP: "tp", FP: "fp", IGNORED: "ignored"}


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of each box of `a` (n, 4) with each box of `b` (m, 4); boxes left, top, right, bottom."""
    a = np.asarray(a, dtype=float).reshape(-1, 4)
    b = np.asarray(b, dtype=float).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def _greedy(iou: np.ndarray, allowed: np.ndarray, order: np.ndarray, ignore_hit: np.ndarray,
            thr: float) -> tuple[np.ndarray, np.ndarray]:
    """Greedy matching of predictions (rows, visited in `order`) to truth boxes (columns)."""
    n, m = iou.shape
    status = np.where(ignore_hit, IGNORED, FP).astype(np.int8)
    match = np.full(n, -1, dtype=np.int64)
    cand = np.where(allowed, iou, -1.0)
    if m == 0 or not (cand >= thr).any():
        return status, match
    taken = np.zeros(m, dtype=bool)
    for i in order:
        if not (cand[i] >= thr).any():
            continue
        row = np.where(taken, -1.0, cand[i])
        j = int(row.argmax())
        if row[j] >= thr:
            status[i], match[i], taken[j] = TP, j, True
    return status, match


def _match_image(pred_boxes: np.ndarray, pred_cls: np.ndarray, rank: np.ndarray,
                 score: np.ndarray, truth_boxes: np.ndarray, truth_cls: np.ndarray, thr: float
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Class-aware and class-agnostic matching within one image: (status, match) for each."""
    iou = iou_matrix(pred_boxes, truth_boxes)
    ignore = truth_cls == IGNORE_CLASS
    ignore_hit = (iou[:, ignore] >= thr).any(axis=1) if ignore.any() \
        else np.zeros(len(pred_boxes), dtype=bool)
    # stable sorts: ties keep the input order, so results do not depend on the sort algorithm
    by_rank = np.argsort(-rank, kind="stable")
    by_score = np.argsort(-score, kind="stable")
    s_cls, m_cls = _greedy(iou, pred_cls[:, None] == truth_cls[None, :], by_rank, ignore_hit, thr)
    s_det, m_det = _greedy(iou, np.broadcast_to(~ignore, iou.shape), by_score, ignore_hit, thr)
    return s_cls, m_cls, s_det, m_det


def match_chunk(chunk: list[tuple]) -> list[tuple]:
    """_match_image over several images (a unit of parallel work)."""
    return [(p_idx, t_idx, *_match_image(*args)) for p_idx, t_idx, args in chunk]


MapChunks = Callable[[Callable[[list], list], list[list]], list[list]]


def match_all(jobs: list[tuple], map_chunks: MapChunks | None = None) -> list[tuple]:
    """match_chunk over every image; `map_chunks(fn, chunks)` (e.g. maskbatch.runtime.bags'
    map_chunks) runs the chunks in parallel, None runs them here."""
    if map_chunks is None:
        return match_chunk(jobs)
    n_parts = max(2, min(64, (os.cpu_count() or 2) * 4))
    size = max(1, math.ceil(len(jobs) / n_parts))
    chunks = [jobs[i:i + size] for i in range(0, len(jobs), size)]
    return [r for part in map_chunks(match_chunk, chunks) for r in part]


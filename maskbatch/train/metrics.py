"""Classifier metrics (numpy only): accuracy, per-class precision/recall/F1, confusion matrix, and
the decision-threshold choice on validation data."""

from __future__ import annotations

import numpy as np

from maskbatch.config import CLASS_NAMES, MASK


def classification_report(y_true: np.ndarray, prob: np.ndarray, threshold: float) -> dict:
    """Metrics of P(face_with_mask) outputs at `threshold` (>= threshold -> face_with_mask).

    `y_true` holds 1 for face_with_mask and 0 for face_no_mask. The confusion matrix rows are the
    true classes and its columns the predicted ones, both in CLASS_NAMES order.
    """
    y_true = np.asarray(y_true).astype(int).reshape(-1)
    pred = (np.asarray(prob).reshape(-1) >= threshold).astype(int)
    # CLASS_NAMES order: face_with_mask (target 1), face_no_mask (target 0)
    targets = [1 if name == MASK else 0 for name in CLASS_NAMES]
    matrix, per_class = _per_class(y_true, pred, targets, list(CLASS_NAMES))
    n = len(y_true)
    accuracy = float(np.mean(pred == y_true)) if n else 0.0
    balanced = float(np.mean([per_class[c]["recall"] for c in CLASS_NAMES]))
    return {
        "n": n,
        "threshold": round(float(threshold), 4),
        "accuracy": round(accuracy, 4),
        "balanced_accuracy": round(balanced, 4),
        "per_class": per_class,
        "confusion_matrix": {"labels": list(CLASS_NAMES), "rows_true_cols_pred": matrix},
    }


def _per_class(y_true: np.ndarray, pred: np.ndarray, targets: list[int], names: list[str]
               ) -> tuple[list[list[int]], dict]:
    """The confusion matrix (rows true, columns predicted, in `targets` order) and precision,
    recall, F1 and support per class; `targets[k]` is the label value of class `names[k]`."""
    matrix = [[int(np.sum((y_true == t) & (pred == p))) for p in targets] for t in targets]
    per_class = {}
    for name, t in zip(names, targets):
        tp = int(np.sum((y_true == t) & (pred == t)))
        fp = int(np.sum((y_true != t) & (pred == t)))
        fn = int(np.sum((y_true == t) & (pred != t)))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": round(precision, 4), "recall": round(recall, 4),
                           "f1": round(f1, 4), "support": int(np.sum(y_true == t))}
    return matrix, per_class


def choose_threshold(y_true: np.ndarray, prob: np.ndarray) -> float:
    """The threshold (grid 0.05..0.95) with the best macro-averaged F1 on these (validation) data.

    Macro F1 weighs both classes equally (the minority face_no_mask class counts as much as the
    majority) without trading away the majority's precision the way balanced accuracy can. Ties
    are broken by the median of the best thresholds, the middle of a plateau rather than its edge.
    """
    y_true = np.asarray(y_true).astype(int).reshape(-1)
    prob = np.asarray(prob).reshape(-1)
    if len(np.unique(y_true)) < 2:
        return 0.5
    grid = np.round(np.arange(0.05, 0.951, 0.01), 2)
    scores = []
    for t in grid:
        report = classification_report(y_true, prob, float(t))
        scores.append(np.mean([report["per_class"][c]["f1"] for c in CLASS_NAMES]))
    scores_arr = np.array(scores)
    best = grid[scores_arr == scores_arr.max()]
    return float(np.round(np.median(best), 2))


def multiclass_report(y_true: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict:
    """classification_report's metrics for an N-class softmax model: the label is the argmax
    (no threshold); `y_true` holds each crop's index in `class_names`."""
    y_true = np.asarray(y_true).astype(int).reshape(-1)
    probs = np.asarray(probs).reshape(len(y_true), len(class_names))
    pred = probs.argmax(axis=1) if len(probs) else np.zeros(0, int)
    matrix, per_class = _per_class(y_true, pred, list(range(len(class_names))), class_names)
    n = len(y_true)
    return {
        "n": n,
        "threshold": None,
        "label_rule": "argmax over class_names",
        "accuracy": round(float(np.mean(pred == y_true)) if n else 0.0, 4),
        "balanced_accuracy": round(float(np.mean([per_class[c]["recall"] for c in class_names])), 4),
        "per_class": per_class,
        "confusion_matrix": {"labels": list(class_names), "rows_true_cols_pred": matrix},
    }

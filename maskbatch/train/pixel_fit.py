"""A trained detector's pixel fit (the card's ``pixels``), chosen on the photos it trained on.

The net's boxes are relative; the job turns them into integer pixel boxes (detect.to_pixels). A
lean of a fraction of a pixel that every box shares costs a face under 10 px its IoU 0.5 match
more often than not (docs/detector-training.md, 2026-12-07), so ``train-detector`` measures the
lean of the detector it wrote on its **training** photos: float boxes shifted by (dx, dy) photo
pixels and rounded, each shift scored by detection AP, the middle of the best ones kept. The
tuned mode applies what the card says (detect.card_pixels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from maskbatch.evaluation.scoring import score_detections
from maskbatch.models.detect import PixelFit, pass_size, to_pixels
from maskbatch.models.yunet_onnx import YunetOnnx
from maskbatch.photos import reading

GRID_DX = tuple(float(x) for x in np.round(np.arange(-1.0, 1.0001, 0.125), 3))
GRID_DY = tuple(float(y) for y in np.round(np.arange(-0.5, 0.5001, 0.125), 3))
# Shifts whose mean detection AP is within PLATEAU of the best are taken as equally good (on the
# bundled weights' flat top, neighbouring shifts differ by 0.0001-0.0004); the kept one is their median.
PLATEAU = 0.001
RULE = (f"float boxes of the training photos shifted by dx in {GRID_DX[0]:g}..{GRID_DX[-1]:g} "
        f"(dy 0), then dy in {GRID_DY[0]:g}..{GRID_DY[-1]:g} at that dx, 0.125 px steps, "
        f"rounded to pixels; the median shift within {PLATEAU:g} of the best mean detection AP "
        "of the sets")


@dataclass(frozen=True)
class Raw:
    """One photo's detections as the net gives them: rows (x1, y1, x2, y2, score), relative."""

    name: str
    rel: np.ndarray
    width: int
    height: int


def raw_detections(model_path: str | Path, items: list[tuple[str, str]], area: int,
                   max_upscale: float, floor: float) -> list[Raw]:
    """One YuNet ONNX over photos (name, path), one pass each at `area` pixels, as the job runs
    it (onnxruntime, scores above `floor`), the boxes left relative."""
    net = YunetOnnx(Path(model_path).read_bytes())
    out = []
    for name, path in items:
        image = reading.load_image(path)
        h, w = image.shape[:2]
        out.append(Raw(name, net.forward(image, pass_size(w, h, area, max_upscale), floor), w, h))
    return out


def as_table(raws: list[Raw], fit: PixelFit = PixelFit()) -> pd.DataFrame:
    """Detections (name, x1, y1, x2, y2, score) in pixels, placed as `fit` says."""
    rows = []
    for raw in raws:
        px = to_pixels(raw.rel, raw.width, raw.height, fit)
        rows += [(raw.name, *map(float, b), float(s)) for b, s in zip(px, raw.rel[:, 4])]
    return pd.DataFrame(rows, columns=["name", "x1", "y1", "x2", "y2", "score"])


def face_metrics(truth: pd.DataFrame, found: pd.DataFrame, names: list[str]) -> dict:
    """maskbatch.evaluate's metrics of class-agnostic detections (every box a "face")."""
    pred = found.assign(classname="face_with_mask", mask_prob=math.nan)
    return score_detections(truth, pred, image_names=names).metrics


def detection_ap(truth: pd.DataFrame, found: pd.DataFrame, names: list[str]) -> float:
    """Detection AP at IoU 0.5 of class-agnostic boxes (every box a face)."""
    return float(face_metrics(truth, found, names)["detection"]["ap"])


def choose_pixels(sets: dict[str, tuple[pd.DataFrame, list[Raw]]]) -> dict:
    """The card's ``pixels`` entry: dx, dy, rounded, the rule, every shift's detection AP per set
    and the sets' AP with the notebook's truncated boxes. `sets`: per dataset name, its truth
    table and the raw detections on its training photos."""

    def scored(dx: float, dy: float) -> dict:
        fit = PixelFit(dx, dy, rounded=True)
        aps = {s: round(detection_ap(t, as_table(r, fit), [x.name for x in r]), 4)
               for s, (t, r) in sets.items()}
        return {"dx": dx, "dy": dy, "det_ap": aps, "mean": round(float(np.mean(list(aps.values()))), 4)}

    along_x = [scored(dx, 0.0) for dx in GRID_DX]
    dx = _plateau_middle(along_x, "dx")
    along_y = [row for row in along_x if row["dx"] == dx]
    along_y += [scored(dx, dy) for dy in GRID_DY if dy != 0.0]
    dy = _plateau_middle(along_y, "dy")
    truncated = {s: round(detection_ap(t, as_table(r), [x.name for x in r]), 4)
                 for s, (t, r) in sets.items()}
    return {"dx": dx, "dy": dy, "rounded": True, "rule": RULE, "truncated_det_ap": truncated,
            "grid": along_x + [row for row in along_y if row["dy"] != 0.0]}


def _plateau_middle(rows: list[dict], key: str) -> float:
    """The median `key` of the rows whose mean AP is within PLATEAU of the best (a grid value)."""
    best = max(row["mean"] for row in rows)
    good = sorted(row[key] for row in rows if row["mean"] >= best - PLATEAU)
    return good[(len(good) - 1) // 2]


def plot_pixels(entry: dict, path: Path) -> None:
    """The card's pixel fit as a picture: detection AP per set against the shift, dx then dy."""
    fig = Figure(figsize=(8, 3.2))
    axes = fig.subplots(1, 2, sharey=True)
    dx = entry["dx"]
    for ax, key, rows in ((axes[0], "dx", [r for r in entry["grid"] if r["dy"] == 0.0]),
                          (axes[1], "dy", [r for r in entry["grid"] if r["dx"] == dx])):
        rows = sorted(rows, key=lambda r: r[key])
        for name in rows[0]["det_ap"]:
            ax.plot([r[key] for r in rows], [r["det_ap"][name] for r in rows], marker=".",
                    label=name)
        ax.plot([r[key] for r in rows], [r["mean"] for r in rows], "k--", label="mean")
        ax.axvline(entry[key], color="grey", lw=0.8)
        ax.set_xlabel(f"{key} (photo px)" + (f", at dx {dx:+g}" if key == "dy" else ", dy 0"))
    axes[0].set_ylabel("detection AP, training photos")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Pixel fit: boxes shifted {entry['dx']:+g}, {entry['dy']:+g} px, rounded")
    fig.tight_layout()
    fig.savefig(path, dpi=100)

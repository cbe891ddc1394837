"""The evaluation report: PR-curve and recall-by-size PNGs, the worst images drawn, report.html.

Files written into the evaluation folder (next to metrics.json):
  pr_curve.png         precision against recall per class (and class-agnostic detection), with
                       the operating point of the run's thresholds
  recall_by_size.png   detection recall per face-size bin (shorter side of the truth box)
  worst/*.jpg          the images with the most missed faces and wrong labels, boxes drawn:
                       truth green (ignore regions grey), predictions blue when correct (right
                       face and label), red when wrong (false alarm, duplicate or wrong label),
                       orange when on an ignore region
  faces_<class>.png    each class beyond the main two: its labelled faces, framed by outcome
                       (maskbatch.evaluation.gallery)
  report.html          the metrics table, both plots and the grid of worst images; it refers to
                       the files above by relative path, so the folder can be moved as a whole
"""

from __future__ import annotations

import html
import io
import math
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from maskbatch import files
from maskbatch.config import MASK
from maskbatch.errors import ImageError
from maskbatch.evaluation import gallery
from maskbatch.evaluation.intervals import difference_text, interval_text
from maskbatch.outputs import draw, writers
from maskbatch.photos import reading

if TYPE_CHECKING:
    from maskbatch.evaluation.scoring import Evaluation


N_WORST = 12
THUMB_SIDE = 800
# BGR
TRUTH_COLOUR = (40, 170, 40)
IGNORE_COLOUR = (150, 150, 150)
CORRECT_COLOUR = (220, 90, 20)
WRONG_COLOUR = (30, 30, 220)
IGNORED_PRED_COLOUR = (0, 150, 255)
CLASS_COLOURS = {"face_with_mask": "tab:blue", "face_no_mask": "tab:orange",
                 "face_with_mask_incorrect": "tab:green", "detection": "0.4"}


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def pr_curve_png(curves: dict[str, tuple[np.ndarray, np.ndarray]], metrics: dict) -> bytes:
    """PNG bytes: one precision/recall curve per class plus class-agnostic detection."""
    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.add_subplot()
    for name, (recall, precision) in curves.items():
        m = metrics["detection"] if name == "detection" else metrics["classes"][name]
        ap = m.get("ap")
        label = f"{name if name != 'detection' else 'detection (any class)'}: AP " + \
            ("-" if ap is None or (isinstance(ap, float) and math.isnan(ap)) else f"{ap:.3f}")
        style = "--" if name == "detection" else "-"
        colour = CLASS_COLOURS.get(name)
        if len(recall):
            ax.plot(np.concatenate([[0.0], recall]), np.concatenate([[precision[0]], precision]),
                    style, color=colour, label=label, drawstyle="steps-post")
        else:
            ax.plot([], [], style, color=colour, label=label)
        if m.get("precision") is not None and m.get("recall") is not None:
            ax.plot([m["recall"]], [m["precision"]], "o", color=colour)
    ax.set_xlim(0, 1.0)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"Precision-recall at IoU {metrics['iou']:.2f} (dot: the run's thresholds)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    return _png(fig)


def recall_by_size_png(metrics: dict) -> bytes:
    """PNG bytes: detection recall per face-size bin, with the number of faces in each."""
    bins = metrics["recall_by_size"]
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    x = np.arange(len(bins))
    values = [b["recall"] if b["recall"] is not None else 0.0 for b in bins]
    bars = ax.bar(x, values, color="tab:blue")
    for bar, b in zip(bars, bins, strict=True):
        text = "no faces" if not b["n_truth"] else f"{b['recall']:.2f}\n{b['found']}/{b['n_truth']}"
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.02, text,
                ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [f"{b['bin']} px" for b in bins])
    ax.set_ylim(0, 1.2)
    ax.set_xlabel("face size (shorter side of the truth box)")
    ax.set_ylabel("detection recall")
    ax.set_title(f"Faces found, by size (IoU {metrics['iou']:.2f}, any label)")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def worst_images(per_image: pd.DataFrame, n: int = N_WORST) -> pd.DataFrame:
    """The `n` images with the most missed faces plus wrong labels (then most false alarms)."""
    bad = per_image.assign(errors=per_image["missed"] + per_image["wrong_label"])
    bad = bad[(bad["errors"] > 0) | (bad["fp"] > 0)]
    return bad.sort_values(["errors", "fp", "name"], ascending=[False, False, True]).head(n)


def _short(label: str) -> str:
    return {"face_with_mask": "mask", "face_no_mask": "no mask"}.get(label, label)


def _text(image: np.ndarray, text: str, x: int, y: int, colour: tuple, scale: float) -> None:
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x = int(min(max(x, 0), max(image.shape[1] - tw - 2, 0)))
    y = int(min(max(y, th + 2), image.shape[0] - 2))
    cv2.rectangle(image, (x, y - th - 2), (x + tw + 2, y + 2), colour, -1)
    cv2.putText(image, text, (x + 1, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                cv2.LINE_AA)


def _corners(row: object, scale: float, shape: tuple) -> tuple[int, int, int, int]:
    """A box's corners in the scaled image's pixels, held to one pixel around it (a box far off
    the image, e.g. at 1e30, is drawn on its edge rather than overflowing OpenCV's ints)."""
    high = (shape[1] + 1, shape[0] + 1, shape[1] + 1, shape[0] + 1)
    values = (row.x1, row.y1, row.x2, row.y2)
    return tuple(int(round(min(max(v * scale, -1.0), top))) if math.isfinite(v * scale) else -1
                 for v, top in zip(values, high))  # type: ignore[return-value]


def draw_evaluation(image: np.ndarray, truth: pd.DataFrame, predictions: pd.DataFrame,
                    max_side: int = THUMB_SIDE) -> np.ndarray:
    """A copy of `image` scaled to `max_side` (at most 2x up), truth and predicted boxes drawn.

    `truth` and `predictions` are the image's rows of Evaluation.truth / .predictions. Truth
    labels are written only where the face was missed or got the wrong label (otherwise the blue
    prediction says it); predicted labels carry P(label).
    """
    scale = min(2.0, max_side / max(image.shape[:2]))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    out = image.copy() if scale == 1.0 else cv2.resize(image, None, fx=scale, fy=scale,
                                                       interpolation=interp)
    font, thick = 0.4, 2 if max(out.shape[:2]) >= 500 else 1
    for row in truth.itertuples(index=False):
        x1, y1, x2, y2 = _corners(row, scale, out.shape)
        ignore = row.label == "ignore"
        colour = IGNORE_COLOUR if ignore else TRUTH_COLOUR
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, 1 if ignore else thick)
        if ignore:
            text = f"ignore: {row.classname}"
        elif not row.found:
            text = f"missed: {_short(row.label)}"
        elif row.pred_label != row.label:
            text = f"truth: {_short(row.label)}"
        else:
            continue
        _text(out, text, x1, y2 + 12, colour, font)
    for row in predictions.itertuples(index=False):
        x1, y1, x2, y2 = _corners(row, scale, out.shape)
        colour = {"tp": CORRECT_COLOUR, "ignored": IGNORED_PRED_COLOUR}.get(row.status,
                                                                          WRONG_COLOUR)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thick)
        prob = getattr(row, f"prob_{row.classname}", None)  # an N-class model's P(class)
        if prob is None:
            prob = row.mask_prob if row.classname == MASK else 1.0 - row.mask_prob
        conf = f" {prob:.2f}" if not math.isnan(prob) else ""
        _text(out, f"{_short(row.classname)}{conf}", x1, y1 - 3, colour, font)
    return out


def _load_first(candidates: list[str]) -> np.ndarray | None:
    for path in candidates:
        try:
            return reading.load_image(path)
        except (ImageError, OSError, ValueError):
            continue
    return None


def _safe_stem(name: str) -> str:
    """A file-name stem for a photo's drawing: letters, digits, "-", "_" and "." kept, short
    enough for any file system (draw.fitting_stem, as the previews)."""
    keep = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return draw.fitting_stem(keep.rsplit(".", 1)[0] if "." in keep else keep, name)


def write_worst(ev: Evaluation, out_dir: str, paths: dict[str, list[str]], n: int = N_WORST
                ) -> list[dict]:
    """Draw the worst images into out_dir/worst/; one dict per image (name, file or None, counts).
    """
    chosen = worst_images(ev.per_image, n)
    items = []
    for k, row in enumerate(chosen.itertuples(index=False)):
        item = {"name": row.name, "file": None, "missed": int(row.missed),
                "wrong_label": int(row.wrong_label), "fp": int(row.fp),
                "n_truth": int(row.n_truth), "predicted": bool(getattr(row, "predicted", True))}
        image = _load_first(paths.get(row.name, []))
        if image is not None:
            drawn = draw_evaluation(image, ev.truth[ev.truth["name"] == row.name],
                                    ev.predictions[ev.predictions["name"] == row.name])
            ok, buf = cv2.imencode(".jpg", drawn, [cv2.IMWRITE_JPEG_QUALITY, 85])
            if ok:
                rel = f"worst/{k + 1:02d}_{_safe_stem(row.name)}.jpg"
                writers.write_bytes_atomic(files.join(out_dir, rel), buf.tobytes())
                item["file"] = rel
        items.append(item)
    return items


def _fmt(value: object, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "&ndash;"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _metrics_html(m: dict) -> str:
    head = ("<tr><th></th><th>AP</th><th>precision</th><th>recall</th><th>truth</th>"
            "<th>predicted</th><th>TP</th><th>FP</th><th>FN</th><th>ignored</th></tr>")
    rows = []
    for label, c in list(m["classes"].items()) + \
            [("detection (any class)", m["detection"])]:
        rows.append(
            f"<tr><th>{html.escape(label)}</th><td>{_fmt(c['ap'])}</td>"
            f"<td>{_fmt(c['precision'])}</td><td>{_fmt(c['recall'])}</td><td>{c['n_truth']}</td>"
            f"<td>{c['n_pred']}</td><td>{c['tp']}</td><td>{c['fp']}</td><td>{c['fn']}</td>"
            f"<td>{c['ignored']}</td></tr>")
    note = interval_text(m.get("intervals"), "map")
    rows.append(f"<tr class='map'><th>mAP</th><td>{_fmt(m['map'])}</td>"
                f"<td colspan='8' style='text-align:left'>{html.escape(note)}</td></tr>")
    base = m.get("baseline")
    if base:
        text = (f"baseline {base['pred']}: mAP {_fmt(base['map'])}, this run "
                f"{difference_text(base['difference'], 'map')}")
        rows.append(f"<tr><th>vs baseline</th><td colspan='9' style='text-align:left'>"
                    f"{html.escape(text)}</td></tr>")
    coco = m.get("coco") or {}
    if coco.get("available"):
        rows.append(f"<tr><th>COCO AP@[.5:.95]</th><td>{_fmt(coco['ap'])}</td><td colspan='8' "
                    f"style='text-align:left'>AP@0.5 {_fmt(coco['ap50'])}, AP@0.75 "
                    f"{_fmt(coco['ap75'])} ({html.escape(coco['tool'])}, 101-point)</td></tr>")
    size = "".join(f"<tr><th>{html.escape(b['bin'])} px</th><td>{_fmt(b['recall'])}</td>"
                   f"<td>{b['found']} / {b['n_truth']}</td></tr>" for b in m["recall_by_size"])
    conf = m["confusion"]
    conf_rows = "".join(
        f"<tr><th>{html.escape(label)}</th>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>"
        for label, row in zip(conf["labels"], conf["matrix"], strict=True))
    return (
        f"<table>{head}{''.join(rows)}</table>"
        "<div class='row'>"
        "<div><h3>Detection recall by face size</h3><table><tr><th>shorter side</th>"
        f"<th>recall</th><th>found / faces</th></tr>{size}</table></div>"
        "<div><h3>Label confusion on matched faces</h3><table><tr><th>truth \\ predicted</th>"
        + "".join(f"<th>{html.escape(c)}</th>" for c in conf["labels"]) + f"</tr>{conf_rows}"
        f"</table><p>label accuracy {_fmt(conf['label_accuracy'])}</p></div></div>"
    )


CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
tr.map{font-weight:bold}
.row{display:flex;gap:2em;flex-wrap:wrap;align-items:flex-start}
.plots img{max-width:100%;height:auto}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:1em}
.grid figure{margin:0;border:1px solid #ddd;padding:.4em}
.grid img{width:100%;height:auto}
.legend span{padding:0 .4em;color:#fff;border-radius:3px}
.warn{color:#a60}
"""


def report_html(metrics: dict, worst: list[dict]) -> str:
    """The self-contained page: everything it shows lies beside it (relative paths)."""
    by_class = ", ".join(f"{n} {html.escape(c)}" for c, n in metrics["n_truth_by_class"].items())
    ignore = ", ".join(metrics.get("ignore_classes", [])) or "none"
    warn = "".join(f"<p class='warn'>&#9888; {html.escape(w)}</p>"
                   for w in metrics.get("warnings", []))
    cells = []
    for item in worst:
        caption = (f"<b>{html.escape(item['name'])}</b>: {item['missed']} of {item['n_truth']} "
                   f"faces missed, {item['wrong_label']} wrong label(s), {item['fp']} false "
                   "alarm(s)" + ("" if item["predicted"] else " &mdash; <i>not predicted</i>"))
        img = (f"<img src='{html.escape(item['file'])}' alt='{html.escape(item['name'])}'>"
               if item["file"] else "<p><i>image not found</i></p>")
        cells.append(f"<figure>{img}<figcaption>{caption}</figcaption></figure>")
    grid = ("<div class='grid'>" + "".join(cells) + "</div>") if cells \
        else "<p>No image has a missed face, a wrong label or a false alarm.</p>"
    legend = ("<p class='legend'>Boxes: <span style='background:#28aa28'>truth</span> "
              "<span style='background:#969696'>ignore region</span> "
              "<span style='background:#145adc'>correct prediction</span> "
              "<span style='background:#dc1e1e'>wrong (false alarm, duplicate, wrong label)</span> "
              "<span style='background:#ff9600'>prediction on an ignore region</span></p>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>maskbatch evaluation</title>
<style>{CSS}</style></head><body>
<h1>maskbatch evaluation</h1>
<p>Truth <code>{html.escape(str(metrics.get('truth', '')))}</code>, predictions
<code>{html.escape(str(metrics.get('pred', '')))}</code>.<br>
{metrics['n_images']} images, {metrics['n_truth_faces']} faces ({by_class}),
{metrics['n_ignore_regions']} ignore regions ({html.escape(ignore)}),
{metrics['n_predictions']} predicted boxes. IoU threshold {metrics['iou']:.2f};
AP is Pascal VOC all-point; ranking {html.escape(metrics['ranking'])}.</p>
{warn}
<h2>Metrics</h2>
{_metrics_html(metrics)}
<h2>Plots</h2>
<div class="row plots"><img src="pr_curve.png" alt="precision-recall curves">
<img src="recall_by_size.png" alt="recall by face size"></div>
<h2>Worst images</h2>
<p>Most missed faces plus wrong labels first, then most false alarms.</p>
{legend}
{grid}
</body></html>
"""


def write_report(ev: Evaluation, out_dir: str, paths: dict[str, list[str]]) -> dict[str, str]:
    """Write the plots, the worst images and report.html into `out_dir`; their paths by name.

    `ev` is a :class:`maskbatch.evaluation.scoring.Evaluation` whose metrics are JSON-safe (NaN as None);
    `paths` gives, per image name, the places to try for the photo.
    """
    written = {}
    for name, data in (("pr_curve.png", pr_curve_png(ev.curves, ev.metrics)),
                       ("recall_by_size.png", recall_by_size_png(ev.metrics))):
        written[name] = files.join(out_dir, name)
        writers.write_bytes_atomic(written[name], data)
    worst = write_worst(ev, out_dir, paths)
    for class_name in gallery.rare_classes(ev.metrics["confusion"]["labels"]):
        data = gallery.gallery_png(ev.truth, paths, class_name)
        if data:
            name = f"faces_{class_name}.png"
            written[name] = files.join(out_dir, name)
            writers.write_bytes_atomic(written[name], data)
    written["report.html"] = files.join(out_dir, "report.html")
    writers.write_bytes_atomic(written["report.html"], report_html(ev.metrics, worst).encode())
    return written


"""OUT_DIR/report.html of a predict run: one self-contained page to look at and share.

Built at the end of a run from the final tables only (the detections and the manifest, as
written to detections.parquet and images.parquet), so it does not care how the run got there
(one call, or several with --resume). Every picture is inlined as a data: URI, so the page
opens from disk, from a bucket or as a mail attachment, with nothing beside it. It shows:

- counts: photos read / failed, faces per class, photos with at least one unmasked face
- histograms (PNG, matplotlib): faces per photo; face size (shorter side of the box, px)
- a gallery: the first photos, the most crowded ones (boxes drawn as in previews/), and the
  least certain faces (P(mask) nearest the classifier's threshold)
- every failed photo with its reason
- throughput over the run: photos committed against seconds (this call's partitions)
- the model card (the classifier) and the detector card (mode, passes, threshold, weights)

Pictures of photos are drawn by a `render` callable given (function, args) jobs (api.predict
sends them to the Dask workers, which read the photos; here the default draws them in-process).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from maskbatch import MASK, NO_MASK, __version__, files, output
from maskbatch.config import DetectorConfig

REPORT_FILE = "report.html"
N_FIRST = 4
N_CROWDED = 4
N_UNCERTAIN = 12
MAX_FAILED_ROWS = 500
MAX_UNMASKED_ROWS = 200
GALLERY_SIDE = 640
FACE_SIDE = 128
SIZE_BINS = (0, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024, 4096)

Job = tuple[Callable[..., bytes], tuple]
Gallery = tuple[list[tuple[str, str, str]], list[bytes]]  # (section, caption, kind), JPEGs


@dataclass
class Timeline:
    """Photos committed over time: call ``add(n)`` when a partition of n photos is committed."""

    started: float = field(default_factory=time.perf_counter)
    points: list[tuple[float, int]] = field(default_factory=list)

    def add(self, photos: int) -> None:
        done = (self.points[-1][1] if self.points else 0) + int(photos)
        self.points.append((time.perf_counter() - self.started, done))


def render_local(jobs: Sequence[Job]) -> list[bytes]:
    """Run the drawing jobs in this process; a photo that cannot be drawn gives b""."""
    out = []
    for fn, args in jobs:
        try:
            out.append(fn(*args))
        except Exception:  # noqa: BLE001 - a picture missing from the report is not fatal
            out.append(b"")
    return out


# --------------------------------------------------------------------------- tables


def unmasked_photos(detections: pd.DataFrame) -> pd.DataFrame:
    """name, faces, unmasked: photos with at least one face_no_mask, most unmasked first."""
    if detections.empty:
        return pd.DataFrame(columns=["name", "faces", "unmasked"])
    g = detections.assign(unmasked=detections["classname"] == NO_MASK).groupby("name", sort=False)
    table = pd.DataFrame({"faces": g.size(), "unmasked": g["unmasked"].sum()}).reset_index()
    table = table[table["unmasked"] > 0]
    return table.sort_values(["unmasked", "faces"], ascending=False, kind="stable",
                             ignore_index=True)


def face_sizes(detections: pd.DataFrame) -> np.ndarray:
    """Shorter side of each face box in pixels (columns keep the dataset's quirk)."""
    width = detections["y1"].to_numpy(float) - detections["x1"].to_numpy(float)
    height = detections["y2"].to_numpy(float) - detections["x2"].to_numpy(float)
    return np.minimum(width, height)


def least_certain(detections: pd.DataFrame, threshold: float, n: int = N_UNCERTAIN
                  ) -> pd.DataFrame:
    """The n faces whose P(mask) lies nearest the classifier's threshold."""
    if detections.empty:
        return detections
    gap = (detections["mask_prob"] - threshold).abs()
    return detections.assign(_gap=gap).sort_values("_gap", kind="stable").head(n).drop(
        columns="_gap")


# --------------------------------------------------------------------------- pictures


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def histograms_png(manifest: pd.DataFrame, detections: pd.DataFrame) -> bytes:
    """Two histograms side by side: faces per photo, and face size (shorter side, px)."""
    fig = Figure(figsize=(10, 3.4))
    ax1, ax2 = fig.subplots(1, 2)
    ok = manifest[manifest["status"] == "ok"]
    counts = ok["n_faces"].to_numpy(int) if len(ok) else np.zeros(0, int)
    top = int(counts.max()) if len(counts) else 0
    values = np.bincount(counts, minlength=top + 1) if len(counts) else np.zeros(1, int)
    ax1.bar(np.arange(len(values)), values, color="#4878a8", width=0.85)
    ax1.set_xlabel("faces in the photo")
    ax1.set_ylabel("photos")
    ax1.set_title(f"Faces per photo ({len(ok)} photos read)")
    sizes = face_sizes(detections)
    bins = [b for b in SIZE_BINS if b <= max(64, sizes.max() if len(sizes) else 0) * 1.5]
    hist, edges = np.histogram(sizes, bins=bins)
    x = np.arange(len(hist))
    for k, cls, colour in ((0, MASK, "#3cb43c"), (1, NO_MASK, "#e62828")):
        part = face_sizes(detections[detections["classname"] == cls])
        h, _ = np.histogram(part, bins=edges)
        ax2.bar(x + (k - 0.5) * 0.4, h, width=0.4, color=colour,
                label="mask" if cls == MASK else "no mask")
    ax2.set_xticks(x, [f"{int(a)}-{int(b)}" for a, b in zip(edges[:-1], edges[1:])],
                   rotation=45, fontsize=7)
    ax2.set_xlabel("face size: shorter side of the box (px)")
    ax2.set_ylabel("faces")
    ax2.set_title(f"Face size ({len(sizes)} faces)")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.grid(axis="y", alpha=0.3)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return _png(fig)


def throughput_png(points: Sequence[tuple[float, int]]) -> bytes:
    """Photos committed against seconds since the first task, with the mean rate."""
    fig = Figure(figsize=(6, 3.2))
    ax = fig.add_subplot()
    t = np.array([0.0] + [p[0] for p in points])
    done = np.array([0] + [p[1] for p in points])
    ax.step(t, done, where="post", color="#4878a8")
    rate = done[-1] / t[-1] if t[-1] > 0 else math.nan
    ax.set_xlabel("seconds since the first task")
    ax.set_ylabel("photos committed")
    ax.set_title(f"Throughput: {rate:.1f} photos/s on average" if not math.isnan(rate)
                 else "Throughput")
    ax.grid(alpha=0.3)
    return _png(fig)


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _boxes(detections: pd.DataFrame, name: str) -> list[tuple]:
    rows = detections[detections["name"] == name]
    return list(zip(rows["x1"], rows["x2"], rows["y1"], rows["y2"], rows["classname"],
                    rows["mask_prob"]))


def gallery_jobs(detections: pd.DataFrame, manifest: pd.DataFrame, threshold: float,
                 n_first: int = N_FIRST) -> tuple[list[tuple[str, str, str]], list[Job]]:
    """((section, caption, kind) per picture, the drawing jobs), in the same order."""
    from maskbatch.draw import face_jpeg, preview_jpeg

    ok = manifest[manifest["status"] == "ok"]
    items: list[tuple[str, str, str]] = []
    jobs: list[Job] = []
    for row in ok.head(n_first).itertuples(index=False):
        items.append(("first", f"{row.name}: {row.n_faces} face(s)", "photo"))
        jobs.append((preview_jpeg, (row.path, _boxes(detections, row.name), GALLERY_SIDE)))
    crowded = ok[ok["n_faces"] > 0].sort_values("n_faces", ascending=False, kind="stable")
    for row in crowded.head(N_CROWDED).itertuples(index=False):
        items.append(("crowded", f"{row.name}: {row.n_faces} faces", "photo"))
        jobs.append((preview_jpeg, (row.path, _boxes(detections, row.name), GALLERY_SIDE)))
    paths = dict(zip(manifest["name"], manifest["path"]))
    for row in least_certain(detections, threshold).itertuples(index=False):
        shown = "mask" if row.classname == MASK else "no mask"
        items.append(("uncertain", f"{row.name}: {shown}, P(mask) {row.mask_prob:.2f}", "face"))
        jobs.append((face_jpeg, (paths[row.name], (row.x1, row.x2, row.y1, row.y2), FACE_SIDE)))
    return items, jobs


# --------------------------------------------------------------------------- cards


def detector_card(config: DetectorConfig) -> dict:
    """What found the faces: the mode, its passes, its threshold and its weights."""
    from maskbatch import detect, yunet

    mode = detect.get_mode(config.mode)
    nets = {p.net for p in mode.passes}
    weights = []
    if "tuned" in nets:
        path, card = yunet.read_tuned_card()
        val = card.get("validation", {})
        scores = ", ".join(f"{k} det AP {v['det_ap']:.3f}" for k, v in val.items())
        weights.append(f"{path.name} (sha256 {card['onnx_sha256'][:12]}…, YuNet fine-tuned on "
                       f"{', '.join(card['training_data']['datasets'])}; validation: {scores})")
    if "yunet" in nets:
        weights.append(f"{yunet.MODEL_FILE} (sha256 {yunet.MODEL_SHA256[:12]}…, opencv_zoo, MIT)")
    if "res10" in nets:
        weights.append(f"{detect.WEIGHTS_FILE} (sha1 {detect.WEIGHTS_SHA1[:12]}…)")
    return {
        "mode": mode.name,
        "description": mode.description,
        "confidence": config.confidence if config.confidence is not None else mode.confidence,
        "confidence_source": "--confidence" if config.confidence is not None else "the mode's own",
        "gamma": config.gamma if mode.gamma else "none (the photo as it is)",
        "passes": len(mode.passes),
        "boxes_tightened": mode.tighten,
        "nms_iou": config.nms_iou,
        "weights": "; ".join(weights),
    }


MODEL_CARD_FIELDS = ("architecture", "architecture_description", "parameters", "input_size",
                     "class_names", "output", "threshold", "threshold_rule", "onnx_sha256",
                     "training_data", "validation", "cross_dataset", "versions")


def _card_html(card: dict, fields: Sequence[str] | None = None) -> str:
    rows = []
    for key in fields or list(card):
        if key not in card:
            continue
        value = card[key]
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        if len(text) > 400:
            text = text[:400] + " …"
        rows.append(f"<tr><th>{html.escape(key)}</th><td class='l'>{html.escape(text)}</td></tr>")
    return "<table class='card'>" + "".join(rows) + "</table>"


# --------------------------------------------------------------------------- the page

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:.5em 0}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right;vertical-align:top}
td.l,th.l{text-align:left}
table.card td{max-width:900px;word-break:break-word;font-size:.9em}
.kpi{display:flex;gap:1em;flex-wrap:wrap}
.kpi div{border:1px solid #ddd;border-radius:6px;padding:.5em 1em;min-width:9em}
.kpi b{display:block;font-size:1.6em}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:1em}
.faces{display:grid;grid-template-columns:repeat(auto-fill,minmax(140px,1fr));gap:.6em}
figure{margin:0;border:1px solid #ddd;padding:.4em}
figure img{width:100%;height:auto}
figcaption{font-size:.85em;word-break:break-all}
img.plot{max-width:100%;height:auto}
.muted{color:#777}
"""


def _kpi(label: str, value: object) -> str:
    return f"<div><b>{html.escape(str(value))}</b>{html.escape(label)}</div>"


def _figures(items: list[tuple[str, str, str]], pictures: list[bytes], section: str) -> str:
    cells = []
    for (sec, caption, _kind), data in zip(items, pictures):
        if sec != section:
            continue
        img = (f"<img src='{_data_uri(data, 'image/jpeg')}' alt='{html.escape(caption)}'>"
               if data else "<p class='muted'>(photo could not be read again)</p>")
        cells.append(f"<figure>{img}<figcaption>{html.escape(caption)}</figcaption></figure>")
    return "".join(cells) or "<p class='muted'>none</p>"


def report_html(detections: pd.DataFrame, manifest: pd.DataFrame, *, summary: dict,
                run: dict, model_card: dict, detector: dict, timeline: Sequence[tuple[float, int]],
                gallery: Gallery) -> str:
    """The page as a string: everything inlined."""
    ok = manifest[manifest["status"] == "ok"]
    failed = manifest[manifest["status"] != "ok"]
    per_class = {c: int((detections["classname"] == c).sum()) for c in (MASK, NO_MASK)}
    unmasked = unmasked_photos(detections)
    threshold = model_card.get("threshold", 0.5)
    items, pictures = gallery

    kpis = "".join([
        _kpi("photos", len(manifest)), _kpi("read", len(ok)), _kpi("failed", len(failed)),
        _kpi("faces", len(detections)), _kpi("with mask", per_class[MASK]),
        _kpi("without mask", per_class[NO_MASK]),
        _kpi("photos with an unmasked face", len(unmasked)),
        _kpi("photos/s", summary.get("images_per_second") or "–"),
    ])
    unmasked_rows = "".join(
        f"<tr><td class='l'>{html.escape(str(r.name))}</td><td>{r.unmasked}</td><td>{r.faces}"
        "</td></tr>" for r in unmasked.head(MAX_UNMASKED_ROWS).itertuples(index=False))
    unmasked_more = (f"<p class='muted'>… and {len(unmasked) - MAX_UNMASKED_ROWS} more "
                     "(detections.parquet has them all)</p>"
                     if len(unmasked) > MAX_UNMASKED_ROWS else "")
    unmasked_table = (f"<table><tr><th class='l'>photo</th><th>unmasked faces</th>"
                      f"<th>faces</th></tr>{unmasked_rows}</table>{unmasked_more}"
                      if len(unmasked) else "<p>No photo has an unmasked face.</p>")
    failed_rows = "".join(
        f"<tr><td class='l'>{html.escape(str(r.name))}</td><td class='l'>{html.escape(str(r.status))}"
        f"</td><td class='l'>{html.escape(str(r.reason))}</td></tr>"
        for r in failed.head(MAX_FAILED_ROWS).itertuples(index=False))
    failed_more = (f"<p class='muted'>… and {len(failed) - MAX_FAILED_ROWS} more "
                   "(images.parquet has them all)</p>" if len(failed) > MAX_FAILED_ROWS else "")
    reasons = failed["reason"].value_counts().head(10) if len(failed) else pd.Series(dtype=int)
    reason_list = "".join(f"<li>{n} × {html.escape(str(r))}</li>" for r, n in reasons.items())
    failed_html = (f"<ul>{reason_list}</ul><table><tr><th class='l'>photo</th>"
                   f"<th class='l'>status</th><th class='l'>reason</th></tr>{failed_rows}</table>"
                   f"{failed_more}" if len(failed) else "<p>Every photo was read.</p>")
    hist = _data_uri(histograms_png(manifest, detections), "image/png")
    if timeline:
        speed = (f"<img class='plot' src='{_data_uri(throughput_png(timeline), 'image/png')}' "
                 "alt='photos committed over time'>")
    else:
        speed = "<p class='muted'>No partition ran in this call (everything was already done).</p>"
    speed += (f"<p>{summary.get('processed_now', '–')} photos processed by this call in "
              f"{summary.get('seconds', '–')} s ({summary.get('images_per_second') or '–'} "
              f"photos/s); the whole call took {summary.get('wall_seconds', '–')} s, cluster "
              "start-up and final files included.</p>")
    inputs = html.escape(str(run.get("images", "")))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>maskbatch run report</title><style>{CSS}</style></head><body>
<h1>maskbatch run report</h1>
<p>Photos <code>{inputs}</code> &rarr; <code>{html.escape(str(summary.get('out_dir', '')))}</code>;
maskbatch {html.escape(__version__)}, detector mode <code>{html.escape(detector['mode'])}</code>,
classifier <code>{html.escape(str(model_card.get('onnx_sha256', ''))[:12])}</code>, written
{html.escape(time.strftime('%Y-%m-%d %H:%M:%S %Z'))}.</p>
<div class="kpi">{kpis}</div>
<h2>Faces</h2>
<img class="plot" src="{hist}" alt="histograms: faces per photo and face size">
<h2>Gallery</h2>
<h3>The first photos</h3><div class="grid">{_figures(items, pictures, 'first')}</div>
<h3>The most crowded photos</h3><div class="grid">{_figures(items, pictures, 'crowded')}</div>
<h3>The least certain faces</h3>
<p>P(mask) nearest the classifier's threshold ({threshold}): the faces most worth a second
look.</p><div class="faces">{_figures(items, pictures, 'uncertain')}</div>
<h2>Photos with at least one unmasked face ({len(unmasked)})</h2>
{unmasked_table}
<h2>Failed and skipped photos ({len(failed)})</h2>
{failed_html}
<h2>Throughput</h2>
{speed}
<h2>Detector</h2>
{_card_html(detector)}
<h2>Classifier (model card)</h2>
{_card_html(model_card, MODEL_CARD_FIELDS)}
<p class="muted">Files of this run: detections.parquet, submission.csv, images.parquet,
detections.coco.json + images.coco.json (COCO), summary.json, run.json.</p>
</body></html>
"""


def draw_gallery(detections: pd.DataFrame, manifest: pd.DataFrame, model_card: dict,
                 render: Callable[[Sequence[Job]], list[bytes]] = render_local,
                 n_first: int = N_FIRST) -> Gallery:
    """The gallery's captions and JPEGs: `render` draws the (function, args) jobs (api.predict
    gives one that runs them on the Dask workers, which read the photos)."""
    items, jobs = gallery_jobs(detections, manifest, float(model_card.get("threshold", 0.5)),
                               n_first)
    return items, list(render(jobs)) if jobs else []


def write_run_report(out_dir: str, detections: pd.DataFrame, manifest: pd.DataFrame, *,
                     summary: dict, run: dict, model_card: dict,
                     detector: DetectorConfig = DetectorConfig(),
                     timeline: Sequence[tuple[float, int]] = (),
                     gallery: Gallery | None = None) -> str:
    """Write OUT_DIR/report.html from a run's final tables; its path.

    detections / manifest: the run's detections.parquet / images.parquet tables. summary: the
    run's summary.json dict; run: its run.json dict (plus "images", the input argument);
    model_card: the classifier's card; timeline: (seconds, photos committed) points
    (:class:`Timeline`); gallery: from :func:`draw_gallery` (default: drawn in this process).
    """
    if gallery is None:
        gallery = draw_gallery(detections, manifest, model_card)
    page = report_html(detections, manifest, summary=summary, run=run, model_card=model_card,
                       detector=detector_card(detector), timeline=list(timeline),
                       gallery=gallery)
    path = files.join(out_dir, REPORT_FILE)
    output.write_bytes_atomic(path, page.encode())
    return path

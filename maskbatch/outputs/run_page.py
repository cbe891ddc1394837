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
- per video (the first run_digest.MAX_VIDEO_PLOTS), faces per class over time (frames.parquet)
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
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from maskbatch import files
from maskbatch.config import MASK, NO_MASK, DetectorConfig, __version__
from maskbatch.models import detect, yunet
from maskbatch.outputs import writers
from maskbatch.outputs.run_digest import (
    MAX_FAILED_ROWS,
    MAX_UNMASKED_ROWS,
    SIZE_BINS,
    Digest,
    Gallery,
    draw_gallery,
    video_timelines,
)

REPORT_FILE = "report.html"


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def histograms_png(digest: Digest) -> bytes:
    """Two histograms side by side: faces per photo, and face size (shorter side, px)."""
    fig = Figure(figsize=(10, 3.4))
    ax1, ax2 = fig.subplots(1, 2)
    values = digest.faces_per_photo
    ax1.bar(np.arange(len(values)), values, color="#4878a8", width=0.85)
    ax1.set_xlabel("faces in the photo")
    ax1.set_ylabel("photos")
    ax1.set_title(f"Faces per photo ({digest.read} photos read)")
    total = sum((digest.size_counts.get(c, np.zeros(len(SIZE_BINS) - 1, np.int64))
                 for c in (MASK, NO_MASK)), np.zeros(len(SIZE_BINS) - 1, np.int64))
    used = np.flatnonzero(total)
    # bins up to the largest face's bin, and at least up to 64 px
    n_bins = max(int(used[-1]) + 1 if len(used) else 0, SIZE_BINS.index(64))
    edges = SIZE_BINS[:n_bins + 1]
    x = np.arange(n_bins)
    for k, cls, colour in ((0, MASK, "#3cb43c"), (1, NO_MASK, "#e62828")):
        h = digest.size_counts.get(cls, np.zeros(len(SIZE_BINS) - 1, np.int64))[:n_bins]
        ax2.bar(x + (k - 0.5) * 0.4, h, width=0.4, color=colour,
                label="mask" if cls == MASK else "no mask")
    ax2.set_xticks(x, [f"{int(a)}-{int(b)}" for a, b in zip(edges[:-1], edges[1:])],
                   rotation=45, fontsize=7)
    ax2.set_xlabel("face size: shorter side of the box (px)")
    ax2.set_ylabel("faces")
    ax2.set_title(f"Face size ({digest.faces} faces)")
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


VIDEO_LINES = {MASK: ("#4c9f70", "with mask"), NO_MASK: ("#c44e52", "without mask")}


def videos_png(timelines: dict[str, pd.DataFrame]) -> bytes:
    """Per video, faces per class on each sampled frame against its time: one panel each."""
    fig = Figure(figsize=(10, 2.4 * len(timelines)))
    axes = fig.subplots(len(timelines), 1, squeeze=False)[:, 0]
    for ax, (name, frames) in zip(axes, timelines.items()):
        for column in frames.columns.drop("time_s"):  # one line per class of the model's card
            colour, label = VIDEO_LINES.get(column, ("#dd8452", column.replace("_", " ")))
            ax.step(frames["time_s"], frames[column], where="post", color=colour, label=label)
        ax.set_title(str(name), fontsize=10)
        ax.set_ylabel("faces")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("seconds into the video")
    return _png(fig)


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def detector_card(config: DetectorConfig) -> dict:
    """What found the faces: the mode, its passes, its threshold and its weights."""

    mode = detect.get_mode(config.mode)
    nets = {mode.scan.net}
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
        "boxes_tightened": mode.tighten,
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


def _kpis_html(digest: Digest, summary: dict) -> str:
    """The counts at the top: photos, read, failed, faces per class, photos/s."""
    per_class = digest.per_class
    return "".join([
        _kpi("photos", digest.photos), _kpi("read", digest.read), _kpi("failed", digest.failed),
        _kpi("faces", digest.faces), _kpi("with mask", per_class[MASK]),
        _kpi("without mask", per_class[NO_MASK]),
        *(_kpi(c.replace("_", " "), n) for c, n in per_class.items() if c not in (MASK, NO_MASK)),
        _kpi("photos with an unmasked face", digest.unmasked_photos),
        _kpi("photos/s", summary.get("images_per_second") or "–"),
    ])


def _unmasked_html(digest: Digest) -> str:
    """The photos with at least one unmasked face (the first MAX_UNMASKED_ROWS)."""
    unmasked, n_unmasked = digest.unmasked, digest.unmasked_photos
    if not n_unmasked:
        return "<p>No photo has an unmasked face.</p>"
    rows = "".join(
        f"<tr><td class='l'>{html.escape(str(r.name))}</td><td>{r.unmasked}</td><td>{r.faces}"
        "</td></tr>" for r in unmasked.head(MAX_UNMASKED_ROWS).itertuples(index=False))
    more = (f"<p class='muted'>… and {n_unmasked - MAX_UNMASKED_ROWS} more "
            "(detections.parquet has them all)</p>" if n_unmasked > MAX_UNMASKED_ROWS else "")
    return (f"<table><tr><th class='l'>photo</th><th>unmasked faces</th>"
            f"<th>faces</th></tr>{rows}</table>{more}")


def _failed_html(digest: Digest) -> str:
    """The ten commonest reasons and the failed photos (the first MAX_FAILED_ROWS)."""
    failed, n_failed = digest.failed_rows, digest.failed
    if not n_failed:
        return "<p>Every photo was read.</p>"
    rows = "".join(
        f"<tr><td class='l'>{html.escape(str(r.name))}</td><td class='l'>{html.escape(str(r.status))}"
        f"</td><td class='l'>{html.escape(str(r.reason))}</td></tr>"
        for r in failed.head(MAX_FAILED_ROWS).itertuples(index=False))
    more = (f"<p class='muted'>… and {n_failed - MAX_FAILED_ROWS} more "
            "(images.parquet has them all)</p>" if n_failed > MAX_FAILED_ROWS else "")
    reasons = sorted(digest.reasons.items(), key=lambda kv: -kv[1])[:10]
    reason_list = "".join(f"<li>{n} × {html.escape(str(r))}</li>" for r, n in reasons)
    return (f"<ul>{reason_list}</ul><table><tr><th class='l'>photo</th>"
            f"<th class='l'>status</th><th class='l'>reason</th></tr>{rows}</table>{more}")


def _speed_html(summary: dict, timeline: Sequence[tuple[float, int]]) -> str:
    """Photos committed over this call's seconds, and its speed in words."""
    if timeline:
        speed = (f"<img class='plot' src='{_data_uri(throughput_png(timeline), 'image/png')}' "
                 "alt='photos committed over time'>")
    else:
        speed = "<p class='muted'>No partition ran in this call (everything was already done).</p>"
    return speed + (f"<p>{summary.get('processed_now', '–')} photos processed by this call in "
                    f"{summary.get('seconds', '–')} s ({summary.get('images_per_second') or '–'} "
                    f"photos/s); the whole call took {summary.get('wall_seconds', '–')} s, cluster "
                    "start-up and final files included.</p>")


def _videos_html(videos: tuple[dict[str, pd.DataFrame], int]) -> str:
    """Faces per class over time of the first videos; empty without videos."""
    timelines, n_videos = videos
    if not timelines:
        return ""
    more = (f"<p class='muted'>… and {n_videos - len(timelines)} more videos "
            "(frames.parquet has every frame)</p>" if n_videos > len(timelines) else "")
    return (f"<h2>Videos: faces over time ({n_videos})</h2><p>Faces per class on each "
            "sampled frame.</p><img class='plot' src='"
            f"{_data_uri(videos_png(timelines), 'image/png')}' alt='faces per class "
            f"over time, per video'>{more}")


def report_html(digest: Digest, *, summary: dict, run: dict, model_card: dict, detector: dict,
                timeline: Sequence[tuple[float, int]], gallery: Gallery,
                videos: tuple[dict[str, pd.DataFrame], int] = ({}, 0), extra_html: str = "") -> str:
    """The page as a string: everything inlined. `videos`: run_digest.video_timelines;
    `extra_html`: a section placed before the detector card (e.g. the privacy outputs')."""
    threshold = model_card.get("threshold", 0.5)
    items, pictures = gallery
    hist = _data_uri(histograms_png(digest), "image/png")
    speed = _speed_html(summary, timeline)
    inputs = html.escape(files.mask_credentials(str(run.get("images", ""))))
    out = html.escape(files.mask_credentials(str(summary.get("out_dir", ""))))
    video_html = _videos_html(videos)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>maskbatch run report</title><style>{CSS}</style></head><body>
<h1>maskbatch run report</h1>
<p>Photos <code>{inputs}</code> &rarr; <code>{out}</code>;
maskbatch {html.escape(__version__)}, detector mode <code>{html.escape(detector['mode'])}</code>,
classifier <code>{html.escape(str(model_card.get('onnx_sha256', ''))[:12])}</code>, written
{html.escape(time.strftime('%Y-%m-%d %H:%M:%S %Z'))}.</p>
<div class="kpi">{_kpis_html(digest, summary)}</div>
<h2>Faces</h2>
<img class="plot" src="{hist}" alt="histograms: faces per photo and face size">
{video_html}
<h2>Gallery</h2>
<h3>The first photos</h3><div class="grid">{_figures(items, pictures, 'first')}</div>
<h3>The most crowded photos</h3><div class="grid">{_figures(items, pictures, 'crowded')}</div>
<h3>The least certain faces</h3>
<p>P(mask) nearest the classifier's threshold ({threshold}): the faces most worth a second
look.</p><div class="faces">{_figures(items, pictures, 'uncertain')}</div>
<h2>Photos with at least one unmasked face ({digest.unmasked_photos})</h2>
{_unmasked_html(digest)}
<h2>Failed and skipped photos ({digest.failed})</h2>
{_failed_html(digest)}
<h2>Throughput</h2>
{speed}{extra_html}
<h2>Detector</h2>
{_card_html(detector)}
<h2>Classifier (model card)</h2>
{_card_html(model_card, MODEL_CARD_FIELDS)}
<p class="muted">Files of this run: detections.parquet, submission.csv, images.parquet,
detections.coco.json + images.coco.json (COCO), summary.json, run.json.</p>
</body></html>
"""


def write_run_report(out_dir: str, detections: pd.DataFrame | None = None,
                     manifest: pd.DataFrame | None = None, *, summary: dict, run: dict,
                     model_card: dict, detector: DetectorConfig = DetectorConfig(),
                     timeline: Sequence[tuple[float, int]] = (),
                     gallery: Gallery | None = None, digest: Digest | None = None,
                     extra_html: str = "") -> str:
    """Write OUT_DIR/report.html from a run's final tables; its path.

    The tables: `digest` (:class:`Digest`), else `detections` / `manifest` in memory, else
    OUT_DIR's detections.parquet / images.parquet read in batches. summary: the run's
    summary.json dict; run: its run.json dict (plus "images", the input argument); model_card:
    the classifier's card; timeline: (seconds, photos committed) points (:class:`Timeline`);
    gallery: from :func:`draw_gallery` (default: drawn in this process).
    """
    threshold = float(model_card.get("threshold", 0.5))
    if digest is None:
        digest = (Digest.of_tables(detections, manifest, threshold)
                  if detections is not None and manifest is not None
                  else Digest.of_out_dir(out_dir, threshold))
    if gallery is None:
        gallery = draw_gallery(digest)
    page = report_html(digest, summary=summary, run=run, model_card=model_card,
                       detector=detector_card(detector), timeline=list(timeline),
                       gallery=gallery, videos=video_timelines(out_dir), extra_html=extra_html)
    path = files.join(out_dir, REPORT_FILE)
    writers.write_bytes_atomic(path, page.encode())
    return path


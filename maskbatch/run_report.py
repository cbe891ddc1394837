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
from collections.abc import Callable, Iterable, Sequence
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


def unmasked_photos(detections: pd.DataFrame, order: bool = False) -> pd.DataFrame:
    """name, faces, unmasked: photos with at least one face_no_mask, most unmasked first
    (`order`: plus _order, the first row's _order of each photo, and unsorted)."""
    columns = ["name", "faces", "unmasked"] + (["_order"] if order else [])
    if detections.empty:
        return pd.DataFrame(columns=columns)
    g = detections.assign(unmasked=detections["classname"] == NO_MASK).groupby("name", sort=False)
    parts = {"faces": g.size(), "unmasked": g["unmasked"].sum()}
    if order:
        parts["_order"] = g["_order"].min()
    table = pd.DataFrame(parts).reset_index()
    table = table[table["unmasked"] > 0]
    if order:
        return table[columns]
    return table.sort_values(["unmasked", "faces"], ascending=False, kind="stable",
                             ignore_index=True)


def face_sizes(detections: pd.DataFrame) -> np.ndarray:
    """Shorter side of each face box in pixels (columns keep the dataset's quirk)."""
    width = detections["y1"].to_numpy(float) - detections["x1"].to_numpy(float)
    height = detections["y2"].to_numpy(float) - detections["x2"].to_numpy(float)
    return np.minimum(width, height)


# --------------------------------------------------------------------------- the digest

IMAGE_COLUMNS = ["name", "path", "status", "reason", "n_faces"]
DETECTION_FIELDS = ["name", "x1", "x2", "y1", "y2", "classname", "mask_prob"]


def _concat(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """a then b (pandas warns when concatenating an empty frame)."""
    if not len(a):
        return b.reset_index(drop=True)
    return pd.concat([a, b], ignore_index=True) if len(b) else a


def _top(frame: pd.DataFrame, by: list[str], ascending: list[bool], n: int) -> pd.DataFrame:
    """The first n rows of `frame` sorted by `by`, ties in input order (column _order)."""
    return frame.sort_values([*by, "_order"], ascending=[*ascending, True], kind="stable",
                             ignore_index=True).head(n)


@dataclass
class Digest:
    """What report.html shows, gathered from the final tables a batch at a time, so that the
    page of a run of millions of photos needs no more memory than one of a hundred.

    Feed every manifest batch (add_images), then every detections batch (add_detections), both
    in input order; then finish() with a way to read the manifest again (for the paths of the
    least certain faces).
    """

    threshold: float = 0.5
    n_first: int = N_FIRST
    photos: int = 0
    read: int = 0
    failed_rows: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=IMAGE_COLUMNS))
    failed: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    faces_per_photo: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    first: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=IMAGE_COLUMNS))
    crowded: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=IMAGE_COLUMNS))
    per_class: dict[str, int] = field(default_factory=lambda: {MASK: 0, NO_MASK: 0})
    size_counts: dict[str, np.ndarray] = field(default_factory=dict)
    unmasked: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        columns=["name", "faces", "unmasked", "_order"]))
    unmasked_photos: int = 0
    uncertain: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=DETECTION_FIELDS))
    boxes: dict[str, list[tuple]] = field(default_factory=dict)
    _carry: pd.DataFrame | None = None  # the last photo's faces of the batch before
    _rows: int = 0

    # ---- the manifest
    def add_images(self, batch: pd.DataFrame) -> None:
        batch = batch.assign(_order=np.arange(self.photos, self.photos + len(batch)))
        self.photos += len(batch)
        ok = batch[batch["status"] == "ok"]
        bad = batch[batch["status"] != "ok"]
        self.read += len(ok)
        self.failed += len(bad)
        for reason, n in bad["reason"].value_counts().items():
            self.reasons[str(reason)] = self.reasons.get(str(reason), 0) + int(n)
        if len(self.failed_rows) < MAX_FAILED_ROWS:
            self.failed_rows = _concat(self.failed_rows, bad[IMAGE_COLUMNS]).head(MAX_FAILED_ROWS)
        counts = np.bincount(ok["n_faces"].to_numpy(np.int64), minlength=1) if len(ok) else \
            np.zeros(1, np.int64)
        size = max(len(counts), len(self.faces_per_photo))
        self.faces_per_photo = (np.pad(self.faces_per_photo, (0, size - len(self.faces_per_photo)))
                                + np.pad(counts, (0, size - len(counts))))
        if len(self.first) < self.n_first:
            self.first = _concat(self.first, ok.head(self.n_first)).head(self.n_first)
        self.crowded = _top(_concat(self.crowded, ok[ok["n_faces"] > 0]), ["n_faces"], [False],
                            N_CROWDED)

    # ---- the detections
    def add_detections(self, batch: pd.DataFrame) -> None:
        batch = batch.assign(_order=np.arange(self._rows, self._rows + len(batch)))
        self._rows += len(batch)
        classes = batch["classname"].to_numpy()
        sizes = face_sizes(batch)
        for cls in (MASK, NO_MASK):
            self.per_class[cls] += int((classes == cls).sum())
            h = np.histogram(sizes[classes == cls], bins=SIZE_BINS)[0]
            self.size_counts[cls] = self.size_counts.get(cls, 0) + h
        gap = (batch["mask_prob"] - self.threshold).abs()
        self.uncertain = _top(_concat(self.uncertain, batch.assign(_gap=gap)), ["_gap"], [True],
                              N_UNCERTAIN)
        shown = set(self.first["name"]) | set(self.crowded["name"])
        for row in batch[batch["name"].isin(shown)].itertuples(index=False):
            self.boxes.setdefault(row.name, []).append(
                (row.x1, row.x2, row.y1, row.y2, row.classname, row.mask_prob))
        # faces per photo: a photo's rows are contiguous; its last one may go on in the next batch
        if self._carry is not None:
            batch = _concat(self._carry, batch)
        last = batch["name"].iloc[-1] if len(batch) else None
        self._carry = batch[batch["name"] == last] if last is not None else None
        self._add_unmasked(batch[batch["name"] != last])

    def _add_unmasked(self, rows: pd.DataFrame) -> None:
        table = unmasked_photos(rows, order=True)
        self.unmasked_photos += len(table)
        self.unmasked = _top(_concat(self.unmasked, table), ["unmasked", "faces"], [False, False],
                             MAX_UNMASKED_ROWS)

    def finish(self, images: Callable[[], Iterable[pd.DataFrame]]) -> Digest:
        """Close the last photo's faces; give the least certain faces their photo's path."""
        if self._carry is not None and len(self._carry):
            self._add_unmasked(self._carry)
        self._carry = None
        wanted = set(self.uncertain["name"])
        paths: dict[str, str] = {}
        for batch in images() if wanted else ():
            hit = batch[batch["name"].isin(wanted)]
            paths.update(zip(hit["name"], hit["path"]))
        self.uncertain = self.uncertain.assign(path=self.uncertain["name"].map(paths))
        return self

    @property
    def faces(self) -> int:
        return sum(self.per_class.values())

    @classmethod
    def of_tables(cls, detections: pd.DataFrame, manifest: pd.DataFrame, threshold: float = 0.5,
                  n_first: int = N_FIRST) -> Digest:
        """The digest of tables held in memory (each one batch)."""
        digest = cls(threshold=threshold, n_first=n_first)
        digest.add_images(manifest[IMAGE_COLUMNS])
        digest.add_detections(detections[DETECTION_FIELDS])
        return digest.finish(lambda: [manifest[IMAGE_COLUMNS]])

    @classmethod
    def of_out_dir(cls, out_dir: str, threshold: float = 0.5, n_first: int = N_FIRST,
                   batch_rows: int = 65_536) -> Digest:
        """The digest of a run's images.parquet and detections.parquet, read in batches."""
        def batches(name: str, columns: list[str]) -> Iterable[pd.DataFrame]:
            return output.read_parquet_batches(files.join(out_dir, name), columns, batch_rows)

        digest = cls(threshold=threshold, n_first=n_first)
        for batch in batches("images.parquet", IMAGE_COLUMNS):
            digest.add_images(batch)
        for batch in batches("detections.parquet", DETECTION_FIELDS):
            digest.add_detections(batch)
        return digest.finish(lambda: batches("images.parquet", ["name", "path"]))


# --------------------------------------------------------------------------- pictures


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


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def gallery_jobs(digest: Digest) -> tuple[list[tuple[str, str, str]], list[Job]]:
    """((section, caption, kind) per picture, the drawing jobs), in the same order."""
    from maskbatch.draw import face_jpeg, preview_jpeg

    items: list[tuple[str, str, str]] = []
    jobs: list[Job] = []
    for section, rows in (("first", digest.first), ("crowded", digest.crowded)):
        for row in rows.itertuples(index=False):
            caption = (f"{row.name}: {row.n_faces} face(s)" if section == "first"
                       else f"{row.name}: {row.n_faces} faces")
            items.append((section, caption, "photo"))
            jobs.append((preview_jpeg, (row.path, digest.boxes.get(row.name, []), GALLERY_SIDE)))
    for row in digest.uncertain.itertuples(index=False):
        shown = "mask" if row.classname == MASK else "no mask"
        items.append(("uncertain", f"{row.name}: {shown}, P(mask) {row.mask_prob:.2f}", "face"))
        jobs.append((face_jpeg, (row.path, (row.x1, row.x2, row.y1, row.y2), FACE_SIDE)))
    return items, jobs


# --------------------------------------------------------------------------- cards


def detector_card(config: DetectorConfig) -> dict:
    """What found the faces: the mode, its passes, its threshold and its weights."""
    from maskbatch import detect, yunet

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


def report_html(digest: Digest, *, summary: dict, run: dict, model_card: dict, detector: dict,
                timeline: Sequence[tuple[float, int]], gallery: Gallery) -> str:
    """The page as a string: everything inlined."""
    per_class = digest.per_class
    unmasked, n_unmasked = digest.unmasked, digest.unmasked_photos
    failed, n_failed = digest.failed_rows, digest.failed
    threshold = model_card.get("threshold", 0.5)
    items, pictures = gallery

    kpis = "".join([
        _kpi("photos", digest.photos), _kpi("read", digest.read), _kpi("failed", n_failed),
        _kpi("faces", digest.faces), _kpi("with mask", per_class[MASK]),
        _kpi("without mask", per_class[NO_MASK]),
        _kpi("photos with an unmasked face", n_unmasked),
        _kpi("photos/s", summary.get("images_per_second") or "–"),
    ])
    unmasked_rows = "".join(
        f"<tr><td class='l'>{html.escape(str(r.name))}</td><td>{r.unmasked}</td><td>{r.faces}"
        "</td></tr>" for r in unmasked.head(MAX_UNMASKED_ROWS).itertuples(index=False))
    unmasked_more = (f"<p class='muted'>… and {n_unmasked - MAX_UNMASKED_ROWS} more "
                     "(detections.parquet has them all)</p>"
                     if n_unmasked > MAX_UNMASKED_ROWS else "")
    unmasked_table = (f"<table><tr><th class='l'>photo</th><th>unmasked faces</th>"
                      f"<th>faces</th></tr>{unmasked_rows}</table>{unmasked_more}"
                      if n_unmasked else "<p>No photo has an unmasked face.</p>")
    failed_rows = "".join(
        f"<tr><td class='l'>{html.escape(str(r.name))}</td><td class='l'>{html.escape(str(r.status))}"
        f"</td><td class='l'>{html.escape(str(r.reason))}</td></tr>"
        for r in failed.head(MAX_FAILED_ROWS).itertuples(index=False))
    failed_more = (f"<p class='muted'>… and {n_failed - MAX_FAILED_ROWS} more "
                   "(images.parquet has them all)</p>" if n_failed > MAX_FAILED_ROWS else "")
    reasons = sorted(digest.reasons.items(), key=lambda kv: -kv[1])[:10]
    reason_list = "".join(f"<li>{n} × {html.escape(str(r))}</li>" for r, n in reasons)
    failed_html = (f"<ul>{reason_list}</ul><table><tr><th class='l'>photo</th>"
                   f"<th class='l'>status</th><th class='l'>reason</th></tr>{failed_rows}</table>"
                   f"{failed_more}" if n_failed else "<p>Every photo was read.</p>")
    hist = _data_uri(histograms_png(digest), "image/png")
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
<h2>Photos with at least one unmasked face ({n_unmasked})</h2>
{unmasked_table}
<h2>Failed and skipped photos ({n_failed})</h2>
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


def draw_gallery(digest: Digest, render: Callable[[Sequence[Job]], list[bytes]] = render_local
                 ) -> Gallery:
    """The gallery's captions and JPEGs: `render` draws the (function, args) jobs (api.predict
    gives one that runs them on the Dask workers, which read the photos)."""
    items, jobs = gallery_jobs(digest)
    return items, list(render(jobs)) if jobs else []


def write_run_report(out_dir: str, detections: pd.DataFrame | None = None,
                     manifest: pd.DataFrame | None = None, *, summary: dict, run: dict,
                     model_card: dict, detector: DetectorConfig = DetectorConfig(),
                     timeline: Sequence[tuple[float, int]] = (),
                     gallery: Gallery | None = None, digest: Digest | None = None) -> str:
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
                       gallery=gallery)
    path = files.join(out_dir, REPORT_FILE)
    output.write_bytes_atomic(path, page.encode())
    return path

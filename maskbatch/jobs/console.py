"""The one-screen summaries the CLI prints after extract, predict and evaluate."""

from __future__ import annotations

import io
import math

from maskbatch.config import INCORRECT, MASK, NO_MASK
from maskbatch.evaluation.intervals import difference_text, interval_text
from maskbatch.jobs.evaluate import headline
from maskbatch.jobs.extract import ExtractResult
from maskbatch.jobs.predict import PredictResult, summary


def extract_table(result: ExtractResult) -> str:
    m = result.manifest
    third = any(counts.get(INCORRECT) for counts in result.counts.values())  # --classes 3
    lines = [f"{'dataset':<12}{'images':>8}{'ok':>7}{'skipped':>9}{'failed':>8}"
             f"{'mask':>8}{'no_mask':>9}" + (f"{'incorrect':>10}" if third else "") + f"{'dup':>6}"]
    for dataset, counts in result.counts.items():
        name = dataset.rstrip("/").rsplit("/", 1)[-1][:11]
        lines.append(f"{name:<12}{len(m):>8}{(m.status == 'ok').sum():>7}"
                     f"{(m.status == 'skipped').sum():>9}{(m.status == 'failed').sum():>8}"
                     f"{counts.get(MASK, 0):>8}{counts.get(NO_MASK, 0):>9}"
                     + (f"{counts.get(INCORRECT, 0):>10}" if third else "")
                     + f"{result.duplicates:>6}")
    rate = len(m) / result.seconds if result.seconds else 0.0
    lines.append(f"{result.crops} crops in {result.seconds:.1f}s ({rate:.1f} images/s) -> "
                 f"{result.out_dir}/crops/, manifest.parquet, class_counts.png")
    problems = m[m.status != "ok"]
    if len(problems):
        lines.append("not used (see manifest.parquet):")
        for reason, n in problems["reason"].value_counts().head(8).items():
            lines.append(f"  {n:>5} x {reason}")
    return "\n".join(lines)


def predict_table(result: PredictResult) -> str:
    s = summary(result)
    lines = [
        f"images        {s['images']} ({s['ok']} ok, {s['failed']} failed, {s['skipped']} skipped, "
        f"{s['processed_now']} processed by this run)",
        f"faces         {s['faces']} ("
        + ", ".join(f"{n} {c}" for c, n in s["faces_per_class"].items()) + ")",
        f"speed         {s['images_per_second']} images/s ({s['seconds']} s)",
    ]
    if s.get("video_frames"):
        lines.append(f"video         {s['video_frames']} sampled frames read"
                     + (f"; {len(s['video_notes'])} segment(s) read in part:"
                        if s.get("video_notes") else ""))
        for name, reason in list(s.get("video_notes", {}).items())[:10]:
            lines.append(f"  {printable(name)}: {printable(reason)}")
    if s["worker_restarts"]:
        lines.append(f"workers       {s['worker_restarts']} worker process(es) died and were "
                     "restarted during the run; their photos were processed again")
    shown = 0
    for status, entries in (("failed", s["failures"]), ("skipped", s["skipped_entries"])):
        for name, reason in entries.items():
            if shown < 10:
                lines.append(f"  {status}: {printable(name)}: {printable(reason)}")
            shown += 1
    if shown > 10:
        lines.append(f"  ... and {shown - 10} more (status and reason of each in images.parquet)")
    out = result.out_dir
    lines.append(f"written       {out}/submission.csv, {out}/detections.parquet, "
                 f"{out}/images.parquet")
    return "\n".join(lines)


def printable(text: str) -> str:
    """Text safe to print on a terminal: control characters (CR, ESC...) shown as escapes."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)

# --------------------------------------------------------------------------- evaluate


def _fmt(value: object, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _baseline_lines(metrics: dict) -> str:
    """'This run minus the baseline' lines, with paired intervals when there are any."""
    base = metrics.get("baseline")
    if not base:
        return ""
    ours = headline(metrics)
    lines = [f"\nAgainst the baseline run {base['pred']} (same photos; this run minus it):\n"]
    for key, label in (("map", "mAP"), ("faces_found", "faces found"),
                       ("label_accuracy", "right label")):
        lines.append(f"  {label:12} {_fmt(base[key])} -> {_fmt(ours[key])}  "
                     f"{difference_text(base['difference'], key)}\n")
    for key in _class_keys(base["difference"]):
        lines.append(f"  {_class_label(key, 'mAP of face_with_mask, face_no_mask')}: "
                     f"{difference_text(base['difference'], key)}\n")
    return "".join(lines)


def _class_keys(intervals: dict | None) -> list[str]:
    """The per-class names of a photo_intervals result (intervals.class_metrics), in order."""
    return [k for k in (intervals or {}).get("point", {}) if k == "map_main" or k.startswith("ap:")]


def _class_label(key: str, main: str) -> str:
    return main if key == "map_main" else f"AP {key[3:]}"


def _interval(metrics: dict, name: str) -> str:
    """'  (95 % interval over 1000 photo resamples: 0.797-0.891)', or '' without intervals."""
    text = interval_text(metrics.get("intervals"), name)
    return f"  ({text})" if text else ""


def format_table(metrics: dict) -> str:
    """The metrics as a plain-text table for the terminal."""
    buf = io.StringIO()
    w = buf.write
    by_class = metrics.get("n_truth_by_class", {})
    w(f"Evaluation at IoU {_fmt(metrics['iou'], 2)}: {metrics['n_images']} images, "
      f"{metrics['n_truth_faces']} faces ("
      + ", ".join(f"{n} {c}" for c, n in by_class.items())
      + f"), {metrics['n_ignore_regions']} ignore regions, "
      f"{metrics['n_predictions']} predictions\n\n")
    header = f"{'':18}{'AP':>7}{'precision':>11}{'recall':>8}{'truth':>7}{'pred':>7}" \
             f"{'TP':>7}{'FP':>7}{'FN':>7}{'ignored':>9}\n"
    w(header)
    rows = list(metrics["classes"].items()) + \
        [("detection (any)", metrics["detection"])]
    for label, m in rows:
        w(f"{label:18}{_fmt(m['ap']):>7}{_fmt(m['precision']):>11}{_fmt(m['recall']):>8}"
          f"{m['n_truth']:>7}{m['n_pred']:>7}{m['tp']:>7}{m['fp']:>7}{m['fn']:>7}"
          f"{m['ignored']:>9}\n")
    w(f"{'mAP':18}{_fmt(metrics['map']):>7}{_interval(metrics, 'map')}\n")
    for key in _class_keys(metrics.get("intervals")):
        w(f"{'  ' + _class_label(key, 'mAP, main two'):18}"
          f"{_fmt(metrics['intervals']['point'][key]):>7}{_interval(metrics, key)}\n")
    coco = metrics.get("coco") or {}
    if coco.get("available"):
        w(f"COCO ({coco['tool']}): AP@[.5:.95] {_fmt(coco['ap'])}, AP@0.5 {_fmt(coco['ap50'])}, "
          f"AP@0.75 {_fmt(coco['ap75'])} (101-point; the AP above is VOC all-point)\n")
    elif coco:
        w(f"COCO AP: not computed: {coco.get('reason')}\n")
    w("\n")
    w("Detection recall by face size (shorter side, px):\n")
    for b in metrics["recall_by_size"]:
        w(f"  {b['bin']:>6}  recall {_fmt(b['recall']):>6}  ({b['found']}/{b['n_truth']})\n")
    conf = metrics["confusion"]
    labels = conf["labels"]
    w("\nLabel confusion on matched faces (rows: truth, columns: predicted):\n")
    w(f"  {'':16}" + "".join(f"{c:>16}" for c in labels) + "\n")
    for label, row in zip(labels, conf["matrix"], strict=True):
        w(f"  {label:16}" + "".join(f"{v:>16}" for v in row) + "\n")
    w(f"  label accuracy {_fmt(conf['label_accuracy'])}{_interval(metrics, 'label_accuracy')}\n")
    found = metrics["detection"]["recall"]
    w(f"  faces found {_fmt(found)}{_interval(metrics, 'faces_found')}\n")
    w(_baseline_lines(metrics))
    for message in metrics.get("warnings", []):
        w(f"warning: {message}\n")
    return buf.getvalue()


"""The one-screen summaries the CLI prints after extract and predict."""

from __future__ import annotations

from maskbatch import MASK, NO_MASK
from maskbatch.api import ExtractResult, PredictResult, summary


def extract_table(result: ExtractResult) -> str:
    m = result.manifest
    lines = [f"{'dataset':<12}{'images':>8}{'ok':>7}{'skipped':>9}{'failed':>8}"
             f"{'mask':>8}{'no_mask':>9}{'dup':>6}"]
    for dataset, counts in result.counts.items():
        name = dataset.rstrip("/").rsplit("/", 1)[-1][:11]
        lines.append(f"{name:<12}{len(m):>8}{(m.status == 'ok').sum():>7}"
                     f"{(m.status == 'skipped').sum():>9}{(m.status == 'failed').sum():>8}"
                     f"{counts.get(MASK, 0):>8}{counts.get(NO_MASK, 0):>9}"
                     f"{result.duplicates:>6}")
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
        f"faces         {s['faces']} ({s['faces_per_class'][MASK]} {MASK}, "
        f"{s['faces_per_class'][NO_MASK]} {NO_MASK})",
        f"speed         {s['images_per_second']} images/s ({s['seconds']} s)",
    ]
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

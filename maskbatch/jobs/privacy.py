"""The driver's side of --save-crops and --blur: the flags, the workers' job, the final files.

The workers write every crop and blurred copy (maskbatch.outputs.privacy); here, at the end of
a run, the committed parts' crop rows become OUT/crops.parquet, each video's blurred pieces are
joined into OUT/blurred/<stem>.mp4 (on a worker), and the counts and a few examples go to the
summary and the report. Nothing here reads a photo.
"""

from __future__ import annotations

import html

import pyarrow.parquet as pq

from maskbatch import files
from maskbatch.config import OutputOptions
from maskbatch.outputs import blurred_video, parts, privacy, writers
from maskbatch.photos import video
from maskbatch.records import InputItem
from maskbatch.runtime.executor import JobSession

EXAMPLES = 6  # files of each kind the report links to


def wanted(outputs: OutputOptions) -> bool:
    return outputs.save_crops or outputs.blur


def record(outputs: OutputOptions) -> dict | None:
    """run.json's "privacy" entry (None without the flags: such a run's run.json is as before)."""
    if not wanted(outputs):
        return None
    return {"save_crops": outputs.save_crops, "blur": outputs.blur,
            "blur_confidence": outputs.blur_confidence if outputs.blur else None}


def job(out_dir: str, outputs: OutputOptions, inputs: list[tuple[str, object]]
        ) -> privacy.PrivacyJob | None:
    """What the workers write besides their parts, or None without the flags."""
    if not wanted(outputs):
        return None
    return privacy.PrivacyJob(out_dir, outputs.save_crops, outputs.blur, outputs.blur_confidence,
                              privacy.shared_stems(_source_names(inputs)))


def _source_names(inputs: list[tuple[str, object]]) -> list[str]:
    """Each photo's name and each video's (once), in input order."""
    return [video.video_of(name) if InputItem(name, source).segment is not None else name
            for name, source in inputs]


def finish(out_dir: str, private: privacy.PrivacyJob, inputs: list[tuple[str, object]],
           session: JobSession) -> dict:
    """crops.parquet and the joined blurred videos from the committed parts; the counts."""
    chosen = parts.tiling(parts.CommitLog(out_dir).entries(), len(inputs))
    totals: dict = {}
    if private.save_crops:
        totals["crops"], totals["crop_examples"] = _compact_crops(out_dir, chosen)
    if private.blur:
        totals["faces_blurred"] = sum(int(entry.get("blurred", 0)) for entry in chosen)
        totals["blurred_videos"] = _join_videos(out_dir, private, inputs, session)
        totals["blurred_examples"] = _blurred_examples(out_dir, private, inputs)
    return totals


def _compact_crops(out_dir: str, chosen: list[dict]) -> tuple[int, list[str]]:
    """OUT/crops.parquet: the parts' crop rows in input order (the file exists, maybe empty);
    the crops written and the first few files."""
    fs, parts_dir = files.filesystem(files.join(out_dir, parts.PARTS_DIR))
    count, first = 0, []
    with writers.open_write_all([files.join(out_dir, privacy.CROPS_TABLE)]) as (target,), \
            pq.ParquetWriter(target, privacy.CROP_SCHEMA) as writer:
        for entry in chosen:
            path = f"{parts_dir}/{entry['part']}.crops.parquet"
            if fs.exists(path):
                with fs.open(path, "rb") as f:
                    table = pq.read_table(f, schema=privacy.CROP_SCHEMA, use_threads=False)
                writer.write_table(table)
                count += table.num_rows
                first += table.column("file").to_pylist()[:EXAMPLES - len(first)]
    return count, first


def _join_videos(out_dir: str, private: privacy.PrivacyJob, inputs: list[tuple[str, object]],
                 session: JobSession) -> int:
    """Each video's blurred pieces joined into OUT/blurred/<stem>.mp4, one worker task each."""
    segments: dict[str, list[str]] = {}
    for name, source in inputs:
        if InputItem(name, source).segment is not None:
            segments.setdefault(video.video_of(name), []).append(name)
    jobs = [(blurred_video.join_video,
             (out_dir, privacy.file_stem(clip, private.shared) + ".mp4", names))
            for clip, names in segments.items()]
    return sum(1 for frames in session.call_each(jobs) if frames)


def _blurred_examples(out_dir: str, private: privacy.PrivacyJob,
                      inputs: list[tuple[str, object]], tries: int = 50) -> list[str]:
    """The first few blurred copies (photos and videos) there are, as links under OUT."""
    videos = {video.video_of(n) for n, source in inputs if InputItem(n, source).segment}
    found = []
    for name in list(dict.fromkeys(_source_names(inputs)))[:tries]:
        link = (f"{privacy.BLURRED_DIR}/{privacy.file_stem(name, private.shared)}"
                f"{'.mp4' if name in videos else '.jpg'}")
        fs, path = files.filesystem(files.join(out_dir, link))
        if fs.exists(path):
            found.append(link)
        if len(found) == EXAMPLES:
            break
    return found


def report_html(totals: dict) -> str:
    """The report's few lines on the privacy outputs: counts and links to a few examples."""
    if not totals:
        return ""
    lines, links = [], []
    if "faces_blurred" in totals:
        lines.append(f"{totals['faces_blurred']} face boxes blurred (every box above "
                     f"--blur-confidence) in the copies under <code>blurred/</code>.")
        links += totals.get("blurred_examples", [])
    if "crops" in totals:
        lines.append(f"{totals['crops']} face crops under <code>crops/</code>, listed in "
                     "<code>crops.parquet</code>.")
        links += totals.get("crop_examples", [])
    items = "".join(f"<li><a href='{html.escape(link)}'>{html.escape(link)}</a></li>"
                    for link in links)
    return (f"<h2>Privacy outputs</h2><p>{' '.join(lines)}</p>"
            + (f"<p>Examples:</p><ul>{items}</ul>" if items else ""))


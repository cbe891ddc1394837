"""Part files and the commit log: what workers write, what the driver records, what the end reads.

A worker commits its own partition: OUT_DIR/parts/p<first>-<count>.detections.parquet, then
.images.parquet, each written atomically, named after the contiguous range of inputs it covers.
It hands the driver a small summary (part name, range, counts), never the rows. The driver
decides which parts count by appending that summary to the commit log, one JSON line per part;
`--resume` reads only the log. At the end `compact` reads the committed parts once, in input
order, streaming: detections.parquet, images.parquet and submission.csv.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from maskbatch import files
from maskbatch.config import CLASS_NAMES, MASK, NO_MASK
from maskbatch.errors import MaskbatchError
from maskbatch.outputs import writers

PARTS_DIR = "parts"
LOG_PREFIX = "commits-"
# On filesystems without a cheap append (object stores), the log is written in segments: one
# small file per SEGMENT_SECONDS of commits. A driver killed mid-run loses at most that much
# record; those parts are simply done again by --resume.
SEGMENT_SECONDS = 10.0
# Rows gathered from consecutive parts before one Parquet row group is written.
ROW_GROUP_ROWS = 65_536
FEED_ROWS = 65_536  # rows of consecutive parts handed to the final step's other outputs at once
# summary.json lists at most this many failed photos by name (images.parquet has them all).
FAILURES_LISTED = 1000


def part_stem(first: int, count: int) -> str:
    """A part's file stem: sorting stems sorts parts in input order."""
    return f"p{first:012d}-{count:07d}"


def write_part(out_dir: str, first: int, detections: pd.DataFrame, manifest: pd.DataFrame,
               frames: pd.DataFrame | None = None) -> dict:
    """Commit one partition's rows (worker side); return the summary the driver logs.

    The manifest file is written last: a part whose manifest exists is complete. The sampled
    video frames (`frames`) go to a .frames.parquet of their own when there are any.
    """
    stem = part_stem(first, len(manifest))
    base = files.join(out_dir, PARTS_DIR, stem)
    writers.write_table_atomic(detections, writers.schema_of_columns(list(detections.columns)),
                               base + ".detections.parquet")
    if frames is not None and len(frames):
        classes = [c for c in frames.columns if c not in writers.FRAME_KEY_COLUMNS]
        writers.write_table_atomic(frames, writers.frame_schema(classes), base + ".frames.parquet")
    writers.write_table_atomic(manifest, writers.MANIFEST_SCHEMA, base + ".images.parquet")
    return {"part": stem, "first": first, "count": len(manifest),
            "failed": int((manifest["status"] != "ok").sum()), "faces": len(detections)}


class CommitLog:
    """The append-only record of committed parts under OUT_DIR/parts (commits-*.jsonl).

    Each driver session writes its own file(s); reading takes the lines of all of them. A line
    cut short by a crash is ignored (its part is done again).
    """

    def __init__(self, out_dir: str) -> None:
        self.fs, self.dir = files.filesystem(files.join(out_dir, PARTS_DIR))
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        self.appendable = protocol in ("file", "local")
        self.session = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self._handle: io.TextIOBase | None = None
        self._buffer: list[str] = []
        self._segment = 0
        self._flushed = time.monotonic()

    def entries(self) -> list[dict]:
        """Every committed part's summary, from all sessions' log files."""
        if not self.fs.isdir(self.dir):
            return []
        found = []
        for path in sorted(p for p in self.fs.ls(self.dir, detail=False)
                           if files.basename(p).startswith(LOG_PREFIX)):
            with self.fs.open(path, "rb") as f:
                for line in f.read().decode().splitlines():
                    with contextlib.suppress(ValueError):
                        entry = json.loads(line)
                        if isinstance(entry, dict) and {"part", "first", "count"} <= entry.keys():
                            found.append(entry)
        return found

    def append(self, entry: dict) -> None:
        line = json.dumps(entry, separators=(",", ":")) + "\n"
        if self.appendable:
            if self._handle is None:
                self.fs.makedirs(self.dir, exist_ok=True)
                self._handle = open(f"{self.dir}/{LOG_PREFIX}{self.session}.jsonl", "a")
            self._handle.write(line)
            self._handle.flush()  # in the OS's hands: survives this process being killed
            return
        self._buffer.append(line)
        if time.monotonic() - self._flushed >= SEGMENT_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            name = f"{LOG_PREFIX}{self.session}-{self._segment:06d}.jsonl"
            writers.write_bytes_atomic(files.full_path(self.fs, f"{self.dir}/{name}"),
                                      "".join(self._buffer).encode())
            self._buffer, self._segment = [], self._segment + 1
        self._flushed = time.monotonic()

    def close(self) -> None:
        self.flush()
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def done_ranges(entries: list[dict]) -> list[tuple[int, int]]:
    """Merged [start, stop) ranges of input indices that committed parts cover."""
    merged: list[tuple[int, int]] = []
    for start, stop in sorted((e["first"], e["first"] + e["count"]) for e in entries):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], stop))
        else:
            merged.append((start, stop))
    return merged


def not_done(n: int, ranges: list[tuple[int, int]]) -> Iterator[int]:
    """Input indices below `n` outside `ranges` (merged, sorted), in order."""
    at = 0
    for start, stop in ranges:
        yield from range(at, min(start, n))
        at = max(at, stop)
    yield from range(at, n)


def tiling(entries: list[dict], n: int) -> list[dict]:
    """The committed parts that cover inputs 0..n-1 exactly once, in input order."""
    chosen, expected = [], 0
    for entry in sorted(entries, key=lambda e: (e["first"], -e["count"])):
        if entry["first"] == expected:
            chosen.append(entry)
            expected += entry["count"]
        elif entry["first"] > expected:
            break
    return chosen


@dataclass
class Compacted:
    """What the final step counted while writing the outputs."""

    images: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0  # directory entries that are no photo (a folder, a FIFO, a broken link...)
    faces: int = 0
    faces_per_class: dict[str, int] = field(default_factory=lambda: {MASK: 0, NO_MASK: 0})
    failures: dict[str, str] = field(default_factory=dict)  # the first FAILURES_LISTED
    skipped_entries: dict[str, str] = field(default_factory=dict)  # the first FAILURES_LISTED
    previews: list[tuple[str, str, list]] = field(default_factory=list)  # (name, path, boxes)
    frames: int = 0  # sampled video frames read
    video_notes: dict[str, str] = field(default_factory=dict)  # segments read in part (FAILURES_LISTED)
    seconds: float = 0.0


class _Gather:
    """Arrow tables from consecutive parts, written as row groups of about ROW_GROUP_ROWS."""

    def __init__(self, writer: pq.ParquetWriter) -> None:
        self.writer, self.tables, self.rows = writer, [], 0

    def add(self, table: pa.Table) -> None:
        self.tables.append(table)
        self.rows += table.num_rows
        if self.rows >= ROW_GROUP_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.tables:
            self.writer.write_table(pa.concat_tables(self.tables))
        self.tables, self.rows = [], 0


class PartSink(Protocol):
    """A final output fed with each committed part's tables as compact streams them (the run
    report's digest, the COCO files): every output comes from one read of the parts."""

    def add_part(self, manifest: pd.DataFrame, detections: pd.DataFrame,
                 frames: pd.DataFrame | None) -> None: ...


def compact(out_dir: str, names: list[str], previews: int = 0,
            class_names: tuple[str, ...] = CLASS_NAMES, sinks: Sequence[PartSink] = ()
            ) -> Compacted:
    """Write detections.parquet, images.parquet and submission.csv (and frames.parquet, where
    videos were read) from the committed parts, and feed each part to `sinks`.

    `class_names`: the model card's classes (an N-class model's detections have prob_* columns).

    Reads each committed part once, in input order, holding one part (and one row group) at a
    time; the files appear only when all are complete. Part files no committed entry names (a
    task that finished after its driver was gone) are removed.
    """
    started = time.perf_counter()
    n = len(names)
    chosen = tiling(CommitLog(out_dir).entries(), n)
    covered = sum(e["count"] for e in chosen)
    if covered != n:
        raise MaskbatchError(f"{n - covered} images have no committed result (e.g. "
                             f"{names[covered]}); run again with --resume")
    fs, parts_dir = files.filesystem(files.join(out_dir, PARTS_DIR))
    stats = Compacted(faces_per_class={c: 0 for c in class_names})
    schema = writers.detection_schema(class_names)
    targets = [files.join(out_dir, k)
               for k in ("detections.parquet", "images.parquet", "submission.csv")]
    with writers.open_write_all(targets) as (det_file, img_file, csv_file), \
            pq.ParquetWriter(det_file, schema) as det_writer, \
            pq.ParquetWriter(img_file, writers.MANIFEST_SCHEMA) as img_writer, \
            _FramesFile(out_dir, writers.frame_schema(class_names)) as frames_file:
        dets, imgs, fed = _Gather(det_writer), _Gather(img_writer), _Feed(sinks)
        for k, entry in enumerate(chosen):
            base = f"{parts_dir}/{entry['part']}"
            manifest = _read_table(fs, base + ".images.parquet", writers.MANIFEST_SCHEMA)
            detections = _read_detections(fs, base + ".detections.parquet", schema)
            frames = frames_file.add(fs, base + ".frames.parquet")
            first = entry["first"]
            if manifest.column("name").to_pylist() != names[first:first + entry["count"]]:
                raise MaskbatchError(f"part {entry['part']} does not hold the inputs it was "
                                     "committed for; run again with --overwrite")
            imgs.add(manifest)
            dets.add(detections)
            rows = detections.to_pandas(use_threads=False)
            csv_file.write(writers.csv_bytes(writers.submission_frame(rows), header=k == 0))
            _count(stats, manifest, rows, previews)
            fed.add(manifest, rows, frames)
        fed.flush()
        dets.flush()
        imgs.flush()
    _remove_orphans(fs, parts_dir, {e["part"] for e in chosen})
    stats.seconds = time.perf_counter() - started
    return stats


class _Feed:
    """Consecutive whole parts handed to the sinks together, about FEED_ROWS rows at a time (a
    photo's manifest row and its faces are always in the same call): per part, the digest's
    and the COCO writer's per-call work cost the driver a third more CPU at 100k photos."""

    def __init__(self, sinks: Sequence[PartSink]) -> None:
        self.sinks = sinks
        self.parts: list[tuple[pa.Table, pd.DataFrame, pa.Table | None]] = []
        self.rows = 0

    def add(self, manifest: pa.Table, detections: pd.DataFrame, frames: pa.Table | None) -> None:
        if not self.sinks:
            return
        self.parts.append((manifest, detections, frames))
        self.rows += max(manifest.num_rows, len(detections))
        if self.rows >= FEED_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.parts:
            return
        manifest = pa.concat_tables([m for m, _, _ in self.parts]).to_pandas(use_threads=False)
        found = [d for _, d, _ in self.parts if len(d)] or [self.parts[0][1]]
        detections = pd.concat(found, ignore_index=True) if len(found) > 1 else found[0]
        framed = [f for _, _, f in self.parts if f is not None]
        frames = pa.concat_tables(framed).to_pandas(use_threads=False) if framed else None
        for sink in self.sinks:
            sink.add_part(manifest, detections, frames)
        self.parts, self.rows = [], 0


class _FramesFile:
    """frames.parquet from the parts' .frames.parquet files, in input order: opened at the first
    part with frames (a run without videos writes none), renamed into place at the end."""

    def __init__(self, out_dir: str, schema: pa.Schema) -> None:
        self.url, self.schema = files.join(out_dir, "frames.parquet"), schema
        self._stack = contextlib.ExitStack()
        self._gather: _Gather | None = None

    def __enter__(self) -> _FramesFile:
        return self

    def add(self, fs: object, path: str) -> pa.Table | None:
        """The part's frames (None where it has none), added to frames.parquet."""
        if not fs.exists(path):  # type: ignore[attr-defined]
            return None
        table = _read_table(fs, path, self.schema)
        if self._gather is None:
            (handle,) = self._stack.enter_context(writers.open_write_all([self.url]))
            self._gather = _Gather(self._stack.enter_context(pq.ParquetWriter(handle,
                                                                               self.schema)))
        self._gather.add(table)
        return table

    def __exit__(self, exc_type: type | None, *rest: object) -> bool | None:
        if exc_type is None and self._gather is not None:
            self._gather.flush()
        return self._stack.__exit__(exc_type, *rest)


def _read_table(fs: object, path: str, schema: pa.Schema) -> pa.Table:
    with fs.open(path, "rb") as f:  # type: ignore[attr-defined]
        return pq.read_table(f, schema=schema, use_threads=False)  # see writers.write_table_atomic


def _read_detections(fs: object, path: str, schema: pa.Schema) -> pa.Table:
    """A part's detections with the run's schema; a part without faces written with another
    class list (a photo whose workers kept dying) is an empty table of that schema."""
    with fs.open(path, "rb") as f:  # type: ignore[attr-defined]
        names = pq.read_schema(f).names
    if names == schema.names:
        return _read_table(fs, path, schema)
    table = _read_table(fs, path, writers.schema_of_columns(names))
    if table.num_rows:
        raise MaskbatchError(f"part {files.basename(path)} was written by a model with other "
                             "classes; run again with --overwrite")
    return schema.empty_table()


def _count(stats: Compacted, manifest: pa.Table, rows: pd.DataFrame, previews: int) -> None:
    status = manifest.column("status").to_pylist()
    stats.images += len(status)
    ok = status.count("ok")
    stats.ok += ok
    stats.failed += status.count("failed")
    stats.skipped += status.count("skipped")
    stats.faces += len(rows)
    for name, n in rows["classname"].value_counts(sort=False).items():
        stats.faces_per_class[name] = stats.faces_per_class.get(name, 0) + int(n)
    frames = manifest.column("frames").to_pylist()
    if any(f is not None for f in frames):
        stats.frames += sum(f for f in frames if f is not None)
        for name, state, reason, f in zip(manifest.column("name").to_pylist(), status,
                                          manifest.column("reason").to_pylist(), frames):
            if f is not None and state == "ok" and reason and \
                    len(stats.video_notes) < FAILURES_LISTED:
                stats.video_notes[name] = reason
    if ok < len(status):
        reasons = manifest.column("reason").to_pylist()
        for name, state, reason in zip(manifest.column("name").to_pylist(), status, reasons):
            listed = stats.skipped_entries if state == "skipped" else stats.failures
            if state != "ok" and len(listed) < FAILURES_LISTED:
                listed[name] = reason
    if len(stats.previews) < previews and ok:
        for name, path, state, frames in zip(manifest.column("name").to_pylist(),
                                             manifest.column("path").to_pylist(), status,
                                             manifest.column("frames").to_pylist()):
            if state == "ok" and frames is None and len(stats.previews) < previews:
                mine = rows[rows["name"] == name]
                extra = []  # an N-class model's faces: P(the face's class) too, for its label
                if writers.PROB_PREFIX + MASK in mine:
                    extra = [[r[writers.PROB_PREFIX + r["classname"]] for r in mine.to_dict("records")]]
                boxes = list(zip(mine["x1"], mine["x2"], mine["y1"], mine["y2"],
                                 mine["classname"], mine["mask_prob"], *extra))
                stats.previews.append((name, path, boxes))


def _remove_orphans(fs: object, parts_dir: str, keep: set[str]) -> None:
    for path in fs.ls(parts_dir, detail=False):  # type: ignore[attr-defined]
        base = files.basename(path)
        if base.endswith(".parquet") and base.split(".", 1)[0] not in keep:
            with contextlib.suppress(FileNotFoundError):
                fs.rm(path)  # type: ignore[attr-defined]


"""Part files, the commit log and the final step, without a cluster: resume arithmetic, input
order, orphans, a log cut short by a crash, and partition sizes chosen for a run."""

from __future__ import annotations

import pandas as pd
import pytest

from maskbatch.errors import MaskbatchError
from maskbatch.outputs import parts
from maskbatch.outputs.writers import DETECTION_COLUMNS, PREDICT_MANIFEST_COLUMNS
from maskbatch.runtime.window import choose_partition_size, contiguous_partitions


def _part(out: str, names: list[str], first: int, faces: dict[str, int]) -> dict:
    manifest = pd.DataFrame([{"name": n, "path": f"/x/{n}", "status": "ok", "reason": "",
                              "n_faces": faces.get(n, 0), "width": 10, "height": 10,
                              "seconds": 0.1} for n in names[first:first + 3]],
                            columns=PREDICT_MANIFEST_COLUMNS)
    rows = [(n, 1, 1, 5, 5, "face_with_mask", 0.9 - k / 10, 0.8, 10, 10, "sha", None, None)
            for n in manifest["name"] for k in range(faces.get(n, 0))]
    return parts.write_part(out, first, pd.DataFrame(rows, columns=DETECTION_COLUMNS), manifest)


def test_ranges_and_resume_arithmetic():
    entries = [{"part": "a", "first": 3, "count": 3}, {"part": "b", "first": 0, "count": 2},
               {"part": "c", "first": 6, "count": 2}]
    assert parts.done_ranges(entries) == [(0, 2), (3, 8)]
    assert list(parts.not_done(10, parts.done_ranges(entries))) == [2, 8, 9]
    assert [e["part"] for e in parts.tiling(entries, 8)] == ["b"]  # index 2 is missing
    todo = [(i, f"n{i}") for i in parts.not_done(12, [(2, 4), (7, 8)])]
    # a gap in the indices starts a new partition: every part is one contiguous range
    assert [[i for i, _ in p] for p in contiguous_partitions(todo, 3)] == [
        [0, 1], [4, 5, 6], [8, 9, 10], [11]]


def test_compact_streams_parts_in_input_order(tmp_path):
    out = str(tmp_path)
    names = [f"{i:03d}.jpg" for i in range(9)]
    faces = {"001.jpg": 2, "007.jpg": 1}
    log = parts.CommitLog(out)
    for first in (6, 0, 3):  # parts land in any order
        log.append(_part(out, names, first, faces))
    log.close()
    # a part some worker wrote after its driver was gone: never committed, removed at the end
    _part(out, names, 1, {})
    stats = parts.compact(out, names, previews=1)
    manifest = pd.read_parquet(tmp_path / "images.parquet")
    assert list(manifest["name"]) == names
    det = pd.read_parquet(tmp_path / "detections.parquet")
    assert list(det["name"]) == ["001.jpg", "001.jpg", "007.jpg"] and list(det.columns) == \
        DETECTION_COLUMNS
    sub = pd.read_csv(tmp_path / "submission.csv")
    assert list(sub["name"]) == list(det["name"])
    assert (stats.images, stats.ok, stats.faces) == (9, 9, 3)
    assert stats.previews[0][0] == "000.jpg"
    assert len(list((tmp_path / "parts").glob("*.images.parquet"))) == 3


def test_a_missing_part_is_an_error_and_a_torn_log_line_is_ignored(tmp_path):
    out = str(tmp_path)
    names = [f"{i:03d}.jpg" for i in range(6)]
    log = parts.CommitLog(out)
    log.append(_part(out, names, 0, {}))
    log.close()
    _part(out, names, 3, {})  # written, but the driver died before logging it
    with open(next((tmp_path / "parts").glob("commits-*.jsonl")), "a") as f:
        f.write('{"part": "p000000000003-0000003", "fir')  # cut short by the crash
    assert parts.done_ranges(parts.CommitLog(out).entries()) == [(0, 3)]
    with pytest.raises(MaskbatchError, match="3 images have no committed result .*003.jpg"):
        parts.compact(out, names)


def test_log_segments_on_stores_without_append():
    import fsspec

    fs = fsspec.filesystem("memory")
    out = "memory://commitlog-test"
    log = parts.CommitLog(out)
    assert not log.appendable
    for first in range(0, 9, 3):
        log.append({"part": parts.part_stem(first, 3), "first": first, "count": 3})
    log.close()
    assert parts.done_ranges(parts.CommitLog(out).entries()) == [(0, 9)]
    fs.rm("/commitlog-test", recursive=True)


def test_partition_size_follows_input_and_cluster():
    assert choose_partition_size(96, 2) == 16  # never below 16: per-task overhead
    assert choose_partition_size(10_000, 2) == 313  # 16 tasks per thread
    assert choose_partition_size(1_000_000, 2) == 1024  # a task stays seconds long
    assert choose_partition_size(1_000_000, 500) == 125

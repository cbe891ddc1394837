"""The final step reads the committed parts once, in input order, and feeds every final file from
that one read: the tables, the COCO files and the report's digest. Its COCO files and digest are
exactly what the same writers give when fed from the final tables afterwards."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from maskbatch.config import ClusterConfig
from maskbatch.jobs.predict import predict
from maskbatch.outputs import coco, parts, run_digest, writers


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    """Photos, a file that is no photo and a 4 s video (2 segments), 2 items per part."""
    folder = tmp_path_factory.mktemp("inputs")
    photos = sorted((data / "medical-mask" / "images").iterdir())
    for src in photos[:7]:
        shutil.copy(src, folder / src.name)
    (folder / "0000-broken.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    writer = cv2.VideoWriter(str(folder / "walk.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 2.0,
                             (640, 480))
    for src in photos[20:24]:
        image = cv2.resize(cv2.imread(str(src)), (640, 480), interpolation=cv2.INTER_AREA)
        writer.write(image)
        writer.write(image)
    writer.release()
    out = tmp_path_factory.mktemp("run") / "out"
    local = ClusterConfig(workers=1, processes=False, progress=False, partition_size=2)
    result = predict(str(folder), str(out), cluster_config=local, segment_seconds=2.0)
    assert result.counts.failed == 1 and result.counts.frames == 4
    assert len(parts.CommitLog(str(out)).entries()) >= 5
    return result, out


def test_coco_files_of_the_parts_equal_those_of_the_final_tables(run, tmp_path):
    result, out = run
    again = tmp_path / "again"
    shutil.copytree(out, again)
    coco.write_coco(str(again), result.class_names)
    for name in (coco.RESULTS_FILE, coco.DATASET_FILE):
        assert (again / name).read_bytes() == (out / name).read_bytes(), name


def test_the_final_step_reads_no_final_table_back(run, tmp_path, monkeypatch):
    """One read of the parts: neither the digest nor the COCO files read the final tables."""
    result, out = run
    again = tmp_path / "again"
    shutil.copytree(out, again)

    def refuse(*args, **kwargs):
        raise AssertionError(f"a final table read back: {args[0]}")

    monkeypatch.setattr(writers, "read_parquet_batches", refuse)
    monkeypatch.setattr(parts, "FEED_ROWS", 3)  # the sinks fed a few parts at a time
    digest = run_digest.Digest.for_run(0.47)
    with coco.CocoWriter(str(again), result.class_names) as coco_files:
        parts.compact(str(again), list(result.manifest["name"]), 0, result.class_names,
                      sinks=[digest, coco_files])
    digest.finish()
    monkeypatch.undo()
    for name in ("detections.parquet", "submission.csv", "frames.parquet",
                 coco.RESULTS_FILE, coco.DATASET_FILE):
        assert (again / name).read_bytes() == (out / name).read_bytes(), name

    tables = run_digest.Digest.of_out_dir(str(out), threshold=0.47, batch_rows=3)
    assert digest.photos == tables.photos and digest.failed == tables.failed == 1
    assert digest.per_class == tables.per_class and digest.reasons == tables.reasons
    assert np.array_equal(digest.faces_per_photo, tables.faces_per_photo)
    for cls in tables.size_counts:
        assert np.array_equal(digest.size_counts[cls], tables.size_counts[cls])
    for a, b in ((digest.unmasked, tables.unmasked), (digest.first, tables.first),
                 (digest.crowded, tables.crowded), (digest.uncertain, tables.uncertain),
                 (digest.failed_rows, tables.failed_rows)):
        assert a.drop(columns=["_order", "_gap"], errors="ignore").reset_index(drop=True).equals(
            b.drop(columns=["_order", "_gap"], errors="ignore").reset_index(drop=True))
    assert digest.boxes == tables.boxes and len(digest.boxes) > 0
    assert digest.uncertain["path"].notna().all()
    assert digest.uncertain["frame"].notna().any()  # a video frame's face, drawn from its video

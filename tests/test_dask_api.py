"""maskbatch.dask: a bag of photos -> a bag of detection records -> a dask DataFrame, on a real
LocalCluster of worker processes, equal to the batch job's detections.parquet."""

from __future__ import annotations

from pathlib import Path

import dask
import dask.bag as db
import pandas as pd
import pytest
from conftest import copy_photos

import maskbatch
import maskbatch.dask
from maskbatch.config import ClusterConfig
from maskbatch.errors import MaskbatchError
from maskbatch.outputs.writers import DETECTION_COLUMNS, PREDICT_MANIFEST_COLUMNS
from maskbatch.runtime import cluster

pytestmark = pytest.mark.slow

KEY = ["name", "x1", "y1"]


@pytest.fixture(scope="module")
def photos(data, tmp_path_factory) -> Path:
    folder = copy_photos(data, tmp_path_factory.mktemp("photos"), medical_mask=12, voc_masks=4)
    (folder / "broken.jpg").write_bytes(b"not a photo")  # fails: no detection rows, one manifest row
    return folder


def _models_loaded() -> int:
    from maskbatch.models import classifier

    return len(classifier._CACHE)


def test_bag_api_on_a_local_cluster_equals_the_batch_job(photos, tmp_path):
    job = maskbatch.predict(str(photos), str(tmp_path / "out"),
                            cluster_config=ClusterConfig(workers=2, progress=False))
    expected = job.detections.sort_values(KEY, ignore_index=True)
    assert len(expected) > 0 and job.counts.failed == 1
    paths = sorted(str(p) for p in photos.iterdir())
    assert len(paths) == 17
    with cluster.dask_client(ClusterConfig(workers=2, progress=False)) as client:
        photo_bag = db.from_sequence(paths, npartitions=8)
        records = maskbatch.dask.predict(photo_bag)
        assert isinstance(records, db.Bag) and records.npartitions == photo_bag.npartitions > 1
        frame = maskbatch.dask.to_dataframe(records)
        got = frame.compute().sort_values(KEY, ignore_index=True)
        # (name, path) pairs work too, and the manifest comes from the same tasks
        dets, manifest = maskbatch.dask.predict_with_manifest(
            db.from_sequence([(Path(p).name, p) for p in paths], npartitions=4))
        dets_frame, manifest_frame = dask.compute(maskbatch.dask.to_dataframe(dets),
                                                  maskbatch.dask.to_dataframe(manifest, manifest=True))
        # two worker processes did the work, each with the one classifier it loaded once
        assert set(client.run(_models_loaded).values()) == {1} and len(client.nthreads()) == 2
    assert list(got.columns) == DETECTION_COLUMNS
    assert dict(got.dtypes) == dict(expected.dtypes)
    pd.testing.assert_frame_equal(got, expected)  # same boxes, classes, scores (float equality)
    pd.testing.assert_frame_equal(dets_frame.sort_values(KEY, ignore_index=True), expected)
    assert list(manifest_frame.columns) == PREDICT_MANIFEST_COLUMNS
    assert sorted(manifest_frame["name"]) == sorted(Path(p).name for p in paths)
    broken = manifest_frame[manifest_frame["name"] == "broken.jpg"]
    assert list(broken["status"]) == ["failed"] and "broken.jpg" not in set(got["name"])
    assert dict(manifest_frame.dtypes) == dict(job.manifest.dtypes)


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(MaskbatchError, match="dask.bag.Bag"):
        maskbatch.dask.predict(["a.jpg"])
    bag = maskbatch.dask.predict(db.from_sequence([3], npartitions=1))
    with pytest.raises(MaskbatchError, match="path or a"):
        bag.compute(scheduler="sync")


def test_partition_bag_keeps_each_partition_whole():
    from maskbatch.runtime import window

    parts = [[(0, "a"), (1, "b"), (2, "c")], [(3, "d")], [(4, "e"), (5, "f")]]
    bag = window.partition_bag(parts)
    assert bag.npartitions == 3
    assert dask.compute(*bag.to_delayed(), scheduler="sync") == tuple(parts)


def _task_key(items):
    from distributed import get_worker

    return get_worker().get_current_task(), [i for i, _ in items]


def test_job_partitions_run_as_bag_partitions():
    """run_partitions computes bag partitions: each task's key is a bag key (name, i) of a
    map_partitions over the partition's small bag, named after the run."""
    from maskbatch.runtime import window

    got = []
    with cluster.dask_client(ClusterConfig(workers=1, processes=False, progress=False)) as client:
        stats = window.run_partitions(client, window.contiguous_partitions(
            ((i, str(i)) for i in range(10)), 3), _task_key, lambda part, r: got.append(r),
            progress=False, label="predict")
    assert stats.completed == stats.tasks == 4
    assert sorted(ids for _, ids in got) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    for key, _ in got:
        assert isinstance(key, tuple) and key[0].startswith("partitions-predict-"), key
        assert isinstance(key[1], int)


def test_paths_from_read_text_a_dataframe_column_and_3_class_columns(photos, tmp_path):
    """`predict(db.read_text("paths.txt"))` kept each line's \\n (every photo "missing file"); a
    dask DataFrame column was refused; a 3-class model's prob_* columns needed class_names again;
    `dask.compute(to_dataframe(d), to_dataframe(m, manifest=True))` processed every photo twice."""
    import dask.dataframe as dd
    from dask.utils import key_split
    from distributed import get_task_stream

    from maskbatch.models.classifier import BUNDLED_MODEL_DIRS

    paths = sorted(str(p) for p in photos.iterdir() if p.name != "broken.jpg")[:6]
    (tmp_path / "a.txt").write_text("\n".join(paths[:3]) + "\n\n")  # a blank line: skipped
    (tmp_path / "b.txt").write_text("\r\n".join(paths[3:]) + "\r\n")
    three = str(BUNDLED_MODEL_DIRS[3])
    with cluster.dask_client(ClusterConfig(workers=2, processes=False, progress=False)) as client:
        lines = db.read_text(str(tmp_path / "*.txt"))  # a partition per file
        dets, manifest = maskbatch.dask.predict_with_manifest(lines)
        with get_task_stream(client) as stream:
            frame, table = dask.compute(maskbatch.dask.to_dataframe(dets),
                                        maskbatch.dask.to_dataframe(manifest, manifest=True))
        photo_tasks = [t["key"] for t in stream.data if "maskbatch-predict" in str(t["key"])]
        # one task per partition of lines, shared by both frames
        assert len(photo_tasks) == lines.npartitions > 1
        assert {key_split(k) for k in photo_tasks} == {"maskbatch-predict"}
        assert sorted(table["name"]) == sorted(Path(p).name for p in paths)
        assert set(table["status"]) == {"ok"} and len(frame) > 0
        column = dd.from_pandas(pd.DataFrame({"path": paths, "n": range(6)}), npartitions=2)
        from_column = maskbatch.dask.to_dataframe(maskbatch.dask.predict(column.path)).compute()
        pairs = dd.from_pandas(pd.DataFrame({"name": [f"p{i}.jpg" for i in range(6)],
                                             "path": paths}), npartitions=3)
        named = maskbatch.dask.predict_with_manifest(pairs)[1].compute()
        records = maskbatch.dask.predict(column, model=three)
        faces = maskbatch.dask.to_dataframe(records.filter(lambda r: r["score"] > 0)).compute()
    pd.testing.assert_frame_equal(from_column.sort_values(KEY, ignore_index=True),
                                  frame.sort_values(KEY, ignore_index=True))
    assert sorted(r["name"] for r in named) == [f"p{i}.jpg" for i in range(6)]
    probs = [c for c in faces.columns if c.startswith("prob_")]
    assert len(probs) == 3 and len(faces) > 0 and faces[probs].notna().all().all()
    assert maskbatch.dask.class_names_of(records) == maskbatch.dask.class_names_of(
        records.filter(bool))
    with pytest.raises(MaskbatchError, match="path"):
        maskbatch.dask.predict(column[["n"]].assign(m=1))

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

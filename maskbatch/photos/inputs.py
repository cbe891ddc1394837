"""The photos and videos of a predict job, as (name, path) pairs: every folder entry that looks like
a photo or a video (maskbatch.photos.video cuts videos into segments), or the names of a
submission template CSV, kept inside the images folder.

Names are text (files.text_name: bytes that are not UTF-8 shown as ``\\xNN``) and every entry is
listed, readable or not: the worker decides ok, failed or skipped with a reason, so nothing that
looks like a photo is silently left out. A template name that points outside the images folder is
not even looked at: its path is a refusal the worker writes down as a failed row.
"""

from __future__ import annotations

import csv
import io
import os
import posixpath

from maskbatch import files
from maskbatch.errors import MaskbatchError
from maskbatch.photos import decoding, reading

OUTSIDE = ("outside the images folder: template names must be relative paths inside "
           "--images-dir (not opened)")


SNIFF_BYTES = 32


def folder_inputs(url: str) -> list[tuple[str, str]]:
    """Every entry of a folder that looks like a photo, by its extension or by its first bytes."""
    if not files.is_dir(url):
        raise MaskbatchError(f"images folder not found: {url}")
    if files.is_url(url):
        paths = [p for p in _remote_entries(url) if p.lower().endswith(decoding.INPUT_EXTENSIONS)]
        pairs = [(files.basename(p), p) for p in sorted(paths)]
    else:
        folder = os.path.abspath(url)
        with os.scandir(folder) as entries:
            names = sorted(e.name for e in entries if _looks_like_photo(e))
        pairs = [(files.text_name(n), files.text_name(os.path.join(folder, n))) for n in names]
    if not pairs:
        raise MaskbatchError(f"no images ({', '.join(decoding.IMAGE_EXTENSIONS)}) in {url}")
    return _unique(pairs)


def _remote_entries(url: str) -> list[str]:
    fs, path = files.filesystem(url)
    return [files.full_path(fs, p) for p in fs.ls(path, detail=False)]


def _looks_like_photo(entry: os.DirEntry) -> bool:
    if entry.name.lower().endswith(decoding.INPUT_EXTENSIONS):
        return True  # whatever it is (a folder, a link to nowhere, a FIFO): it gets a row
    try:
        if not entry.is_file():  # follows links; stat only, nothing is opened
            return False
        fd = os.open(entry.path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
        try:
            return decoding.sniff_format(os.read(fd, SNIFF_BYTES)) is not None
        finally:
            os.close(fd)
    except OSError:
        return False


def _unique(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Two entries whose names read the same as text (``a\\xff`` and a real byte 0xff): the second
    is kept as a skipped row under a name of its own."""
    seen: set[str] = set()
    out = []
    for name, path in pairs:
        if name in seen:
            n = 2
            while f"{name} ({n})" in seen:
                n += 1
            name, path = f"{name} ({n})", reading.refused_path(
                "skipped", f"its name, written as text, reads the same as another entry's ({name})")
        seen.add(name)
        out.append((name, path))
    return out


def template_folder(template: str) -> str:
    """Where a template's photos are when --images-dir is not given: `images/` beside it."""
    return files.join(template.rsplit("/", 1)[0] if "/" in template else ".", "images")


def template_inputs(template: str, images_dir: str | None = None) -> list[tuple[str, str]]:
    """The photos a submission template CSV names (its `name` column), in its order, once each."""
    fs, path = files.filesystem(template)
    if not fs.isfile(path):
        raise MaskbatchError(f"template CSV not found: {template}")
    with fs.open(path, "rb") as f:
        text = f.read().decode("utf-8-sig", "surrogateescape")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        if "name" not in (reader.fieldnames or []):
            raise MaskbatchError(f"{template}: template CSV needs a `name` column")
        names = list(dict.fromkeys(files.text_name(row["name"]) for row in reader if row["name"]))
    except csv.Error as exc:  # e.g. a field over csv.field_size_limit() (131,072 characters)
        raise MaskbatchError(f"{template}: not a readable template CSV ({exc})") from None
    folder = images_dir or template_folder(template)
    if not files.is_dir(folder):
        raise MaskbatchError(f"images folder for the template not found: {folder} "
                             "(give it with --images-dir)")
    if not files.is_url(folder):
        folder = files.text_name(os.path.abspath(folder))
    return [(name, inside(folder, name)) for name in names]


def inside(folder: str, name: str) -> str:
    """The path of `name` within `folder`, or a refusal when the name leads outside it.

    Decided on the text alone: an outside path is neither opened nor checked for existence, so
    the reason is the same whether it exists or not.
    """
    if "\0" in name:
        return reading.refused_path("failed", "not a file name (it contains a NUL character)")
    if name.startswith(("/", "\\")) or files.is_url(name):
        return reading.refused_path("failed", OUTSIDE)
    norm = posixpath.normpath(name)
    if norm in (".", "..") or norm.startswith("../"):
        return reading.refused_path("failed", OUTSIDE)
    return files.join(folder, norm)


"""A folder of hostile inputs, made on the spot in a temporary folder (never committed).

Real photos under names the OS allows but programs trip over, special files, links, bombs and
formats from the edges; `build_corpus` returns what the job should say about each entry.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from conftest import huge_png_header

NON_UTF8 = b"caf\xe9-\xff.jpg"  # listed as the text name below
NON_UTF8_TEXT = "caf\\xe9-\\xff.jpg"


@dataclass(frozen=True)
class Entry:
    status: str  # ok, failed or skipped
    reason: str = ""  # a piece of the expected reason
    source: str | None = None  # the real photo this entry is a copy of


def build_corpus(folder: Path, real: list[Path]) -> dict[str, Entry]:
    """Fill `folder`; return {name as the job lists it: expected Entry}. `real` needs 9 photos."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    expected: dict[str, Entry] = {}

    def photo(name: str | bytes, src: Path) -> None:
        target = os.path.join(os.fsencode(folder), name if isinstance(name, bytes) else
                              os.fsencode(name))
        shutil.copyfile(src, target)
        text = NON_UTF8_TEXT if isinstance(name, bytes) else name
        expected[text] = Entry("ok", source=src.name)

    photo(real[0].name, real[0])
    photo(real[1].name, real[1])
    photo(NON_UTF8, real[2])
    photo("line\rbreak.jpg", real[3])
    photo("new\nline, \"quoted\".jpg", real[4])
    photo("a::b://c.jpg".replace("/", "_"), real[5])  # `a::b:__c.jpg`: no URL for local names
    photo("tab\tand\x1bescape.JPG", real[6])
    photo("IMG_0007", real[7])  # no extension: found by content
    photo("-rf --help.jpeg", real[8])
    os.symlink(folder / real[0].name, folder / "link-to-photo.jpg")
    expected["link-to-photo.jpg"] = Entry("ok", source=real[0].name)

    frames = [Image.new("RGB", (64, 48), c) for c in ("red", "green", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF")
    (folder / "gif-named.jpg").write_bytes(buf.getvalue())
    expected["gif-named.jpg"] = Entry("ok")
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    (folder / "animated.gif").write_bytes(buf.getvalue())
    expected["animated.gif"] = Entry("ok", "frame 1 of 3 read")
    buf = io.BytesIO()
    frames[0].save(buf, format="TIFF", save_all=True, append_images=frames[1:])
    (folder / "pages.tif").write_bytes(buf.getvalue())
    expected["pages.tif"] = Entry("ok", "page 1 of 3 read")
    noise = np.random.default_rng(0).integers(0, 256, (40, 4000, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "noise-strip.png")
    expected["noise-strip.png"] = Entry("ok")

    os.mkfifo(folder / "fifo.jpg")
    expected["fifo.jpg"] = Entry("skipped", "FIFO")
    os.symlink("/dev/zero", folder / "endless.jpg")
    expected["endless.jpg"] = Entry("skipped", "character device")
    os.symlink(folder / "nowhere.jpg", folder / "broken-link.jpg")
    expected["broken-link.jpg"] = Entry("skipped", "broken symbolic link")
    os.symlink(folder / "loop.jpg", folder / "loop.jpg")
    expected["loop.jpg"] = Entry("skipped", "symbolic link loop")
    (folder / "folder.jpg").mkdir()
    expected["folder.jpg"] = Entry("skipped", "a folder")
    (folder / "photo.heic").write_bytes(b"\0\0\0\x18ftypheic" + bytes(64))
    expected["photo.heic"] = Entry("skipped", "HEIC")

    with open(folder / "sparse-10GB.jpg", "wb") as f:
        f.truncate(10 * 2**30)
    expected["sparse-10GB.jpg"] = Entry("failed", "larger than the 64 MB limit")
    (folder / "bomb.png").write_bytes(huge_png_header())
    expected["bomb.png"] = Entry("failed", "megapixel limit")
    (folder / "empty.jpg").write_bytes(b"")
    expected["empty.jpg"] = Entry("failed", "empty file")
    good = real[0].read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    expected["truncated.jpg"] = Entry("failed", "truncated JPEG")
    (folder / "not-an-image.png").write_bytes(b"name,x1\nthis is a CSV file\n")
    expected["not-an-image.png"] = Entry("failed", "not an image")
    (folder / "notes.txt").write_text("not a photo: not an entry of the job")
    return expected


# --------------------------------------------------------------------------- issue 38, rows 5-9
# (the secrets, full-disk, lock and truth-box rows: their helpers)

SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"  # an AWS-shaped secret: `/` and `+` in it


@contextlib.contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Callable[[str], None]]:
    """A tmpfs of `size` mounted on `folder` (root only: pytest.skip elsewhere), unmounted at
    the end; yields resize(size), which gives the file system more (or less) room in place."""
    import pytest

    folder.mkdir(parents=True, exist_ok=True)
    mount = shutil.which("mount")
    if os.geteuid() != 0 or mount is None:
        pytest.skip("mounting a small tmpfs needs root")
    made = subprocess.run([mount, "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")

    def resize(new: str) -> None:
        subprocess.run([mount, "-o", f"remount,size={new}", str(folder)], check=True)

    try:
        yield resize
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def dead_pid() -> int:
    """The pid of a process of this host that has ended (and was reaped)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def truth_rows(detections_csv: Path) -> list[list[str]]:
    """A run's submission.csv rows (name, x1, x2, y1, y2 = left, top, right, bottom, classname)
    as truth rows: scored against its own run, mAP 1."""
    with open(detections_csv, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f)][1:]
    return [r[:6] for r in rows if r[1]]

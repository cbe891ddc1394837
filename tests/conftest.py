"""Shared fixtures: the real sample data folder, a small model, broken files made on the spot."""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


DATA_SETS = ("medical-mask", "voc-masks", "messy", "crops")


def data_dir() -> Path | None:
    folder = Path(os.environ.get("MASKBATCH_DATA", REPO.parent / "shared" / "data"))
    return folder if (folder / "medical-mask").is_dir() else None


def data_required() -> bool:
    """In CI (CI=true, as CI services set it) or when MASKBATCH_DATA is set, a missing sample data
    folder is an error, not a reason to skip a third of the suite."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes") or "MASKBATCH_DATA" in os.environ


def missing_data_message() -> str | None:
    folder = Path(os.environ.get("MASKBATCH_DATA", REPO.parent / "shared" / "data"))
    absent = [name for name in DATA_SETS if not (folder / name).is_dir()]
    if not absent:
        return None
    return (f"sample data not found: {folder} lacks {', '.join(absent)} (set MASKBATCH_DATA to "
            "the shared data folder, or place it at ../shared/data)")


def pytest_configure(config: pytest.Config) -> None:
    message = missing_data_message()
    if message and data_required():
        raise pytest.UsageError(f"{message}; CI=true or MASKBATCH_DATA set: refusing to skip the "
                                "tests that need it")


@pytest.fixture(scope="session")
def data() -> Path:
    folder = data_dir()
    if folder is None:
        pytest.skip(missing_data_message() or "sample data not found")
    return folder


def huge_png_header() -> bytes:
    """A valid-looking PNG whose header claims 100000 x 100000 pixels."""
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)))


def copy_photos(data: Path, folder: Path, **per_set: int) -> Path:
    """Copy the first N photos (name order) of each labelled set into `folder`, e.g.
    ``copy_photos(data, folder, medical_mask=30, voc_masks=10)``; returns `folder`."""
    for name, n in per_set.items():
        for src in sorted((data / name.replace("_", "-") / "images").iterdir())[:n]:
            shutil.copy(src, folder / src.name)
    return folder


def write_broken_files(folder: Path, good_jpeg: bytes) -> dict[str, bytes]:
    """Broken files every loader meets sooner or later; returns name -> bytes written."""
    files = {
        "empty.jpg": b"",
        "truncated.jpg": good_jpeg[: len(good_jpeg) // 2],
        "not-an-image.jpg": b"name,x1\nthis is a CSV file\n",
        "huge-header.png": huge_png_header(),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return files

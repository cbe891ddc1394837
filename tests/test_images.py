"""Decoding real and broken files to 8-bit BGR, gamma, boxes and crops."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from conftest import huge_png_header

from maskbatch.config import InputLimits
from maskbatch.errors import ImageError, SkippedInput
from maskbatch.photos import decoding, pixels, reading


def test_messy_real_files_decode_to_8bit_bgr(data):
    for path in sorted((data / "messy").iterdir()):
        image = reading.load_image(str(path))
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, path.name


def test_webp_named_jpg_is_recognised_by_content(data):
    raw = (data / "messy" / "webp-named-jpg.jpg").read_bytes()
    assert decoding.sniff_format(raw) == "webp"
    assert decoding.decode_image(raw).shape[2] == 3


def test_16bit_rgba_png_is_scaled_not_clipped(data):
    raw = (data / "messy" / "rgba-16bit.png").read_bytes()
    unchanged = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
    assert unchanged.dtype == np.uint16 and unchanged.shape[2] == 4
    image = decoding.decode_image(raw)
    expected = (unchanged[:, :, :3] >> 8).astype(np.uint8)
    assert np.abs(image.astype(int) - expected.astype(int)).max() <= 1


def test_grayscale_becomes_three_channels():
    gray = np.tile(np.arange(64, dtype=np.uint8), (32, 1))
    ok, buf = cv2.imencode(".png", gray)
    image = decoding.decode_image(buf.tobytes())
    assert image.shape == (32, 64, 3)
    assert (image[:, :, 0] == gray).all()


@pytest.mark.parametrize("content, reason", [
    (b"", "empty file"),
    (b"GIF89a\x01\x00\x01\x00-not-really", "cannot decode gif"),
    (b"hello, world", "not an image"),
    (huge_png_header(), "100000 x 100000 pixels, over the 100 megapixel limit"),
])
def test_broken_bytes_give_a_reason(content, reason):
    with pytest.raises(ImageError, match=reason):
        decoding.decode_image(content)


def test_truncated_jpeg_is_refused(data):
    raw = (data / "medical-mask" / "images" / "0001.jpg").read_bytes()
    decoding.decode_image(raw)
    with pytest.raises(ImageError, match="truncated JPEG"):
        decoding.decode_image(raw[: len(raw) // 2])


def test_missing_file_reason(tmp_path):
    with pytest.raises(ImageError, match="missing file"):
        reading.load_image(str(tmp_path / "nope.jpg"))


def test_gamma_matches_the_notebook_table():
    image = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    table = np.array([((i / 255.0) ** 0.5) * 255 for i in range(256)]).astype(np.uint8)
    assert (pixels.adjust_gamma(image, 2.0) == table[image]).all()
    # known values, not only the same formula: gamma 2 is a square root, truncated
    lit = pixels.adjust_gamma(np.array([[[0, 64, 255]]], np.uint8), 2.0)
    assert lit.tolist() == [[[0, 127, 255]]]
    assert (pixels.adjust_gamma(image, 1.0) == image).all()


@pytest.mark.parametrize("box, expected", [
    ((10, 20, 30, 40), (10, 20, 30, 40)),
    ((-5, -5, 30, 40), (0, 0, 30, 40)),
    ((90, 10, 130, 140), (90, 10, 100, 50)),  # hangs over the bottom-right corner
    ((120, 10, 150, 20), None),          # wholly outside
    ((30, 30, 30, 40), None),            # empty
    ((30, 40, 10, 20), None),            # inverted
])
def test_clip_box(box, expected):
    assert pixels.clip_box(box, 100, 50) == expected


# --------------------------------------------------------------------------- per-photo budget


def _jpeg(width: int = 64, height: int = 48) -> bytes:
    rng = np.random.default_rng(0)
    return cv2.imencode(".jpg", rng.integers(0, 256, (height, width, 3), dtype=np.uint8))[1].tobytes()


def test_special_files_are_skipped_without_being_read(tmp_path):
    """A FIFO blocked a worker forever; a link to /dev/zero was read until the worker died."""
    import os
    import time

    os.mkfifo(tmp_path / "fifo.jpg")
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    (tmp_path / "folder.jpg").mkdir()
    expected = {"fifo.jpg": "FIFO", "zero.jpg": "character device", "gone.jpg": "broken symbolic",
                "loop.jpg": "symbolic link loop", "folder.jpg": "a folder"}
    started = time.perf_counter()
    for name, reason in expected.items():
        with pytest.raises(SkippedInput, match=reason):
            reading.load_image(str(tmp_path / name))
    with pytest.raises(SkippedInput, match="FIFO"):
        reading.load_image(f"file://{tmp_path}/fifo.jpg")
    assert time.perf_counter() - started < 5


def test_symlink_to_a_photo_is_read(tmp_path):
    (tmp_path / "real.jpg").write_bytes(_jpeg())
    (tmp_path / "link.jpg").symlink_to(tmp_path / "real.jpg")
    assert reading.load_image(str(tmp_path / "link.jpg")).shape == (48, 64, 3)


def test_bytes_and_pixels_are_capped(tmp_path):
    big = tmp_path / "sparse.jpg"
    with open(big, "wb") as f:
        f.truncate(10 * 2**30)  # 10 GB that occupy no disk: refused from its size, never read
    with pytest.raises(ImageError, match="larger than the 64 MB limit"):
        reading.load_image(str(big))
    (tmp_path / "small.jpg").write_bytes(_jpeg())
    with pytest.raises(ImageError, match="larger than the 1.0 KB|larger than the 0.0 MB"):
        reading.load_image(str(tmp_path / "small.jpg"), InputLimits(max_bytes=1000))
    with pytest.raises(ImageError, match="64 x 48 pixels, over the 0.001 megapixel limit"):
        reading.load_image(str(tmp_path / "small.jpg"), InputLimits(max_pixels=1000))


def test_a_stuck_read_fails_the_photo_not_the_worker():
    """A file system that never answers: the photo fails after the time budget, the caller goes on."""
    import threading

    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    release = threading.Event()

    class StuckFileSystem(MemoryFileSystem):
        """Knows one photo, and never answers when asked about it."""

        protocol = "stucktest"
        store: dict = {}
        pseudo_dirs = [""]

        def info(self, path, **kwargs):
            release.wait(30)
            return {"name": path, "size": 10, "type": "file"}

    fsspec.register_implementation("stucktest", StuckFileSystem, clobber=True)
    try:
        with pytest.raises(ImageError, match="gave up after 0.5 s"):
            reading.load_image("stucktest://photo.jpg", InputLimits(read_timeout=0.5))
    finally:
        release.set()


def test_multi_page_tiff_says_what_was_read(tmp_path):
    from PIL import Image

    pages = [Image.new("RGB", (40, 30), colour) for colour in ("red", "green", "blue")]
    buf = io.BytesIO()
    pages[0].save(buf, format="TIFF", save_all=True, append_images=pages[1:])
    photo = decoding.decode_photo(buf.getvalue())
    assert photo.image.shape == (30, 40, 3)
    assert photo.note == "page 1 of 3 read (multi-page TIFF; the others are not)"
    single = io.BytesIO()
    pages[0].save(single, format="TIFF")
    assert decoding.decode_photo(single.getvalue()).note == ""


def test_gif_named_jpg_is_decoded():
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), "red").save(buf, format="GIF")
    assert decoding.sniff_format(buf.getvalue()) == "gif"
    assert decoding.decode_image(buf.getvalue()).shape == (30, 40, 3)


def test_reasons_carry_no_opencv_build_paths():
    err = cv2.error("OpenCV(4.14.0) /io/opencv/modules/imgcodecs/src/grfmt_gif.cpp:508: error: "
                    "(-215:Assertion failed) false in function 'getFrameCount_'\n")
    text = decoding.plain_cv_error(err)
    assert "/io/opencv" not in text and ".cpp" not in text and "OpenCV(" not in text
    try:  # a real one: a 0x0 resize
        cv2.resize(np.zeros((0, 0, 3), np.uint8), (5, 5))
    except cv2.error as exc:
        text = decoding.plain_cv_error(exc)
    assert text.startswith("the decoder refused it") and "/" not in text.replace("!", "")


def test_max_pixels_above_100_megapixels_holds_as_documented(tmp_path) -> None:
    """--max-pixels is the limit that holds, above OpenCV's old 100M default too: a 105-megapixel
    PNG decodes under --max-pixels 120M and is refused, with the reason, under the default."""
    import json
    import subprocess
    import sys

    photos = tmp_path / "photos"
    photos.mkdir()
    big = np.zeros((10_000, 10_500, 3), np.uint8)
    big[5000:5100, 5000:5100] = 255
    assert cv2.imwrite(str(photos / "big.png"), big)
    del big
    for flags, status in (([], "failed"), (["--max-pixels", "120M"], "ok")):
        out = tmp_path / f"out-{status}"
        proc = subprocess.run([sys.executable, "-m", "maskbatch.cli", "predict", str(photos), "--out",
                               str(out), "--workers", "1", "--no-progress", *flags],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        summary = json.loads((out / "summary.json").read_text())
        assert summary[status] == 1, summary
    assert "over the 100 megapixel limit" in str(json.loads(
        (tmp_path / "out-failed" / "summary.json").read_text())["failures"])

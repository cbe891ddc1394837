"""Decoding real and broken files to 8-bit BGR, gamma, boxes and crops."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import huge_png_header

from maskbatch import images
from maskbatch.errors import ImageError


def test_messy_real_files_decode_to_8bit_bgr(data):
    for path in sorted((data / "messy").iterdir()):
        image = images.load_image(str(path))
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, path.name


def test_webp_named_jpg_is_recognised_by_content(data):
    raw = (data / "messy" / "webp-named-jpg.jpg").read_bytes()
    assert images.sniff_format(raw) == "webp"
    assert images.decode_image(raw).shape[2] == 3


def test_16bit_rgba_png_is_scaled_not_clipped(data):
    raw = (data / "messy" / "rgba-16bit.png").read_bytes()
    unchanged = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
    assert unchanged.dtype == np.uint16 and unchanged.shape[2] == 4
    image = images.decode_image(raw)
    expected = (unchanged[:, :, :3] >> 8).astype(np.uint8)
    assert np.abs(image.astype(int) - expected.astype(int)).max() <= 1


def test_grayscale_becomes_three_channels():
    gray = np.tile(np.arange(64, dtype=np.uint8), (32, 1))
    ok, buf = cv2.imencode(".png", gray)
    image = images.decode_image(buf.tobytes())
    assert image.shape == (32, 64, 3)
    assert (image[:, :, 0] == gray).all()


@pytest.mark.parametrize("content, reason", [
    (b"", "empty file"),
    (b"GIF89a-not-really", "not an image"),
    (b"hello, world", "not an image"),
    (huge_png_header(), "cannot decode png"),
])
def test_broken_bytes_give_a_reason(content, reason):
    with pytest.raises(ImageError, match=reason):
        images.decode_image(content)


def test_truncated_jpeg_is_refused(data):
    raw = (data / "medical-mask" / "images" / "0001.jpg").read_bytes()
    images.decode_image(raw)
    with pytest.raises(ImageError, match="truncated JPEG"):
        images.decode_image(raw[: len(raw) // 2])


def test_missing_file_reason(tmp_path):
    with pytest.raises(ImageError, match="missing file"):
        images.load_image(str(tmp_path / "nope.jpg"))


def test_gamma_matches_the_notebook_table():
    image = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    table = np.array([((i / 255.0) ** 0.5) * 255 for i in range(256)]).astype(np.uint8)
    assert (images.adjust_gamma(image, 2.0) == table[image]).all()
    # known values, not only the same formula: gamma 2 is a square root, truncated
    lit = images.adjust_gamma(np.array([[[0, 64, 255]]], np.uint8), 2.0)
    assert lit.tolist() == [[[0, 127, 255]]]
    assert (images.adjust_gamma(image, 1.0) == image).all()


@pytest.mark.parametrize("box, expected", [
    ((10, 20, 30, 40), (10, 20, 30, 40)),
    ((-5, -5, 30, 40), (0, 0, 30, 40)),
    ((90, 10, 130, 140), (90, 10, 100, 50)),  # hangs over the bottom-right corner
    ((120, 10, 150, 20), None),          # wholly outside
    ((30, 30, 30, 40), None),            # empty
    ((30, 40, 10, 20), None),            # inverted
])
def test_clip_box(box, expected):
    assert images.clip_box(box, 100, 50) == expected

"""Which entries a job sees, and how any name the OS allows travels through it (no cluster here)."""

from __future__ import annotations

import csv
import io
import json
import os

import pandas as pd
import pytest

from maskbatch import files
from maskbatch.config import PredictSettings
from maskbatch.errors import ImageError
from maskbatch.jobs.plan import list_inputs, run_record
from maskbatch.models.classifier import ModelRef
from maskbatch.outputs import writers
from maskbatch.photos import inputs, reading

CONTROL_NAMES = ["line\rbreak.jpg", "new\nline.jpg", 'quote",comma.jpg', "tab\tesc\x1b.jpg"]


def _jpeg_bytes() -> bytes:
    import cv2
    import numpy as np

    return cv2.imencode(".jpg", np.full((20, 30, 3), 128, np.uint8))[1].tobytes()


def test_local_names_are_never_urls(tmp_path):
    """A readable file with `::` in its name was reported missing (fsspec read it as a URL chain)."""
    assert files.is_url("s3://bucket/x.jpg") and files.is_url("memory://x")
    assert files.is_url("simplecache::s3://bucket/x.jpg")
    assert not files.is_url("a::b.jpg") and not files.is_url("x://y.jpg")
    assert not files.is_url(str(tmp_path / "a::b.jpg"))
    (tmp_path / "a::b.jpg").write_bytes(_jpeg_bytes())
    assert reading.load_image(str(tmp_path / "a::b.jpg")).shape == (20, 30, 3)
    assert [n for n, _ in list_inputs(str(tmp_path))] == ["a::b.jpg"]


def test_non_utf8_name_is_listed_as_text_and_opens(tmp_path):
    """A name that is not UTF-8 ended the job before it started (UnicodeEncodeError in run.json)."""
    raw = os.path.join(os.fsencode(tmp_path), b"caf\xe9.jpg")
    with open(raw, "wb") as f:
        f.write(_jpeg_bytes())
    [(name, path)] = list_inputs(str(tmp_path))
    assert name == "caf\\xe9.jpg" and name.encode("utf-8")  # valid text for Parquet, CSV, JSON
    assert os.fsencode(files.os_path(path)) == raw
    assert reading.load_image(path).shape == (20, 30, 3)
    record = run_record([(name, path)], ModelRef("x" * 64), PredictSettings())
    json.dumps(record).encode("utf-8")
    pd.DataFrame({"name": [name], "path": [path]}).to_parquet(io.BytesIO())


def test_a_real_backslash_name_still_opens(tmp_path):
    (tmp_path / "lit\\xe9.jpg").write_bytes(_jpeg_bytes())
    [(name, path)] = list_inputs(str(tmp_path))
    assert name == "lit\\xe9.jpg" and reading.load_image(path).shape == (20, 30, 3)


@pytest.mark.parametrize("reader", ["pandas", "csv"])
def test_control_characters_round_trip_through_the_submission_csv(reader):
    """A name with a carriage return was written unquoted and read back as two rows."""
    names = CONTROL_NAMES + ["caf\\xe9.jpg", "plain.jpg"]
    df = pd.DataFrame({"name": names, "x1": range(len(names)), "classname": "face_with_mask"})
    text = writers.csv_text(df)
    if reader == "pandas":
        back = pd.read_csv(io.StringIO(text))
        assert list(back["name"]) == names and list(back["x1"]) == list(range(len(names)))
    else:
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
        assert [r["name"] for r in rows] == names


def test_every_photo_like_entry_is_listed(tmp_path):
    """Broken links, loops, a folder named x.jpg and a .gif were silently left out."""
    (tmp_path / "real.jpg").write_bytes(_jpeg_bytes())
    (tmp_path / "IMG_0001").write_bytes(_jpeg_bytes())  # a photo by content, no extension
    (tmp_path / "anim.gif").write_bytes(b"GIF89a")
    (tmp_path / "photo.heic").write_bytes(b"\0\0\0\x18ftypheic")
    (tmp_path / "notes.txt").write_text("not a photo")
    (tmp_path / "sub").mkdir()  # a folder without a photo's name: not an entry of the job
    (tmp_path / "folder.jpg").mkdir()
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    os.mkfifo(tmp_path / "fifo.png")
    names = [n for n, _ in list_inputs(str(tmp_path))]
    assert names == sorted(["real.jpg", "IMG_0001", "anim.gif", "photo.heic", "folder.jpg",
                            "gone.jpg", "loop.jpg", "fifo.png"])


def test_template_names_stay_inside_the_images_folder(tmp_path):
    """`../x` and absolute names were opened, and the reason told whether they existed."""
    photos = tmp_path / "images"
    photos.mkdir()
    (photos / "in.jpg").write_bytes(_jpeg_bytes())
    (tmp_path / "secret.jpg").write_bytes(_jpeg_bytes())
    template = tmp_path / "t.csv"
    names = ["in.jpg", "../secret.jpg", "../not-there.jpg", "/etc/passwd", "sub/../in2.jpg",
             "s3://bucket/x.jpg", "a://b.jpg", "./in.jpg"]
    template.write_text("name\n" + "\n".join(names) + "\n")
    pairs = dict(list_inputs(str(template)))
    for outside in ("../secret.jpg", "../not-there.jpg", "/etc/passwd", "s3://bucket/x.jpg"):
        assert reading.refused_reason(pairs[outside]) == ("failed", inputs.OUTSIDE)
    assert pairs["in.jpg"] == str(photos / "in.jpg")
    assert pairs["./in.jpg"] == str(photos / "in.jpg")
    assert pairs["sub/../in2.jpg"] == str(photos / "in2.jpg")
    with pytest.raises(ImageError, match="missing file"):  # a name with :// is a local name
        reading.load_image(pairs["a://b.jpg"])
    with pytest.raises(ImageError, match="outside the images folder"):
        reading.load_image(pairs["../secret.jpg"])


def test_submission_names_work_as_a_template_again(tmp_path):
    """The names a run writes (control characters, non-UTF-8 bytes as \\xNN) find their files."""
    folder = tmp_path / "images"
    folder.mkdir()
    for name in CONTROL_NAMES:
        (folder / name).write_bytes(_jpeg_bytes())
    with open(os.path.join(os.fsencode(folder), b"caf\xe9.jpg"), "wb") as f:
        f.write(_jpeg_bytes())
    listed = list_inputs(str(folder))
    sub = pd.DataFrame({"name": [n for n, _ in listed], "x1": 1})
    (tmp_path / "submission.csv").write_text(writers.csv_text(sub), newline="")
    again = list_inputs(str(tmp_path / "submission.csv"), str(folder))
    assert [n for n, _ in again] == [n for n, _ in listed]
    for _, path in again:
        assert reading.load_image(path).shape == (20, 30, 3)


def test_csv_text_writes_each_field_as_csv_field_does():
    """The column-wise writer gives exactly the per-field rule: quoted where a comma, quote, CR
    or LF needs it, empty for missing values, whole numbers and floats as Python writes them."""
    import numpy as np
    import pandas as pd

    from maskbatch.outputs.writers import csv_field, csv_text

    df = pd.DataFrame({"name": ["a.jpg", "b,c.jpg", 'q"x', "cr\r.jpg", "lf\n", None, "ü"],
                       "x1": [1, 2, 3, 4, 5, 6, -7], "f": [0.1, np.nan, 1e-7, 2.0, 3.5, None, 1 / 3],
                       "o": [1, "a", None, 2.5, True, "x,y", ""],
                       "n": pd.array([1, None, 3, 4, 5, 6, 7], dtype="Int64")})
    for frame in (df, df.iloc[:0], df[["name"]], df[["x1"]]):
        for header in (True, False):
            lines = [",".join(csv_field(c) for c in frame.columns)] if header else []
            lines += [",".join(csv_field(v) for v in row)
                      for row in frame.itertuples(index=False, name=None)]
            assert csv_text(frame, header) == ("\n".join(lines) + "\n" if lines else "")

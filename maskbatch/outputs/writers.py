"""Every output file's schema, and atomic writers (a crashed run never leaves a complete-looking file).

extract writes to CROPS_DIR:
  crops/part-*.parquet   one row per face crop (CROP_COLUMNS; `image` = PNG bytes, BGR 124x124)
  manifest.parquet       one row per input image (EXTRACT_MANIFEST_COLUMNS)
  class_counts.png       crops per class and dataset; summary.json
predict writes to OUT_DIR:
  detections.parquet     one row per face (DETECTION_SCHEMA), in input order
  submission.csv         SUBMISSION_COLUMNS, the dataset's format, in input order
  images.parquet         one row per input photo or video segment (MANIFEST_SCHEMA), in input order
  frames.parquet         one row per sampled video frame (FRAME_SCHEMA), in input order
  parts/                 the committed partitions and the commit log (maskbatch.parts)
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import uuid
from collections.abc import Iterator
from typing import IO

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from maskbatch import files
from maskbatch.config import CLASS_NAMES

CROP_COLUMNS = [
    "crop_id", "image", "label", "source_classname", "source_dataset", "source_image",
    "box_index", "x1", "y1", "x2", "y2", "image_width", "image_height", "pixel_hash",
]


EXTRACT_MANIFEST_COLUMNS = [
    "image", "path", "source_dataset", "status", "reason", "n_boxes", "n_faces",
    "n_skipped_boxes", "skipped_detail", "width", "height", "seconds",
]


# Submission columns: the header says x1,x2,y1,y2 but values are left, top, right, bottom,
# exactly as in the dataset's train.csv.
SUBMISSION_COLUMNS = ["name", "x1", "x2", "y1", "y2", "classname"]
# `frame` (index in the video) and `time_s` are null for photos.
DETECTION_COLUMNS = SUBMISSION_COLUMNS + ["score", "mask_prob", "width", "height", "model_sha256",
                                          "frame", "time_s"]
# `frames` (sampled frames read) and `duration_s` (of the segment) are null for photos.
PREDICT_MANIFEST_COLUMNS = [
    "name", "path", "status", "reason", "n_faces", "width", "height", "seconds", "frames",
    "duration_s",
]
# One row per sampled video frame: the video, the segment (images.parquet's name), then the faces
# of each class of the model's card, one column per class named as the class (frame_columns).
FRAME_KEY_COLUMNS = ["video", "segment", "frame", "time_s"]
FRAME_COLUMNS = FRAME_KEY_COLUMNS + list(CLASS_NAMES)
# Columns added for videos: a table made without them (photos only, older code) gets nulls.
NULLABLE_COLUMNS = ("frame", "time_s", "frames", "duration_s")


# Arrow types of predict's Parquet files: every part and the final files share them, so empty
# partitions and partitions without faces read back with the same column types.
DETECTION_SCHEMA = pa.schema([
    ("name", pa.string()), ("x1", pa.int64()), ("x2", pa.int64()), ("y1", pa.int64()),
    ("y2", pa.int64()), ("classname", pa.string()), ("score", pa.float64()),
    ("mask_prob", pa.float64()), ("width", pa.int64()), ("height", pa.int64()),
    ("model_sha256", pa.string()), ("frame", pa.int64()), ("time_s", pa.float64()),
])


MANIFEST_SCHEMA = pa.schema([
    ("name", pa.string()), ("path", pa.string()), ("status", pa.string()),
    ("reason", pa.string()), ("n_faces", pa.int64()), ("width", pa.int64()),
    ("height", pa.int64()), ("seconds", pa.float64()), ("frames", pa.int64()),
    ("duration_s", pa.float64()),
])


def frame_schema(class_names: tuple[str, ...] | list[str] = CLASS_NAMES) -> pa.Schema:
    """frames.parquet's schema for a model with these classes: a face count per class."""
    return pa.schema([("video", pa.string()), ("segment", pa.string()), ("frame", pa.int64()),
                      ("time_s", pa.float64()), *((name, pa.int64()) for name in class_names)])


def frame_columns(class_names: tuple[str, ...] | list[str] = CLASS_NAMES) -> list[str]:
    return FRAME_KEY_COLUMNS + list(class_names)


FRAME_SCHEMA = frame_schema(CLASS_NAMES)


def _nullable_ints(schema: pa.Schema, columns: tuple[str, ...]) -> pa.Schema:
    """The schema with pandas metadata saying `columns` are pandas' nullable Int64: read back,
    a video frame's index stays an integer beside the photos' nulls (not a float)."""
    template = schema.empty_table().to_pandas()
    template = template.astype({c: "Int64" for c in columns})
    return schema.with_metadata(pa.Schema.from_pandas(template, preserve_index=False).metadata)


DETECTION_SCHEMA = _nullable_ints(DETECTION_SCHEMA, ("frame",))
MANIFEST_SCHEMA = _nullable_ints(MANIFEST_SCHEMA, ("frames",))


assert DETECTION_SCHEMA.names == DETECTION_COLUMNS

# A model of three or more classes (an N-class card) adds one float64 column per class of its
# card, in the card's order, after model_sha256: prob_<class> = P(class). A 2-class model's
# detections have none (P(face_no_mask) = 1 - mask_prob), so their files stay as they were.
PROB_PREFIX = "prob_"


def prob_columns(class_names: tuple[str, ...] | list[str] = CLASS_NAMES) -> list[str]:
    """The prob_<class> columns of a model's detections: none for two classes."""
    return [] if len(class_names) <= 2 else [PROB_PREFIX + c for c in class_names]


def detection_columns(class_names: tuple[str, ...] | list[str] = CLASS_NAMES) -> list[str]:
    return DETECTION_COLUMNS + prob_columns(class_names)


def detection_schema(class_names: tuple[str, ...] | list[str] = CLASS_NAMES) -> pa.Schema:
    """detections.parquet's schema for a model with these classes (DETECTION_SCHEMA for two)."""
    schema = DETECTION_SCHEMA
    for name in prob_columns(class_names):
        schema = schema.append(pa.field(name, pa.float64()))
    return schema


def schema_of_columns(columns: list[str]) -> pa.Schema:
    """detections.parquet's schema for a table with these columns (prob_* columns read as
    the classes they name)."""
    return detection_schema(run_classes(columns))


def run_classes(columns: list[str]) -> tuple[str, ...]:
    """The classes of a run from its detections' columns: the prob_<class> columns an N-class
    model writes, else CLASS_NAMES."""
    named = [str(c)[len(PROB_PREFIX):] for c in columns if str(c).startswith(PROB_PREFIX)]
    return tuple(named) if len(named) > 2 else CLASS_NAMES


assert MANIFEST_SCHEMA.names == PREDICT_MANIFEST_COLUMNS


assert FRAME_SCHEMA.names == FRAME_COLUMNS


def write_bytes_atomic(url: str, data: bytes) -> None:
    """Write a file under a temporary name and rename it into place."""
    with open_write_all([url]) as (f,):
        f.write(data)


def write_parquet_atomic(df: pd.DataFrame, url: str) -> None:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    write_bytes_atomic(url, buf.getvalue())


def write_table_atomic(df: pd.DataFrame, schema: pa.Schema, url: str) -> None:
    """A DataFrame as Parquet with a fixed Arrow schema (columns in the schema's order)."""
    # one thread: Arrow's thread pool buys nothing on a partition's few rows, and on a busy
    # machine every hand-off to it waits for a core (seconds per file at 100 % CPU pressure)
    missing = [c for c in schema.names if c not in df.columns]
    if missing and set(missing) <= set(NULLABLE_COLUMNS):
        df = df.assign(**{c: pd.Series(None, index=df.index, dtype="object") for c in missing})
    table = pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False,
                                 nthreads=1)
    if schema.metadata:  # the schema's own pandas dtypes (nullable Int64), not the frame's
        table = table.replace_schema_metadata(schema.metadata)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    write_bytes_atomic(url, buf.getvalue())


@contextlib.contextmanager
def open_write(url: str) -> Iterator[IO[bytes]]:
    """A binary file opened for writing, parent folders made (streamed; fsspec on any store)."""
    fs, path = files.filesystem(url)
    parent = path.rsplit("/", 1)[0]
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "wb") as f:
        yield f


@contextlib.contextmanager
def open_write_all(urls: list[str]) -> Iterator[list[IO[bytes]]]:
    """Binary files written under temporary names and renamed into place together, once every
    one is written and closed; after an error none is renamed (the temporaries stay for
    storage.remove_temporaries)."""
    temps = [f"{url}.tmp-{uuid.uuid4().hex[:8]}" for url in urls]
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(open_write(tmp)) for tmp in temps]
    for tmp, url in zip(temps, urls):
        fs, path = files.filesystem(url)
        fs.mv(files.filesystem(tmp)[1], path)


def read_parquet_batches(url: str, columns: list[str], rows: int = 65_536
                         ) -> Iterator[pd.DataFrame]:
    """A Parquet file as DataFrames of at most `rows` rows, in order (memory: one batch)."""
    fs, path = files.filesystem(url)
    with fs.open(path, "rb") as f:
        for batch in pq.ParquetFile(f).iter_batches(rows, columns=columns, use_threads=False):
            yield batch.to_pandas()


def csv_bytes(df: pd.DataFrame, header: bool = True) -> bytes:
    """Rows of a CSV file (with the header line when asked); one writer for every CSV output."""
    return csv_text(df, header).encode()


def write_csv_atomic(df: pd.DataFrame, url: str) -> None:
    write_bytes_atomic(url, csv_bytes(df))


def csv_text(df: pd.DataFrame, header: bool = True) -> str:
    """CSV of a table (header first when asked), with "\n" line ends; any field holding a comma, a
    quote, a CR or a LF is quoted, so names with control characters read back whole (pandas' own
    writer leaves a lone CR unquoted and the row splits in two when read back). Column by column
    (whole-number columns without a per-value call): millions of rows take seconds."""
    lines = [",".join(csv_field(c) for c in df.columns)] if header else []
    if len(df) and len(df.columns):
        lines.extend(map(",".join, zip(*(_csv_column(df[c]) for c in df.columns))))
    elif len(df):
        lines.extend([""] * len(df))
    return "\n".join(lines) + "\n" if lines else ""


def _csv_column(values: pd.Series) -> list[str]:
    """One column's CSV fields, as :func:`csv_field` writes them."""
    if pd.api.types.is_integer_dtype(values.dtype) and not values.isna().any():
        return values.astype("int64").astype(str).tolist()
    return [csv_field(v) for v in values.tolist()]


def csv_field(value: object) -> str:
    """One CSV field: empty for missing values, quoted where the text needs it."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = str(value)
    if any(ch in text for ch in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def write_json_atomic(obj: object, url: str) -> None:
    write_bytes_atomic(url, (json.dumps(obj, indent=2, default=str) + "\n").encode())


def read_parquet_schema(url: str) -> pa.Schema:
    """A Parquet file's Arrow schema, read from its footer alone."""
    fs, path = files.filesystem(url)
    with fs.open(path, "rb") as f:
        return pq.read_schema(f)


def read_parquet(url: str, columns: list[str] | None = None) -> pd.DataFrame:
    """A whole Parquet file as a DataFrame, read on the calling thread: Arrow's threaded scan of
    a Python file object can leave a pool thread holding the file, which at interpreter exit asks
    for the GIL and aborts the process ("terminate called without an active exception", exit 134
    instead of a command's exit 2; apache/arrow#34314, #50482)."""
    fs, path = files.filesystem(url)
    with fs.open(path, "rb") as f:
        return pq.read_table(f, columns=columns, use_threads=False).to_pandas()


def read_crops(crops_dir: str, columns: list[str] | None = None) -> pd.DataFrame:
    """All crop shards of an extract output folder, in a stable order."""
    fs, path = files.filesystem(files.join(crops_dir, "crops"))
    parts = sorted(p for p in fs.ls(path, detail=False) if p.endswith(".parquet")) \
        if fs.isdir(path) else []
    wanted = None if columns is None else list(dict.fromkeys(["crop_id", *columns]))
    frames = [read_parquet(files.full_path(fs, p), wanted) for p in parts]
    if not frames:
        return pd.DataFrame(columns=wanted or CROP_COLUMNS)
    crops = pd.concat(frames, ignore_index=True).sort_values("crop_id", ignore_index=True)
    return crops if columns is None else crops[columns]


def submission_frame(detections: pd.DataFrame) -> pd.DataFrame:
    """The dataset's submission table from detections: integer pixels, left/top/right/bottom."""
    sub = detections[SUBMISSION_COLUMNS].copy()
    for col in ("x1", "x2", "y1", "y2"):
        sub[col] = sub[col].astype("int64")
    return sub


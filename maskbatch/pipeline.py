"""Per-partition work, pure and Dask-free: extraction of labelled crops, prediction on photos.

Each function takes a list of inputs (paths or records, never pixels) and returns plain rows;
maskbatch.runtime.window maps them (through maskbatch.tasks) over Dask bag partitions for the
jobs, maskbatch.dask maps predict_partition over a user's bag, and tests call them directly.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np
import pandas as pd

from maskbatch.config import CROP_SIZE, DetectorConfig, InputLimits
from maskbatch.datasets import FaceBox, ImageRecord
from maskbatch.errors import ImageError, SkippedInput
from maskbatch.models import detect
from maskbatch.models.classifier import Classifier, ModelRef, fit_crop, get_classifier
from maskbatch.outputs.privacy import PrivacyWriter
from maskbatch.outputs.writers import (
    CROP_COLUMNS,
    EXTRACT_MANIFEST_COLUMNS,
    detection_columns,
    frame_columns,
)
from maskbatch.photos import decoding, pixels, reading, video
from maskbatch.records import Faces, ImageRow, InputItem, image_table

NON_FINITE = "the model gave a P(mask) that is not a finite number (NaN or infinity) for a face"

# --------------------------------------------------------------------------- extraction


def extract_record(record: ImageRecord, label_map: dict[str, str], crop_size: int = CROP_SIZE
                   ) -> tuple[list[dict], dict]:
    """Crops (rows with PNG bytes) of one annotated image, and its manifest row.

    The image is decoded once, whatever its number of faces. Boxes are clipped to the image;
    a box that is broken, empty after clipping or not a training label is skipped with a reason.
    """
    started = time.perf_counter()
    row = {"image": record.name, "path": record.path, "source_dataset": record.dataset,
           "status": "ok", "reason": "", "n_boxes": len(record.boxes), "n_faces": 0,
           "n_skipped_boxes": 0, "skipped_detail": "", "width": 0, "height": 0, "seconds": 0.0}
    crops: list[dict] = []
    if record.problem:
        row.update(status="failed", reason=record.problem)
        return crops, _finish(row, started)
    if record.whole_image_label is not None:
        label = label_map.get(record.whole_image_label)
        if label is None:
            row.update(status="skipped", reason=f"folder {record.whole_image_label!r} is not a "
                       "training label (see --label-map)", n_boxes=1, n_skipped_boxes=1)
            return crops, _finish(row, started)
    try:
        image = reading.load_image(record.path)
    except ImageError as exc:
        row.update(status="failed", reason=str(exc))
        return crops, _finish(row, started)
    height, width = image.shape[:2]
    row.update(width=width, height=height)

    if record.whole_image_label is not None:
        boxes: Iterable[FaceBox] = [FaceBox(0, 0, width, height, record.whole_image_label)]
        row["n_boxes"] = 1
    else:
        boxes = record.boxes
    skipped = []
    for index, box in enumerate(boxes):
        label = label_map.get(box.classname)
        clipped = pixels.clip_box((box.x1, box.y1, box.x2, box.y2), width, height)
        if box.problem:
            skipped.append(f"box {index}: {box.problem}")
        elif label is None:
            skipped.append(f"box {index}: class {box.classname!r} is not a training label")
        elif clipped is None:
            skipped.append(f"box {index}: empty or outside the image after clipping")
        else:
            crops.append(_crop_row(record, image, clipped, crop_size, f"{record.name}#{index}",
                                   label, box.classname, index))
    row.update(n_faces=len(crops), n_skipped_boxes=len(skipped), skipped_detail="; ".join(skipped))
    if not crops:
        row.update(status="skipped",
                   reason="no usable box" + (f" ({skipped[0]})" if skipped else " (no annotations)"))
    return crops, _finish(row, started)


def _crop_row(record: ImageRecord, image: np.ndarray, box: tuple[int, int, int, int],
              crop_size: int, crop_id: str, label: str, source_classname: str, box_index: int
              ) -> dict:
    """One crops-table row (CROP_COLUMNS): the clipped box of `image`, resized, as PNG bytes."""
    face = pixels.resize(pixels.crop(image, box), crop_size)
    height, width = image.shape[:2]
    return {"crop_id": crop_id, "image": pixels.encode_png(face), "label": label,
            "source_classname": source_classname, "source_dataset": record.dataset,
            "source_image": record.name, "box_index": box_index, "x1": box[0], "y1": box[1],
            "x2": box[2], "y2": box[3], "image_width": width, "image_height": height,
            "pixel_hash": pixels.pixel_hash(face)}


def _finish(row: dict, started: float) -> dict:
    row["seconds"] = round(time.perf_counter() - started, 4)
    return row


def extract_partition(records: list[ImageRecord], label_map: dict[str, str],
                      crop_size: int = CROP_SIZE) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Crops and manifest rows of a list of records, as two DataFrames."""
    crop_rows, manifest_rows = [], []
    for record in records:
        crops, row = extract_record(record, label_map, crop_size)
        crop_rows.extend(crops)
        manifest_rows.append(row)
    return (pd.DataFrame(crop_rows, columns=CROP_COLUMNS),
            pd.DataFrame(manifest_rows, columns=EXTRACT_MANIFEST_COLUMNS))


def decode_crop(png: bytes) -> np.ndarray:
    """A crop's pixels (BGR uint8) from the bytes stored in a crops Parquet file."""
    return decoding.decode_image(png)



# --------------------------------------------------------------------------- prediction


def predict_partition(items: list[tuple[str, str | video.Segment]], detector: DetectorConfig,
                      model: ModelRef, limits: InputLimits = InputLimits()
                      ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Detect and classify the faces of a list of (name, path) photos and video segments.

    Each photo is decoded once, within the per-photo budget `limits` (a photo over it fails alone);
    faces are found on the gamma-corrected copy, faces under ``detector.min_face`` px dropped,
    cropped from the original, resized to the classifier's input and classified before the next
    photo is decoded, in onnxruntime calls of at most CLASSIFY_BATCH crops: a worker holds one
    photo and its crops at a time, whatever the partition's size. An item whose path is a
    video.Segment has each sampled frame go through the same steps (image_faces), one frame at a
    time. Whatever goes wrong with one item becomes its row (status failed or skipped, and the
    reason); the others go on. Returns (detections, manifest) in input order.
    """
    return _predict(items, detector, model, limits)[:2]


def predict_partition_frames(items: list[tuple[str, str | video.Segment]], detector: DetectorConfig,
                             model: ModelRef, limits: InputLimits = InputLimits(),
                             privacy: PrivacyWriter | None = None
                             ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """predict_partition, plus the table of sampled video frames (frame_columns of the model's
    classes: a face count per class). `privacy`: where each image's crops and blurred copy go
    (--save-crops, --blur; maskbatch.outputs.privacy), made from the pixels decoded here."""
    return _predict(items, detector, model, limits, privacy)


def _predict(items: list[tuple[str, str | video.Segment]], detector: DetectorConfig,
             model: ModelRef, limits: InputLimits, privacy: PrivacyWriter | None = None
             ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    classifier = get_classifier(model)
    detect.load_mode(detector.mode)
    manifest: list[ImageRow] = []
    rows: list[tuple] = []
    frames: list[tuple] = []
    for item in map(InputItem._make, items):
        started = time.perf_counter()
        if item.segment is not None:
            row = _predict_segment(item, detector, classifier, limits, rows, frames, privacy)
        else:
            row = _predict_photo(item, detector, classifier, limits, rows, privacy)
        row.seconds = round(time.perf_counter() - started, 4)
        manifest.append(row)
    detections = pd.DataFrame(rows, columns=detection_columns(classifier.class_names))
    detections["frame"] = detections["frame"].astype("Int64")
    detections["time_s"] = detections["time_s"].astype("float64")
    frame_table = pd.DataFrame(frames, columns=frame_columns(classifier.class_names))
    return detections, image_table(manifest), frame_table


def _predict_photo(item: InputItem, detector: DetectorConfig, classifier: Classifier,
                   limits: InputLimits, rows: list[tuple], privacy: PrivacyWriter | None = None
                   ) -> ImageRow:
    """One photo: read within `limits`, its faces' rows added to `rows`; its manifest row."""
    path = item.path
    row = ImageRow(item.name, "" if reading.refused_reason(path) else path)
    faces = Faces.none(len(classifier.class_names))
    try:
        photo = reading.load_photo(path, limits)
        row.height, row.width = photo.image.shape[:2]
        row.reason = photo.note
        faces = image_faces(photo.image, detector, classifier, _floor(privacy))
        if privacy is not None:  # --save-crops, --blur
            privacy.photo(item.name, photo.image, faces.boxes, faces.labels, faces.blur_boxes)
        del photo
    except SkippedInput as exc:
        row.fail(str(exc), "skipped")
    except ImageError as exc:
        row.fail(str(exc))
    except Exception as exc:  # one photo's surprise (a detector error...) must not end the job
        row.fail(unexpected_reason(exc))
    if row.status == "ok":
        row.n_faces = len(faces)
        rows.extend(face_rows(item.name, faces, classifier, row.width, row.height))
    return row


def image_faces(image: np.ndarray, detector: DetectorConfig, classifier: Classifier,
                blur_floor: float | None = None) -> Faces:
    """One decoded image (a photo or a video frame) -> its Faces: detect, drop faces under
    ``detector.min_face``, crop, classify (the probability of each class of the model's card).
    A probability that is not a finite number fails the image (ImageError NON_FINITE).
    `blur_floor` (--blur): the same pass also keeps every box above it (Faces.blur_boxes)."""
    below = None
    if blur_floor is None:
        found = detect.detect_faces(image, detector)
    else:
        found, below = detect.detect_faces_and_below(image, detector, blur_floor)
    found = keep_faces(found, detector.min_face)
    probs = classifier.class_probabilities(face_crops(image, found, classifier.input_size))
    if not np.isfinite(probs).all():
        raise ImageError(NON_FINITE)
    found = np.asarray(found).reshape(-1, 5)
    return Faces(found[:, :4], found[:, 4], probs, classifier.label(probs), below)


def _floor(privacy: PrivacyWriter | None) -> float | None:
    return privacy.job.blur_confidence if privacy is not None and privacy.job.blur else None


def face_crops(image: np.ndarray, boxes: np.ndarray, size: int) -> list[np.ndarray]:
    """The classifier's input for each box (left, top, right, bottom, ...): its pixels, fitted
    to `size` x `size`."""
    return [fit_crop(pixels.crop(image, (int(x1), int(y1), int(x2), int(y2))), size)
            for x1, y1, x2, y2, *_ in boxes]


def face_rows(name: str, faces: Faces, classifier: Classifier, width: int, height: int,
              frame: int | None = None, time_s: float | None = None) -> list[tuple]:
    """Detection rows (detection_columns of the model's classes) of one image's faces."""
    # mask_prob = P(face_with_mask); an N-class model adds every class's P (prob_<class>)
    probs = faces.probs
    mask = classifier.mask_column
    mask_prob = probs[:, mask] if mask is not None else np.full(len(probs), np.nan)
    # The submission's order: left, top, right, bottom, under the header x1, x2, y1, y2.
    return [(name, int(left), int(top), int(right), int(bottom), label, float(score), float(p),
             width, height, classifier.sha256, frame, time_s,
             *(map(float, each) if classifier.softmax else ()))
            for (left, top, right, bottom), score, p, label, each
            in zip(faces.boxes, faces.scores, mask_prob, faces.labels, probs)]


def _predict_segment(item: InputItem, detector: DetectorConfig, classifier: Classifier,
                     limits: InputLimits, rows: list[tuple], frames: list[tuple],
                     privacy: PrivacyWriter | None = None) -> ImageRow:
    """One video segment: every sampled frame through image_faces; its manifest row."""
    segment = item.segment
    assert segment is not None
    clip = video.video_of(item.name)
    row = ImageRow(item.name, segment.path, width=segment.info.width,
                   height=segment.info.height, frames=0, duration_s=item.duration_s)
    read = video.SegmentRead()
    own_rows: list[tuple] = []
    own_frames: list[tuple] = []
    try:
        for index, time_s, image in video.read_segment(segment, limits, read):
            faces = image_faces(image, detector, classifier, _floor(privacy))
            if privacy is not None:  # --save-crops, --blur
                privacy.frame(clip, segment, item.name, time_s, image, faces.boxes, faces.labels,
                              faces.blur_boxes)
            height, width = image.shape[:2]
            own_rows.extend(face_rows(video.frame_name(clip, time_s), faces, classifier, width,
                                      height, index, round(time_s, 6)))
            own_frames.append((clip, item.name, index, round(time_s, 6),
                               *(faces.count(c) for c in classifier.class_names)))
    except ImageError as exc:
        stopped = str(exc)
    except Exception as exc:  # a detector's surprise on one frame ends this segment alone
        stopped = unexpected_reason(exc)
    else:
        stopped = None
    if privacy is not None:
        privacy.end_segment()  # the frames read, blurred: this segment's piece of the video
    if read.problem:
        stopped = read.problem
    if stopped is not None:  # the segment read in part is ok (its reason says so); none: failed
        row.reason = stopped
        row.status = "ok" if read.frames else "failed"
    row.frames, row.n_faces = read.frames, len(own_rows)
    rows.extend(own_rows)
    frames.extend(own_frames)
    return row


def keep_faces(found: np.ndarray, min_face: int) -> np.ndarray:
    """Detections (x1, y1, x2, y2, score) whose shorter side is at least `min_face` pixels."""
    if not len(found) or min_face <= 0:
        return found
    sides = np.minimum(found[:, 2] - found[:, 0], found[:, 3] - found[:, 1])
    return found[sides >= min_face]


def unexpected_reason(exc: BaseException) -> str:
    """A failure reason for an error nobody planned for, in one line and without build paths."""
    if isinstance(exc, MemoryError):
        return "not enough memory to process it"
    text = decoding.plain_cv_error(exc) if "OpenCV" in str(exc) else decoding.first_line(exc)
    return f"could not be processed ({type(exc).__name__}: {text})"


__all__ = ["decode_crop", "extract_partition", "extract_record", "face_rows", "image_faces",
           "keep_faces", "predict_partition", "predict_partition_frames", "unexpected_reason"]

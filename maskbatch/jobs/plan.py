"""The first step of `maskbatch predict`: a plan of the run, built and checked before any work.

prepare() lists the inputs, probes the videos, reads and loads the model, checks the output
folder and, for --resume, that the earlier run used the same settings; then it clears the
earlier run's final files and writes run.json. Whatever it refuses leaves --out untouched.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import numpy as np

from maskbatch import files, storage
from maskbatch.config import PredictSettings, __version__
from maskbatch.errors import MaskbatchError
from maskbatch.jobs import privacy
from maskbatch.jobs.outdir import (
    check_apart_from_inputs,
    check_resumable,
    prepare_out_dir,
    remove_final_outputs,
)
from maskbatch.models import detect
from maskbatch.models.classifier import (
    Classifier,
    ModelRef,
    check_class_count,
    class_names_of,
    default_model_dir,
    model_for_classes,
    model_ref,
    preprocess,
    read_model,
)
from maskbatch.outputs import writers
from maskbatch.outputs.privacy import PrivacyJob
from maskbatch.photos import inputs, video
from maskbatch.records import InputItem


@dataclass(frozen=True)
class PredictPlan:
    """What one predict run does, checked: its inputs (photos and video segments, in output
    order), its model, its settings and the run record written to OUT/run.json."""

    images_arg: str
    out_dir: str
    settings: PredictSettings
    inputs: list[tuple[str, str | video.Segment]]
    onnx_bytes: bytes
    card: dict
    model: ModelRef
    class_names: tuple[str, ...]
    record: dict
    called: float  # time.perf_counter() when the run was asked for
    private: PrivacyJob | None = None  # what workers write for --save-crops, --blur


def prepare(images_arg: str, out_dir: str, images_dir: str | None,
            settings: PredictSettings) -> PredictPlan:
    """The plan of a run; raises MaskbatchError (one line) on anything that cannot work."""
    called = time.perf_counter()
    model_dir = model_for_classes(settings.model, settings.classes)
    detect.load_mode(settings.detector.mode)  # a missing or corrupt detector fails here, once
    places = input_places(images_arg, images_dir)
    listed = list_inputs(images_arg, images_dir)
    check_apart_from_inputs(out_dir, places)
    items = video.expand_videos(listed, settings.video.fps, settings.video.segment_seconds,
                                settings.limits)
    onnx_bytes, card = read_model(model_dir)
    where = model_dir or str(default_model_dir())
    check_class_count(card, settings.classes, where)
    check_model_loads(onnx_bytes, card, where)
    ref = model_ref(model_dir, card)
    record = run_record(items, ref, settings)
    outputs = settings.outputs
    if outputs.resume:
        check_resumable(out_dir, record)
    prepare_out_dir(out_dir, outputs.overwrite, outputs.resume, places)
    storage.remove_temporaries(out_dir)  # an interrupted run's half-renamed objects
    remove_final_outputs(out_dir)
    writers.write_json_atomic(record, files.join(out_dir, "run.json"))
    return PredictPlan(images_arg, out_dir, settings, items, onnx_bytes, card, ref,
                       class_names_of(card), record, called,
                       privacy.job(out_dir, settings.outputs, items))


def list_inputs(images_arg: str, images_dir: str | None = None) -> list[tuple[str, str]]:
    """(name, path) of every photo to process, from a folder/URL or a submission template CSV."""
    if images_arg.lower().endswith(".csv"):
        return inputs.template_inputs(images_arg, images_dir)
    return inputs.folder_inputs(images_arg)


def input_places(images_arg: str, images_dir: str | None = None) -> list[str]:
    """The folders and files a run reads from, that its --out must keep apart from."""
    if not images_arg.lower().endswith(".csv"):
        return [images_arg]
    return [images_arg, images_dir or inputs.template_folder(images_arg)]


def run_record(items: list, model: ModelRef, settings: PredictSettings) -> dict:
    """run.json: what makes a run's results what they are; --resume refuses another one."""
    partition_size = settings.cluster.partition_size or "auto"
    record = {"command": "predict", "version": __version__, "model_sha256": model.sha256,
              "detector": settings.detector.as_dict(), "limits": settings.limits.as_dict(),
              "partition_size": partition_size, "inputs": len(items),
              "inputs_sha1": hashlib.sha1("\n".join(n for n, _ in items).encode()).hexdigest()}
    if (private := privacy.record(settings.outputs)) is not None:  # --save-crops, --blur
        record["privacy"] = private
    if any(InputItem(*item).segment is not None for item in items):
        record["video"] = {"fps": settings.video.fps,
                           "segment_seconds": settings.video.segment_seconds}
    return record


def item_weight(path: str | video.Segment) -> int:
    """Units of work of one item's source (records.InputItem.weight)."""
    return InputItem("", path).weight


def check_model_loads(onnx_bytes: bytes, card: dict, where: str) -> None:
    """Load the model once here, so that a file that matches its card but is no ONNX model stops
    the job with one line before anything is written (not in every worker with a traceback)."""
    try:
        classifier = Classifier(onnx_bytes, card)
    except MaskbatchError:
        raise
    except Exception as exc:
        raise MaskbatchError(f"model {where} does not load: {_first_line(exc)}") from None
    try:  # two blank crops of the card's input size: a model that does not fit its card fails here
        out = classifier.raw_output(preprocess(
            [np.zeros((classifier.input_size,) * 2 + (3,), np.uint8)] * 2, classifier.input_size))
    except Exception as exc:
        raise MaskbatchError(f"model {where} does not fit its card (input_size "
                             f"{classifier.input_size}, one P(mask) per face): {_first_line(exc)}"
                             ) from None
    n_classes = len(classifier.class_names)
    expected = 1 if n_classes == 2 else n_classes
    if out.size != 2 * expected:
        per_face = out.size / 2 if out.size % 2 == 0 else out.size
        what = "one P(class_names[0]) per face" if n_classes == 2 else f"{n_classes} per face"
        raise MaskbatchError(f"model {where} does not fit its card: its class_names list "
                             f"{n_classes} classes ({what}) but it gave {out.shape} values for "
                             f"2 faces ({per_face:g} per face)")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__

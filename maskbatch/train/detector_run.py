"""`maskbatch train-detector`: fine-tune YuNet on labelled photos, export, check, validate, card.

Writes to OUT: detector.onnx (YuNet's graph, float weights), detector_card.json (sha256, recipe,
training data, parity, pixel fit, validation metrics, licence of the starting weights),
history.json, training_loss.png and pixel_fit.png (the pixel fit's scores). Copy detector.onnx +
detector_card.json into maskbatch/models/ to bundle it, or point MASKBATCH_DETECTOR_MODEL at OUT.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from maskbatch.datasets import load_records, truth_table
from maskbatch.datasets.splits import dataset_name, in_part, known_datasets
from maskbatch.errors import MaskbatchError
from maskbatch.models import yunet
from maskbatch.models.detect import PixelFit
from maskbatch.train.detector_data import Photo, inference_scale, load_photos
from maskbatch.train.detector_export import keras_weights, onnx_with_weights, parity
from maskbatch.train.detector_fit import Recipe, build_model, fit, setup_tensorflow
from maskbatch.train.pixel_fit import Raw, as_table, choose_pixels, face_metrics, plot_pixels, raw_detections

FORMAT = "maskbatch-detector/1"
SCORE_FLOOR = 0.05  # detections kept for AP / PR curves
# The operating threshold is the lowest whose detection precision on the training photos is at
# least MIN_PRECISION: a face the job never finds is lost to the user (no box, no label, no count),
# and below this floor more boxes added next to nothing to the end-to-end mAP on the training
# photos while adding false boxes fast (docs/detector-training.md: thresholds).
MIN_PRECISION = 0.7
LICENCE = ("starting weights: opencv_zoo face_detection_yunet_2023mar (YuNet, Shiqi Yu et al.), "
           "MIT licence; fine-tuned weights under the same terms")


def validation_photos(datasets: list[str], part: str = "val") -> dict[str, list[tuple[str, str]]]:
    """(name, path) of the labelled photos of each dataset's `part`, per dataset name."""
    out = {}
    for root in datasets:
        name = dataset_name(root)
        if name not in known_datasets():
            continue
        records = [r for r in load_records(root) if r.problem is None and r.boxes]
        out[name] = [(r.name, r.path) for r in in_part(records, name, part)]
    return out


def detection_metrics(truth: pd.DataFrame, found: pd.DataFrame, names: list[str],
                      threshold: float) -> dict:
    """Detection AP (every face, any class), and recall / precision / recall by size at
    `threshold`, with maskbatch.evaluate's matching."""
    every = face_metrics(truth, found, names)
    at = face_metrics(truth, found[found["score"] > threshold], names)
    return {"det_ap": every["detection"]["ap"], "threshold": threshold,
            "recall": at["detection"]["recall"], "precision": at["detection"]["precision"],
            "recall_by_size": {b["bin"]: b["recall"] for b in at["recall_by_size"]},
            "n_images": len(names), "n_faces": every["n_truth_faces"]}


def threshold_sweep(truth: pd.DataFrame, found: pd.DataFrame, names: list[str]) -> list[dict]:
    """Detection precision and recall at thresholds 0.1 to 0.95 (0.05 steps)."""
    rows = []
    for threshold in np.round(np.arange(0.1, 0.951, 0.05), 2):
        at = face_metrics(truth, found[found["score"] > threshold], names)["detection"]
        rows.append({"threshold": float(threshold), "precision": at["precision"] or 0.0,
                     "recall": at["recall"] or 0.0})
    return rows


def best_threshold(sweep: list[dict], min_precision: float = MIN_PRECISION) -> float:
    """The lowest threshold of the sweep whose precision reaches `min_precision` (the highest
    threshold of the sweep if none does)."""
    good = [row["threshold"] for row in sweep if row["precision"] >= min_precision]
    return min(good) if good else max(row["threshold"] for row in sweep)


def run(datasets: list[str], out_dir: str, recipe: Recipe = Recipe(), part: str = "train",
        pretrained: str | None = None, steps: int | None = None, limit: int | None = None,
        validate: bool = True, teacher: str | None = None, start: str | None = None) -> dict:
    """Fine-tune, export and validate; returns the card (see the module doc).

    `teacher`: a teacher's name (maskbatch.train.teacher, .teacher_tuned): its boxes on the
    training photos, cached in OUT as teacher-NAME.json (tuned+centerface: teacher-tuned.json and
    teacher-centerface.json), add the faces the labels skip and ignore regions. `start`: a
    detector folder (detector.onnx + detector_card.json, sha256 checked) whose weights training
    continues from instead of the pretrained YuNet's; the export still writes into the pretrained
    file's graph (the float graph of a fine-tuned file does not take them: the ONNX checker finds
    its initializer names twice)."""
    setup_tensorflow(recipe.seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pretrained = str(pretrained or yunet.locate_model())
    weights_from, started = pretrained, None
    if start is not None:
        start_path, start_card = yunet.read_tuned_card(start)
        weights_from, started = str(start_path), _start_entry(start_path, start_card)
    validate = validate and part is not None  # trained on every photo: none is left to validate
    photos = load_photos(datasets, part)
    if limit is not None:
        photos = photos[:limit]
    if not photos:
        raise MaskbatchError(f"no labelled photos with face boxes in {', '.join(datasets)}")
    taught = None
    if teacher is not None:
        from maskbatch.train.teacher_tuned import describe, label_with

        photos, taught = label_with(photos, teacher, out / f"teacher-{teacher}.json")
        print(describe(taught), flush=True)
    print(f"training on {len(photos)} photos, {sum(len(p.faces) for p in photos)} faces", flush=True)
    began = time.perf_counter()
    model = build_model(weights_from)
    history = fit(model, photos, recipe, steps=steps)
    return write_detector(model, out, pretrained, photos, recipe, datasets, part, history,
                          time.perf_counter() - began, validate, taught, started)


def _start_entry(path: Path, card: dict) -> dict:
    """The card's `starting_weights` for a run continued from a fine-tuned detector: that file,
    its licence, and what it started from in turn."""
    return {**yunet.detector_reference(path, card), "started_from": card["starting_weights"]}


def write_detector(model: object, out: Path, pretrained: str, photos: list[Photo], recipe: Recipe,
                   datasets: list[str], part: str | None, history: list[dict], seconds: float,
                   validate: bool = True, teacher: dict | None = None,
                   start: dict | None = None) -> dict:
    """Export a trained Keras YuNet into `pretrained`'s graph, check parity, validate, and write
    the detector folder (`teacher`: the card's entry of the teacher labels it was trained with;
    `start`: the card's `starting_weights` when training began from another detector's weights)."""
    onnx_bytes = onnx_with_weights(pretrained, keras_weights(model))
    diff = parity(model, onnx_bytes, _parity_inputs(photos, recipe))
    (out / yunet.TUNED_FILE).write_bytes(onnx_bytes)
    card = {
        "format": FORMAT, "network": "YuNet (libfacedetection), anchor-free, strides 8/16/32",
        "starting_weights": start or {"file": yunet.MODEL_FILE, "sha256": yunet.MODEL_SHA256,
                                      "licence": LICENCE},
        "onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(), "onnx_bytes": len(onnx_bytes),
        "parameters": int(model.count_params()),
        "parity_max_abs_diff": diff,
        "parity": "Keras vs onnxruntime (the job's detector path), every output, real photos",
        "recipe": recipe.as_dict(), "train_seconds": round(seconds, 1),
        "training_data": {"datasets": [dataset_name(d) for d in datasets], "split_part": part,
                          "photos": len(photos), "faces": int(sum(len(p.faces) for p in photos))
                          - (teacher or {}).get("added_faces", 0),
                          "faces_rule": "every labelled face box, whatever its class"},
        "pass": {"area": recipe.area, "max_upscale": recipe.max_upscale},
    }
    if teacher is not None:
        card["teacher"] = teacher
    if validate:
        card.update(_validate(out / yunet.TUNED_FILE, datasets, recipe))
    if "pixels" in card:
        plot_pixels(card["pixels"], out / "pixel_fit.png")
    (out / "history.json").write_text(json.dumps(history, indent=1))
    (out / yunet.TUNED_CARD).write_text(json.dumps(card, indent=1))
    _loss_plot(history, out / "training_loss.png")
    return card


def _validate(model_path: Path, datasets: list[str], recipe: Recipe) -> dict:
    """Pixel fit and threshold chosen on the training photos; metrics on the validation photos,
    the boxes placed as the fit says (as the tuned mode will place them)."""
    result: dict = {"validation": {}}
    train_sets: dict[str, tuple[pd.DataFrame, list[Raw]]] = {}
    for root in datasets:
        train_items = validation_photos([root], "train").get(dataset_name(root), [])
        raws = raw_detections(model_path, train_items, recipe.area, recipe.max_upscale,
                              SCORE_FLOOR)
        if raws:
            train_sets[dataset_name(root)] = (truth_table(root), raws)
    if not train_sets:  # no set with a committed split: nothing to choose or validate on
        return result
    result["pixels"] = choose_pixels(train_sets)
    placed = PixelFit(result["pixels"]["dx"], result["pixels"]["dy"], rounded=True)
    truth_all, found_train, names_train = [], [], []
    for name, (truth, raws) in train_sets.items():
        truth_all.append(truth.assign(name=name + "/" + truth["name"]))
        found = as_table(raws, placed)
        found_train.append(found.assign(name=name + "/" + found["name"]))
        names_train += [name + "/" + raw.name for raw in raws]
    sweep = threshold_sweep(pd.concat(truth_all), pd.concat(found_train), names_train)
    threshold = best_threshold(sweep)
    result["threshold"] = threshold
    result["threshold_rule"] = (f"lowest threshold (0.05 steps) with detection precision >= "
                                f"{MIN_PRECISION:g} on the training photos of every set")
    result["train_sweep"] = sweep
    for root in datasets:
        items = validation_photos([root], "val").get(dataset_name(root), [])
        if not items:
            continue
        raws = raw_detections(model_path, items, recipe.area, recipe.max_upscale, SCORE_FLOOR)
        found = as_table(raws, placed)
        result["validation"][dataset_name(root)] = detection_metrics(
            truth_table(root), found, [n for n, _ in items], threshold)
    return result


def _parity_inputs(photos: list[Photo], recipe: Recipe, count: int = 3) -> list[np.ndarray]:
    """A few training photos at their inference size, padded to multiples of 32 like OpenCV."""

    out = []
    for photo in photos[:count]:
        h, w = photo.image.shape[:2]
        s = inference_scale(w, h, recipe.area, recipe.max_upscale)
        resized = cv2.resize(photo.image, (max(32, round(w * s)), max(32, round(h * s))))
        ph, pw = -(-resized.shape[0] // 32) * 32, -(-resized.shape[1] // 32) * 32
        out.append(cv2.copyMakeBorder(resized, 0, ph - resized.shape[0], 0, pw - resized.shape[1],
                                      cv2.BORDER_CONSTANT, value=0))
    return out


def _loss_plot(history: list[dict], path: Path) -> None:
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    epochs = [h["epoch"] for h in history]
    for key in ("loss", "obj", "cls", "box"):
        ax.plot(epochs, [h[key] for h in history], label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.set_title("Detector fine-tuning")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


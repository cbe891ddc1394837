"""`maskbatch train`: fit a classifier on extracted crops, export it to ONNX, write the model folder.

Steps: read crops -> drop duplicate crops -> grouped 80/20 split -> shared preprocess() ->
Keras fit (augmentation layers inside the model, class weights, fixed seed, early stopping that
restores the best epoch) -> tf2onnx export -> parity check on validation crops -> metrics from
the ONNX model (validation, and cross-dataset on other crops) -> model.onnx, model.keras,
model_card.json, history.json, accuracy.png, loss.png, confusion_matrix.png.
"""

from __future__ import annotations

import os
import platform
import shlex
import time
from pathlib import Path

import numpy as np

from maskbatch import CLASS_NAMES, files
from maskbatch.classify import Classifier, sha256_bytes
from maskbatch.errors import MaskbatchError
from maskbatch.output import write_bytes_atomic, write_json_atomic
from maskbatch.train import data as tdata
from maskbatch.train.metrics import choose_threshold, classification_report

# Epoch budgets with early stopping (patience below). compact: about 3-6 minutes on 2 CPU cores;
# seed: about 3 minutes per epoch there.
DEFAULT_EPOCHS = {"compact": 40, "seed": 12}
PATIENCE = 8
LEARNING_RATE = 1e-3
PARITY_CROPS = 256


def _versions() -> dict[str, str]:
    import cv2
    import keras
    import onnx
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    from maskbatch import __version__

    return {"maskbatch": __version__, "python": platform.python_version(),
            "tensorflow": tf.__version__, "keras": keras.__version__,
            "tf2onnx": tf2onnx.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "opencv": cv2.__version__,
            "numpy": np.__version__}


def _command(crops_dir: str, out_dir: str, arch: str, epochs: int, batch_size: int, seed: int,
             eval_crops: str | None, limit: int | None) -> str:
    parts = ["maskbatch", "train", crops_dir, "--out", out_dir, "--arch", arch,
             "--epochs", str(epochs), "--batch-size", str(batch_size), "--seed", str(seed)]
    if eval_crops:
        parts += ["--eval-crops", eval_crops]
    if limit is not None:
        parts += ["--limit", str(limit)]
    return shlex.join(parts)


def _seed_everything(seed: int) -> None:
    import keras
    import tensorflow as tf

    keras.backend.clear_session()  # fresh layer-name counters: same ONNX names in any process
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def _summary(df: object, train_mask: np.ndarray, val_mask: np.ndarray, dedup: dict,
             n_read: int, crops_dir: str) -> dict:
    image_key = df["source_dataset"].astype(str) + "/" + df["source_image"].astype(str)
    return {
        "crops_dir": crops_dir,
        "datasets": sorted(df["source_dataset"].astype(str).unique().tolist()),
        "crops_read": n_read,
        **dedup,
        "crops_used": int(len(df)),
        "source_images": int(image_key.nunique()),
        "counts": tdata.class_counts(df),
        "train": {"crops": int(train_mask.sum()), "images": int(image_key[train_mask].nunique()),
                  "counts": tdata.class_counts(df[train_mask])},
        "validation": {"crops": int(val_mask.sum()),
                       "images": int(image_key[val_mask].nunique()),
                       "counts": tdata.class_counts(df[val_mask])},
        "split": "80/20 by groups: crops sharing a source image or a pixel_hash stay together "
                 "(union-find), classes kept near 20% each",
    }


def evaluate_crops(classifier: Classifier, crops_dir: str, batch: int = 256) -> dict:
    """Metrics of a loaded ONNX classifier on every labelled crop of another extract folder."""
    df = tdata.load_crop_table(crops_dir)
    arrays = tdata.to_arrays(df, classifier.input_size)
    prob = np.concatenate([classifier.predict_batch(arrays.x[i:i + batch])
                           for i in range(0, len(arrays.x), batch)])
    report = classification_report(arrays.y, prob, classifier.threshold)
    report["crops_dir"] = crops_dir
    report["datasets"] = sorted(df["source_dataset"].astype(str).unique().tolist())
    report["at_threshold_0.5"] = {k: v for k, v in
                                  classification_report(arrays.y, prob, 0.5).items()
                                  if k in ("accuracy", "balanced_accuracy")}
    return report


def fit_model(arch: str, train: tdata.Arrays, val: tdata.Arrays, epochs: int,
              batch_size: int = 32, seed: int = 0, verbose: int = 2
              ) -> tuple[object, dict[str, list[float]]]:
    """The training recipe: seeded build, Adam, class weights, plateau LR decay, early stopping
    that restores the best epoch. Returns the fitted Keras model and its history."""
    import keras

    from maskbatch.train.architectures import build_model

    _seed_everything(seed)
    model = build_model(arch, seed)
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE), loss="binary_crossentropy",
                  metrics=["accuracy"])
    early = keras.callbacks.EarlyStopping(monitor="val_loss", patience=PATIENCE,
                                          restore_best_weights=True)
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=3,
                                                min_lr=1e-5)
    hist = model.fit(train.x, train.y.astype(np.float32), batch_size=batch_size, epochs=epochs,
                     validation_data=(val.x, val.y.astype(np.float32)),
                     class_weight=tdata.class_weights(train.y), shuffle=True,
                     callbacks=[early, plateau], verbose=verbose)
    return model, {k: [float(v) for v in vals] for k, vals in hist.history.items()}


def run(crops_dir: str, out_dir: str, arch: str = "compact", epochs: int | None = None,
        batch_size: int = 32, seed: int = 0, eval_crops: str | None = None,
        limit: int | None = None, verbose: int = 2) -> dict:
    """Train, export and document one model; returns its card. See :func:`maskbatch.train.train`."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from maskbatch.train.architectures import DESCRIPTIONS, INPUT_SIZES
    from maskbatch.train.export import (
        INPUT_NAME,
        OPSET,
        OUTPUT_NAME,
        parity_check,
        time_inference,
        to_onnx,
    )
    from maskbatch.train.plots import write_plots

    started = time.perf_counter()
    epochs = DEFAULT_EPOCHS[arch] if epochs is None else int(epochs)
    if epochs < 1 or batch_size < 1:
        raise MaskbatchError("--epochs and --batch-size must be at least 1")
    size = INPUT_SIZES[arch]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    # ---- data
    raw = tdata.load_crop_table(crops_dir, limit=limit, seed=seed)
    df, dedup = tdata.drop_duplicates(raw)
    train_mask, val_mask = tdata.split_train_val(df, seed=seed)
    train = tdata.to_arrays(df[train_mask], size)
    val = tdata.to_arrays(df[val_mask], size)
    if len(np.unique(train.y)) < 2:
        raise MaskbatchError("the training split holds only one class; give more crops")
    weights = tdata.class_weights(train.y)
    summary = _summary(df, train_mask, val_mask, dedup, len(raw), crops_dir)
    print(f"train: {summary['train']['counts']}  validation: {summary['validation']['counts']}  "
          f"duplicates dropped: {dedup['duplicates_dropped']}  class weights: "
          f"{ {k: round(v, 3) for k, v in weights.items()} }")

    # ---- fit
    fit_started = time.perf_counter()
    model, history = fit_model(arch, train, val, epochs=epochs, batch_size=batch_size, seed=seed,
                               verbose=verbose)
    fit_seconds = time.perf_counter() - fit_started
    best_epoch = int(np.argmin(history["val_loss"])) + 1

    # ---- export + parity on real validation crops
    onnx_bytes = to_onnx(model, size)
    parity = parity_check(model, onnx_bytes, val.x[:PARITY_CROPS])

    # ---- metrics from the ONNX model (what inference runs), threshold chosen on validation
    provisional = {"input_size": size, "threshold": 0.5, "onnx_sha256": sha256_bytes(onnx_bytes)}
    classifier = Classifier(onnx_bytes, provisional)
    val_prob = classifier.predict_batch(val.x)
    threshold = choose_threshold(val.y, val_prob)
    validation = classification_report(val.y, val_prob, threshold)
    validation["at_threshold_0.5"] = classification_report(val.y, val_prob, 0.5)
    classifier.threshold = threshold
    cross = {}
    if eval_crops:
        cross[files.basename(eval_crops)] = evaluate_crops(classifier, eval_crops)
    bench = time_inference(onnx_bytes, size, x=val.x)

    card = {
        "format": "maskbatch-classifier/1",
        "architecture": arch,
        "architecture_description": DESCRIPTIONS[arch],
        "parameters": int(model.count_params()),
        "input_size": size,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "input_layout": "NHWC float32",
        "color_order": "BGR",
        "scaling": "x/255",
        "preprocess": "maskbatch.classify.preprocess: square bilinear resize to input_size, "
                      "BGR kept, x/255",
        "class_names": list(CLASS_NAMES),
        "output": "P(face_with_mask)",
        "threshold": threshold,
        "threshold_rule": ">= threshold -> face_with_mask; chosen on the validation split "
                          "(best macro-averaged F1, median of ties)",
        "onnx_sha256": sha256_bytes(onnx_bytes),
        "onnx_bytes": len(onnx_bytes),
        "onnx_opset": OPSET,
        "parity_max_abs_diff": parity,
        "training_data": summary,
        "training": {
            "seed": seed, "epochs_max": epochs, "epochs_run": len(history["loss"]),
            "best_epoch": best_epoch, "batch_size": batch_size, "limit": limit,
            "optimizer": f"Adam lr={LEARNING_RATE:g}, ReduceLROnPlateau(val_loss, x0.5, "
                         "patience 3)",
            "loss": "binary_crossentropy",
            "class_weight": {CLASS_NAMES[0]: round(weights[1], 4),
                             CLASS_NAMES[1]: round(weights[0], 4)},
            "augmentation": "RandomRotation(15 deg), RandomTranslation(0.1, 0.1), "
                            "RandomFlip(horizontal); fill nearest; training only",
            "early_stopping": f"val_loss, patience {PATIENCE}, best weights restored",
            "fit_seconds": round(fit_seconds, 1),
            "total_seconds": None,
            "cpu_count": os.cpu_count(),
        },
        "validation": validation,
        "cross_dataset": cross,
        "inference_benchmark": {"onnxruntime_threads": 1, "median_of_repeats": True, **bench,
                                "machine": platform.machine(), "cpu_count": os.cpu_count()},
        "versions": _versions(),
        "command": _command(crops_dir, out_dir, arch, epochs, batch_size, seed, eval_crops,
                            limit),
    }

    # ---- write the folder (model.onnx first, the card that vouches for it last)
    write_bytes_atomic(str(out / "model.onnx"), onnx_bytes)
    model.save(str(out / "model.keras"))
    write_json_atomic({"history": history, "best_epoch": best_epoch,
                       "epochs_run": len(history["loss"])}, str(out / "history.json"))
    write_plots(str(out), history, validation["confusion_matrix"]["rows_true_cols_pred"],
                list(CLASS_NAMES), threshold)
    card["training"]["total_seconds"] = round(time.perf_counter() - started, 1)
    write_json_atomic(card, str(out / "model_card.json"))
    _print_result(card)
    return card


def _print_result(card: dict) -> None:
    v = card["validation"]
    line = (f"{card['architecture']}: {card['parameters']:,} params, "
            f"val acc {v['accuracy']:.4f} (threshold {card['threshold']}), "
            f"no-mask recall {v['per_class'][CLASS_NAMES[1]]['recall']:.4f}")
    for name, rep in card["cross_dataset"].items():
        line += f", {name} acc {rep['accuracy']:.4f}"
    print(line)

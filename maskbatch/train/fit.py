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

import cv2
import numpy as np
import onnxruntime
import pandas as pd

from maskbatch import files
from maskbatch.config import CLASS_NAMES, __version__, setting
from maskbatch.datasets import class_names_for, splits
from maskbatch.errors import MaskbatchError
from maskbatch.models.classifier import Classifier, sha256_bytes
from maskbatch.outputs.writers import write_bytes_atomic, write_json_atomic
from maskbatch.train.architecture_names import DEFAULT_ARCH, architecture_list
from maskbatch.train import data as tdata
from maskbatch.train.export import (
    CLASS_PROBS_NAME,
    INPUT_NAME,
    OPSET,
    OUTPUT_NAME,
    parity_check,
    time_inference,
    to_onnx,
)
from maskbatch.train.metrics import choose_threshold, classification_report, multiclass_report
from maskbatch.train.plots import confusion_sets_png, write_plots

# Epoch budgets with early stopping (patience below). compact on the three sample sets (about
# 6300 training crops, 197 steps an epoch): 65-125 s per epoch on 2 CPU cores; with the colour and
# scale augmentation the tune loss still fell at epoch 7 (v3 stopped at 10, best epoch 7, 17 min);
# seed: about 3 minutes per epoch on medical-mask alone; backbone: 50-80 s per epoch on the three
# sets, best tune epoch 8 of 11 in v4.
DEFAULT_EPOCHS = {"compact": 15, "seed": 12, "backbone": 15}
PATIENCE = 3
PLATEAU_PATIENCE = 2
LEARNING_RATE = 1e-3
PARITY_CROPS = 256


def _versions() -> dict[str, str]:
    import keras
    import onnx
    import tensorflow as tf
    import tf2onnx


    return {"maskbatch": __version__, "python": platform.python_version(),
            "tensorflow": tf.__version__, "keras": keras.__version__,
            "tf2onnx": tf2onnx.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "opencv": cv2.__version__,
            "numpy": np.__version__}


def _command(crops_dirs: list[str], out_dir: str, arch: str, epochs: int, batch_size: int,
             seed: int, eval_crops: str | None, limit: int | None, classes: int = 2) -> str:
    parts = ["maskbatch", "train", *crops_dirs, "--out", out_dir, "--arch", arch,
             "--epochs", str(epochs), "--batch-size", str(batch_size), "--seed", str(seed)]
    if classes != 2:
        parts += ["--classes", str(classes)]
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


def _part_summary(df: object, parts: np.ndarray, part: str,
                  class_names: tuple[str, ...] = CLASS_NAMES) -> dict:
    rows = df[parts == part]
    images = rows["set"].astype(str) + "/" + rows["source_image"].astype(str)
    return {"crops": int(len(rows)), "images": int(images.nunique()),
            "counts": tdata.class_counts(rows, class_names)}


def _summary(df: object, parts: np.ndarray, dedup: dict, info: dict,
             class_names: tuple[str, ...] = CLASS_NAMES) -> dict:
    """The card's training_data: per set and in all, what trained, tuned and validated."""

    known = set(splits.known_datasets())
    sets = {}
    for name in sorted(info):
        in_set = (df["set"] == name).to_numpy()
        sets[name] = {
            **info[name],
            "crops_used": int(in_set.sum()),
            "datasets": sorted(df.loc[in_set, "source_dataset"].astype(str).unique().tolist()),
            "split": (f"committed image-level split (maskbatch/datasets/splits/{name}.*.txt)"
                      if name in known else "80/20 by groups: crops sharing a source image or a "
                      "pixel_hash stay together (union-find), classes kept near 20% each"),
            **{part: _part_summary(df[in_set], parts[in_set], part, class_names)
               for part in tdata.PARTS},
        }
    return {
        "sets": sets,
        **dedup,
        "crops_dropped_as_copies_of_val_crops": int((parts == "dropped").sum()),
        "crops_used": int((parts != "dropped").sum()),
        "counts": tdata.class_counts(df[parts != "dropped"], class_names),
        **{part: _part_summary(df, parts, part, class_names) for part in tdata.PARTS},
        "split": "val: each set's committed split, else a grouped 80/20; tune: a grouped "
                 f"{tdata.TUNE_FRACTION:.0%} of the rest (early stopping, threshold); train: the "
                 "rest. No source image or pixel-identical crop is on two sides.",
    }


def evaluate_crops(classifier: Classifier, crops_dir: str, batch: int = 256) -> dict:
    """Metrics of a loaded ONNX classifier on every labelled crop of another extract folder."""
    classes = classifier.class_names
    df = tdata.load_crop_table(crops_dir, class_names=classes)
    arrays = tdata.to_arrays(df, classifier.input_size, classes)
    prob = np.concatenate([classifier.predict_batch(arrays.x[i:i + batch])
                           for i in range(0, len(arrays.x), batch)])
    if classifier.softmax:
        report = multiclass_report(arrays.y, prob, list(classes))
        report["crops_dir"] = crops_dir
        report["datasets"] = sorted(df["source_dataset"].astype(str).unique().tolist())
        return report
    report = classification_report(arrays.y, prob, classifier.threshold)
    report["crops_dir"] = crops_dir
    report["datasets"] = sorted(df["source_dataset"].astype(str).unique().tolist())
    report["at_threshold_0.5"] = {k: v for k, v in
                                  classification_report(arrays.y, prob, 0.5).items()
                                  if k in ("accuracy", "balanced_accuracy")}
    return report


def fit_model(arch: str, train: tdata.Arrays, val: tdata.Arrays, epochs: int,
              batch_size: int = 32, seed: int = 0, verbose: int = 2, n_classes: int = 2
              ) -> tuple[object, dict[str, list[float]]]:
    """The training recipe: seeded build, Adam, class weights, plateau LR decay, early stopping
    that restores the best epoch. Returns the fitted Keras model and its history. `n_classes`
    3 or more: a softmax head and sparse categorical cross-entropy (targets = class indices).
    """
    import keras

    from maskbatch.train.architectures import build_model

    _seed_everything(seed)
    model = build_model(arch, seed, n_classes)
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE), loss=_loss(n_classes),
                  metrics=["accuracy"])
    early = keras.callbacks.EarlyStopping(monitor="val_loss", patience=PATIENCE,
                                          restore_best_weights=True)
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5,
                                                patience=PLATEAU_PATIENCE,
                                                min_lr=1e-5)
    target = np.float32 if n_classes == 2 else np.int64
    hist = model.fit(train.x, train.y.astype(target), batch_size=batch_size,
                     epochs=epochs, validation_data=(val.x, val.y.astype(target)),
                     class_weight=tdata.class_weights(train.y, n_classes), shuffle=True,
                     callbacks=[early, plateau], verbose=verbose)
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    return model, history


def _loss(n_classes: int) -> str:
    return "binary_crossentropy" if n_classes == 2 else "sparse_categorical_crossentropy"


TRAIN_THREADS = 2  # TensorFlow intra-op threads: results depend on it, so it is fixed
ENV_THREADS = "MASKBATCH_TRAIN_THREADS"
INTER_OP_THREADS = 2


def pin_threads(threads: int | None = None) -> dict[str, int]:
    """Fix TensorFlow's thread pools (intra-op `threads`, inter-op 2) before it starts.

    With op determinism on, a run is repeatable only for one intra-op thread count: the split of
    a reduction over threads changes the order of floating-point sums. TensorFlow's default is
    the machine's core count, so the same command gave different weights on another machine.
    The inter-op pool only runs independent ops side by side (no arithmetic changes); it is fixed
    at 2, not 1: one inter-op thread deadlocked a fit here once (every thread waiting on a futex).
    Returns the pools in effect (unchanged when TensorFlow had already started in this process).
    """
    import tensorflow as tf

    wanted = int(threads or setting(ENV_THREADS) or TRAIN_THREADS)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(wanted)
        tf.config.threading.set_inter_op_parallelism_threads(INTER_OP_THREADS)
    except RuntimeError:  # the runtime is already up (e.g. inside a test process): keep it
        pass
    return {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads()}


def _set_report(classifier: Classifier, arrays: tdata.Arrays, threshold: float | None) -> dict:
    if classifier.softmax:  # an N-class model: argmax, no threshold
        return multiclass_report(arrays.y, classifier.probabilities(arrays.x),
                                 list(classifier.class_names))
    prob = classifier.predict_batch(arrays.x) if len(arrays.x) else np.zeros(0, np.float32)
    report = classification_report(arrays.y, prob, threshold)
    report["at_threshold_0.5"] = {k: v for k, v in classification_report(arrays.y, prob, 0.5)
                                  .items() if k in ("accuracy", "balanced_accuracy")}
    return report


def run(crops_dirs: str | list[str], out_dir: str, arch: str = DEFAULT_ARCH,
        epochs: int | None = None, batch_size: int = 32, seed: int = 0,
        eval_crops: str | None = None, limit: int | None = None, verbose: int = 2,
        threads: int | None = None, classes: int = 2) -> dict:
    """Train, export and document one model; returns its card. See :func:`maskbatch.train.train`."""
    class_names = class_names_for(classes)
    n_classes = len(class_names)
    output_name = OUTPUT_NAME if n_classes == 2 else CLASS_PROBS_NAME
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    thread_pools = pin_threads(threads)

    from maskbatch.train.architectures import (
        AUGMENTATIONS,
        INPUT_SIZES,
        average_models,
        pretrained_backbone,
    )

    started = time.perf_counter()
    crops_dirs = [crops_dirs] if isinstance(crops_dirs, str) else list(crops_dirs)
    if not crops_dirs:
        raise MaskbatchError("give at least one crops folder")
    archs = architecture_list(arch)
    epochs = max(DEFAULT_EPOCHS[a] for a in archs) if epochs is None else int(epochs)
    if epochs < 1 or batch_size < 1:
        raise MaskbatchError("--epochs and --batch-size must be at least 1")
    size = INPUT_SIZES[archs[0]]
    if any(INPUT_SIZES[a] != size for a in archs):
        raise MaskbatchError(f"the nets of {arch!r} take different input sizes")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    # ---- data: per set, val by the committed split (else grouped), tune out of the rest
    raw, info = tdata.load_sets(crops_dirs, limit=limit, seed=seed, class_names=class_names)
    frames, dedup = [], {"duplicates_dropped": 0, "conflicting_label_crops_dropped": 0}
    for _, group in raw.groupby("set", sort=True):
        kept, d = tdata.drop_duplicates(group.reset_index(drop=True))
        frames.append(kept)
        for k in dedup:
            dedup[k] += d[k]
    df = pd.concat(frames, ignore_index=True)
    parts = tdata.assign_parts(df, seed=seed, class_names=class_names)
    train = tdata.to_arrays(df[parts == "train"], size, class_names)
    tune = tdata.to_arrays(df[parts == "tune"], size, class_names)
    if len(np.unique(train.y)) < 2 or len(tune.y) == 0:
        raise MaskbatchError("the training part holds only one class or too few images; "
                             "give more crops")
    weights = tdata.class_weights(train.y, n_classes)
    summary = _summary(df, parts, dedup, info, class_names)
    print(f"train: {summary['train']['counts']}  tune: {summary['tune']['counts']}  "
          f"val: {summary['val']['counts']}  duplicates dropped: {dedup['duplicates_dropped']}  "
          f"class weights: { {k: round(v, 3) for k, v in weights.items()} }  "
          f"TensorFlow threads: {thread_pools}")

    # ---- fit (early stopping on the tune part); an ensemble fits each net on the same parts
    fit_started = time.perf_counter()
    fitted, member_cards = [], []
    plan = [(a, seed) for a in archs]
    for k, (net, net_seed) in enumerate(plan):
        if len(plan) > 1:
            print(f"member {k + 1} of {len(plan)} ({net}, seed {net_seed})", flush=True)
        member, member_history = fit_model(net, train, tune, epochs=epochs,
                                           batch_size=batch_size, seed=net_seed,
                                           verbose=verbose, n_classes=n_classes)
        best = int(np.argmin(member_history["val_loss"]))
        member_cards.append({"architecture": net, "seed": net_seed,
                             "epochs_run": len(member_history["loss"]),
                             "best_epoch": best + 1,
                             "tune_loss": round(member_history["val_loss"][best], 5),
                             "tune_accuracy_at_0.5": round(member_history["val_accuracy"][best], 4)})
        fitted.append((member, member_history))
    model = average_models([member for member, _ in fitted], size)
    histories = [member_history for _, member_history in fitted]
    history = histories[0]
    fit_seconds = time.perf_counter() - fit_started
    best_epoch = member_cards[0]["best_epoch"]

    # ---- export + parity on real tune crops
    onnx_bytes = to_onnx(model, size, output_name=output_name)
    parity = parity_check(model, onnx_bytes, tune.x[:PARITY_CROPS])

    # ---- metrics from the ONNX model (what inference runs): threshold chosen on tune,
    # every reported number on val
    provisional = {"input_size": size, "threshold": 0.5, "onnx_sha256": sha256_bytes(onnx_bytes),
                   "output_name": output_name, "class_names": list(class_names)}
    classifier = Classifier(onnx_bytes, provisional)
    if n_classes == 2:
        tune_prob = classifier.predict_batch(tune.x)
        threshold: float | None = choose_threshold(tune.y, tune_prob)
        classifier.threshold = threshold
        tune_report = classification_report(tune.y, tune_prob, threshold)
    else:  # the label is the argmax: no threshold to choose
        threshold = None
        tune_report = _set_report(classifier, tune, None)
    del train
    val = tdata.to_arrays(df[parts == "val"], size, class_names)
    validation = _set_report(classifier, val, threshold)
    per_set = {}
    for name in sorted(df["set"].unique()):
        in_set = (val.rows["set"] == name).to_numpy()
        if in_set.any():
            per_set[name] = _set_report(
                classifier, tdata.Arrays(val.x[in_set], val.y[in_set], val.rows[in_set]),
                threshold)
    cross = {}
    if eval_crops:
        cross[files.basename(eval_crops)] = evaluate_crops(classifier, eval_crops)
    bench = time_inference(onnx_bytes, size, x=tune.x)

    card = {
        "format": "maskbatch-classifier/1",
        "architecture": arch,
        "architecture_description": _description(archs, seed),
        "members": len(plan),
        **({"pretrained": pretrained_backbone()} if "backbone" in archs else {}),
        "parameters": int(model.count_params()),
        "input_size": size,
        "input_name": INPUT_NAME,
        "output_name": output_name,
        "outputs": [output_name],
        "input_layout": "NHWC float32",
        "color_order": "BGR",
        "scaling": "x/255",
        "preprocess": "maskbatch.models.classifier.preprocess: square bilinear resize to input_size, "
                      "BGR kept, x/255",
        "class_names": list(class_names),
        **({"output": "P(face_with_mask)",
            "threshold": threshold,
            "threshold_rule": ">= threshold -> face_with_mask; chosen on the tune part of the "
                              "training photos (best macro-averaged F1, median of ties), never on "
                              "val"} if n_classes == 2 else
           {"output": "softmax over class_names", "label_rule": "argmax over class_names"}),
        "onnx_sha256": sha256_bytes(onnx_bytes),
        "onnx_bytes": len(onnx_bytes),
        "onnx_opset": OPSET,
        "parity_max_abs_diff": parity,
        "training_data": summary,
        "training": {
            "seed": seed, "epochs_max": epochs, "epochs_run": len(history["loss"]),
            "best_epoch": best_epoch, "members": member_cards, "batch_size": batch_size, "limit": limit,
            "optimizer": f"Adam lr={LEARNING_RATE:g}, ReduceLROnPlateau(tune loss, x0.5, "
                         f"patience {PLATEAU_PATIENCE})",
            "loss": _loss(n_classes),
            "class_weight": ({CLASS_NAMES[0]: round(weights[1], 4),
                              CLASS_NAMES[1]: round(weights[0], 4)} if n_classes == 2 else
                             {c: round(weights[k], 4) for k, c in enumerate(class_names)}),
            "augmentation": "; ".join(f"{a}: {AUGMENTATIONS[a]}" if len(archs) > 1 else
                                      AUGMENTATIONS[a] for a in archs)
                            + "; fill nearest; training only",
            "early_stopping": f"tune loss, patience {PATIENCE}, best weights restored",
            "tensorflow_threads": thread_pools,
            "deterministic": "keras.utils.set_random_seed(seed), "
                             "tf.config.experimental.enable_op_determinism(), fixed thread pools",
            "fit_seconds": round(fit_seconds, 1),
            "total_seconds": None,
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
        },
        "tune": tune_report,
        "validation": validation,
        "validation_per_set": per_set,
        "cross_dataset": cross,
        "inference_benchmark": {"onnxruntime_threads": 1, "median_of_repeats": True, **bench,
                                "machine": platform.machine(), "cpu_count": os.cpu_count()},
        "versions": _versions(),
        "command": _command(crops_dirs, out_dir, arch, epochs, batch_size, seed, eval_crops,
                            limit, classes),
    }

    # ---- write the folder (model.onnx first, the card that vouches for it last)
    write_bytes_atomic(str(out / "model.onnx"), onnx_bytes)
    model.save(str(out / "model.keras"))
    write_json_atomic({"history": history, "best_epoch": best_epoch,
                       "epochs_run": len(history["loss"]), "members": histories},
                      str(out / "history.json"))
    shown_threshold = 0.5 if threshold is None else threshold  # N classes: the argmax
    write_plots(str(out), histories, validation["confusion_matrix"]["rows_true_cols_pred"],
                list(class_names), shown_threshold,
                names=[f"{m['architecture']}, seed {m['seed']}" for m in member_cards])
    write_bytes_atomic(str(out / "confusion_per_set.png"), confusion_sets_png(
        {name: rep["confusion_matrix"]["rows_true_cols_pred"] for name, rep in per_set.items()},
        {name: rep["accuracy"] for name, rep in per_set.items()}, list(class_names),
        shown_threshold))
    card["training"]["total_seconds"] = round(time.perf_counter() - started, 1)
    write_json_atomic(card, str(out / "model_card.json"))
    _print_result(card)
    return card


def _description(archs: list[str], seed: int) -> str:
    """The card's words for one net, or for an ensemble of `archs` (one net each)."""
    from maskbatch.train.architectures import DESCRIPTIONS

    if len(archs) == 1:
        return DESCRIPTIONS[archs[0]]
    nets = "; ".join(DESCRIPTIONS[a] for a in archs)
    return (f"an ensemble: {' + '.join(archs)} (seed {seed} each), output = mean of their outputs; "
            f"{nets}")


def _print_result(card: dict) -> None:
    v = card["validation"]
    line = (f"{card['architecture']}: {card['parameters']:,} params, "
            f"val acc {v['accuracy']:.4f} (threshold {card.get('threshold', 'argmax')}), "
            f"no-mask recall {v['per_class'][CLASS_NAMES[1]]['recall']:.4f}")
    for name, rep in card.get("validation_per_set", {}).items():
        line += f", {name} val acc {rep['accuracy']:.4f}"
    for name, rep in card["cross_dataset"].items():
        line += f", {name} acc {rep['accuracy']:.4f}"
    print(line)

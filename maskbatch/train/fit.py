"""`maskbatch train`: fit a classifier on extracted crops, export it to ONNX, write the model folder.

Steps: read crops -> drop duplicate crops -> grouped 80/20 split -> shared preprocess() ->
Keras fit (augmentation layers inside the model, class weights, fixed seed, early stopping that
restores the best epoch) -> tf2onnx export -> parity check on validation crops -> metrics from
the ONNX model (validation, and cross-dataset on other crops) -> model.onnx, model.keras,
model_card.json, history.json, accuracy.png, loss.png, confusion_matrix.png. The card's words
are :mod:`maskbatch.train.fit_card`'s.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from maskbatch import files
from maskbatch.config import setting
from maskbatch.datasets import class_names_for
from maskbatch.errors import MaskbatchError
from maskbatch.models.classifier import Classifier, sha256_bytes
from maskbatch.outputs.writers import write_bytes_atomic, write_json_atomic
from maskbatch.train import data as tdata
from maskbatch.train.architecture_names import DEFAULT_ARCH, architecture_list
from maskbatch.train.export import (
    CLASS_PROBS_NAME,
    OUTPUT_NAME,
    parity_check,
    time_inference,
    to_onnx,
)
from maskbatch.train.fit_card import (
    LEARNING_RATE,
    PATIENCE,
    PLATEAU_PATIENCE,
    Fitted,
    Measured,
    TrainRequest,
    data_summary,
    loss_name,
    model_card,
    print_result,
    training_section,
)
from maskbatch.train.metrics import choose_threshold, classification_report, multiclass_report
from maskbatch.train.plots import confusion_sets_png, write_plots

# Epoch budgets with early stopping (patience below). compact on the three sample sets (about
# 6300 training crops, 197 steps an epoch): 65-125 s per epoch on 2 CPU cores; with the colour and
# scale augmentation the tune loss still fell at epoch 7 (v3 stopped at 10, best epoch 7, 17 min);
# seed: about 3 minutes per epoch on medical-mask alone; backbone: 50-80 s per epoch on the three
# sets, best tune epoch 8 of 11 in v4.
DEFAULT_EPOCHS = {"compact": 15, "seed": 12, "backbone": 15}
PARITY_CROPS = 256


def _seed_everything(seed: int) -> None:
    import keras
    import tensorflow as tf

    keras.backend.clear_session()  # fresh layer-name counters: same ONNX names in any process
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


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
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE), loss=loss_name(n_classes),
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


@dataclass
class _Prepared:
    """The split crops of a run: the rows and their parts, the tune arrays, the class weights and
    the card's summary of it all."""

    df: pd.DataFrame
    parts: np.ndarray
    tune: tdata.Arrays
    weights: dict[int, float]
    summary: dict  # the card's training_data


def _request(crops_dirs: str | list[str], out_dir: str, arch: str, epochs: int | None,
             batch_size: int, seed: int, eval_crops: str | None, limit: int | None,
             classes: int, class_names: tuple[str, ...]) -> TrainRequest:
    """The run's arguments checked and resolved; raises MaskbatchError on one that cannot run."""
    from maskbatch.train.architectures import INPUT_SIZES

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
    return TrainRequest(crops_dirs, out_dir, arch, archs, epochs, batch_size, seed, eval_crops,
                        limit, classes, class_names, size)


def _prepare(request: TrainRequest) -> tuple[_Prepared, tdata.Arrays]:
    """Per set, val by the committed split (else grouped), tune out of the rest; the parts and
    the train arrays. Raises MaskbatchError when too little is left to fit."""
    class_names = request.class_names
    raw, info = tdata.load_sets(request.crops_dirs, limit=request.limit, seed=request.seed,
                                class_names=class_names)
    frames, dedup = [], {"duplicates_dropped": 0, "conflicting_label_crops_dropped": 0}
    for _, group in raw.groupby("set", sort=True):
        kept, d = tdata.drop_duplicates(group.reset_index(drop=True))
        frames.append(kept)
        for k in dedup:
            dedup[k] += d[k]
    df = pd.concat(frames, ignore_index=True)
    parts = tdata.assign_parts(df, seed=request.seed, class_names=class_names)
    train = tdata.to_arrays(df[parts == "train"], request.size, class_names)
    tune = tdata.to_arrays(df[parts == "tune"], request.size, class_names)
    if len(np.unique(train.y)) < 2 or len(tune.y) == 0:
        raise MaskbatchError("the training part holds only one class or too few images; "
                             "give more crops")
    weights = tdata.class_weights(train.y, request.n_classes)
    summary = data_summary(df, parts, dedup, info, class_names)
    return _Prepared(df, parts, tune, weights, summary), train


def _fit_members(request: TrainRequest, train: tdata.Arrays, tune: tdata.Arrays,
                 verbose: int) -> Fitted:
    """Fit each net of the spec on the same parts (early stopping on tune); one model that
    averages their outputs."""
    from maskbatch.train.architectures import average_models

    started = time.perf_counter()
    fitted, members = [], []
    plan = [(a, request.seed) for a in request.archs]
    for k, (net, net_seed) in enumerate(plan):
        if len(plan) > 1:
            print(f"member {k + 1} of {len(plan)} ({net}, seed {net_seed})", flush=True)
        member, history = fit_model(net, train, tune, epochs=request.epochs,
                                    batch_size=request.batch_size, seed=net_seed,
                                    verbose=verbose, n_classes=request.n_classes)
        best = int(np.argmin(history["val_loss"]))
        members.append({"architecture": net, "seed": net_seed,
                        "epochs_run": len(history["loss"]),
                        "best_epoch": best + 1,
                        "tune_loss": round(history["val_loss"][best], 5),
                        "tune_accuracy_at_0.5": round(history["val_accuracy"][best], 4)})
        fitted.append((member, history))
    model = average_models([member for member, _ in fitted], request.size)
    return Fitted(model, [history for _, history in fitted], members,
                  time.perf_counter() - started)


def _measure(request: TrainRequest, prepared: _Prepared, onnx_bytes: bytes,
             output_name: str) -> Measured:
    """The ONNX model's numbers (what inference runs): the threshold chosen on tune, every
    reported number on val (each set's too) and on the eval crops; its speed."""
    size, class_names = request.size, request.class_names
    tune, df, parts = prepared.tune, prepared.df, prepared.parts
    provisional = {"input_size": size, "threshold": 0.5, "onnx_sha256": sha256_bytes(onnx_bytes),
                   "output_name": output_name, "class_names": list(class_names)}
    classifier = Classifier(onnx_bytes, provisional)
    if request.n_classes == 2:
        tune_prob = classifier.predict_batch(tune.x)
        threshold: float | None = choose_threshold(tune.y, tune_prob)
        classifier.threshold = threshold
        tune_report = classification_report(tune.y, tune_prob, threshold)
    else:  # the label is the argmax: no threshold to choose
        threshold = None
        tune_report = _set_report(classifier, tune, None)
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
    if request.eval_crops:
        cross[files.basename(request.eval_crops)] = evaluate_crops(classifier, request.eval_crops)
    bench = time_inference(onnx_bytes, size, x=tune.x)
    return Measured(threshold, tune_report, validation, per_set, cross, bench)


def _write_folder(out: Path, onnx_bytes: bytes, fitted: Fitted, measured: Measured,
                  class_names: tuple[str, ...]) -> None:
    """model.onnx first, then the Keras model, the history and the plots (the card comes last,
    written by the caller)."""
    write_bytes_atomic(str(out / "model.onnx"), onnx_bytes)
    fitted.model.save(str(out / "model.keras"))
    history = fitted.history
    write_json_atomic({"history": history, "best_epoch": fitted.best_epoch,
                       "epochs_run": len(history["loss"]), "members": fitted.histories},
                      str(out / "history.json"))
    threshold = 0.5 if measured.threshold is None else measured.threshold  # N classes: argmax
    write_plots(str(out), fitted.histories,
                measured.validation["confusion_matrix"]["rows_true_cols_pred"],
                list(class_names), threshold,
                names=[f"{m['architecture']}, seed {m['seed']}" for m in fitted.members])
    per_set = measured.per_set
    write_bytes_atomic(str(out / "confusion_per_set.png"), confusion_sets_png(
        {name: rep["confusion_matrix"]["rows_true_cols_pred"] for name, rep in per_set.items()},
        {name: rep["accuracy"] for name, rep in per_set.items()}, list(class_names), threshold))


def run(crops_dirs: str | list[str], out_dir: str, arch: str = DEFAULT_ARCH,
        epochs: int | None = None, batch_size: int = 32, seed: int = 0,
        eval_crops: str | None = None, limit: int | None = None, verbose: int = 2,
        threads: int | None = None, classes: int = 2) -> dict:
    """Train, export and document one model; returns its card. See :func:`maskbatch.train.train`."""
    class_names = class_names_for(classes)
    output_name = OUTPUT_NAME if len(class_names) == 2 else CLASS_PROBS_NAME
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    thread_pools = pin_threads(threads)  # before TensorFlow starts
    started = time.perf_counter()
    request = _request(crops_dirs, out_dir, arch, epochs, batch_size, seed, eval_crops, limit,
                       classes, class_names)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    prepared, train = _prepare(request)
    summary = prepared.summary
    print(f"train: {summary['train']['counts']}  tune: {summary['tune']['counts']}  "
          f"val: {summary['val']['counts']}  duplicates dropped: {summary['duplicates_dropped']}  "
          f"class weights: { {k: round(v, 3) for k, v in prepared.weights.items()} }  "
          f"TensorFlow threads: {thread_pools}")
    fitted = _fit_members(request, train, prepared.tune, verbose)
    onnx_bytes = to_onnx(fitted.model, request.size, output_name=output_name)
    parity = parity_check(fitted.model, onnx_bytes, prepared.tune.x[:PARITY_CROPS])
    del train  # done with: its memory goes before val's arrays are made
    measured = _measure(request, prepared, onnx_bytes, output_name)
    card = model_card(request, onnx_bytes, output_name, parity, summary,
                      training_section(request, fitted, prepared.weights, thread_pools),
                      fitted, measured)
    _write_folder(out, onnx_bytes, fitted, measured, class_names)
    card["training"]["total_seconds"] = round(time.perf_counter() - started, 1)
    write_json_atomic(card, str(out / "model_card.json"))
    print_result(card)
    return card

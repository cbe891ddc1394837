"""Training the mask classifier (the `train` extra: TensorFlow + tf2onnx).

Importing this package does not import TensorFlow; :func:`train` does, and says how to install it
when it is missing. Inference never needs this package (see :mod:`maskbatch.classify`).
"""

from __future__ import annotations

ARCHITECTURES = ("compact", "seed")
TRAIN_EXTRA_HINT = "training needs the train extra: pip install 'maskbatch[train]'"


def require_tensorflow() -> None:
    """Raise MaskbatchError with the install hint unless TensorFlow and tf2onnx import."""
    from maskbatch.errors import MaskbatchError

    try:
        import tensorflow  # noqa: F401
        import tf2onnx  # noqa: F401
    except ImportError:
        raise MaskbatchError(TRAIN_EXTRA_HINT) from None


def train(crops_dir: str | list[str], out_dir: str, arch: str = "compact",
          epochs: int | None = None, batch_size: int = 32, seed: int = 0,
          eval_crops: str | None = None, limit: int | None = None,
          threads: int | None = None) -> dict:
    """Train a mask classifier on the crops of one or more extract folders; write a model folder.

    Each folder is a set (named by the dataset it was extracted from): a set with a committed
    split (medical-mask, voc-masks) validates on its val photos, any other on a grouped 20 %; a
    grouped 10 % of the rest tunes early stopping and the threshold; the card reports accuracy
    on each set's val part. `threads` fixes TensorFlow's intra-op threads (default 2, or
    $MASKBATCH_TRAIN_THREADS): the weights depend on it.

    Writes model.onnx, model.keras, model_card.json, history.json, accuracy.png, loss.png and
    confusion_matrix.png to `out_dir` and returns the card. `epochs` None means the
    architecture's default (with early stopping); `eval_crops` is a second crops folder (e.g. from
    voc-masks) measured for cross-dataset accuracy, never trained on; `limit` trains on a seeded
    subset of about that many crops per set (whole source images).
    """
    from maskbatch.errors import MaskbatchError

    if arch not in ARCHITECTURES:
        raise MaskbatchError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}")
    require_tensorflow()
    from maskbatch.train.fit import run

    return run(crops_dir, out_dir, arch=arch, epochs=epochs, batch_size=batch_size, seed=seed,
               eval_crops=eval_crops, limit=limit, threads=threads)


__all__ = ["ARCHITECTURES", "require_tensorflow", "train"]

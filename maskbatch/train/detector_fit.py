"""Fine-tuning YuNet on labelled faces (TensorFlow): the loss, the training loop, the recipe.

Losses as YuNet's own training defines them (libfacedetection.train, YOLOX-style): objectness BCE
over every cell (1 for assigned cells, 0 elsewhere, ignore regions left out), class BCE on the
assigned cells with their box IoU as the target, and an EIoU box loss (IoU, centre distance, width
and height differences, each over the enclosing box) weighted 5; all summed and divided by the
number of assigned cells. The landmark head is frozen: the labelled sets have no landmarks.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from maskbatch.config import setting
from maskbatch.models.detect import TUNED_PASS
from maskbatch.train.detector_data import Photo, augment
from maskbatch.train.detector_targets import assign, decode, priors
from maskbatch.train.yunet_graph import STRIDES, build_keras

BOX_WEIGHT = 5.0


@dataclass(frozen=True)
class Recipe:
    """The default recipe: about 40 minutes on a 2-core CPU for ~800 photos."""

    epochs: int = 30
    batch_size: int = 8
    size: int = 384  # training window, px (multiple of 32)
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    seed: int = 0
    area: int = 440_000  # the tuned mode's pixel budget, used to pick training scales
    max_upscale: float = 2.0
    zoom_min: float = -1.0  # log2 of the extra scale range around the inference scale
    zoom_max: float = 0.5

    def as_dict(self) -> dict:
        return asdict(self)


def continued(seed: int = 0, epochs: int | None = None) -> Recipe:
    """The recipe of `train-detector --start`: a fine-tuned detector taught more (new labels, a
    teacher's faces) in a short low-rate schedule at the tuned mode's pass, 8 epochs by default
    (docs/detector-training.md, "continue from the bundled detector")."""
    return Recipe(epochs=epochs or 8, learning_rate=3e-4, warmup_steps=50, seed=seed,
                  area=TUNED_PASS.area, max_upscale=TUNED_PASS.max_upscale)


def setup_tensorflow(seed: int) -> None:
    """Seeds, deterministic ops and a fixed thread count (call before building the model: TF's
    threads can only be set before its first op; later calls keep what was set)."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    threads = int(setting("MASKBATCH_TRAIN_THREADS") or os.cpu_count() or 1)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # TensorFlow already started: its thread pools are fixed


def _split_outputs(outputs: list) -> tuple:
    """(cls, obj, bbox) over all cells, stride 8 first: (B, P), (B, P), (B, P, 4)."""
    import tensorflow as tf

    n = len(STRIDES)
    cls = tf.concat(outputs[0:n], axis=1)[..., 0]
    obj = tf.concat(outputs[n:2 * n], axis=1)[..., 0]
    bbox = tf.concat(outputs[2 * n:3 * n], axis=1)
    return cls, obj, bbox


def _bce(p, target):  # noqa: ANN001, ANN202 - tensors
    import tensorflow as tf

    p = tf.clip_by_value(p, 1e-7, 1 - 1e-7)
    return -(target * tf.math.log(p) + (1 - target) * tf.math.log(1 - p))


def eiou_loss(pred, target):  # noqa: ANN001, ANN201 - tensors (..., 4) x1y1x2y2
    """1 - IoU + centre distance^2 / diagonal^2 + dw^2 / cw^2 + dh^2 / ch^2 (enclosing box c)."""
    import tensorflow as tf

    eps = 1e-7
    lt = tf.maximum(pred[..., :2], target[..., :2])
    rb = tf.minimum(pred[..., 2:], target[..., 2:])
    inter = tf.reduce_prod(tf.maximum(rb - lt, 0.0), axis=-1)
    wh_p = pred[..., 2:] - pred[..., :2]
    wh_t = target[..., 2:] - target[..., :2]
    union = tf.reduce_prod(wh_p, -1) + tf.reduce_prod(wh_t, -1) - inter
    iou = inter / (union + eps)
    c_wh = tf.maximum(pred[..., 2:], target[..., 2:]) - tf.minimum(pred[..., :2], target[..., :2])
    centre = (pred[..., :2] + pred[..., 2:] - target[..., :2] - target[..., 2:]) / 2
    diag = tf.reduce_sum(c_wh ** 2, -1) + eps
    shape = (wh_p - wh_t) ** 2 / (c_wh ** 2 + eps)
    return 1 - iou + tf.reduce_sum(centre ** 2, -1) / diag + tf.reduce_sum(shape, -1)


def build_model(pretrained: str):  # noqa: ANN201 - keras.Model
    """The pretrained YuNet as Keras, landmark head frozen."""
    setup_tensorflow(0)
    model = build_keras(pretrained)
    for layer in model.layers:
        if "kps" in layer.name:
            layer.trainable = False
    return model


def learning_rate(recipe: Recipe, total: int, step: int) -> float:
    """Linear warm-up over recipe.warmup_steps, then cosine decay to 1e-5 at step `total`."""
    if step < recipe.warmup_steps:
        return recipe.learning_rate * (step + 1) / recipe.warmup_steps
    t = (step - recipe.warmup_steps) / max(1, total - recipe.warmup_steps)
    return 1e-5 + (recipe.learning_rate - 1e-5) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def _train_step(model: object, optimizer: object, grid: object) -> Callable:
    """The compiled step: the losses of one batch (see the module docstring), clipped gradients
    applied to the trainable variables; returns (loss, obj, cls, box)."""
    import tensorflow as tf

    variables = model.trainable_variables

    @tf.function(reduce_retracing=True)
    def train_step(x, positive, obj_weight, iou_t, boxes_t):  # noqa: ANN001, ANN202
        with tf.GradientTape() as tape:
            cls, obj, bbox = _split_outputs(model(x, training=True))
            n_pos = tf.maximum(tf.reduce_sum(positive), 1.0)
            loss_obj = tf.reduce_sum(obj_weight * _bce(obj, positive)) / n_pos
            loss_cls = tf.reduce_sum(positive * _bce(cls, iou_t)) / n_pos
            s = grid[None, :, 2:3]
            centre = grid[None, :, :2] + bbox[..., :2] * s
            half = tf.exp(tf.clip_by_value(bbox[..., 2:], -10.0, 10.0)) * s / 2
            boxes = tf.concat([centre - half, centre + half], axis=-1)
            loss_box = BOX_WEIGHT * tf.reduce_sum(positive * eiou_loss(boxes, boxes_t)) / n_pos
            loss = loss_obj + loss_cls + loss_box
        grads = tape.gradient(loss, variables)
        grads, _ = tf.clip_by_global_norm(grads, 10.0)
        optimizer.apply_gradients(zip(grads, variables))
        return loss, loss_obj, loss_cls, loss_box

    return train_step


def _batch(photos: list[Photo], chosen: np.ndarray, recipe: Recipe, rng: np.random.Generator,
           predict: Callable, grid_np: np.ndarray) -> tuple[np.ndarray, ...]:
    """One batch: the augmented samples of `chosen` and their targets, assigned from the model's
    own predictions on them: (x, positive, obj_weight, iou, boxes)."""
    samples = [augment(photos[i], recipe.size, rng, recipe.area, recipe.max_upscale,
                       (recipe.zoom_min, recipe.zoom_max)) for i in chosen]
    x = np.stack([s[0] for s in samples]).astype(np.float32)
    score, bbox = (t.numpy() for t in predict(x))
    targets = [assign(grid_np, score[i], decode(grid_np, bbox[i]), faces, ignore)
               for i, (_, faces, ignore) in enumerate(samples)]
    return (x, np.stack([t.positive for t in targets]).astype(np.float32),
            np.stack([t.obj_weight for t in targets]), np.stack([t.iou for t in targets]),
            np.stack([t.boxes for t in targets]))


def fit(model: object, photos: list[Photo], recipe: Recipe = Recipe(), log: bool = True,
        steps: int | None = None, on_epoch: Callable[[int, object], None] | None = None
        ) -> list[dict]:
    """Fine-tune `model` in place on augmented samples of `photos`; returns per-epoch losses.

    `steps` caps the number of optimizer steps (tests and smoke runs); `on_epoch(epoch, model)`
    runs after each epoch (checkpoints)."""
    import tensorflow as tf

    setup_tensorflow(recipe.seed)
    grid_np = priors(recipe.size)
    grid = tf.constant(grid_np)
    per_epoch = max(1, len(photos) // recipe.batch_size)
    total = per_epoch * recipe.epochs if steps is None else steps
    optimizer = tf.keras.optimizers.Adam(recipe.learning_rate)

    @tf.function(reduce_retracing=True)
    def predict(x):  # noqa: ANN001, ANN202
        cls, obj, bbox = _split_outputs(model(x, training=False))
        return cls * obj, bbox

    train_step = _train_step(model, optimizer, grid)
    rng = np.random.default_rng(recipe.seed)
    history, step = [], 0
    started = time.perf_counter()
    for epoch in range(recipe.epochs):
        order = rng.permutation(len(photos))
        sums = np.zeros(4)
        batches = 0
        for b in range(per_epoch):
            if step >= total:
                break
            chosen = order[b * recipe.batch_size:(b + 1) * recipe.batch_size]
            batch = _batch(photos, chosen, recipe, rng, predict, grid_np)
            optimizer.learning_rate.assign(learning_rate(recipe, total, step))
            sums += [float(v) for v in train_step(*batch)]
            batches += 1
            step += 1
        if batches == 0:
            break
        row = dict(zip(("loss", "obj", "cls", "box"), (sums / batches).round(4).tolist()))
        row.update(epoch=epoch + 1, steps=step, seconds=round(time.perf_counter() - started, 1))
        history.append(row)
        if log:
            print(f"epoch {epoch + 1}/{recipe.epochs}: loss {row['loss']:.3f} (obj {row['obj']:.3f} "
                  f"cls {row['cls']:.3f} box {row['box']:.3f}), {row['seconds']:.0f}s", flush=True)
        if on_epoch is not None:
            on_epoch(epoch + 1, model)
    return history

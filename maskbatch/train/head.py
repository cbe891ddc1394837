"""A third class on top of a 2-class model: ``maskbatch train --classes 3 --base MODEL``.

The 2-class model (P(face_with_mask) and its threshold t) is kept whole. A logistic head reads the
spatial feature maps it already computes (the input of each of its GlobalAveragePool nodes,
averaged to a 3 x 3 grid, so the head sees *where* on the face the mask sits, which the 2-class
output pools away) and gives q = P(face_with_mask_incorrect). The 3-class output is

    [ (1 - q) m,  (1 - q) (1 - m),  q ]      m = sigmoid(logit(P) - logit(t))

so that between the two main classes the argmax is the 2-class model's own decision (P >= t), and
the third class wins where q > (1 - q) max(m, 1 - m). The head is standardised features, a whitened
PCA and an L2 logistic regression (Newton steps), all folded into one MatMul + Add in the ONNX
graph. Its L2 strength and the shift of its logit (a prior correction: the class is rare) are
chosen by a grouped cross-validation over the non-val crops; val is only reported.

numpy and onnx only: no TensorFlow, and the same bytes from the same crops and base model.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

from maskbatch.config import INCORRECT
from maskbatch.datasets import class_names_for
from maskbatch.errors import MaskbatchError
from maskbatch.models.classifier import Classifier, class_names_of, read_model, sha256_bytes
from maskbatch.outputs.writers import write_bytes_atomic, write_json_atomic
from maskbatch.train import data as tdata
from maskbatch.train.export import CLASS_PROBS_NAME
from maskbatch.train.head_card import (
    FOLDS,
    GRID,
    PCA_DIMS,
    FittedHead,
    HeadCrops,
    HeadRequest,
    head_card,
)
from maskbatch.train.metrics import multiclass_report

L2_GRID = (10.0, 30.0, 100.0)
SHIFT_GRID = tuple(round(0.5 * k, 1) for k in range(-2, 9))  # added to the head's logit
EPS = 1e-6
BATCH = 256


def feature_tensors(model: onnx.ModelProto) -> list[str]:
    """The spatial feature maps a model pools: the input of each GlobalAveragePool node."""
    names = [node.input[0] for node in model.graph.node if node.op_type == "GlobalAveragePool"]
    if not names:
        raise MaskbatchError("the base model has no GlobalAveragePool node: no feature maps for "
                             "a head")
    return names


def pooling_matrix(height: int, width: int, grid: int = GRID) -> np.ndarray:
    """(height*width, grid*grid): averages a flattened H x W map over grid x grid cells (cell i
    spans rows i*H//grid to (i+1)*H//grid, at least one row; likewise columns)."""
    matrix = np.zeros((height * width, grid * grid), dtype=np.float32)
    for i in range(grid):
        rows = range(i * height // grid, max((i + 1) * height // grid, i * height // grid + 1))
        for j in range(grid):
            cols = range(j * width // grid, max((j + 1) * width // grid, j * width // grid + 1))
            cells = [r * width + c for r in rows for c in cols]
            matrix[cells, i * grid + j] = 1.0 / len(cells)
    return matrix


class BaseFeatures:
    """The base model with its feature maps as extra outputs: P(face_with_mask) and the pooled
    features of a preprocessed batch."""

    def __init__(self, onnx_bytes: bytes, card: dict, threads: int = 1) -> None:
        model = onnx.load_from_string(onnx_bytes)
        self.maps = feature_tensors(model)
        self.output = str(card.get("output_name") or model.graph.output[0].name)
        for name in self.maps:
            model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(model.SerializeToString(), options,
                                                    providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.shapes: list[tuple[int, int, int]] = []  # (C, H, W) of each map, set on first run
        self._pools: list[np.ndarray] = []  # their pooling matrices, made with the shapes

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        prob, *maps = self.session.run([self.output, *self.maps], {self.input: batch})
        if not self.shapes:  # the input size is fixed, so the maps' sizes are too
            self.shapes = [tuple(int(v) for v in m.shape[1:]) for m in maps]  # type: ignore[misc]
            self._pools = [pooling_matrix(h, w) for _, h, w in self.shapes]
        pooled = [(m.reshape(len(m), c, h * w) @ pool).reshape(len(m), -1)
                  for m, (c, h, w), pool in zip(maps, self.shapes, self._pools)]
        return prob.reshape(-1).astype(np.float64), np.concatenate(pooled, axis=1).astype(np.float64)


def features(base: BaseFeatures, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(P, features, features of the mirrored crops) of a preprocessed array, in batches."""
    probs, plain, mirrored = [], [], []
    for i in range(0, len(x), BATCH):
        p, f = base(x[i:i + BATCH])
        _, g = base(np.ascontiguousarray(x[i:i + BATCH, :, ::-1, :]))
        probs.append(p)
        plain.append(f)
        mirrored.append(g)
    return np.concatenate(probs), np.concatenate(plain), np.concatenate(mirrored)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, steps: int = 50) -> np.ndarray:
    """L2 logistic regression by Newton steps; weights with the bias last (not penalised)."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(xb.shape[1])
    penalty = l2 * np.eye(xb.shape[1])
    penalty[-1, -1] = 0.0
    for _ in range(steps):
        p = _sigmoid(xb @ w)
        step = np.linalg.solve((xb * (p * (1 - p))[:, None]).T @ xb + penalty,
                               xb.T @ (p - y) + penalty @ w)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def whitening(x: np.ndarray, dims: int = PCA_DIMS) -> tuple[np.ndarray, np.ndarray]:
    """(mean-and-scale, projection) that standardise features and whiten them to `dims`
    principal components: z = (x - mean) / std, then z @ projection."""
    mean, std = x.mean(axis=0), x.std(axis=0) + EPS
    z = (x - mean) / std
    values, vectors = np.linalg.eigh(z.T @ z / len(z))
    order = np.argsort(values)[::-1][:dims]
    projection = vectors[:, order] / np.sqrt(values[order] + EPS)
    # an eigenvector's sign is arbitrary: fix it so the same data gives the same weights
    projection *= np.where(projection[np.abs(projection).argmax(axis=0),
                                      np.arange(projection.shape[1])] < 0, -1.0, 1.0)
    return np.stack([mean, std]), projection


def fit_head(x: np.ndarray, y: np.ndarray, l2: float,
             whitened: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, float]:
    """(weights, bias) of a linear logit on raw features: standardise, whiten (see whitening),
    fit_logistic; all folded into one linear map."""
    (mean, std), projection = whitened or whitening(x)
    w = fit_logistic(((x - mean) / std) @ projection, y, l2)
    weights = projection @ w[:-1] / std
    return weights, float(w[-1] - mean @ weights)


def combine(prob: np.ndarray, logit_q: np.ndarray, threshold: float) -> np.ndarray:
    """The 3-class probabilities (N, 3) from P(face_with_mask), the head's logit and the base
    model's threshold (the module docstring's formula)."""
    p = np.clip(prob, EPS, 1 - EPS)
    m = _sigmoid(np.log(p) - np.log(1 - p) - _logit(threshold))
    q = _sigmoid(logit_q)
    return np.stack([(1 - q) * m, (1 - q) * (1 - m), q], axis=1)


def _logit(t: float) -> float:
    t = min(max(t, EPS), 1 - EPS)
    return math.log(t / (1 - t))


def average_precision(y: np.ndarray, score: np.ndarray) -> float:
    """Non-interpolated AP of a ranking (NaN without positives)."""
    if not y.any():
        return math.nan
    order = np.argsort(-score, kind="stable")
    hits = y[order].astype(float)
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


def _f1(y: np.ndarray, called: np.ndarray) -> float:
    tp = float((y & called).sum())
    return 2 * tp / max(float(y.sum() + called.sum()), 1.0)


def cross_validate(prob: np.ndarray, feats: np.ndarray, mirrored: np.ndarray, y: np.ndarray,
                   groups: np.ndarray, threshold: float, scored: np.ndarray,
                   seed: int = 0) -> dict:
    """Grouped FOLDS-fold CV (whole groups, seeded) of every L2 strength and logit shift: each
    fold's head trains on the others' crops and their mirror images, and scores its own crops as
    they are (what the ONNX graph does). Chooses the L2 by CV AP of the third class and then the
    shift by CV F1 of its argmax label, both over the `scored` crops (those of the sets that label
    the class: a set that never does may hold such faces under another label). Returns the
    choice and the out-of-fold logits."""
    unique = np.unique(groups)
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of_group = dict(zip(unique[order], np.arange(len(unique)) % FOLDS))
    fold = np.array([fold_of_group[g] for g in groups])
    logits = {l2: np.zeros(len(y)) for l2 in L2_GRID}
    for k in range(FOLDS):
        train, test = fold != k, fold == k
        x = np.vstack([feats[train], mirrored[train]])
        target = np.concatenate([y[train], y[train]]).astype(float)
        whitened = whitening(x)
        for l2 in L2_GRID:
            w, b = fit_head(x, target, l2, whitened)
            logits[l2][test] = feats[test] @ w + b  # as the graph runs it: the crop alone
    aps = {l2: average_precision(y[scored], logits[l2][scored]) for l2 in L2_GRID}
    l2 = max(L2_GRID, key=lambda v: (aps[v], -v))
    f1s = {}
    for shift in SHIFT_GRID:
        probs = combine(prob, logits[l2] + shift, threshold)
        f1s[shift] = _f1(y[scored], probs[scored].argmax(axis=1) == 2)
    shift = max(SHIFT_GRID, key=lambda s: (f1s[s], -abs(s)))
    return {"l2": l2, "shift": shift, "folds": FOLDS, "cv_ap_by_l2": aps,
            "cv_f1_by_shift": f1s, "logits": logits[l2] + shift}


def head_graph(base_bytes: bytes, maps: list[str], shapes: list[tuple[int, int, int]],
               base_output: str, weights: np.ndarray, bias: float, threshold: float) -> bytes:
    """The base ONNX graph with the head and the 3-class output `class_probs` added (the only
    output)."""
    model = onnx.load_from_string(base_bytes)
    graph = model.graph
    nodes, inits, pooled = [], [], []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    for k, (name, (c, h, w)) in enumerate(zip(maps, shapes)):
        flat, cells, out = f"head_flat_{k}", f"head_cells_{k}", f"head_pooled_{k}"
        nodes += [
            helper.make_node("Reshape", [name, const(f"head_shape_{k}",
                                                     np.array([-1, c, h * w], np.int64))], [flat]),
            helper.make_node("MatMul", [flat, const(f"head_pool_{k}", pooling_matrix(h, w))],
                             [cells]),
            helper.make_node("Reshape", [cells, const(f"head_vec_{k}",
                                                      np.array([-1, c * GRID * GRID], np.int64))],
                             [out]),
        ]
        pooled.append(out)
    one = const("head_one", np.array(1.0, np.float32))
    nodes += [
        helper.make_node("Concat", pooled, ["head_features"], axis=1),
        helper.make_node("MatMul", ["head_features",
                                    const("head_w", weights.astype(np.float32).reshape(-1, 1))],
                         ["head_wx"]),
        helper.make_node("Add", ["head_wx", const("head_b", np.array([bias], np.float32))],
                         ["head_logit"]),
        helper.make_node("Sigmoid", ["head_logit"], ["head_q"]),
        helper.make_node("Sub", [one, "head_q"], ["head_not_q"]),
        helper.make_node("Clip", [base_output, const("head_lo", np.array(EPS, np.float32)),
                                  const("head_hi", np.array(1 - EPS, np.float32))], ["head_p"]),
        helper.make_node("Sub", [one, "head_p"], ["head_not_p"]),
        helper.make_node("Div", ["head_p", "head_not_p"], ["head_odds"]),
        helper.make_node("Log", ["head_odds"], ["head_log_odds"]),
        helper.make_node("Sub", ["head_log_odds", const("head_t", np.array(_logit(threshold),
                                                                           np.float32))],
                         ["head_shifted"]),
        helper.make_node("Sigmoid", ["head_shifted"], ["head_m"]),
        helper.make_node("Sub", [one, "head_m"], ["head_not_m"]),
        helper.make_node("Mul", ["head_not_q", "head_m"], ["head_mask"]),
        helper.make_node("Mul", ["head_not_q", "head_not_m"], ["head_no_mask"]),
        helper.make_node("Concat", ["head_mask", "head_no_mask", "head_q"], [CLASS_PROBS_NAME],
                         axis=1),
    ]
    graph.node.extend(nodes)
    graph.initializer.extend(inits)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(CLASS_PROBS_NAME, TensorProto.FLOAT,
                                                      [None, 3]))
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _crops(request: HeadRequest, size: int) -> HeadCrops:
    """The crops of the run, de-duplicated and split; raises MaskbatchError when no crop outside
    val has the third class."""
    class_names = class_names_for(3)
    df, info = tdata.load_sets(request.crops_dirs, limit=request.limit, seed=request.seed,
                               class_names=class_names)
    df, dedup = tdata.drop_duplicates(df)
    df = df.reset_index(drop=True)
    parts = tdata.assign_parts(df, seed=request.seed, class_names=class_names)
    fitting = parts != "val"
    labels = df["label"].to_numpy()
    if not (labels[fitting] == INCORRECT).any():
        raise MaskbatchError(f"no {INCORRECT} crops outside val: extract with --classes 3 from a "
                             "set that labels them (voc-masks)")
    arrays = tdata.to_arrays(df, size, class_names)
    y = labels == INCORRECT
    sets = df["set"].to_numpy()
    labelling = sorted(set(sets[y]))  # the sets that label the third class
    return HeadCrops(df, class_names, info, dedup, parts, labels, arrays, fitting, y, labelling,
                     np.isin(sets, labelling))


def _fit(base: BaseFeatures, crops: HeadCrops, threshold: float, seed: int) -> FittedHead:
    """Cross-validate the head's L2 and logit shift over the crops outside val, then fit it on
    all of them (each crop and its mirror image)."""
    prob, feats, mirrored = features(base, crops.arrays.x)
    fitting, y = crops.fitting, crops.y
    groups = tdata.leakage_groups(crops.df)
    cv = cross_validate(prob[fitting], feats[fitting], mirrored[fitting], y[fitting],
                        groups[fitting], threshold, crops.scored[fitting], seed)
    weights, bias = fit_head(np.vstack([feats[fitting], mirrored[fitting]]),
                             np.concatenate([y[fitting], y[fitting]]).astype(float), cv["l2"])
    bias += cv["shift"]
    return FittedHead(prob, feats, mirrored, cv, weights, bias)


def out_of_fold_scores(crops: HeadCrops, head: FittedHead, threshold: float) -> dict:
    """The card's cross-validation numbers: the third class's out-of-fold AP and the 3-class
    reports of the out-of-fold labels, on the sets that label the class and on all."""
    fitting, class_names = crops.fitting, list(crops.class_names)
    y, y3, logits = crops.y[fitting], crops.arrays.y[fitting], head.cv["logits"]
    cv_probs = combine(head.prob[fitting], logits, threshold)
    scored = crops.scored[fitting]
    return {"incorrect_ap": average_precision(y[scored], logits[scored]),
            "incorrect_ap_all_sets": average_precision(y, logits),
            "report": multiclass_report(y3[scored], cv_probs[scored], class_names),
            "report_all_sets": multiclass_report(y3, cv_probs, class_names)}


def run(crops_dirs: list[str], out_dir: str, base_dir: str | None, limit: int | None = None,
        seed: int = 0) -> dict:
    """Train the head on the crops of `maskbatch extract --classes 3` folders over the 2-class
    model in `base_dir` (default: the bundled one) and write a 3-class model folder."""
    started = time.perf_counter()
    request = HeadRequest(crops_dirs, out_dir, base_dir, limit, seed)
    base_bytes, base_card = read_model(base_dir)
    if class_names_of(base_card) != class_names_for(2):
        raise MaskbatchError("--base must be a 2-class model (face_with_mask, face_no_mask)")
    threshold = float(base_card.get("threshold", 0.5))
    size = int(base_card["input_size"])
    crops = _crops(request, size)
    base = BaseFeatures(base_bytes, base_card)
    head = _fit(base, crops, threshold, seed)
    onnx_bytes = head_graph(base_bytes, base.maps, base.shapes, base.output, head.weights,
                            head.bias, threshold)

    # parity: the graph against the numpy head on real crops
    card = {"input_size": size, "onnx_sha256": sha256_bytes(onnx_bytes),
            "output_name": CLASS_PROBS_NAME, "class_names": list(crops.class_names)}
    probs = Classifier(onnx_bytes, card).probabilities(crops.arrays.x)
    expected = combine(head.prob, head.feats @ head.weights + head.bias, threshold)
    parity = float(np.abs(probs - expected).max())
    if parity > 1e-4:
        raise MaskbatchError(f"the head's ONNX graph and its numpy twin differ by {parity:g}")
    by_set = {}
    for name in sorted(crops.df["set"].unique()):
        sel = ((crops.df["set"] == name).to_numpy()) & (crops.parts == "val")
        if sel.any():
            by_set[name] = multiclass_report(crops.arrays.y[sel], probs[sel],
                                             list(crops.class_names))
    card.update(head_card(request, base_card, base.input, base.shapes, threshold, onnx_bytes,
                          parity, crops, head, out_of_fold_scores(crops, head, threshold),
                          by_set, started))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(str(out / "model.onnx"), onnx_bytes)
    write_json_atomic(card, str(out / "model_card.json"))
    return card


__all__ = ["BaseFeatures", "combine", "cross_validate", "feature_tensors", "fit_head",
           "head_graph", "pooling_matrix", "run", "whitening"]

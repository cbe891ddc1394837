"""Keras -> ONNX export with tf2onnx, and the Keras/onnxruntime parity check.

Keras 3 models break ``tf2onnx.convert.from_keras``; instead the model's inference call is wrapped
in a ``tf.function`` with an explicit input signature (dynamic batch dimension, input named
``input``) and converted with ``tf2onnx.convert.from_function``.
"""

from __future__ import annotations

import re
import time

import numpy as np
import onnxruntime as ort

from maskbatch.errors import MaskbatchError

OPSET = 13
PARITY_TOLERANCE = 1e-4
INPUT_NAME = "input"
OUTPUT_NAME = "mask_prob"
CLASS_PROBS_NAME = "class_probs"  # an N-class model's softmax output, (batch, N)


def to_onnx(model: object, size: int, opset: int = OPSET, output_name: str = OUTPUT_NAME) -> bytes:
    """The serialized ONNX model of a Keras model taking (N, size, size, 3) float32 input (its
    output named `output_name`: mask_prob, or an N-class model's CLASS_PROBS_NAME)."""
    import tensorflow as tf
    import tf2onnx

    spec = (tf.TensorSpec([None, size, size, 3], tf.float32, name=INPUT_NAME),)

    @tf.function(input_signature=spec)
    def infer(x: tf.Tensor) -> tf.Tensor:
        return model(x, training=False)

    proto, _ = tf2onnx.convert.from_function(infer, input_signature=spec, opset=opset)
    _canonical_names(proto, [output_name])
    return proto.SerializeToString()


def _canonical_names(proto: object, output_names: list[str]) -> None:
    """Name nodes and intermediate tensors by position, and the outputs ``output_names``.

    tf2onnx numbers what it creates with a process-wide counter (``Conv__34``), so the same
    weights exported twice in one process would differ in bytes and sha256, and it lists
    initializers in an order that can change between processes; positional names and an order
    taken from the nodes make the file a function of the weights alone. The graph output
    (``Identity:0`` from tf2onnx) becomes readable, and the dynamic batch dimension is called
    ``batch``.
    """
    graph = proto.graph
    graph.doc_string = "maskbatch mask classifier, converted by tf2onnx"  # was the trace's id
    rename = {out.name: name for out, name in zip(graph.output, output_names)}
    # The initializers' order is not stable from one process to the next (a depthwise kernel's
    # reshaped copies come out in hash order), the nodes' order is: constants are numbered, and
    # all initializers sorted, by the node (and input slot) that first reads them.
    first_use: dict[str, tuple[int, int]] = {}
    for i, node in enumerate(graph.node):
        for j, name in enumerate(node.input):
            first_use.setdefault(name, (i, j))
    unused = (len(graph.node), 0)
    graph.initializer.sort(key=lambda t: (*first_use.get(t.name, unused), t.name))
    for i, init in enumerate(graph.initializer):
        if re.search(r"__\d+", init.name):  # a tf2onnx-made constant such as const_axes__48
            rename[init.name] = f"c{i}"
            init.name = f"c{i}"
    keep = {t.name for t in graph.input} | {t.name for t in graph.initializer}
    for i, node in enumerate(graph.node):
        node.input[:] = [rename.get(name, name) for name in node.input]
        for j, name in enumerate(node.output):
            if name and name not in keep:
                rename.setdefault(name, f"t{i}_{j}")
        node.output[:] = [rename.get(name, name) for name in node.output]
        node.name = f"n{i}_{node.op_type}"
    for out, name in zip(graph.output, output_names):
        out.name = name
    for value in [*graph.input, *graph.output, *graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):  # tf2onnx's unk__50: the dynamic batch dimension
                dim.dim_param = "batch"


def onnx_predict(onnx_bytes: bytes, x: np.ndarray, threads: int = 1) -> np.ndarray:
    """Every output from onnxruntime alone, shape (N, outputs): P(face_with_mask) first (an
    N-class model: its N probabilities)."""

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx_bytes, sess_options=options,
                                   providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    outs = session.run(None, {name: x})
    return np.concatenate([np.asarray(o, dtype=np.float32).reshape(len(x), -1) for o in outs],
                          axis=1)


def parity_check(model: object, onnx_bytes: bytes, x: np.ndarray,
                 tolerance: float = PARITY_TOLERANCE, verbose: bool = True) -> float:
    """Max |Keras - onnxruntime| on the batch `x`; raises MaskbatchError unless below tolerance."""
    if len(x) == 0:
        raise MaskbatchError("parity check needs at least one crop")
    keras_out = model.predict(x, batch_size=64, verbose=0)
    keras_out = keras_out if isinstance(keras_out, (list, tuple)) else [keras_out]
    keras_all = np.concatenate([np.asarray(o, dtype=np.float32).reshape(len(x), -1)
                                for o in keras_out], axis=1)
    onnx_out = onnx_predict(onnx_bytes, x)
    if onnx_out.shape != keras_all.shape:
        raise MaskbatchError(f"ONNX export has {onnx_out.shape[1]} output(s), Keras "
                             f"{keras_all.shape[1]}; refusing to write the model")
    diff = float(np.max(np.abs(keras_all - onnx_out)))
    if verbose:
        print(f"parity: max |keras - onnxruntime| = {diff:.3g} on {len(x)} held-out crops "
              f"(tolerance {tolerance:g})")
    if not np.isfinite(diff) or diff >= tolerance:
        raise MaskbatchError(
            f"ONNX export disagrees with Keras: max abs difference {diff:.3g} >= {tolerance:g} "
            f"on {len(x)} held-out crops; refusing to write the model"
        )
    return diff


def time_inference(onnx_bytes: bytes, size: int, batch_sizes: tuple[int, ...] = (1, 64),
                   repeats: int = 30, x: np.ndarray | None = None) -> dict[str, float]:
    """Median milliseconds per crop with one onnxruntime thread, for each batch size."""

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(onnx_bytes, sess_options=options,
                                   providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    rng = np.random.default_rng(0)
    result = {}
    for batch in batch_sizes:
        if x is not None and len(x) >= batch:
            data = np.ascontiguousarray(x[:batch], dtype=np.float32)
        else:
            data = rng.random((batch, size, size, 3), dtype=np.float32)
        session.run(None, {name: data})  # warm-up
        times = []
        reps = max(3, repeats if batch == 1 else repeats // 3)
        for _ in range(reps):
            started = time.perf_counter()
            session.run(None, {name: data})
            times.append(time.perf_counter() - started)
        result[f"batch_{batch}_ms_per_crop"] = round(1000 * float(np.median(times)) / batch, 4)
    return result

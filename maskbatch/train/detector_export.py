"""The fine-tuned detector back into YuNet's own ONNX graph, and the Keras/OpenCV parity check.

Why not tf2onnx here (it exports the classifier): its graph computes the FPN's upsampling sizes
and the heads' reshapes with dynamic Shape ops, which OpenCV's ONNX importer refuses ("dynamic
'zero' shapes are not supported"), so cv2.FaceDetectorYN could not load it. Instead the trained
Keras weights are written into a copy of the pretrained graph: the same nodes, inputs and output
names, with each Conv's dequantized int8 weight replaced by a float32 initializer. The result is
exactly the network OpenCV was built to run, and its outputs are checked against Keras on real
photos (:func:`parity`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from maskbatch.errors import MaskbatchError
from maskbatch.models.yunet_onnx import dynamic_input, make_blob
from maskbatch.train.yunet_graph import OUTPUT_NAMES, Node, layer_name

PARITY_TOLERANCE = 1e-4


def onnx_with_weights(template: str | Path, weights: dict[str, np.ndarray]) -> bytes:
    """The template YuNet ONNX with every Conv's weights taken from `weights` (keyed by Keras layer
    name + '/kernel' or '/bias', Keras layouts), as float32; quantization nodes removed."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(template))
    graph = model.graph
    constant = {i.name for i in graph.initializer}
    kept_nodes, new_inits = [], []
    for n in graph.node:
        if all(i in constant or not i for i in n.input):
            constant.update(n.output)  # the weight-only dequantization subgraph: replaced below
            continue
        if n.op_type == "Conv":
            node = Node("Conv", list(n.input), list(n.output))
            name = layer_name(node)
            kernel = weights[name + "/kernel"]
            group = next((a.i for a in n.attribute if a.name == "group"), 1)
            onnx_kernel = (kernel.transpose(3, 2, 0, 1) if group == 1
                           else kernel.transpose(2, 3, 0, 1))  # (kh,kw,I,O) / (kh,kw,C,1)
            new_inits.append(numpy_helper.from_array(onnx_kernel.astype(np.float32), name + ".w"))
            n.input[1] = name + ".w"
            if len(n.input) > 2 and n.input[2]:
                new_inits.append(numpy_helper.from_array(
                    weights[name + "/bias"].astype(np.float32), name + ".b"))
                n.input[2] = name + ".b"
        kept_nodes.append(n)
    used = {i for n in kept_nodes for i in n.input}
    others = [i for i in graph.initializer if i.name in used]
    del graph.node[:]
    graph.node.extend(kept_nodes)
    del graph.initializer[:]
    graph.initializer.extend(others + new_inits)
    graph.doc_string = "maskbatch face detector: YuNet fine-tuned on labelled masked faces"
    model.producer_name = "maskbatch"
    onnx.checker.check_model(model)
    return model.SerializeToString()


def keras_weights(model: object) -> dict[str, np.ndarray]:
    """Conv kernels and biases of the Keras YuNet, keyed like :func:`onnx_with_weights` expects."""
    out = {}
    for layer in model.layers:
        if layer.name.startswith("conv_") and layer.weights and not layer.name.endswith("_pad"):
            values = layer.get_weights()
            out[layer.name + "/kernel"] = values[0]
            if len(values) > 1:
                out[layer.name + "/bias"] = values[1]
    return out


def runtime_outputs(onnx_bytes: bytes, image: np.ndarray) -> list[np.ndarray]:
    """The twelve raw outputs of the ONNX net for one BGR image (sides multiple of 32), as the job
    runs it: onnxruntime over the size-free graph (maskbatch.models.yunet_onnx)."""
    session = ort.InferenceSession(dynamic_input(onnx_bytes), providers=["CPUExecutionProvider"])
    outputs = session.run(list(OUTPUT_NAMES), {session.get_inputs()[0].name: make_blob(image)})
    return [np.asarray(o) for o in outputs]


def parity(model: object, onnx_bytes: bytes, photos: list[np.ndarray],
           tolerance: float = PARITY_TOLERANCE) -> float:
    """Max |Keras - onnxruntime| over every output on `photos`; raises unless below `tolerance`."""
    worst = 0.0
    for image in photos:
        keras_out = model(image[None].astype(np.float32), training=False)
        for a, b in zip(keras_out, runtime_outputs(onnx_bytes, image)):
            worst = max(worst, float(np.max(np.abs(np.asarray(a) - b))))
    if not np.isfinite(worst) or worst >= tolerance:
        raise MaskbatchError(f"detector export disagrees with Keras: max abs difference {worst:.3g} "
                             f">= {tolerance:g} on {len(photos)} photos; refusing to write it")
    return worst

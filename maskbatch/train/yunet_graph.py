"""YuNet's ONNX graph as a Keras model with float weights, so it can be fine-tuned.

The pretrained YuNet (opencv_zoo's block-quantized int8 file) is read with the `onnx` package:
every weight is ``scale * (q - zero_point)`` per block (DequantizeLinear with a block size), and
every node of the network (Conv, Relu, MaxPool, nearest Resize, Add, the heads' Transpose /
Reshape / Sigmoid) becomes the matching Keras layer, in channels-last layout, named after the ONNX
node's weight so fine-tuned weights can be told apart. The Keras model has the same twelve
outputs as the ONNX file (cls_8 ... kps_32, rows in the same order), so an export of it runs in
cv2.FaceDetectorYN exactly like the original. No TensorFlow at import time of the ONNX reading
helpers (:func:`read_graph`, :func:`float_weights`), so they are testable without the extra.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

OUTPUT_NAMES = ("cls_8", "cls_16", "cls_32", "obj_8", "obj_16", "obj_32",
                "bbox_8", "bbox_16", "bbox_32", "kps_8", "kps_16", "kps_32")
STRIDES = (8, 16, 32)


@dataclass
class Node:
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict = field(default_factory=dict)


def _dequantize(q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int,
                block: int | None) -> np.ndarray:
    """ONNX DequantizeLinear (opset 21), per-tensor, per-axis or blocked."""
    q = q.astype(np.float32)
    zero = np.zeros_like(scale) if zero is None else zero.astype(np.float32)
    if scale.size == 1:
        return (q - zero.reshape(())) * scale.reshape(())
    if block:  # scale has the shape of q with the axis divided into blocks
        scale = np.repeat(scale, block, axis=axis).take(range(q.shape[axis]), axis=axis)
        zero = np.repeat(zero, block, axis=axis).take(range(q.shape[axis]), axis=axis)
        return (q - zero) * scale
    shape = [1] * q.ndim
    shape[axis] = -1
    return (q - zero.reshape(shape)) * scale.reshape(shape)


def read_graph(path: str | Path) -> tuple[list[Node], dict[str, np.ndarray]]:
    """The network's compute nodes and its weights as float32 arrays (constants folded)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    nodes = []
    for n in model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if all(i in values or not i for i in n.input):  # weight-only subgraph: fold it
            if n.op_type == "DequantizeLinear":
                q, s = values[n.input[0]], values[n.input[1]]
                z = values[n.input[2]] if len(n.input) > 2 and n.input[2] else None
                values[n.output[0]] = _dequantize(q, s, z, attrs.get("axis", 1),
                                                  attrs.get("block_size"))
                continue
            if n.op_type == "Reshape":
                values[n.output[0]] = values[n.input[0]].reshape(values[n.input[1]])
                continue
        nodes.append(Node(n.op_type, list(n.input), list(n.output), attrs))
    return nodes, {k: v.astype(np.float32) if v.dtype != np.int64 else v for k, v in values.items()}


def float_weights(path: str | Path) -> dict[str, np.ndarray]:
    """Every conv weight and bias of the graph, dequantized, keyed by layer name."""
    nodes, values = read_graph(path)
    out = {}
    for node in nodes:
        if node.op == "Conv":
            name = layer_name(node)
            out[name + "/kernel"] = values[node.inputs[1]]
            if len(node.inputs) > 2:
                out[name + "/bias"] = values[node.inputs[2]]
    return out


def layer_name(node: Node) -> str:
    """A readable, stable Keras layer name for a Conv node (its weight's name where it has one)."""
    weight = node.inputs[1]
    if weight.startswith("conv_") and weight.endswith(".w"):  # a graph maskbatch exported
        return weight[:-2]
    for suffix in ("_reshaped", "_dequantized", ".weight"):
        weight = weight.replace(suffix, "")
    return "conv_" + weight.replace(".", "_")


def build_keras(path: str | Path):  # -> keras.Model (TensorFlow imported here only)
    """The YuNet graph as a Keras functional model: input (N, H, W, 3) BGR 0..255 float32, H and W
    multiples of 32; outputs as OUTPUT_NAMES. Weights are the file's, dequantized."""
    import keras
    from keras import layers

    nodes, values = read_graph(path)
    image = keras.Input((None, None, 3), name="input", dtype="float32")
    tensors = {nodes[0].inputs[0]: image}
    for node in nodes:
        x = [tensors[i] for i in node.inputs if i in tensors]
        if node.op == "Conv":
            out = _conv(layers, node, values, x[0])
        elif node.op == "Relu":
            out = layers.ReLU(name=f"relu_{node.outputs[0]}")(x[0])
        elif node.op == "MaxPool":
            out = layers.MaxPooling2D(node.attrs["kernel_shape"], node.attrs["strides"],
                                      name=f"pool_{node.outputs[0]}")(x[0])
        elif node.op == "Resize":  # nearest, x2 (the FPN's top-down path)
            out = layers.UpSampling2D(2, interpolation="nearest", name=f"up_{node.outputs[0]}")(x[0])
        elif node.op == "Add":
            out = layers.Add(name=f"add_{node.outputs[0]}")(x)
        elif node.op == "Transpose":  # NCHW -> NHWC: the Keras tensors are channels-last already
            if list(node.attrs["perm"]) != [0, 2, 3, 1]:
                raise ValueError(f"unsupported transpose {node.attrs['perm']}")
            out = x[0]
        elif node.op == "Reshape":  # (1, -1, C): rows of the flattened grid
            channels = int(values[node.inputs[1]][-1])
            name = node.outputs[0] if node.outputs[0] in OUTPUT_NAMES else f"flat_{node.outputs[0]}"
            out = layers.Reshape((-1, channels), name=name)(x[0])
        elif node.op == "Sigmoid":
            out = layers.Activation("sigmoid", name=node.outputs[0])(x[0])
        else:
            raise ValueError(f"unsupported op {node.op} in {path}")
        tensors[node.outputs[0]] = out
    return keras.Model(image, [tensors[n] for n in OUTPUT_NAMES], name="yunet")


def _conv(layers, node: Node, values: dict, x):  # noqa: ANN001 - Keras objects
    weight = values[node.inputs[1]]  # (O, I/group, kh, kw)
    bias = values[node.inputs[2]] if len(node.inputs) > 2 else None
    out_ch, in_per_group, kh, kw = weight.shape
    group = int(node.attrs.get("group", 1))
    stride = tuple(node.attrs.get("strides", (1, 1)))
    pads = node.attrs.get("pads", (0, 0, 0, 0))
    name = layer_name(node)
    if any(pads):  # ONNX pads symmetrically; Keras 'same' with stride 2 would pad one side only
        x = layers.ZeroPadding2D(((pads[0], pads[2]), (pads[1], pads[3])), name=name + "_pad")(x)
    if group == 1:
        layer = layers.Conv2D(out_ch, (kh, kw), stride, use_bias=bias is not None, name=name)
        kernel = weight.transpose(2, 3, 1, 0)
    elif in_per_group == 1 and group == out_ch:
        layer = layers.DepthwiseConv2D((kh, kw), stride, use_bias=bias is not None, name=name)
        kernel = weight.transpose(2, 3, 0, 1)  # (kh, kw, C, 1)
    else:
        raise ValueError(f"unsupported grouped conv {name}: group {group}")
    out = layer(x)
    layer.set_weights([kernel] + ([bias] if bias is not None else []))
    return out

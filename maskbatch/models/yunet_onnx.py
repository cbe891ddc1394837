"""YuNet through onnxruntime: the graph made size-free, and cv2.FaceDetectorYN's post-processing in numpy.

What maskbatch.models.yunet runs: cv2.FaceDetectorYN's rows (same faces, same order, same scores
within 1e-5) without OpenCV's dnn module. What cv2.FaceDetectorYN.detect does (opencv 4.x
modules/objdetect/src/face_detect.cpp), step by step, all of it here:

1. pad the (w, h) input with zeros at the bottom and right to a multiple of 32 (copyMakeBorder,
   BORDER_CONSTANT 0), and make the blob with blobFromImage's defaults: float32 NCHW, BGR as
   given, no mean, no scale;
2. for strides 8, 16, 32, over the padded grid (cols = padW / stride, rows = padH / stride, cell
   index row * cols + col): score = sqrt(clip(cls, 0, 1) * clip(obj, 0, 1)); a cell is a
   candidate unless score < threshold (so a score equal to it, or NaN, stays in);
3. a candidate's box: cx = (col + dx) * stride, cy = (row + dy) * stride, w = exp(dw) * stride,
   h = exp(dh) * stride, x1 = cx - w / 2, y1 = cy - h / 2 (float32 throughout);
4. with two or more candidates, cv2.dnn.NMSBoxes over the boxes cut to int rects
   (int(x1), int(y1), int(w), int(h): truncation toward zero) with the score threshold again
   (this time strictly: score > threshold), IoU 0.3, eta 1, top_k 5000 (the 5000 best candidates,
   stable-sorted by score, enter NMS; the rest are dropped before it); the kept rows come out best
   score first. A single candidate skips NMS and is returned as it is.

Imports numpy, cv2, onnx, onnxruntime and maskbatch.errors only.
"""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import onnxruntime as ort

from maskbatch.errors import MaskbatchError

STRIDES = (8, 16, 32)
DIVISOR = 32  # FaceDetectorYN pads its input to a multiple of this
NMS_IOU = 0.3  # YuNet's own NMS between its anchors (opencv_zoo's default)
TOP_K = 5000  # candidates entering NMS, as opencv_zoo's demo
HEADS = ("cls", "obj", "bbox")
OUTPUT_NAMES = tuple(f"{head}_{stride}" for head in HEADS for stride in STRIDES)
HEIGHT_DIM, WIDTH_DIM = "height", "width"


def dynamic_input(model_bytes: bytes, keep_outputs: tuple[str, ...] | None = None) -> bytes:
    """YuNet ONNX bytes with a symbolic input height and width (and head outputs of symbolic length).

    The fixed 1x3xHxW input gets dims `height` and `width`; each output's cell dimension gets
    `cells_<stride>`; the recorded intermediate shapes (value_info, fixed to the exported size)
    are dropped, for onnxruntime to infer per run. keep_outputs: only these outputs stay graph
    outputs (onnxruntime then prunes the nodes nothing reads, e.g. the landmark heads). Two repairs
    for onnxruntime, same maths: a per-tensor DequantizeLinear loses its `block_size`
    (_per_tensor_dequantize) and initializers no node reads are removed.
    """
    try:
        model = onnx.load_from_string(model_bytes)
    except Exception as exc:  # noqa: BLE001 - protobuf raises its own DecodeError
        raise MaskbatchError(f"not an ONNX model: {exc}") from None
    graph = model.graph
    constants = {init.name for init in graph.initializer}
    inputs = [value for value in graph.input if value.name not in constants]
    names = {value.name for value in graph.output}
    if (len(inputs) != 1 or len(inputs[0].type.tensor_type.shape.dim) != 4
            or not set(OUTPUT_NAMES) <= names):
        raise MaskbatchError("not a YuNet model: it needs one 4-d image input and the outputs "
                             f"{', '.join(OUTPUT_NAMES)}")
    dims = inputs[0].type.tensor_type.shape.dim
    dims[0].dim_value = 1
    dims[2].dim_param = HEIGHT_DIM  # (dim_value and dim_param are a oneof: this clears the 640)
    dims[3].dim_param = WIDTH_DIM
    if keep_outputs is not None:
        missing = set(keep_outputs) - names
        if missing:
            raise MaskbatchError(f"the model has no output {', '.join(sorted(missing))}")
        kept = [value for value in graph.output if value.name in keep_outputs]
        del graph.output[:]
        graph.output.extend(kept)
    for value in graph.output:
        out_dims = value.type.tensor_type.shape.dim
        if len(out_dims) == 3:
            out_dims[1].dim_param = "cells_" + value.name.rsplit("_", 1)[-1]
    del graph.value_info[:]
    _per_tensor_dequantize(graph)
    read = {name for node in graph.node for name in node.input} | {v.name for v in graph.output}
    unread = [init for init in graph.initializer if init.name not in read]
    for init in unread:  # (the int8bq file carries 20 unread shape constants; onnxruntime warns)
        graph.initializer.remove(init)
    return model.SerializeToString()


def _per_tensor_dequantize(graph: onnx.GraphProto) -> None:
    """Drop `block_size` from DequantizeLinear nodes whose scale is one number.

    The pretrained int8bq YuNet quantizes each bias (shape (C,)) as one block of C with a scale of
    shape (1,): blocked quantization with a single block, i.e. per-tensor. OpenCV reads that;
    onnxruntime (1.2x-1.3x) takes a 1-element scale for per-tensor and refuses a block_size with
    it. Without the attribute the node means the same thing and onnxruntime runs it."""
    scales = {init.name: int(np.prod(init.dims)) for init in graph.initializer
              if len(init.dims) <= 1}
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and scales.get(node.input[1]) == 1:
            kept = [attr for attr in node.attribute if attr.name != "block_size"]
            del node.attribute[:]
            node.attribute.extend(kept)


def padded_size(size: tuple[int, int]) -> tuple[int, int]:
    """(padW, padH): FaceDetectorYN's input size (w, h) rounded up to a multiple of 32."""
    w, h = size
    return ((w - 1) // DIVISOR + 1) * DIVISOR, ((h - 1) // DIVISOR + 1) * DIVISOR


def make_blob(image: np.ndarray) -> np.ndarray:
    """The net's input for a BGR image: zero-padded bottom/right to a multiple of 32, float32
    1x3xHxW, channels as given, no mean, no scale (FaceDetectorYN's padWithDivisor + blobFromImage)."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise MaskbatchError(f"YuNet needs a 3-channel BGR image, not shape {image.shape}")
    h, w = image.shape[:2]
    pad_w, pad_h = padded_size((w, h))
    padded = cv2.copyMakeBorder(image, 0, pad_h - h, 0, pad_w - w, cv2.BORDER_CONSTANT, value=0)
    blob = np.empty((1, 3, pad_h, pad_w), np.float32)
    for channel, plane in enumerate(cv2.split(padded)):  # one contiguous plane at a time: 0.8 ms
        blob[0, channel] = plane  # at 640k where a strided transpose into zeros took 1.1
    return blob


def decode(outputs: dict[str, np.ndarray], pad_size: tuple[int, int], threshold: float
           ) -> np.ndarray:
    """Candidate faces of the head outputs, as FaceDetectorYN decodes them, before NMS: rows
    (x1, y1, w, h, score) in padded-input pixels, float32, stride 8 cells first, row-major.

    Only the cells whose score is not below `threshold` are decoded."""
    pad_w, pad_h = pad_size
    thr = np.float32(threshold)
    found = []
    for stride in STRIDES:
        cols = pad_w // stride
        cells = cols * (pad_h // stride)
        cls = np.asarray(outputs[f"cls_{stride}"], np.float32).reshape(-1)
        obj = np.asarray(outputs[f"obj_{stride}"], np.float32).reshape(-1)
        if len(cls) != cells or len(obj) != cells:
            raise MaskbatchError(f"YuNet stride {stride} output has {len(cls)} cells, expected "
                                 f"{cells} for a {pad_w}x{pad_h} input")
        with np.errstate(invalid="ignore"):
            score = np.sqrt(np.clip(cls, 0, 1) * np.clip(obj, 0, 1))
            idx = np.flatnonzero(~(score < thr))  # as the C++ `if (score < thr) continue;`
        if len(idx) == 0:
            continue
        bbox = np.asarray(outputs[f"bbox_{stride}"], np.float32).reshape(-1, 4)[idx]
        s = np.float32(stride)
        col = (idx % cols).astype(np.float32)
        row = (idx // cols).astype(np.float32)
        face = np.empty((len(idx), 5), np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            cx = (col + bbox[:, 0]) * s
            cy = (row + bbox[:, 1]) * s
            w = np.exp(bbox[:, 2]) * s
            h = np.exp(bbox[:, 3]) * s
            face[:, 0] = cx - w / np.float32(2)
            face[:, 1] = cy - h / np.float32(2)
        face[:, 2] = w
        face[:, 3] = h
        face[:, 4] = score[idx]
        found.append(face)
    if not found:
        return np.zeros((0, 5), np.float32)
    return np.concatenate(found)


def suppress(faces: np.ndarray, threshold: float, nms_iou: float = NMS_IOU, top_k: int = TOP_K
             ) -> np.ndarray:
    """FaceDetectorYN's NMS over decoded rows (x1, y1, w, h, score): kept rows, best first; one
    row (or none) is returned as it is."""
    if len(faces) <= 1:
        return faces
    with np.errstate(invalid="ignore"):
        rects = faces[:, :4].astype(np.int32)  # C++ int(float): truncation toward zero
    keep = cv2.dnn.NMSBoxes(rects, faces[:, 4], float(threshold), float(nms_iou), 1.0, top_k)
    return faces[np.asarray(keep, dtype=np.int64).reshape(-1)]


def relative(faces: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Rows (x1, y1, w, h, score) in pixels of a (w, h) input to the detector's rows:
    (x1, y1, x2, y2, score) relative to the size, clipped to [0, 1], empty or non-finite dropped."""
    w, h = size
    out = np.empty((len(faces), 5), np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        out[:, 0] = faces[:, 0] / w
        out[:, 1] = faces[:, 1] / h
        out[:, 2] = (faces[:, 0] + faces[:, 2]) / w
        out[:, 3] = (faces[:, 1] + faces[:, 3]) / h
        out[:, 4] = faces[:, 4]
        out[:, :4] = np.clip(out[:, :4], 0.0, 1.0)
    keep = (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1]) & np.isfinite(out).all(axis=1)
    return out[keep]


class YunetOnnx:
    """One YuNet net (ONNX bytes of either weight set) in an onnxruntime session, with
    cv2.FaceDetectorYN's pre- and post-processing. A session may be shared by threads."""

    def __init__(self, model_bytes: bytes, threads: int = 1) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # The int8bq weights are DequantizeLinear nodes over int8 constants. With its QDQ handling
        # on, onnxruntime keeps them as nodes (for fusing with quantized activations, of which this
        # net has none), and the convolutions that read them miss the NCHWc kernels: 26 ms a photo
        # instead of 9. Off, the dequantized weights are folded into float constants at load, as
        # OpenCV does (outputs within 2e-6). No effect on a float model such as the tuned one.
        options.add_session_config_entry("session.disable_quant_qdq", "1")
        try:
            self.session = ort.InferenceSession(
                dynamic_input(model_bytes, OUTPUT_NAMES), sess_options=options,
                providers=["CPUExecutionProvider"])
        except MaskbatchError:
            raise
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own Fail / InvalidGraph
            raise MaskbatchError(f"onnxruntime cannot load the YuNet model: {exc}") from None
        self.input_name = self.session.get_inputs()[0].name

    def run(self, blob: np.ndarray) -> dict[str, np.ndarray]:
        """The head outputs (cls, obj, bbox per stride) for a padded 1x3xHxW blob."""
        return dict(zip(OUTPUT_NAMES, self.session.run(list(OUTPUT_NAMES), {self.input_name: blob})))

    def forward(self, image: np.ndarray, size: tuple[int, int], threshold: float) -> np.ndarray:
        """One YuNet pass on `image` resized to size=(w, h): rows (x1, y1, x2, y2, score), relative,
        scores above `threshold`, clipped to [0, 1], empty boxes dropped (cv2.FaceDetectorYN's
        contract and rows)."""
        resized = image if (image.shape[1], image.shape[0]) == size else cv2.resize(image, size)
        outputs = self.run(make_blob(resized))
        faces = suppress(decode(outputs, padded_size(size), threshold), threshold)
        return relative(faces, size)

"""The integer type of a full-int8 .tflite model's input and output tensors.

litert-torch writes int8 IO. Older accelerators and camera pipelines want uint8 (the Edge TPU
toolchain's classic models, pycoral's examples): the same scale, the zero-point shifted by 128.
`to_uint8` puts a QUANTIZE op (an exact int8 <-> uint8 requantize in TFLite) at each int8
input and output, as TensorFlow's modify_model_interface does, editing the flatbuffer with the
schema that ships with ai-edge-litert.

`to_pixels` gives a full-int8 model that takes the camera's frame itself instead of the normalised image:
a uint8 input whose quantization *is* mean/std where one scale and an integer zero-point can
express them (Coral's models), else a uint8 input of the pixel values and a 1x1 depthwise conv
with per-channel int8 weights that applies each channel's scale and offset, in int8, into the
model's own input tensor. Both are ops the Edge TPU maps, and both compute what quantizing the
normalised float image computes.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

IO_TYPES = ("int8", "uint8")


def to_uint8(src: Path, dst: Path) -> None:
    """Write `src` with uint8 in place of its int8 input/output tensors to `dst`."""
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(src))
    graph = model.subgraphs[0]
    quantize_op = _opcode(model, fb.BuiltinOperator.QUANTIZE, fb)
    front, back, moved = [], [], {}

    def uint8_twin(index: int) -> int:
        tensor = graph.tensors[index]
        twin = copy.deepcopy(tensor)
        twin.type = fb.TensorType.UINT8
        twin.quantization.zeroPoint = [int(z) + 128 for z in tensor.quantization.zeroPoint]
        twin.buffer = len(model.buffers)
        model.buffers.append(fb.BufferT())
        tensor.name = (tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name) + "_int8"
        graph.tensors.append(twin)
        moved[index] = len(graph.tensors) - 1
        return moved[index]

    def requantize(source: int, target: int):
        op = fb.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = quantize_op, [source], [target]
        return op

    for i, index in enumerate(graph.inputs):
        if graph.tensors[index].type == fb.TensorType.INT8:
            graph.inputs[i] = uint8_twin(index)
            front.append(requantize(graph.inputs[i], index))
    for i, index in enumerate(graph.outputs):
        if graph.tensors[index].type == fb.TensorType.INT8:
            graph.outputs[i] = uint8_twin(index)
            back.append(requantize(index, graph.outputs[i]))
    graph.operators = front + list(graph.operators) + back
    for signature in model.signatureDefs or []:
        for io in list(signature.inputs or []) + list(signature.outputs or []):
            io.tensorIndex = moved.get(io.tensorIndex, io.tensorIndex)
    flatbuffer_utils.write_model(model, str(dst))


def _opcode(model, builtin: int, fb, version: int = 2) -> int:
    """Index of `builtin` in the model's operator codes, added when missing, at least at `version` (QUANTIZE 2:
    int8 operands; DEPTHWISE_CONV_2D 3: per-channel int8)."""
    for i, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            code.version = max(code.version, version)
            return i
    code = fb.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), version
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def coral_quantization(scale: np.ndarray, offset: np.ndarray) -> tuple[float, int] | None:
    """(scale, zero point) of a uint8 input whose real value is pixel * scale + offset on every
    channel, when one scale and an integer zero-point express it exactly (else None)."""
    if np.ptp(scale) > 1e-7 * abs(scale[0]) or np.ptp(offset) > 1e-6:
        return None
    zero_point = -float(offset[0]) / float(scale[0])
    if abs(zero_point - round(zero_point)) > 1e-3 or not 0 <= round(zero_point) <= 255:
        return None
    return float(scale[0]), int(round(zero_point))


def to_pixels(src: Path, dst: Path, scale: np.ndarray, offset: np.ndarray) -> None:
    """Write `src` (an int8 model whose input is the normalised NHWC image: int8, or float where its first
    layer was kept float) to `dst` taking uint8 frames: its input is pixel * scale[c] + offset[c] per
    channel c (quantized to the int8 input's own scale)."""
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(src))
    graph = model.subgraphs[0]
    (position, index), = [(i, t) for i, t in enumerate(graph.inputs)]
    image = graph.tensors[index]
    if image.type not in (fb.TensorType.INT8, fb.TensorType.FLOAT32) or list(image.shape)[-1:] != [len(scale)]:
        raise ValueError(f"{src.name}: the input is not an int8 or float NHWC image with {len(scale)} channels")

    def tensor(name: str, tensor_type: int, shape, scales, zero_points, data: np.ndarray | None = None,
               axis: int = 0) -> int:
        t = fb.TensorT()
        t.name, t.type, t.shape = name, tensor_type, list(shape)
        t.quantization = fb.QuantizationParametersT()
        if scales is not None:
            t.quantization.scale = [float(v) for v in scales]
            t.quantization.zeroPoint = [int(v) for v in zero_points]
            t.quantization.quantizedDimension = axis
        buffer = fb.BufferT()
        if data is not None:
            buffer.data = np.ascontiguousarray(data).view(np.uint8).ravel().tolist()
        t.buffer = len(model.buffers)
        model.buffers.append(buffer)
        graph.tensors.append(t)
        return len(graph.tensors) - 1

    def op(builtin: int, inputs: list[int], outputs: list[int], options=None, options_type: int = 0):
        o = fb.OperatorT()
        version = 3 if builtin == fb.BuiltinOperator.DEPTHWISE_CONV_2D else 2
        o.opcodeIndex, o.inputs, o.outputs = _opcode(model, builtin, fb, version), inputs, outputs
        if options is not None:
            o.builtinOptionsType, o.builtinOptions = options_type, options
        return o

    shape = list(image.shape)
    coral = coral_quantization(scale, offset)
    options = fb.DepthwiseConv2DOptionsT()
    options.padding, options.strideW, options.strideH, options.depthMultiplier = fb.Padding.VALID, 1, 1, 1
    if image.type == fb.TensorType.FLOAT32:  # the first layer was kept float: pixels as floats, the same affine
        frames = tensor("frames", fb.TensorType.UINT8, shape, [1.0], [0])
        pixels = tensor("frames_float", fb.TensorType.FLOAT32, shape, None, None)
        scaled = tensor("frames_scaled", fb.TensorType.FLOAT32, shape, None, None)
        weights = tensor("normalise_scale", fb.TensorType.FLOAT32, [len(scale)], None, None, scale.astype(np.float32))
        bias = tensor("normalise_offset", fb.TensorType.FLOAT32, [len(scale)], None, None, offset.astype(np.float32))
        front = [op(fb.BuiltinOperator.DEQUANTIZE, [frames], [pixels]),
                 op(fb.BuiltinOperator.MUL, [pixels, weights], [scaled], fb.MulOptionsT(),
                    fb.BuiltinOptions.MulOptions),
                 op(fb.BuiltinOperator.ADD, [scaled, bias], [index], fb.AddOptionsT(), fb.BuiltinOptions.AddOptions)]
    elif coral is not None:  # the input quantization is the normalisation: one requantize into the model's scale
        frames = tensor("frames", fb.TensorType.UINT8, shape, [coral[0]], [coral[1]])
        front = [op(fb.BuiltinOperator.QUANTIZE, [frames], [index])]
    else:  # pixels as they are, then scale and offset per channel in int8 (a 1x1 depthwise conv)
        frames = tensor("frames", fb.TensorType.UINT8, shape, [1.0], [0])
        shifted = tensor("frames_int8", fb.TensorType.INT8, shape, [1.0], [-128])
        w_scale = np.abs(scale).astype(np.float64) / 127.0
        weights = tensor("normalise_scale", fb.TensorType.INT8, [1, 1, 1, len(scale)], w_scale, [0] * len(scale),
                         np.sign(scale).astype(np.int8) * np.int8(127), axis=3)
        bias = tensor("normalise_offset", fb.TensorType.INT32, [len(scale)], w_scale, [0] * len(scale),
                      np.round(offset / w_scale).astype(np.int32))
        front = [op(fb.BuiltinOperator.QUANTIZE, [frames], [shifted]),
                 op(fb.BuiltinOperator.DEPTHWISE_CONV_2D, [shifted, weights, bias], [index], options,
                    fb.BuiltinOptions.DepthwiseConv2DOptions)]
    graph.inputs[position] = frames
    graph.operators = front + list(graph.operators)
    for signature in model.signatureDefs or []:
        for io in signature.inputs or []:
            io.tensorIndex = frames if io.tensorIndex == index else io.tensorIndex
    flatbuffer_utils.write_model(model, str(dst))

"""The integer type of a full-int8 .tflite model's input and output tensors.

litert-torch writes int8 IO. Older accelerators and camera pipelines want uint8 (the Edge TPU
toolchain's classic models, pycoral's examples): the same scale, the zero-point shifted by 128.
`to_uint8` puts a QUANTIZE op (an exact int8 <-> uint8 requantize in TFLite) at each int8
input and output, as TensorFlow's modify_model_interface does, editing the flatbuffer with the
schema that ships with ai-edge-litert.
"""

from __future__ import annotations

import copy
from pathlib import Path

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


def _opcode(model, builtin: int, fb) -> int:
    """Index of `builtin` in the model's operator codes, added (version 2: int8 operands) when missing."""
    for i, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            code.version = max(code.version, 2)
            return i
    code = fb.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), 2
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1

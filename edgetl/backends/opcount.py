"""Is an "int8" artifact really int8? Count its quantized and float compute ops, from the file itself."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# Ops that only move or describe data: they carry no arithmetic worth counting.
ONNX_BOOKKEEPING = {"QuantizeLinear", "DequantizeLinear", "Constant", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
                    "Transpose", "Shape", "Gather", "Concat", "Identity", "Cast", "DynamicQuantizeLinear"}
# onnxruntime's integer kernels (dynamic quantization): int8 arithmetic by their type alone
ONNX_INTEGER = {"MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearMatMul",
                "QLinearConv", "QGemm", "QAttention"}
TFLITE_BOOKKEEPING = {"QUANTIZE", "DEQUANTIZE", "RESHAPE", "TRANSPOSE", "SQUEEZE", "PAD", "PADV2", "CONCATENATION",
                      "DELEGATE"}
INTEGER_TYPES = {"int8", "uint8", "int16", "uint16", "int32", "int64"}  # tflite_graph's names for them
WEIGHTED = {"Conv", "Gemm", "MatMul", "ConvTranspose", "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED",
            "TRANSPOSE_CONV", "BATCH_MATMUL", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul",
            "MatMulIntegerToFloat", "QLinearMatMul", "QLinearConv", "QGemm", "QAttention"}


@dataclass(frozen=True)
class OpCount:
    int8: Counter = field(default_factory=Counter)
    float: Counter = field(default_factory=Counter)
    float_nodes: tuple[str, ...] = ()

    @property
    def weighted_float(self) -> int:
        return sum(n for op, n in self.float.items() if op in WEIGHTED)

    @property
    def weighted_int8(self) -> int:
        return sum(n for op, n in self.int8.items() if op in WEIGHTED)

    def to_dict(self) -> dict:
        return {"int8_ops": sum(self.int8.values()), "float_ops": sum(self.float.values()),
                "int8_by_type": dict(self.int8), "float_by_type": dict(self.float),
                "float_nodes": list(self.float_nodes)}


def count_onnx(path: Path) -> OpCount:
    """QDQ ONNX: an op runs in int8 when every input comes through a DequantizeLinear and its output
    goes straight into a QuantizeLinear (the pattern onnxruntime fuses into an integer kernel)."""
    from edgetl.backends.onnx_graph import load_onnx

    model = load_onnx(path)
    produced_by = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    constants = {init.name for init in model.graph.initializer}
    int8, flt, float_nodes = Counter(), Counter(), []
    for node in model.graph.node:
        if node.op_type in ONNX_BOOKKEEPING:
            continue
        if node.op_type in ONNX_INTEGER:
            int8[node.op_type] += 1
            continue
        data_inputs = [i for i in node.input if i and i not in constants]
        weights = [i for i in node.input[1:2] if i] if node.op_type in WEIGHTED else []
        sources = [produced_by.get(i) for i in data_inputs + weights]
        users = [u for o in node.output for u in consumers.get(o, [])]
        quantized_in = sources and all(s is not None and s.op_type == "DequantizeLinear" for s in sources)
        quantized_out = users and all(u.op_type == "QuantizeLinear" for u in users)
        if quantized_in and quantized_out:
            int8[node.op_type] += 1
        else:
            flt[node.op_type] += 1
            float_nodes.append(node.name)
    return OpCount(int8, flt, tuple(float_nodes))


def count_tflite(path: Path) -> OpCount:
    """TFLite: an op runs in int8 when its output tensors are all of an integer type (the file as written,
    read by `tflite_graph`: no interpreter, no delegate)."""
    from edgetl.backends import tflite_graph

    int8, flt, float_nodes = Counter(), Counter(), []
    for op in tflite_graph.read(path).ops:
        if op.op in TFLITE_BOOKKEEPING:
            continue
        if all(t.dtype in INTEGER_TYPES for t in op.outputs):
            int8[op.op] += 1
        else:
            flt[op.op] += 1
            float_nodes.append(op.name)
    return OpCount(int8, flt, tuple(float_nodes))


def count(path: Path) -> OpCount:
    return count_onnx(path) if Path(path).suffix == ".onnx" else count_tflite(path)

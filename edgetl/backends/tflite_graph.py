"""A .tflite file's op list as plain data, read from its flatbuffer with the schema that ships
with ai-edge-litert (no interpreter, no delegate: the file as a compiler would see it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetl.errors import ConfigError
from edgetl.runtime.engines import table

# TensorType enum values of the TFLite schema, by name
TYPE_NAMES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 5: "string", 6: "bool", 7: "int16",
              9: "int8", 10: "float64", 17: "uint16"}


@dataclass(frozen=True)
class Tensor:
    index: int
    name: str
    dtype: str
    shape: tuple[int, ...]
    dynamic: bool  # its shape signature has an unknown (-1) dimension
    constant: bool  # it has data in the file (weights, bias, axes, paddings)
    data: np.ndarray | None = None  # small int32/int64 constants (axes, paddings), for the checks that need them
    scale: float | None = None  # per-tensor quantization (first channel's for per-channel weights)
    zero_point: int | None = None


@dataclass(frozen=True)
class Op:
    index: int
    op: str  # builtin name, e.g. CONV_2D (CUSTOM ops: their custom code)
    version: int
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    fused_activation: str | None = None

    @property
    def name(self) -> str:
        return f"{self.op}#{self.index}"


@dataclass(frozen=True)
class Graph:
    ops: tuple[Op, ...]
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]


def _builtin_names(fb) -> dict[int, str]:
    return {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}


def _activation_names(fb) -> dict[int, str]:
    return {v: k for k, v in vars(fb.ActivationFunctionType).items() if not k.startswith("_")}


def read(path: Path) -> Graph:
    """The ops of the first subgraph, in execution order, with their tensors."""
    try:
        from ai_edge_litert import schema_py_generated as fb
        from ai_edge_litert.tools import flatbuffer_utils
    except ImportError:
        raise ConfigError("reading .tflite files needs ai-edge-litert",
                          f"pip install 'edgetl[{table.for_suffix('.tflite').extra}]'") from None
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8 or head[4:8] != b"TFL3":
        raise ConfigError(f"{path} is not a valid TFLite model (no TFLite file identifier)",
                          "pass a .tflite file written by a TFLite converter") from None
    try:
        model = flatbuffer_utils.read_model(str(path))
        graph = model.subgraphs[0]
        _ = [(op.opcodeIndex, op.inputs, op.outputs) for op in graph.operators]
    except Exception:  # the flatbuffer library raises anything on a damaged file
        raise ConfigError(f"{path} is not a valid TFLite model (truncated or damaged)",
                          "pass a .tflite file written by a TFLite converter") from None
    builtins, activations = _builtin_names(fb), _activation_names(fb)

    def tensor(i: int) -> Tensor:
        t = graph.tensors[i]
        buffer = model.buffers[t.buffer] if t.buffer < len(model.buffers) else None
        raw = getattr(buffer, "data", None)
        constant = raw is not None and len(raw) > 0
        dtype = TYPE_NAMES.get(t.type, f"type{t.type}")
        data = None
        if constant and dtype in ("int32", "int64") and len(raw) <= 256:
            data = np.frombuffer(bytes(np.asarray(raw, np.uint8)), dtype=dtype)
        signature = t.shapeSignature if t.shapeSignature is not None else t.shape
        name = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
        shape = tuple(int(d) for d in (t.shape if t.shape is not None else ()))
        q = t.quantization
        scales = list(q.scale) if q is not None and q.scale is not None else []
        zeros = list(q.zeroPoint) if q is not None and q.zeroPoint is not None else []
        return Tensor(i, name, dtype, shape, any(int(d) < 0 for d in signature), constant, data,
                      float(scales[0]) if scales else None, int(zeros[0]) if zeros else None)

    ops = []
    for index, op in enumerate(graph.operators):
        code = model.operatorCodes[op.opcodeIndex]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        name = builtins.get(builtin, f"BUILTIN_{builtin}")
        if name == "CUSTOM":
            custom = code.customCode.decode() if isinstance(code.customCode, bytes) else str(code.customCode)
            name = f"CUSTOM:{custom}"
        options = op.builtinOptions
        fused = getattr(options, "fusedActivationFunction", None)
        ops.append(Op(index, name, int(code.version),
                      tuple(tensor(i) for i in (op.inputs if op.inputs is not None else []) if i >= 0),
                      tuple(tensor(i) for i in (op.outputs if op.outputs is not None else []) if i >= 0),
                      activations.get(fused) if fused else None))
    return Graph(tuple(ops), tuple(tensor(i) for i in graph.inputs), tuple(tensor(i) for i in graph.outputs))

"""LiteRT (TFLite) engine: ai_edge_litert, or tflite_runtime where that is what the device has."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetl.runtime.engines import Engine, TensorSpec, missing_engine, table

ROW = table.of_module(__name__)


def interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise missing_engine("LiteRT", ROW.extra) from None
    return Interpreter


def _spec(detail: dict) -> TensorSpec:
    scale, zero_point = detail["quantization"]
    quantized = scale != 0.0
    return TensorSpec(detail["name"], tuple(int(d) for d in detail["shape"]), np.dtype(detail["dtype"]).name,
                      float(scale) if quantized else None, int(zero_point) if quantized else None)


class LiteRTEngine(Engine):
    name = ROW.name

    def __init__(self, path: Path, *, threads: int | None = None, delegates: list | None = None):
        interpreter = interpreter_class()
        self.interpreter = interpreter(model_path=str(path), num_threads=threads,
                                       experimental_delegates=delegates)
        self.interpreter.allocate_tensors()
        (i,), (o,) = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        self._in, self._out = i["index"], o["index"]
        self.input, self.output = _spec(i), _spec(o)

    def _invoke(self, x: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self._in, x)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._out)  # a copy already (LiteRT's get_tensor)

    def _close(self) -> None:
        self.interpreter = None  # its tensors and delegates go with the last reference


ENGINE = LiteRTEngine

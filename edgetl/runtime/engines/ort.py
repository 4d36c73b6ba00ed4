"""ONNX Runtime engine (CPU execution provider)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetl.runtime.engines import Engine, TensorSpec, missing_engine, table

ROW = table.of_module(__name__)

_ORT_TYPES = {"tensor(float)": "float32", "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int64)": "int64",
              "tensor(int32)": "int32",
              "tensor(float16)": "float16"}


class OrtEngine(Engine):
    name = ROW.name

    def __init__(self, path: Path, *, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise missing_engine(ROW.name, ROW.extra) from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        (i,), (o,) = self.session.get_inputs(), self.session.get_outputs()
        self.input = TensorSpec(i.name, tuple(d if isinstance(d, int) else -1 for d in i.shape),
                                _ORT_TYPES.get(i.type, i.type))
        self.output = TensorSpec(o.name, tuple(d if isinstance(d, int) else -1 for d in o.shape),
                                 _ORT_TYPES.get(o.type, o.type))

    def _invoke(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output.name], {self.input.name: x})[0]

    def _close(self) -> None:
        self.session = None  # onnxruntime frees the session's memory with its last reference


ENGINE = OrtEngine

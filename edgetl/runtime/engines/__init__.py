"""Inference engines behind one small interface, chosen by the artifact's file type.

An engine runs one model file: `invoke` feeds the model's own input tensor (int8 for a
full-integer model) and returns its raw output; `run` takes float input and returns float
output, quantizing the input and dequantizing the output here, in one place. The engine
libraries are imported lazily: a missing one is an error naming the pip extra to install.
numpy only otherwise: this package is imported on the device.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from edgetl.errors import ConfigError


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as the engine sees it; scale/zero_point are set when it is quantized."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float | None = None
    zero_point: int | None = None

    @cached_property  # asked on every frame
    def quantized(self) -> bool:
        return self.scale is not None and np.issubdtype(np.dtype(self.dtype), np.integer)

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                "scale": self.scale, "zero_point": self.zero_point}


def quantize(x: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """float -> the tensor's integer type with its affine scale/zero-point (round half to even, clipped)."""
    info = np.iinfo(np.dtype(spec.dtype))
    q = np.divide(x, np.float32(spec.scale), dtype=np.float32)  # one new array, then in place: per frame
    np.rint(q, out=q)
    q += np.float32(spec.zero_point)
    np.clip(q, info.min, info.max, out=q)
    return q.astype(spec.dtype)


def dequantize(q: np.ndarray, spec: TensorSpec) -> np.ndarray:
    return (q.astype(np.float32) - np.float32(spec.zero_point)) * np.float32(spec.scale)


class Engine:
    """Base: subclasses set `input`/`output` and implement `invoke` for one batch of the model's own size."""

    name = "engine"
    input: TensorSpec
    output: TensorSpec

    def invoke(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @property
    def batch(self) -> int:
        return self.input.shape[0] if self.input.shape and self.input.shape[0] > 0 else 1

    def run(self, x: np.ndarray) -> np.ndarray:
        """Float input of any batch size -> float output, in the model's batch size per invoke."""
        x = np.asarray(x, np.float32)
        if self.input.quantized:
            x = quantize(x, self.input)
        else:
            x = x.astype(self.input.dtype, copy=False)
        step = self.batch
        if len(x) == step:  # the common case on a device (one frame, batch 1): no copies
            y = self.invoke(x)
            return dequantize(y, self.output) if self.output.quantized else y.astype(np.float32, copy=False)
        outs = []
        for start in range(0, len(x), step):
            chunk = x[start : start + step]
            short = step - len(chunk)
            if short:  # static batch: pad the last chunk, drop the padding's outputs
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], short, axis=0)])
            outs.append(self.invoke(chunk)[: step - short])
        y = np.concatenate(outs) if outs else np.zeros((0,) + tuple(self.output.shape[1:]), np.float32)
        return dequantize(y, self.output) if self.output.quantized else y.astype(np.float32, copy=False)


ENGINES = {".onnx": "onnxruntime", ".tflite": "litert"}  # by model file type


def load(path: str | Path, *, threads: int | None = None) -> Engine:
    """The engine for a model file, by its type: .onnx -> onnxruntime, .tflite -> LiteRT."""
    path = Path(path)
    if path.suffix not in ENGINES:
        raise ConfigError(f"no engine runs {path.name}", f"model files are one of: {', '.join(ENGINES)}")
    if not path.is_file():
        raise ConfigError(f"model file {path} does not exist", "export the run first: `edgetl export RUN`")
    return open_engine(ENGINES[path.suffix], path, threads=threads)


EXTRAS = {"onnxruntime": "runtime-ort", "litert": "runtime-litert", "edgetpu": "runtime-edgetpu",
          "tensorrt": "runtime-tensorrt"}


def open_engine(name: str, path: str | Path, *, threads: int | None = None, precision: str = "fp32",
                bundle_dir: Path | None = None) -> Engine:
    """The engine a bundle's manifest names, on its model file (TensorRT: built or taken from the
    bundle or the cache for this machine, at the manifest's precision)."""
    path = Path(path)
    if name == "onnxruntime":
        from edgetl.runtime.engines.ort import OrtEngine

        return OrtEngine(path, threads=threads)
    if name == "litert":
        from edgetl.runtime.engines.litert import LiteRTEngine

        return LiteRTEngine(path, threads=threads)
    if name == "edgetpu":
        from edgetl.runtime.engines.edgetpu import EdgeTPUEngine

        return EdgeTPUEngine(path, threads=threads)
    if name == "tensorrt":
        from edgetl.runtime.engines.tensorrt import TensorRTEngine

        return TensorRTEngine(path, precision, bundle_dir=bundle_dir)
    raise ConfigError(f"unknown engine {name!r} in the bundle", f"one of: {', '.join(EXTRAS)}; upgrade edgetl")


def missing_engine(module: str, extra: str) -> ConfigError:
    return ConfigError(f"the {module} engine is not installed", f"pip install 'edgetl[{extra}]'")


def latency_ms(engine: Engine, *, warmup: int = 10, runs: int = 50) -> dict[str, float]:
    """Host latency of one invoke at the model's own input (p50/p90, ms), after a warm-up."""
    x = np.zeros(engine.input.shape, engine.input.dtype)
    for _ in range(warmup):
        engine.invoke(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        engine.invoke(x)
        times.append((time.perf_counter() - t0) * 1000.0)
    return {"p50_ms": round(float(np.percentile(times, 50)), 3), "p90_ms": round(float(np.percentile(times, 90)), 3)}

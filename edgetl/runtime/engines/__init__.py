"""Inference engines behind one small interface, one module per engine (see `table`).

An engine runs one model file: `invoke` feeds the model's own input tensor (int8 for a
full-integer model, uint8 frames for a model that takes them) and returns its raw output; `run`
takes that input or float, and returns float output, checking its shape once and quantizing a
float input and dequantizing the output here, in one place. `close` (or leaving a `with`
block) frees what the engine holds. The engine libraries are imported lazily: a missing one
is an error naming the pip extra to install. numpy only otherwise: this package is imported on the device.
"""

from __future__ import annotations

import importlib
import time
from functools import cached_property
from pathlib import Path

import numpy as np

from edgetl.errors import ConfigError
from edgetl.runtime.engines import table
from edgetl.runtime.records import Record, record


@record
class TensorSpec(Record):
    """One model input or output as the engine sees it (and as a bundle's manifest lists it);
    scale/zero_point are set when it is quantized."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float | None = None
    zero_point: int | None = None

    @cached_property  # asked on every frame
    def quantized(self) -> bool:
        return self.scale is not None and np.issubdtype(np.dtype(self.dtype), np.integer)


def quantize(x: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """float -> the tensor's integer type with its affine scale/zero-point (round half to even, clipped)."""
    info = np.iinfo(np.dtype(spec.dtype))
    q = np.divide(x, np.float32(spec.scale), dtype=np.float32)  # one new array, then in place: per frame
    np.rint(q, out=q)
    q += np.float32(spec.zero_point)
    np.clip(q, info.min, info.max, out=q)
    return q.astype(spec.dtype)


def dequantize(q: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """The tensor's integers as float32: one new array, scaled in place (per frame, so two passes)."""
    x = np.subtract(q, np.float32(spec.zero_point), dtype=np.float32)
    x *= np.float32(spec.scale)
    return x


class Engine:
    """Base: a subclass sets `input`/`output` and implements `_invoke` (one batch of the model's own size)
    and `_close` (free what it holds); `invoke`, `run` and `close` here check and convert, in one place.
    An engine is a context manager: `with open_engine(...) as engine:` closes it on the way out."""

    name = "engine"
    input: TensorSpec
    output: TensorSpec
    closed = False

    @classmethod
    def open(cls, path: Path, *, threads: int | None = None, precision: str = "fp32",
             bundle_dir: Path | None = None) -> Engine:
        """The one way `open_engine` makes any engine; an engine that needs more than the file overrides it."""
        return cls(path, threads=threads)

    def _invoke(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _close(self) -> None:
        """Free the engine's resources (a session, an interpreter, device buffers)."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Free the engine's resources now; using it afterwards is an error. Closing twice is fine."""
        if not self.closed:
            self.closed = True
            self._close()

    def _refuse_closed(self) -> ConfigError:
        return ConfigError(f"the {self.name} engine is closed", "open the model again (Model.load / engines.load)")

    @property
    def batch(self) -> int:
        return self.input.shape[0] if self.input.shape and self.input.shape[0] > 0 else 1

    def invoke(self, x: np.ndarray) -> np.ndarray:
        """The model's own input tensor (its dtype, its batch size) -> its raw output."""
        if self.closed:
            raise self._refuse_closed()
        return self._invoke(x)

    @cached_property
    def _dtype(self) -> np.dtype:
        return np.dtype(self.input.dtype)

    @cached_property
    def _takes_float(self) -> bool:
        """Float input is what the model takes, or what `run` quantizes to its integer input."""
        return self._dtype.kind == "f" or self.input.quantized

    @cached_property
    def _takes(self) -> str:
        """What `run` takes, as the errors say it: "(N, 3, 64, 64) float32" ("?" for a dynamic dimension)."""
        dims = ", ".join(["N"] + ["?" if d <= 0 else str(d) for d in self.input.shape[1:]])
        kinds = ("float32" if self._dtype.kind == "f" else
                 f"float32 or {self._dtype.name}" if self.input.quantized else self._dtype.name)
        return f"({dims}) {kinds}"

    @cached_property
    def _fixed_tail(self) -> tuple[int, ...] | None:
        """The input's shape after the batch dimension when all of it is fixed (one tuple compare per frame)."""
        tail = tuple(self.input.shape[1:])
        return tail if all(d > 0 for d in tail) else None

    def _fits(self, tail: tuple[int, ...]) -> bool:
        """A shape without its batch dimension against the input's; a dynamic dimension takes any size."""
        want = self.input.shape[1:]
        return len(tail) == len(want) and all(d <= 0 or n == d for n, d in zip(tail, want, strict=True))

    def _check_input(self, x: np.ndarray) -> None:
        """Refuse, before any invoke, input the model would take wrongly: another shape (all but the batch
        dimension), or values of another kind: the model's own integer type is taken as it is (uint8
        frames for a model that takes them), floats only where the model takes or quantizes floats
        (an integer array for a float model is most likely raw pixels)."""
        fixed, rank = self._fixed_tail, len(self.input.shape)
        fits = x.ndim == rank and (x.shape[1:] == fixed if fixed is not None else self._fits(x.shape[1:]))
        if fits and (x.dtype == self._dtype or (x.dtype.kind == "f" and self._takes_float)):
            return
        if fits and self._dtype.kind in "iu" and not self.input.quantized:
            hint = f"pass the frames as {self._dtype.name} pixels, not normalised (Model.predict does)"
        elif fits:
            hint = ("normalize the pixels first (PreprocessSpec.normalize; Model.predict does)"
                    if x.dtype.kind in "iub" else "pass a float array")
        elif x.ndim == rank - 1 and self._fits(x.shape):
            hint = "add the batch dimension: x[None]"
        elif x.ndim == rank and sorted(x.shape[1:]) == sorted(self.input.shape[1:]):
            hint = "transpose it to the model's layout (NCHW <-> NHWC)"
        else:
            hint = "resize and lay it out as the bundle's preprocess.json says (Model.predict does)"
        raise ConfigError(f"the model takes {self._takes}, got {tuple(x.shape)} {x.dtype}", hint)

    def _output(self, y: np.ndarray) -> np.ndarray:
        return dequantize(y, self.output) if self.output.quantized else y.astype(np.float32, copy=False)

    def prepare(self, x: np.ndarray) -> np.ndarray:
        """`x` checked and as the model's own input tensor (what `invoke` takes): its own integer type as it
        is (uint8 frames), float quantized here for an integer input."""
        x = np.asarray(x)
        self._check_input(x)
        if x.dtype != self._dtype:
            x = quantize(x, self.input) if self.input.quantized else x.astype(self._dtype)
        return x

    def run(self, x: np.ndarray) -> np.ndarray:
        """Input of any batch size (see `prepare`) -> float output, in the model's batch size per invoke."""
        if self.closed:
            raise self._refuse_closed()
        x = self.prepare(x)
        step = self.batch
        if len(x) == step:  # the common case on a device (one frame, batch 1): no copies
            return self._output(self._invoke(x))
        outs = []
        for start in range(0, len(x), step):
            chunk = x[start : start + step]
            short = step - len(chunk)
            if short:  # static batch: pad the last chunk, drop the padding's outputs
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], short, axis=0)])
            outs.append(self._invoke(chunk)[: step - short])
        y = np.concatenate(outs) if outs else np.zeros((0,) + tuple(self.output.shape[1:]), self.output.dtype)
        return self._output(y)


def load(path: str | Path, *, threads: int | None = None) -> Engine:
    """The engine for a model file, by its type: .onnx -> onnxruntime, .tflite -> LiteRT."""
    path = Path(path)
    if path.suffix not in table.SUFFIXES:
        raise ConfigError(f"no engine runs {path.name}", f"model files are one of: {', '.join(table.SUFFIXES)}")
    row = table.for_suffix(path.suffix)
    if not path.is_file():
        raise ConfigError(f"model file {path} does not exist", "export the run first: `edgetl export RUN`")
    return open_engine(row.name, path, threads=threads)


def open_engine(name: str, path: str | Path, *, threads: int | None = None, precision: str = "fp32",
                bundle_dir: Path | None = None) -> Engine:
    """The engine a bundle's manifest names, on its model file (TensorRT: built or taken from the
    bundle or the cache for this machine, at the manifest's precision)."""
    row = table.row(name)
    engine_class = importlib.import_module(row.runtime).ENGINE
    return engine_class.open(Path(path), threads=threads, precision=precision, bundle_dir=bundle_dir)


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

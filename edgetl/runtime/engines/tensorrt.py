"""TensorRT engines from the bundle's ONNX, built where TensorRT runs and cached per machine.

A serialized engine is only valid for the TensorRT version and GPU (compute capability) that
built it, so the cache is keyed by both, plus the ONNX file's hash and the precision. A cached
engine whose key does not match this machine is stale: it is rebuilt, never loaded. The build
uses TensorRT's ONNX parser; int8 comes from the QDQ nodes in the ONNX (explicit
quantization), with fp16 allowed for the layers left float. Imports numpy and tensorrt only.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgetl.errors import ConfigError
from edgetl.runtime.atomic import write_file
from edgetl.runtime.engines import Engine, TensorSpec, missing_engine, table

ROW = table.of_module(__name__)
WORKSPACE_BYTES = 1 << 30  # 1 GiB: TensorRT's tactic scratch; Jetsons share it with the CPU
PRECISIONS = ROW.precisions


def import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise missing_engine("TensorRT", ROW.extra) from None
    return tensorrt


def compute_capability() -> str:
    """This machine's GPU compute capability, e.g. "8.7" (Orin), through the CUDA runtime
    (cuda-python, which TensorRT's own samples use), else nvidia-smi."""
    try:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart
        attrs = cudart.cudaDeviceAttr
        _, major = cudart.cudaDeviceGetAttribute(attrs.cudaDevAttrComputeCapabilityMajor, 0)
        _, minor = cudart.cudaDeviceGetAttribute(attrs.cudaDevAttrComputeCapabilityMinor, 0)
        return f"{major}.{minor}"
    except ImportError:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True)
        return out.stdout.split()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        raise ConfigError("cannot tell this GPU's compute capability",
                          "pip install cuda-python (or put nvidia-smi on PATH)") from None


@dataclass(frozen=True)
class EngineKey:
    """What a serialized engine is valid for."""

    tensorrt: str
    compute_capability: str
    onnx_sha256: str
    precision: str

    @property
    def folder(self) -> str:
        return f"{self.onnx_sha256[:16]}-{self.precision}"


def cache_dir() -> Path:
    return Path(os.environ.get("EDGETL_CACHE", Path.home() / ".cache" / "edgetl")) / "tensorrt"


def key_for(onnx_path: Path, precision: str, trt=None, capability: str | None = None) -> EngineKey:
    trt = trt or import_tensorrt()
    digest = hashlib.sha256(Path(onnx_path).read_bytes()).hexdigest()
    return EngineKey(trt.__version__, capability or compute_capability(), digest, precision)


def parse_onnx(trt, data: bytes):
    """(builder, network, parser, parsed?) for ONNX bytes, with an explicit-batch network."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # TensorRT 8.x; implied (and deprecated) in 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    return builder, network, parser, bool(parser.parse(data))


def build(onnx_path: Path, precision: str, *, trt=None, timing_cache: Path | None = None,
          workspace: int = WORKSPACE_BYTES) -> bytes:
    """A serialized engine for `onnx_path` at `precision`; the timing cache is read and updated."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown TensorRT precision {precision!r}", f"one of: {', '.join(PRECISIONS)}")
    trt = trt or import_tensorrt()
    builder, network, parser, ok = parse_onnx(trt, Path(onnx_path).read_bytes())
    if not ok:
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        uint8 = "UINT8" in errors.upper()
        raise ConfigError(f"TensorRT's ONNX parser refused {onnx_path}: {errors or 'no reason given'}",
                          "TensorRT before 8.5 takes no uint8 input: export with --input float" if uint8 else
                          "check the model with `polygraphy inspect model` or re-export it")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # int8: the layers the QDQ model left float may run fp16
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization: scales come from the QDQ nodes
    cache_bytes = timing_cache.read_bytes() if timing_cache is not None and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ConfigError(f"TensorRT could not build an engine for {onnx_path} ({precision})",
                          "see TensorRT's log above; try --precision fp16 or a larger workspace")
    if timing_cache is not None:
        write_file(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def cached_engine(onnx_path: Path, precision: str, *, cache: Path | None = None, trt=None,
                  capability: str | None = None) -> tuple[Path, bool]:
    """(engine file, built now?) for this machine: the cached one when its key matches this TensorRT
    and GPU exactly, else a fresh build written over the stale one."""
    trt = trt or import_tensorrt()
    key = key_for(onnx_path, precision, trt, capability)
    folder = (cache or cache_dir()) / key.folder
    engine, meta = folder / "engine.plan", folder / "key.json"
    if engine.is_file() and meta.is_file():
        try:
            if EngineKey(**json.loads(meta.read_text())) == key:
                return engine, False
        except (ValueError, TypeError):
            pass  # an unreadable key is a stale key
    data = build(onnx_path, precision, trt=trt, timing_cache=(cache or cache_dir()) / f"timing-{key.tensorrt}-"
                 f"sm{key.compute_capability}.cache")
    write_file(engine, data)
    write_file(meta, json.dumps(asdict(key), indent=2).encode())
    return engine, True


def import_cudart():
    """The CUDA runtime through cuda-python (what TensorRT's own Python samples use)."""
    try:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart
    except ImportError:
        raise missing_engine("CUDA runtime (cuda-python)", ROW.extra) from None
    return cudart


def _check(result):
    """cuda-python returns (error, *values); an error is raised, the values returned."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise ConfigError(f"CUDA call failed with error {int(err)}", "check the GPU with `tegrastats` / nvidia-smi")
    return values[0] if len(values) == 1 else values


def bundled_engine(bundle_dir: Path | None, onnx_path: Path, precision: str, trt, capability: str) -> Path | None:
    """An engine built at compile time and shipped in the bundle, if its key is exactly this machine's."""
    if bundle_dir is None:
        return None
    key = key_for(onnx_path, precision, trt, capability)
    folder = Path(bundle_dir) / "engine" / key.folder
    try:
        shipped = EngineKey(**json.loads((folder / "key.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return folder / "engine.plan" if shipped == key and (folder / "engine.plan").is_file() else None


class TensorRTEngine(Engine):
    """A TensorRT engine behind edgetl's engine interface (`input`, `output`, `invoke`, `close`): built from
    the bundle's ONNX on first load (or taken from the bundle or cache when its key matches), with one
    device buffer per IO tensor and one CUDA stream (TensorRT 8.5+/10 tensor-address API)."""

    name = ROW.name

    def __init__(self, onnx_path: Path, precision: str, *, bundle_dir: Path | None = None, cache: Path | None = None,
                 trt=None, cudart=None):
        self.trt = trt or import_tensorrt()
        self.cudart = cudart or import_cudart()
        self.runtime = self.engine = self.context = self.stream = None
        self.buffers = {}
        capability = compute_capability()
        plan = bundled_engine(bundle_dir, onnx_path, precision, self.trt, capability)
        if plan is None:
            plan, _ = cached_engine(onnx_path, precision, cache=cache, trt=self.trt, capability=capability)
        self.runtime = self.trt.Runtime(self.trt.Logger(self.trt.Logger.WARNING))  # outlives its engine
        self.engine = self.runtime.deserialize_cuda_engine(Path(plan).read_bytes())
        if self.engine is None:  # a key that matched but an engine TensorRT refuses: rebuild, never guess
            Path(plan).unlink(missing_ok=True)
            plan, _ = cached_engine(onnx_path, precision, cache=cache, trt=self.trt, capability=capability)
            self.engine = self.runtime.deserialize_cuda_engine(Path(plan).read_bytes())
        try:
            self.context = self.engine.create_execution_context()
            self.stream = _check(self.cudart.cudaStreamCreate())
            specs = {}
            for i in range(self.engine.num_io_tensors):
                name = self.engine.get_tensor_name(i)
                shape = tuple(int(d) for d in self.engine.get_tensor_shape(name))
                dtype = np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name)))
                mode = "input" if self.engine.get_tensor_mode(name) == self.trt.TensorIOMode.INPUT else "output"
                self.buffers[name] = _check(self.cudart.cudaMalloc(int(np.prod(shape)) * dtype.itemsize))
                self.context.set_tensor_address(name, int(self.buffers[name]))
                specs.setdefault(mode, TensorSpec(name, shape, dtype.name))
            self.input, self.output = specs["input"], specs["output"]
        except BaseException:  # a half-made engine frees what it got
            self.close()
            raise

    @classmethod
    def open(cls, path: Path, *, threads: int | None = None, precision: str = "fp32",
             bundle_dir: Path | None = None) -> TensorRTEngine:
        return cls(path, precision, bundle_dir=bundle_dir)

    def _invoke(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=self.input.dtype)
        out = np.empty(self.output.shape, self.output.dtype)
        kind = self.cudart.cudaMemcpyKind
        _check(self.cudart.cudaMemcpyAsync(self.buffers[self.input.name], x.ctypes.data, x.nbytes,
                                           kind.cudaMemcpyHostToDevice, self.stream))
        if not self.context.execute_async_v3(int(self.stream)):
            raise ConfigError("TensorRT could not run the engine", "check the device's log (dmesg, tegrastats)")
        _check(self.cudart.cudaMemcpyAsync(out.ctypes.data, self.buffers[self.output.name], out.nbytes,
                                           kind.cudaMemcpyDeviceToHost, self.stream))
        _check(self.cudart.cudaStreamSynchronize(self.stream))
        return out

    def _close(self) -> None:
        """The execution context before its engine, the engine before its runtime (TensorRT's order), then
        the device buffers and the stream. Every invoke synchronized its stream: nothing is in flight."""
        self.context = None
        self.engine = None
        self.runtime = None
        for ptr in self.buffers.values():
            self.cudart.cudaFree(ptr)
        self.buffers = {}
        if self.stream is not None:
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None


ENGINE = TensorRTEngine

"""A small recording fake of the `tensorrt` Python module (no GPU or TensorRT exists here).

It implements only the calls edgetl makes, records them in `CALLS`, and "builds" an engine
whose bytes name the ONNX hash, precision flags and version, so tests can tell a fresh build
from a cached one. Its "engine" executes by running the parsed ONNX with onnxruntime, and
`FakeCudart` keeps "device" buffers in host memory, so the runtime's buffers, copies and shapes
are exercised end to end; what is still allocated (buffers, streams) and what was released
(`RELEASED`: contexts, engines, runtimes) can be looked at. It is a fake, named as one: nothing
here proves TensorRT itself works.
"""

from __future__ import annotations

import ctypes
import enum
import hashlib
import itertools
import types

import numpy as np

CALLS: list[tuple] = []
RELEASED: list[tuple[str, int]] = []  # ("context" | "engine" | "runtime", serial) as each is garbage-collected
PARSED: dict[str, bytes] = {}  # ONNX bytes by their hash prefix, as the "engine" names them
__version__ = "10.3.0"


class Logger:
    WARNING = 2

    def __init__(self, severity):
        self.severity = severity


class NetworkDefinitionCreationFlag(enum.IntEnum):
    EXPLICIT_BATCH = 0


class BuilderFlag(enum.IntEnum):
    FP16 = 0
    INT8 = 1


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


class _Error:
    def __init__(self, node, desc):
        self._node, self._desc = node, desc

    def node_name(self):
        return self._node

    def desc(self):
        return self._desc

    def __str__(self):
        return f"{self._node}: {self._desc}"


class OnnxParser:
    refuse: dict[str, str] = {}  # node name -> reason, for tests that want a parse failure

    def __init__(self, network, logger):
        self.network, self.errors = network, []

    def parse(self, data: bytes) -> bool:
        CALLS.append(("parse", hashlib.sha256(data).hexdigest()[:16]))
        PARSED[hashlib.sha256(data).hexdigest()[:16]] = data
        self.network.onnx = data
        self.errors = [_Error(n, d) for n, d in self.refuse.items()]
        return not self.errors

    @property
    def num_errors(self):
        return len(self.errors)

    def get_error(self, i):
        return self.errors[i]


class _TimingCache:
    def __init__(self, data: bytes):
        self.data = data or b"timing:"

    def serialize(self):
        return self.data + b"+"


class _Config:
    def __init__(self):
        self.flags, self.pools, self.cache = set(), {}, None

    def set_flag(self, flag):
        CALLS.append(("set_flag", flag.name))
        self.flags.add(flag.name)

    def set_memory_pool_limit(self, pool, size):
        CALLS.append(("set_memory_pool_limit", pool.name, size))
        self.pools[pool.name] = size

    def create_timing_cache(self, data: bytes):
        CALLS.append(("create_timing_cache", len(data)))
        return _TimingCache(data)

    def set_timing_cache(self, cache, ignore_mismatch):
        self.cache = cache
        return True

    def get_timing_cache(self):
        return self.cache


class Builder:
    def __init__(self, logger):
        self.logger = logger

    def create_network(self, flags):
        CALLS.append(("create_network", flags))
        return types.SimpleNamespace(onnx=b"")

    def create_builder_config(self):
        return _Config()

    def build_serialized_network(self, network, config):
        CALLS.append(("build_serialized_network", tuple(sorted(config.flags))))
        digest = hashlib.sha256(network.onnx).hexdigest()[:16]
        return f"engine:{digest}:{','.join(sorted(config.flags))}:{__version__}".encode()


class TensorIOMode(enum.IntEnum):
    INPUT = 0
    OUTPUT = 1


class DataType(enum.IntEnum):  # TensorRT's own values
    FLOAT = 0
    UINT8 = 5


_ONNX_TYPES = {"tensor(float)": DataType.FLOAT, "tensor(uint8)": DataType.UINT8}


def nptype(dtype):
    return {DataType.FLOAT: np.float32, DataType.UINT8: np.uint8}[dtype]


class _ExecutionContext:
    def __init__(self, engine):
        self.engine, self.addresses = engine, {}

    def __del__(self):
        RELEASED.append(("context", self.engine.serial))

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr

    def execute_async_v3(self, stream):
        CALLS.append(("execute_async_v3", stream))
        (i_name, i_shape), (o_name, o_shape) = self.engine.io
        dtype = np.dtype(nptype(self.engine.types[i_name]))
        x = np.frombuffer(ctypes.string_at(self.addresses[i_name], int(np.prod(i_shape)) * dtype.itemsize), dtype)
        y = self.engine.session.run(None, {i_name: x.reshape(i_shape)})[0].astype(np.float32)
        ctypes.memmove(self.addresses[o_name], y.ctypes.data, y.nbytes)
        return True


class _Engine:
    def __init__(self, onnx_bytes: bytes, serial: int):
        import onnxruntime

        self.serial = serial
        self.session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        i, o = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.io = [(i.name, tuple(i.shape)), (o.name, tuple(o.shape))]
        self.types = {i.name: _ONNX_TYPES[i.type], o.name: _ONNX_TYPES[o.type]}

    @property
    def num_io_tensors(self):
        return 2

    def get_tensor_name(self, i):
        return self.io[i][0]

    def get_tensor_shape(self, name):
        return dict(self.io)[name]

    def get_tensor_dtype(self, name):
        return self.types[name]

    def get_tensor_mode(self, name):
        return TensorIOMode.INPUT if name == self.io[0][0] else TensorIOMode.OUTPUT

    def create_execution_context(self):
        return _ExecutionContext(self)

    def __del__(self):
        RELEASED.append(("engine", self.serial))


class Runtime:
    serials = itertools.count()

    def __init__(self, logger):
        self.logger, self.serial = logger, next(self.serials)

    def __del__(self):
        RELEASED.append(("runtime", self.serial))

    def deserialize_cuda_engine(self, data: bytes):
        """The engine the bytes name, or None for bytes no build of this fake wrote (as TensorRT does)."""
        CALLS.append(("deserialize_cuda_engine", len(data)))
        parts = data.decode(errors="replace").split(":")
        if len(parts) != 4 or parts[0] != "engine" or parts[1] not in PARSED or parts[3] != __version__:
            return None
        return _Engine(PARSED[parts[1]], self.serial)


class FakeCudart:
    """cuda-python's runtime calls edgetl makes, with "device" memory in host buffers (a fake)."""

    class cudaMemcpyKind(enum.IntEnum):  # noqa: N801 - cuda-python's own name
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    def __init__(self):
        self.buffers, self.streams = {}, set()  # what is allocated now
        self.allocated = 0  # buffers allocated in all

    def cudaStreamCreate(self):  # noqa: N802
        stream = 7 + len(self.streams)
        self.streams.add(stream)
        return (0, stream)

    def cudaStreamDestroy(self, stream):  # noqa: N802
        self.streams.remove(stream)
        return (0,)

    def cudaMalloc(self, nbytes):  # noqa: N802
        buf = ctypes.create_string_buffer(nbytes)
        self.buffers[ctypes.addressof(buf)] = buf
        self.allocated += 1
        return (0, ctypes.addressof(buf))

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):  # noqa: N802
        ctypes.memmove(dst, src, nbytes)
        return (0,)

    def cudaStreamSynchronize(self, stream):  # noqa: N802
        return (0,)

    def cudaFree(self, ptr):  # noqa: N802
        self.buffers.pop(ptr, None)
        return (0,)

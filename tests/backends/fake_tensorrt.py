"""A small recording fake of the `tensorrt` Python module (no GPU or TensorRT exists here).

It implements only the calls edgetl makes, records them in `CALLS`, and "builds" an engine
whose bytes name the ONNX hash, precision flags and version, so tests can tell a fresh build
from a cached one. It is a fake, named as one: nothing here proves TensorRT itself works.
"""

from __future__ import annotations

import enum
import hashlib
import types

CALLS: list[tuple] = []
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

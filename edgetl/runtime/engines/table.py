"""The engines edgetl ships to, one row each: the only place an engine is named.

A row says what the engine runs (its artifact's file type, the precisions edgetl can ship to it),
the pip extra a device installs for it, and the two modules that implement it: the host backend
(`BACKEND`: check, compile) and the runtime engine (`ENGINE`: opens the model file on the device).
A new engine is a new row. Standard library only: the device imports it.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgetl.errors import ConfigError


@dataclass(frozen=True)
class EngineRow:
    name: str  # what targets, manifests and reports call it
    suffix: str  # its artifact's file type
    precisions: tuple[str, ...]  # what edgetl can ship to it
    extra: str  # the pip extra a device installs: pip install 'edgetl[EXTRA]'
    backend: str  # the host module whose BACKEND checks and compiles for it
    runtime: str  # the device module whose ENGINE opens its model file


# onnxruntime and LiteRT run the fp32 export or the int8 quantize result (edgetl makes no fp16
# ONNX/TFLite model), the Edge TPU int8 only. The first row of a file type is the one that opens
# such a file on any host (`for_suffix`).
ENGINES = (
    EngineRow("onnxruntime", ".onnx", ("fp32", "int8"), "runtime-ort",
              "edgetl.backends.onnxruntime", "edgetl.runtime.engines.ort"),
    EngineRow("litert", ".tflite", ("fp32", "int8"), "runtime-litert",
              "edgetl.backends.litert", "edgetl.runtime.engines.litert"),
    EngineRow("edgetpu", ".tflite", ("int8",), "runtime-edgetpu",
              "edgetl.backends.edgetpu", "edgetl.runtime.engines.edgetpu"),
    EngineRow("tensorrt", ".onnx", ("fp32", "fp16", "int8"), "runtime-tensorrt",
              "edgetl.backends.tensorrt", "edgetl.runtime.engines.tensorrt"),
)
NAMES = tuple(r.name for r in ENGINES)
SUFFIXES = tuple(dict.fromkeys(r.suffix for r in ENGINES))  # the model file types edgetl reads


def row(name: str) -> EngineRow:
    for r in ENGINES:
        if r.name == name:
            return r
    raise ConfigError(f"unknown engine {name!r}", f"known engines: {', '.join(NAMES)}")


def for_suffix(suffix: str) -> EngineRow:
    """The engine that opens a model file of this type on any host: .onnx -> onnxruntime, .tflite -> LiteRT."""
    for r in ENGINES:
        if r.suffix == suffix:
            return r
    raise ConfigError(f"no engine runs {suffix or 'suffix-less'} model files",
                      f"model files are one of: {', '.join(SUFFIXES)}")


def of_module(module: str) -> EngineRow:
    """The row a backend or runtime module implements (`of_module(__name__)`): how those modules know
    their engine's name and extra without spelling it again."""
    for r in ENGINES:
        if module in (r.backend, r.runtime):
            return r
    raise LookupError(f"{module} is no engine's backend or runtime module in edgetl.runtime.engines.table")

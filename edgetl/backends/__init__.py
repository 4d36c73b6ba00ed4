"""Host-side compile, one module per engine, one small interface, found through a registry.

A backend answers two questions about a source (a run dir, or a bare .onnx/.tflite model a
user brings): `check(source, target)` -> a `CompatibilityReport` (every op's verdict, the
first op that would not map, the ops that would fall back to the CPU), and
`compile(source, target, work)` -> the `Artifacts` a bundle carries. Targets are data
(`edgetl.targets`); backends are code.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

from edgetl import runfiles
from edgetl.errors import ConfigError
from edgetl.targets import Target

REGISTRY = {"onnxruntime": "edgetl.backends.onnxruntime", "litert": "edgetl.backends.litert",
            "edgetpu": "edgetl.backends.edgetpu", "tensorrt": "edgetl.backends.tensorrt"}
MODEL_SUFFIXES = (".onnx", ".tflite")


@dataclass(frozen=True)
class OpVerdict:
    index: int
    name: str  # the op's node name (ONNX) or TYPE#index (TFLite)
    op: str  # op type
    mapped: bool
    reason: str = ""

    def to_dict(self) -> dict:
        return {"index": self.index, "name": self.name, "op": self.op,
                "verdict": "mapped" if self.mapped else "unmapped", "reason": self.reason}


@dataclass(frozen=True)
class CompatibilityReport:
    """Whether a model runs on a target's engine, op by op, before anyone waits for a device."""

    target: str
    engine: str
    model: str
    ops: tuple[OpVerdict, ...]
    cpu_ops: tuple[str, ...] = ()  # ops that would run on the host CPU instead of the accelerator
    notes: tuple[str, ...] = ()
    source: str = "static"  # "static" (read from the file) or the compiler that reported it

    @classmethod
    def of(cls, target: str, engine: str, model, ops, notes=(), source: str = "static") -> CompatibilityReport:
        """The report for `ops` (in execution order, indexed from 0): the first unmapped op and every
        op after it run on the CPU, as an accelerator's compiler maps the graph up to there only."""
        ops = tuple(ops)
        first = next((op for op in ops if not op.mapped), None)
        cpu = tuple(op.name for op in ops[first.index:]) if first else ()
        return cls(target, engine, str(model), ops, cpu, tuple(notes), source)

    @property
    def first_unmapped(self) -> OpVerdict | None:
        return next((op for op in self.ops if not op.mapped), None)

    @property
    def fully_mapped(self) -> bool:
        return self.first_unmapped is None

    def summary(self) -> str:
        first = self.first_unmapped
        if first is None:
            return f"all {len(self.ops)} ops map to {self.engine}"
        return (f"{len(self.ops) - len(self.cpu_ops)} of {len(self.ops)} ops map to {self.engine}; the first that "
                f"does not is {first.name} ({first.reason}); {len(self.cpu_ops)} op(s) from there run on the CPU")

    def to_dict(self) -> dict:
        first = self.first_unmapped
        return {"target": self.target, "engine": self.engine, "model": self.model, "source": self.source,
                "fully_mapped": self.fully_mapped, "first_unmapped": None if first is None else first.name,
                "cpu_ops": list(self.cpu_ops), "ops": [op.to_dict() for op in self.ops], "notes": list(self.notes)}


@dataclass(frozen=True)
class Artifacts:
    """What a backend hands the bundle: the model file the device runs, and why this one."""

    engine: str  # the engine the device runs it with
    precision: str  # fp32 | fp16 | int8
    model: Path
    report: CompatibilityReport
    choice: str  # one line: why this precision and engine
    accuracy: dict | None = None  # top-1 figures recorded when the artifact was made
    extra: dict[str, Path] = field(default_factory=dict)  # more files for the bundle, by bundle name
    deferred: str | None = None  # work left for the device (e.g. the TensorRT engine build)


@dataclass(frozen=True)
class Source:
    """What to compile: a run dir (with its exports and quantized models), or a bare model file."""

    path: Path

    @classmethod
    def of(cls, path: str | Path) -> Source:
        path = Path(path)
        if path.is_dir():
            if not (path / "finetune.json").is_file():
                raise ConfigError(f"{path} is not a run dir (no finetune.json)",
                                  "pass a run dir written by `edgetl finetune`, or a .onnx/.tflite file")
            runfiles.check_run(path)  # a damaged labels/preprocess/finetune file: one line naming it
            return cls(path)
        if path.suffix not in MODEL_SUFFIXES:
            raise ConfigError(f"cannot compile {path}", "pass a run dir, or a .onnx or .tflite model file")
        if not path.is_file():
            raise ConfigError(f"model file {path} does not exist", "check the path")
        check_model_file(path)
        return cls(path)

    @property
    def is_run(self) -> bool:
        return self.path.is_dir()

    def model(self, fmt: str, precision: str) -> Path | None:
        """The run's model file in `fmt` at `precision` (fp32 export or int8 quantize), made if it can be."""
        if not self.is_run:
            return self.path if self.path.suffix == f".{fmt}" else None
        if precision == "int8":
            record = self.record("quantize", fmt)
            return self.path / "quantize" / fmt / record["file"] if record else None
        from edgetl.export import export, load_export

        return (load_export(self.path, fmt) or export(self.path, fmt)).backbone

    def record(self, stage: str, fmt: str) -> dict | None:
        """RUN/quantize/FMT/quantize.json or RUN/export/FMT/export.json, when the stage has run."""
        path = self.path / stage / fmt / f"{stage}.json"
        return runfiles.read_json(path, dict) if self.is_run and path.is_file() else None


def check_model_file(path: Path) -> None:
    """Refuse a .onnx or .tflite file that is not a readable model (truncated, or another kind of
    file with that name), with one line, before any backend looks at it."""
    if path.suffix == ".tflite":
        from edgetl.backends import tflite_graph

        tflite_graph.read(path)
    else:
        from edgetl.backends.onnxruntime import onnx_ops

        onnx_ops(path)


class Backend:
    """The interface every engine module implements (see litert.py for the shortest)."""

    name = "backend"

    def check(self, source: Source, target: Target) -> CompatibilityReport:
        raise NotImplementedError

    def compile(self, source: Source, target: Target, work: Path, *, allow_cpu_only: bool = False) -> Artifacts:
        raise NotImplementedError


def get(name: str) -> Backend:
    if name not in REGISTRY:
        raise ConfigError(f"backend {name!r} not available", f"available: {', '.join(REGISTRY)}")
    return importlib.import_module(REGISTRY[name]).BACKEND


def for_target(target: Target) -> Backend:
    """The target's preferred engine's backend."""
    return get(target.engine)

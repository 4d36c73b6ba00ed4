"""Host-side compile, one module per engine, one small interface, found through the engine table.

A backend answers two questions about a source (a run dir, or a bare .onnx/.tflite model a
user brings): `check(source, target)` -> a `CompatibilityReport` (every op's verdict, the
first op that would not map, the ops that would fall back to the CPU), and
`compile(source, target, work)` -> the `Artifacts` a bundle carries. Targets are data
(`edgetl.targets`); backends are code, one per row of `edgetl.runtime.engines.table`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from edgetl.errors import ConfigError
from edgetl.rundir import HEAD, QuantizeRecord, RunDir
from edgetl.runtime.engines import table
from edgetl.runtime.manifest import ExpectedAccuracy
from edgetl.runtime.preprocess import PreprocessSpec
from edgetl.targets import Target

MODEL_SUFFIXES = table.SUFFIXES


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
    ops: tuple[OpVerdict, ...]  # in execution order, indexed from 0
    notes: tuple[str, ...] = ()
    source: str = "static"  # "static" (read from the file) or the compiler that reported it

    @classmethod
    def of(cls, target: str, engine: str, model, ops, notes=(), source: str = "static") -> CompatibilityReport:
        return cls(target, engine, str(model), tuple(ops), tuple(notes), source)

    @cached_property
    def first_unmapped(self) -> OpVerdict | None:
        """The first op that does not map (found once): it and every op after it run on the CPU, as an
        accelerator's compiler maps the graph up to there only."""
        return next((op for op in self.ops if not op.mapped), None)

    @cached_property
    def cpu_ops(self) -> tuple[str, ...]:
        """The ops that would run on the host CPU instead of the accelerator."""
        first = self.first_unmapped
        return tuple(op.name for op in self.ops[first.index:]) if first else ()

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
    accuracy: ExpectedAccuracy | None = None  # top-1 figures recorded when the artifact was made
    extra: dict[str, Path] = field(default_factory=dict)  # more files for the bundle, by bundle name
    deferred: str | None = None  # work left for the device (e.g. the TensorRT engine build)


@dataclass(frozen=True)
class Source:
    """What to compile: a run dir (with its exports and quantized models), or a bare model file.

    `writes=False` (a dry run) never makes a missing export: it says how to make one instead."""

    path: Path
    writes: bool = True

    @classmethod
    def of(cls, path: str | Path, *, writes: bool = True) -> Source:
        path = Path(path)
        if path.is_dir():
            if not RunDir(path).is_run():
                raise ConfigError(f"{path} is not a run dir (no finetune.json)",
                                  "pass a run dir written by `edgetl finetune`, or a .onnx/.tflite file")
            RunDir(path).validate()  # a damaged labels/preprocess/finetune file: one line naming it
            return cls(path, writes)
        if path.suffix not in MODEL_SUFFIXES:
            raise ConfigError(f"cannot compile {path}", "pass a run dir, or a .onnx or .tflite model file")
        if not path.is_file():
            raise ConfigError(f"model file {path} does not exist", "check the path")
        check_model_file(path)
        return cls(path, writes)

    @property
    def is_run(self) -> bool:
        return self.path.is_dir()

    @property
    def run(self) -> RunDir:
        return RunDir(self.path)

    @property
    def is_text(self) -> bool:
        """A text run (its spec takes token ids; its tokenizer travels with every artifact)."""
        from edgetl.runtime.tokens import TextSpec

        return self.is_run and isinstance(self.run.spec, TextSpec)

    def tokenizer(self, fmt: str, precision: str) -> Path | None:
        """The tokenizer.json beside the artifact a bundle packs (text runs), else None."""
        from edgetl.runtime.tokens import TOKENIZER

        found = self.run.quantized(fmt) if precision == "int8" else self.run.exported(fmt)
        path = found.path / TOKENIZER if found is not None else None
        return path if path is not None and path.is_file() else None

    def quantized(self, fmt: str) -> QuantizeRecord | None:
        """The run's int8 result in `fmt` (RUN/quantize/FMT/quantize.json), when quantize has run."""
        found = self.run.quantized(fmt) if self.is_run else None
        return found.record if found else None

    def model(self, fmt: str, precision: str) -> Path | None:
        """The run's model file in `fmt` at `precision` (fp32 export or int8 quantize), made if it can be."""
        if not self.is_run:
            return self.path if self.path.suffix == f".{fmt}" else None
        if precision == "int8":
            found = self.run.quantized(fmt)
            return found.model if found else None
        found = self.run.exported(fmt)
        if found is not None:
            return found.backbone
        if not self.writes:
            raise ConfigError(f"{self.path} has no {fmt} export yet, and a dry run writes nothing",
                              f"export it first: edgetl export {self.path} --format {fmt}")
        from edgetl.export import export

        return export(self.path, fmt).backbone

    def head(self, fmt: str, precision: str) -> Path:
        """The head a bundle packs: the one beside its artifact (an int8 result made by quantization-aware
        fine-tuning trained its own), else the run's."""
        if self.is_run:
            found = self.run.quantized(fmt) if precision == "int8" else self.run.exported(fmt)
            if found is not None and (found.path / HEAD).is_file():
                return found.path / HEAD
        return self.run.head

    def statistics(self, fmt: str, precision: str) -> Path | None:
        """The feature statistics file beside the artifact a bundle packs (features.npz), if it has one."""
        found = self.run.quantized(fmt) if precision == "int8" else self.run.exported(fmt)
        return found.features if found is not None and found.features.is_file() else None

    def spec(self, fmt: str, precision: str) -> PreprocessSpec:
        """The preprocessing spec of the artifact a bundle packs: the int8 result's (with its input
        scale and zero-point) or the export's (with its layout), as those stages wrote it."""
        found = self.run.quantized(fmt) if precision == "int8" else self.run.exported(fmt)
        if found is None:
            raise ConfigError(f"{self.path} has no {precision} {fmt} model",
                              f"edgetl export {self.path} --format {fmt}")
        return found.spec()


def check_model_file(path: Path) -> None:
    """Refuse a .onnx or .tflite file that is not a readable model (truncated, or another kind of
    file with that name), with one line, before any backend looks at it."""
    if path.suffix == ".tflite":
        from edgetl.backends import tflite_graph

        tflite_graph.read(path)
    else:
        from edgetl.backends.onnx_graph import load_onnx

        load_onnx(path)


class Backend:
    """The interface every engine module implements (see litert.py for the shortest)."""

    name = "backend"

    def check(self, source: Source, target: Target) -> CompatibilityReport:
        raise NotImplementedError

    def compile(self, source: Source, target: Target, work: Path, *, allow_cpu_only: bool = False) -> Artifacts:
        raise NotImplementedError


def get(name: str) -> Backend:
    """The backend of the engine `name` (an unknown name: an error listing the known ones)."""
    return importlib.import_module(table.row(name).backend).BACKEND


def for_target(target: Target, source: Source | None = None) -> Backend:
    """The target's preferred engine's backend; a text run's is onnxruntime wherever the target lists it
    (its int8 is onnxruntime's, and TFLite of a text encoder stays fp32)."""
    if source is not None and source.is_text:
        if TEXT_ENGINE not in target.engines:
            raise ConfigError(f"{target.name} runs {', '.join(target.engines)}, and text bundles run on "
                              f"{TEXT_ENGINE}", "compile text runs for host-cpu, rpi4, rpi5 or a Jetson's CPU")
        return get(TEXT_ENGINE)
    return get(target.engine)


TEXT_ENGINE = "onnxruntime"

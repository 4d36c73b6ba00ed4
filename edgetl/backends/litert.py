"""LiteRT (TFLite with XNNPACK) on the CPU: host-cpu and the Raspberry Pis. The fp32 export or
the full-int8 model, whichever the run measured to be worth it, with the IO type the target asks."""

from __future__ import annotations

from pathlib import Path

from edgetl.backends import Artifacts, Backend, CompatibilityReport, OpVerdict, Source, tflite_graph
from edgetl.backends.choice import choose
from edgetl.errors import ConfigError
from edgetl.runtime.engines import table
from edgetl.targets import Target

ROW = table.of_module(__name__)


def _cpu_supported(op: tflite_graph.Op) -> str | None:
    if op.op.startswith("CUSTOM:"):
        return f"custom op {op.op[7:]!r}: the stock LiteRT runtime has no kernel for it"
    if op.op.startswith("BUILTIN_"):
        return "an op this LiteRT schema does not know"
    return None


def report(model: Path, target: Target, engine: str = ROW.name) -> CompatibilityReport:
    graph = tflite_graph.read(model)
    ops = [OpVerdict(op.index, op.name, op.op, (p := _cpu_supported(op)) is None, p or "") for op in graph.ops]
    return CompatibilityReport.of(target.name, engine, model, ops)


def with_io(model: Path, io_dtype: str, work: Path) -> Path:
    """`model` with the integer IO type the target asks (int8 as written, or uint8)."""
    from edgetl.backends.tflite_io import to_uint8

    inputs = tflite_graph.read(model).inputs
    if io_dtype != "uint8" or not any(t.dtype == "int8" for t in inputs):
        return model
    out = work / f"{model.stem}_uint8io.tflite"
    to_uint8(model, out)
    return out


class LiteRTBackend(Backend):
    name = ROW.name

    def check(self, source: Source, target: Target) -> CompatibilityReport:
        return report(choose(source, "tflite", target).model, target)

    def compile(self, source: Source, target: Target, work: Path, *, allow_cpu_only: bool = False) -> Artifacts:
        choice = choose(source, "tflite", target)
        model = with_io(choice.model, target.io_dtype, work) if choice.precision == "int8" else choice.model
        r = report(model, target)
        if not r.fully_mapped:
            raise ConfigError(f"{target.name}: {r.summary()}", "convert the model without custom ops")
        return Artifacts(self.name, choice.precision, model, r, choice.reason, choice.accuracy)


BACKEND = LiteRTBackend()

"""onnxruntime on the CPU (host-cpu, the Pis, a Jetson's fallback): the ONNX export or its QDQ
int8 model, whichever the run measured to be worth it."""

from __future__ import annotations

from pathlib import Path

from edgetl.backends import Artifacts, Backend, CompatibilityReport, OpVerdict, Source
from edgetl.backends.choice import choose
from edgetl.backends.onnx_graph import nodes_and_opset
from edgetl.errors import ConfigError
from edgetl.runtime.engines import table
from edgetl.targets import Target

ROW = table.of_module(__name__)
MIN_OPSET, MAX_OPSET = 7, 21  # what the onnxruntime releases edgetl supports (1.17+) run


def report(model_path: Path, target: Target, engine: str, supported) -> CompatibilityReport:
    """Each node's verdict from `supported(node, opset) -> reason or None`."""
    nodes, opset = nodes_and_opset(model_path)
    ops = []
    for i, node in enumerate(nodes):
        problem = supported(node, opset)
        ops.append(OpVerdict(i, node.name or f"{node.op_type}#{i}", node.op_type, problem is None, problem or ""))
    return CompatibilityReport.of(target.name, engine, model_path, ops, (f"opset {opset}",))


def _cpu_supported(node, opset: int) -> str | None:
    if node.domain not in ("", "ai.onnx", "com.microsoft"):
        return f"custom domain {node.domain!r}: onnxruntime has no kernel for it"
    if not MIN_OPSET <= opset <= MAX_OPSET:
        return f"opset {opset} outside {MIN_OPSET}-{MAX_OPSET}"
    return None


class OnnxRuntimeBackend(Backend):
    name = ROW.name

    def check(self, source: Source, target: Target) -> CompatibilityReport:
        return report(choose(source, "onnx", target).model, target, self.name, _cpu_supported)

    def compile(self, source: Source, target: Target, work: Path, *, allow_cpu_only: bool = False) -> Artifacts:
        choice = choose(source, "onnx", target)
        r = report(choice.model, target, self.name, _cpu_supported)
        if not r.fully_mapped:
            raise ConfigError(f"{target.name}: {r.summary()}", "re-export the model with a standard opset")
        return Artifacts(self.name, choice.precision, choice.model, r, choice.reason, choice.accuracy)


BACKEND = OnnxRuntimeBackend()

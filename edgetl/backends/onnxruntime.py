"""onnxruntime on the CPU (host-cpu, the Pis, a Jetson's fallback): the ONNX export or its QDQ
int8 model, whichever the run measured to be worth it."""

from __future__ import annotations

from pathlib import Path

from edgetl.backends import Artifacts, Backend, CompatibilityReport, OpVerdict, Source
from edgetl.backends.choice import choose
from edgetl.errors import ConfigError
from edgetl.targets import Target

MIN_OPSET, MAX_OPSET = 7, 21  # what the onnxruntime releases edgetl supports (1.17+) run


def onnx_ops(model_path: Path) -> tuple[list, int]:
    """(nodes, default-domain opset) of an ONNX file; a clear error when it is not one."""
    import onnx

    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends on a damaged file
        raise ConfigError(f"{model_path} is not a valid ONNX model (truncated, damaged or another kind of "
                          f"file: {type(exc).__name__})",
                          "pass a .onnx file written by an ONNX exporter") from None
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return list(model.graph.node), opset


def report(model_path: Path, target: Target, engine: str, supported) -> CompatibilityReport:
    """Each node's verdict from `supported(node, opset) -> reason or None`."""
    nodes, opset = onnx_ops(model_path)
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
    name = "onnxruntime"

    def check(self, source: Source, target: Target) -> CompatibilityReport:
        return report(choose(source, "onnx", target).model, target, self.name, _cpu_supported)

    def compile(self, source: Source, target: Target, work: Path, *, allow_cpu_only: bool = False) -> Artifacts:
        choice = choose(source, "onnx", target)
        r = report(choice.model, target, self.name, _cpu_supported)
        if not r.fully_mapped:
            raise ConfigError(f"{target.name}: {r.summary()}", "re-export the model with a standard opset")
        return Artifacts(self.name, choice.precision, choice.model, r, choice.reason, choice.accuracy)


BACKEND = OnnxRuntimeBackend()

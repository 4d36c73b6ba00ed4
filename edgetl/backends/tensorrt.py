"""NVIDIA Jetson through TensorRT: the QDQ int8 ONNX (explicit quantization) or the fp32 ONNX
built at fp16, shipped as ONNX. The engine is built where TensorRT runs: now, when this
machine has it (and cached in the bundle under its TensorRT version + GPU), else on the device
at first load. Engines are not portable across TensorRT versions or GPUs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from edgetl.backends import Artifacts, Backend, CompatibilityReport, OpVerdict, Source
from edgetl.backends.choice import Choice, choose, trained_accuracy
from edgetl.backends.onnx_graph import nodes_and_opset
from edgetl.errors import ConfigError
from edgetl.runtime.engines import table
from edgetl.targets import Target

ROW = table.of_module(__name__)


def tensorrt_available() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def _choice(source: Source, target: Target) -> Choice:
    """int8 from the run's QDQ model when the target takes int8, else the fp32 export built at fp16 (or fp32)."""
    if not source.is_run:
        choice = choose(source, "onnx", target)
        if choice.precision == "fp32" and "fp16" in target.precisions:
            return Choice("fp16", choice.model, "fp16: the fp32 model built with TensorRT's FP16 flag", None)
        return choice
    quantized = source.quantized("onnx")
    if "int8" in target.precisions and quantized is not None:
        return Choice("int8", source.model("onnx", "int8"),
                      f"int8: explicit quantization from the QDQ model (top-1 drop {quantized.drop:.2f} "
                      f"within {quantized.max_drop} on onnxruntime)", quantized.accuracy("int8"))
    for precision in ("fp16", "fp32"):
        if precision in target.precisions:
            why = "no int8 ONNX in the run" if "int8" in target.precisions else f"{target.name} takes no int8"
            return Choice(precision, source.model("onnx", "fp32"),
                          f"{precision}: {why}; accuracy as measured in fp32", trained_accuracy(source))
    raise ConfigError(f"{target.name} takes {', '.join(target.precisions)} and {source.path} has no int8 ONNX",
                      f"run `edgetl quantize {source.path} --calib CALIB.toml --format onnx`")


def _report(model: Path, target: Target) -> CompatibilityReport:
    nodes, opset = nodes_and_opset(model)
    if tensorrt_available():
        from edgetl.runtime.engines.tensorrt import import_tensorrt, parse_onnx

        trt = import_tensorrt()
        _, _, parser, ok = parse_onnx(trt, model.read_bytes())
        errors = {str(parser.get_error(i).node_name()): str(parser.get_error(i).desc())
                  for i in range(parser.num_errors)} if not ok else {}
        ops = [OpVerdict(i, n.name or f"{n.op_type}#{i}", n.op_type, n.name not in errors, errors.get(n.name, ""))
               for i, n in enumerate(nodes)]
        note = f"checked by TensorRT {trt.__version__}'s ONNX parser"
    else:
        ops = [OpVerdict(i, n.name or f"{n.op_type}#{i}", n.op_type, True, "") for i, n in enumerate(nodes)]
        note = "TensorRT is not importable here: its ONNX parser checks the model when the engine is built"
    return CompatibilityReport.of(target.name, ROW.name, model, ops, (f"opset {opset}", note))


class TensorRTBackend(Backend):
    name = ROW.name

    def check(self, source: Source, target: Target) -> CompatibilityReport:
        return _report(_choice(source, target).model, target)

    def compile(self, source: Source, target: Target, work: Path, *, allow_cpu_only: bool = False) -> Artifacts:
        choice = _choice(source, target)
        report = _report(choice.model, target)
        if not report.fully_mapped:
            raise ConfigError(f"{target.name}: {report.summary()}", "TensorRT's parser named the op; re-export "
                              "without it")
        if not tensorrt_available():
            return Artifacts(self.name, choice.precision, choice.model, report, choice.reason, choice.accuracy,
                             deferred="TensorRT is not on this machine: the device builds its engine from the "
                                      "ONNX at first load and caches it by TensorRT version + GPU")
        from edgetl.runtime.engines.tensorrt import cached_engine

        engine, _ = cached_engine(choice.model, choice.precision, cache=work / "tensorrt")
        extra = {f"engine/{engine.parent.name}/{f.name}": f for f in (engine, engine.parent / "key.json")}
        return Artifacts(self.name, choice.precision, choice.model, report,
                         choice.reason + "; engine built here", choice.accuracy, extra=extra)


BACKEND = TensorRTBackend()

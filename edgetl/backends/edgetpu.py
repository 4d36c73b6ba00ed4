"""Coral Edge TPU: a full-int8 .tflite checked op by op against what the Edge TPU runs, then
compiled by `edgetpu_compiler` when it is on PATH (its log parsed into the same report).

The compiler maps ops to the TPU up to the first one it cannot map; that op and every op after
it run on the host CPU, however well they would have mapped. The static report says where that
happens before anyone installs the compiler or waits for a device. The rules are Coral's
published requirements (coral.ai/docs/edgetpu/models-intro): 8-bit tensors, shapes fixed at
compile time, only the 3 innermost dimensions larger than 1, and the supported ops with
their limitations.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from edgetl.backends import Artifacts, Backend, CompatibilityReport, OpVerdict, Source, litert, tflite_graph
from edgetl.backends.choice import choose
from edgetl.errors import ConfigError
from edgetl.runtime.engines import table
from edgetl.targets import Target

ROW = table.of_module(__name__)

COMPILER = "edgetpu_compiler"
COMPILE_TIMEOUT_S = 600
# Ops the Edge TPU runs (Coral's supported-operations table, compiler 16).
SUPPORTED = {
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "EXPAND_DIMS", "FULLY_CONNECTED",
    "L2_NORMALIZATION", "LOGISTIC", "UNIDIRECTIONAL_SEQUENCE_LSTM", "MAXIMUM", "MAX_POOL_2D", "MEAN", "MINIMUM",
    "MUL", "PACK", "PAD", "PRELU", "QUANTIZE", "REDUCE_MAX", "REDUCE_MIN", "RELU", "RELU6", "RELU_N1_TO_1",
    "RESHAPE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "RSQRT", "SLICE", "SOFTMAX", "SPACE_TO_DEPTH", "SPLIT",
    "SQUEEZE", "STRIDED_SLICE", "SUB", "SUM", "SQUARED_DIFFERENCE", "TANH", "TRANSPOSE", "TRANSPOSE_CONV",
}
NO_FUSED_ACTIVATION = {"AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION"}
SPATIAL_ONLY = {"MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN", "PAD"}  # reduce / pad along x and y only
# The newest op versions of TFLite 2.5, the converter generation compiler 16 was released with;
# newer versions add int16/int4 kernels the TPU does not have. The compiler's log, when it runs, decides.
MAX_VERSION = {"CONV_2D": 5, "DEPTHWISE_CONV_2D": 6, "FULLY_CONNECTED": 9, "ADD": 4, "SUB": 5, "MUL": 5,
               "MEAN": 3, "PAD": 3, "CONCATENATION": 3, "SOFTMAX": 3, "AVERAGE_POOL_2D": 3, "MAX_POOL_2D": 3,
               "RESHAPE": 1, "QUANTIZE": 2, "TRANSPOSE": 5, "LOGISTIC": 3, "STRIDED_SLICE": 5}
INTEGER_CONSTANTS = {"int32", "int64"}  # bias, axes, paddings, shapes: allowed as compile-time constants


def _short(name: str) -> str:
    """A converter's tensor name is its whole module path; the last part says which layer."""
    return name.rsplit("/", 1)[-1][-60:]


def _tensor_problem(t: tflite_graph.Tensor, max_rank: int) -> str | None:
    name = _short(t.name)
    if t.dynamic:
        return f"tensor {name!r} has a dynamic shape {list(t.shape)}; the Edge TPU needs shapes fixed at compile time"
    if t.dtype not in ("int8", "uint8") and not (t.constant and t.dtype in INTEGER_CONSTANTS):
        return f"tensor {name!r} is {t.dtype}; the Edge TPU runs int8/uint8 tensors only"
    outer = t.shape[:-max_rank] if len(t.shape) > max_rank and not t.constant else ()  # weights are exempt
    if any(d > 1 for d in outer):
        return (f"tensor {name!r} has shape {list(t.shape)}; only the {max_rank} innermost dimensions "
                "may be larger than 1")
    return None


def _axes_outside_xy(op: tflite_graph.Op) -> bool:
    """MEAN/SUM/... reduce, PAD pads, along other than the height/width axes of an NHWC tensor."""
    rank = len(op.inputs[0].shape)
    if rank != 4 or len(op.inputs) < 2 or op.inputs[1].data is None:
        return False
    data = op.inputs[1].data
    if op.op == "PAD":
        pads = data.reshape(rank, 2)
        return bool(pads[0].any() or pads[3].any())
    axes = {int(a) % rank for a in data.ravel()}
    return not axes <= {1, 2}


def verdict(op: tflite_graph.Op, max_rank: int = 3) -> str | None:
    """Why `op` would not map to the Edge TPU, or None when it would."""
    if op.op not in SUPPORTED:
        return f"{op.op} is not an Edge TPU op"
    if op.version > MAX_VERSION.get(op.op, op.version):
        return f"{op.op} version {op.version} is newer than the compiler knows (<= {MAX_VERSION[op.op]})"
    if op.op in NO_FUSED_ACTIVATION and op.fused_activation not in (None, "NONE"):
        return f"{op.op} with a fused {op.fused_activation}: the Edge TPU takes it without"
    if op.op in SPATIAL_ONLY and _axes_outside_xy(op):
        return f"{op.op} along the batch or channel axis: the Edge TPU does it along x and y only"
    for t in op.inputs + op.outputs:
        problem = _tensor_problem(t, max_rank)
        if problem:
            return problem
    return None


def static_report(model: Path, target: Target) -> CompatibilityReport:
    """Every op's verdict read from the .tflite file; the first unmapped op and all after it run on the CPU."""
    graph = tflite_graph.read(model)
    max_rank = target.constraints.max_rank or 3
    ops = [OpVerdict(op.index, op.name, op.op, (p := verdict(op, max_rank)) is None, p or "") for op in graph.ops]
    first = next((op for op in ops if not op.mapped), None)
    if first is not None:  # after the split, supported ops run on the CPU too
        ops = ops[: first.index + 1] + [
            op if not op.mapped else OpVerdict(op.index, op.name, op.op, False, f"after the split at {first.name}")
            for op in ops[first.index + 1 :]]
    return CompatibilityReport.of(target.name, ROW.name, model, ops)


@dataclass(frozen=True)
class CompilerLog:
    """What `edgetpu_compiler -s` printed: its version, op counts and a status per op type."""

    version: str | None
    tpu_ops: int | None
    cpu_ops: int | None
    rows: tuple[tuple[str, int, str], ...]  # (op type, count, status)


def parse_log(text: str) -> CompilerLog:
    version = re.search(r"Edge TPU Compiler version (\S+)", text)
    tpu = re.search(r"Number of operations that will run on Edge TPU:\s*(\d+)", text)
    cpu = re.search(r"Number of operations that will run on CPU:\s*(\d+)", text)
    rows = tuple((m[1], int(m[2]), m[3].strip()) for m in re.finditer(r"^([A-Z][A-Z0-9_]+)\s+(\d+)\s+(\S.*)$",
                                                                      text, re.MULTILINE))
    return CompilerLog(version[1] if version else None, int(tpu[1]) if tpu else None,
                       int(cpu[1]) if cpu else None, rows)


def compiler_report(model: Path, log: CompilerLog, target: Target) -> CompatibilityReport:
    """The static report's ops, with the compiler's word on each op type taking precedence."""
    static = static_report(model, target)
    unmapped: dict[str, list[str]] = {}  # op type -> the statuses of its unmapped ops
    for op, n, status in log.rows:
        if not status.startswith("Mapped to Edge TPU"):
            unmapped.setdefault(op, []).extend([status] * n)
    total = {t: sum(1 for op in static.ops if op.op == t) for t in unmapped}
    seen: dict[str, int] = {}
    ops = []
    for op in static.ops:  # the compiler counts by type; the unmapped ones of a type are its last ones
        seen[op.op] = seen.get(op.op, 0) + 1
        statuses = unmapped.get(op.op, [])
        late = seen[op.op] - (total.get(op.op, 0) - len(statuses))
        if statuses and late > 0:
            ops.append(OpVerdict(op.index, op.name, op.op, False, statuses[min(late, len(statuses)) - 1]))
        else:
            ops.append(OpVerdict(op.index, op.name, op.op, True, ""))
    notes = (f"edgetpu_compiler {log.version}: {log.tpu_ops} ops on the Edge TPU, {log.cpu_ops} on the CPU",)
    return CompatibilityReport.of(target.name, ROW.name, model, ops, notes, source=COMPILER)


def run_compiler(model: Path, work: Path, compiler: str) -> tuple[Path, str]:
    """`edgetpu_compiler` on `model` into `work`; returns the compiled model and the log it printed."""
    out = work / "edgetpu"
    out.mkdir(exist_ok=True)
    try:
        done = subprocess.run([compiler, "--show_operations", "--out_dir", str(out), str(model)],
                              capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"{COMPILER} did not finish in {COMPILE_TIMEOUT_S} s", "try the model alone with "
                          f"`{COMPILER} -s {model}`") from None
    compiled = out / f"{model.stem}_edgetpu.tflite"
    if done.returncode != 0 or not compiled.is_file():
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ConfigError(f"{COMPILER} failed (exit {done.returncode}): {last[0]}",
                          f"run `{COMPILER} -s {model}` to see its full log")
    return compiled, done.stdout


class EdgeTPUBackend(Backend):
    name = ROW.name

    def _model(self, source: Source, target: Target, work: Path | None = None):
        choice = choose(source, "tflite", target)
        if choice.precision != "int8":
            raise ConfigError(f"the Edge TPU runs full-int8 models and {choice.model.name} is {choice.precision}",
                              f"run `edgetl quantize RUN --calib CALIB.toml --format tflite --io {target.io_dtype}`")
        return choice, (litert.with_io(choice.model, target.io_dtype, work) if work is not None else choice.model)

    def check(self, source: Source, target: Target) -> CompatibilityReport:
        return static_report(self._model(source, target)[1], target)

    def compile(self, source: Source, target: Target, work: Path, *, allow_cpu_only: bool = False) -> Artifacts:
        choice, model = self._model(source, target, work)
        compiler = shutil.which(COMPILER)
        if compiler is None:
            report = static_report(model, target)
            if not allow_cpu_only:
                raise ConfigError(f"{COMPILER} is not on PATH, so nothing can run on the Edge TPU "
                                  f"(static check: {report.summary()})",
                                  "install it (coral.ai/docs/edgetpu/compiler), or pass --allow-cpu-only to ship "
                                  "the int8 model for the CPU")
            return Artifacts(litert.ROW.name, "int8", model, report,
                             f"int8 on the CPU: {COMPILER} not on PATH (--allow-cpu-only); {choice.reason}",
                             choice.accuracy)
        compiled, log = run_compiler(model, work, compiler)
        report = compiler_report(model, parse_log(log), target)
        log_file = work / "edgetpu_compiler.log"
        log_file.write_text(log)
        return Artifacts(self.name, "int8", compiled, report, f"int8 on the Edge TPU: {report.summary()}",
                         choice.accuracy, extra={"edgetpu_compiler.log": log_file})


BACKEND = EdgeTPUBackend()

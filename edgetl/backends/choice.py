"""fp32 or int8 for a CPU engine, chosen from what the run measured, never int8 blindly.

`edgetl quantize` scored int8 against fp32 on the run's own images and timed both on the
host, side by side. int8 is chosen when the target allows it, it met its accuracy budget
(a quantize result only exists if it did) and it ran faster; otherwise fp32, and the reason
says which figure decided. The reason names no timing (quantize.json keeps those): two builds of
the same run make the same manifest, byte for byte.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

from edgetl.backends import Source
from edgetl.errors import ConfigError
from edgetl.runtime.manifest import ExpectedAccuracy
from edgetl.targets import Target


@dataclass(frozen=True)
class Choice:
    precision: str
    model: Path
    reason: str
    accuracy: ExpectedAccuracy | None


def _bare(source: Source, fmt: str, target: Target) -> Choice:
    from edgetl.backends import opcount

    if source.path.suffix != f".{fmt}":
        raise ConfigError(f"{target.name} runs .{fmt} models ({target.engine}), and {source.path.name} is not one",
                          f"pass the .{fmt} export of the model, or pick a target whose engine takes it")
    ops = opcount.count(source.path)
    precision = "int8" if ops.weighted_int8 else "fp32"
    if precision not in target.precisions:
        raise ConfigError(f"{source.path.name} is {precision}; {target.name} takes {', '.join(target.precisions)}",
                          "quantize the model, or pick another target")
    return Choice(precision, source.path, f"{precision}: the model file as given", None)


def choose(source: Source, fmt: str, target: Target) -> Choice:
    """The precision and model file for `target` from the run's fp32 export and int8 quantize results."""
    if not source.is_run:
        return _bare(source, fmt, target)
    quantized = source.quantized(fmt)
    proxy = "" if platform.machine() in target.arch else f" (timed on this {platform.machine()} host)"
    if "int8" in target.precisions and quantized is not None:
        ratio = quantized.int8_over_fp32_latency
        within = f"top-1 drop {quantized.drop:.2f} within {quantized.max_drop}"
        int8 = source.model(fmt, "int8")
        if "fp32" not in target.precisions:
            return Choice("int8", int8, f"int8: the only precision {target.name} runs; {within}",
                          quantized.accuracy("int8"))
        if ratio < 1.0:
            return Choice("int8", int8, f"int8: faster than fp32 when both were timed{proxy}, {within}",
                          quantized.accuracy("int8"))
        return Choice("fp32", source.model(fmt, "fp32"),
                      f"fp32: int8 was slower than fp32 when both were timed{proxy}, so not worth its "
                      f"{quantized.drop:.2f} point drop", quantized.accuracy("fp32"))
    if "fp32" not in target.precisions:
        raise ConfigError(f"{target.name} runs {', '.join(target.precisions)} only and {source.path} has no int8 "
                          f"{fmt} model", f"run `edgetl quantize {source.path} --calib CALIB.toml --format {fmt}`")
    why = "not quantized yet" if quantized is None else f"{target.name} takes no int8"
    return Choice("fp32", source.model(fmt, "fp32"), f"fp32: {why}", trained_accuracy(source))


def trained_accuracy(source: Source) -> ExpectedAccuracy:
    """The fine-tune record's figures: the fp32 export matches PyTorch (its parity check held)."""
    record = source.run.record
    return ExpectedAccuracy(top1=record.val_top1, split="run val split", test_top1=record.test_top1)

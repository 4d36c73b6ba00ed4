"""One run of a model source through the pipeline as a user takes it: export, int8, bundles, adapt."""

from __future__ import annotations

from pathlib import Path

from edgetl.compile import compile_bundle
from edgetl.export import export
from edgetl.quantize import quantize
from edgetl.runtime import Model


def labelled(folder: Path) -> tuple[list[Path], list[str]]:
    paths = sorted(folder.glob("*/*.png"))
    return paths, [p.parent.name for p in paths]


def through_the_pipeline(run: Path, calib: Path, test: Path, tmp: Path, int8: str) -> dict:
    """Export (ONNX, TFLite) with parity, int8 in the format `int8` (each source's test takes one of the two:
    the quantizers are the same for every source, and the suite's time is not), bundles for host-cpu and
    rpi5, and a device adapt of the host bundle (the rpi5 one is for another machine); returns what a user
    would look at."""
    seen = {}
    for fmt in ("onnx", "tflite"):
        seen[f"parity_{fmt}"] = export(run, fmt, taps="none").record.parity
    seen["int8"] = quantize(run, calib, fmt=int8, method="minmax", max_drop=100)
    for target in ("host-cpu", "rpi5"):
        seen[target] = compile_bundle(run, target, tmp / target)
    model = Model.load(tmp / "host-cpu")
    paths, labels = labelled(test)
    seen["predicted"] = [p.label for p in model.predict(paths)]
    seen["adapted"] = model.adapt(paths, labels, unguarded=True)
    seen["labels"] = labels
    return seen

"""One run compiled for every target, and the bundles that can run here scored against the
accuracy recorded at quantize time; the Edge TPU compatibility report on full-int8 models.

For efficientnet_lite0 fine-tuned on gtsrb-mini (64 px): quantize (auto, 0.5 point budget)
for ONNX and TFLite, compile for each file in targets/, then load the host-cpu, rpi4 and rpi5
bundles (verified, as a device would) and score their models with the bundle's head and
preprocessing on the run's val and test splits: the figure must match quantize's within 0.5
points. The rpi bundles run on this x86 host with the same engine (LiteRT/XNNPACK): arm64
numerics are not measured here. Edge TPU: efficientnet_lite0 and mobilenet_v2 quantized to
full int8 with uint8 IO (no float fallback: the TPU has none) and checked op by op.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import emit, gtsrb_mini, skip

from edgetl import targets
from edgetl.backends import edgetpu
from edgetl.compile import compile_bundle
from edgetl.console import Console
from edgetl.data.imagefolder import load_images
from edgetl.quantize import load_record, quantize
from edgetl.runtime import engines
from edgetl.runtime.preprocess import PreprocessSpec
from edgetl.runtime.verify import open_bundle
from edgetl.train.finetune import FinetuneConfig, finetune
from edgetl.train.run import load_run, split_samples

RUNS = {"efficientnet_lite0": ("imagenet", 12), "mobilenet_v2": ("none", 30)}


def _run(runs: Path, name: str, data: Path, console: Console) -> Path:
    out = runs / name
    if not (out / "finetune.json").is_file():
        weights, epochs = RUNS[name]
        finetune(FinetuneConfig(data=data / "train", test=data / "test", out=out, backbone=name, weights=weights,
                                img_size=64, epochs=epochs, patience=6, force=True), console)
    return out


def _score(bundle_dir: Path, run_dir: Path) -> dict:
    """Top-1 of a bundle's model + head on the run's val and test splits, preprocessed from the manifest."""
    b = open_bundle(bundle_dir, machine="any")
    spec = dict(b.manifest["preprocess"])
    spec.update(size=tuple(spec["size"]), mean=tuple(spec["mean"]), std=tuple(spec["std"]))
    spec = PreprocessSpec(**spec)
    head = np.load(b.path / b.manifest["head"])
    engine = engines.load(b.model, threads=1)
    run = load_run(run_dir)
    out = {}
    for split in ("val", "test"):
        loaded = load_images(split_samples(run, split), spec.size, spec.resize)
        pred = (engine.run(spec.model_input(loaded.images)) @ head["W"].T + head["b"]).argmax(1)
        out[split] = round(100.0 * float((pred == loaded.labels).mean()), 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=Path, help="reuse (or keep) fine-tuned runs in RUNS/<backbone>")
    ap.add_argument("--samples", type=int, default=256, help="calibration images")
    args = ap.parse_args()
    data = gtsrb_mini()
    if data is None:
        skip("compile_targets", "gtsrb-mini not found (set EDGETL_GTSRB_MINI)")
    console = Console(quiet=not sys.stderr.isatty())
    record = {"benchmark": "compile_targets", "targets": {}, "edgetpu_full_int8": {}}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        runs = args.runs or tmp / "runs"
        calib = tmp / "gtsrb-train.toml"
        calib.write_text(f'data = "{data / "train"}"\nsamples = {args.samples}\nseed = 0\n')
        lite0 = _run(runs, "efficientnet_lite0", data, console)
        for fmt in ("onnx", "tflite"):
            if load_record(lite0, fmt) is None:
                quantize(lite0, calib, fmt=fmt, method="auto", max_drop=0.5, console=console)
        for target in targets.names():
            t0 = time.perf_counter()
            m = compile_bundle(lite0, target, tmp / "bundles" / target, allow_cpu_only=True)
            entry = {"engine": m["engine"], "precision": m["precision"], "choice": m["choice"],
                     "compatibility": m["compatibility"]["summary"], "deferred": m["deferred"],
                     "seconds": round(time.perf_counter() - t0, 2), "archive_bytes": (tmp / "bundles" /
                                                                                   f"{target}.tar.gz").stat().st_size}
            if target in ("host-cpu", "rpi4", "rpi5"):
                scored, recorded = _score(tmp / "bundles" / target, lite0), m["accuracy"]
                entry.update(bundle_top1=scored, recorded_top1={"val": recorded["top1"],
                                                                "test": recorded.get("test_top1")},
                             diff={"val": round(scored["val"] - recorded["top1"], 2),
                                   "test": round(scored["test"] - recorded["test_top1"], 2)})
            record["targets"][target] = entry
            print(f"{target}: {entry}", file=sys.stderr)
        coral = targets.load("coral-usb")
        for name in RUNS:
            run = Path(shutil.copytree(_run(runs, name, data, console), tmp / f"{name}-coral"))
            shutil.rmtree(run / "quantize", ignore_errors=True)
            q = quantize(run, calib, fmt="tflite", method="minmax", max_drop=100, io="uint8", console=console)
            report = edgetpu.static_report(run / "quantize" / "tflite" / q["file"], coral)
            record["edgetpu_full_int8"][name] = {
                "fully_mapped": report.fully_mapped, "ops": len(report.ops), "cpu_ops": len(report.cpu_ops),
                "first_unmapped": report.first_unmapped.name if report.first_unmapped else None,
                "summary": report.summary(), "int8_test_drop": q["test"]["drop"], "int8_val_drop": q["drop"]}
            print(f"edgetpu {name}: {report.summary()}", file=sys.stderr)
    emit(record)


if __name__ == "__main__":
    main()

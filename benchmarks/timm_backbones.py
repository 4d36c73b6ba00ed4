"""timm backbones through the whole pipeline: fine-tune, export (ONNX and TFLite, with parity),
int8 within the budget, and bundles for host-cpu and rpi5, measured in one run on gtsrb-mini for
mobilenetv3_large_100, mobilenetv4_conv_small, efficientvit_b0 and resnet18 (`timm:NAME`).

No timm weights are on this machine (they live on the Hugging Face hub), so every model starts
from random init (`--weights none`) with a from-scratch schedule; the figures say what the
pipeline does with these architectures, not what their ImageNet weights would reach. Top-1 in
percent. The same recipe on the command line, e.g.:
  edgetl finetune --backbone timm:mobilenetv4_conv_small --weights none --data gtsrb-mini/train \
    --test gtsrb-mini/test --img-size 32 --epochs 30 --out runs/mobilenetv4_conv_small
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from _common import emit, gtsrb_mini, skip

from edgetl.compile import compile_bundle
from edgetl.console import Console
from edgetl.errors import EdgetlError
from edgetl.export import export
from edgetl.quantize import quantize
from edgetl.train.finetune import FinetuneConfig, finetune
from edgetl.train.run import load_run

MODELS = ("mobilenetv3_large_100", "mobilenetv4_conv_small", "efficientvit_b0", "resnet18")
TARGETS = ("host-cpu", "rpi5")


def _stage(entry: dict, key: str, work, *args, **kwargs):
    """Run one stage, recording its seconds, or its one-line error where it refuses."""
    t0 = time.perf_counter()
    try:
        result = work(*args, **kwargs)
    except EdgetlError as exc:
        entry[key] = {"error": str(exc), "seconds": round(time.perf_counter() - t0, 1)}
        print(f"  {key}: {exc}", file=sys.stderr)
        return None
    return result, round(time.perf_counter() - t0, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--img-size", type=int, default=32, help="gtsrb-mini's own resolution")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--max-drop", type=float, default=1.0, help="quantize's default budget")
    ap.add_argument("--samples", type=int, default=256, help="calibration images")
    ap.add_argument("--runs", type=Path, help="reuse (or keep) the runs in RUNS/<model>")
    args = ap.parse_args()
    data = gtsrb_mini()
    if data is None:
        skip("timm_backbones", "gtsrb-mini not found (set EDGETL_GTSRB_MINI)")
    console = Console(quiet=not sys.stderr.isatty())
    record = {"benchmark": "timm_backbones", "img_size": args.img_size, "weights": "none (random init)",
              "epochs": args.epochs, "max_drop": args.max_drop, "models": {}}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        runs = args.runs or tmp / "runs"
        calib = tmp / "gtsrb-train.toml"
        calib.write_text(f'data = "{data / "train"}"\nsamples = {args.samples}\nseed = 0\n')
        for name in args.models.split(","):
            print(f"timm:{name}", file=sys.stderr)
            run_dir, entry = runs / name, {}
            record["models"][name] = entry
            if not (run_dir / "finetune.json").is_file():
                done = _stage(entry, "finetune", finetune, FinetuneConfig(
                    data=data / "train", test=data / "test", out=run_dir, backbone=f"timm:{name}", weights="none",
                    img_size=args.img_size, epochs=args.epochs, force=True), console)
                if done is None:
                    continue
                entry["finetune_seconds"] = done[1]
            run = load_run(run_dir)
            entry.update(val_top1=run.record["val_top1"], test_top1=run.record["test_top1"],
                         stages=len(run.backbone.stages()), taps=len(run.backbone.body_stages()))
            for fmt in ("onnx", "tflite"):
                done = _stage(entry, f"export_{fmt}", export, run_dir, fmt, console=console)
                if done is None:
                    continue
                parity = done[0].record.parity
                entry[f"export_{fmt}"] = {"rel_diff": parity["rel_diff"], "top1_agreement": parity["top1_agreement"],
                                          "seconds": done[1]}
                done = _stage(entry, f"int8_{fmt}", quantize, run_dir, calib, fmt=fmt, method="auto",
                              max_drop=args.max_drop, console=console)
                if done is None:
                    continue
                r = done[0]
                entry[f"int8_{fmt}"] = {"method": r["method"], "float_layers": len(r["float_layers"]),
                                        "val_drop": r["drop"], "test_drop": r["test"]["drop"] if r["test"] else None,
                                        "int8_ops": r["ops"]["int8_ops"], "float_ops": r["ops"]["float_ops"],
                                        "int8_over_fp32_latency": r["int8_over_fp32_latency"], "seconds": done[1]}
                print(f"  {fmt}: parity {parity['rel_diff']:.1e}, int8 {r['method']}, val drop {r['drop']}",
                      file=sys.stderr)
            for target in TARGETS:
                done = _stage(entry, f"bundle_{target}", compile_bundle, run_dir, target,
                              tmp / "bundles" / name / target, console=console)
                if done is not None:
                    m = done[0]
                    entry[f"bundle_{target}"] = {"engine": m.engine, "precision": m.precision, "seconds": done[1]}
    emit(record)


if __name__ == "__main__":
    main()

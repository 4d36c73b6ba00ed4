"""INT8 against an accuracy budget: fp32 vs int8 top-1 per calibration method and with `auto`,
for ONNX (onnxruntime QDQ) and TFLite (litert-torch PT2E), and int8/fp32 host latency, measured
in one run on gtsrb-mini for efficientnet_lite0, mobilenet_v2, mobilenet_v3_small and resnet18.

The guard scores on each run's val split (the budget is `--max-drop`, 1.0 for
mobilenet_v3_small); the acceptance figure is the drop on the gtsrb-mini test split.
efficientnet_lite0 starts from its shipped ImageNet weights; the torchvision backbones from
ImageNet weights when they are in the torch hub cache, else from scratch with a longer schedule
(recorded per model). The same recipe on the command line, e.g.:
  edgetl finetune --backbone mobilenet_v2 --weights none --data gtsrb-mini/train \
    --test gtsrb-mini/test --img-size 64 --epochs 30 --patience 6 --out runs/mobilenet_v2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from _common import emit, gtsrb_mini, skip

from edgetl.console import Console
from edgetl.errors import EdgetlError
from edgetl.quantize import QuantizeError, quantize
from edgetl.train.backbones import get_spec
from edgetl.train.finetune import FinetuneConfig, finetune
from edgetl.train.run import load_run
from edgetl.train.weights import resolve

MODELS = ("efficientnet_lite0", "mobilenet_v2", "mobilenet_v3_small", "resnet18")
BUDGET = {"mobilenet_v3_small": 1.0}


def _weights(name: str) -> str:
    try:
        resolve(get_spec(name), "imagenet")
        return "imagenet"
    except EdgetlError:
        return "none"


def _trials(trials: list[dict]) -> dict:
    """Val and test drops per calibration method, and [float layers, val drop, test drop] per fallback trial."""
    return {"per_method": {t["method"]: {"val_drop": t["drop"], "test_drop": t["test"]["drop"]}
                           for t in trials if not t["float_layers"]},
            "fallback_trials": [[len(t["float_layers"]), t["drop"], t["test"]["drop"]]
                                for t in trials if t["float_layers"]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--formats", default="onnx,tflite")
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=12, help="fine-tuning epochs from ImageNet weights")
    ap.add_argument("--scratch-epochs", type=int, default=30, help="epochs when no ImageNet weights exist here")
    ap.add_argument("--patience", type=int, default=6)
    ap.add_argument("--max-drop", type=float, default=0.5)
    ap.add_argument("--samples", type=int, default=256, help="calibration images")
    ap.add_argument("--runs", type=Path, help="reuse (or keep) fine-tuned runs in RUNS/<backbone>")
    args = ap.parse_args()
    data = gtsrb_mini()
    if data is None:
        skip("quantize_budget", "gtsrb-mini not found (set EDGETL_GTSRB_MINI)")
    console = Console(quiet=not sys.stderr.isatty())
    record = {"benchmark": "quantize_budget", "img_size": args.img_size, "calibration_samples": args.samples,
              "models": {}}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        runs = args.runs or tmp / "runs"
        calib = tmp / "gtsrb-train.toml"
        calib.write_text(f'data = "{data / "train"}"\nsamples = {args.samples}\nseed = 0\n')
        for name in args.models.split(","):
            run_dir = runs / name
            entry = {}
            if not (run_dir / "finetune.json").is_file():
                weights = _weights(name)
                t0 = time.perf_counter()
                epochs = args.epochs if weights == "imagenet" else args.scratch_epochs
                finetune(FinetuneConfig(data=data / "train", test=data / "test", out=run_dir, backbone=name,
                                        weights=weights, img_size=args.img_size, epochs=epochs,
                                        patience=args.patience, force=True), console)
                entry["finetune_seconds"] = round(time.perf_counter() - t0, 1)
            run = load_run(run_dir)
            entry.update(weights=run.record["weights"], val_top1=run.record["val_top1"],
                         test_top1=run.record["test_top1"])
            budget = BUDGET.get(name, args.max_drop)
            for fmt in args.formats.split(","):
                t0 = time.perf_counter()
                try:
                    r = quantize(run_dir, calib, fmt=fmt, method="auto", max_drop=budget, console=console)
                except QuantizeError as exc:  # the budget was missed: report what the trials reached
                    entry[fmt] = {"budget": budget, "error": exc.message, **_trials(exc.trials),
                                  "seconds": round(time.perf_counter() - t0, 1)}
                    print(f"{name} {fmt}: {exc.message}", file=sys.stderr)
                    continue
                entry[fmt] = {
                    "budget": budget, "method": r["method"], "float_layers": r["float_layers"],
                    "val": {"fp32_top1": r["fp32_top1"], "int8_top1": r["int8_top1"], "drop": r["drop"]},
                    "test": r["test"],
                    **_trials(r["trials"]),
                    "latency_ms": {k: v["p50_ms"] for k, v in r["latency_ms"].items()},
                    "int8_over_fp32_latency": r["int8_over_fp32_latency"],
                    "sizes_mb": {k: round(v / 1e6, 2) for k, v in r["sizes_bytes"].items()},
                    "int8_ops": r["ops"]["int8_ops"], "float_ops": r["ops"]["float_ops"],
                    "seconds": round(time.perf_counter() - t0, 1),
                }
                print(f"{name} {fmt}: {r['method']}, test drop {r['test']['drop']}, val drop {r['drop']}, "
                      f"int8/fp32 latency {r['int8_over_fp32_latency']}", file=sys.stderr)
            record["models"][name] = entry
    emit(record)


if __name__ == "__main__":
    main()

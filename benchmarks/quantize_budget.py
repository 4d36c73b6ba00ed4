"""INT8 against an accuracy budget, in one run on gtsrb-mini for efficientnet_lite0, mobilenet_v2,
mobilenet_v3_small and resnet18, for ONNX (onnxruntime QDQ) and TFLite (litert-torch PT2E, LiteRT):
fp32 vs int8 top-1 per calibration method, with today's `auto` (calibration, then float fallback),
with the PTQ refinements (bias correction; cross-layer equalization + bias correction, ONNX), with
the new default `auto` (calibration -> refinement -> float fallback -> quantization-aware
fine-tuning, each only while the budget is missed), and with QAT itself (`--method qat`, where
auto did not reach it, for the models in --qat-models), its seconds beside the run's fine-tune.
Host latency int8/fp32 for the kept model.

The guard scores on each run's val split (budget `--max-drop`, 0.5 points for every model); the
acceptance figure is the drop on the gtsrb-mini test split. Top-1 in percent, drops in points of it.
efficientnet_lite0 starts from its shipped ImageNet weights; the torchvision backbones from
ImageNet weights when they are in the torch hub cache, else from scratch with a longer schedule
(recorded per model). The same recipe on the command line, e.g.:
  edgetl finetune --backbone mobilenet_v2 --weights none --data gtsrb-mini/train \
    --test gtsrb-mini/test --img-size 64 --epochs 30 --patience 6 --out runs/mobilenet_v2
  edgetl quantize runs/mobilenet_v2 --calib gtsrb-train.toml --format tflite --max-drop 0.5
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
TODAY = ("float_fallback",)  # auto before this issue: calibration, then float fallback


def _weights(name: str) -> str:
    try:
        resolve(get_spec(name), "imagenet")
        return "imagenet"
    except EdgetlError:
        return "none"


def _trials(trials: list[dict]) -> dict:
    """Val and test drops per calibration method and per refinement, and [float layers, val drop, test drop]
    per fallback trial."""
    def label(t):
        return "+".join([t["method"], *t.get("refinements", [])])

    plain = [t for t in trials if not t["float_layers"] and t["method"] != "qat"]
    return {"per_method": {label(t): {"val_drop": t["drop"], "test_drop": t["test"]["drop"]}
                           for t in plain if not t.get("refinements")},
            "refinements": {label(t): {"val_drop": t["drop"], "test_drop": t["test"]["drop"]}
                            for t in plain if t.get("refinements")},
            "fallback_trials": [[len(t["float_layers"]), t["drop"], t["test"]["drop"]]
                                for t in trials if t["float_layers"]]}


def _result(r) -> dict:
    return {"method": "+".join([r["method"], *r.get("refinements", [])]), "float_layers": len(r["float_layers"]),
            "val_drop": r["drop"], "test_drop": r["test"]["drop"], "test_int8_top1": r["test"]["int8_top1"],
            "int8_over_fp32_latency": r["int8_over_fp32_latency"], "seconds": r["seconds"]}


def _quantize(run_dir: Path, calib: Path, fmt: str, budget: float, console, **kw) -> dict:
    t0 = time.perf_counter()
    try:
        r = quantize(run_dir, calib, fmt=fmt, max_drop=budget, console=console, **kw)
    except EdgetlError as exc:  # a conversion that fails (recorded, the other figures go on)
        if not isinstance(exc, QuantizeError):
            return {"error": exc.message, "seconds": round(time.perf_counter() - t0, 1)}
        # the budget was missed: report what the trials reached
        qat = [{"val_drop": t["drop"], "test_drop": t["test"]["drop"]} for t in exc.trials if t["method"] == "qat"]
        return {"error": exc.message, **_trials(exc.trials), "seconds": round(time.perf_counter() - t0, 1),
                **({"qat_trial": qat[0]} if qat else {})}
    return {**_result(r), **_trials(r["trials"]), "record": r}


def _qat(record: dict, finetune_seconds: float) -> dict:
    q = record["qat"]
    return {"kept": q["kept"], "val_drop": q["drop"], "test_drop": q["test_drop"], "epochs": q["epochs"],
            "best_epoch": q["best_epoch"], "seconds": q["seconds"], "train_seconds": q["train_seconds"],
            "over_finetune": round(q["seconds"] / finetune_seconds, 2) if finetune_seconds else None,
            "parity": q["parity"], "history": q["history"], "reason": q["reason"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--formats", default="onnx,tflite")
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=12, help="fine-tuning epochs from ImageNet weights")
    ap.add_argument("--scratch-epochs", type=int, default=30, help="epochs when no ImageNet weights exist here")
    ap.add_argument("--patience", type=int, default=6)
    ap.add_argument("--max-drop", type=float, default=0.5)
    ap.add_argument("--samples", type=int, default=256, help="calibration images")
    ap.add_argument("--qat-models", default="mobilenet_v3_small,resnet18",
                    help="also run --method qat for these where auto did not reach QAT ('' for none)")
    ap.add_argument("--runs", type=Path, help="reuse (or keep) fine-tuned runs in RUNS/<backbone>")
    args = ap.parse_args()
    data = gtsrb_mini()
    if data is None:
        skip("quantize_budget", "gtsrb-mini not found (set EDGETL_GTSRB_MINI)")
    console = Console(quiet=not sys.stderr.isatty())
    record = {"benchmark": "quantize_budget", "img_size": args.img_size, "calibration_samples": args.samples,
              "budget": args.max_drop, "models": {}}
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
                epochs = args.epochs if weights == "imagenet" else args.scratch_epochs
                finetune(FinetuneConfig(data=data / "train", test=data / "test", out=run_dir, backbone=name,
                                        weights=weights, img_size=args.img_size, epochs=epochs,
                                        patience=args.patience, force=True), console)
            run = load_run(run_dir)
            entry.update(weights=run.record["weights"], val_top1=run.record["val_top1"],
                         test_top1=run.record["test_top1"], finetune_seconds=run.record["seconds"],
                         finetune_epochs=run.record["epochs"])
            for fmt in args.formats.split(","):
                auto = _quantize(run_dir, calib, fmt, args.max_drop, console, method="auto")
                out = {"budget": args.max_drop, "auto": {k: v for k, v in auto.items() if k != "record"}}
                r = auto.get("record")
                if r is not None:
                    out["auto"]["steps"] = [{k: s[k] for k in ("step", "ran", "best", "drop", "test_drop", "gain",
                                                               "seconds", "kept")} for s in r["steps"] if s["ran"]]
                    out["auto"]["int8_ops"], out["auto"]["float_ops"] = r["ops"]["int8_ops"], r["ops"]["float_ops"]
                calibrated = next((s for s in (r["steps"] if r else []) if s["step"] == "calibration"), None)
                if r is not None and calibrated and calibrated["kept"]:
                    out["today"] = "same as auto: calibration alone met the budget"
                else:  # today's auto, on the same run: calibration, then the float fallback
                    today = _quantize(run_dir, calib, fmt, args.max_drop, console, method="auto", escalate=TODAY)
                    out["today"] = {k: v for k, v in today.items() if k not in ("record", "per_method", "refinements")}
                if r is not None and r.get("qat"):
                    out["qat"] = _qat(r, entry["finetune_seconds"])
                elif "qat_trial" in auto:  # auto reached QAT and still missed
                    out["qat"] = {"from": "auto", **auto["qat_trial"]}
                elif name in args.qat_models.split(","):
                    q = _quantize(run_dir, calib, fmt, args.max_drop, console, method="qat")
                    out["qat"] = (_qat(q["record"], entry["finetune_seconds"]) if "record" in q
                                  else {"error": q["error"], "seconds": q["seconds"], **q.get("qat_trial", {})})
                entry[fmt] = out
                print(f"{name} {fmt}: auto {out['auto'].get('method', 'missed')} test drop "
                      f"{out['auto'].get('test_drop')} (val {out['auto'].get('val_drop')}); today "
                      f"{out['today'] if isinstance(out['today'], str) else out['today'].get('test_drop')}; qat "
                      f"{out.get('qat', {}).get('test_drop')}", file=sys.stderr)
            record["models"][name] = entry
    emit(record)


if __name__ == "__main__":
    main()

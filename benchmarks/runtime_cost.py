"""What the on-device runtime costs over the engine, for uint8 bundles (the default: the model takes
the frame itself) and float-input bundles (`--input float`), measured side by side in one run on
one core; and what head-only adaptation costs.

- Overhead: `Model.predict` on one uint8 frame at the model's size vs the raw engine invoke on
  the engine's own input tensor of that frame, for the host-cpu bundle (onnxruntime) and the rpi4
  bundle run here (LiteRT) of efficientnet_lite0 fine-tuned on gtsrb-mini at 64 px (at the
  precision compile chose), and of efficientnet_lite0 at its native 224 px (fp32, not quantized:
  the ImageNet backbone with a gtsrb-mini head). For each target the uint8 bundle's invoke and
  predict and the float bundle's invoke and predict are timed call by call in rounds whose order
  rotates, so drift in a shared machine's speed falls on all four alike; ratios are medians of
  each round's own ratio.
- Agreement: the uint8 and the float bundle's predictions on every gtsrb-mini test frame, and the
  int8 drop each quantize recorded (top-1 in percent, drops in points).
- Adaptation: softmax regression over 1,000 cached features (43 classes), imprinting one class
  from 5, and the peak memory both allocate (tracemalloc sees numpy's buffers).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core: before numpy and the engines load
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from _common import emit, gtsrb_mini, skip  # noqa: E402

from edgetl.compile import compile_bundle  # noqa: E402
from edgetl.data.imagefolder import load_images, scan  # noqa: E402
from edgetl.export import export  # noqa: E402
from edgetl.quantize import load_record, quantize  # noqa: E402
from edgetl.runtime import Head, Model  # noqa: E402
from edgetl.runtime.adapt import AdaptConfig, adapt_head, imprint  # noqa: E402
from edgetl.train.finetune import FinetuneConfig, finetune  # noqa: E402

ROUNDS = 2000


def _rounds(calls: dict, rounds: int = ROUNDS, warmup: int = 100) -> dict[str, np.ndarray]:
    """Each call's time (s) per round, the calls' order rotating from round to round."""
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    times = {name: np.empty(rounds) for name in names}
    for r in range(rounds):
        for k in range(len(names)):
            name = names[(r + k) % len(names)]
            t0 = time.perf_counter()
            calls[name]()
            times[name][r] = time.perf_counter() - t0
    return times


def _overhead(uint8_bundle: Path, float_bundle: Path, image: np.ndarray) -> dict:
    models = {"uint8": Model.load(uint8_bundle, threads=1, machine="any"),
              "float": Model.load(float_bundle, threads=1, machine="any")}
    frame = models["uint8"].pixels(image)[0]
    calls = {}
    for kind, model in models.items():
        x = model.engine_input(frame[None])
        calls[f"{kind} invoke"] = lambda model=model, x=x: model.engine.invoke(x)
        calls[f"{kind} predict"] = lambda model=model: model.predict(frame)
    t = _rounds(calls)
    out = {}
    for kind, model in models.items():
        invoke, predict = t[f"{kind} invoke"], t[f"{kind} predict"]
        out[kind] = {"engine": model.engine.name, "precision": model.bundle.manifest["precision"],
                     "input": f"{model.engine.input.dtype} {list(model.engine.input.shape)}",
                     "invoke_p50_ms": round(float(np.median(invoke)) * 1e3, 4),
                     "predict_p50_ms": round(float(np.median(predict)) * 1e3, 4),
                     "predict_over_invoke": round(float(np.median(predict / invoke)), 4)}
    out["uint8_predict_over_float_predict"] = round(float(np.median(t["uint8 predict"] / t["float predict"])), 4)
    return out


def _agreement(uint8_bundle: Path, float_bundle: Path, frames: np.ndarray, labels: np.ndarray) -> dict:
    preds = {}
    for kind, bundle in (("uint8", uint8_bundle), ("float", float_bundle)):
        model = Model.load(bundle, threads=1, machine="any")
        preds[kind] = np.array([p.index for p in model.predict(frames)])
        precision = model.bundle.manifest["precision"]
    return {"precision": precision, "frames": int(len(frames)),
            "agreement_pct": round(100.0 * float((preds["uint8"] == preds["float"]).mean()), 3),
            "top1_uint8": round(100.0 * float((preds["uint8"] == labels).mean()), 2),
            "top1_float": round(100.0 * float((preds["float"] == labels).mean()), 2)}


def _adaptation(x: np.ndarray, y: list[str]) -> dict:
    classes = sorted(set(y))
    head = Head(np.zeros((len(classes), x.shape[1]), np.float32), np.zeros(len(classes), np.float32),
                tuple(classes))
    tracemalloc.start()
    t0 = time.perf_counter()
    result = adapt_head(head, x, y, AdaptConfig(), unguarded=True)
    regress_s = time.perf_counter() - t0
    _, regress_peak = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    five = x[[i for i, lab in enumerate(y) if lab == classes[0]][:5]]
    t0 = time.perf_counter()
    for _ in range(100):
        imprint(result.head, five, "new-sign")
    imprint_ms = (time.perf_counter() - t0) * 10.0
    _, imprint_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"embeddings": int(len(x)), "dim": int(x.shape[1]), "classes": len(classes), "epochs": result.epochs,
            "regression_s": round(regress_s, 3), "imprint_ms": round(imprint_ms, 3),
            "regression_peak_mb": round(regress_peak / 2**20, 1), "imprint_peak_mb": round(imprint_peak / 2**20, 2)}


def _float_twin(run: Path, out: Path) -> Path:
    """A copy of `run` (the same weights) whose exports take the normalised float tensor."""
    if not (out / "finetune.json").is_file():
        shutil.copytree(run, out, ignore=shutil.ignore_patterns("export", "quantize", "bundles"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=Path, help="reuse (or keep) the fine-tuned runs in RUNS/")
    args = ap.parse_args()
    data = gtsrb_mini()
    if data is None:
        skip("runtime_cost", "gtsrb-mini not found (set EDGETL_GTSRB_MINI)")
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        runs = args.runs or tmp
        run = runs / "efficientnet_lite0"
        if not (run / "finetune.json").is_file():
            finetune(FinetuneConfig(data=data / "train", test=data / "test", out=run, backbone="efficientnet_lite0",
                                    img_size=64, epochs=12, patience=6, force=True))
        native = runs / "efficientnet_lite0-224"
        if not (native / "finetune.json").is_file():  # the head on the frozen ImageNet backbone: minutes, not hours
            finetune(FinetuneConfig(data=data / "train", out=native, backbone="efficientnet_lite0", img_size=224,
                                    freeze="all", head_epochs=30, force=True))
        calib = tmp / "calib.toml"
        calib.write_text(f'data = "{data / "train"}"\nsamples = 256\nseed = 0\n')
        twins = {"uint8": run, "float": _float_twin(run, runs / "efficientnet_lite0-float")}
        native_twins = {"uint8": native, "float": _float_twin(native, runs / "efficientnet_lite0-224-float")}
        record = {"benchmark": "runtime_cost", "threads": 1, "overhead": {}, "agreement": {}, "int8_drop": {}}
        for kind, path in twins.items():
            for fmt in ("onnx", "tflite"):
                if load_record(path, fmt) is None:
                    quantize(path, calib, fmt=fmt, method="auto", max_drop=0.5, input=kind)
                r = load_record(path, fmt)
                record["int8_drop"][f"{fmt} {kind}"] = {"method": r.method, "int8_top1": r.int8_top1, "drop": r.drop,
                                                        "max_drop": r.max_drop}
        for kind, path in native_twins.items():
            for fmt in ("onnx", "tflite"):
                export(path, fmt, input=kind)
        samples = scan(data / "train").samples
        small = load_images(samples[:1], (64, 64), "stretch").images[0]
        big = load_images(samples[:1], (224, 224), "stretch").images[0]
        test = scan(data / "test").samples
        for size, group, image in ((64, twins, small), (224, native_twins, big)):
            loaded = load_images(test, (size, size), "stretch")
            for target in ("host-cpu", "rpi4"):
                bundles = {kind: tmp / f"{target}-{size}-{kind}" for kind in group}
                for kind, path in group.items():
                    compile_bundle(path, target, bundles[kind])
                name = f"{target} {size}px"
                record["overhead"][name] = _overhead(bundles["uint8"], bundles["float"], image)
                record["agreement"][name] = _agreement(bundles["uint8"], bundles["float"], loaded.images,
                                                       loaded.labels)
        model = Model.load(tmp / "host-cpu-64-uint8", threads=1)
        images = load_images(samples, (64, 64), "stretch")
        pick = np.random.default_rng(0).choice(len(images.labels), 1000, replace=False)
        x = model.embed(images.images[pick])
        record["adaptation"] = _adaptation(x, [model.labels[i] for i in images.labels[pick]])
    emit(record)


if __name__ == "__main__":
    main()

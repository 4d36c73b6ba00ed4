"""What the on-device runtime costs over the engine, and what head-only adaptation costs, measured
side by side in one run on one core.

- Overhead: `Model.predict` on one uint8 image at the model's size (preprocessing, quantize,
  invoke, dequantize, head, softmax) vs the raw engine's own invoke on the prepared input, for
  the host-cpu bundle (onnxruntime) and the rpi4 bundle run here (LiteRT), of
  efficientnet_lite0 fine-tuned on gtsrb-mini at 64 px (the pipeline's own model, at the precision
  compile chose), and of efficientnet_lite0 at its native 224 px (fp32, not quantized: the
  ImageNet backbone with a gtsrb-mini head): the
  runtime's cost is per frame, so the ratio depends on how long the engine takes.
- Adaptation: softmax regression over 1,000 cached embeddings (43 classes), imprinting one class
  from 5 embeddings, and the peak memory both allocate (tracemalloc sees numpy's buffers).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core: before numpy and the engines load
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from _common import emit, gtsrb_mini, skip  # noqa: E402

from edgetl.compile import compile_bundle  # noqa: E402
from edgetl.data.imagefolder import load_images, scan  # noqa: E402
from edgetl.quantize import load_record, quantize  # noqa: E402
from edgetl.runtime import Head, Model  # noqa: E402
from edgetl.runtime.adapt import AdaptConfig, adapt_head, imprint  # noqa: E402
from edgetl.train.finetune import FinetuneConfig, finetune  # noqa: E402


def _paired(a, b, runs: int = 2000, warmup: int = 100) -> tuple[float, float]:
    """(p50 of `a`, median of `b` - `a`) in ms, timed call by call in pairs whose order
    alternates, so drift in a shared machine's speed (which moves a p50 by more than the runtime
    costs) falls on both alike and cancels in each pair's difference."""
    for _ in range(warmup):
        a()
        b()
    ta, diff = [], []
    for i in range(runs):
        first, second = (a, b) if i % 2 else (b, a)
        t0 = time.perf_counter()
        first()
        t1 = time.perf_counter()
        second()
        t2 = time.perf_counter()
        time_a, time_b = (t1 - t0, t2 - t1) if i % 2 else (t2 - t1, t1 - t0)
        ta.append(time_a)
        diff.append(time_b - time_a)
    return float(np.median(ta)) * 1000.0, float(np.median(diff)) * 1000.0


def _overhead(bundle: Path, image: np.ndarray) -> dict:
    model = Model.load(bundle, threads=1, machine="any")
    x = model.spec.normalize(model.pixels(image))
    if model.engine.input.quantized:
        from edgetl.runtime.engines import quantize as q

        x = q(x, model.engine.input)
    x = x.astype(model.engine.input.dtype)
    e, extra = _paired(lambda: model.engine.invoke(x), lambda: model.predict(image))
    return {"engine": model.engine.name, "precision": model.bundle.manifest["precision"],
            "input": model.engine.input.dtype, "size": list(model.input_size),
            "engine_invoke_p50_ms": round(e, 4), "predict_extra_ms": round(extra, 4),
            "ratio": round((e + extra) / e, 4)}


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=Path, help="reuse (or keep) the fine-tuned run in RUNS/efficientnet_lite0")
    args = ap.parse_args()
    data = gtsrb_mini()
    if data is None:
        skip("runtime_cost", "gtsrb-mini not found (set EDGETL_GTSRB_MINI)")
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        run = (args.runs or tmp) / "efficientnet_lite0"
        if not (run / "finetune.json").is_file():
            finetune(FinetuneConfig(data=data / "train", test=data / "test", out=run, backbone="efficientnet_lite0",
                                    img_size=64, epochs=12, patience=6, force=True))
        calib = tmp / "calib.toml"
        calib.write_text(f'data = "{data / "train"}"\nsamples = 256\nseed = 0\n')
        for fmt in ("onnx", "tflite"):
            if load_record(run, fmt) is None:
                quantize(run, calib, fmt=fmt, method="auto", max_drop=0.5)
        samples = scan(data / "train").samples
        images = load_images(samples, (64, 64), "stretch")
        record = {"benchmark": "runtime_cost", "threads": 1, "overhead": {}}
        for target in ("host-cpu", "rpi4"):
            compile_bundle(run, target, tmp / target)
            record["overhead"][f"{target} 64px"] = _overhead(tmp / target, images.images[0])
        native = (args.runs or tmp) / "efficientnet_lite0-224"
        if not (native / "finetune.json").is_file():  # the head on the frozen ImageNet backbone: minutes, not hours
            finetune(FinetuneConfig(data=data / "train", out=native, backbone="efficientnet_lite0", img_size=224,
                                    freeze="all", head_epochs=30, force=True))
        big = load_images(samples[:1], (224, 224), "stretch").images[0]
        for target in ("host-cpu", "rpi4"):
            compile_bundle(native, target, tmp / f"{target}-224")
            record["overhead"][f"{target} 224px"] = _overhead(tmp / f"{target}-224", big)
        model = Model.load(tmp / "host-cpu", threads=1)
        pick = np.random.default_rng(0).choice(len(images.labels), 1000, replace=False)
        x = model.embed(images.images[pick])
        record["adaptation"] = _adaptation(x, [model.labels[i] for i in images.labels[pick]])
    emit(record)


if __name__ == "__main__":
    main()

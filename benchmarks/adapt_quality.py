"""Head-only adaptation on the device against full fine-tuning on the server, side by side.

1. Synthetic, new conditions: efficientnet_lite0 pretrained on the server on city-a (200/class:
   the server has the whole catalogue of its own city) is bundled for host-cpu; the device
   adapts only the head on 20 labelled city-b images per class (`Model.adapt`). Baseline: the
   server fine-tunes the whole city-a model on the same images. Both scored on city-b test.
2. Real, new classes: lite0 fine-tuned on the server on gtsrb-mini classes 00-21 only (all their
   train images); the device learns classes 22-42 from 20 images each, with 20 images of each old
   class for the regression and its guard. Baseline: the server fine-tunes ImageNet lite0 on the
   same images (00-21 all, 22-42 20 each). Both scored on all 43 test classes. A linear probe
   of the ImageNet backbone on the same images is printed beside them.
Acceptance: device >= 97% of the server's top-1 (1), >= 90% (2). `top1` is the head in force
after the guard; `candidate_top1` the head adaptation proposed, whether committed or not.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import emit, gtsrb_mini, skip

from edgetl.compile import compile_bundle
from edgetl.console import Console
from edgetl.data import synth
from edgetl.runtime import Model
from edgetl.runtime.adapt import AdaptConfig
from edgetl.runtime.images import labelled_folder
from edgetl.train.finetune import FinetuneConfig, finetune

PX = 64


def _classes(src: Path, dst: Path, names: list[str], per_class: int | None = None) -> Path:
    """Symlinked ImageFolder of `names` from `src` (the first `per_class` images of each, or all)."""
    for name in names:
        (dst / name).mkdir(parents=True)
        for img in sorted((src / name).iterdir())[:per_class]:
            (dst / name / img.name).symlink_to(img.resolve())
    return dst


def _device(run: Path, adapt_dir: Path, test: Path, out: Path, config: AdaptConfig) -> dict:
    compile_bundle(run, "host-cpu", out)
    model = Model.load(out)
    paths, labels = labelled_folder(adapt_dir)
    t0 = time.perf_counter()
    result = model.adapt(paths, labels, config=config)
    seconds = time.perf_counter() - t0
    test_paths, test_labels = labelled_folder(test)
    x = model.embed(test_paths)

    def top1(head) -> float:
        pred = [head.labels[i] for i in head.logits(x).argmax(1)]
        return round(100.0 * float(np.mean([p == t for p, t in zip(pred, test_labels, strict=True)])), 2)

    return {"top1": top1(model.head), "candidate_top1": top1(result.head), "committed": result.committed,
            "reason": result.reason, "classes": len(model.labels),
            "epochs": result.epochs, "adapt_seconds_incl_embedding": round(seconds, 1),
            "images": len(paths)}


def _server(weights: str, data: Path, test: Path, out: Path, epochs: int, console: Console) -> float:
    return finetune(FinetuneConfig(data=data, test=test, out=out, weights=weights, img_size=PX, epochs=epochs,
                                   patience=6, force=True), console).test_top1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=12)
    args = ap.parse_args()
    data = gtsrb_mini()
    if data is None:
        skip("adapt_quality", "gtsrb-mini not found (set EDGETL_GTSRB_MINI)")
    console = Console(quiet=not sys.stderr.isatty())
    record = {"benchmark": "adapt_quality", "img_size": PX}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        # 1. synthetic: new conditions, same classes
        synth.synthesize(tmp / "city-a", "city-a", 200, size=PX, seed=1)
        synth.synthesize(tmp / "city-b", "city-b", 20, size=PX, seed=2)
        synth.synthesize(tmp / "city-b-test", "city-b", 25, size=PX, seed=3)
        finetune(FinetuneConfig(data=tmp / "city-a", test=tmp / "city-b-test", out=tmp / "runs/city-a",
                                img_size=PX, epochs=args.epochs, patience=6, stage="pretrain"), console)
        device = _device(tmp / "runs/city-a", tmp / "city-b", tmp / "city-b-test", tmp / "bundles/city-a",
                         AdaptConfig())
        server = _server(str(tmp / "runs/city-a"), tmp / "city-b", tmp / "city-b-test", tmp / "runs/city-b",
                         15, console)
        record["synthetic"] = {"device": device, "server_top1": server,
                               "device_over_server": round(device["top1"] / server, 4)}
        print(f"synthetic: {record['synthetic']}", file=sys.stderr)
        # 2. real: new classes on the device
        names = sorted(p.name for p in (data / "train").iterdir() if p.is_dir())
        old, new = names[:22], names[22:]
        server_old = _classes(data / "train", tmp / "g-old", old)
        device_data = _classes(data / "train", tmp / "g-device", new, 20)
        _classes(data / "train", device_data, old, 20)
        _classes(data / "train", tmp / "g-all", old)
        _classes(data / "train", tmp / "g-all", new, 20)
        finetune(FinetuneConfig(data=server_old, out=tmp / "runs/g-old", weights="imagenet", img_size=PX,
                                epochs=args.epochs, patience=6), console)
        device = _device(tmp / "runs/g-old", device_data, data / "test", tmp / "bundles/g-old", AdaptConfig())
        server = _server("imagenet", tmp / "g-all", data / "test", tmp / "runs/g-all", args.epochs, console)
        probe = finetune(FinetuneConfig(data=tmp / "g-all", test=data / "test", out=tmp / "runs/g-probe",
                                        weights="imagenet", img_size=PX, freeze="all", epochs=1), console).test_top1
        record["new_classes"] = {"old": len(old), "new": len(new), "device": device, "server_top1": server,
                                 "imagenet_linear_probe_top1": probe,
                                 "device_over_server": round(device["top1"] / server, 4)}
        print(f"new classes: {record['new_classes']}", file=sys.stderr)
    emit(record)


if __name__ == "__main__":
    main()

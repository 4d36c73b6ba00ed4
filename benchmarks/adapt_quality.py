"""On-device adaptation against full fine-tuning on the server, side by side in one run.

1. Synthetic, new conditions: efficientnet_lite0 pretrained on the server on city-a (200/class:
   the server has the whole catalogue of its own city) is bundled for host-cpu; the device learns
   its head from 20 labelled city-b images per class. Baseline: the server fine-tunes the whole
   city-a model on the same images. Both scored on city-b test.
2. Real, new classes: lite0 fine-tuned on the server on gtsrb-mini classes 00-21 only (all their
   train images); the device learns classes 22-42 from 20 images each, with 20 images of each old
   class for the regression and its guard. Baseline: the server fine-tunes ImageNet lite0 on the
   same images (00-21 all, 22-42 20 each). Both scored on all 43 test classes.

Per case, the device's heads side by side, each on the same features of the same bundle:
- `embedding_head`: a head over the final embedding alone, guarded by the fixed 1-point margin
  (what the device did before taps);
- `tapped_head`: `Model.adapt` with its defaults: a head over the embedding and the taps, and the
  McNemar guard; the head in force after it is what `device_over_server` scores;
- `tapped_head_unlabelled`: the same, with the feature statistics taken from the labelled and the
  unlabelled frames together;
- `unlabelled_only`: the bundle's own head with its statistics moved to unlabelled frames, and
  no label at all (guarded on the bundle's checkset).
`old_top1` is top-1 on the old classes' test images (case 2: before, the bundle's own head). The
cost (one core, `--cost-only` in a child process): fitting a head to 1,000 images' features
(embedding excluded), its peak extra memory, and predict per frame with the tapped head against
the bundle's own. Top-1 figures are percent.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import emit, gtsrb_mini, skip

PX = 64
COST_IMAGES = 1000
PREDICT_FRAMES = 400


def _classes(src: Path, dst: Path, names: list[str], per_class: int | None = None, skip_first: int = 0) -> Path:
    """Symlinked ImageFolder of `names` from `src` (images [skip_first:skip_first+per_class] of each, or all)."""
    for name in names:
        (dst / name).mkdir(parents=True, exist_ok=True)
        images = sorted((src / name).iterdir())[skip_first:]
        for img in images[:per_class]:
            (dst / name / img.name).symlink_to(img.resolve())
    return dst


def _device(run: Path, adapt_dir: Path, test: Path, unlabelled: Path, out: Path) -> dict:
    from edgetl.compile import compile_bundle
    from edgetl.runtime import Model
    from edgetl.runtime.adapt import AdaptConfig, adapt_head, guard_with
    from edgetl.runtime.images import image_files, labelled_folder

    compile_bundle(run, "host-cpu", out)
    model = Model.load(out)
    base, layout = model.head, model.layout
    paths, labels = labelled_folder(adapt_dir)
    test_paths, test_labels = labelled_folder(test)
    frames = image_files(unlabelled)
    x, xt, xu = model.embed(paths), model.embed(test_paths), model.embed(frames)
    truth = np.asarray(test_labels)
    old = np.isin(truth, base.labels)

    def scored(head) -> dict:
        hits = np.asarray([head.labels[i] for i in model.logits(xt, head).argmax(1)]) == truth
        return {"top1": round(100.0 * float(hits.mean()), 2), "old_top1": round(100.0 * float(hits[old].mean()), 2)}

    def row(result) -> dict:
        return {**scored(result.head), "committed": result.committed, "reason": result.reason,
                "head": result.to_dict()["head"], "chosen": result.details.get("chosen"),
                "epochs": result.epochs, "guard": result.details.get("guard")}

    record = {"bundle": {"taps": list(layout.taps), "features": layout.width, "classes": len(base.labels)},
              "bundle_head": scored(base), "images": len(paths), "unlabelled_frames": len(frames)}
    record["embedding_head"] = row(adapt_head(base, x, labels, AdaptConfig(taps=False, margin=1.0), layout))
    record["tapped_head_unlabelled"] = row(adapt_head(base, x, labels, AdaptConfig(), layout, unlabelled=xu))
    pixels, names = model.bundle.checkset()
    only = adapt_head(base, None, None, AdaptConfig(), layout, unlabelled=xu, source=model.bundle.feature_statistics())
    only = guard_with(only, base, layout, model.embed(pixels), names, AdaptConfig())
    record["unlabelled_only"] = {**row(only), "checkset_images": len(names)}
    t0 = time.perf_counter()
    result = model.adapt(paths, labels)  # what a user runs: the defaults, committed if the guard allows
    record["tapped_head"] = {**row(result), "in_force": scored(model.head),
                             "adapt_seconds_incl_embedding": round(time.perf_counter() - t0, 1)}
    return record


def _server(weights: str, data: Path, test: Path, out: Path, epochs: int, console) -> float:
    from edgetl.train.finetune import FinetuneConfig, finetune

    return finetune(FinetuneConfig(data=data, test=test, out=out, weights=weights, img_size=PX, epochs=epochs,
                                   patience=6, force=True), console).test_top1


def _cost(bundle: Path, adapt_dir: Path, work: Path) -> dict:
    """The cost figures, measured in a child process on one core (BLAS and the engine single-threaded)."""
    from edgetl.runtime import Model
    from edgetl.runtime.images import labelled_folder

    model = Model.load(bundle)
    paths, labels = labelled_folder(adapt_dir)
    np.savez(work / "cost.npz", x=model.embed(paths[:COST_IMAGES]), labels=np.asarray(labels[:COST_IMAGES]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, __file__, "--cost-only", str(bundle), str(work / "cost.npz")],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cost_only(bundle: Path, features: Path) -> None:
    """Child process: fit time and peak extra memory of a head on these features; predict per frame."""
    import tracemalloc

    from edgetl.runtime import Model
    from edgetl.runtime.adapt import AdaptConfig, adapt_head

    model = Model.load(bundle, threads=1)
    data = np.load(features)
    x, labels = data["x"], [str(s) for s in data["labels"]]
    own, adapted = model.heads.base, model.head  # the bundle's own head; the one the bench's adapt committed
    adapt_head(own, x[:50], labels[:50], AdaptConfig(), model.layout)  # warm the code paths

    def timed(head):
        tracemalloc.start()
        t0 = time.perf_counter()
        result = adapt_head(head, x, labels, AdaptConfig(), model.layout)
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return result, seconds, peak

    result, fit_s, peak = timed(own)  # relearnt: every class of the bundle's head is among the images
    _, refine_s, refine_peak = timed(adapted)  # refined: the adapted head knows a class these images lack
    frame = np.random.default_rng(0).integers(0, 256, (*model.input_size, 3), dtype=np.uint8)
    heads = {"bundle_head": model.head, "tapped_head": result.head}
    times = {k: [] for k in heads}
    for _ in range(20):
        model.predict(frame)
    for i in range(PREDICT_FRAMES):  # interleaved, so drift on the machine hits both alike
        for name, head in (heads.items() if i % 2 == 0 else reversed(heads.items())):
            model.head = head
            t = time.perf_counter()
            model.predict(frame)
            times[name].append(time.perf_counter() - t)
    p50 = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
    print(json.dumps({"fit_images": len(x), "fit_features": int(x.shape[1]), "fit_classes": len(set(labels)),
                      "fit_seconds": round(fit_s, 3), "fit_peak_extra_mb": round(peak / 2 ** 20, 1),
                      "refine_classes_in_force": len(adapted.labels), "refine_seconds": round(refine_s, 3),
                      "refine_peak_extra_mb": round(refine_peak / 2 ** 20, 1),
                      "predict_p50_ms": {k: round(v, 4) for k, v in p50.items()},
                      "tapped_over_bundle_head": round(p50["tapped_head"] / p50["bundle_head"], 4)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--cost-only", nargs=2, type=Path, metavar=("BUNDLE", "FEATURES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cost_only:
        return cost_only(*args.cost_only)
    data = gtsrb_mini()
    if data is None:
        skip("adapt_quality", "gtsrb-mini not found (set EDGETL_GTSRB_MINI)")
    from edgetl.console import Console
    from edgetl.data import synth
    from edgetl.train.finetune import FinetuneConfig, finetune

    console = Console(quiet=not sys.stderr.isatty())
    record = {"benchmark": "adapt_quality", "img_size": PX, "top1_unit": "percent"}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        # 1. synthetic: new conditions, same classes
        synth.synthesize(tmp / "city-a", "city-a", 200, size=PX, seed=1)
        synth.synthesize(tmp / "city-b", "city-b", 20, size=PX, seed=2)
        synth.synthesize(tmp / "city-b-test", "city-b", 25, size=PX, seed=3)
        synth.synthesize(tmp / "city-b-frames", "city-b", 40, size=PX, seed=4)  # unlabelled: labels unused
        finetune(FinetuneConfig(data=tmp / "city-a", test=tmp / "city-b-test", out=tmp / "runs/city-a",
                                img_size=PX, epochs=args.epochs, patience=6, stage="pretrain"), console)
        device = _device(tmp / "runs/city-a", tmp / "city-b", tmp / "city-b-test", tmp / "city-b-frames",
                         tmp / "bundles/city-a")
        server = _server(str(tmp / "runs/city-a"), tmp / "city-b", tmp / "city-b-test", tmp / "runs/city-b",
                         15, console)
        record["synthetic"] = {"device": device, "server_top1": server,
                               "device_over_server": round(device["tapped_head"]["in_force"]["top1"] / server, 4),
                               "unlabelled_gain_points": round(device["unlabelled_only"]["top1"]
                                                               - device["bundle_head"]["top1"], 2)}
        print(f"synthetic: {json.dumps(record['synthetic'])}", file=sys.stderr)
        # 2. real: new classes on the device
        names = sorted(p.name for p in (data / "train").iterdir() if p.is_dir())
        old, new = names[:22], names[22:]
        server_old = _classes(data / "train", tmp / "g-old", old)
        device_data = _classes(data / "train", tmp / "g-device", new, 20)
        _classes(data / "train", device_data, old, 20)
        _classes(data / "train", tmp / "g-frames", names, skip_first=20)  # the rest, unlabelled
        _classes(data / "train", tmp / "g-all", old)
        _classes(data / "train", tmp / "g-all", new, 20)
        _classes(data / "train", tmp / "g-cost", names, 24)  # 43 x 24 >= 1,000 labelled images for the cost
        finetune(FinetuneConfig(data=server_old, out=tmp / "runs/g-old", weights="imagenet", img_size=PX,
                                epochs=args.epochs, patience=6), console)
        device = _device(tmp / "runs/g-old", device_data, data / "test", tmp / "g-frames", tmp / "bundles/g-old")
        server = _server("imagenet", tmp / "g-all", data / "test", tmp / "runs/g-all", args.epochs, console)
        in_force = device["tapped_head"]["in_force"]
        record["new_classes"] = {"old": len(old), "new": len(new), "device": device, "server_top1": server,
                                 "device_over_server": round(in_force["top1"] / server, 4),
                                 "old_class_drop_points": round(device["bundle_head"]["old_top1"]
                                                                - in_force["old_top1"], 2)}
        print(f"new classes: {json.dumps(record['new_classes'])}", file=sys.stderr)
        record["cost_one_core"] = _cost(tmp / "bundles/g-old", tmp / "g-cost", tmp)
    record["seconds"] = round(time.perf_counter() - started)
    emit(record)


if __name__ == "__main__":
    main()

"""Fine-tuning on real traffic signs (gtsrb-mini), with `edgetl finetune`'s defaults: the user
passes only --data, --test, --out and --seed.

- pretrained efficientnet_lite0, 20 labels per class: 3 seeds, test top-1 mean and std (percent),
  and seconds of training per seed;
- the same from scratch (one seed): the transfer gain in points;
- all 60 labels per class (one seed, `--full-seeds` for more);
- `--ablate`: each recipe element changed in turn (seed 0, 20 per class), and what that
  cost or added against the default's seed-0 run.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, gtsrb_mini, skip, subset  # noqa: E402

from edgetl.console import Console  # noqa: E402
from edgetl.train.backbones import get_spec  # noqa: E402
from edgetl.train.finetune import FinetuneConfig, finetune  # noqa: E402

# What each element of the recipe is measured against: the default with that one element changed.
ABLATIONS = {
    "lr_decay_0.1": {"lr_decay": 0.1},  # fastai-style discriminative lrs: the input stage at lr/10
    "cosine": {"schedule": "cosine"},  # no warm-up, no momentum cycling
    "bn_train": {"bn": "train"},  # BatchNorm statistics follow the batches
    "no_ema": {"ema": 0.0},
    "no_label_smoothing": {"label_smoothing": 0.0},
    "select_top1": {"select": "top1"},  # best epoch and early stopping by val top-1
    "no_augment": {"augment": False},
    "weight_decay_1e-4": {"weight_decay": 1e-4},  # the previous default, next to none
}


RECIPE = ("epochs", "lr", "lr_decay", "weight_decay", "schedule", "bn", "ema", "label_smoothing", "select",
          "patience")


def spread(values: list[float]) -> dict:
    return {"mean": round(statistics.mean(values), 2),
            "std": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0, "runs": values}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", type=int, default=20, help="labelled images per class in the small budget")
    ap.add_argument("--seeds", type=int, default=3, help="seeds of the small-budget run (default 3)")
    ap.add_argument("--full-seeds", type=int, default=1, help="seeds of the all-60 run (default 1; 0 leaves it out)")
    ap.add_argument("--skip-scratch", action="store_true", help="leave out the from-scratch run")
    ap.add_argument("--ablate", nargs="?", const=",".join(ABLATIONS), default="",
                    help=f"also run recipe elements changed in turn (seed 0): all, or some of {','.join(ABLATIONS)}")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    unknown = [name for name in args.ablate.split(",") if name and name not in ABLATIONS]
    if unknown:  # before the first run, not after half an hour of them
        ap.error(f"unknown ablation {','.join(unknown)}: choose from {','.join(ABLATIONS)}")
    data = gtsrb_mini()
    if data is None:
        skip("transfer_gain", "gtsrb-mini not found (set EDGETL_GTSRB_MINI)")
    console = Console(quiet=not args.verbose)
    defaults = FinetuneConfig(data=Path("."), out=Path("."))
    record: dict = {"benchmark": "transfer_gain", "backbone": "efficientnet_lite0", "labels_per_class": args.labels,
                    "img_size": get_spec("efficientnet_lite0").default_img_size,
                    "defaults": {k: getattr(defaults, k) for k in RECIPE},
                    "units": "test top-1 in percent; seconds of training per run"}

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        small = subset(data / "train", tmp / f"train-{args.labels}", args.labels)

        def run(name: str, train_dir: Path, seed: int, **overrides) -> tuple[float, float]:
            t0 = time.perf_counter()
            result = finetune(FinetuneConfig(data=train_dir, test=data / "test", out=tmp / "runs" / name, seed=seed,
                                             **overrides), console)
            seconds = round(time.perf_counter() - t0, 1)
            print(f"{name}: test top-1 {result.test_top1}% (val {result.val_top1}%, best epoch {result.best_epoch}"
                  f"/{result.epochs}, {seconds} s)", file=sys.stderr)
            return result.test_top1, seconds

        pretrained = [run(f"pretrained-{seed}", small, seed) for seed in range(args.seeds)]
        record["pretrained_top1"] = spread([t for t, _ in pretrained])
        record["pretrained_seconds"] = spread([s for _, s in pretrained])
        if not args.skip_scratch:
            record["scratch_top1"], record["scratch_seconds"] = run("scratch", small, 0, weights="none")
            record["gain_points"] = round(pretrained[0][0] - record["scratch_top1"], 2)
        if args.full_seeds:
            full = [run(f"all-{seed}", data / "train", seed) for seed in range(args.full_seeds)]
            record["pretrained_all_top1"] = spread([t for t, _ in full])
            record["pretrained_all_seconds"] = spread([s for _, s in full])
        if args.ablate:
            base = pretrained[0][0]
            record["ablation"] = {}
            for name in args.ablate.split(","):
                overrides = ABLATIONS[name]
                top1, seconds = run(name, small, 0, **overrides)
                record["ablation"][name] = {"top1": top1, "points_vs_default": round(top1 - base, 2),
                                            "seconds": seconds}
    emit(record)


if __name__ == "__main__":
    main()

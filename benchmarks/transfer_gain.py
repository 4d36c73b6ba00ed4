"""Transfer gain on real traffic signs: ImageNet-pretrained efficientnet_lite0 vs the same
architecture from scratch, same budget, on gtsrb-mini with 20 labels per class; plus all 60.

Prints one JSON line: test top-1 of each, and the gain in points.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, gtsrb_mini, skip, subset  # noqa: E402

from edgetl.console import Console  # noqa: E402
from edgetl.train.finetune import FinetuneConfig, finetune  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--patience", type=int, default=6)
    ap.add_argument("--labels", type=int, default=20, help="labelled images per class in the small budget")
    ap.add_argument("--skip-full", action="store_true", help="leave out the all-60-per-class run")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    data = gtsrb_mini()
    if data is None:
        skip("transfer_gain", "gtsrb-mini not found (set EDGETL_GTSRB_MINI)")
    console = Console(quiet=not args.verbose)
    record = {"benchmark": "transfer_gain", "backbone": "efficientnet_lite0", "img_size": args.img_size,
              "epochs": args.epochs, "patience": args.patience, "labels_per_class": args.labels}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        small = subset(data / "train", tmp / f"train-{args.labels}", args.labels)
        runs = [("pretrained", small, "imagenet"), ("scratch", small, "none")]
        if not args.skip_full:
            runs.append(("pretrained_all", data / "train", "imagenet"))
        for name, train_dir, weights in runs:
            t0 = time.perf_counter()
            result = finetune(FinetuneConfig(data=train_dir, out=tmp / "runs" / name, backbone="efficientnet_lite0",
                                             weights=weights, test=data / "test", img_size=args.img_size,
                                             epochs=args.epochs, patience=args.patience), console)
            record[f"{name}_top1"] = result.test_top1
            record[f"{name}_val_top1"] = result.val_top1
            record[f"{name}_seconds"] = round(time.perf_counter() - t0, 1)
            print(f"{name}: test top-1 {result.test_top1}% ({record[f'{name}_seconds']} s)", file=sys.stderr)
    record["gain_points"] = round(record["pretrained_top1"] - record["scratch_top1"], 2)
    emit(record)


if __name__ == "__main__":
    main()

"""The synthetic domain gap is real: efficientnet_lite0 trained on city-a alone, scored on
city-a and on city-b test images; then fine-tuned on 20 city-b labels per class to show
what the gap costs and what local fine-tuning wins back. One JSON line.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402

from edgetl.console import Console  # noqa: E402
from edgetl.data import synth  # noqa: E402
from edgetl.train.finetune import FinetuneConfig, finetune  # noqa: E402
from edgetl.train.run import evaluate, load_run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--per-class", type=int, default=60, help="city-a training images per class")
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    console = Console(quiet=not args.verbose)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        a_train = synth.synthesize(tmp / "a-train", "city-a", args.per_class, seed=1)
        a_test = synth.synthesize(tmp / "a-test", "city-a", 25, seed=2)
        b_train = synth.synthesize(tmp / "b-train", "city-b", 20, seed=3)
        b_test = synth.synthesize(tmp / "b-test", "city-b", 25, seed=4)
        t0 = time.perf_counter()
        finetune(FinetuneConfig(data=a_train, out=tmp / "runs" / "a", img_size=args.img_size, epochs=args.epochs,
                                stage="pretrain"), console)
        run_a = load_run(tmp / "runs" / "a")
        on_a, on_b = evaluate(run_a, a_test), evaluate(run_a, b_test)
        t1 = time.perf_counter()
        local = finetune(FinetuneConfig(data=b_train, out=tmp / "runs" / "b", weights=str(tmp / "runs" / "a"),
                                        test=b_test, epochs=args.epochs), console)
        t2 = time.perf_counter()
    emit({"benchmark": "domain_gap", "backbone": "efficientnet_lite0", "img_size": args.img_size,
          "classes": len(synth.CLASSES), "city_a_train_per_class": args.per_class,
          "city_a_test_top1": on_a.top1, "city_b_test_top1": on_b.top1,
          "gap_points": round(on_a.top1 - on_b.top1, 2),
          "city_b_after_finetune_20_per_class_top1": local.test_top1,
          "pretrain_seconds": round(t1 - t0, 1), "finetune_seconds": round(t2 - t1, 1)})


if __name__ == "__main__":
    main()

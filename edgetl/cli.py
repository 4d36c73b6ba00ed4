"""The `edgetl` command: parses flags into the API's config objects and prints results.

Errors a user can cause print one line with a hint and exit 2; `--verbose` adds the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

from edgetl import __version__
from edgetl.errors import EdgetlError


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--verbose", "-v", action="store_true", help="show tracebacks and more detail")
    return p


def _add_train_flags(p: argparse.ArgumentParser, stage: str) -> None:
    p.add_argument("--data", type=Path, required=True, help="ImageFolder dir: DATA/<class>/*.png|jpg|ppm|bmp")
    p.add_argument("--out", type=Path, required=True, help="run dir to write, e.g. runs/city-b")
    p.add_argument("--backbone", help="registered backbone (see `edgetl backbones`); "
                   "default: the --weights run's, else efficientnet_lite0")
    p.add_argument("--weights", help="imagenet (default) | none | torchvision weights name | state_dict path | run dir")
    p.add_argument("--val", type=Path, help="val ImageFolder dir (default: a seeded split of --data)")
    p.add_argument("--test", type=Path, help="test ImageFolder dir; its top-1 goes into the run record")
    p.add_argument("--freeze", default="none", help="all (head only) | none (default) | until:STAGE")
    p.add_argument("--epochs", type=int, default=10, help="epochs with unfrozen stages (default 10)")
    p.add_argument("--head-epochs", type=int, default=60, help="head-only epochs on cached embeddings (default 60)")
    p.add_argument("--img-size", type=int, help="model input size in px (default: the weights run's, else 96)")
    p.add_argument("--resize", default="stretch", help="stretch (whole crop, default) | crop (centre crop)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3,
                   help="fine-tuning learning rate (default 1e-3); the head-only phase uses 3 x lr")
    p.add_argument("--backbone-lr-scale", type=float, default=1.0,
                   help="unfrozen stages learn at lr x this (default 1.0; e.g. 0.1 for gentler updates)")
    p.add_argument("--patience", type=int, default=4, help="early stopping: epochs without val gain")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-augment", action="store_true", help="train without augmentation")
    p.add_argument("--strict", action="store_true", help="refuse unreadable images instead of skipping them")
    p.add_argument("--force", action="store_true", help="replace an existing run dir")
    p.set_defaults(stage=stage)


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="edgetl", parents=[common],
        description="Fine-tune, quantize, compile, ship and check vision backbones for edge devices.")
    parser.add_argument("--version", action="version", version=f"edgetl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    data = sub.add_parser("data", parents=[common], help="datasets: synthesize, inspect")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION")
    synth = data_sub.add_parser("synth", parents=[common], help="write synthetic road-sign crops (offline demo/tests)")
    synth.add_argument("--domain", required=True,
                       help="city-a (clean daytime catalogue) | city-b (another country, hard conditions)")
    synth.add_argument("--per-class", type=int, required=True, help="images per class")
    synth.add_argument("--size", type=int, default=64, help="image size in px (default 64)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--out", type=Path, required=True, help="new or empty dir to write OUT/<class>/*.png")
    show = data_sub.add_parser("show", parents=[common], help="classes and image counts of an ImageFolder dir")
    show.add_argument("dir", type=Path)

    sub.add_parser("backbones", parents=[common], help="list the registered backbones and their weights")

    ev = sub.add_parser("eval", parents=[common], help="top-1 of a run on a labelled ImageFolder dir")
    ev.add_argument("run", type=Path, help="run dir, e.g. runs/city-b")
    ev.add_argument("--data", type=Path, required=True, help="ImageFolder dir with (some of) the run's classes")
    ev.add_argument("--per-class", action="store_true", help="also print top-1 per class")
    ev.add_argument("--strict", action="store_true", help="refuse unreadable images instead of skipping them")

    ft = sub.add_parser("finetune", parents=[common], help="fine-tune a pretrained backbone on local data",
                        description="Head on the frozen backbone (cached embeddings), then the unfrozen stages "
                                    "at a lower learning rate; writes a run dir. Runs under torchrun for DDP.")
    _add_train_flags(ft, "finetune")
    pt = sub.add_parser("pretrain", parents=[common], help="the same loop, server-side, on a source domain",
                        description="Server-side training on a source domain (e.g. city-a); the run it writes is "
                                    "a --weights for later `edgetl finetune` runs.")
    _add_train_flags(pt, "pretrain")

    ex = sub.add_parser("export", parents=[common], help="export a run's backbone (+ head) to ONNX or TFLite",
                        description="Writes RUN/export/FORMAT: backbone (image -> embedding), head.npz and a combined "
                                    "model, each checked against PyTorch on real images of the run's data.")
    ex.add_argument("run", type=Path, help="run dir, e.g. runs/city-b")
    ex.add_argument("--format", default="onnx", help="onnx (default) | tflite")
    ex.add_argument("--tolerance", type=float, default=1e-3,
                    help="parity: largest embedding difference allowed, relative to the embeddings' range")

    calib = sub.add_parser("calib", parents=[common], help="calibration sets: inspect")
    calib_sub = calib.add_subparsers(dest="calib_command", metavar="ACTION")
    cshow = calib_sub.add_parser("show", parents=[common], help="what a calibration set would use; refuses bad sets")
    cshow.add_argument("file", type=Path, help="calibration/NAME.toml")

    qz = sub.add_parser("quantize", parents=[common], help="int8 backbone calibrated on real images, within a budget",
                        description="Writes RUN/quantize/FORMAT with quantize.json: fp32 vs int8 top-1 on the run's "
                                    "val split, agreement, float layers, op counts, sizes and host latencies.")
    qz.add_argument("run", type=Path, help="run dir, e.g. runs/city-b")
    qz.add_argument("--calib", type=Path, required=True, help="calibration/NAME.toml")
    qz.add_argument("--format", default="onnx", help="onnx (default) | tflite")
    qz.add_argument("--method", default="auto", help="auto (default) | minmax | entropy | percentile")
    qz.add_argument("--max-drop", type=float, default=1.0, help="top-1 points int8 may lose against fp32 (default 1.0)")
    qz.add_argument("--split", default="val", help="the run's split the budget is judged on: val (default) | test")
    qz.add_argument("--data", type=Path, help="score on this labelled ImageFolder dir instead of the run's split")
    qz.add_argument("--io", default="int8", help="tflite input/output type: int8 (default) | uint8 (targets that ask)")
    return parser


def _cmd_synth(args, console) -> int:
    from edgetl.data import synth

    with console.task(f"synthesizing {args.domain}", args.per_class * len(synth.CLASSES)) as advance:
        t0 = time.perf_counter()
        out = synth.synthesize(args.out, args.domain, args.per_class, args.size, args.seed, progress=advance)
        seconds = time.perf_counter() - t0
    n = args.per_class * len(synth.CLASSES)
    console.table(f"{args.domain} -> {out}", ["classes", "images", "size", "seconds", "images/s"],
                  [[len(synth.CLASSES), n, f"{args.size}px", f"{seconds:.1f}", f"{n / seconds:.0f}"]])
    return 0


def _cmd_show(args, console) -> int:
    from edgetl.data import scan

    folder = scan(args.dir)
    counts = folder.counts()
    console.table(f"{args.dir}: {len(folder.classes)} classes, {sum(counts)} images", ["class", "images"],
                  list(zip(folder.classes, counts, strict=True)))
    return 0


def _cmd_backbones(args, console) -> int:
    from edgetl.train.backbones import REGISTRY

    rows = [[s.name, s.default_weights, s.default_img_size, "x".join(f"{m:g}" for m in s.mean)]
            for s in REGISTRY.values()]
    console.table("backbones", ["name", "imagenet weights", "default px", "mean"], rows)
    return 0


def _cmd_eval(args, console) -> int:
    from edgetl.train.run import evaluate, load_run

    result = evaluate(load_run(args.run), args.data, strict=args.strict, console=console)
    console.table(f"{args.run} on {args.data}", ["top-1", "images", "skipped"],
                  [[f"{result.top1:.1f}%", result.images, result.skipped]])
    if args.per_class:
        console.table("per class", ["class", "top-1"], [[c, f"{v:.1f}%"] for c, v in result.per_class_top1.items()])
    return 0


def _cmd_train(args, console) -> int:
    from edgetl.train.finetune import FinetuneConfig, finetune

    config = FinetuneConfig(
        data=args.data, out=args.out, backbone=args.backbone, weights=args.weights, val=args.val, test=args.test,
        freeze=args.freeze, epochs=args.epochs, head_epochs=args.head_epochs, img_size=args.img_size,
        resize=args.resize, batch_size=args.batch_size, lr=args.lr, backbone_lr_scale=args.backbone_lr_scale,
        patience=args.patience, val_fraction=args.val_fraction, seed=args.seed, strict=args.strict,
        augment=not args.no_augment, force=args.force, stage=args.stage,
    )
    result = finetune(config, console)
    test = "-" if result.test_top1 is None else f"{result.test_top1:.1f}%"
    console.table(f"{args.stage}: {args.out}", ["backbone", "classes", "val top-1", "test top-1", "epochs", "seconds"],
                  [[result.backbone, result.classes, f"{result.val_top1:.1f}%", test,
                    f"{result.epochs} (+{result.head_epochs} head)", f"{result.seconds:.0f}"]])
    return 0


def _cmd_export(args, console) -> int:
    from edgetl.export import export

    result = export(args.run, args.format, tolerance=args.tolerance, console=console)
    p = result.record["parity"]
    console.table(f"export: {result.path}", ["file", "MB", "max |diff|", "top-1 agreement"],
                  [[result.backbone.name, f"{result.record['sizes_bytes']['backbone'] / 1e6:.1f}",
                    f"{p['max_abs_diff']:.1e}", f"{p['top1_agreement']:.1%}"],
                   [result.model.name, f"{result.record['sizes_bytes']['model'] / 1e6:.1f}", "-",
                    f"{p['model_top1_agreement']:.1%}"]])
    return 0


def _cmd_calib_show(args, console) -> int:
    from edgetl.quantize import calibration

    selection = calibration.select(calibration.read(args.file))
    calibration.check_readable(selection)
    per_class = selection.per_class()
    console.table(f"{args.file}: {len(selection.chosen)} of {selection.available} images from {selection.calib.source}"
                  f" (seed {selection.calib.seed}, {len(per_class)} classes)", ["class", "images"],
                  [[c, n] for c, n in per_class.items()])
    return 0


def _cmd_quantize(args, console) -> int:
    from edgetl.quantize import quantize

    r = quantize(args.run, args.calib, fmt=args.format, method=args.method, max_drop=args.max_drop,
                 split=args.split, data=args.data, io=args.io, console=console)
    lat = r["latency_ms"]
    console.table(f"quantize ({r['format']}, {r['method']}): {args.run}/quantize/{r['format']}",
                  ["", "top-1", "MB", "p50 ms (1 thread)"],
                  [["fp32", f"{r['fp32_top1']:.2f}%", f"{r['sizes_bytes']['fp32'] / 1e6:.1f}", lat["fp32"]["p50_ms"]],
                   ["int8", f"{r['int8_top1']:.2f}%", f"{r['sizes_bytes']['int8'] / 1e6:.1f}", lat["int8"]["p50_ms"]]])
    floats = ", ".join(r["float_layers"]) or "none"
    console.log(f"drop {r['drop']:.2f} points (budget {r['max_drop']}), agreement {r['agreement']:.1%} on {r['eval']}; "
                f"int8 verified: {r['ops']['int8_ops']} int8 ops, {r['ops']['float_ops']} float; "
                f"float layers: {floats}; int8/fp32 latency {r['int8_over_fp32_latency']:.2f}x")
    if r["test"]:
        console.log(f"test split: fp32 {r['test']['fp32_top1']:.2f}%, int8 {r['test']['int8_top1']:.2f}% "
                    f"(drop {r['test']['drop']:.2f})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from edgetl.console import Console

    quiet = os.environ.get("RANK", "0") != "0"  # under torchrun only rank 0 prints
    console = Console(quiet=quiet)
    handlers = {"backbones": _cmd_backbones, "eval": _cmd_eval, "finetune": _cmd_train, "pretrain": _cmd_train,
                "export": _cmd_export, "quantize": _cmd_quantize}
    try:
        if args.command == "data":
            if args.data_command is None:
                print("error: `edgetl data` needs an action (hint: edgetl data synth|show --help)", file=sys.stderr)
                return 2
            return {"synth": _cmd_synth, "show": _cmd_show}[args.data_command](args, console)
        if args.command == "calib":
            if args.calib_command is None:
                print("error: `edgetl calib` needs an action (hint: edgetl calib show FILE)", file=sys.stderr)
                return 2
            return _cmd_calib_show(args, console)
        if args.command is None:
            parser.print_help()
            return 2
        return handlers[args.command](args, console)
    except EdgetlError as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the file system said no: a path the user gave, not a bug
        if args.verbose:
            traceback.print_exc()
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where} (hint: check the path, its permissions and free space)",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing half-written was kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

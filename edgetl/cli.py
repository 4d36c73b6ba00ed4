"""The `edgetl` command: parses flags into the API's config objects and prints results.

Errors a user can cause print one line with a hint and exit 2; `--verbose` adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

from edgetl import __version__
from edgetl.console import percent
from edgetl.errors import ConfigError, DeviceError, EdgetlError
from edgetl.runtime.cli import Parser, seconds
from edgetl.runtime.lifecycle import Terminated, process_scope


def _common() -> argparse.ArgumentParser:
    p = Parser(add_help=False)
    p.add_argument("--verbose", "-v", action="store_true", help="show tracebacks and more detail")
    return p


def _add_train_flags(p: argparse.ArgumentParser, stage: str) -> None:
    from edgetl.train.config import FinetuneConfig

    FinetuneConfig.add_flags(p)
    text = p.add_argument_group("text data (--data TEXTS.csv|.jsonl or DIR/<label>/*.txt; the backbone: minilm "
                                "(default) or hf:DIR)")
    text.add_argument("--max-len", type=int, help="tokens per sentence (default: the length that keeps 99%% of "
                                                  "the training sentences whole)")
    text.add_argument("--text-column", help="the table's text column (default: text|sentence|utterance|query)")
    text.add_argument("--label-column", help="the table's label column (default: label|category|intent|class)")
    p.set_defaults(stage=stage, flag_parser=p)


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = Parser(
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

    bb = sub.add_parser("backbones", parents=[common], help="list the registered backbones and their weights")
    bb.add_argument("--timm", metavar="PATTERN", nargs="?", const="*",
                    help="list the timm models matching a glob pattern, e.g. 'mobilenetv4*' (each is timm:NAME)")

    ev = sub.add_parser("eval", parents=[common], help="top-1 of a run on a labelled ImageFolder dir")
    ev.add_argument("run", type=Path, help="run dir, e.g. runs/city-b")
    ev.add_argument("--data", type=Path, required=True, help="ImageFolder dir with (some of) the run's classes "
                                                             "(a text run: a labelled .csv/.jsonl)")
    ev.add_argument("--per-class", action="store_true", help="also print top-1 per class")
    ev.add_argument("--strict", action="store_true", help="refuse unreadable images instead of skipping them")

    ft = sub.add_parser("finetune", parents=[common], help="fine-tune a pretrained backbone on local data",
                        description="fastai's recipe: the head on the frozen backbone (cached embeddings), then "
                                    "the unfrozen stages with discriminative learning rates under a one-cycle "
                                    "schedule, the EMA of the weights judged on val loss; writes a run dir. Runs "
                                    "under torchrun for DDP.")
    _add_train_flags(ft, "finetune")
    pt = sub.add_parser("pretrain", parents=[common], help="the same loop, server-side, on a source domain",
                        description="Server-side training on a source domain (e.g. city-a); the run it writes is "
                                    "a --weights for later `edgetl finetune` runs.")
    _add_train_flags(pt, "pretrain")
    lf = sub.add_parser("lr-find", parents=[common], help="sweep the learning rate and suggest a --lr (fastai's)",
                        description="Trains the head on cached embeddings, then sweeps the unfrozen model's lr "
                                    "geometrically over a few hundred steps; prints the loss curve, writes a PNG plot "
                                    "and suggests a --lr for `edgetl finetune` with the same recipe.")
    lf.add_argument("source", type=Path, metavar="RUN-OR-CONFIG",
                    help="a run dir (its recorded data and recipe) or a TOML file of finetune keys (data = ...)")
    lf.add_argument("--steps", type=int, default=200, help="mini-batches in the sweep (default 200)")
    lf.add_argument("--start", type=float, default=1e-5, help="first lr of the sweep (default 1e-5)")
    lf.add_argument("--end", type=float, default=1.0, help="last lr of the sweep (default 1)")
    lf.add_argument("--plot", type=Path, default=Path("lr-find.png"), help="PNG to write (default lr-find.png)")

    ex = sub.add_parser("export", parents=[common], help="export a run's backbone (+ head) to ONNX or TFLite",
                        description="Writes RUN/export/FORMAT: backbone (image -> embedding), head.npz and a combined "
                                    "model, each checked against PyTorch on real images of the run's data.")
    ex.add_argument("run", type=Path, help="run dir, e.g. runs/city-b")
    ex.add_argument("--format", default="onnx", help="onnx (default) | tflite")
    ex.add_argument("--tolerance", type=float, default=1e-3,
                    help="parity: largest embedding difference allowed, relative to the embeddings' range")
    ex.add_argument("--taps", default=None,
                    help="pooled stage outputs beside the embedding, for heads learnt on the device: auto (default: "
                         "every stage whose output is a feature map) | none | STAGE,STAGE (a wrong name lists them)")
    ex.add_argument("--input", default=None,
                    help="what the model takes: uint8 (default: the frame itself, uint8 NHWC RGB; mean/std and "
                         "layout are its first ops) | float (the normalised tensor, NCHW for onnx)")
    ex.add_argument("--max-len", type=int, help="text runs: tokens per sentence of the artifact (default: the run's)")

    calib = sub.add_parser("calib", parents=[common], help="calibration sets: inspect")
    calib_sub = calib.add_subparsers(dest="calib_command", metavar="ACTION")
    cshow = calib_sub.add_parser("show", parents=[common], help="what a calibration set would use; refuses bad sets")
    cshow.add_argument("file", type=Path, help="calibration/NAME.toml")

    qz = sub.add_parser("quantize", parents=[common], help="int8 backbone calibrated on real images, within a budget",
                        description="Writes RUN/quantize/FORMAT with quantize.json: fp32 vs int8 top-1 on the run's "
                                    "val split, agreement, float layers, op counts, sizes and host latencies.")
    qz.add_argument("run", type=Path, help="run dir, e.g. runs/city-b")
    qz.add_argument("--calib", type=Path, help="calibration/NAME.toml (required for image runs; a text run "
                                              "calibrates on its training sentences without one)")
    qz.add_argument("--format", default="onnx", help="onnx (default) | tflite")
    qz.add_argument("--method", default="auto",
                    help="auto (default: calibration methods, then bias correction/equalization, then float "
                         "fallback, then quantization-aware fine-tuning, each only while the budget is missed) | "
                         "minmax | entropy | percentile | qat (calibration, then QAT kept only if it beats it); "
                         "text runs: auto | dynamic | minmax | percentile")
    qz.add_argument("--max-drop", type=float, default=1.0, help="top-1 points int8 may lose against fp32 (default 1.0)")
    qz.add_argument("--split", default="val", help="the run's split the budget is judged on: val (default) | test")
    qz.add_argument("--data", type=Path, help="score on this labelled ImageFolder dir instead of the run's split")
    qz.add_argument("--io", default="int8", help="tflite input/output type: int8 (default) | uint8 (targets that ask)")
    qz.add_argument("--taps", default=None,
                    help="re-export with these taps when the run's export has others: auto | none | STAGE,STAGE "
                         "(default: the export as it is; auto when there is none)")
    qz.add_argument("--input", default=None,
                    help="re-export taking this when the run's export takes the other: uint8 | float "
                         "(default: the export as it is; uint8 when there is none)")
    qz.add_argument("--search-trials", type=int,
                    help="--method auto: at most this many float-layer trials (default 6)")
    qz.add_argument("--search-seconds", type=float,
                    help="--method auto: wall-clock bound of the float-layer search in seconds (default 120)")
    qz.add_argument("--escalate", default=None,
                    help="--method auto: the steps it may take after calibration while the budget is missed, "
                         "in this order: refinement,float_fallback,qat (default: all)")
    qz.add_argument("--qat-epochs", type=int,
                    help="quantization-aware fine-tuning (auto's last step, or --method qat): epochs (default 8)")
    qz.add_argument("--qat-lr", type=float,
                    help="quantization-aware fine-tuning: peak learning rate (default: the run's x 0.1)")
    tg = sub.add_parser("targets", parents=[common], help="list the hardware targets, or explain one",
                        description="Targets are TOML files (targets/, $EDGETL_TARGETS): arch, engines, precisions, "
                                    "IO type, constraints and default budgets.")
    tg_sub = tg.add_subparsers(dest="targets_command", metavar="ACTION")
    tshow = tg_sub.add_parser("show", parents=[common], help="explain one target")
    tshow.add_argument("name", help="target name (see `edgetl targets`) or path to a target .toml")

    dv = sub.add_parser("devices", parents=[common], help="list the devices and whether each answers",
                        description="Devices are TOML files (devices/, $EDGETL_DEVICES, or --devices DIR): a target, "
                                    "a transport (local, ssh, emulated), budget overrides and tags. Each is asked for "
                                    "its Python's architecture and version, all at once.")
    dv.add_argument("--devices", type=Path, help="a directory of device files (default: $EDGETL_DEVICES alone "
                    "when set, else ./devices, else the shipped ones)")
    dv.add_argument("--timeout", type=seconds, default=30.0, help="seconds to wait for each device (default 30)")
    dv.add_argument("--json", action="store_true", help="one JSON record per device")

    dp = sub.add_parser("deploy", parents=[common], help="put a bundle on a device, active once complete and verified",
                        description="Copies the bundle (and, when the device lacks this build, edgetl's runtime as a "
                                    "wheel of this checkout, pip-installed into a private dir) over the device's "
                                    "transport; the device verifies the bundle and makes it active only once it is "
                                    "complete. Exit 3 when the device cannot be reached.")
    dp.add_argument("bundle", type=Path, help="bundle dir or .tar.gz")
    to = dp.add_mutually_exclusive_group(required=True)
    to.add_argument("--device", help="device file or name (see `edgetl devices`)")
    to.add_argument("--devices", type=Path, help="a directory of device files: every device built for the "
                    "bundle's CPU, in parallel (exit 3 when one cannot be reached)")
    dp.add_argument("--device-key", help="signed bundles: the trusted public key's path on the device")
    dp.add_argument("--provision", action="store_true", help="install numpy and the bundle's engine where the "
                    "device lacks them, from wheels fetched here for its CPU and Python (the board needs no "
                    "internet; cached in ~/.cache/edgetl/wheels)")
    dp.add_argument("--timeout", type=seconds, default=600.0, help="seconds for each step on the device (default 600)")
    dp.add_argument("--json", action="store_true", help="the result as one JSON object (one per device)")

    ck = sub.add_parser("check", parents=[common], help="measure bundles on devices and hold them to their budgets",
                        description="Deploys each bundle to each device built for its CPU, times frames after a "
                                    "warm-up (p50/p90/p95/p99/max, frames/s), reads peak RSS and the board's "
                                    "thermals, scores the bundle's checkset (or --data on the device), and judges "
                                    "the budgets (device file over target). Exit 0: every budget holds; 1: a budget "
                                    "failed; 3: a device could not be reached or its run broke (retried once); "
                                    "a budget failure anywhere wins over an unreachable device.")
    ck.add_argument("bundles", nargs="+", type=Path, help="bundle dirs or .tar.gz files")
    where = ck.add_mutually_exclusive_group()
    where.add_argument("--device", help="device file or name (default: local, this machine)")
    where.add_argument("--devices", type=Path, help="a directory of device files: the whole fleet, in parallel")
    how_long = ck.add_mutually_exclusive_group()
    how_long.add_argument("--runs", type=int, default=200, help="timed frames per bundle (default 200)")
    how_long.add_argument("--duration", type=seconds, help="time frames for this many seconds instead")
    ck.add_argument("--warmup", type=int, default=20, help="untimed frames first (default 20)")
    ck.add_argument("--data", help="labelled images DIR/<label>/*.png on the device, instead of the checkset")
    ck.add_argument("--report", type=Path, help="write report.json and report.html into this dir (an earlier "
                    "edgetl report there is replaced; a dir holding anything else is refused)")
    ck.add_argument("--junit", type=Path, help="write JUnit XML here, a testcase per budget (an earlier edgetl "
                    "JUnit file is replaced; any other file is refused)")
    ck.add_argument("--timeout", type=seconds, default=600.0, help="seconds for each step on a device (default 600)")
    ck.add_argument("--json", action="store_true", help="one JSON record per bundle and device")
    ck.add_argument("--baseline", type=Path, help="an earlier check's report.json of the same bundle names and "
                    "devices: also fail (exit 1) on a regression against it (latency, top-1, peak RSS)")
    ck.add_argument("--max-slowdown", type=float, default=5.0, help="with --baseline: fail when the p95's whole "
                    "95%% interval is this many percent slower (default 5)")
    ck.add_argument("--max-top1-loss", type=float, default=1.0, help="with --baseline: fail on a significant "
                    "top-1 loss (McNemar, p<0.05) of more than this many points (default 1)")
    ck.add_argument("--max-rss-growth", type=float, default=10.0, help="with --baseline: fail when peak RSS grew "
                    "by more than this many percent (default 10)")

    pl = sub.add_parser("pipeline", parents=[common], help="the whole flow from one TOML file, each stage re-run "
                        "only when its inputs changed",
                        description="Runs the stages edgetl.toml declares (synth, pretrain, finetune, quantize per "
                                    "format, compile per target, check), each writing its usual run dir, bundle or "
                                    "report under the file's `out`. A stage re-runs only when what it reads changed "
                                    "(its table, its data's content, the outputs of the stages before it, the edgetl "
                                    "version); one that was interrupted or failed is where the next run starts. The "
                                    "exit code is the last stage's: 1 when check found a budget missed.")
    pl.add_argument("file", type=Path, help="the pipeline file, e.g. edgetl.toml (see examples/)")
    pl.add_argument("--dry-run", action="store_true", help="print which stages would run and why; run none")
    pl.add_argument("--force", action="append", default=[], metavar="STAGE",
                    help="run this stage whatever its inputs (a name like quantize.onnx, or a kind: quantize); "
                         "the stages after it follow (repeatable)")

    cp = sub.add_parser("compile", parents=[common], help="compile a run for a target into a verifiable bundle",
                        description="Writes the bundle dir (manifest with sha256 of every file) and a reproducible "
                                    ".tar.gz; --dry-run prints the target's compatibility report alone, also for a "
                                    ".onnx/.tflite model edgetl did not train.")
    cp.add_argument("source", type=Path, help="run dir, or (with --dry-run) a .onnx or .tflite file")
    cp.add_argument("--target", required=True, help="target name (see `edgetl targets`) or path to a .toml")
    cp.add_argument("--out", type=Path, help="bundle dir to write (default RUN/bundles/TARGET); also OUT.tar.gz")
    cp.add_argument("--dry-run", action="store_true", help="print the compatibility report; write nothing")
    cp.add_argument("--json", action="store_true", help="with --dry-run: the report as one JSON object")
    cp.add_argument("--sign", type=Path, help="ed25519 private key to sign the manifest with (edgetl bundle keygen)")
    cp.add_argument("--allow-cpu-only", action="store_true",
                    help="Edge TPU targets without edgetpu_compiler: ship the int8 model for the CPU")
    cp.add_argument("--force", action="store_true", help="replace an earlier bundle at --out (nothing else)")
    cp.add_argument("--checkset-per-class", type=int, help="held-out images per class the bundle carries for "
                    "`edgetl check` (default: enough for 100 images, one image = 1 point of top-1, and at least 4 "
                    "per class; capped at 16 MB of pixels)")

    bd = sub.add_parser("bundle", parents=[common], help="bundles: verify before flashing, make signing keys")
    bd_sub = bd.add_subparsers(dest="bundle_command", metavar="ACTION")
    bv = bd_sub.add_parser("verify", parents=[common], help="check a bundle dir or .tar.gz: hashes, files, schema, "
                           "signature; exit 0 or 2 naming what failed")
    bv.add_argument("bundle", type=Path, help="bundle dir or .tar.gz")
    bv.add_argument("--key", type=Path, help="ed25519 public key: the bundle must be signed by its private key")
    bv.add_argument("--this-machine", action="store_true", help="also check the bundle is for this CPU architecture")
    bk = bd_sub.add_parser("keygen", parents=[common], help="a new ed25519 key pair: KEY and KEY.pub")
    bk.add_argument("key", type=Path, help="private key file to create (KEY.pub is written beside it)")
    bf = bd_sub.add_parser("from-model", parents=[common], help="a bundle from a .tflite/.onnx feature extractor "
                           "edgetl did not train, with an empty head (or one fitted on --data) for adapt",
                           description="Cuts the model at its embedding, reads its preprocessing from the model "
                                       "(input size, layout and type; a uint8 input's quantization; TFLite "
                                       "metadata) or from --preprocess, compiles it for the target and writes a "
                                       "bundle the device adapts with `python -m edgetl.runtime adapt BUNDLE "
                                       "--data DIR`.")
    bf.add_argument("model", type=Path, help="MODEL.tflite (also *_edgetpu.tflite) or MODEL.onnx")
    bf.add_argument("--target", required=True, help="target name (see `edgetl targets`) or path to a .toml")
    bf.add_argument("--out", type=Path, required=True, help="bundle dir to write; also OUT.tar.gz")
    bf.add_argument("--preprocess", help="what the model file does not say, in pixel units (0..255): "
                    "size=224,mean=127.5,std=127.5; per channel mean=123.7,116.3,103.5; resize=stretch|crop, "
                    "interpolation=bilinear|bicubic|nearest, order=RGB|BGR")
    bf.add_argument("--output", metavar="TENSOR", help="the embedding tensor, to cut a classifier before its last "
                    "layer (default: the model's only output)")
    bf.add_argument("--data", type=Path, help="labelled images DIR/<label>/*.png: the head is fitted on them here, "
                    "as the device's adapt would (default: an empty head the device's adapt fills)")
    bf.add_argument("--sign", type=Path, help="ed25519 private key to sign the manifest with (edgetl bundle keygen)")
    bf.add_argument("--allow-cpu-only", action="store_true",
                    help="Edge TPU targets without edgetpu_compiler: ship the int8 model for the CPU")
    bf.add_argument("--force", action="store_true", help="replace an earlier bundle at --out (nothing else)")
    from edgetl.runtime.cli import add_adapt_args, add_predict_args

    add_predict_args(sub.add_parser("predict", parents=[common], help="labels and probabilities from a bundle",
                                    description="Loads (and verifies) a bundle as the device would and prints a "
                                                "table, or JSON records with --json."))
    add_adapt_args(sub.add_parser("adapt", parents=[common], help="learn a bundle's head from labelled images",
                                  description="Head-only adaptation as the device does it: softmax regression "
                                              "(imprinting for classes with 1-5 images), committed only if the "
                                              "old classes' holdout top-1 holds; --rollback restores the previous "
                                              "head."))
    return parser


def _cmd_predict(args, console) -> int:
    from edgetl.runtime.cli import predict

    records = predict(args)
    if args.json:
        for r in records:
            print(json.dumps(r))
        return 0
    head = f" (head version {records[0]['head_version']})" if records else ""
    what = "text" if records and "text" in records[0] else "image"
    console.table(f"{args.bundle}{head}", [what, "label", "probability", *(["top"] if args.top > 1 else [])],
                  [[r[what], r["label"], f"{r['probability']:.3f}",
                    *([", ".join(f"{lab} {p:.2f}" for lab, p in r["top"])] if args.top > 1 else [])]
                   for r in records])
    return 0


def _cmd_adapt(args, console) -> int:
    from edgetl.runtime.cli import adapt, adapt_summary

    r = adapt(args)
    if args.json:
        print(json.dumps(r))
    else:
        console.log(adapt_summary(r))
    return 0 if r.get("committed", True) else 1


def _cmd_targets(args, console) -> int:
    from edgetl import targets

    if args.targets_command is None:
        rows = [[t.name, "/".join(t.arch), ", ".join(t.engines), ", ".join(t.precisions), t.io_dtype,
                 f"{t.budgets.latency_p95_ms:g}", t.description] for t in targets.all_targets()]
        console.table("targets", ["name", "arch", "engines", "precisions", "io", "p95 ms", "description"], rows)
        return 0
    t = targets.load(args.name)
    c, b = t.constraints, t.budgets
    rules = [f"full-integer {'required' if c.full_integer else 'not required'}",
             "static shapes" if c.static_shapes else "dynamic shapes allowed"]
    if c.max_rank:
        rules.append(f"only the {c.max_rank} innermost dims > 1")
    console.table(f"{t.name}: {t.description} ({t.file})", ["", ""], [
        ["arch", ", ".join(t.arch)], ["engines (in order)", ", ".join(t.engines)],
        ["precisions", ", ".join(t.precisions)], ["io dtype", t.io_dtype], ["constraints", "; ".join(rules)],
        ["budgets", f"p95 {b.latency_p95_ms:g} ms, top-1 >= {b.min_top1:g}%, RSS <= {b.max_rss_mb:g} MB"],
        ["reference", ", ".join(f"{k} {v}" for k, v in t.reference.items()) or "-"]])
    return 0


def _print_report(report, console) -> None:
    rows = [[op.index, op.name, op.op, "ok" if op.mapped else "NO", op.reason] for op in report.ops if not op.mapped]
    if rows:
        console.table(f"{report.target}: ops that do not map to {report.engine}", ["#", "op", "type", "maps", "why"],
                      rows[:20])
    console.log(f"{report.target} ({report.engine}, {report.source}): {report.summary()}")
    for note in report.notes:
        console.log(f"  {note}")


def _cmd_deploy(args, console) -> int:
    from edgetl import devices
    from edgetl.devices.deploy import deploy, deploy_fleet, fleet_exit_code

    if args.device:
        r = deploy(args.bundle, devices.load(args.device), timeout=args.timeout, key=args.device_key,
                   provision=args.provision)
        if args.json:
            print(json.dumps(r.to_dict()))
        else:
            console.log(r.summary())
        return 0
    from edgetl.check import manifest_of, paired

    fleet = devices.select(folder=args.devices)
    manifest = manifest_of(args.bundle)  # verified here once, before any device is asked
    chosen = [d for _, _, d in paired([(args.bundle, manifest)], fleet)]
    results = deploy_fleet(args.bundle, chosen, timeout=args.timeout, key=args.device_key,
                           provision=args.provision)
    if args.json:
        for r in results:
            print(json.dumps(r.flat()))
    else:
        rows = [[r.device, r.status, d.active, d.runtime + (" (installed)" if d.runtime_installed else "")
                 + d.provision_summary,
                 f"{d.bytes / 1e6:.1f} MB in {d.seconds:.1f} s", r.error or "-"] if (d := r.deployment) else
                [r.device, r.status, "-", "-", "-", r.error or "-"] for r in results]
        skipped = [d.name for d in fleet if d not in chosen]
        console.table(f"deploy {manifest.name} ({manifest.target}, {manifest.engine} {manifest.precision})",
                      ["device", "status", "active", "runtime", "copied", "why"], rows)
        if skipped:
            console.log(f"not built for {', '.join(skipped)} ({'/'.join(manifest.arch)} bundle): skipped")
    return fleet_exit_code(results)


def _cmd_check(args, console) -> int:
    from edgetl import devices, fsutil
    from edgetl.check import Plan, baseline, check_fleet, exit_code, manifest_of, paired, report

    gate = baseline.Gate(args.max_slowdown, args.max_top1_loss, args.max_rss_growth).check()
    earlier = baseline.load(args.baseline) if args.baseline is not None else None
    if args.runs < 1 or args.warmup < 0 or (args.duration is not None and args.duration <= 0):
        raise EdgetlError("--runs must be >= 1, --warmup >= 0 and --duration > 0", "edgetl check B --runs 200")
    if args.report is not None:  # before any work: never replace what edgetl did not write
        fsutil.claim(args.report, fsutil.REPORT, inputs=args.bundles, flag="--report")
    if args.junit is not None:
        fsutil.claim_file(args.junit, fsutil.JUNIT, "a JUnit report", flag="--junit")
    fleet = devices.select(args.device, args.devices)
    bundles = [(path, manifest_of(path)) for path in args.bundles]
    work = paired(bundles, fleet)
    if earlier is not None:  # before any work: a baseline of other pairs is refused
        earlier.refuse_unpaired([(d.name, m.name) for _, m, d in work])
    results = check_fleet(bundles, fleet, Plan(runs=args.runs, duration_s=args.duration, warmup=args.warmup,
                                               data=args.data, timeout_s=args.timeout))
    if earlier is not None:
        baseline.judge_against(results, earlier, gate)
    if args.json:
        for r in results:
            print(json.dumps(r.summary()))
    else:
        rows = []
        for r in results:
            m = r.measured
            lat = m.latency_ms if m else None
            fails = [v.why for v in r.verdicts if v.status == "fail"]
            head = f", head {r.head_version}" if r.head_version is not None else ""
            share = m.engine_share if m else None
            rows.append([r.device, f"{r.bundle} ({r.engine} {r.precision}{head})", r.status,
                         f"{lat.p50:.2f}/{lat.p95:.2f}/{lat.p99:.2f}" if lat else "-",
                         f"{share.share:.0%}" if share else "-",
                         f"{m.peak_rss_mb:.0f}" if m else "-", percent(m.accuracy.top1) if m else "-",
                         "; ".join(fails) or r.error or ("timings not judged (emulated)" if r.emulated else "-")])
        console.table("check", ["device", "bundle", "status", "p50/p95/p99 ms", "engine share", "RSS MB", "top-1 %",
                                "why"], rows)
    for r in results:
        for v in r.verdicts:
            if v.warning:
                console.log(f"{r.device}/{r.bundle} {v.budget}: {v.warning}")
    for path in report.write(results, args.report, args.junit):
        console.log(f"wrote {path}")
    return exit_code(results)


def _cmd_devices(args, console) -> int:
    """Exit 0 when every device answers, 3 when one does not (like `check`: infrastructure, not a budget)."""
    from edgetl import devices

    fleet = devices.fleet(args.devices)
    probes = devices.probe_all(fleet, args.timeout)
    if args.json:
        for d, p in zip(fleet, probes, strict=True):
            print(json.dumps(d.summary() | p.to_dict()))
    else:
        rows = [[d.name, d.target.name, d.transport, d.address, ", ".join(d.tags) or "-",
                 f"yes ({p.arch}, Python {p.python})" if p.reachable else f"no: {p.reason}"]
                for d, p in zip(fleet, probes, strict=True)]
        console.table("devices", ["name", "target", "transport", "address", "tags", "reachable"], rows)
    return 0 if all(p.reachable for p in probes) else 3


def _cmd_pipeline(args, console) -> int:
    from edgetl.pipeline import run

    outcome = run(args.file, dry_run=args.dry_run, force=tuple(args.force), console=console)
    if args.dry_run:
        todo = [s.stage for s in outcome.steps if s.why != "up to date"]
        console.log(f"would run {len(todo)} of {len(outcome.steps)} stages" + (f": {', '.join(todo)}" if todo else ""))
    elif not outcome.did_nothing:
        ran = [s for s in outcome.steps if s.ran]
        console.log(f"ran {len(ran)} of {len(outcome.steps)} stages in {outcome.seconds:g} s; "
                    f"{len(outcome.steps) - len(ran)} up to date" + (f"; exit {outcome.exit_code}" if outcome.exit_code
                                                                      else ""))
    return outcome.exit_code


def _cmd_compile(args, console) -> int:
    from edgetl.compile import compatibility, compile_bundle

    if args.json and not args.dry_run:
        raise EdgetlError("--json goes with --dry-run", "edgetl compile SRC --target T --dry-run --json")
    if args.dry_run:
        report = compatibility(args.source, args.target)
        if args.json:
            print(json.dumps(report.to_dict()))
        else:
            _print_report(report, console)
        return 0
    m = compile_bundle(args.source, args.target, args.out, sign=args.sign, allow_cpu_only=args.allow_cpu_only,
                       force=args.force, checkset_per_class=args.checkset_per_class, console=console)
    acc = m.accuracy
    console.table(f"bundle {m.name} for {m.target}",
                  ["engine", "precision", "model", "top-1 %", "signed", "files"],
                  [[m.engine, m.precision, m.model,
                    f"{percent(acc.top1)} ({acc.split})" if acc else f"{percent(None)} (-)",
                    "yes" if args.sign else "no", len(m.files)]])
    console.log(m.compatibility.summary)
    return 0


def _cmd_from_model(args, console) -> int:
    from edgetl.frommodel import from_model

    r = from_model(args.model, args.target, args.out, preprocess=args.preprocess, output=args.output,
                   data=args.data, sign=args.sign, force=args.force, allow_cpu_only=args.allow_cpu_only,
                   console=console)
    m = r.manifest
    head = (f"{len(m.labels)} classes fitted on {r.images} images" + (f" ({r.skipped} unreadable skipped)"
                                                                     if r.skipped else "")
            if m.labels else "empty: run `python -m edgetl.runtime adapt BUNDLE --data DIR` on the device")
    console.table(f"bundle {m.name} for {m.target} from {args.model.name}",
                  ["engine", "precision", "input", "embedding", "head"],
                  [[m.engine, m.precision, f"{m.inputs[0].dtype} {'x'.join(map(str, m.preprocess.size))}",
                    f"{r.cut.output} ({m.outputs[0].shape[-1]})", head]])
    console.log(f"preprocessing from {r.preprocess_from}; {m.compatibility.summary}")
    return 0


def _cmd_bundle(args, console) -> int:
    if args.bundle_command == "from-model":
        return _cmd_from_model(args, console)
    if args.bundle_command == "keygen":
        from edgetl.pack import keygen

        private, public = keygen(args.key)
        console.log(f"wrote {private} (keep it secret) and {public} (give it to the devices)")
        return 0
    import tempfile

    from edgetl.runtime.verify import BundleError, open_bundle, public_key_id

    with tempfile.TemporaryDirectory(prefix="edgetl-verify-") as tmp:  # an archive is checked unpacked here
        b = open_bundle(args.bundle, key=args.key, machine=None if args.this_machine else "any", unpack_to=Path(tmp))
    if b.signature_checked:
        sig = f"signature verified with --key {public_key_id(args.key)}"
    elif b.signer_checked:  # unchanged since it was signed; by whom only a trusted key can say
        sig = f"signature matches its embedded key {b.signer}; trust needs --key"
    elif b.signed and b.signer is None:
        raise BundleError(f"{args.bundle} is signed and names no signer key (an older edgetl signed it), "
                          "so its signature is unchecked", "pass --key PUB, the signer's public key")
    elif b.signed:
        raise BundleError(f"{args.bundle} is signed, and checking a signature needs the cryptography package",
                          "pip install 'edgetl[runtime-sign]', or pass --key PUB")
    else:
        sig = "unsigned"
    m = b.manifest
    console.log(f"ok: {args.bundle}: {m.name} for {b.target} ({', '.join(m.arch)}), {m.engine} {m.precision}, "
                f"{len(m.files)} files match their sha256, schema {m.schema_version}, {sig}")
    return 0


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
    from edgetl.data import readable_counts, scan

    folder = scan(args.dir)
    with console.task(f"checking images in {args.dir}", len(folder.samples), "images") as advance:
        counts = readable_counts(folder, progress=advance)
    good, bad = sum(c.readable for c in counts), sum(c.unreadable for c in counts)
    console.log(f"{args.dir}: {len(folder.classes)} classes, {good} readable images"
                + (f", {bad} unreadable (training skips them; --strict refuses them)" if bad else ""))
    console.table(f"data: {Path(args.dir).name}", ["class", "images", "unreadable"],
                  [[name, c.readable, c.unreadable or "-"] for name, c in zip(folder.classes, counts, strict=True)])
    return 0


TIMM_EXAMPLES = ("mobilenetv3_large_100", "mobilenetv4_conv_small", "efficientvit_b0", "resnet18")


def _cmd_backbones(args, console) -> int:
    from edgetl.train import timm_source
    from edgetl.train.backbones import REGISTRY, get_spec

    def row(s):
        return [s.name, s.default_weights, s.default_img_size, "x".join(f"{m:g}" for m in s.mean)]

    columns = ["name", "imagenet weights", "default px", "mean"]
    if args.timm is not None:
        found = timm_source.names(args.timm)
        if not found:
            raise ConfigError(f"no timm model matches {args.timm!r}", "try a wider pattern, e.g. 'mobilenet*'")
        console.table(f"timm models matching {args.timm!r} ({len(found)}; use as --backbone timm:NAME)",
                      ["name"], [[f"timm:{n}"] for n in found])
        return 0
    console.table("backbones", columns, [row(s) for s in REGISTRY.values()])
    from edgetl.train.text_backbone import TEXT_BACKBONES

    console.table("text backbones (--data TEXTS.csv; also hf:DIR of a BERT-family encoder)", ["name", "what"],
                  [[name, what] for name, what in TEXT_BACKBONES.items()])
    try:
        count = len(timm_source.names())
    except ConfigError:
        console.log("timm models: not installed (pip install 'edgetl[timm]'); "
                    "Hugging Face image model dirs: --backbone hf:DIR")
        return 0
    console.table(f"timm: {count} models as timm:NAME, e.g. (all: edgetl backbones --timm)", columns,
                  [row(get_spec(f"timm:{n}")) for n in TIMM_EXAMPLES])
    console.log("Hugging Face image model dirs: --backbone hf:DIR (weights and preprocessing from the dir)")
    return 0


def _cmd_eval(args, console) -> int:
    from edgetl.export import is_text_run
    from edgetl.train.run import evaluate, load_run

    if is_text_run(args.run):
        from edgetl.train.text import evaluate_text

        result = evaluate_text(args.run, args.data)
    else:
        result = evaluate(load_run(args.run), args.data, strict=args.strict, console=console)
    console.log(f"eval: {args.run} on {args.data}")
    console.table("eval", ["top-1 %", "images", "skipped"], [[percent(result.top1), result.images, result.skipped]])
    if args.per_class:
        console.table("per class", ["class", "top-1 %"], [[c, percent(v)] for c, v in result.per_class_top1.items()])
    return 0


def _given(args) -> set[str]:
    """The dests of the flags written on the command line (not left at their defaults)."""
    given = set()
    for action in args.flag_parser._actions:
        for opt in action.option_strings:
            if any(a == opt or a.startswith(opt + "=") for a in args.argv):
                given.add(action.dest)
    return given


def _text_config(args):
    """A text run's config from the flags: the text recipe's defaults where a flag was not given."""
    from edgetl.train.text import TextFinetuneConfig

    given = _given(args)
    fields = {f for f in TextFinetuneConfig.__dataclass_fields__} - {"stage"}
    image_only = sorted(d for d in given if d not in fields and d not in ("verbose", "stage"))
    if image_only:
        flag = "--" + image_only[0].replace("_", "-")
        raise ConfigError(f"{flag} is for image data, and {args.data} holds texts",
                          "drop it; text runs take --max-len, --text-column, --label-column")
    if args.stage == "pretrain":
        raise ConfigError("pretrain is for image backbones", "fine-tune a text encoder: edgetl finetune --data FILE")
    values = {d: getattr(args, d) for d in given & fields}
    return TextFinetuneConfig(data=args.data, out=args.out, **{k: v for k, v in values.items()
                                                              if k not in ("data", "out")})


def _cmd_train(args, console) -> int:
    from edgetl.data.text import is_text_data
    from edgetl.train.finetune import FinetuneConfig, finetune

    if is_text_data(args.data):
        from edgetl.train.text import finetune_text

        result = finetune_text(_text_config(args), console)
    else:
        for flag in ("max_len", "text_column", "label_column"):
            if getattr(args, flag) is not None:
                raise ConfigError(f"--{flag.replace('_', '-')} is for text data, and {args.data} is not a text "
                                  "table", "text data is a .csv/.jsonl file or DIR/<label>/*.txt")
        result = finetune(FinetuneConfig.from_args(args, stage=args.stage), console)
    test = percent(result.test_top1)
    console.table(f"{args.stage}: {args.out}",
                  ["backbone", "classes", "val top-1 %", "test top-1 %", "epochs", "seconds"],
                  [[result.backbone, result.classes, percent(result.val_top1), test,
                    f"{result.epochs} (+{result.head_epochs} head)", f"{result.seconds:.0f}"]])
    return 0


def _cmd_lr_find(args, console) -> int:
    from edgetl import fsutil
    from edgetl.runtime.atomic import write_file
    from edgetl.train.lrfind import config_from, is_plot, plot, sweep

    plot_file = fsutil.claim_file(args.plot, is_plot, "an lr-find plot", flag="--plot")
    config = config_from(args.source)
    result = sweep(config, steps=args.steps, start=args.start, end=args.end, console=console)
    console.table(f"lr-find: {args.source.name}", ["lr", "loss (smoothed)"],
                  [[f"{lr:.2e}", f"{loss:.3f}"] for lr, loss in result.table()])
    write_file(plot_file, plot(result, f"lr-find: {args.source}"))
    ended = "the loss diverged there" if result.stopped_early else "the sweep's end"
    console.log(f"suggested --lr {result.suggestion:.1e} (valley); steepest fall at {result.steepest:.1e}, "
                f"lowest loss at {result.minimum:.1e}; swept {result.lrs[0]:.0e} to {result.lrs[-1]:.1e} "
                f"({ended}); plot: {plot_file}")
    return 0


def _cmd_export(args, console) -> int:
    from edgetl.export import check_format, check_input, check_tolerance, export  # torch loads only inside export()

    check_format(args.format)
    check_tolerance(args.tolerance)
    if args.input is not None:
        check_input(args.input)
    result = export(args.run, args.format, tolerance=args.tolerance, taps=args.taps, input=args.input, console=console,
                    max_len=args.max_len)
    p, sizes = result.record.parity, result.record.sizes_bytes
    console.table(f"export: {result.path}", ["file", "MB", "max |diff|", "top-1 agreement"],
                  [[result.backbone.name, f"{sizes['backbone'] / 1e6:.1f}",
                    f"{p['max_abs_diff']:.1e}", f"{p['top1_agreement']:.1%}"],
                   [result.model.name, f"{sizes['model'] / 1e6:.1f}", "-",
                    f"{p['model_top1_agreement']:.1%}"]])
    return 0


def _cmd_calib_show(args, console) -> int:
    from edgetl.data.text import is_text_data
    from edgetl.quantize import calibration

    calib = calibration.read(args.file)
    if calib.kind == "data" and is_text_data(calib.source):
        from edgetl.quantize.text import select_texts

        texts, labels, available = select_texts(calib)
        per_class = {c: labels.count(c) for c in sorted(set(labels))}
        console.log(f"{args.file}: {len(texts)} of {available} sentences from {calib.source} (seed {calib.seed}, "
                    f"{len(per_class)} classes)")
        console.table(f"calibration: {Path(args.file).name}", ["class", "sentences"],
                      [[c, n] for c, n in per_class.items()])
        return 0
    selection = calibration.select(calibration.read(args.file))
    calibration.check_readable(selection)
    per_class = selection.per_class()
    console.log(f"{args.file}: {len(selection.chosen)} of {selection.available} images from "
                f"{selection.calib.source} (seed {selection.calib.seed}, {len(per_class)} classes)")
    console.table(f"calibration: {Path(args.file).name}", ["class", "images"], [[c, n] for c, n in per_class.items()])
    return 0


def _cmd_quantize(args, console) -> int:
    from edgetl.quantize import ESCALATION, SearchBudget, quantize

    search = SearchBudget(SearchBudget.trials if args.search_trials is None else args.search_trials,
                          SearchBudget.seconds if args.search_seconds is None else args.search_seconds).check()
    from edgetl.quantize.qat import EPOCHS, QatConfig

    qat = None if args.qat_epochs is None and args.qat_lr is None else \
        QatConfig(EPOCHS if args.qat_epochs is None else args.qat_epochs, args.qat_lr).check()
    r = quantize(args.run, args.calib, fmt=args.format, method=args.method, max_drop=args.max_drop,
                 split=args.split, data=args.data, io=args.io, search=search, taps=args.taps, input=args.input,
                 console=console, qat=qat, escalate=ESCALATION if args.escalate is None else args.escalate)
    lat, size = r.latency_ms, r.sizes_bytes
    console.log(f"quantize ({r.format}, {r.method}) -> {args.run}/quantize/{r.format}")
    console.table(f"quantize {r.format} ({r.method})", ["", "top-1 %", "MB", "p50 ms (1 thread)"],
                  [["fp32", percent(r.fp32_top1), f"{size['fp32'] / 1e6:.1f}", lat["fp32"]["p50_ms"]],
                   ["int8", percent(r.int8_top1), f"{size['int8'] / 1e6:.1f}", lat["int8"]["p50_ms"]]])
    floats = ", ".join(r.float_layers) or "none"
    if r.taps:
        console.log(f"taps: int8 error / spread {max(r.taps['error'].values()):.2f} at worst (limit "
                    f"{r.taps['error_max']:g}); dropped: {', '.join(r.taps['dropped']) or 'none'}")
    console.log(f"drop {r.drop:.2f} points (budget {r.max_drop:g}), agreement {r.agreement:.1%} on {r.eval}; "
                f"int8 verified: {r.ops['int8_ops']} int8 ops, {r.ops['float_ops']} float; "
                f"float layers: {floats}; int8/fp32 latency {r.int8_over_fp32_latency:.2f}x")
    if r.test:
        console.log(f"test split: fp32 {percent(r.test['fp32_top1'])}, int8 {percent(r.test['int8_top1'])} "
                    f"(drop {r.test['drop']:.2f})")
    ran = [s for s in r.steps if s.ran]
    if len(ran) > 1:
        console.log("steps: " + "; ".join(f"{s.step} {s.best} drop {s.drop:.2f} ({s.seconds:g} s)"
                                          + (" kept" if s.kept else "") for s in ran if s.best is not None))
    if r.qat is not None and not r.qat.kept:
        console.log(f"quantization-aware fine-tuning {r.qat.reason}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    from edgetl.console import Console

    quiet = os.environ.get("RANK", "0") != "0"  # under torchrun only rank 0 prints
    console = Console(quiet=quiet, verbose=args.verbose)
    handlers = {"backbones": _cmd_backbones, "eval": _cmd_eval, "finetune": _cmd_train, "pretrain": _cmd_train,
                "lr-find": _cmd_lr_find,
                "export": _cmd_export, "quantize": _cmd_quantize, "targets": _cmd_targets, "compile": _cmd_compile,
                "devices": _cmd_devices, "deploy": _cmd_deploy, "check": _cmd_check, "predict": _cmd_predict,
                "adapt": _cmd_adapt, "pipeline": _cmd_pipeline}
    try:
        with process_scope():  # one temp root, removed on any exit; SIGTERM/SIGHUP unwind like Ctrl-C
            return _dispatch(args, parser, console, handlers)
    except EdgetlError as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 3 if isinstance(exc, DeviceError) else 2  # 3: the device, not the input
    except OSError as exc:  # the file system said no: a path the user gave, not a bug
        if args.verbose:
            traceback.print_exc()
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where} (hint: check the path, its permissions and free space)",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP as `Terminated`
        if args.verbose:
            traceback.print_exc()
        print(f"interrupted ({exc.args[0] if isinstance(exc, Terminated) else 'SIGINT'}); "
              "nothing half-written was kept", file=sys.stderr)
        return exc.exit_code if isinstance(exc, Terminated) else 130


def _dispatch(args, parser, console, handlers) -> int:
    if args.command == "data":
        if args.data_command is None:
            raise ConfigError("`edgetl data` needs an action", "edgetl data synth|show --help")
        return {"synth": _cmd_synth, "show": _cmd_show}[args.data_command](args, console)
    if args.command == "bundle":
        if args.bundle_command is None:
            raise ConfigError("`edgetl bundle` needs an action", "edgetl bundle verify|keygen|from-model --help")
        return _cmd_bundle(args, console)
    if args.command == "calib":
        if args.calib_command is None:
            raise ConfigError("`edgetl calib` needs an action", "edgetl calib show FILE")
        return _cmd_calib_show(args, console)
    if args.command is None:
        parser.print_help()
        return 2
    return handlers[args.command](args, console)

if __name__ == "__main__":
    raise SystemExit(main())

"""`python -m edgetl.runtime predict|adapt|verify|measure|receive ...` on a device without the host
CLI's dependencies (plain text or JSON out, standard library + numpy + the engine). `edgetl
predict|adapt` on the workstation runs the same functions and prints tables; `edgetl deploy` and
`edgetl check` run `receive` and `measure` on the device over its transport.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import traceback
from pathlib import Path

from edgetl.errors import ConfigError, EdgetlError
from edgetl.runtime.lifecycle import Terminated, process_scope
from edgetl.runtime.texts import TEXT_SUFFIXES

SKIPPED_LISTED = 3  # unreadable images named in a result (all are counted)



def seconds(text: str) -> float:
    """An argparse type: a finite number of seconds > 0 (never NaN, inf, 0 or negative)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (0 < value < math.inf):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, not {text!r}")
    return value


class Parser(argparse.ArgumentParser):
    """argparse, with a bad flag as one line and a hint, like every other error (exit 2)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (hint: {self.prog} --help)\n")


def add_predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, help="bundle dir or .tar.gz")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_SENTENCE",
                   help="image files (a text bundle: the sentences themselves)")
    p.add_argument("--top", type=int, default=1, help="also list the k best labels (default 1)")
    p.add_argument("--key", type=Path, help="ed25519 public key: the bundle must be signed by it")
    p.add_argument("--json", action="store_true", help="one JSON record per image")
    p.add_argument("--any-arch", action="store_true", help="run a bundle built for another CPU (host checks)")


def add_adapt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, help="bundle dir (heads are kept beside it, in BUNDLE.heads)")
    p.add_argument("--data", type=Path, help="labelled images: DATA/<label>/*.png (a text bundle: texts.csv|.jsonl "
                                             "or DATA/<label>/*.txt); new labels add classes")
    p.add_argument("--unlabelled", type=Path, metavar="DIR",
                   help="frames of the new conditions without labels (any folders): the head's feature statistics "
                        "move to them; alone, the bundle's checkset guards the change")
    p.add_argument("--replace-labels", action="store_true",
                   help="a head for only the labels in --data (a new label set), guarded on their holdout")
    p.add_argument("--rollback", action="store_true", help="put the previous head back in force")
    p.add_argument("--alpha", type=float, default=0.05,
                   help="the guard refuses a new head only for a loss significant at this level (McNemar's exact "
                        "test on the holdout; default 0.05) and of at least --min-effect points")
    p.add_argument("--min-effect", type=float, default=1.0,
                   help="points of holdout top-1 a significant loss must reach to refuse the head (default 1)")
    p.add_argument("--margin", type=float, default=None,
                   help="a fixed rule instead of the test: refuse a drop of more than this many points")
    p.add_argument("--no-taps", action="store_true", help="a head over the embedding alone, not the backbone's taps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--unguarded", action="store_true",
                   help="commit even without old-class images for the guard to check")
    p.add_argument("--key", type=Path, help="ed25519 public key: the bundle must be signed by it")
    p.add_argument("--any-arch", action="store_true", help="adapt a bundle built for another CPU (host checks)")
    p.add_argument("--wait", type=float, default=30.0, metavar="SECONDS",
                   help="how long to wait for another adapt or deploy on this bundle (default 30)")
    p.add_argument("--json", action="store_true", help="the result as one JSON object")


def check_args(args) -> None:
    """Every argument of a command checked before any work: a bad one is a one-line error."""
    def bad(flag, why, hint):
        raise ConfigError(f"{flag}: {why}", hint)

    command = getattr(args, "command", None)
    if hasattr(args, "top") and (args.top is None or args.top < 1):
        bad(f"--top {args.top}", "list at least the best label", "pass --top 1 or more")
    if hasattr(args, "rollback"):  # adapt
        learns = bool(args.data) or bool(args.unlabelled)
        if args.rollback == learns:
            raise ConfigError("give --data DIR (and/or --unlabelled DIR) to adapt, or --rollback",
                              "edgetl adapt BUNDLE --data DIR")
        for flag, on in (("--unguarded", args.unguarded), ("--replace-labels", args.replace_labels)):
            if args.rollback and on:
                bad(flag, "goes with --data, not --rollback", "edgetl adapt BUNDLE --rollback")
        if args.replace_labels and not args.data:
            bad("--replace-labels", "needs the new labels' images", "edgetl adapt BUNDLE --data DIR --replace-labels")
        if args.margin is not None and not (math.isfinite(args.margin) and args.margin >= 0):
            bad(f"--margin {args.margin}", "must be a finite number >= 0 (top-1 percentage points)", "--margin 1")
        if not (math.isfinite(args.alpha) and 0 < args.alpha < 1):
            bad(f"--alpha {args.alpha}", "must be a significance level between 0 and 1", "--alpha 0.05")
        if not (math.isfinite(args.min_effect) and args.min_effect >= 0):
            bad(f"--min-effect {args.min_effect}", "must be a finite number >= 0 (points)", "--min-effect 1")
        if args.seed < 0:
            bad(f"--seed {args.seed}", "must be >= 0", "--seed 0")
        if not (math.isfinite(args.wait) and args.wait >= 0):
            bad(f"--wait {args.wait}", "must be a finite number of seconds >= 0", "--wait 30")
        if not Path(args.bundle).is_dir():
            raise ConfigError(f"{args.bundle} is not a bundle dir",
                              "unpack the .tar.gz first: heads live beside the dir")
        text_file = (args.data is not None and Path(args.data).is_file()
                     and Path(args.data).suffix.lower() in TEXT_SUFFIXES)
        if args.data is not None and not (Path(args.data).is_dir() or text_file):
            raise ConfigError(f"--data {args.data} is not a directory or a text table",
                              "pass DIR/<label>/*.png, one folder per label (a text bundle: texts.csv or .jsonl)")
        if args.unlabelled is not None and not (Path(args.unlabelled).is_dir() or Path(args.unlabelled).is_file()):
            raise ConfigError(f"--unlabelled {args.unlabelled} is not a directory", "pass a folder of frames "
                              "(a text bundle: a .txt file, one sentence per line)")
    if command == "measure":
        if args.duration is None and (args.runs is None or args.runs < 1):
            bad(f"--runs {args.runs}", "at least one timed frame", "pass --runs N (N >= 1)")
        if args.duration is not None and not (math.isfinite(args.duration) and args.duration > 0):
            bad(f"--duration {args.duration}", "must be a finite number of seconds > 0", "--duration 10")
        if args.warmup < 0:
            bad(f"--warmup {args.warmup}", "must be >= 0", "--warmup 20")
    if command == "receive":
        if args.bytes < 0:
            bad(f"--bytes {args.bytes}", "a size cannot be negative", "pass the archive's size in bytes")
        if not re.fullmatch(r"[0-9a-f]{64}", args.sha256):
            bad(f"--sha256 {args.sha256[:70]}", "is not a sha256 (64 hex digits)", "pass the archive's sha256")


def predict(args) -> list[dict]:
    from edgetl.runtime.images import IMAGE_SUFFIXES
    from edgetl.runtime.model import Model
    from edgetl.runtime.tokens import TextSpec

    check_args(args)
    model = Model.load(args.bundle, key=args.key, machine="any" if args.any_arch else None)
    if isinstance(model.spec, TextSpec):
        files = [a for a in args.images if Path(a).suffix.lower() in IMAGE_SUFFIXES and Path(a).is_file()]
        if files:
            raise ConfigError(f"{args.bundle} is a text bundle, and {files[0]} is an image",
                              'pass the sentences themselves: predict BUNDLE "turn on the lights"')
        return [{"text": text, **p.to_dict(), "head_version": model.head_version}
                for text, p in zip(args.images, model.predict(list(args.images), top_k=args.top), strict=True)]
    paths = [Path(p) for p in args.images]
    return [{"image": str(path), **p.to_dict(), "head_version": model.head_version}
            for path, p in zip(paths, model.predict(paths, top_k=args.top), strict=True)]


def adapt(args) -> dict:
    """Adapt the head from --data DIR and/or --unlabelled DIR (unreadable images skipped and counted), or
    --rollback."""
    from edgetl.runtime.adapt import AdaptConfig
    from edgetl.runtime.images import InputError, image_files, labelled_folder, read_files
    from edgetl.runtime.model import Model

    check_args(args)
    config = AdaptConfig(margin=args.margin, alpha=args.alpha, min_effect=args.min_effect, seed=args.seed,
                         taps=not args.no_taps, replace_labels=args.replace_labels)
    model = Model.load(args.bundle, key=args.key, machine="any" if args.any_arch else None, fallback_head=True)
    if args.rollback:
        done = model.heads.rollback(timeout=args.wait)
        with model.heads.lock(exclusive=False):
            classes = len(model.heads.in_force().head.labels)
        return {"rolled_back_to": done.version, "classes": classes, "note": done.note}

    def read(paths, where):
        pixels, kept, skipped = read_files(paths, model.input_size, model.spec.resize, model.spec.interpolation)
        if not kept:
            raise InputError(f"none of the {len(paths)} images in {where} could be read "
                             f"({skipped[0][0].name}: {skipped[0][1]})", "pass readable PNG/JPEG/BMP/PPM files")
        return pixels, kept, skipped

    if model.text:
        return _adapt_texts(args, model, config)
    pixels = labels = frames = None
    skipped = []
    if args.data is not None:
        paths, names = labelled_folder(args.data)
        pixels, kept, skipped = read(paths, args.data)
        labels = [names[i] for i in kept]
    if args.unlabelled is not None:
        frames, _, more = read(image_files(args.unlabelled), args.unlabelled)
        skipped = skipped + more
    result = model.adapt(pixels, labels, unlabelled=frames, config=config, unguarded=args.unguarded,
                         lock_timeout=args.wait)
    return {**result.to_dict(), "classes": len(result.head.labels), "skipped": len(skipped),
            "skipped_files": [f"{path}: {why}" for path, why in skipped[:SKIPPED_LISTED]]}


def _adapt_texts(args, model, config) -> dict:
    """A text bundle learns from labelled sentences (--data texts.csv|.jsonl|DIR/<label>/*.txt), and its
    statistics move to unlabelled ones (--unlabelled FILE.txt, one sentence per line)."""
    from edgetl.runtime.texts import labelled_texts

    texts = labels = unlabelled = None
    if args.data is not None:
        texts, labels = labelled_texts(args.data)
    if args.unlabelled is not None:
        if not Path(args.unlabelled).is_file():
            raise ConfigError(f"--unlabelled {args.unlabelled} is not a file of sentences",
                              "a text bundle takes a .txt file, one unlabelled sentence per line")
        try:
            lines = Path(args.unlabelled).read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise ConfigError(f"{args.unlabelled} is not UTF-8 text", "save it as UTF-8, one sentence a line") from None
        unlabelled = [line.strip() for line in lines if line.strip()]
        if not unlabelled:
            raise ConfigError(f"{args.unlabelled} holds no sentences", "one unlabelled sentence per line")
    result = model.adapt(texts, labels, unlabelled=unlabelled, config=config, unguarded=args.unguarded,
                         lock_timeout=args.wait)
    return {**result.to_dict(), "classes": len(result.head.labels), "skipped": 0, "skipped_files": []}


def adapt_summary(r: dict) -> str:
    if "rolled_back_to" in r:
        note = f"{r['note']}; " if r.get("note") else ""
        return f"{note}rolled back: head version {r['rolled_back_to']} in force ({r['classes']} classes)"
    new = f", new classes: {', '.join(r['new_classes'])}" if r["new_classes"] else ""
    recovered = (f"adapting from head {r['parent']}: {r['recovered']}; " if r.get("recovered") else "")
    skipped = ""
    if r.get("skipped"):
        more = f" (+{r['skipped'] - SKIPPED_LISTED} more)" if r["skipped"] > SKIPPED_LISTED else ""
        skipped = f"; {r['skipped']} unreadable images skipped: {'; '.join(r['skipped_files'])}{more}"
    frames = f", {r['unlabelled']} unlabelled frames" if r.get("unlabelled") else ""
    head = r.get("head") or {}
    over = f"; {head.get('kind', 'softmax')} head over {len(head.get('taps', []))} segment(s)" if head else ""
    return (f"{recovered}{r['reason']}; {r['images']} images{frames}, {r['epochs']} epochs{new}{over}{skipped}"
            + (f"; head version {r['version']}" if r["committed"] else ""))


def add_device_args(sub, parents=()) -> None:
    parents = list(parents)
    p = sub.add_parser("verify", parents=parents,
                       help="check a bundle as Model.load does (hashes, signature, CPU, engine)")
    p.add_argument("bundle", type=Path)
    p.add_argument("--key", type=Path, help="ed25519 public key: the bundle must be signed by it")
    p = sub.add_parser("measure", parents=parents, help="time and score a bundle on this device (JSON out)")
    p.add_argument("bundle", type=Path)
    p.add_argument("--runs", type=int, default=200, help="timed frames (default 200)")
    p.add_argument("--duration", type=float, help="time frames for this many seconds instead of a count")
    p.add_argument("--warmup", type=int, default=20, help="untimed frames first (default 20)")
    p.add_argument("--data", type=Path, help="labelled images DIR/<label>/*.png instead of the checkset")
    p.add_argument("--key", type=Path, help="ed25519 public key: the bundle must be signed by it")
    p = sub.add_parser("receive", parents=parents,
                       help="take a bundle archive in on stdin; active once complete and verified")
    p.add_argument("bundles", type=Path, help="the device's bundles dir")
    p.add_argument("name", help="the bundle's name (its archive's top dir)")
    p.add_argument("--bytes", type=int, required=True, help="the archive's size, to tell a dropped transfer")
    p.add_argument("--sha256", required=True, help="the archive's sha256")
    p.add_argument("--key", type=Path, help="ed25519 public key: the bundle must be signed by it")


def device_command(args) -> dict:
    check_args(args)
    if args.command == "verify":
        from edgetl.runtime.model import Model

        with Model.load(args.bundle, key=args.key) as model:  # as the app will: the engine opens, then is freed
            m = model.bundle.manifest
        return {"bundle": m.name, "target": m.target, "engine": m.engine, "precision": m.precision,
                "files": len(m.files), "verified": True}
    if args.command == "measure":
        from edgetl.runtime.measure import measure

        return measure(args.bundle, runs=None if args.duration else args.runs, duration_s=args.duration,
                       warmup=args.warmup, data=args.data, key=args.key).to_dict()
    from edgetl.runtime.receive import receive

    return receive(args.bundles, args.name, args.bytes, args.sha256, key=args.key).to_dict()


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m edgetl.runtime", description=__doc__.splitlines()[0])
    common = Parser(add_help=False)
    common.add_argument("--verbose", "-v", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_predict_args(sub.add_parser("predict", parents=[common], help="labels and probabilities of images"))
    add_adapt_args(sub.add_parser("adapt", parents=[common],
                                  help="learn the head from labelled images, guarded; or roll back"))
    add_device_args(sub, parents=[common])
    args = parser.parse_args(argv)
    try:
        with process_scope():  # one temp root, removed on any exit; SIGTERM/SIGHUP unwind like Ctrl-C
            return _run(args, parser)
    except EdgetlError as exc:
        if args.verbose:
            traceback.print_exc()
        return refused(args, type(exc).__name__, exc.message, exc.hint)
    except OSError as exc:  # the file system said no (a full disk, a path): never a traceback, never exit 1
        if args.verbose:
            traceback.print_exc()
        where = f": {exc.filename}" if exc.filename else ""
        return refused(args, "OSError", f"{exc.strerror or exc}{where}",
                       "check the path, its permissions and free space")
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP as `Terminated`
        print(f"interrupted ({exc.args[0] if isinstance(exc, Terminated) else 'SIGINT'}); "
              "nothing half-written was kept", file=sys.stderr)
        return exc.exit_code if isinstance(exc, Terminated) else 130


DEVICE_COMMANDS = ("verify", "measure", "receive")  # what the host runs over a transport and reads as JSON


def refused(args, kind: str, message: str, hint: str | None) -> int:
    """A refusal: one line for a person on stderr, and for the host's device commands one JSON line
    on stdout that `edgetl.devices.deploy.call` reads (exit 2 either way)."""
    print(f"error: {message}" + (f" (hint: {hint})" if hint else ""), file=sys.stderr)
    if args.command in DEVICE_COMMANDS:
        print(json.dumps({"error": {"kind": kind, "message": message, "hint": hint}}))
    return 2


def _run(args, parser) -> int:
    if args.command == "predict":
        for record in predict(args):
            print(json.dumps(record) if args.json else
                  f"{record.get('image', record.get('text'))}\t{record['label']}\t{record['probability']:.3f}")
        return 0
    if args.command == "adapt":
        r = adapt(args)
        print(json.dumps(r) if args.json else adapt_summary(r))
        return 0 if r.get("committed", True) else 1  # 1: the guard refused the new head
    if args.command in DEVICE_COMMANDS:
        print(json.dumps(device_command(args)))
        return 0
    parser.print_help()
    return 2

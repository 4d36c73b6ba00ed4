"""`python -m edgetl.runtime predict|adapt|verify|check|receive ...` on a device without the host
CLI's dependencies (plain text or JSON out, standard library + numpy + the engine). `edgetl
predict|adapt` on the workstation runs the same functions and prints tables; `edgetl deploy` and
`edgetl check` run `receive` and `check` on the device over its transport.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgetl.errors import EdgetlError


def add_predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, help="bundle dir or .tar.gz")
    p.add_argument("images", nargs="+", type=Path, help="image files")
    p.add_argument("--top", type=int, default=1, help="also list the k best labels (default 1)")
    p.add_argument("--key", type=Path, help="ed25519 public key: the bundle must be signed by it")
    p.add_argument("--json", action="store_true", help="one JSON record per image")
    p.add_argument("--any-arch", action="store_true", help="run a bundle built for another CPU (host checks)")


def add_adapt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, help="bundle dir (heads are kept beside it, in BUNDLE.heads)")
    p.add_argument("--data", type=Path, help="labelled images: DATA/<label>/*.png; new labels add classes")
    p.add_argument("--rollback", action="store_true", help="put the previous head back in force")
    p.add_argument("--margin", type=float, default=1.0,
                   help="old-class holdout top-1 points the new head may lose (default 1.0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--unguarded", action="store_true",
                   help="commit even without old-class images for the guard to check")
    p.add_argument("--key", type=Path, help="ed25519 public key: the bundle must be signed by it")
    p.add_argument("--any-arch", action="store_true", help="adapt a bundle built for another CPU (host checks)")
    p.add_argument("--json", action="store_true", help="the result as one JSON object")


def predict(args) -> list[dict]:
    from edgetl.runtime.model import Model

    model = Model.load(args.bundle, key=args.key, machine="any" if args.any_arch else None)
    return [{"image": str(path), **p.to_dict()}
            for path, p in zip(args.images, model.predict(list(args.images), top_k=args.top), strict=True)]


def adapt(args) -> dict:
    from edgetl.runtime.adapt import AdaptConfig
    from edgetl.runtime.images import labelled_folder
    from edgetl.runtime.model import Model

    if args.rollback == bool(args.data):
        raise EdgetlError("give --data DIR to adapt, or --rollback", "edgetl adapt BUNDLE --data DIR")
    if not Path(args.bundle).is_dir():
        raise EdgetlError(f"{args.bundle} is not a bundle dir", "unpack the .tar.gz first: heads live beside the dir")
    model = Model.load(args.bundle, key=args.key, machine="any" if args.any_arch else None)
    if args.rollback:
        version = model.heads.rollback()
        return {"rolled_back_to": version, "classes": len(model.heads.current().labels)}
    paths, labels = labelled_folder(args.data)
    result = model.adapt(paths, labels, config=AdaptConfig(margin=args.margin, seed=args.seed),
                         unguarded=args.unguarded)
    return {**result.to_dict(), "classes": len(result.head.labels)}


def adapt_summary(r: dict) -> str:
    if "rolled_back_to" in r:
        return f"rolled back: head version {r['rolled_back_to']} in force ({r['classes']} classes)"
    new = f", new classes: {', '.join(r['new_classes'])}" if r["new_classes"] else ""
    return f"{r['reason']}; {r['images']} images, {r['epochs']} epochs{new}" + (
        f"; head version {r['version']}" if r["committed"] else "")


def add_device_args(sub) -> None:
    p = sub.add_parser("verify", help="check a bundle as Model.load does (hashes, signature, CPU, engine)")
    p.add_argument("bundle", type=Path)
    p.add_argument("--key", type=Path, help="ed25519 public key: the bundle must be signed by it")
    p = sub.add_parser("check", help="time and score a bundle on this device (JSON out)")
    p.add_argument("bundle", type=Path)
    p.add_argument("--runs", type=int, default=200, help="timed frames (default 200)")
    p.add_argument("--duration", type=float, help="time frames for this many seconds instead of a count")
    p.add_argument("--warmup", type=int, default=20, help="untimed frames first (default 20)")
    p.add_argument("--data", type=Path, help="labelled images DIR/<label>/*.png instead of the checkset")
    p.add_argument("--key", type=Path, help="ed25519 public key: the bundle must be signed by it")
    p = sub.add_parser("receive", help="take a bundle archive in on stdin; active once complete and verified")
    p.add_argument("bundles", type=Path, help="the device's bundles dir")
    p.add_argument("name", help="the bundle's name (its archive's top dir)")
    p.add_argument("--bytes", type=int, required=True, help="the archive's size, to tell a dropped transfer")
    p.add_argument("--sha256", required=True, help="the archive's sha256")
    p.add_argument("--key", type=Path, help="ed25519 public key: the bundle must be signed by it")


def device_command(args) -> dict:
    if args.command == "verify":
        from edgetl.runtime.model import Model

        m = Model.load(args.bundle, key=args.key).bundle.manifest
        return {"bundle": m["name"], "target": m["target"], "engine": m["engine"], "precision": m["precision"],
                "files": len(m["files"]), "verified": True}
    if args.command == "check":
        from edgetl.runtime.measure import measure

        if (args.runs or 0) < 1 and args.duration is None:
            raise EdgetlError(f"--runs {args.runs}: at least one timed frame", "pass --runs N (N >= 1)")
        return measure(args.bundle, runs=None if args.duration else args.runs, duration_s=args.duration,
                       warmup=max(0, args.warmup), data=args.data, key=args.key)
    from edgetl.runtime.receive import receive

    return receive(args.bundles, args.name, args.bytes, args.sha256, key=args.key)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgetl.runtime", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_predict_args(sub.add_parser("predict", help="labels and probabilities of images"))
    add_adapt_args(sub.add_parser("adapt", help="learn the head from labelled images, guarded; or roll back"))
    add_device_args(sub)
    args = parser.parse_args(argv)
    try:
        if args.command == "predict":
            for record in predict(args):
                print(json.dumps(record) if args.json else
                      f"{record['image']}\t{record['label']}\t{record['probability']:.3f}")
            return 0
        if args.command == "adapt":
            r = adapt(args)
            print(json.dumps(r) if args.json else adapt_summary(r))
            return 0 if r.get("committed", True) else 1
        if args.command in ("verify", "check", "receive"):
            print(json.dumps(device_command(args)))
            return 0
        parser.print_help()
        return 2
    except EdgetlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc.strerror or exc}: {exc.filename or ''} (hint: check the path and free space)",
              file=sys.stderr)
        return 2

"""`edgetl compile`: a run (or a model file) for one target, as a compatibility report or a bundle.

The target file names the engines in order of preference; the first one's backend checks the
model and compiles it, and the bundle writer packs the result with its manifest.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from edgetl import backends, checkset, fsutil, pack, targets
from edgetl.backends import CompatibilityReport, Source
from edgetl.console import QUIET, Console
from edgetl.errors import ConfigError
from edgetl.runtime.manifest import Manifest


def compatibility(source: str | Path, target: str | Path) -> CompatibilityReport:
    """The target engine's compatibility report for a run or model file (`--dry-run`): nothing is
    written and nothing is exported, so torch is never imported; a run without the export the
    target needs is told how to make it."""
    t = targets.load(target)
    src = Source.of(source, writes=False)
    return backends.for_target(t, src).check(src, t)


def compile_bundle(source: str | Path, target: str | Path, out: str | Path | None = None, *,
                   sign: str | Path | None = None, allow_cpu_only: bool = False, force: bool = False,
                   checkset_per_class: int | None = None, console: Console = QUIET) -> Manifest:
    """Compile a run for `target` into the bundle dir `out` (default RUN/bundles/TARGET) and
    `out`.tar.gz; returns the manifest. An earlier bundle there is replaced only with `force`;
    anything else there is refused before any work (`edgetl.fsutil.claim`). `checkset_per_class`:
    held-out images per class the bundle carries for `edgetl check` (default `checkset.per_class_for`)."""
    if checkset_per_class is not None:
        checkset.per_class_for(1, checkset_per_class)  # a bad count is refused before any work
    t = targets.load(target)
    src = Source.of(source)
    if not src.is_run:
        raise ConfigError(f"a bundle needs a run (labels, head, preprocessing), and {src.path} is a model file",
                          "use --dry-run to check a model file against a target")
    out = Path(out) if out is not None else src.run.bundle_dir(t.name)
    fsutil.claim_bundle(out, force=force, inputs=[src.path])
    if sign is not None and Path(sign).resolve() in (out.resolve(), pack.archive_path(out).resolve()):
        raise ConfigError(f"--sign {sign} is the bundle's own output", "keep signing keys outside the bundle")
    backend = backends.for_target(t, src)
    with tempfile.TemporaryDirectory(prefix="edgetl-compile-") as work:
        artifacts = backend.compile(src, t, Path(work), allow_cpu_only=allow_cpu_only)
        manifest = pack.write(out, src, t, artifacts, sign=Path(sign) if sign else None, force=force,
                              checkset_per_class=checkset_per_class)
    console.log(f"{t.name}: {artifacts.engine} {artifacts.precision} ({artifacts.choice}) -> {out} and "
                f"{out.name}.tar.gz")
    if artifacts.deferred:
        console.log(f"  deferred to the device: {artifacts.deferred}")
    _say_checkset(manifest, console)
    return manifest


def _say_checkset(manifest: Manifest, console: Console) -> None:
    """The checkset's size and what one image is worth, and why it is smaller than asked where it is."""
    c = manifest.checkset
    if c is None:
        console.log("  no checkset: the run's test and val images are gone (check with --data DIR)")
        return
    asked = c.per_class * len(manifest.labels)
    why = ""
    if c.capped_at is not None:
        why = f", cut to {c.capped_at} by the {checkset.MAX_MB} MB cap on its pixels"
    elif c.images < asked:
        why = f", all the held-out images there are of {asked} asked for"
    console.log(f"  checkset: {c.images} images ({c.per_class} per class asked{why}) from the {c.from_}; "
                f"one image is {100 / max(c.images, 1):.2g} points of top-1")

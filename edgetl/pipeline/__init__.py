"""`edgetl pipeline edgetl.toml`: the whole flow from one file, each stage re-run only when its inputs changed.

The file is checked as a whole first (`spec.load`); then each stage (`stages.plan`) is either up
to date (its stamp's fingerprint matches what it reads now, and its outputs are the ones it
wrote) or runs, removing its old outputs first and stamping itself only once they are complete.
A stage that re-runs changes what the stages after it read, so they re-run too, and nothing
before it does. A stage that fails or is killed leaves no stamp and the completed ones intact:
the next run resumes there. `dry_run` says, stage by stage, what would run and why.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from edgetl import __version__, fsutil
from edgetl.console import QUIET, Console
from edgetl.errors import ConfigError
from edgetl.pipeline import spec as spec_module
from edgetl.pipeline.spec import STAGES, Pipeline
from edgetl.pipeline.stages import Stage, plan
from edgetl.pipeline.state import STATE, Stamp, State, digest_of

PIPELINE = fsutil.Kind("pipeline output", lambda folder: (folder / STATE).is_dir(), replace_by_default=True)


@dataclass(frozen=True)
class Step:
    """One stage of one pipeline run: whether it ran, and why (or why not)."""

    stage: str
    ran: bool
    why: str  # "up to date" | "never ran" | "its [quantize] table changed" | ...
    seconds: float = 0.0
    exit_code: int = 0


@dataclass(frozen=True)
class Outcome:
    steps: tuple[Step, ...]
    exit_code: int
    seconds: float

    @property
    def did_nothing(self) -> bool:
        return not any(s.ran for s in self.steps)


def load(file: str | Path) -> Pipeline:
    return spec_module.load(file)


def run(file: str | Path, *, dry_run: bool = False, force: tuple[str, ...] = (),
        console: Console = QUIET) -> Outcome:
    """Run (or with `dry_run`, plan) the pipeline `file` declares; `force` names stages (or kinds:
    `quantize` is every quantize.FORMAT) to run whatever their stamps say."""
    started = time.monotonic()
    p = load(file)
    stages = plan(p)
    _check_forced(p, stages, force)
    if not dry_run:
        fsutil.claim(p.out, PIPELINE, inputs=[x for s in stages for x in s.reads], flag="out")
    state = State(p.out)
    steps, reran, code = [], set(), 0
    for stage in stages:
        fingerprint, parts = _fingerprint(stage, state)
        why = _why(stage, state, fingerprint, parts, reran, force)
        if why is None:
            steps.append(Step(stage.name, False, "up to date"))
            console.log(f"{stage.name}: up to date")
            continue
        reran.add(stage.name)
        if dry_run:
            steps.append(Step(stage.name, False, why))
            console.log(f"{stage.name}: would run ({why})")
            continue
        console.log(f"{stage.name}: running ({why})")
        state.forget(stage.name)  # from here until its stamp, the stage's outputs are not to be trusted
        t0 = time.monotonic()
        code = stage.run(console)
        seconds = round(time.monotonic() - t0, 2)
        steps.append(Step(stage.name, True, why, seconds, code))
        if code != 0:
            console.log(f"{stage.name}: exit {code} after {seconds:g} s; the stages before it are kept, and the next "
                        "run starts here")
            break
        fingerprint, parts = _fingerprint(stage, state)  # the data it read, as it read it
        state.write_stamp(Stamp(stage.name, fingerprint, state.tree_digest(list(stage.outputs)), __version__,
                                seconds, tuple(str(_relative(x, p.out)) for x in stage.outputs), parts))
        state.save_cache()
    if not dry_run:
        state.save_cache()
    outcome = Outcome(tuple(steps), code, round(time.monotonic() - started, 2))
    if outcome.did_nothing and not dry_run:
        console.log(f"nothing to do: all {len(stages)} stages are up to date ({outcome.seconds:g} s)")
    return outcome


def _relative(path: Path, out: Path) -> Path:
    return path.relative_to(out) if path.is_relative_to(out) else path


def _check_forced(p: Pipeline, stages: list[Stage], force: tuple[str, ...]) -> None:
    names = [s.name for s in stages]
    for name in force:
        if name not in names and name not in {s.kind for s in stages}:
            kinds = [k for k in STAGES if any(s.kind == k for s in stages)]
            raise ConfigError(f"--force {name}: {p.file} has no such stage",
                              f"its stages: {', '.join(dict.fromkeys(kinds + names))}")


def _fingerprint(stage: Stage, state: State) -> tuple[str, dict]:
    """What the stage reads now, part by part (so a change can be named), and the digest of it all."""
    upstream = {name: (s.digest if (s := state.stamp(name)) else None) for name in stage.after}
    parts = {"edgetl": __version__, "config": digest_of(stage.table),
             "data": state.tree_digest(list(stage.reads)) if stage.reads else "", **{
                 f"after:{name}": digest or "" for name, digest in upstream.items()}}
    return digest_of(parts), parts


def _why(stage: Stage, state: State, fingerprint: str, parts: dict, reran: set, force: tuple) -> str | None:
    """Why the stage must run, or None when it is up to date."""
    if stage.name in force or stage.kind in force:
        return "forced"
    changed = [name for name in stage.after if name in reran]
    if changed:
        return f"{', '.join(changed)} re-runs"
    stamp = state.stamp(stage.name)
    if stamp is None:
        left = any(x.exists() for x in stage.outputs)
        return "its last run did not complete (interrupted, or it failed)" if left else "never ran"
    if stamp.fingerprint != fingerprint:
        old = stamp.inputs
        if old.get("edgetl") != parts["edgetl"]:
            return f"edgetl changed ({old.get('edgetl')} -> {parts['edgetl']})"
        if old.get("config") != parts["config"]:
            return f"its {'quantize or calibration' if stage.kind == 'quantize' else stage.kind} settings changed"
        if old.get("data") != parts["data"]:
            return "its data changed"
        moved = [k.split(":", 1)[1] for k in parts if k.startswith("after:") and old.get(k) != parts[k]]
        return f"{', '.join(moved) or 'an earlier stage'}'s outputs changed"
    if state.tree_digest(list(stage.outputs)) != stamp.digest:
        return "its outputs were changed or removed since it ran"
    return None

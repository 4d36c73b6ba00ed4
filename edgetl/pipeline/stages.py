"""The stages a pipeline file declares, in the order they run, each with what it reads and writes.

A stage reads its config table, data the user keeps (hashed by content), and the stages before it
(by the digest of what they wrote); it writes its usual outputs under OUT, through the same API
the `edgetl` commands call. Only the run dir's own files are fine-tune's: the export, quantize
and bundle dirs inside it belong to the stages that write them.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgetl.console import Console
from edgetl.pipeline.spec import Pipeline
from edgetl.pipeline.state import STATE
from edgetl.runtime.atomic import write_file


@dataclass(frozen=True)
class Stage:
    name: str  # synth.NAME | pretrain | finetune | quantize.FORMAT | compile.TARGET | check
    kind: str  # synth | pretrain | finetune | quantize | compile | check
    table: dict  # its config, as the fingerprint sees it
    reads: tuple[Path, ...]  # data the user keeps, hashed by content
    after: tuple[str, ...]  # the stages whose outputs it reads
    outputs: tuple[Path, ...]  # what it writes (removed before it runs again)
    run: Callable[[Console], int]  # the work; its exit code (0: done, stamped)


def plan(p: Pipeline) -> list[Stage]:
    """Every stage of `p`, each after the ones it reads."""
    stages = [_synth(p, name) for name in p.synth]
    produced = {p.synth_dir(name): f"synth.{name}" for name in p.synth}

    def sources(*paths) -> tuple[tuple[Path, ...], tuple[str, ...]]:
        given = [Path(x) for x in paths if x is not None]
        return (tuple(x for x in given if x not in produced), tuple(produced[x] for x in given if x in produced))

    if p.pretrain is not None:
        reads, after = sources(p.pretrain.data, p.pretrain.val, p.pretrain.test, _weights_file(p, p.pretrain))
        stages.append(_train(p, "pretrain", p.pretrain, reads, after))
    reads, after = sources(p.finetune.data, p.finetune.val, p.finetune.test, _weights_file(p, p.finetune))
    stages.append(_train(p, "finetune", p.finetune, reads, after + (("pretrain",) if p.pretrain else ())))
    calib_reads, calib_after = sources(*(p.calibration[k] for k in ("data", "list")
                                         if p.calibration and p.calibration.get(k)))
    quantized = []
    for fmt in p.formats:
        stages.append(_quantize(p, fmt, calib_reads, calib_after))
        quantized.append(stages[-1].name)
    if p.compile is not None:
        sign = (Path(p.file.parent / p.compile.sign).resolve(),) if p.compile.sign else ()
        compiled = [_compile(p, t, sign, tuple(quantized)) for t in p.compile.targets]
        stages += compiled
        if p.check is not None:
            stages.append(_check(p, tuple(s.name for s in compiled)))
    return stages


def _weights_file(p: Pipeline, cfg) -> Path | None:
    """A weights file or run dir the user keeps (a pretrain run the pipeline writes is a stage instead)."""
    weights = getattr(cfg, "weights", None)
    if not weights or not Path(weights).is_absolute() or Path(weights).is_relative_to(p.out):
        return None
    return Path(weights) if Path(weights).exists() else None


def _clear(outputs: tuple[Path, ...]) -> None:
    """Remove what an earlier, interrupted or outdated run of the stage left (all of it under OUT)."""
    for path in outputs:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _synth(p: Pipeline, name: str) -> Stage:
    spec, out = p.synth[name], p.synth_dir(name)

    def run(console: Console) -> int:
        from edgetl.data import synth
        from edgetl.fsutil import staged_dir

        _clear((out,))
        with staged_dir(out) as tmp:
            synth.synthesize(tmp, spec.domain, spec.per_class, spec.size, spec.seed)
        console.log(f"synth.{name}: {spec.per_class} images per class of {spec.domain} -> {out}")
        return 0

    return Stage(f"synth.{name}", "synth", dataclasses.asdict(spec), (), (), (out,), run)


def _run_files(run_dir: Path) -> tuple[Path, ...]:
    from edgetl import rundir

    return tuple(run_dir / f for f in sorted(rundir.RUN_FILES))


def _train(p: Pipeline, kind: str, cfg, reads: tuple[Path, ...], after: tuple[str, ...]) -> Stage:
    def run(console: Console) -> int:
        _clear((cfg.out,))  # the whole run dir: its exports and int8 models were made from the old weights
        if p.text:
            from edgetl.train.text import finetune_text

            finetune_text(cfg, console)
        else:
            from edgetl.train.finetune import finetune

            finetune(cfg, console)
        return 0

    by_content = {"data", "val", "test", "out"} | ({"weights"} if _weights_file(p, cfg) or kind == "finetune"
                                                   and p.pretrain else set())
    table = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()
             if k not in by_content}  # paths: by content, in reads/after
    return Stage(kind, kind, table, reads, after, _run_files(cfg.out), run)


def _quantize(p: Pipeline, fmt: str, reads: tuple[Path, ...], after: tuple[str, ...]) -> Stage:
    from edgetl import rundir

    out = p.run_dir / rundir.QUANTIZE_DIR / fmt
    calib_file = p.out / STATE / "calibration.toml"

    def run(console: Console) -> int:
        from edgetl.quantize import ESCALATION, SearchBudget, quantize
        from edgetl.quantize.qat import EPOCHS, QatConfig

        q = p.quantize
        if p.calibration is not None:
            lines = [f"{k} = {json.dumps(v)}" for k, v in p.calibration.items() if v is not None]
            write_file(calib_file, ("# written by edgetl pipeline from " + str(p.file) + "\n"
                                    + "\n".join(lines) + "\n").encode())
        search = SearchBudget(SearchBudget.trials if q.search_trials is None else q.search_trials,
                              SearchBudget.seconds if q.search_seconds is None else q.search_seconds).check()
        qat = None if q.qat_epochs is None and q.qat_lr is None else \
            QatConfig(EPOCHS if q.qat_epochs is None else q.qat_epochs, q.qat_lr).check()
        r = quantize(p.run_dir, calib_file if p.calibration is not None else None, fmt=fmt, method=q.method,
                     max_drop=q.max_drop, split=q.split, io=q.io, search=search, qat=qat,
                     escalate=ESCALATION if q.escalate is None else q.escalate, console=console)
        console.log(f"quantize.{fmt}: {r.method}, drop {r.drop:.2f} points (budget {r.max_drop:g}) on {r.eval}")
        return 0

    table = dataclasses.asdict(p.quantize) | {"format": fmt, "formats": None,
                                              "calibration": {k: v for k, v in (p.calibration or {}).items()
                                                              if k not in ("data", "list")}}
    return Stage(f"quantize.{fmt}", "quantize", table, reads, ("finetune",) + after, (out,), run)


def _compile(p: Pipeline, target: str, sign: tuple[Path, ...], quantized: tuple[str, ...]) -> Stage:
    out = p.bundle_dir(target)
    archive = out.with_name(out.name + ".tar.gz")

    def run(console: Console) -> int:
        from edgetl.compile import compile_bundle

        _clear((out, archive))
        m = compile_bundle(p.run_dir, target, out, sign=sign[0] if sign else None,
                           allow_cpu_only=p.compile.allow_cpu_only, force=True, console=console)
        console.log(f"compile.{target}: {m.engine} {m.precision} -> {out}")
        return 0

    from edgetl import targets

    table = dataclasses.asdict(p.compile) | {"target": target, "targets": None, "sign": None}
    return Stage(f"compile.{target}", "compile", table, (targets.load(target).file.resolve(), *sign),
                 ("finetune",) + quantized, (out, archive), run)


def _check(p: Pipeline, compiled: tuple[str, ...]) -> Stage:
    from edgetl import devices

    report_dir = p.out / "check"
    spec = p.check
    folder = Path(spec.devices) if spec.devices else None
    fleet_files = tuple(d.file.resolve() for d in devices.select(spec.device, folder))

    def run(console: Console) -> int:
        from edgetl.check import Plan, check_fleet, exit_code, manifest_of, report

        fleet = [dataclasses.replace(d, overrides={**d.overrides, **(spec.budgets or {})})
                 for d in devices.select(spec.device, folder)]
        bundles = [(p.bundle_dir(name.split(".", 1)[1]), manifest_of(p.bundle_dir(name.split(".", 1)[1])))
                   for name in compiled]
        results = check_fleet(bundles, fleet, Plan(runs=spec.runs, warmup=spec.warmup))
        for path in report.write(results, report_dir, report_dir / "junit.xml"):
            console.log(f"check: wrote {path}")
        for r in results:
            fails = "; ".join(v.why for v in r.verdicts if v.status == "fail") or r.error or ""
            console.log(f"check: {r.device} {r.bundle}: {r.status}" + (f" ({fails})" if fails else ""))
        return exit_code(results)

    table = dataclasses.asdict(spec) | {"device": None, "devices": None}  # the device files: by content
    return Stage("check", "check", table, fleet_files, compiled, (report_dir,), run)

"""`edgetl quantize`: int8 backbones calibrated on real images, held to an accuracy budget.

The fp32 export and each int8 candidate are scored on the run's own labelled images (val by
default) with the run's float head. `--method auto` escalates, each step only while the best so
far loses more than `max_drop` points:

1. calibration: every method (minmax, entropy, percentile);
2. refinement (`edgetl.quantize.refine`): bias correction, and cross-layer equalization where the
   graph allows (ONNX), on the best method;
3. float fallback: the layers most sensitive to quantization kept in float, as few as it can,
   within a bounded search (`SearchBudget`);
4. quantization-aware fine-tuning (`edgetl.quantize.qat`), kept only if it beats the best before it.

The record's `steps` say which ran, what each gained and cost in seconds. The result is checked
to really be int8, and its host latency is measured beside fp32's, because int8 is not always
faster. Nothing is written unless the budget holds. Top-1 figures are percentages (0-100), drops
are points of them.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgetl.backends import opcount
from edgetl.backends.tflite_io import IO_TYPES, to_pixels, to_uint8
from edgetl.console import QUIET, Console, silenced
from edgetl.data.imagefolder import load_images, scan
from edgetl.errors import ConfigError, ConversionError, DataError, EdgetlError, QuantizeError
from edgetl.export import check_format, check_input, export, export_input, export_taps, load_export, tapped
from edgetl.fsutil import QUANTIZED, claim, staged_dir
from edgetl.quantize import calibration, refine
from edgetl.quantize.qat import DEFAULT_QAT, QatConfig
from edgetl.quantize.scoring import Labelled, Scorer, Trial, load_engine
from edgetl.rundir import FORMATS, HEAD, QatRecord, QuantizeDir, QuantizeRecord, QuantizeStep, RunDir
from edgetl.runtime import engines
from edgetl.runtime.features import EMBEDDING, Layout
from edgetl.train.finetune import versions
from edgetl.train.run import Run, load_run, split_samples
from edgetl.train.taps import choose

METHODS = ("minmax", "entropy", "percentile")
ESCALATION = ("refinement", "float_fallback", "qat")  # what `--method auto` may do after calibration, in order
SENSITIVITY_IMAGES = 32
MAX_FLOAT_FRACTION = 0.25  # keeping more than this in float is no longer an int8 model
MAX_TAP_ERROR = 0.5  # int8 noise / a tap's spread across images beyond which the tap is dropped (SNR < 6 dB)


@dataclass(frozen=True)
class SearchBudget:
    """How far `method="auto"` looks for layers to keep in float when no calibration method alone
    meets `max_drop`. Each trial is a full quantize + score (10-20 s for a MobileNet-size TFLite
    model here), so the search stops after `trials` float-layer trials or `seconds` of wall clock
    (the sensitivity ranking included), whichever comes first, and keeps the best result found
    within the accuracy budget (quantize.json `search.stopped` says which bound ended it); if none
    was found, it is the usual "no int8 model stays within" error.

    The default (6 trials, 120 s) covers the doubling steps to a quarter of a 50-layer network
    plus one bisection step."""

    trials: int = 6
    seconds: float = 120.0

    def check(self) -> SearchBudget:
        if isinstance(self.trials, bool) or not isinstance(self.trials, int) or self.trials < 1:
            raise ConfigError(f"--search-trials must be a whole number >= 1, not {self.trials!r}", "e.g. 6 (default)")
        if isinstance(self.seconds, bool) or not isinstance(self.seconds, int | float) \
                or not math.isfinite(self.seconds) or self.seconds <= 0:
            raise ConfigError(f"--search-seconds must be a finite number > 0, not {self.seconds!r}",
                              "e.g. 120 (default)")
        return self


DEFAULT_SEARCH = SearchBudget()


def _labelled(run: Run, spec, data: Path | None, split: str) -> Labelled:
    if data is not None:
        samples, name = list(scan(data, run.classes, what="eval").samples), str(data)
    else:
        samples, name = split_samples(run, split), f"run {split} split"
    loaded = load_images(samples, run.spec.size, run.spec.resize, interpolation=run.spec.interpolation)
    if len(loaded.labels) == 0:
        raise DataError(f"no readable images to score on ({name})", "pass --data DIR with labelled images")
    return Labelled(name, spec.model_input(loaded.images), loaded.labels)


def _quantizer(fmt: str):
    with silenced():  # torchao and litert-torch log and warn as they import
        if fmt == "onnx":
            from edgetl.quantize import ort

            return ort
        from edgetl.quantize import tflite

        return tflite


def quantize(run_path: str | Path, calib_file: str | Path, *, fmt: str = "onnx", method: str = "auto",
             max_drop: float = 1.0, split: str = "val", data: str | Path | None = None, io: str = "int8",
             search: SearchBudget = DEFAULT_SEARCH, taps=None, input: str | None = None, console: Console = QUIET,
             run: Run | None = None, qat: QatConfig | None = None,
             escalate: tuple[str, ...] = ESCALATION) -> QuantizeRecord:
    """Quantize a run's backbone to int8 in `fmt` into RUN/quantize/FORMAT; returns its record (quantize.json).

    The budget is judged on the run's `split` (val or test), or on `data`; with val, the run's
    test split (when it has one) is scored beside it. `io` is the integer type of a TFLite
    model's input and output (uint8 for targets that ask). `search` bounds the float-layer
    search of `method="auto"` (default: 6 trials, 120 s; see `SearchBudget`).

    In the record, `fp32_top1` and `int8_top1` are top-1 in percent (0-100, 2 decimals) and
    `drop` is in points of it; `search` says how the float-layer search went and what ended it.
    `taps` (auto|none|STAGE,...) re-exports when the run's export taps other stages (None: the
    export as it is, made with auto when there is none); `taps` in the record gives each output
    segment's int8 error and the taps dropped for it. `input` (uint8|float) re-exports likewise when the
    export takes the other (None: as it is; uint8 when there is none): a uint8 model is calibrated and
    scored taking the frames themselves (`edgetl.export.pixels`, `edgetl.backends.tflite_io.to_pixels`).
    `method`: auto (the escalation in the module's docstring; `escalate` names the steps it may take after
    calibration, default all), one calibration method, or qat (calibration, then QAT, kept only if it beats
    it); `qat` sets QAT's epochs and learning rate (default: 8 epochs at the run's lr x 0.1).
    A text run goes to `edgetl.quantize.text` (dynamic or static QDQ; `calib_file` may be None there)."""
    check_format(fmt)
    from edgetl.export import is_text_run

    if is_text_run(run_path):
        from edgetl.quantize.text import quantize_text

        given = [flag for flag, on in (("--taps", taps is not None), ("--input", input is not None),
                                       ("--io", io != "int8"), ("--qat-epochs/--qat-lr", qat is not None)) if on]
        if given:
            raise ConfigError(f"{given[0]} is for image runs, and {run_path} is a text run",
                              "a text run's int8 model takes token ids: drop it")
        return quantize_text(run_path, calib_file, fmt=fmt, method=method, max_drop=max_drop, split=split,
                             data=data, console=console)
    if calib_file is None:
        raise ConfigError("an image run is calibrated on real images: --calib is required",
                          "edgetl quantize RUN --calib calibration/NAME.toml")
    if input is not None:
        check_input(input)
    if split not in ("val", "test"):
        raise ConfigError(f"unknown --split {split!r}", "val (default) or test")
    if io not in IO_TYPES:
        raise ConfigError(f"unknown --io {io!r}", f"one of: {', '.join(IO_TYPES)}")
    if io != "int8" and fmt != "tflite":
        raise ConfigError(f"--io {io} applies to tflite only", "ONNX QDQ models take and return float")
    if method not in ("auto", "qat") and method not in METHODS:
        raise ConfigError(f"unknown calibration method {method!r}", f"one of: auto, {', '.join(METHODS)}, qat")
    escalate = check_escalation(escalate)
    qat = DEFAULT_QAT if qat is None else (qat if isinstance(qat, QatConfig) else QatConfig(*qat)).check()
    if not 0 <= max_drop <= 100:
        raise ConfigError(f"--max-drop must be between 0 and 100 points, not {max_drop}", "e.g. 1.0")
    search = (search if isinstance(search, SearchBudget) else SearchBudget(*search)).check()
    started = time.perf_counter()
    run = run or load_run(run_path)
    out = claim(run.dir.quantize_dir(fmt).path, QUANTIZED, flag="the quantize dir")  # before any work
    selection = calibration.select(calibration.read(calib_file))
    exported = load_export(run.path, fmt)
    if exported is None or (taps is not None and export_taps(exported) != choose(run.backbone, run.spec.size, taps)) \
            or (input is not None and export_input(exported) != input):
        kept = export_taps(exported) if exported else "auto"  # the taps stay as they were unless asked
        exported = export(run.path, fmt, taps=kept if taps is None else taps,
                          input=input or (export_input(exported) if exported else "uint8"), console=console, run=run)
    spec = exported.spec
    layout = Layout.of(spec.outputs, int(run.head.in_features))
    frames = calibration.images(selection, run.spec)
    # ONNX calibrates the uint8 model itself; TFLite calibrates the torch graph after its normalisation
    # (the same tensors), and each int8 model it makes is then given the uint8 input (`to_pixels`)
    calib_x = frames if fmt == "onnx" and spec.pixels else spec.normalize(frames)
    console.log(f"calibration: {len(calib_x)} images from {selection.calib.source} "
                f"({len(selection.classes)} classes, seed {selection.calib.seed})")
    has_test = bool(run.record.data.test_dir)
    guard = _labelled(run, spec, Path(data) if data else None, split)
    sets = [guard]
    if data is None and split == "val" and has_test:
        sets.append(_labelled(run, spec, None, "test"))
    head = dict(np.load(run.dir.head))
    scorer = Scorer(exported.backbone, head, sets, layout)
    q = _quantizer(fmt)
    suffix = FORMATS[fmt]

    with tempfile.TemporaryDirectory(prefix="edgetl-quantize-") as work_dir:
        work = Path(work_dir)
        prepared = (q.prepare(exported.backbone, work / f"prepared{suffix}") if fmt == "onnx"
                    else tapped(run, spec))
        sources: dict[tuple, Path] = {}
        graphs = {}

        def source_for(refinements: tuple[str, ...], keep_float: tuple[str, ...] = ()):
            """ONNX refinements make their own fp32 model to quantize (bias correction only of the layers that
            are quantized); TFLite's act on the converted graph."""
            if fmt != "onnx" or not refinements:
                return prepared
            key = (refinements, keep_float if "bias_correction" in refinements else ())
            if key not in sources:
                src = prepared
                if "equalization" in refinements:
                    src = work / "prepared-equalized.onnx"
                    if not src.is_file():
                        refine.equalize_onnx(prepared, src)
                if "bias_correction" in refinements:
                    out = work / f"{src.stem}-corrected-{len(sources)}.onnx"
                    refine.bias_correct_onnx(src, out, calib_x, skip=key[1])
                    src = out
                sources[key] = src
            return sources[key]

        def trial(m: str, keep_float: tuple[str, ...] = (), label: str = "",
                  refinements: tuple[str, ...] = ()) -> Trial:
            path = work / f"{'-'.join((m, *refinements))}-{len(keep_float)}{suffix}"
            # what really stays float: the kept layers and the layers feeding them
            if fmt == "onnx":
                kept = with_producers_onnx(prepared, keep_float) if keep_float and refinements else keep_float
                keep_float, graph = q.quantize(source_for(refinements, kept), path, calib_x, m, keep_float=keep_float)
            else:
                keep_float, graph = q.quantize(prepared, path, calib_x, m, keep_float=keep_float,
                                               refinements=refinements)
            graphs[(m, keep_float, refinements)] = graph
            path = _shipped(path, fmt, spec)
            t = scorer.trial(m, keep_float, path, refinements)
            console.log(f"  {label}{t.label:<10} float layers {len(keep_float):>2}: int8 top-1 {t.top1:.2f}% "
                        f"(fp32 {scorer.fp32_top1[0]:.2f}%, drop {t.drop:+.2f}), agreement {t.agreement:.1%}")
            return t

        escalation = _Escalation(max_drop, auto=method == "auto", allowed=escalate)
        methods = METHODS if method in ("auto", "qat") else (method,)
        trials: list[Trial] = []

        def calibrate() -> list[Trial]:
            with console.task(f"calibrating int8 {fmt} ({', '.join(methods)})", len(methods), "methods") as advance:
                for m in methods:
                    trials.append(trial(m))
                    advance(1)
            return list(trials)

        def refinements() -> list[Trial]:
            base = escalation.best
            variants = [("bias_correction",)] + ([("equalization", "bias_correction")] if fmt == "onnx" else [])
            console.log(f"best method ({base.label}) loses {base.drop:.2f} points > {max_drop}: trying bias "
                        "correction" + (" and cross-layer equalization" if fmt == "onnx" else ""))
            refined = [trial(base.method, refinements=r, label="refined: ") for r in variants]
            trials.extend(refined)
            return refined

        sensitivity: list[tuple[str, float]] = []
        searched = None

        def fallback() -> list[Trial]:
            nonlocal sensitivity, searched
            before = len(trials)
            found, sensitivity, searched = _search(escalation.best, trials, trial, q, fmt,
                                                   source_for(escalation.best.refinements), graphs, calib_x, work,
                                                   max_drop, search, console)
            return [found] if found.float_layers else trials[before:]

        qat_result: list = []

        def aware() -> list[Trial]:
            try:
                t, info = _quantization_aware(run, spec, layout, frames, calib_x, fmt, work, scorer, qat, console)
            except EdgetlError as exc:  # asked for, it is the answer; as auto's last resort, the budget error is
                if method == "qat":
                    raise
                console.log(f"quantization-aware fine-tuning failed: {exc.message}")
                escalation.failed = exc.message
                return []
            qat_result.append(info)
            trials.append(t)
            return [t]

        escalation.run("calibration", calibrate, f"{', '.join(methods)}", always=True)
        escalation.run("refinement", refinements, "bias correction" + (", equalization + bias correction"
                                                                        if fmt == "onnx" else ""))
        escalation.run("float_fallback", fallback, "the most sensitive layers kept float")
        escalation.run("qat", aware, "quantization-aware fine-tuning", force=method == "qat")
        qat_record = _qat_record(qat_result[0], escalation) if qat_result else None
        best = escalation.best
        if best.drop > max_drop:
            bounded = (f"; the float-layer search stopped at its {_bound(searched)}" if searched and
                       searched["stopped"] else "")
            raise QuantizeError(
                f"no int8 {fmt} model of {run.path} stays within {max_drop} points: the best, {best.label} with "
                f"{len(best.float_layers)} float layer(s), loses {best.drop:.2f} (int8 {best.top1:.2f}% vs fp32 "
                f"{scorer.fp32_top1[0]:.2f}% on {guard.name}){bounded}",
                "nothing was written; raise --max-drop" + (" or --search-trials/--search-seconds" if bounded else "")
                + ", calibrate on more representative images, or keep fp32",
                [t.summary() for t in trials])
        if io == "uint8":
            best = _with_uint8_io(best, scorer, console)
        ops = opcount.count(best.path)
        if ops.weighted_int8 == 0 or ops.weighted_float > len(best.float_layers):
            raise QuantizeError(
                f"the {fmt} result is not int8: {ops.weighted_float} conv/matmul op(s) stayed float "
                f"({', '.join(ops.float_nodes[:3])}) beside {ops.weighted_int8} int8 ones",
                "nothing was written; report the backbone and versions")
        int8, fp32 = load_engine(best.path), load_engine(exported.backbone)
        with console.task("timing fp32 and int8 on this host", 2, "models") as advance, silenced():
            latency = {"fp32": engines.latency_ms(fp32)}
            advance(1)
            latency["int8"] = engines.latency_ms(int8)
            advance(1)
        name = QuantizeDir.name(fmt)
        errors = scorer.tap_errors(best.path)
        outputs = tuple(replace(s, dropped=s.name != EMBEDDING and errors[s.name] > MAX_TAP_ERROR)
                        for s in spec.outputs)
        dropped = [s.name for s in outputs if s.dropped]
        if dropped:
            console.log(f"  int8 damages tap(s) {', '.join(dropped)} (error > {MAX_TAP_ERROR} of their spread): "
                        "dropped, no head reads them")
        int8_spec = spec.with_input(int8.input.dtype, int8.input.scale, int8.input.zero_point).with_outputs(outputs)
        record = QuantizeRecord(
            format=fmt, run=str(run.path), backbone=run.record.backbone, file=name,
            method=best.method, method_requested=method, max_drop=float(max_drop), refinements=best.refinements,
            steps=escalation.records(), qat=qat_record,
            float_layers=tuple(best.float_layers),
            eval=guard.name, images=int(len(guard.labels)),
            fp32_top1=scorer.fp32_top1[0], int8_top1=best.top1, drop=best.drop,
            agreement=best.agreement,
            test=({"images": int(len(sets[1].labels)), "fp32_top1": scorer.fp32_top1[1], **best.extra["test"][0]}
                  if len(sets) > 1 else None),
            trials=tuple(t.summary() for t in trials),
            taps=({"error_max": MAX_TAP_ERROR, "error": errors, "dropped": dropped} if spec.outputs else None),
            sensitivity_db=tuple((n, round(v, 2)) for n, v in sensitivity[:20]),
            search=searched,
            calibration={"file": str(selection.calib.file), "source": str(selection.calib.source),
                         "samples": len(calib_x), "seed": selection.calib.seed,
                         "per_class": selection.per_class()},
            ops=ops.to_dict(), int8_verified=True,
            io={"input": int8.input.to_dict(), "output": int8.output.to_dict()},
            sizes_bytes={"fp32": exported.backbone.stat().st_size, "int8": best.path.stat().st_size},
            latency_ms=latency,
            int8_over_fp32_latency=round(latency["int8"]["p50_ms"] / latency["fp32"]["p50_ms"], 3),
            seconds=round(time.perf_counter() - started, 1),
            versions=versions(),
        )
        with staged_dir(out, QUANTIZED) as tmp:
            shutil.copy2(best.path, tmp / name)
            QuantizeDir.fill(tmp, run.dir, int8_spec, record, run.dir.exported(fmt).features)
            if "head" in best.extra:  # quantization-aware fine-tuning trained its own head beside the backbone
                np.savez(tmp / HEAD, W=best.extra["head"]["W"], b=best.extra["head"]["b"], version=np.int64(1))
    return record


def with_producers_onnx(model_path: Path, names: tuple[str, ...]) -> tuple[str, ...]:
    """The ONNX nodes that really stay float when `names` are kept float (see `ort.with_producers`)."""
    import onnx

    from edgetl.quantize.ort import with_producers

    return with_producers(onnx.load(str(model_path), load_external_data=False), names)


def check_escalation(steps) -> tuple[str, ...]:
    """`--escalate` as a tuple of known steps, in the order they run."""
    steps = tuple(s.strip() for s in steps.split(",")) if isinstance(steps, str) else tuple(steps)
    unknown = [s for s in steps if s not in ESCALATION]
    if unknown:
        raise ConfigError(f"unknown --escalate step {unknown[0]!r}",
                          f"a comma-separated subset of: {','.join(ESCALATION)} (default: all)")
    return tuple(s for s in ESCALATION if s in steps)


def _rank(t: Trial) -> tuple[float, float]:
    return (t.drop, -t.agreement)


class _Escalation:
    """`--method auto`'s steps in order, each run only while the best so far misses `max_drop`; keeps the
    best candidate (least guard-split drop, then most agreement) and what each step ran, gained and cost."""

    def __init__(self, max_drop: float, *, auto: bool, allowed: tuple[str, ...] = ESCALATION):
        self.max_drop, self.auto, self.allowed = max_drop, auto, allowed
        self.best: Trial | None = None
        self.kept_step: str | None = None
        self.failed: str | None = None  # why the step that just ran produced nothing
        self.steps: list[dict] = []

    def run(self, name: str, candidates, note: str = "", *, always: bool = False, force: bool = False) -> None:
        missed = self.best is not None and self.best.drop > self.max_drop
        if not (always or force or (self.auto and missed and name in self.allowed)):
            if self.auto:
                why = "not needed: the best so far is within budget" if not missed else "not in --escalate"
                self.steps.append({"step": name, "ran": False, "note": why})
            return
        t0 = time.perf_counter()
        found = [c for c in candidates() if c is not None]
        top = min(found, key=_rank) if found else None
        entry = {"step": name, "ran": True, "seconds": round(time.perf_counter() - t0, 1), "note": note}
        if top is not None:
            entry.update(best=top.label + (f" ({len(top.float_layers)} float)" if top.float_layers else ""),
                         drop=top.drop, test_drop=top.test_drop,
                         gain=round(self.best.drop - top.drop, 2) if self.best is not None else None)
            if self.best is None or _rank(top) < _rank(self.best):
                self.best, self.kept_step = top, name
        if self.failed:
            entry["note"], self.failed = f"failed: {self.failed}", None
        self.steps.append(entry)

    def records(self) -> tuple[QuantizeStep, ...]:
        return tuple(QuantizeStep(**{**s, "kept": s["step"] == self.kept_step}) for s in self.steps)


def _shipped(path: Path, fmt: str, spec) -> Path:
    """The model scored is the one shipped: a uint8-input TFLite takes the frames themselves."""
    if fmt != "tflite" or not spec.pixels:
        return path
    frames_model = path.with_name(path.stem + "-frames" + path.suffix)
    to_pixels(path, frames_model, *spec.affine)
    return frames_model


def _quantization_aware(run: Run, spec, layout: Layout, frames: np.ndarray, calib_x: np.ndarray, fmt: str,
                        work: Path, scorer: Scorer, config: QatConfig, console: Console):
    """QAT of the run's backbone (`edgetl.quantize.qat`), written as the format's int8 artifact and scored as
    every candidate is; returns the trial and what training measured."""
    from edgetl.quantize import qat

    t0 = time.perf_counter()
    console.log(f"quantization-aware fine-tuning: {config.epochs} epoch(s) of {run.path}'s recipe with int8 "
                "simulated, its head trained beside it")
    result = qat.train(run, tapped(run, spec), layout, frames, channels_last=fmt == "tflite", config=config,
                       console=console)
    path = work / f"qat{FORMATS[fmt]}"
    with console.task(f"writing the QAT model as int8 {fmt}", 1, "models") as advance:
        if fmt == "onnx":
            qat.write_onnx(result, spec, path)
        else:
            qat.write_tflite(result, calib_x, path)
        path = _shipped(path, fmt, spec)
        advance(1)
    parity = qat.parity(result, path, frames[:PARITY_FRAMES], spec, channels_last=fmt == "tflite",
                        head=(result.head["W"], result.head["b"]), columns=scorer.embedding)
    t = scorer.trial("qat", (), path, head=result.head)
    t.extra["head"] = result.head
    console.log(f"  qat        float layers  0: int8 top-1 {t.top1:.2f}% (fp32 {scorer.fp32_top1[0]:.2f}%, drop "
                f"{t.drop:+.2f}), agreement {t.agreement:.1%}; against its torch graph: top-1 agreement "
                f"{parity['top1_agreement']:.1%}")
    return t, {"result": result, "trial": t, "parity": parity, "seconds": round(time.perf_counter() - t0, 1)}


PARITY_FRAMES = 32


def _qat_record(info: dict, escalation: _Escalation) -> QatRecord:
    result, t = info["result"], info["trial"]
    kept = escalation.kept_step == "qat"
    reason = "" if kept else (
        f"discarded: its drop of {t.drop:.2f} points does not beat the post-training best "
        f"({escalation.best.label}, {escalation.best.drop:.2f})")
    return QatRecord(epochs=result.epochs, best_epoch=result.best_epoch, lr=result.lr,
                     history=tuple(result.history), train_seconds=result.seconds, seconds=info["seconds"], kept=kept,
                     int8_top1=t.top1, drop=t.drop, test_drop=t.test_drop, agreement=t.agreement,
                     parity=info["parity"], reason=reason)


def _with_uint8_io(best: Trial, scorer: Scorer, console: Console) -> Trial:
    """`best` with uint8 input/output, rescored: the requantize is exact, and this shows it."""
    path = best.path.with_name(best.path.stem + "-uint8" + best.path.suffix)
    to_uint8(best.path, path)
    t = scorer.trial(best.method, best.float_layers, path)
    console.log(f"  uint8 IO: int8 top-1 {t.top1:.2f}% (drop {t.drop:+.2f}), agreement {t.agreement:.1%}")
    return t


def _bound(searched: dict) -> str:
    if searched["stopped"] == "trials":
        return f"bound of {searched['max_trials']} trials"
    return f"time bound of {searched['max_seconds']:g} s"


def _search(best: Trial, trials: list[Trial], trial, q, fmt: str, source, graphs: dict, calib_x: np.ndarray,
            work: Path, max_drop: float, search: SearchBudget, console: Console):
    """The fewest most-sensitive layers to keep float so that `best.method` meets `max_drop`, within
    `search`'s bounds. Returns the best trial, the sensitivity ranking and the record's `search`."""
    t0 = time.perf_counter()
    deadline = t0 + search.seconds
    console.log(f"best method ({best.method}) loses {best.drop:.2f} points > {max_drop}: looking for the layers "
                f"most sensitive to quantization (at most {search.trials} trials, {search.seconds:g} s)")
    sens_x = calib_x[:SENSITIVITY_IMAGES]
    if fmt == "onnx":
        scores = q.sensitivity(source, best.method, sens_x, work, console=console, deadline=deadline)
    else:
        scores = q.sensitivity(graphs[(best.method, (), best.refinements)], sens_x, console=console, deadline=deadline)
    sensitivity = sorted(scores.items(), key=lambda kv: kv[1])
    if sensitivity:
        console.log("most sensitive: " + ", ".join(f"{n} ({v:.1f} dB)" for n, v in sensitivity[:5]))
    searched = {"max_trials": search.trials, "max_seconds": search.seconds, "trials": 0, "seconds": 0.0,
                "layers_ranked": len(sensitivity), "stopped": None}
    found = None
    with console.task(f"float-layer search ({best.method})", search.trials, "trials") as advance:
        def try_k(k: int) -> Trial | None:
            if searched["trials"] >= search.trials:
                searched["stopped"] = "trials"
                return None
            if time.perf_counter() >= deadline:
                searched["stopped"] = "seconds"
                return None
            searched["trials"] += 1
            keep = tuple(n for n, _ in sensitivity[:k])
            try:
                t = trial(best.method, keep, label=f"trial {searched['trials']}/{search.trials}: ",
                          refinements=best.refinements)
            except ConversionError as exc:  # a converter that refuses this float/int8 split: the next k may do
                console.log(f"  trial {searched['trials']}/{search.trials}: {len(keep)} float layer(s) do not "
                            f"convert ({exc.message[:160]}): counted as missing the budget")
                searched.setdefault("failed", []).append(len(keep))
                advance(1)
                return Trial(best.method, keep, Path(), 0.0, math.inf, 0.0, refinements=best.refinements)
            trials.append(t)
            advance(1)
            return t

        if sensitivity:
            found = _fewest_float(try_k, len(sensitivity), max_drop)
        elif time.perf_counter() >= deadline:
            searched["stopped"] = "seconds"
    searched["seconds"] = round(time.perf_counter() - t0, 1)
    if found is not None and searched["stopped"]:
        console.log(f"the search stopped at its {_bound(searched)} after {searched['trials']} trial(s): keeping the "
                    f"best found within budget, {len(found.float_layers)} float layer(s) (fewer may do; raise "
                    "--search-trials/--search-seconds to look further)")
    return found or min(trials, key=lambda t: (t.drop, -t.agreement)), sensitivity, searched


def _fewest_float(try_k, available: int, max_drop: float) -> Trial | None:
    """The trial with the fewest float layers within budget: k = 1, 2, 4, ... then bisecting
    (the drop is assumed to shrink as more of the most sensitive layers stay float). `try_k`
    returns None once the search is out of trials or time: the best found so far is kept."""
    limit = max(1, min(available, int(np.ceil(available * MAX_FLOAT_FRACTION))))
    steps = sorted({min(2**i, limit) for i in range(limit.bit_length() + 1)})
    passed: dict[int, Trial] = {}
    failed = 0
    for k in steps:
        t = try_k(k)
        if t is None:
            return None
        if t.drop <= max_drop:
            passed[k] = t
            break
        failed = k
    if not passed:
        return None
    lo, hi = failed, min(passed)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        t = try_k(mid)
        if t is None:
            break
        if t.drop <= max_drop:
            passed[mid], hi = t, mid
        else:
            lo = mid
    return passed[hi]


def load_record(run_path: str | Path, fmt: str) -> QuantizeRecord | None:
    found = RunDir(Path(run_path)).quantized(check_format(fmt))
    return found.record if found else None

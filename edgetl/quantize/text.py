"""int8 of a text run's encoder with onnxruntime: dynamic quantization or static QDQ, whichever the
accuracy guard and the latency prefer.

Dynamic quantization stores the MatMul weights in int8 and quantizes each activation as it comes
(no calibration: a sentence's range is its own); static QDQ fixes the activation ranges on
calibration sentences (what TensorRT takes as explicit int8). Only MatMul/Gemm are quantized in
either: LayerNorm, Softmax and GELU stay float, where BERT's int8 error comes from (Zafrir et
al. 2019; onnxruntime's transformer notes). Each candidate is scored with the run's head on the
run's val sentences against the fp32 export; of those within `--max-drop`, the fastest on this
host is kept. Nothing is written unless one holds.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from edgetl.backends import opcount
from edgetl.console import QUIET, Console, silenced
from edgetl.errors import ConfigError, DataError, QuantizeError
from edgetl.fsutil import QUANTIZED, claim, staged_dir
from edgetl.quantize.scoring import Labelled, Scorer, load_engine
from edgetl.rundir import QuantizeDir, QuantizeRecord
from edgetl.runtime import engines
from edgetl.runtime.features import Layout

TEXT_METHODS = ("dynamic", "minmax", "percentile")  # auto tries each; static QDQ calibrated by minmax or percentile
OPS = ["MatMul", "Gemm"]


def select_texts(calib) -> tuple[list[str], list[str], int]:
    """A text calibration set's chosen sentences and their labels (stratified, seeded), and how many it had."""
    from edgetl.data import text as textdata

    if not textdata.is_text_data(calib.source):
        raise DataError(f"{calib.file}: {calib.source} holds no labelled texts", "a text run calibrates on "
                        "sentences: data = \"texts.csv\" (or .jsonl, or DIR/<label>/*.txt)")
    data = textdata.read(calib.source, what="calibration")
    if len(data) < calib.samples:
        raise DataError(f"{calib.file}: asks for {calib.samples} samples but {calib.source} holds {len(data)}",
                        "lower `samples` or add sentences")
    chosen = _stratified(data, calib.samples, calib.seed)
    return list(chosen.texts), [data.classes[i] for i in chosen.labels], len(data)


def _stratified(data, n: int, seed: int):
    from edgetl.data.text import stratified

    return stratified(data, max(1, -(-n // len(set(data.labels)))), seed, total=n)


def calibration_texts(calib_file: str | Path | None, run) -> tuple[list[str], dict]:
    """The calibration sentences: a calibration TOML whose `data` is a labelled text file (chosen
    stratified, seeded), or, without one, 512 of the run's own training sentences."""
    from edgetl.quantize.calibration import read

    if calib_file is None:
        data = run.split("train")
        chosen = list(_stratified(data, min(512, len(data)), 0).texts)
        return chosen, {"file": None, "source": "run train split", "samples": len(chosen), "seed": 0}
    calib = read(calib_file)
    texts, _, _ = select_texts(calib)
    return texts, {"file": str(calib.file), "source": str(calib.source), "samples": len(texts), "seed": calib.seed}


def _dynamic(fp32: Path, out: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with silenced():
        quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=False,
                         op_types_to_quantize=OPS)


def _static(pre: Path, out: Path, ids: np.ndarray, method: str, work: Path) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from edgetl.quantize.ort import _method, calibrate

    cache = work / f"calibration-{method}.json"
    if not cache.is_file():
        calibrate(pre, ids, method, cache)
    with silenced():
        quantize_static(str(pre), str(out), None, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=_method(method), calibration_cache_path=str(cache),
                        op_types_to_quantize=OPS,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})


def quantize_text(run_path: str | Path, calib_file: str | Path | None, *, fmt: str = "onnx", method: str = "auto",
                  max_drop: float = 1.0, split: str = "val", data: str | Path | None = None,
                  max_len: int | None = None, console: Console = QUIET) -> QuantizeRecord:
    """Quantize a text run's encoder to int8 ONNX into RUN/quantize/onnx; returns its record. `fp32_top1`,
    `int8_top1` are top-1 in percent, `drop` in points; `latency_ms` per sentence at the export's length."""
    from edgetl.data import text as textdata
    from edgetl.export import export, load_export
    from edgetl.train.text import load_text_run, versions

    if fmt != "onnx":
        raise ConfigError("int8 of a text encoder is made for ONNX only (onnxruntime's dynamic or static QDQ); "
                          "the TFLite export of a text run stays fp32", "edgetl quantize RUN --format onnx")
    if not 0 <= max_drop <= 100:
        raise ConfigError(f"--max-drop must be between 0 and 100 points, not {max_drop}", "e.g. 1.0")
    if split not in ("val", "test"):
        raise ConfigError(f"unknown --split {split!r}", "val (default) or test")
    if method != "auto" and method not in TEXT_METHODS:
        raise ConfigError(f"unknown text quantization method {method!r}", f"one of: auto, {', '.join(TEXT_METHODS)}")
    started = time.perf_counter()
    run = load_text_run(run_path)
    out = claim(run.dir.quantize_dir(fmt).path, QUANTIZED, flag="the quantize dir")
    texts, calib_info = calibration_texts(calib_file, run)
    exported = load_export(run.path, fmt)
    if exported is None or (max_len is not None and exported.spec.max_len != max_len):
        exported = export(run.path, fmt, max_len=max_len, console=console)
    spec = exported.spec
    tokenizer = run.tokenizer(spec)
    if data is not None:
        guard_set, name = textdata.read(data, run.classes, what="eval"), str(data)
    else:
        guard_set, name = run.split(split), f"run {split} split"
    sets = [Labelled(name, tokenizer.ids(list(guard_set.texts)), np.asarray(guard_set.labels))]
    if data is None and split == "val" and run.record.data.test_dir:
        test_set = run.split("test")
        sets.append(Labelled("run test split", tokenizer.ids(list(test_set.texts)), np.asarray(test_set.labels)))
    head = dict(np.load(run.dir.head))
    scorer = Scorer(exported.backbone, head, sets, Layout.of((), int(run.head.in_features)))
    calib_ids = tokenizer.ids(texts)
    console.log(f"calibration: {len(texts)} sentences from {calib_info['source']}; guard: {len(sets[0].labels)} "
                f"sentences of {name}")
    methods = TEXT_METHODS if method == "auto" else (method,)
    with tempfile.TemporaryDirectory(prefix="edgetl-quantize-") as work_dir:
        work = Path(work_dir)
        from edgetl.quantize.ort import prepare

        pre = prepare(exported.backbone, work / "prepared.onnx")
        trials, latency = [], {}
        with silenced():
            latency["fp32"] = engines.latency_ms(load_engine(exported.backbone))
        with console.task(f"int8 {', '.join(methods)}", len(methods), "methods") as advance:
            for m in methods:
                path = work / f"{m}.onnx"
                if m == "dynamic":
                    _dynamic(pre, path)
                else:
                    _static(pre, path, calib_ids, m, work)
                t = scorer.trial(m, (), path)
                with silenced():
                    latency[m] = engines.latency_ms(load_engine(path))
                console.log(f"  {m:<10}: int8 top-1 {t.top1:.2f}% (fp32 {scorer.fp32_top1[0]:.2f}%, drop "
                            f"{t.drop:+.2f}), agreement {t.agreement:.1%}, {latency[m]['p50_ms']:.2f} ms/sentence")
                trials.append(t)
                advance(1)
        within = [t for t in trials if t.drop <= max_drop]
        if not within:
            best = min(trials, key=lambda t: t.drop)
            raise QuantizeError(
                f"no int8 model of {run.path} stays within {max_drop} points: the best, {best.method}, loses "
                f"{best.drop:.2f} (int8 {best.top1:.2f}% vs fp32 {scorer.fp32_top1[0]:.2f}% on {name})",
                "nothing was written; raise --max-drop, or keep fp32", [t.summary() for t in trials])
        best = min(within, key=lambda t: (latency[t.method]["p50_ms"], t.drop))
        ops = opcount.count(best.path)
        if ops.weighted_int8 == 0:
            raise QuantizeError(f"the {best.method} result is not int8: no MatMul was quantized",
                                "nothing was written; report the encoder and versions")
        int8 = load_engine(best.path)
        record = QuantizeRecord(
            format=fmt, run=str(run.path), backbone=run.record.backbone, file=QuantizeDir.name(fmt),
            method=best.method, method_requested=method, max_drop=float(max_drop), float_layers=(),
            eval=name, images=int(len(sets[0].labels)),
            fp32_top1=scorer.fp32_top1[0], int8_top1=best.top1, drop=best.drop, agreement=best.agreement,
            test=({"images": int(len(sets[1].labels)), "fp32_top1": scorer.fp32_top1[1], **best.extra["test"][0]}
                  if len(sets) > 1 else None),
            trials=tuple(t.summary() | {"p50_ms": latency[t.method]["p50_ms"]} for t in trials),
            sensitivity_db=(), search=None,
            calibration=calib_info | {"per_class": {}},
            ops=ops.to_dict(), int8_verified=True,
            io={"input": int8.input.to_dict(), "output": int8.output.to_dict()},
            sizes_bytes={"fp32": exported.backbone.stat().st_size, "int8": best.path.stat().st_size},
            latency_ms={"fp32": latency["fp32"], "int8": latency[best.method]},
            int8_over_fp32_latency=round(latency[best.method]["p50_ms"] / latency["fp32"]["p50_ms"], 3),
            seconds=round(time.perf_counter() - started, 1), versions=versions(),
        )
        int8.close()
        with staged_dir(out, QUANTIZED) as tmp:
            shutil.copy2(best.path, tmp / QuantizeDir.name(fmt))
            QuantizeDir.fill(tmp, run.dir, spec, record, run.dir.exported(fmt).features)
    console.log(f"kept {best.method}: drop {best.drop:.2f} within {max_drop}, {latency[best.method]['p50_ms']:.2f} ms "
                f"vs fp32 {latency['fp32']['p50_ms']:.2f} ms per sentence (1 thread)")
    return record

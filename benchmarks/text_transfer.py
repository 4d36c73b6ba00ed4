"""Text transfer on banking77 (77 banking intents; 10,003 train, 3,080 test queries; CC BY 4.0), side by
side in one run, every model from the offline default all-MiniLM-L6-v2 (`--backbone minilm`) and every
figure through edgetl's own commands with their defaults (only --data, --test, --out and --freeze given):

- `full-10`: `edgetl finetune` on 10 examples per class (chosen stratified, seed 0);
- `full-all`: `edgetl finetune` on all 10,003 training queries;
- `head-10`: head-only on the frozen MiniLM at the same 10 per class, twice: on the host
  (`edgetl finetune --freeze all`: the head on cached embeddings, 8/class, 2 for val) and the device's
  way (`edgetl.runtime.adapt.adapt_head`, what `python -m edgetl.runtime adapt` runs, learning an empty
  head from the host-cpu bundle's own onnxruntime embeddings of all 10/class, as a bundle with no
  classes yet is adapted);
- `int8`: `edgetl quantize` of full-all (auto: dynamic or static QDQ), its test top-1 against fp32;
- latency per sentence at length 32: full-all exported with `--max-len 32` and compiled for host-cpu;
  `Model.predict` of one sentence against the engine's invoke of its ids plus the tokenizer alone,
  each the median of 300 runs after a warm-up, on this machine's CPU (onnxruntime, default threads).

Top-1 in percent on the 3,080 test queries. Run dirs are kept under --runs (default: a temp dir).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, emit, skip

SHOTS = 10
LATENCY_LEN = 32
LATENCY_RUNS = 300


def banking77() -> Path | None:
    path = Path(os.environ.get("EDGETL_BANKING77", ROOT.parent / "shared" / "data" / "banking77"))
    return path if (path / "train.csv").is_file() and (path / "test.csv").is_file() else None


def edgetl(*args: str) -> float:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "edgetl", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"edgetl {' '.join(args)} failed: {done.stderr.strip()[-800:]}")
    return time.perf_counter() - t0


def record(run: Path) -> dict:
    return json.loads((run / "finetune.json").read_text())


def shots(train: Path, out: Path) -> Path:
    from edgetl.data import text as textdata

    data = textdata.read(train)
    few = textdata.stratified(data, SHOTS, 0)
    with out.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "category"])
        w.writerows((t, data.classes[i]) for t, i in zip(few.texts, few.labels, strict=True))
    return out


def top1(bundle: Path, test: Path) -> float:
    from edgetl.runtime.model import Model
    from edgetl.runtime.texts import labelled_texts

    texts, labels = labelled_texts(test)
    with Model.load(bundle) as model:
        predicted = [p.label for p in model.predict(texts)]
    return round(100.0 * sum(p == t for p, t in zip(predicted, labels, strict=True)) / len(labels), 2)


def device_head(bundle: Path, few: Path, test: Path) -> tuple[dict, float]:
    """The device's own head fitter (`runtime.adapt.adapt_head`, its defaults: standardised features, L2
    chosen on a holdout, then refit on every sentence) learning an empty head, as a first `adapt` of a bundle
    with no classes does, from the bundle's engine's embeddings of the 10/class sentences; scored on test."""
    import numpy as np

    from edgetl.runtime.adapt import AdaptConfig, adapt_head
    from edgetl.runtime.head import Head
    from edgetl.runtime.model import Model
    from edgetl.runtime.texts import labelled_texts

    texts, labels = labelled_texts(few)
    test_texts, test_labels = labelled_texts(test)
    with Model.load(bundle) as model:
        width = model.layout.width
        empty = Head(np.zeros((0, width), np.float32), np.zeros(0, np.float32), ())
        result = adapt_head(empty, model.embed(texts), labels, AdaptConfig(), model.layout,
                            source=model.bundle.feature_statistics())
        logits = result.head.logits(model.embed(test_texts)[:, model.layout.columns(result.head.taps)])
    predicted = [result.head.labels[i] for i in logits.argmax(1)]
    top1 = round(100.0 * float(np.mean([p == t for p, t in zip(predicted, test_labels, strict=True)])), 2)
    return {"committed": result.committed, "chosen": result.details.get("chosen"),
            "refit": result.details.get("refit")}, top1


def latency(bundle: Path, texts: list[str]) -> dict:
    import numpy as np

    from edgetl.runtime.model import Model

    with Model.load(bundle) as model:
        tok, engine = model.tokenizer, model.engine
        for t in texts[:30]:
            model.predict(t)
        predict, invoke, tokenize = [], [], []
        for i in range(LATENCY_RUNS):
            t = texts[i % len(texts)]
            s = time.perf_counter()
            model.predict(t)
            predict.append(time.perf_counter() - s)
            s = time.perf_counter()
            ids = tok.ids([t])
            tokenize.append(time.perf_counter() - s)
            x = engine.prepare(ids)
            s = time.perf_counter()
            engine.invoke(x)
            invoke.append(time.perf_counter() - s)
    p50 = {k: float(np.median(v)) * 1000 for k, v in (("predict", predict), ("invoke", invoke),
                                                       ("tokenize", tokenize))}
    return {"max_len": model.max_len, "predict_p50_ms": round(p50["predict"], 3),
            "invoke_p50_ms": round(p50["invoke"], 3), "tokenize_p50_ms": round(p50["tokenize"], 4),
            "predict_over_invoke_plus_tokenize": round(p50["predict"] / (p50["invoke"] + p50["tokenize"]), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, help="keep the run dirs here (default: a temp dir)")
    args = parser.parse_args()
    data = banking77()
    if data is None:
        skip("text_transfer", "no ../shared/data/banking77 (set EDGETL_BANKING77)")
    train, test = data / "train.csv", data / "test.csv"
    with tempfile.TemporaryDirectory(prefix="edgetl-text-") as tmp:
        runs = args.runs or Path(tmp)
        runs.mkdir(parents=True, exist_ok=True)
        few = shots(train, runs / "10shot.csv")
        seconds = {}
        # the few-shot runs
        seconds["full_10"] = edgetl("finetune", "--data", str(few), "--test", str(test), "--out",
                                    str(runs / "full-10"), "--force")
        seconds["head_10_host"] = edgetl("finetune", "--data", str(few), "--test", str(test), "--freeze", "all",
                                         "--out", str(runs / "head-10"), "--force")
        edgetl("compile", str(runs / "head-10"), "--target", "host-cpu", "--out", str(runs / "bundles" / "head-10"),
               "--force")
        t0 = time.perf_counter()
        device, device_top1 = device_head(runs / "bundles" / "head-10", few, test)
        seconds["head_10_device"] = time.perf_counter() - t0
        # all the data, then int8 and latency
        seconds["full_all"] = edgetl("finetune", "--data", str(train), "--test", str(test), "--out",
                                     str(runs / "full-all"), "--force")
        seconds["quantize"] = edgetl("quantize", str(runs / "full-all"))
        q = json.loads((runs / "full-all" / "quantize" / "onnx" / "quantize.json").read_text())
        short = runs / "full-all-32"
        if short.exists():
            import shutil

            shutil.rmtree(short)
        import shutil

        shutil.copytree(runs / "full-all", short, ignore=shutil.ignore_patterns("export", "quantize", "bundles"))
        edgetl("export", str(short), "--max-len", str(LATENCY_LEN))
        edgetl("compile", str(short), "--target", "host-cpu", "--out", str(runs / "bundles" / "len32"), "--force")
        from edgetl.runtime.texts import labelled_texts

        texts, _ = labelled_texts(test)
        lat = latency(runs / "bundles" / "len32", texts)
        full10, head10, full_all = record(runs / "full-10"), record(runs / "head-10"), record(runs / "full-all")
        emit({
            "benchmark": "text_transfer", "data": "banking77", "classes": 77, "test_queries": len(texts),
            "backbone": "minilm (all-MiniLM-L6-v2)", "top1_unit": "percent",
            "full_all": {"test_top1": full_all["test_top1"], "val_top1": full_all["val_top1"],
                         "epochs": full_all["epochs"], "max_len": full_all["max_len"],
                         "train": full_all["data"]["train"]},
            "full_10": {"test_top1": full10["test_top1"], "epochs": full10["epochs"], "train": full10["data"]["train"]},
            "head_10": {"host_test_top1": head10["test_top1"], "device_test_top1": device_top1,
                        "device_committed": device.get("committed"), "device_head": device.get("chosen"),
                        "device_over_full_10": round(device_top1 / full10["test_top1"], 3),
                        "host_over_full_10": round(head10["test_top1"] / full10["test_top1"], 3)},
            "int8": {"method": q["method"], "fp32_test_top1": q["test"]["fp32_top1"],
                     "int8_test_top1": q["test"]["int8_top1"], "test_drop": q["test"]["drop"], "val_drop": q["drop"],
                     "trials": q["trials"], "int8_over_fp32_latency": q["int8_over_fp32_latency"]},
            "latency_len32": lat,
            "seconds": {k: round(v, 1) for k, v in seconds.items()},
        })


if __name__ == "__main__":
    main()

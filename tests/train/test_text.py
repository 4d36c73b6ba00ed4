"""A text run end to end on a tiny real BERT (2 layers, 32-d, its own WordPiece tokenizer.json): fine-tune,
ONNX and TFLite export held to PyTorch, int8 within its budget, bundles for host-cpu and a Pi, and on the
device predict, adapt (a new intent from a few sentences), rollback and check, with neither torch nor
transformers imported there."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgetl.cli import main
from edgetl.compile import compile_bundle
from edgetl.errors import ConfigError
from edgetl.runtime import Model
from edgetl.runtime.tokens import TextSpec
from tests.texts import write_csv


def test_a_text_run_records_what_an_image_run_does_and_learns_the_intents(text_run, text_data):
    record = json.loads((text_run / "finetune.json").read_text())
    assert record["backbone"] == f"hf:{text_data['encoder'].resolve()}"
    assert record["classes"] == 4 and record["data"]["train"] + record["data"]["val"] == 64
    assert record["test_top1"] >= 75.0  # percent; 4 intents that differ by their words
    spec = TextSpec.read(text_run / "preprocess.json")
    assert spec.max_len == record["max_len"] == 16  # 99% of the training sentences kept whole, a multiple of 8
    assert (text_run / "tokenizer.json").read_bytes() == (text_data["encoder"] / "tokenizer.json").read_bytes()


def test_both_exports_match_pytorch_and_take_token_ids_at_the_fixed_length(text_run):
    for fmt, dtype in (("onnx", "int64"), ("tflite", "int32")):
        record = json.loads((text_run / "export" / fmt / "export.json").read_text())
        assert record["parity"]["ok"] and record["parity"]["rel_diff"] < 1e-4
        assert record["input"] == {"shape": [1, 16], "layout": "NL", "dtype": dtype}
        assert (text_run / "export" / fmt / "tokenizer.json").is_file()


def test_int8_is_really_int8_and_held_to_the_budget(text_run):
    q = json.loads((text_run / "quantize" / "onnx" / "quantize.json").read_text())
    assert q["method"] in ("dynamic", "minmax", "percentile") and q["drop"] <= q["max_drop"] == 1.0
    assert {t["method"] for t in q["trials"]} == {"dynamic", "minmax", "percentile"}
    assert q["int8_verified"] and q["ops"]["int8_ops"] > 0 and q["test"]["images"] == 32
    from edgetl.quantize import quantize

    with pytest.raises(ConfigError, match="ONNX only"):
        quantize(text_run, None, fmt="tflite")


@pytest.fixture(scope="module")
def text_bundle(text_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "intents"
    compile_bundle(text_run, "host-cpu", out)
    return out


def test_the_bundle_carries_its_tokenizer_and_a_checkset_of_sentences(text_bundle):
    m = json.loads((text_bundle / "manifest.json").read_text())
    assert m["engine"] == "onnxruntime" and "tokenizer.json" in m["files"]
    assert m["preprocess"]["kind"] == "text" and m["inputs"][0]["dtype"] == "int64"
    assert m["checkset"]["images"] == 32 and m["checkset"]["per_class"] == 25  # 100 asked in all: every test sentence
    texts, labels = Model.load(text_bundle).bundle.checkset()
    assert all(isinstance(t, str) for t in texts) and len(set(labels)) == 4


def test_a_pi_bundle_of_a_text_run_runs_onnxruntime_not_litert(text_run, tmp_path):
    m = compile_bundle(text_run, "rpi4", tmp_path / "pi")
    assert m.engine == "onnxruntime" and m.arch == ("aarch64",)
    with pytest.raises(ConfigError, match="text bundles run on onnxruntime"):
        compile_bundle(text_run, "coral-usb", tmp_path / "coral")


def test_the_device_predicts_sentences_as_the_run_scored_them(text_bundle, text_run, text_data):
    from edgetl.runtime.texts import labelled_texts
    from edgetl.train.text import load_text_run, score

    texts, labels = labelled_texts(text_data["test"])
    with Model.load(text_bundle) as model:
        one = model.predict("turn on the lights please")[0]
        batch = model.predict(texts, top_k=2)
        assert model.predict([texts[0]])[0].label == batch[0].label
    assert one.label == "lights_on" and len(batch[0].top) == 2
    device_top1 = 100.0 * np.mean([p.label == t for p, t in zip(batch, labels, strict=True)])
    run = load_text_run(text_run)
    host = score(run.encoder, run.head, run.tokenizer().ids(texts),
                 np.array([run.classes.index(t) for t in labels])).top1
    assert abs(device_top1 - host) < 100 / len(texts) + 1e-9  # int8 or fp32, at most one sentence apart


def test_the_device_learns_a_new_intent_from_a_few_sentences_and_rolls_back(text_bundle, tmp_path):
    bundle = Path(shutil.copytree(text_bundle, tmp_path / "intents"))
    alarm = [("set an alarm for seven", "alarm"), ("wake me up at six", "alarm"), ("alarm at noon please", "alarm"),
             ("set an alarm", "alarm"), ("wake me at eight", "alarm"), ("turn on the lights", "lights_on"),
             ("turn off the lights", "lights_off"), ("play some music", "play_music"),
             ("what is the weather", "weather"), ("lights on please", "lights_on"), ("kill the lights", "lights_off"),
             ("put on a song", "play_music"), ("will it rain today", "weather")]
    data = write_csv(tmp_path / "new.csv", alarm)
    done = subprocess.run([sys.executable, "-m", "edgetl.runtime", "adapt", str(bundle), "--data", str(data),
                           "--margin", "100", "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["committed"] and result["classes"] == 5
    with Model.load(bundle) as model:
        assert "alarm" in model.labels and model.head_version == 1
    assert subprocess.run([sys.executable, "-m", "edgetl.runtime", "adapt", str(bundle), "--rollback"],
                          capture_output=True).returncode == 0
    with Model.load(bundle) as model:
        assert "alarm" not in model.labels


def test_check_times_one_sentence_and_scores_the_checkset_on_this_machine(text_bundle, tmp_path):
    from edgetl.runtime.measure import measure

    m = measure(text_bundle, runs=30, warmup=5)
    assert m.accuracy.source == "checkset" and m.accuracy.images == 32
    assert m.latency_ms.runs == 30 and m.engine_share is not None and 0 < m.engine_share.share <= 1.0


def test_the_runtime_imports_neither_torch_nor_transformers(text_bundle, tmp_path):
    bundle = Path(shutil.copytree(text_bundle, tmp_path / "b"))
    code = (f"import sys\nfrom edgetl.runtime import Model\nm = Model.load({str(bundle)!r})\n"
            "m.predict(['turn on the lights'])\n"
            "m.adapt(['wake me at six', 'set an alarm', 'alarm at noon'], ['alarm'] * 3, unguarded=True)\n"
            "bad = [k for k in ('torch', 'transformers', 'onnx', 'edgetl.train') if k in sys.modules]\n"
            "assert not bad, bad\nprint('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-800:]


def test_image_flags_on_text_data_and_text_flags_on_images_are_one_line(text_data, signs, tmp_path, capsys):
    assert main(["finetune", "--data", str(text_data["train"]), "--img-size", "64", "--out",
                 str(tmp_path / "r")]) == 2
    assert "--img-size is for image data" in capsys.readouterr().err
    assert main(["finetune", "--data", str(signs["train"]), "--max-len", "32", "--out", str(tmp_path / "r")]) == 2
    assert "--max-len is for text data" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_text_bundle_refuses_images(text_bundle, signs):
    with Model.load(text_bundle) as model, pytest.raises(ConfigError, match="text bundle"):
        model.pixels([next(signs["train"].glob("*/*.png"))])

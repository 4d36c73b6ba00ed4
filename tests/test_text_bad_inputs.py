"""Bad inputs to the text commands, as a new user types them.

Each case must give exit 2, exactly one line on stderr of the form `error: ... (hint: ...)`, no
traceback, no output written (no --out dir, no bundle) and not one byte changed in the run or
bundle it was given. A few tests check that a thing the tool says works does work (a hint that
names a flag; `--force` over its own text run; the device's `predict` on a text bundle).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgetl.cli import main
from edgetl.compile import compile_bundle
from edgetl.data import synth
from edgetl.runtime.cli import main as runtime_main

ONE_LINE = re.compile(r"^error: .+ \(hint: .+\)$")


def call(capsys, entry, argv) -> tuple[int, str, str]:
    """Run a CLI in-process: its exit code, stdout and stderr. An exception escaping it fails the test."""
    capsys.readouterr()
    try:
        rc = entry([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        rc = exc.code
    except Exception as exc:  # noqa: BLE001 - a traceback the user would see
        out = capsys.readouterr()
        pytest.fail(f"{type(exc).__name__} escaped (the user sees a traceback): {exc!s:.300}\nstderr: {out.err[-500:]}")
    out = capsys.readouterr()
    return rc, out.out, out.err


def assert_refused(rc, err: str) -> None:
    lines = err.splitlines()
    assert "Traceback" not in err, err
    assert rc == 2, f"exit {rc}, stderr: {err[-800:]}"
    assert len(lines) == 1, f"{len(lines)} stderr lines: {err[-800:]}"
    assert ONE_LINE.match(lines[0]), lines[0]


def tree(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            out[p.relative_to(root).as_posix()] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# ---------------------------------------------------------------------------------------------------------------
# one small run, its ONNX export and a host bundle, plus the user's bad files


@pytest.fixture(scope="module")
def f(text_data, tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("text-bad")
    enc, train = text_data["encoder"], text_data["train"]
    run = root / "run"
    assert main(["finetune", "--data", str(train), "--backbone", f"hf:{enc}", "--lr", "1e-3", "--epochs", "1",
                 "--out", str(run)]) == 0
    assert main(["export", str(run)]) == 0
    bundle = root / "bundle"
    compile_bundle(run, "host-cpu", bundle)
    rows = list(csv.reader(train.open(encoding="utf-8")))[1:]

    def table(name, header, body, encoding="utf-8"):
        path = root / name
        with path.open("w", newline="", encoding=encoding) as fh:
            w = csv.writer(fh)
            if header:
                w.writerow(header)
            w.writerows(body)
        return path

    d = SimpleNamespace(root=root, run=run, bundle=bundle, encoder=enc, train=train)
    d.empty = table("empty.csv", None, [])
    d.header = table("header.csv", ["text", "label"], [])
    d.tag = table("tag.csv", ["text", "tag"], rows)
    d.nolabel = table("nolabel.csv", ["text"], [[r[0]] for r in rows])
    d.latin1 = table("latin1.csv", ["text", "label"], [[r[0] + " café", r[1]] for r in rows], encoding="latin-1")
    d.newlabel = table("newlabel.csv", ["text", "label"], rows[:6] + [["set an alarm for seven", "alarm"]])
    d.broken = root / "broken.jsonl"
    d.broken.write_text("\n".join(json.dumps({"text": t, "label": y}) for t, y in rows[:5])
                        + '\n{"text": "a broken line\n' + json.dumps({"text": rows[5][0], "label": rows[5][1]}) + "\n")
    d.onelabel = root / "onelabel"
    (d.onelabel / "weather").mkdir(parents=True)
    for i in range(6):
        (d.onelabel / "weather" / f"{i}.txt").write_text(f"will it rain today {i}\n")
    d.images = synth.synthesize(root / "images", "city-a", 2, size=32, seed=0)
    d.png = next(d.images.rglob("*.png"))
    d.notok = root / "enc-notok"  # config.json and weights, no tokenizer.json
    shutil.copytree(enc, d.notok, ignore=shutil.ignore_patterns("tokenizer.json"))
    d.badtok = root / "enc-badtok"  # tokenizer.json that is not one
    shutil.copytree(enc, d.badtok)
    (d.badtok / "tokenizer.json").write_text("not a tokenizer\n")
    d.calib_img = root / "calib-img.toml"
    d.calib_img.write_text(f'data = "{d.images}"\nsamples = 32\nseed = 0\n')
    d.calib_missing = root / "no-such-calib.toml"
    return d


def tiny(d) -> list[str]:
    return ["--backbone", f"hf:{d.encoder}", "--lr", "1e-3", "--epochs", "1"]


# ---------------------------------------------------------------------------------------------------------------
# finetune: nothing at --out, nothing beside it

FINETUNE = {
    "empty csv": lambda d: ["--data", d.empty],
    "header-only csv": lambda d: ["--data", d.header],
    "label column named otherwise": lambda d: ["--data", d.tag],
    "no label column": lambda d: ["--data", d.nolabel],
    "--label-column that is not there": lambda d: ["--data", d.tag, "--label-column", "intent"],
    "--text-column that is not there": lambda d: ["--data", d.train, "--text-column", "sentence"],
    "latin-1 csv": lambda d: ["--data", d.latin1],
    "jsonl with a broken line": lambda d: ["--data", d.broken],
    "txt folder with one label": lambda d: ["--data", d.onelabel],
    "missing data file": lambda d: ["--data", d.root / "nope.csv"],
    "test csv with a label train lacks": lambda d: ["--data", d.train, "--test", d.newlabel],
    "val csv with a label train lacks": lambda d: ["--data", d.train, "--val", d.newlabel],
    "--max-len 0": lambda d: ["--data", d.train, "--max-len", "0"],
    "--max-len 2": lambda d: ["--data", d.train, "--max-len", "2"],
    "--max-len 100000": lambda d: ["--data", d.train, "--max-len", "100000"],
    "--max-len -5": lambda d: ["--data", d.train, "--max-len=-5"],
    "--max-len abc": lambda d: ["--data", d.train, "--max-len", "abc"],
    "--max-len 100 beyond the encoder's 64 positions": lambda d: ["--data", d.train, "--max-len", "100"],
    "--max-len on an image folder": lambda d: ["--data", d.images, "--max-len", "32"],
    "--img-size on texts": lambda d: ["--data", d.train, "--img-size", "64"],
    "--freeze until:3 on texts": lambda d: ["--data", d.train, "--freeze", "until:3"],
    "--backbone hf:/nonexistent": lambda d: ["--data", d.train, "--backbone", "hf:/nonexistent"],
    "--backbone hf: without tokenizer.json": lambda d: ["--data", d.train, "--backbone", f"hf:{d.notok}"],
    "--backbone hf: with a corrupt tokenizer.json": lambda d: ["--data", d.train, "--backbone", f"hf:{d.badtok}"],
    "--backbone resnet18 on texts": lambda d: ["--data", d.train, "--backbone", "resnet18"],
    "--backbone minilm_typo": lambda d: ["--data", d.train, "--backbone", "minilm_typo"],
}


@pytest.mark.parametrize("case", FINETUNE)
def test_finetune_refuses(case, f, tmp_path, capsys):
    out = tmp_path / "out"
    rc, _, err = call(capsys, main, ["finetune", *tiny(f), *FINETUNE[case](f), "--out", out])
    assert_refused(rc, err)
    assert not out.exists()
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# export / quantize / compile / eval of a text run: the run unchanged, no bundle

RUN = {
    "export --max-len 1000": lambda d, run, tmp: ["export", run, "--max-len", "1000"],
    "export --max-len 0": lambda d, run, tmp: ["export", run, "--max-len", "0"],
    "export --max-len 2": lambda d, run, tmp: ["export", run, "--max-len", "2"],
    "export --format tflite --max-len 1000": lambda d, run, tmp: ["export", run, "--format", "tflite",
                                                                    "--max-len", "1000"],
    "quantize --method entropy": lambda d, run, tmp: ["quantize", run, "--method", "entropy"],
    "quantize --format tflite": lambda d, run, tmp: ["quantize", run, "--format", "tflite"],
    "quantize --calib of an image folder": lambda d, run, tmp: ["quantize", run, "--calib", d.calib_img],
    "quantize --calib missing": lambda d, run, tmp: ["quantize", run, "--calib", d.calib_missing],
    "quantize --data image folder": lambda d, run, tmp: ["quantize", run, "--data", d.images],
    "compile for coral-usb": lambda d, run, tmp: ["compile", run, "--target", "coral-usb", "--out", tmp / "bundle"],
    "eval on an image folder": lambda d, run, tmp: ["eval", run, "--data", d.images],
    "eval on a label the run lacks": lambda d, run, tmp: ["eval", run, "--data", d.newlabel],
    "eval on an empty csv": lambda d, run, tmp: ["eval", run, "--data", d.empty],
}


@pytest.mark.parametrize("case", RUN)
def test_text_run_commands_refuse(case, f, tmp_path, capsys):
    run = Path(shutil.copytree(f.run, tmp_path / "run"))
    before = tree(tmp_path)
    rc, _, err = call(capsys, main, RUN[case](f, run, tmp_path))
    assert_refused(rc, err)
    assert tree(tmp_path) == before


# ---------------------------------------------------------------------------------------------------------------
# predict and adapt on a text bundle: the bundle and its heads unchanged

BUNDLE = {
    "edgetl predict ''": (main, lambda d, b: ["predict", b, ""]),
    "edgetl predict of an image path": (main, lambda d, b: ["predict", b, d.png]),
    "runtime predict ''": (runtime_main, lambda d, b: ["predict", b, ""]),
    "runtime predict of an image path": (runtime_main, lambda d, b: ["predict", b, d.png]),
    "runtime adapt --data a .png": (runtime_main, lambda d, b: ["adapt", b, "--data", d.png]),
    "runtime adapt --data an image folder": (runtime_main, lambda d, b: ["adapt", b, "--data", d.images]),
    "runtime adapt --data an empty csv": (runtime_main, lambda d, b: ["adapt", b, "--data", d.empty]),
    "runtime adapt --data a header-only csv": (runtime_main, lambda d, b: ["adapt", b, "--data", d.header]),
    "runtime adapt --data latin-1": (runtime_main, lambda d, b: ["adapt", b, "--data", d.latin1]),
    "runtime adapt --data broken jsonl": (runtime_main, lambda d, b: ["adapt", b, "--data", d.broken]),
    "runtime adapt --rollback with nothing to roll back": (runtime_main, lambda d, b: ["adapt", b, "--rollback"]),
    "runtime adapt --replace-labels with one label": (runtime_main, lambda d, b: ["adapt", b, "--data", d.onelabel,
                                                                                  "--replace-labels"]),
}


@pytest.mark.parametrize("case", BUNDLE)
def test_text_bundle_commands_refuse(case, f, tmp_path, capsys):
    bundle = Path(shutil.copytree(f.bundle, tmp_path / "bundle"))
    entry, argv = BUNDLE[case]
    before = tree(tmp_path)
    rc, _, err = call(capsys, entry, argv(f, bundle))
    assert_refused(rc, err)
    assert tree(tmp_path) == before


def test_runtime_predict_on_a_text_bundle_prints_its_label(f, capsys):
    rc, out, err = call(capsys, runtime_main, ["predict", f.bundle, "turn on the lights"])
    assert rc == 0, err
    assert "turn on the lights" in out and "\t" in out


# ---------------------------------------------------------------------------------------------------------------
# a damaged text run: one line saying what is wrong, not a traceback or an image run's error


@pytest.mark.parametrize("damage", ["encoder.json not JSON", "checkpoint.pt not a checkpoint",
                                    "tokenizer.json missing"])
@pytest.mark.parametrize("command", ["export", "eval"])
def test_damaged_text_run_is_refused(damage, command, f, tmp_path, capsys):
    run = Path(shutil.copytree(f.run, tmp_path / "run", ignore=shutil.ignore_patterns("export")))
    name = damage.split()[0]
    if "missing" in damage:
        (run / name).unlink()
    else:
        (run / name).write_text('{"x')
    before = tree(tmp_path)
    argv = ["export", run] if command == "export" else ["eval", run, "--data", f.train]
    rc, _, err = call(capsys, main, argv)
    assert_refused(rc, err)
    assert tree(tmp_path) == before
    if "missing" in damage:
        assert "tokenizer" in err, f"says nothing of the missing tokenizer.json: {err}"


# ---------------------------------------------------------------------------------------------------------------
# what the tool says works must work


@pytest.mark.parametrize("where", ["eval", "runtime adapt"])
def test_a_hint_naming_label_column_names_a_flag_that_exists(where, f, tmp_path, capsys):
    bundle = Path(shutil.copytree(f.bundle, tmp_path / "bundle"))
    entry, argv = ((main, ["eval", f.run, "--data", f.tag]) if where == "eval" else
                   (runtime_main, ["adapt", bundle, "--data", f.tag]))
    rc, _, err = call(capsys, entry, argv)
    assert_refused(rc, err)
    if "--label-column" in err:
        rc, _, err = call(capsys, entry, [*argv, "--label-column", "tag"])
        assert "unrecognized arguments" not in err, f"the hint named --label-column; {where} has no such flag"


def test_finetune_force_replaces_an_earlier_text_run(f, tmp_path, capsys):
    out = Path(shutil.copytree(f.run, tmp_path / "run"))
    rc, _, err = call(capsys, main, ["finetune", "--data", f.train, *tiny(f), "--epochs", "0", "--out", out,
                                     "--force"])
    assert rc == 0, err
    assert not (out / "export").exists()  # a new run, not the old one's files


# ---------------------------------------------------------------------------------------------------------------
# as a real process: what a terminal shows


def _edgetl(args, tmp: Path) -> subprocess.Popen:
    tmp.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1"}
    code = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "sys.argv[0] = 'edgetl'; runpy.run_module('edgetl', run_name='__main__', alter_sys=True)")
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_export_max_len_too_long_prints_one_line_in_a_fresh_process(f, tmp_path):
    """In a fresh process importing transformers logs torch's `_pytree` warnings to stderr first."""
    run = Path(shutil.copytree(f.run, tmp_path / "run"))
    proc = _edgetl(["export", run, "--max-len", "1000"], tmp_path / "tmp")
    _, err = proc.communicate(timeout=120)
    assert_refused(proc.returncode, err)


def test_ctrl_c_during_text_finetune_leaves_no_out_dir(f, tmp_path):
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    proc = _edgetl(["finetune", "--data", f.train, *tiny(f), "--epochs", "200", "--patience", "1000",
                    "--out", out], tmp)
    deadline = time.monotonic() + 120
    seen = ""
    while time.monotonic() < deadline and proc.poll() is None:  # interrupt once the encoder trains
        line = proc.stderr.readline()
        seen += line
        if "head on frozen encoder" in line:
            break
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    err = seen + err
    assert proc.returncode == 130, err[-800:]
    assert "Traceback" not in err
    assert not out.exists()
    assert os.listdir(tmp_path) == ["tmp"] and os.listdir(tmp) == [], (os.listdir(tmp_path), os.listdir(tmp))


@pytest.mark.parametrize("argv", [["export", "{run}", "--taps", "none"], ["export", "{run}", "--input", "float"],
                                  ["quantize", "{run}", "--taps", "none"], ["quantize", "{run}", "--io", "uint8",
                                                                            "--format", "onnx"]])
def test_image_only_flags_on_a_text_run_are_refused_not_ignored(f, argv, capsys):
    before = tree(f.run)
    rc, _, err = call(capsys, main, [a.format(run=f.run) for a in argv])
    assert_refused(rc, err)
    assert "is for image runs" in err and tree(f.run) == before

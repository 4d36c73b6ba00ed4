"""Bad inputs as a new user types them, across the CLI and the runtime API.

Each case must give: its exit code (2 for the input, 3 for an unreachable device), one line on
stderr starting `error:` with a hint, no traceback, no temp files left, and not one byte changed
in the workspace it was run in (every file hashed before and after).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

import numpy as np
import pytest

from edgetl import pack
from edgetl.cli import main
from edgetl.compile import compile_bundle
from edgetl.errors import EdgetlError


def tree(root: Path) -> dict[str, tuple]:
    """Every entry under `root`: kind, mode and content hash (a symlink: its target)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            rel = p.relative_to(root).as_posix()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), hashlib.sha256(p.read_bytes()).hexdigest())
    return out


@pytest.fixture(scope="module")
def ws(quantized_run, signs, tmp_path_factory) -> Path:
    """A workspace as a user has one: a run, bundles (plain, signed, tampered), keys, their own files."""
    root = tmp_path_factory.mktemp("workspace")
    run = Path(shutil.copytree(quantized_run, root / "run"))
    shutil.copytree(signs["train"], root / "data")
    compile_bundle(run, "host-cpu", root / "bundles" / "host")
    key, pub = pack.keygen(root / "keys" / "fleet")
    compile_bundle(run, "host-cpu", root / "bundles" / "signed", sign=key)
    compile_bundle(run, "host-cpu", root / "bundles" / "tampered")
    (root / "bundles" / "tampered" / "head.npz").write_bytes(b"not a head")
    compile_bundle(run, "host-cpu", root / "bundles" / "badsig", sign=key)
    manifest = root / "bundles" / "badsig" / "manifest.json"
    manifest.write_text(manifest.read_text() + " ")  # still valid JSON, every file still matches: only the signature
    (root / "userdir").mkdir()
    (root / "userdir" / "thesis.tex").write_text("three years of work")
    (root / "notes.txt").write_text("my notes")
    (root / "empty").mkdir()
    os.symlink(root / "userdir", root / "link")
    (root / "archive.tar.gz").write_text("my own archive")
    (root / "rand.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    (root / "trunc.tflite").write_bytes(
        (run / "quantize" / "tflite").joinpath("backbone_int8.tflite").read_bytes()[:2000]
        if (run / "quantize" / "tflite" / "backbone_int8.tflite").exists() else b"TFL3" + b"\0" * 100)
    (root / "text.onnx").write_text("this is not a model\n")
    (root / "bad.toml").write_text('data = "data"\nsamples = 8\nsead = 1\n')
    (root / "broken.toml").write_text('data = "data\n')
    badrun = Path(shutil.copytree(run, root / "badrun", ignore=shutil.ignore_patterns("quantize", "export")))
    (badrun / "labels.json").write_text('["a", "b"')
    (root / "fp16-ort.toml").write_text((Path(__file__).parents[1] / "targets" / "host-cpu.toml").read_text()
                                        .replace('name = "host-cpu"', 'name = "fp16-ort"')
                                        .replace('engines = ["onnxruntime", "litert"]', 'engines = ["onnxruntime"]')
                                        .replace('precisions = ["fp32", "int8"]', 'precisions = ["fp16"]'))
    devices = root / "devices"
    devices.mkdir()
    for name, table in {"proxy": 'host = "-oProxyCommand=touch /tmp/pwned"',
                        "spacey": 'host = "pi host"', "badport": 'host = "10.0.0.12"\nport = 70000',
                        "baduser": 'host = "10.0.0.12"\nuser = "-lroot"', "ctrl": 'host = "pi\\u0007"'}.items():
        (devices / f"{name}.toml").write_text(f'name = "{name}"\ntarget = "rpi4"\ntransport = "ssh"\n[ssh]\n{table}\n')
    (devices / "typo.toml").write_text('name = "typo"\ntarget = "host-cpu"\ntransport = "locale"\n')
    userrun = Path(shutil.copytree(run, root / "userrun"))
    (userrun / "export" / "onnx" / "mine.txt").write_text("my measurements")
    (userrun / "quantize" / "onnx" / "mine.txt").write_text("my measurements")
    (root / "calib.toml").write_text(f'data = "{root / "data"}"\nsamples = 8\nseed = 0\n')
    (root / "latin1.txt").write_bytes(b"caf\xe9/\xff.png\n")
    (root / "list-calib.toml").write_text('list = "latin1.txt"\nsamples = 32\nseed = 0\n')
    meanrun = Path(shutil.copytree(run, root / "meanrun", ignore=shutil.ignore_patterns("quantize", "export")))
    spec = json.loads((meanrun / "preprocess.json").read_text())
    (meanrun / "preprocess.json").write_text(json.dumps({**spec, "mean": [0.5]}))
    headrun = Path(shutil.copytree(run, root / "headrun", ignore=shutil.ignore_patterns("quantize", "export")))
    (headrun / "head.npz").write_bytes(b"garbage")
    compile_bundle(run, "host-cpu", root / "bundles" / "emptydir")
    (root / "bundles" / "emptydir" / "sub").mkdir()
    compile_bundle(run, "host-cpu", root / "bundles" / "adapted")
    (root / "bundles" / "adapted.heads").mkdir()
    (root / "bundles" / "adapted.heads" / "head-000001.json").write_text("{}")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (root / "adapt-empty").mkdir()
    (root / "adapt-empty" / "cat").mkdir()
    return root


R, B, D = "{ws}/run", "{ws}/bundles/host", "{ws}/data"
IMG = "{ws}/data/" + "{first_class}/{first_image}"

# (id, argv, exit code, a fragment the message must hold)
CASES = [
    # outputs: never replace what edgetl did not write
    ("compile-out-userdir", ["compile", R, "--target", "host-cpu", "--out", "{ws}/userdir"], 2, "did not write"),
    ("compile-out-source-run", ["compile", R, "--target", "host-cpu", "--out", R], 2, "own input"),
    ("compile-out-above-run", ["compile", R, "--target", "host-cpu", "--out", "{ws}"], 2, ""),
    ("compile-out-file", ["compile", R, "--target", "host-cpu", "--out", "{ws}/notes.txt"], 2, "is a file"),
    ("compile-out-in-file", ["compile", R, "--target", "host-cpu", "--out", "{ws}/notes.txt/b"], 2, "is a file"),
    ("compile-out-dot", ["compile", R, "--target", "host-cpu", "--out", "."], 2, "`.`"),
    ("compile-out-dotdot", ["compile", R, "--target", "host-cpu", "--out", ".."], 2, "`..`"),
    ("compile-out-root", ["compile", R, "--target", "host-cpu", "--out", "/"], 2, "root"),
    ("compile-out-home", ["compile", R, "--target", "host-cpu", "--out", "{home}"], 2, "home"),
    ("compile-out-literal-tilde", ["compile", R, "--target", "host-cpu", "--out", "~", "--force"], 2, "`~`"),
    ("compile-force-over-adapted-heads", ["compile", R, "--target", "host-cpu", "--out", "{ws}/bundles/adapted",
                                          "--force"], 2, "heads"),
    ("export-over-user-file", ["export", "{ws}/userrun"], 2, "did not write"),
    ("quantize-over-user-file", ["quantize", "{ws}/userrun", "--calib", "{ws}/calib.toml", "--method", "minmax"], 2,
     "did not write"),
    ("finetune-force-over-run-with-user-file", ["finetune", "--data", D, "--out", "{ws}/userrun", "--force"], 2,
     "did not write"),
    ("finetune-timm-unknown", ["finetune", "--backbone", "timm:mobilenetv4_conv_smal", "--data", D, "--out",
                               "{ws}/new"], 2, "mobilenetv4_conv_small"),
    ("finetune-hf-not-a-model-dir", ["finetune", "--backbone", "hf:{ws}/userdir", "--data", D, "--out", "{ws}/new"],
     2, "not a Hugging Face model dir"),
    ("backbones-timm-matches-nothing", ["backbones", "--timm", "nosuchnet*"], 2, "no timm model"),
    ("synth-literal-tilde", ["data", "synth", "--domain", "city-a", "--per-class", "1", "--out", "~/x"], 2, "`~`"),
    ("synth-seed-negative", ["data", "synth", "--domain", "city-a", "--per-class", "1", "--seed", "-1", "--out",
                             "{ws}/new"], 2, "--seed"),
    ("synth-per-class-huge", ["data", "synth", "--domain", "city-a", "--per-class", "1000000000000", "--out",
                              "{ws}/new"], 2, "--per-class"),
    ("keygen-literal-tilde", ["bundle", "keygen", "~"], 2, "`~`"),
    ("compile-out-symlink", ["compile", R, "--target", "host-cpu", "--out", "{ws}/link"], 2, "symlink"),
    ("compile-out-bundle-no-force", ["compile", R, "--target", "host-cpu", "--out", B], 2, "--force"),
    ("compile-out-archive-is-mine", ["compile", R, "--target", "host-cpu", "--out", "{ws}/archive"], 2,
     "not a bundle archive"),
    ("compile-sign-not-a-key", ["compile", R, "--target", "host-cpu", "--out", "{ws}/new", "--sign",
                                "{ws}/notes.txt"], 2, "private key"),
    ("check-report-dot", ["check", B, "--report", "."], 2, "`.`"),
    ("check-report-userdir", ["check", B, "--report", "{ws}/userdir"], 2, "did not write"),
    ("check-report-run", ["check", B, "--report", R], 2, "not an edgetl check report"),
    ("check-report-bundle", ["check", B, "--report", B], 2, "own input"),
    ("check-report-file", ["check", B, "--report", "{ws}/notes.txt"], 2, "is a file"),
    ("check-junit-userfile", ["check", B, "--junit", "{ws}/notes.txt"], 2, "JUnit"),
    ("check-junit-dir", ["check", B, "--junit", "{ws}/userdir"], 2, "is a directory"),
    ("finetune-out-userdir", ["finetune", "--data", D, "--out", "{ws}/userdir"], 2, "did not write"),
    ("finetune-out-run-no-force", ["finetune", "--data", D, "--out", R], 2, "already exists"),
    ("finetune-out-is-weights", ["finetune", "--data", D, "--weights", R, "--out", R, "--force"], 2, "own input"),
    ("finetune-out-is-data", ["finetune", "--data", D, "--out", D, "--force"], 2, ""),
    ("finetune-out-file", ["finetune", "--data", D, "--out", "{ws}/notes.txt"], 2, "is a file"),
    ("synth-out-userdir", ["data", "synth", "--domain", "city-a", "--per-class", "1", "--out", "{ws}/userdir"], 2,
     "not empty"),
    ("synth-out-file", ["data", "synth", "--domain", "city-a", "--per-class", "1", "--out", "{ws}/notes.txt"], 2,
     "is a file"),
    ("synth-domain", ["data", "synth", "--domain", "city-z", "--per-class", "1", "--out", "{ws}/new"], 2, "domain"),
    ("synth-per-class", ["data", "synth", "--domain", "city-a", "--per-class", "0", "--out", "{ws}/new"], 2,
     "per-class"),
    ("keygen-existing", ["bundle", "keygen", "{ws}/keys/fleet"], 2, "already exists"),
    ("keygen-in-file", ["bundle", "keygen", "{ws}/notes.txt/key"], 2, ""),
    # trust
    ("verify-empty-subdir", ["bundle", "verify", "{ws}/bundles/emptydir"], 2, "sub"),
    ("verify-tampered", ["bundle", "verify", "{ws}/bundles/tampered"], 2, "sha256"),
    ("verify-bad-signature-no-key", ["bundle", "verify", "{ws}/bundles/badsig"], 2, "signature"),
    ("verify-key-not-a-key", ["bundle", "verify", B, "--key", "{ws}/notes.txt"], 2, ""),
    ("verify-key-missing", ["bundle", "verify", "{ws}/bundles/signed", "--key", "{ws}/missing.pub"], 2, "missing.pub"),
    ("verify-missing", ["bundle", "verify", "{ws}/nothing"], 2, "does not exist"),
    ("verify-not-a-bundle", ["bundle", "verify", "{ws}/userdir"], 2, "manifest.json"),
    ("verify-text-archive", ["bundle", "verify", "{ws}/archive.tar.gz"], 2, "tar.gz"),
    ("predict-signed-no-key", ["predict", "{ws}/bundles/signed", IMG], 2, "key"),
    # the runtime as the CLI drives it
    ("predict-tampered", ["predict", "{ws}/bundles/tampered", IMG], 2, "sha256"),
    ("predict-not-an-image", ["predict", B, "{ws}/notes.txt"], 2, "notes.txt"),
    ("predict-corrupt-png", ["predict", B, "{ws}/corrupt.png"], 2, "corrupt.png"),
    ("predict-missing-image", ["predict", B, "{ws}/missing.png"], 2, "missing.png"),
    ("predict-top-0", ["predict", B, IMG, "--top", "0"], 2, "--top"),
    ("predict-top-negative", ["predict", B, IMG, "--top", "-3"], 2, "--top"),
    ("predict-top-word", ["predict", B, IMG, "--top", "x"], 2, "--top"),
    ("predict-not-a-bundle", ["predict", "{ws}/userdir", IMG], 2, "manifest.json"),
    ("adapt-nothing-to-do", ["adapt", B], 2, "--data"),
    ("adapt-both", ["adapt", B, "--data", D, "--rollback"], 2, "--data"),
    ("adapt-archive", ["adapt", "{ws}/bundles/host.tar.gz", "--data", D], 2, "not a bundle dir"),
    ("adapt-margin-negative", ["adapt", B, "--data", D, "--margin", "-1"], 2, "margin"),
    ("adapt-margin-nan", ["adapt", B, "--data", D, "--margin", "nan"], 2, "margin"),
    ("adapt-empty-data", ["adapt", B, "--data", "{ws}/adapt-empty"], 2, ""),
    ("adapt-missing-data", ["adapt", B, "--data", "{ws}/missing"], 2, "missing"),
    ("adapt-rollback-nothing", ["adapt", B, "--rollback"], 2, "nothing to roll back"),
    # devices
    ("device-proxycommand", ["deploy", B, "--device", "{ws}/devices/proxy.toml"], 2, "host"),
    ("device-space-in-host", ["deploy", B, "--device", "{ws}/devices/spacey.toml"], 2, "host"),
    ("device-control-char", ["deploy", B, "--device", "{ws}/devices/ctrl.toml"], 2, "host"),
    ("device-port", ["check", B, "--device", "{ws}/devices/badport.toml"], 2, "port"),
    ("device-user-option", ["check", B, "--device", "{ws}/devices/baduser.toml"], 2, "user"),
    ("device-transport-typo", ["deploy", B, "--device", "{ws}/devices/typo.toml"], 2, "transport"),
    ("device-unknown-name", ["deploy", B, "--device", "nosuch-board"], 2, "nosuch-board"),
    ("devices-timeout-nan", ["devices", "--timeout", "nan"], 2, "--timeout"),
    ("devices-timeout-inf", ["devices", "--timeout", "inf"], 2, "--timeout"),
    ("devices-timeout-0", ["devices", "--timeout", "0"], 2, "--timeout"),
    ("deploy-timeout-negative", ["deploy", B, "--device", "local", "--timeout", "-1"], 2, "--timeout"),
    ("check-duration-nan", ["check", B, "--duration", "nan"], 2, "--duration"),
    ("devices-dir-missing", ["devices", "--devices", "{ws}/missing"], 2, "missing"),
    ("check-runs-0", ["check", B, "--runs", "0"], 2, "--runs"),
    ("check-warmup-negative", ["check", B, "--warmup", "-1"], 2, "--warmup"),
    ("check-duration-0", ["check", B, "--duration", "0"], 2, "--duration"),
    ("check-runs-and-duration", ["check", B, "--runs", "5", "--duration", "1"], 2, "not allowed"),
    # the host stages
    ("eval-corrupt-labels", ["eval", "{ws}/badrun", "--data", D], 2, "labels.json"),
    ("eval-preprocess-one-mean", ["eval", "{ws}/meanrun", "--data", D], 2, "mean"),
    ("eval-garbage-head", ["eval", "{ws}/headrun", "--data", D], 2, "head.npz"),
    ("compile-garbage-head", ["compile", "{ws}/headrun", "--target", "host-cpu", "--out", "{ws}/new"], 2, "head.npz"),
    ("finetune-weights-damaged-run", ["finetune", "--data", D, "--out", "{ws}/new", "--weights", "{ws}/badrun"], 2,
     "labels.json"),
    ("finetune-lr-inf", ["finetune", "--data", D, "--out", "{ws}/new", "--lr", "inf"], 2, "--lr"),
    ("finetune-lr-nan", ["finetune", "--data", D, "--out", "{ws}/new", "--lr", "nan"], 2, "--lr"),
    ("finetune-weights-empty", ["finetune", "--data", D, "--out", "{ws}/new", "--weights", ""], 2, "--weights"),
    ("finetune-lr-decay-0", ["finetune", "--data", D, "--out", "{ws}/new", "--lr-decay", "0"], 2, "--lr-decay"),
    ("finetune-schedule", ["finetune", "--data", D, "--out", "{ws}/new", "--schedule", "step"], 2, "one-cycle"),
    ("finetune-bn", ["finetune", "--data", D, "--out", "{ws}/new", "--bn", "half"], 2, "frozen"),
    ("finetune-ema-negative", ["finetune", "--data", D, "--out", "{ws}/new", "--ema", "-1"], 2, "--ema"),
    ("finetune-select", ["finetune", "--data", D, "--out", "{ws}/new", "--select", "f1"], 2, "top1"),
    ("finetune-label-smoothing-1", ["finetune", "--data", D, "--out", "{ws}/new", "--label-smoothing", "1"], 2,
     "--label-smoothing"),
    ("lr-find-text-file", ["lr-find", "{ws}/notes.txt"], 2, "neither a run dir nor a .toml"),
    ("lr-find-user-dir", ["lr-find", "{ws}/userdir"], 2, "not an edgetl run"),
    ("lr-find-broken-toml", ["lr-find", "{ws}/broken.toml"], 2, "broken.toml"),
    ("lr-find-steps", ["lr-find", R, "--steps", "3"], 2, "--steps"),
    ("lr-find-start-above-end", ["lr-find", R, "--start", "1", "--end", "0.1"], 2, "climb"),
    ("calib-list-not-utf8", ["calib", "show", "{ws}/list-calib.toml"], 2, "UTF-8"),
    ("targets-show-missing-path", ["targets", "show", "../targets/host-cpu"], 2, "does not exist"),
    ("eval-not-a-run", ["eval", "{ws}/userdir", "--data", D], 2, ""),
    ("eval-data-missing", ["eval", R, "--data", "{ws}/missing"], 2, "missing"),
    ("export-tolerance-negative", ["export", R, "--tolerance", "-1"], 2, "tolerance"),
    ("export-format", ["export", R, "--format", "pdf"], 2, "pdf"),
    ("quantize-calib-text", ["quantize", R, "--calib", "{ws}/notes.txt"], 2, ""),
    ("quantize-calib-unknown-key", ["quantize", R, "--calib", "{ws}/bad.toml"], 2, "sead"),
    ("quantize-method", ["quantize", R, "--calib", "{ws}/bad.toml", "--method", "magic"], 2, "magic"),
    ("quantize-max-drop", ["quantize", R, "--calib", "{ws}/bad.toml", "--max-drop", "101"], 2, "max-drop"),
    ("quantize-split", ["quantize", R, "--calib", "{ws}/bad.toml", "--split", "train"], 2, "split"),
    ("calib-show-dir", ["calib", "show", "{ws}/userdir"], 2, "directory"),
    ("calib-show-missing", ["calib", "show", "{ws}/missing.toml"], 2, "missing.toml"),
    ("calib-show-broken-toml", ["calib", "show", "{ws}/broken.toml"], 2, "broken.toml"),
    ("dry-run-truncated-tflite", ["compile", "{ws}/trunc.tflite", "--target", "rpi4", "--dry-run"], 2, "tflite"),
    ("dry-run-text-onnx", ["compile", "{ws}/text.onnx", "--target", "host-cpu", "--dry-run"], 2, "onnx"),
    ("compile-model-file", ["compile", "{ws}/text.onnx", "--target", "host-cpu"], 2, ""),
    ("compile-target-unknown", ["compile", R, "--target", "nosuch"], 2, "nosuch"),
    ("compile-target-fp16-ort", ["compile", R, "--target", "{ws}/fp16-ort.toml", "--out", "{ws}/new"], 2, "fp16"),
    ("compile-json-without-dry-run", ["compile", R, "--target", "host-cpu", "--json"], 2, "--dry-run"),
    ("finetune-weights-random-bytes", ["finetune", "--data", D, "--out", "{ws}/new", "--weights", "{ws}/rand.pt"],
     2, "neither a PyTorch checkpoint"),
    ("finetune-backbone", ["finetune", "--data", D, "--out", "{ws}/new", "--backbone", "vgg16"], 2, "vgg16"),
    ("finetune-freeze", ["finetune", "--data", D, "--out", "{ws}/new", "--freeze", "half"], 2, "half"),
    ("finetune-data-missing", ["finetune", "--data", "{ws}/missing", "--out", "{ws}/new"], 2, "missing"),
    ("finetune-data-empty", ["finetune", "--data", "{ws}/empty", "--out", "{ws}/new"], 2, ""),
    ("data-show-missing", ["data", "show", "{ws}/missing"], 2, "missing"),
    ("data-show-file", ["data", "show", "{ws}/notes.txt"], 2, "notes.txt"),
    ("targets-show-unknown", ["targets", "show", "nosuch"], 2, "nosuch"),
    ("flag-unknown", ["compile", R, "--target", "host-cpu", "--bogus"], 2, "--bogus"),
    ("command-unknown", ["frobnicate"], 2, "frobnicate"),
    ("data-no-action", ["data"], 2, "action"),
    ("bundle-no-action", ["bundle"], 2, "action"),
]


def _argv(argv: list[str], ws: Path) -> list[str]:
    first_class = sorted(p.name for p in (ws / "data").iterdir())[0]
    first_image = sorted(p.name for p in (ws / "data" / first_class).iterdir())[0]
    return [a.format(ws=ws, home=Path.home(), first_class=first_class, first_image=first_image) for a in argv]


def test_the_table_is_large_and_every_id_is_unique():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("argv, code, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_input_is_one_line_with_a_hint_and_touches_nothing(ws, argv, code, fragment, capsys, monkeypatch,
                                                                  tmp_path):
    monkeypatch.chdir(ws)
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # whatever temp files the command makes must go again
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.delenv("EDGETL_BUNDLE_KEY", raising=False)
    before = tree(ws)
    with _exits_or_returns() as result:
        result.code = main(_argv(argv, ws))
    err = capsys.readouterr().err.strip()
    assert result.code == code, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "(hint: " in lines[0], err
    assert "Traceback" not in err
    assert fragment in lines[0]
    assert tree(ws) == before, "the workspace changed"
    assert list(tmp_path.iterdir()) == [], "temp files were left behind"


class _exits_or_returns:
    """argparse exits (SystemExit); the handlers return: both give the exit code."""

    code: int | None = None

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if kind is SystemExit:
            self.code = exc.code
            return True
        return False


API_CASES = [
    ("load-missing", lambda ws, m: m.Model.load(ws / "nothing"), "does not exist"),
    ("load-not-a-bundle", lambda ws, m: m.Model.load(ws / "userdir"), "manifest.json"),
    ("load-signed-without-key", lambda ws, m: m.Model.load(ws / "bundles" / "signed"), "key"),
    ("load-key-missing-file", lambda ws, m: m.Model.load(ws / "bundles" / "signed", key=ws / "missing.pub"),
     "missing.pub"),
    ("predict-empty-array", lambda ws, m: m.Model.load(ws / "bundles" / "host").predict(
        [np.zeros((0, 0, 3), np.uint8)]), ""),
    ("predict-float-pixels", lambda ws, m: m.Model.load(ws / "bundles" / "host").predict(
        [np.zeros((32, 32, 3), np.float32)]), ""),
    ("predict-top-k-0", lambda ws, m: m.Model.load(ws / "bundles" / "host").predict(
        [np.zeros((32, 32, 3), np.uint8)], top_k=0), "top"),
    ("predict-4d-image", lambda ws, m: m.Model.load(ws / "bundles" / "host").predict(
        [np.zeros((1, 32, 32, 3, 1), np.uint8)]), ""),
    ("load-none", lambda ws, m: m.Model.load(None), "path"),
    ("load-int", lambda ws, m: m.Model.load(123), "path"),
    ("load-key-int", lambda ws, m: m.Model.load(ws / "bundles" / "host", key=123), "key"),
    ("adapt-labels-none", lambda ws, m: m.Model.load(ws / "bundles" / "host").adapt(
        [np.zeros((32, 32, 3), np.uint8)], None), "labels"),
    ("adapt-labels-ints", lambda ws, m: m.Model.load(ws / "bundles" / "host").adapt(
        [np.zeros((32, 32, 3), np.uint8)] * 2, [0, 1], unguarded=True), "labels"),
    ("adapt-labels-empty-name", lambda ws, m: m.Model.load(ws / "bundles" / "host").adapt(
        [np.zeros((32, 32, 3), np.uint8)] * 2, ["", ""], unguarded=True), "labels"),
    ("adapt-labels-mismatch", lambda ws, m: m.Model.load(ws / "bundles" / "host").adapt(
        [np.zeros((32, 32, 3), np.uint8)] * 2, ["a"]), ""),
]


@pytest.mark.parametrize("call, fragment", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_the_runtime_api_refuses_bad_input_with_a_one_line_error(ws, call, fragment, monkeypatch):
    import edgetl.runtime as runtime

    monkeypatch.delenv("EDGETL_BUNDLE_KEY", raising=False)
    before = tree(ws)
    with pytest.raises(EdgetlError) as refused:
        call(ws, runtime)
    message = str(refused.value)
    assert "\n" not in message and refused.value.hint and fragment in message
    assert tree(ws) == before


def test_a_key_named_by_the_environment_that_is_missing_is_one_line(ws, capsys, monkeypatch):
    monkeypatch.setenv("EDGETL_BUNDLE_KEY", str(ws / "missing.pub"))
    argv = _argv(["predict", "{ws}/bundles/signed", IMG], ws)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing.pub" in err and "Traceback" not in err

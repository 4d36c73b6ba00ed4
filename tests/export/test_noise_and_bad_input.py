import os
import re
import subprocess
import sys

import pytest

from edgetl.cli import main

NOISE = ("XNNPACK", "absl", "WARNING:", "DeprecationWarning", "UserWarning", "FutureWarning", "oneDNN", "Traceback")


def test_tflite_export_shows_progress_and_none_of_the_libraries_noise(run_dir):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "GLOG_minloglevel")}
    done = subprocess.run([sys.executable, "-m", "edgetl", "export", str(run_dir), "--format", "tflite"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    for noise in NOISE:
        assert noise not in done.stderr, done.stderr
    assert not re.search(r"^[IWE]\d{4} ", done.stderr, re.M), done.stderr  # absl/glog/torch log lines
    assert "exporting efficientnet_lite0 to tflite" in done.stderr and "parity on" in done.stderr
    assert "backbone.tflite" in done.stdout


@pytest.mark.parametrize("flags, message", [
    (["--tolerance", "-1"], "--tolerance must be a finite number > 0, not -1.0"),
    (["--tolerance", "nan"], "--tolerance must be a finite number > 0, not nan"),
    (["--tolerance", "0"], "--tolerance must be a finite number > 0"),
    (["--format", "pt"], "unknown format 'pt'"),
])
def test_bad_export_flags_are_refused_before_any_work_or_torch_import(run_dir, flags, message):
    code = ("import sys; from edgetl.cli import main; rc = main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, "export", str(run_dir), *flags], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "hint:" in done.stderr and "Traceback" not in done.stderr
    assert not (run_dir / "export").exists()


@pytest.mark.parametrize("name, content", [("labels.json", '["a", "b"'), ("preprocess.json", "{}"),
                                           ("finetune.json", "not json"), ("labels.json", '{"a": 1}')])
@pytest.mark.parametrize("command", ["eval", "export", "quantize", "compile"])
def test_a_damaged_run_file_is_one_line_naming_it(run_dir, signs, calib_file, capsys, name, content, command):
    (run_dir / name).write_text(content)
    argv = {"eval": ["eval", str(run_dir), "--data", str(signs["test"])], "export": ["export", str(run_dir)],
            "quantize": ["quantize", str(run_dir), "--calib", str(calib_file)],
            "compile": ["compile", str(run_dir), "--target", "host-cpu", "--dry-run"]}[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{run_dir / name} is damaged" in err and "the run is damaged; fine-tune again or restore it" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err

"""The CLI as a user meets it: help, one-line errors with exit code 2, result tables."""

import json
import subprocess
import sys

import pytest

from edgetl.cli import main
from edgetl.console import percent


def _edgetl(*args, **kw):
    return subprocess.run([sys.executable, "-m", "edgetl", *args], capture_output=True, text=True, **kw)


@pytest.mark.parametrize("command", [[], ["data", "synth"], ["data", "show"], ["backbones"], ["finetune"],
                                     ["pretrain"], ["eval"], ["devices"], ["lr-find"]])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    assert "usage: edgetl" in capsys.readouterr().out


def test_user_error_is_one_line_with_a_hint_and_exit_2(tmp_path):
    proc = _edgetl("finetune", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--backbone", "vgg16")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown backbone 'vgg16'")
    assert "hint: available:" in lines[0] and "efficientnet_lite0" in lines[0]
    assert "Traceback" not in proc.stderr


def test_verbose_shows_the_traceback(tmp_path):
    proc = _edgetl("finetune", "--verbose", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r"))
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and "error: training dir" in proc.stderr


def test_empty_data_dir_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    assert main(["finetune", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "has no class folders" in err and "hint:" in err
    assert not (tmp_path / "r").exists()


def test_synth_show_backbones(tmp_path, capsys):
    out = tmp_path / "signs"
    assert main(["data", "synth", "--domain", "city-b", "--per-class", "2", "--size", "32", "--out", str(out)]) == 0
    assert main(["data", "show", str(out)]) == 0
    assert main(["backbones"]) == 0
    text = capsys.readouterr().out
    assert "00-stop" in text and "mobilenet_v3_small" in text and "timm:mobilenetv4_conv_small" in text
    assert main(["backbones", "--timm", "mobilenetv4*"]) == 0
    assert "timm:mobilenetv4_conv_small" in capsys.readouterr().out
    assert main(["data", "synth", "--domain", "city-b", "--per-class", "2", "--out", str(out)]) == 2


def test_finetune_then_eval_from_the_command_line(tmp_path, signs):
    run = tmp_path / "run"
    proc = _edgetl("finetune", "--data", str(signs["train"]), "--test", str(signs["test"]), "--out", str(run),
                   "--backbone", "mobilenet_v3_small", "--weights", "none", "--img-size", "32", "--epochs", "1",
                   "--head-epochs", "5")
    assert proc.returncode == 0, proc.stderr
    assert "test top-1" in proc.stdout
    record = json.loads((run / "finetune.json").read_text())
    proc = _edgetl("eval", str(run), "--data", str(signs["test"]), "--per-class")
    assert proc.returncode == 0, proc.stderr
    assert percent(record["test_top1"]) in proc.stdout  # eval agrees with the run's own test score
    assert _edgetl("eval", str(tmp_path), "--data", str(signs["test"])).returncode == 2


def test_an_unwritable_output_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("I am a file, not a folder")
    code = main(["data", "synth", "--domain", "city-a", "--per-class", "1", "--out", str(blocker / "signs")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err
    assert blocker.read_text() == "I am a file, not a folder"


def test_data_without_an_action_is_a_usage_error(capsys):
    assert main(["data"]) == 2
    assert "synth" in capsys.readouterr().err

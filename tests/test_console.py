import os
import subprocess
import sys
import time
import warnings

from edgetl import console as console_module
from edgetl.cli import main
from edgetl.console import Console, percent, silenced


def test_percent_has_two_decimals_everywhere():
    assert percent(60) == "60.00%" and percent(56.666) == "56.67%" and percent(None) == "-"


def test_a_long_task_off_a_terminal_logs_progress_lines(capsys, monkeypatch):
    monkeypatch.setattr(console_module, "SHOW_AFTER_S", 0.0)
    monkeypatch.setattr(console_module, "LOG_EVERY_S", 0.05)
    with Console().task("embedding", 4, "images") as advance:
        for _ in range(4):
            time.sleep(0.06)
            advance(1)
    err = capsys.readouterr().err
    assert "embedding 1/4 images (" in err and "embedding 4/4 images (0 s) done" in err


def test_a_short_task_prints_nothing(capsys):
    with Console().task("quick", 10) as advance:
        advance(10)
    assert capsys.readouterr().err == ""


def test_silenced_hides_library_noise_but_not_our_own_lines(capfd):
    c = Console()
    with silenced():
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
        print("W0000 absl noise", file=sys.stderr)
        warnings.warn("torch.export is deprecated", DeprecationWarning, stacklevel=1)
        c.log("embedding 320/1200 images (12 s)")
    err = capfd.readouterr().err
    assert "embedding 320/1200 images" in err
    assert "XNNPACK" not in err and "absl" not in err and "DeprecationWarning" not in err


def test_a_verbose_console_lets_library_output_through(capfd, monkeypatch):
    monkeypatch.setattr(console_module, "_verbose", False)
    for key in console_module._SET_HERE:  # restored after the test
        monkeypatch.setenv(key, os.environ.get(key, ""))
    Console(verbose=True)
    with silenced():
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
    assert "XNNPACK" in capfd.readouterr().err


def test_native_log_levels_are_set_on_import_but_never_over_the_users():
    code = "import os, edgetl.console; print(os.environ['TF_CPP_MIN_LOG_LEVEL'])"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip() == "2"
    env["TF_CPP_MIN_LOG_LEVEL"] = "0"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip() == "0"


def test_eval_prints_top1_in_percent_with_two_decimals_and_a_short_title(run_dir, signs, capsys):
    assert main(["eval", str(run_dir), "--data", str(signs["test"]), "--per-class"]) == 0
    out = capsys.readouterr().out
    assert "top-1 %" in out and "%" in out
    assert all(len(line) < 100 for line in out.splitlines())  # titles stay on one line
    cells = [c.strip() for line in out.splitlines() for c in line.split("│") if c.strip().endswith("%")]
    assert cells and all(len(c.split(".")[1]) == 3 for c in cells)  # "56.67%", "100.00%"

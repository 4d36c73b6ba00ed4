"""`edgetl pipeline FILE`, as a team uses it: one file, re-run as data and settings change, killed
half-way by a CI runner, and refused in one line when the file is wrong."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgetl.cli import main
from edgetl.pipeline import run

# Small and real: mobilenet_v3_small from scratch at 32 px on the session's 4-class signs, int8 ONNX,
# bundles for this machine and a Raspberry Pi 4 (its TFLite export makes compile take seconds), and a
# check on this machine as a device.
FLOW = """\
name = "signs"
out = "out"

[finetune]
data = "{train}"
test = "{test}"
backbone = "mobilenet_v3_small"
weights = "none"
img_size = 32
epochs = 1
head_epochs = 5

[calibration]
data = "{train}"
samples = 32

[quantize]
formats = ["onnx"]
method = "minmax"
max_drop = 100.0

[compile]
targets = ["host-cpu", "rpi4"]

[check]
device = "bench.toml"
runs = 10
warmup = 2
budgets = {{ min_top1 = 0 }}
"""
DEVICE = 'name = "bench"\ntarget = "host-cpu"\ntransport = "local"\n[local]\nworkdir = "board"\n'


def _flow(folder: Path, signs, text: str = FLOW) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bench.toml").write_text(DEVICE)
    path = folder / "edgetl.toml"
    path.write_text(text.format(train=signs["train"], test=signs["test"]))
    return path


def _bundles(out: Path) -> dict[str, bytes]:
    root = out / "bundles"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def flow(signs, tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    """The flow run once, uninterrupted: its file, and its bundles' bytes."""
    path = _flow(tmp_path_factory.mktemp("flow"), signs)
    outcome = run(path)
    assert outcome.exit_code == 0, outcome
    return path, _bundles(path.parent / "out")


def test_a_run_with_nothing_changed_does_no_work_and_says_so(flow, capsys):
    path, bundles = flow
    started = time.monotonic()
    assert main(["pipeline", str(path)]) == 0
    seconds = time.monotonic() - started
    out = capsys.readouterr()
    said = out.out + out.err
    assert "nothing to do: all 5 stages are up to date" in said and "running" not in said
    assert seconds < 5, seconds
    assert _bundles(path.parent / "out") == bundles


def test_a_calibration_change_reruns_quantize_and_what_follows_and_nothing_before(flow, signs, tmp_path, capsys):
    path = _flow(tmp_path / "changed", signs)
    shutil.copytree(flow[0].parent / "out", path.parent / "out")
    path.write_text(path.read_text().replace("samples = 32", "samples = 40"))
    plan = run(path, dry_run=True)
    assert [s.stage for s in plan.steps if s.why != "up to date"] == ["quantize.onnx", "compile.host-cpu",
                                                                     "compile.rpi4", "check"]
    assert plan.steps[1].why == "its quantize or calibration settings changed"
    assert (path.parent / "out" / "runs" / "signs" / "quantize" / "onnx").is_dir()  # a dry run writes nothing
    done = run(path)
    assert done.exit_code == 0
    assert [s.stage for s in done.steps if s.ran] == ["quantize.onnx", "compile.host-cpu", "compile.rpi4", "check"]
    assert run(path).did_nothing


def test_force_reruns_one_stage_and_what_reads_it(flow, signs, tmp_path):
    path = _flow(tmp_path / "forced", signs)
    shutil.copytree(flow[0].parent / "out", path.parent / "out")
    plan = run(path, dry_run=True, force=("compile.rpi4",))
    assert [s.stage for s in plan.steps if s.why != "up to date"] == ["compile.rpi4", "check"]
    with pytest.raises(Exception, match="no such stage"):
        run(path, force=("export",))


def _edgetl(args, tmp: Path) -> subprocess.Popen:
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1"}
    tmp.mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "edgetl", *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _kill_when(proc: subprocess.Popen, line: str, after_s: float) -> str:
    """SIGKILL `proc` `after_s` seconds after it prints `line`; what it printed."""
    seen = []
    for said in proc.stdout:
        seen.append(said)
        if line in said:
            time.sleep(after_s)
            break
    assert proc.poll() is None, "".join(seen)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return "".join(seen)


@pytest.mark.parametrize(("stage", "after_s"), [("finetune", 2.0), ("compile.rpi4", 1.5)])
def test_a_sigkill_mid_stage_then_a_rerun_ends_with_the_same_bundles_byte_for_byte(flow, signs, tmp_path, stage,
                                                                                  after_s):
    path = _flow(tmp_path / "killed", signs)
    shutil.copytree(flow[0].parent / "out", path.parent / "out")
    said = _kill_when(_edgetl(["pipeline", path, "--force", stage], tmp_path / "tmp"), f"{stage}: running", after_s)
    assert f"{stage}: running" in said
    plan = run(path, dry_run=True)
    todo = [s.stage for s in plan.steps if s.why != "up to date"]
    assert todo[0] == stage and "synth" not in " ".join(todo)
    if stage == "compile.rpi4":
        assert todo == ["compile.rpi4", "check"]  # the stages before it kept their outputs
    done = run(path)
    assert done.exit_code == 0
    assert _bundles(path.parent / "out") == flow[1]


def test_an_unknown_key_is_refused_in_one_line_before_any_work(signs, tmp_path, capsys):
    path = _flow(tmp_path, signs, FLOW.replace("samples = 32", "samples = 32\nsampels = 64"))
    assert main(["pipeline", str(path)]) == 2
    err = capsys.readouterr().err
    assert "calibration.sampels" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_missing_data_dir_is_refused_naming_the_key(signs, tmp_path, capsys):
    path = _flow(tmp_path, signs, FLOW.replace('test = "{test}"', 'test = "no/such/dir"'))
    assert main(["pipeline", str(path)]) == 2
    err = capsys.readouterr().err
    assert "finetune.test" in err and "does not exist" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_target_the_run_cannot_compile_for_is_refused_up_front(signs, tmp_path, capsys):
    path = _flow(tmp_path, signs, FLOW.replace('"host-cpu", "rpi4"', '"host-cpu", "coral-usb"'))
    assert main(["pipeline", str(path)]) == 2
    err = capsys.readouterr().err
    assert "compile.targets: coral-usb runs int8 tflite only" in err and 'add "tflite"' in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("change", "says"), [
    (("[compile]", "[compile]\nsign = \"no-key\""), "compile.sign"),
    (("targets = [", "targets = [\"pi9\", "), "unknown target 'pi9'"),
    (('method = "minmax"', 'method = "fast"'), "quantize.method"),
    (('device = "bench.toml"', 'device = "nowhere.toml"'), "nowhere.toml"),
    (("[quantize]", "[quantize]\nescalate = [\"refine\"]"), "quantize.escalate"),
    (('data = "{train}"\ntest', 'data = "synth:city"\ntest'), "finetune.data"),
])
def test_other_bad_files_are_refused_in_one_line(signs, tmp_path, capsys, change, says):
    path = _flow(tmp_path, signs, FLOW.replace(*change))
    assert main(["pipeline", str(path)]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_an_out_dir_holding_other_files_is_refused(signs, tmp_path, capsys):
    path = _flow(tmp_path, signs)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert main(["pipeline", str(path)]) == 2
    assert "refusing to replace it" in capsys.readouterr().err
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_the_escalation_steps_a_file_may_name_are_quantize_s():
    import typing

    from edgetl.pipeline.spec import QuantizeSpec
    from edgetl.quantize import ESCALATION

    hint = typing.get_type_hints(QuantizeSpec)["escalate"]
    assert set(typing.get_args(typing.get_args(typing.get_args(hint)[0])[0])) == set(ESCALATION)

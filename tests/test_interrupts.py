"""Interrupts and a full disk, as a user meets them: Ctrl-C, a CI runner's SIGTERM, SIGKILL, ENOSPC.

Each command runs as a real process with its own TMPDIR, so anything it leaves behind is seen.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgetl.runtime.lifecycle import process_scope, signals_held
from edgetl.runtime.verify import open_bundle
from tests.standins import tiny_fs

HOST = "x86_64"


def _start(args, tmp: Path) -> subprocess.Popen:
    tmp.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-c", CTRL_C_AS_IN_A_TERMINAL, *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# `python -m edgetl ARGS` with Ctrl-C as a terminal has it: a suite started in the background
# (`make test &`) hands its children SIGINT ignored.
CTRL_C_AS_IN_A_TERMINAL = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                           "sys.argv[0] = 'edgetl'; runpy.run_module('edgetl', run_name='__main__', alter_sys=True)")


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


def _leftovers(*folders: Path) -> list[str]:
    return sorted(str(p) for f in folders if f.exists() for p in f.iterdir())


def _staging(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if ".edgetl-" in p.name] if folder.exists() else []


def test_sigterm_during_quantize_unwinds_like_ctrl_c_and_leaves_no_temp_dirs(run_dir, calib_file, tmp_path):
    tmp = tmp_path / "tmp"
    proc = _start(["quantize", run_dir, "--calib", calib_file, "--format", "onnx", "--method", "minmax",
                   "--max-drop", "100"], tmp)
    working = _wait_for(lambda: any(p.name.startswith("edgetl-quantize-") for p in tmp.glob("edgetl-*/*")), proc)
    assert working, proc.communicate()[1]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "interrupted (SIGTERM)" in err and "Traceback" not in err
    assert _leftovers(tmp) == []
    assert not (run_dir / "quantize" / "onnx").exists() and _staging(run_dir / "quantize") == []


@pytest.mark.parametrize("delay", [0.0, 0.3, 0.8])
def test_sigint_during_compile_never_leaves_a_bundle_without_its_archive(compiled_run, tmp_path, delay):
    tmp, out = tmp_path / "tmp", tmp_path / "bundles" / "host"
    proc = _start(["compile", compiled_run, "--target", "host-cpu", "--out", out], tmp)
    assert _wait_for(lambda: bool(_staging(out.parent)), proc), proc.communicate()[1]
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    archive = out.with_name("host.tar.gz")
    assert out.exists() == archive.exists(), err  # both, or neither
    assert delay > 0 or proc.returncode == 130, err  # at once: always caught mid-write
    if out.exists():  # the signal came after the commit (exit 0, or killed by it on the way out): complete
        assert proc.returncode in (0, 130, -signal.SIGINT), err
        assert open_bundle(out, machine=HOST) and open_bundle(archive, machine=HOST, unpack_to=tmp_path / "u")
    else:
        assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
        assert not out.exists() and not (tmp_path / "bundles").exists()  # the dir it made for the bundle too
    assert _staging(out.parent) == [] and _leftovers(tmp) == []


def test_after_sigkill_mid_write_the_next_run_sweeps_what_the_dead_one_left(compiled_run, tmp_path):
    tmp, out = tmp_path / "tmp", tmp_path / "host"
    proc = _start(["compile", compiled_run, "--target", "host-cpu", "--out", out], tmp)
    assert _wait_for(lambda: bool(_staging(tmp_path)), proc), proc.communicate()[1]
    proc.kill()
    proc.communicate()
    assert not out.exists() and not out.with_name("host.tar.gz").exists()
    assert _staging(tmp_path) and list(tmp.iterdir())  # SIGKILL cannot clean up ...
    again = _start(["compile", compiled_run, "--target", "host-cpu", "--out", out], tmp)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert _staging(tmp_path) == [] and _leftovers(tmp) == []  # ... the next edgetl process does
    assert open_bundle(out, machine=HOST)


def test_signals_held_over_a_commit_are_raised_right_after_it():
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, also under `make &`
    done = []
    try:
        with pytest.raises(KeyboardInterrupt), signals_held():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            done.append("both renames")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert done == ["both renames"]


def test_a_process_scope_removes_its_temp_root_on_any_exit_and_restores_tempfile(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    with pytest.raises(RuntimeError), process_scope() as root:
        assert Path(tempfile.mkdtemp()).parent == root
        raise RuntimeError("a bug")
    assert list(tmp_path.iterdir()) == [] and tempfile.tempdir is None


def _one_line_disk_full(proc: subprocess.CompletedProcess, out: Path) -> None:
    lines = [line for line in proc.stderr.strip().splitlines() if "error" in line.lower()]  # progress lines aside
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"error: could not write {out}: No space left on device") and "(hint: " in lines[0]


def test_a_full_disk_under_compile_is_one_line_naming_the_bundle_and_leaves_nothing(compiled_run, tmp_path):
    with tiny_fs(tmp_path / "disk", "1m") as disk:
        (disk / "keep.txt").write_text("already here")
        proc = subprocess.run([sys.executable, "-m", "edgetl", "compile", str(compiled_run), "--target", "host-cpu",
                               "--out", str(disk / "bundles" / "host")], capture_output=True, text=True)
        _one_line_disk_full(proc, disk / "bundles" / "host")
        assert sorted(p.name for p in disk.iterdir()) == ["keep.txt"]


def test_a_full_disk_under_finetune_is_one_line_naming_the_run_not_a_torch_traceback(signs, tmp_path):
    with tiny_fs(tmp_path / "disk", "2m") as disk:
        proc = subprocess.run([sys.executable, "-m", "edgetl", "finetune", "--data", str(signs["train"]), "--out",
                               str(disk / "run"), "--img-size", "32", "--epochs", "1", "--head-epochs", "2",
                               "--freeze", "all"], capture_output=True, text=True, timeout=600)
        _one_line_disk_full(proc, disk / "run")
        assert list(disk.iterdir()) == []

"""The program deploy sends to a device before edgetl is there, run as deploy runs it (`python3 -c
SOURCE`), and the runtime's refusals as the host reads them: one JSON line."""

import hashlib
import json
import platform
import subprocess
import sys

from edgetl.devices.deploy import BOOTSTRAP


def _bootstrap(*args, input: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BOOTSTRAP, *map(str, args)], input=input, capture_output=True,
                          timeout=60)


def test_a_runtime_is_taken_in_checked_then_activated_and_reported(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    status = json.loads(_bootstrap("status", work).stdout)
    assert status["runtime"] is None and status["python"] == platform.python_version()
    wheel = b"not really a wheel, but bytes that must arrive whole"
    put = _bootstrap("put", work, "abc123", len(wheel), hashlib.sha256(wheel).hexdigest(), "edgetl.whl", input=wheel)
    assert put.returncode == 0, put.stderr
    site = json.loads(put.stdout)["site"]
    (tmp_path / "work" / ".install-abc123" / "site").mkdir()  # what the device's pip installs into `site`
    assert site.endswith("site")
    assert json.loads(_bootstrap("activate", work, "abc123").stdout) == {"runtime": "abc123"}
    assert json.loads(_bootstrap("status", work).stdout)["runtime"] == "abc123"
    assert sorted(p.name for p in work.iterdir()) == [".runtime-abc123", "runtime"]  # staging gone


def test_a_wheel_damaged_in_transfer_is_refused_as_json(tmp_path):
    wheel = b"0123456789"
    done = _bootstrap("put", tmp_path, "abc", len(wheel), hashlib.sha256(wheel).hexdigest(), "w.whl",
                      input=wheel[:4])
    assert done.returncode == 2
    error = json.loads(done.stdout)["error"]
    assert "arrived damaged (4 of 10 bytes)" in error["message"] and error["hint"] == "deploy again"
    assert not list(tmp_path.iterdir())


def test_a_device_command_refusal_reaches_the_host_as_json(tmp_path):
    done = subprocess.run([sys.executable, "-m", "edgetl.runtime", "verify", str(tmp_path / "nothing")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    error = json.loads(done.stdout.splitlines()[-1])["error"]
    assert error["kind"] == "BundleError" and "does not exist" in error["message"] and error["hint"]
    assert done.stderr.startswith("error: ")  # and one line for a person at the device's shell

"""Config files (a target, a device, a calibration set) are checked by one validator: a bad key or
value is one line naming the file, the key and the keys or values allowed."""

import pytest

from edgetl.cli import main
from tests.test_targets import GOOD

TARGET = GOOD  # the valid target of tests/test_targets.py
DEVICE = 'name = "pi"\ntarget = "rpi4"\ntransport = "ssh"\n[ssh]\nhost = "10.0.0.12"\n'
CALIB = 'data = "images"\nsamples = 64\n'


def _refused(tmp_path, capsys, kind: str, text: str) -> str:
    """What `edgetl` prints for the file, past `error: FILE: `."""
    file, argv = {
        "target": (tmp_path / "board.toml", ["targets", "show", str(tmp_path / "board.toml")]),
        "device": (tmp_path / "fleet" / "pi.toml", ["devices", "--devices", str(tmp_path / "fleet")]),
        "calibration set": (tmp_path / "set.toml", ["calib", "show", str(tmp_path / "set.toml")]),
    }[kind]
    file.parent.mkdir(exist_ok=True)
    file.write_text(text)
    assert main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {file}: ") and "Traceback" not in line
    return line.removeprefix(f"error: {file}: ")


@pytest.mark.parametrize("kind, text, said", [
    ("target", 'colour = "red"\n' + TARGET, "colour = 'red' is not allowed: unknown key 'colour' (hint: allowed: "
     "arch, budgets, constraints, description, engines, io_dtype, name, precisions, reference)"),
    ("target", TARGET + "latency_p99_ms = 9\n", "budgets.latency_p99_ms = 9 is not allowed: unknown key "
     "'budgets.latency_p99_ms' (hint: allowed: latency_p95_ms, max_rss_mb, min_top1)"),
    ("target", TARGET.replace("[budgets]", "file = 'x.toml'\n[budgets]"),  # the file's path is not the file's to say
     "file = 'x.toml' is not allowed: unknown key 'file'"),
    ("device", 'colour = "red"\n' + DEVICE, "colour = 'red' is not allowed: unknown key 'colour' (hint: allowed: "
     "budgets, description, emulated, local, name, ssh, tags, target, transport)"),
    ("device", DEVICE + 'password = "raspberry"\n', "ssh.password = 'raspberry' is not allowed: unknown key "
     "'ssh.password' (hint: allowed: connect_timeout_s, host, identity, known_hosts, port, python, "
     "strict_host_key_checking, user, workdir)"),
    ("calibration set", CALIB + "sead = 1\n", "sead = 1 is not allowed: unknown key 'sead' "
     "(hint: allowed: data, description, list, samples, seed)"),
])
def test_an_unknown_key_is_named_with_the_keys_allowed(tmp_path, capsys, kind, text, said):
    assert _refused(tmp_path, capsys, kind, text).startswith(said)


@pytest.mark.parametrize("kind, text, said", [
    ("target", TARGET.replace('"aarch64"', '"sparc"'),
     "arch = 'sparc' is not allowed (hint: allowed: x86_64, aarch64, armv7l)"),
    ("target", TARGET.replace('["litert"]', '["litert", "litert"]'), "engines = ['litert', 'litert'] is not allowed "
     "(a value is listed twice) (hint: allowed: onnxruntime, litert, edgetpu, tensorrt)"),
    ("target", TARGET.replace("min_top1 = 80", "min_top1 = true"),
     "budgets.min_top1 = True is not allowed: budgets.min_top1 must be a number >= 0 (hint: allowed: a number >= 0)"),
    ("device", DEVICE + 'port = "22"\n',
     "ssh.port = '22' is not allowed: ssh.port must be a int (hint: allowed: a int, as in port = 22)"),
    ("device", DEVICE.replace('"ssh"', '"telnet"'),
     "transport = 'telnet' is not allowed (hint: allowed: local, ssh, emulated)"),
    ("device", 'tags = "lab"\n' + DEVICE,
     "tags = 'lab' is not allowed: tags must be a list of strings (hint: allowed: a list of strings)"),
    ("calibration set", CALIB.replace("64", '"many"'),
     "samples = 'many' is not allowed: samples must be a int (hint: allowed: a int, as in samples = 256)"),
])
def test_a_mistyped_value_is_named_with_what_is_allowed(tmp_path, capsys, kind, text, said):
    assert _refused(tmp_path, capsys, kind, text) == said


@pytest.mark.parametrize("kind, text, said", [
    ("target", TARGET.replace('name = "board"\n', ""), "missing key 'name' (hint: required: name, arch, engines, "
     "precisions, io_dtype, budgets; optional: description, constraints, reference)"),
    ("device", DEVICE.replace('host = "10.0.0.12"', "port = 2222"), "[ssh] lacks 'host' (hint: required: host; "
     "optional: port, user, identity, python, workdir, strict_host_key_checking, known_hosts, connect_timeout_s)"),
])
def test_a_missing_key_is_named_with_the_keys_required(tmp_path, capsys, kind, text, said):
    assert _refused(tmp_path, capsys, kind, text) == said

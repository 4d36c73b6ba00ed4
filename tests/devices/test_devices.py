import json
import platform
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from edgetl import devices, targets
from edgetl.cli import main
from edgetl.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[2] / "devices" / "examples"
SSH = """name = "lab-pi"
target = "rpi5"
transport = "ssh"
[ssh]
host = "10.0.0.12"
"""


def _write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.toml").write_text(text)
    return folder / f"{name}.toml"


def test_the_local_device_is_this_machine_and_answers():
    local = devices.load("local")
    assert local.transport == "local" and local.target.name == "host-cpu"
    assert local.budgets == local.target.budgets  # no overrides
    probe = local.probe()
    assert probe.reachable and probe.arch == platform.machine()
    assert probe.python == ".".join(map(str, sys.version_info[:3]))


def test_a_minimal_file_and_the_shipped_examples_load(tmp_path):
    minimal = devices.read(_write(tmp_path, "lab-pi", 'name = "lab-pi"\ntarget = "rpi5"\ntransport = "local"\n'))
    assert minimal.name == "lab-pi" and minimal.budgets == targets.load("rpi5").budgets
    pi = devices.read(EXAMPLES / "lab-pi5.toml")
    assert pi.ssh.host == "10.0.0.12" and pi.ssh.strict_host_key_checking and pi.tags == ("lab", "arm64", "pi")
    # the device's budgets win over the target's; the ones it does not set stay the target's
    assert pi.budgets.latency_p95_ms == 30 and pi.budgets.max_rss_mb == 300
    assert pi.budgets.min_top1 == targets.load("rpi5").budgets.min_top1
    assert devices.read(EXAMPLES / "emulated-pi4.toml").emulated.cpu == "cortex-a72"


@pytest.mark.parametrize("text, message", [
    (SSH.replace('target = "rpi5"\n', ""), "missing key 'target'"),
    (SSH.replace('"ssh"', '"telnet"'), "transport = 'telnet'.*allowed: local, ssh, emulated"),
    (SSH.replace('host = "10.0.0.12"', 'port = 2222'), r"\[ssh\] lacks 'host'"),
    (SSH + "port = 70000\n", "ssh.port = 70000.*1-65535"),
    (SSH + 'port = "22"\n', "ssh.port = '22'.*a int"),
    (SSH + "strict_host_key_checking = 1\n", "ssh.strict_host_key_checking = 1.*a bool"),
    (SSH + 'password = "raspberry"\n', "ssh.password.*allowed: connect_timeout_s"),
    (SSH + '[emulated]\nroot = "/x"\n', r"\[emulated\].*only the \[ssh\] table"),
    (SSH + "[budgets]\nlatency_p99_ms = 3\n", "budgets.latency_p99_ms"),
    (SSH + "[budgets]\nmin_top1 = -1\n", "budgets.min_top1 = -1"),
    (SSH.replace('"rpi5"', '"rpi9"'), "unknown target 'rpi9'"),
    ('tags = "lab"\n' + SSH, "tags = 'lab'.*a list of strings"),
    ('name = "a b"\n' + SSH.split("\n", 1)[1], "name = 'a b'"),
    ('colour = "red"\n' + SSH, "colour = 'red'.*allowed: budgets, description"),
    ("name = [", "not valid TOML"),
])
def test_a_bad_device_file_names_the_file_and_the_key(tmp_path, text, message):
    file = _write(tmp_path, "bad", text)
    with pytest.raises(ConfigError, match=message) as info:
        devices.read(file)
    assert str(file) in info.value.message


def test_ssh_runs_in_batch_mode_with_host_keys_checked_unless_told_otherwise(tmp_path):
    strict = devices.read(_write(tmp_path, "a", SSH + 'user = "pi"\nidentity = "~/.ssh/k"\nport = 2222\n'))
    argv = strict.argv(["python3", "-c", "print('a b')"])
    assert argv[0] == "ssh" and "BatchMode=yes" in argv and "StrictHostKeyChecking=yes" in argv
    assert argv[argv.index("-p") + 1] == "2222" and argv[argv.index("-i") + 1] == str(Path("~/.ssh/k").expanduser())
    assert argv[-3:-1] == ["--", "pi@10.0.0.12"]  # options end before anything from the file
    assert shlex.split(argv[-1]) == ["python3", "-c", "print('a b')"]  # quoted once, for the remote shell
    lax = devices.read(_write(tmp_path, "b", SSH + "strict_host_key_checking = false\n"))
    assert "StrictHostKeyChecking=accept-new" in lax.argv(["true"])


def test_unreachable_devices_say_why(tmp_path):
    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    refused = devices.read(_write(tmp_path, "refused", SSH.replace("10.0.0.12", "127.0.0.1") + f"port = {port}\n"))
    no_qemu = devices.read(_write(tmp_path, "emu", 'name = "emu"\ntarget = "rpi4"\ntransport = "emulated"\n'
                                  '[emulated]\nroot = "/nonexistent"\nqemu = "qemu-aarch64-not-installed"\n'))
    wrong_arch = devices.read(_write(tmp_path, "pi", 'name = "pi"\ntarget = "rpi4"\ntransport = "local"\n'))
    probes = devices.probe_all([refused, no_qemu, wrong_arch], timeout=20)
    assert not any(p.reachable for p in probes)
    assert "refused" in probes[0].reason.lower()
    assert probes[1].reason == "qemu-aarch64-not-installed not found on this machine"
    assert probes[2].reason == f"is {platform.machine()}, target rpi4 is aarch64"


def test_edgetl_devices_lists_the_fleet_and_exits_3_when_one_does_not_answer(tmp_path, capsys):
    fleet = tmp_path / "fleet"
    _write(fleet, "here", 'name = "here"\ntarget = "host-cpu"\ntransport = "local"\ntags = ["ci"]\n')
    assert main(["devices", "--devices", str(fleet), "--json"]) == 0
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert record["name"] == "here" and record["reachable"] and record["tags"] == ["ci"]
    _write(fleet, "away", 'name = "away"\ntarget = "rpi4"\ntransport = "emulated"\n'
                          '[emulated]\nroot = "/nonexistent"\nqemu = "qemu-aarch64-not-installed"\n')
    assert main(["devices", "--devices", str(fleet)]) == 3
    out = capsys.readouterr().out
    assert "here" in out and "away" in out and "not found" in out


def test_a_fleet_with_two_devices_of_one_name_is_refused(tmp_path, capsys):
    _write(tmp_path, "a", 'name = "pi"\ntarget = "rpi4"\ntransport = "local"\n')
    _write(tmp_path, "b", 'name = "pi"\ntarget = "rpi5"\ntransport = "local"\n')
    assert main(["devices", "--devices", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "device name 'pi' is also used by" in err and len(err.strip().splitlines()) == 1


@pytest.mark.hil
def test_a_board_over_real_ssh_answers_and_runs_commands(sshd, tmp_path):
    board = devices.read(_write(tmp_path, "loopback", sshd.device_toml()))
    probe = board.probe()
    assert probe.reachable, probe.reason
    assert probe.arch == platform.machine()
    done = board.run(["python3", "-c", "import sys; print(sys.argv[1:])", "two words", "it's"], timeout=30)
    assert done.returncode == 0 and done.stdout.decode().strip() == "['two words', \"it's\"]"  # quoted once


@pytest.mark.hil
def test_a_board_whose_host_key_is_not_the_known_one_is_not_trusted(sshd, tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "impostor")], check=True)
    kind, key = (tmp_path / "impostor.pub").read_text().split()[:2]
    (tmp_path / "known_hosts").write_text(f"[127.0.0.1]:{sshd.port} {kind} {key}\n")
    board = devices.read(_write(tmp_path, "spoofed", sshd.device_toml(known_hosts=str(tmp_path / "known_hosts"))))
    probe = board.probe()
    assert not probe.reachable and "host key verification failed" in probe.reason.lower()


@pytest.mark.hil
def test_an_emulated_raspberry_pi_answers_as_aarch64_with_its_engines(arm64_root, tmp_path):
    pi = devices.read(_write(tmp_path, "pi", f'name = "pi"\ntarget = "rpi4"\ntransport = "emulated"\n'
                                             f'[emulated]\nroot = "{arm64_root}"\n'))
    probe = pi.probe(timeout=120)
    assert probe.reachable and probe.arch == "aarch64" and probe.python.startswith("3.11"), probe.reason
    done = pi.run(["python3", "-c", "import numpy, onnxruntime, ai_edge_litert.interpreter, platform; "
                   "print(platform.machine())"], timeout=120)
    assert done.returncode == 0 and done.stdout.decode().strip() == "aarch64"
    # a relative root is taken from the device file's folder, as the shipped example does it
    example = devices.read(EXAMPLES / "emulated-pi4.toml")
    assert Path(example.emulated.root) == (EXAMPLES.parent.parent / ".hil" / "arm64-root").absolute()


@pytest.mark.parametrize("key, value", [
    ("host", "-oProxyCommand=touch /tmp/pwned"),
    ("host", "-p2222"),
    ("host", "10.0.0.12 -v"),
    ("host", "pi\nProxyCommand x"),
    ("host", "pi@10.0.0.12"),
    ("host", "host;reboot"),
    ("host", "10.0.0.300"),
    ("host", ""),
    ("host", "a..b"),
    ("host", "-lab.local"),
    ("user", "-oProxyCommand=x"),
    ("user", "pi root"),
    ("user", "pi@evil"),
    ("user", "pi\t"),
    ("user", ""),
    ("port", 0),
    ("port", 65536),
    ("identity", "-oProxyCommand=x"),
    ("identity", "~/.ssh/k\n"),
    ("known_hosts", "/lab/known hosts"),
    ("known_hosts", "-x"),
    ("python", "python3 -I"),
    ("python", "-c"),
    ("workdir", "-rf"),
    ("workdir", "edgetl\x00"),
    ("connect_timeout_s", 0),
])
def test_an_ssh_value_that_could_become_an_option_is_refused_naming_the_key(tmp_path, key, value):
    text = SSH.replace('host = "10.0.0.12"\n', "") if key == "host" else SSH
    file = _write(tmp_path, "bad", text + f"{key} = {json.dumps(value)}\n")
    with pytest.raises(ConfigError, match=f"ssh.{key} = ") as info:
        devices.read(file)
    assert str(file) in info.value.message and "allowed: " in str(info.value)


@pytest.mark.parametrize("host, user", [
    ("10.0.0.12", "pi"), ("::1", "ci-runner"), ("fe80::1%eth0", "edge_user"), ("lab-pi5.local", "pi.lab"),
    ("lab_pi", "_svc"), ("raspberrypi", None), ("192.168.1.1", "u1"),
])
def test_ordinary_hosts_and_users_are_accepted_and_stay_out_of_the_options(tmp_path, host, user):
    text = SSH.replace("10.0.0.12", host) + (f'user = "{user}"\n' if user else "") + "port = 2222\n"
    board = devices.read(_write(tmp_path, "ok", text))
    argv = board.argv(["true"])
    assert board.ssh.host == host and argv[-2] == (f"{user}@{host}" if user else host)
    assert argv[argv.index("--") + 1] == argv[-2]  # after `--`: a destination, never an option


def test_a_fleet_named_by_edgetl_devices_is_that_dir_alone_and_local_still_resolves(tmp_path, monkeypatch, capsys):
    fleet = tmp_path / "fleet"
    _write(fleet, "bench", 'name = "bench"\ntarget = "host-cpu"\ntransport = "local"\n')
    monkeypatch.setenv("EDGETL_DEVICES", str(fleet))
    monkeypatch.chdir(tmp_path)  # no ./devices here
    assert [d.name for d in devices.fleet()] == ["bench"]  # not the shipped `local`
    assert main(["devices", "--json"]) == 0
    assert [json.loads(line)["name"] for line in capsys.readouterr().out.splitlines()] == ["bench"]
    assert devices.load("local").file == devices.SHIPPED / "local.toml"  # by name it is still there
    assert devices.load("bench").file == fleet / "bench.toml"
    monkeypatch.delenv("EDGETL_DEVICES")  # nothing configured: the shipped files
    assert "local" in [d.name for d in devices.fleet()]

"""Deploy through the real transports: this machine, a real sshd on loopback, an emulated Pi 4."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from edgetl import devices
from edgetl.cli import main
from edgetl.compile import compile_bundle
from edgetl.devices.deploy import bundles_dir, deploy, runtime_argv
from edgetl.runtime import Model

pytestmark = pytest.mark.hil


def _device(folder: Path, name: str, text: str) -> devices.Device:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.toml").write_text(text)
    return devices.read(folder / f"{name}.toml")


@pytest.fixture
def bundle(compiled_run, tmp_path) -> Path:
    compile_bundle(compiled_run, "host-cpu", tmp_path / "signs")
    return tmp_path / "signs"


@pytest.fixture
def local(tmp_path) -> devices.Device:
    return _device(tmp_path / "fleet", "bench", 'name = "bench"\ntarget = "host-cpu"\ntransport = "local"\n'
                                                '[local]\nworkdir = "../board"\n')


def _active(device) -> Path:
    return Path(os.path.expanduser(bundles_dir(device))) / "signs"


def _other_model(bundle: Path, compiled_run: Path, out: Path) -> Path:
    """The same bundle with another backbone file (the run's int8 ONNX), its manifest updated."""
    shutil.copytree(bundle, out)
    int8 = json.loads((compiled_run / "quantize" / "onnx" / "quantize.json").read_text())["file"]
    shutil.copyfile(compiled_run / "quantize" / "onnx" / int8, out / "backbone.onnx")
    manifest = json.loads((out / "manifest.json").read_text())
    data = (out / "backbone.onnx").read_bytes()
    manifest["files"]["backbone.onnx"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return out


def test_deploy_to_this_machine_installs_the_runtime_once_and_activates_the_bundle(bundle, local, capsys):
    assert main(["deploy", str(bundle), "--device", str(local.file)]) == 0
    assert "signs (onnxruntime fp32) deployed" in capsys.readouterr().err
    active = _active(local)
    assert active.is_symlink() and (active / "manifest.json").is_file()
    assert (Path(local.workdir) / "runtime" / "edgetl" / "runtime" / "cli.py").is_file()  # the private runtime
    again = deploy(bundle, local)
    assert not again["changed"] and not again["runtime_installed"]  # same bundle, same build: nothing copied over
    model = Model.load(active)
    assert model.predict(np.zeros((*model.input_size, 3), np.uint8))[0].label in model.labels


def test_a_new_backbone_replaces_the_old_and_sets_its_adapted_heads_aside(bundle, local, compiled_run, tmp_path):
    deploy(bundle, local)
    heads = Path(f"{_active(local)}.heads")
    heads.mkdir()
    (heads / "CURRENT").write_text("head-000001.npz\n")
    first = os.readlink(_active(local))
    r = deploy(_other_model(bundle, compiled_run, tmp_path / "v2" / "signs"), local)
    assert r["changed"] and r["previous"] == first and os.readlink(_active(local)) != first
    assert not heads.exists() and (Path(r["heads_set_aside"]) / "CURRENT").is_file()  # moved, never deleted


def test_a_bundle_for_another_cpu_is_refused_before_anything_is_copied(compiled_run, local, tmp_path, capsys):
    compile_bundle(compiled_run, "rpi4", tmp_path / "pi")
    assert main(["deploy", str(tmp_path / "pi"), "--device", str(local.file)]) == 2
    assert "bundle pi is for rpi4 (aarch64)" in capsys.readouterr().err
    assert not Path(local.workdir).exists()


def test_over_real_ssh_a_killed_transfer_leaves_the_previous_bundle_active(sshd, bundle, compiled_run, tmp_path):
    device = _device(tmp_path / "fleet", "loopback", sshd.device_toml(workdir=str(tmp_path / "lab")))
    deploy(bundle, device)
    before = os.readlink(_active(device))
    v2 = _other_model(bundle, compiled_run, tmp_path / "v2" / "signs")
    archive = tmp_path / "v2.tar.gz"
    from edgetl.pack import archive as pack

    data = pack(v2, archive).read_bytes()
    argv = device.argv(runtime_argv(device, ["receive", bundles_dir(device), "signs", "--bytes", str(len(data)),
                                             "--sha256", hashlib.sha256(data).hexdigest()]))
    for cut in (len(data) // 2, 512 * (len(data) // 1024)):  # mid-stream, and on a tar block boundary
        ssh = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        ssh.stdin.write(data[:cut])
        ssh.stdin.flush()
        time.sleep(0.5)
        ssh.send_signal(signal.SIGKILL)  # the connection drops mid-copy
        ssh.communicate()
        assert os.readlink(_active(device)) == before
        assert Model.load(_active(device)).bundle.manifest["name"] == "signs"  # intact: every hash still checks
    r = deploy(v2, device)  # the next deploy cleans up what the dropped ones left and goes through
    assert r["changed"] and os.readlink(_active(device)) != before
    assert not list(Path(bundles_dir(device)).glob(".incoming-*"))


def test_a_stopped_sshd_is_an_unreachable_device_exit_3(tmp_path, bundle, capsys):
    from tests.standins import free_port

    device = _device(tmp_path / "fleet", "gone", f'name = "gone"\ntarget = "host-cpu"\ntransport = "ssh"\n'
                                                 f'[ssh]\nhost = "127.0.0.1"\nport = {free_port()}\n'
                                                 'connect_timeout_s = 2\n')
    assert main(["deploy", str(bundle), "--device", str(device.file)]) == 3
    assert "gone: " in capsys.readouterr().err


@pytest.mark.parametrize("transport", ["ssh", "emulated"])
def test_the_runtime_installs_and_the_head_adapts_on_the_device_and_survives_a_redeploy(transport, request,
                                                                                        compiled_run, signs,
                                                                                        tmp_path):
    if transport == "ssh":
        device = _device(tmp_path / "fleet", "lab", request.getfixturevalue("sshd").device_toml(
            "lab", workdir=str(tmp_path / "lab")))
        compile_bundle(compiled_run, "host-cpu", tmp_path / "b" / "signs")
    else:
        root = request.getfixturevalue("arm64_root")
        device = _device(tmp_path / "fleet", "pi", f'name = "pi"\ntarget = "rpi4"\ntransport = "emulated"\n'
                                                   f'[emulated]\nroot = "{root}"\nworkdir = "{tmp_path / "w"}"\n')
        compile_bundle(compiled_run, "rpi4", tmp_path / "b" / "signs")
    first = deploy(tmp_path / "b" / "signs", device, timeout=300)
    assert first["runtime_installed"] and first["changed"]  # by the device's own pip, into its work dir
    assert (Path(os.path.expanduser(device.workdir)) / "runtime" / "edgetl" / "runtime" / "receive.py").is_file()
    active = str(_active(device))
    # on the device, as its application would: city-b images, margin wide open so the commit is certain
    done = device.run(runtime_argv(device, ["adapt", active, "--data", str(signs["city_b"]), "--margin", "100",
                                            "--json"]), timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-500:]
    result = json.loads(done.stdout.decode().splitlines()[-1])
    assert result["committed"] and result["version"] == 1 and result["images"] == 24
    heads = Path(f"{active}.heads")
    assert (heads / "CURRENT").read_text().strip() == "head-000001.npz"
    again = deploy(tmp_path / "b" / "signs", device, timeout=300)
    assert not again["changed"] and again["heads_set_aside"] is None
    assert (heads / "CURRENT").read_text().strip() == "head-000001.npz"  # the device's learning stays in force


def test_a_signed_bundle_goes_live_only_with_the_devices_trusted_key(compiled_run, local, tmp_path, capsys):
    from edgetl import pack as bundles

    key, pub = bundles.keygen(tmp_path / "key")
    compile_bundle(compiled_run, "host-cpu", tmp_path / "signed" / "signs", sign=key)
    signed = str(tmp_path / "signed" / "signs")
    assert main(["deploy", signed, "--device", str(local.file)]) == 2  # the device has no key to check it with
    assert "is signed, and no public key was given" in capsys.readouterr().err
    assert not _active(local).exists()
    assert main(["deploy", signed, "--device", str(local.file), "--device-key", str(pub), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["changed"] and r["bundle"] == "signs" and Path(r["active"]) == _active(local)


def test_deploy_to_a_fleet_goes_to_every_device_built_for_the_bundle_and_exits_3_for_one_unreachable(
        bundle, tmp_path, capsys):
    from tests.standins import free_port

    fleet = tmp_path / "lab"
    bench = _device(fleet, "bench", 'name = "bench"\ntarget = "host-cpu"\ntransport = "local"\n'
                                    '[local]\nworkdir = "../bench-board"\n')
    _device(fleet, "pi", 'name = "pi"\ntarget = "rpi4"\ntransport = "local"\n')  # another CPU: not sent there
    _device(fleet, "gone", f'name = "gone"\ntarget = "host-cpu"\ntransport = "ssh"\n'
                           f'[ssh]\nhost = "127.0.0.1"\nport = {free_port()}\nconnect_timeout_s = 2\n')
    assert main(["deploy", str(bundle), "--devices", str(fleet)]) == 3  # the lab, not the bundle
    captured = capsys.readouterr()
    table = captured.out
    assert "bench" in table and "deployed" in table and "gone" in table and "unreachable" in table
    assert "not built for pi" in captured.err and "Traceback" not in captured.err
    assert _active(bench).is_symlink()
    (fleet / "gone.toml").unlink()
    assert main(["deploy", str(bundle), "--devices", str(fleet), "--json"]) == 0
    (r,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert r["device"] == "bench" and r["status"] == "already active" and not r["changed"]
    with pytest.raises(SystemExit) as info:  # one or the other
        main(["deploy", str(bundle), "--devices", str(fleet), "--device", "local"])
    assert info.value.code == 2 and "not allowed with" in capsys.readouterr().err

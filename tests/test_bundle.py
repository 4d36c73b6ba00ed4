import io
import json
import shutil
import tarfile

import numpy as np
import pytest

from edgetl import bundle
from edgetl.cli import main
from edgetl.compile import compile_bundle
from edgetl.errors import ConfigError
from edgetl.runtime import engines
from edgetl.runtime.bundle import BundleError, open_bundle

HOST = "x86_64"


@pytest.fixture
def host_bundle(compiled_run, tmp_path):
    compile_bundle(compiled_run, "host-cpu", tmp_path / "host")
    return tmp_path / "host"


def test_a_bundle_holds_a_manifest_with_every_file_hashed_and_what_the_device_needs(host_bundle, compiled_run):
    m = json.loads((host_bundle / "manifest.json").read_text())
    assert m["schema_version"] == 1 and m["target"] == "host-cpu" and m["created_by"].startswith("edgetl ")
    assert set(m["files"]) == {m["model"], "head.npz", "checkset.npz"}
    assert all(len(f["sha256"]) == 64 for f in m["files"].values())
    # what `edgetl check` scores on the device: 4 test images per class, as pixels at the model's size
    assert m["checkset"] == {"file": "checkset.npz", "images": 16, "from": "run test split", "per_class": 4}
    with np.load(host_bundle / "checkset.npz") as checks:
        assert checks["pixels"].shape == (16, *m["preprocess"]["size"], 3) and checks["pixels"].dtype == np.uint8
        assert sorted(set(checks["labels"])) == m["labels"]
    assert m["labels"] == json.loads((compiled_run / "labels.json").read_text())
    assert m["preprocess"]["size"] and m["inputs"][0]["shape"] and m["budgets"]["latency_p95_ms"] == 50.0
    assert m["source_run"]["backbone"] == "efficientnet_lite0" and m["accuracy"]["top1"] > 0
    b = open_bundle(host_bundle, machine=HOST)
    assert engines.load(b.model).run(np.zeros([1, *m["inputs"][0]["shape"][1:]], np.float32)).shape[0] == 1


def test_the_archive_is_reproducible_and_verifies(compiled_run, tmp_path):
    compile_bundle(compiled_run, "rpi4", tmp_path / "a" / "rpi4")
    compile_bundle(compiled_run, "rpi4", tmp_path / "b" / "rpi4")
    first, second = (tmp_path / d / "rpi4.tar.gz" for d in "ab")
    assert first.read_bytes() == second.read_bytes()
    assert open_bundle(first, machine="aarch64").target == "rpi4"


def test_precision_follows_the_measured_latency_never_int8_blindly(compiled_run, tmp_path):
    record_file = compiled_run / "quantize" / "onnx" / "quantize.json"
    record = json.loads(record_file.read_text())
    record["int8_over_fp32_latency"] = 1.4  # as mobilenet_v3_small measured here: int8 slower
    record_file.write_text(json.dumps(record))
    slow = compile_bundle(compiled_run, "host-cpu", tmp_path / "slow")
    assert slow["precision"] == "fp32" and "1.40x" in slow["choice"]
    record["int8_over_fp32_latency"] = 0.6
    record_file.write_text(json.dumps(record))
    fast = compile_bundle(compiled_run, "host-cpu", tmp_path / "fast")
    assert fast["precision"] == "int8" and fast["accuracy"]["top1"] == record["int8_top1"]


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "head.npz").unlink(), "listed file missing: head.npz"),
    (lambda d: (d / "notes.txt").write_text("hi"), "file not in the manifest: notes.txt"),
    (lambda d: (d / "head.npz").write_bytes(b"x" + (d / "head.npz").read_bytes()[1:]),
     "head.npz does not match its sha256"),
    (lambda d: _edit_manifest(d, schema_version=99), "unknown bundle schema_version 99"),
    (lambda d: _edit_manifest(d, files={"../../etc/passwd": {"sha256": "0"}}), "path outside the bundle"),
    (lambda d: (d / "manifest.json").unlink(), "has no manifest.json"),
])
def test_a_damaged_bundle_is_refused_naming_what_failed(host_bundle, damage, message, capsys):
    damage(host_bundle)
    with pytest.raises(BundleError, match=message):
        open_bundle(host_bundle, machine=HOST)
    assert main(["bundle", "verify", str(host_bundle)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


def _edit_manifest(folder, **changes):
    m = json.loads((folder / "manifest.json").read_text())
    m.update(changes)
    (folder / "manifest.json").write_text(json.dumps(m))


def test_a_bundle_for_another_machine_is_refused(compiled_run, tmp_path, capsys):
    compile_bundle(compiled_run, "rpi4", tmp_path / "rpi4")
    with pytest.raises(BundleError, match=r"for rpi4 \(aarch64\), and this machine is x86_64"):
        open_bundle(tmp_path / "rpi4", machine=HOST)
    assert main(["bundle", "verify", str(tmp_path / "rpi4")]) == 0  # checked before flashing: arch not required
    assert main(["bundle", "verify", str(tmp_path / "rpi4"), "--this-machine"]) == 2


def _tar_with(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)


@pytest.mark.parametrize("name, kind, message", [
    ("../evil.txt", tarfile.REGTYPE, "would land outside the bundle"),
    ("/etc/evil", tarfile.REGTYPE, "would land outside the bundle"),
    ("b/link", tarfile.SYMTYPE, "is a link or device"),
])
def test_an_archive_that_would_escape_is_refused_before_unpacking(tmp_path, name, kind, message):
    info = tarfile.TarInfo(name)
    info.type = kind
    data = b"x"
    if kind == tarfile.SYMTYPE:
        info.linkname, data = "/etc/passwd", None
    else:
        info.size = 1
    _tar_with(tmp_path / "evil.tar.gz", [(info, data)])
    with pytest.raises(BundleError, match=message):
        open_bundle(tmp_path / "evil.tar.gz", machine="any", unpack_to=tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


def test_signed_bundles_verify_with_the_right_key_only(compiled_run, tmp_path, capsys):
    key, pub = bundle.keygen(tmp_path / "key")
    _, other = bundle.keygen(tmp_path / "other")
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    compile_bundle(compiled_run, "host-cpu", tmp_path / "signed", sign=key)
    b = open_bundle(tmp_path / "signed", key=pub, machine=HOST)
    assert b.signed and b.signature_checked
    assert main(["bundle", "verify", str(tmp_path / "signed.tar.gz"), "--key", str(pub)]) == 0
    with pytest.raises(BundleError, match="signature does not match"):
        open_bundle(tmp_path / "signed", key=other, machine=HOST)
    _edit_manifest(tmp_path / "signed", budgets={"latency_p95_ms": 1e9})  # hashes still fine: only the sig sees it
    with pytest.raises(BundleError, match="signature does not match"):
        open_bundle(tmp_path / "signed", key=pub, machine=HOST)
    compile_bundle(compiled_run, "host-cpu", tmp_path / "unsigned")
    with pytest.raises(BundleError, match="is not signed"):
        open_bundle(tmp_path / "unsigned", key=pub, machine=HOST)


def test_a_bad_signing_key_fails_before_anything_is_written(compiled_run, tmp_path):
    (tmp_path / "key").write_text("not a key")
    with pytest.raises(ConfigError, match="not an unencrypted PEM or OpenSSH private key"):
        compile_bundle(compiled_run, "host-cpu", tmp_path / "b", sign=tmp_path / "key")
    assert not (tmp_path / "b").exists() and not (tmp_path / "b.tar.gz").exists()


def test_recompiling_replaces_the_bundle_whole(compiled_run, tmp_path):
    compile_bundle(compiled_run, "host-cpu", tmp_path / "b")
    (tmp_path / "b" / "stray").write_text("x")
    compile_bundle(compiled_run, "host-cpu", tmp_path / "b")
    assert open_bundle(tmp_path / "b", machine=HOST) and not (tmp_path / "b" / "stray").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cli_compiles_and_refuses_a_model_file_bundle(compiled_run, tmp_path, capsys):
    assert main(["compile", str(compiled_run), "--target", "rpi5", "--out", str(tmp_path / "pi")]) == 0
    assert (tmp_path / "pi.tar.gz").is_file() and "rpi5" in capsys.readouterr().out
    model = compiled_run / "export" / "onnx" / "backbone.onnx"
    assert main(["compile", str(model), "--target", "host-cpu"]) == 2
    assert "use --dry-run" in capsys.readouterr().err
    assert main(["compile", str(model), "--target", "host-cpu", "--dry-run"]) == 0
    assert "all" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "pi")

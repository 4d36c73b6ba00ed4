import io
import json
import shutil
import tarfile

import numpy as np
import pytest

from edgetl import pack
from edgetl.cli import main
from edgetl.compile import compile_bundle
from edgetl.errors import ConfigError, OutputError
from edgetl.runtime import Model, engines
from edgetl.runtime.verify import BundleError, open_bundle

HOST = "x86_64"


@pytest.fixture
def host_bundle(compiled_run, tmp_path):
    compile_bundle(compiled_run, "host-cpu", tmp_path / "host")
    return tmp_path / "host"


def test_a_bundle_holds_a_manifest_with_every_file_hashed_and_what_the_device_needs(host_bundle, compiled_run):
    m = json.loads((host_bundle / "manifest.json").read_text())
    assert m["schema_version"] == 1 and m["target"] == "host-cpu" and m["created_by"].startswith("edgetl ")
    assert set(m["files"]) == {m["model"], "head.npz", "checkset.npz", "features.npz"}
    assert m["features"] == "features.npz"  # what unlabelled frames on the device move the head's statistics from
    outputs = m["preprocess"]["outputs"]  # the backbone's output: the embedding, then the taps, as the model gives it
    assert outputs[0]["name"] == "embedding" and len(outputs) > 1
    assert sum(o["dim"] for o in outputs) == m["outputs"][0]["shape"][-1]
    assert all(len(f["sha256"]) == 64 for f in m["files"].values())
    # what `edgetl check` scores on the device: 100 images asked (25 a class), all 24 test images, as pixels
    assert m["checkset"] == {"file": "checkset.npz", "images": 24, "from": "run test split", "per_class": 25,
                             "capped_at": None}
    with np.load(host_bundle / "checkset.npz") as checks:
        assert checks["pixels"].shape == (24, *m["preprocess"]["size"], 3) and checks["pixels"].dtype == np.uint8
        assert sorted(set(checks["labels"])) == m["labels"]
    assert m["labels"] == json.loads((compiled_run / "labels.json").read_text())
    assert m["preprocess"]["size"] and m["inputs"][0]["shape"] and m["budgets"]["latency_p95_ms"] == 50.0
    assert m["source_run"]["backbone"] == "efficientnet_lite0" and m["accuracy"]["top1"] > 0
    b = open_bundle(host_bundle, machine=HOST)
    assert m["inputs"][0]["dtype"] == "uint8"  # the model takes the frame itself
    assert engines.load(b.model).run(np.zeros([1, *m["inputs"][0]["shape"][1:]], np.uint8)).shape[0] == 1


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
    assert slow["precision"] == "fp32" and "int8 was slower than fp32" in slow["choice"]
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
    key, pub = pack.keygen(tmp_path / "key")
    _, other = pack.keygen(tmp_path / "other")
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


def test_recompiling_replaces_the_bundle_whole_only_with_force_and_never_a_file_it_did_not_write(
        compiled_run, tmp_path):
    compile_bundle(compiled_run, "host-cpu", tmp_path / "b")
    with pytest.raises(OutputError, match="already exists and holds an edgetl bundle.*--force"):
        compile_bundle(compiled_run, "host-cpu", tmp_path / "b")
    (tmp_path / "b" / "head.npz").write_bytes(b"changed")  # still a bundle (damaged): --force replaces it whole
    compile_bundle(compiled_run, "host-cpu", tmp_path / "b", force=True)
    assert open_bundle(tmp_path / "b", machine=HOST)
    (tmp_path / "b" / "notes.txt").write_text("mine")  # a file edgetl did not write: never deleted
    with pytest.raises(OutputError, match="files edgetl did not write"):
        compile_bundle(compiled_run, "host-cpu", tmp_path / "b", force=True)
    assert (tmp_path / "b" / "notes.txt").read_text() == "mine"
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


def _strings(value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def test_the_manifest_names_no_path_of_the_build_machine(quantized_run, tmp_path):
    texts = []
    for copy in ("a", "b"):  # the same run in two places gives the same manifest
        run = shutil.copytree(quantized_run, tmp_path / copy / "work" / "signs")
        compile_bundle(run, "host-cpu", tmp_path / copy / "out" / "host")
        texts.append((tmp_path / copy / "out" / "host" / "manifest.json").read_text())
    assert texts[0] == texts[1]
    assert str(tmp_path) not in texts[0] and str(quantized_run) not in texts[0]
    m = json.loads(texts[0])
    assert not [s for s in _strings(m) if s.startswith("/")]  # nothing absolute anywhere
    assert m["source_run"]["name"] == "signs" and len(m["source_run"]["id"]) == 16


def _verify(capsys, *args):
    code = main(["bundle", "verify", *map(str, args)])
    out = capsys.readouterr()
    return code, out.err.strip()


def _resign(folder, key, **changes):
    """The manifest changed and signed again with `key`, as someone holding that key could."""
    m = json.loads((folder / "manifest.json").read_text())
    m.update(changes)
    text = json.dumps(m, indent=2, sort_keys=True).encode() + b"\n"
    (folder / "manifest.json").write_bytes(text)
    (folder / "manifest.json.sig").write_bytes(pack._private_key(key).sign(text))


def test_a_signed_bundle_carries_its_signers_key_and_verify_checks_it_without_key(compiled_run, tmp_path, capsys):
    key, pub = pack.keygen(tmp_path / "key")
    compile_bundle(compiled_run, "host-cpu", tmp_path / "a" / "signed", sign=key)
    compile_bundle(compiled_run, "host-cpu", tmp_path / "b" / "signed", sign=key)
    assert (tmp_path / "a" / "signed.tar.gz").read_bytes() == (tmp_path / "b" / "signed.tar.gz").read_bytes()
    signed = tmp_path / "a" / "signed"
    signer = json.loads((signed / "manifest.json").read_text())["signer"]
    assert signer["id"].startswith("ed25519:") and len(signer["key"]) == 44  # 32 raw bytes, base64
    code, err = _verify(capsys, signed)
    assert code == 0 and f"signature matches its embedded key {signer['id']}; trust needs --key" in err
    code, err = _verify(capsys, signed, "--key", pub)
    assert code == 0 and f"signature verified with --key {signer['id']}" in err
    # the device trusts only the key it was given, never the embedded one
    with pytest.raises(BundleError, match="is signed, and no public key was given"):
        Model.load(signed, machine="any")

    _edit_manifest(signed, budgets={"latency_p95_ms": 1e9})  # hashes still fine: only the signature sees it
    code, err = _verify(capsys, signed)
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"signature does not match the manifest and the key it names ({signer['id']})" in err
    code, err = _verify(capsys, tmp_path / "b" / "signed.tar.gz")
    assert code == 0  # the archive beside it is untouched


def test_verify_says_when_the_key_given_is_not_the_signers(compiled_run, tmp_path, capsys):
    key, _ = pack.keygen(tmp_path / "key")
    other_key, other = pack.keygen(tmp_path / "other")
    compile_bundle(compiled_run, "host-cpu", tmp_path / "signed", sign=key)
    embedded = json.loads((tmp_path / "signed" / "manifest.json").read_text())["signer"]["id"]
    code, err = _verify(capsys, tmp_path / "signed", "--key", other)
    assert code == 2 and f"it is signed by {embedded}, and the key given ({other})" in err
    # re-signed by another key that leaves the first signer named: not what it says it is
    _resign(tmp_path / "signed", other_key)
    code, err = _verify(capsys, tmp_path / "signed", "--key", other)
    assert code == 2 and f"names signer {embedded}, and it is signed by the key given" in err
    code, err = _verify(capsys, tmp_path / "signed")
    assert code == 2 and "key it names" in err


def test_a_signed_bundle_naming_no_signer_is_not_called_ok_without_a_key(compiled_run, tmp_path, capsys):
    key, pub = pack.keygen(tmp_path / "key")
    compile_bundle(compiled_run, "host-cpu", tmp_path / "old", sign=key)
    _resign(tmp_path / "old", key, signer=None)  # as an edgetl before embedded signers signed it
    code, err = _verify(capsys, tmp_path / "old")
    assert code == 2 and "names no signer key" in err and "hint: pass --key" in err
    assert _verify(capsys, tmp_path / "old", "--key", pub)[0] == 0


def test_a_signature_removed_from_a_bundle_that_names_its_signer_is_refused(compiled_run, tmp_path, capsys):
    key, _ = pack.keygen(tmp_path / "key")
    compile_bundle(compiled_run, "host-cpu", tmp_path / "signed", sign=key)
    (tmp_path / "signed" / "manifest.json.sig").unlink()
    code, err = _verify(capsys, tmp_path / "signed")
    assert code == 2 and "manifest.json.sig is missing" in err


def test_a_missing_trusted_key_file_is_one_line_naming_it(host_bundle, tmp_path, monkeypatch, capsys):
    gone = tmp_path / "keys" / "fleet.pub"
    monkeypatch.setenv("EDGETL_BUNDLE_KEY", str(gone))
    with pytest.raises(BundleError, match=f"cannot read the public key {gone} named by \\$EDGETL_BUNDLE_KEY"):
        Model.load(host_bundle, machine="any")
    monkeypatch.delenv("EDGETL_BUNDLE_KEY")
    code, err = _verify(capsys, host_bundle, "--key", gone)
    assert code == 2 and str(gone) in err and "EDGETL_BUNDLE_KEY" in err and len(err.splitlines()) == 1
    code = main(["compile", str(host_bundle.parent / "run"), "--target", "host-cpu", "--sign", str(tmp_path / "no"),
                 "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert code == 2 and f"cannot read the signing key {tmp_path / 'no'}" in err and "Traceback" not in err


def test_keygen_makes_the_key_dir_as_the_readme_writes_it_and_never_overwrites(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["bundle", "keygen", "keys/fleet"]) == 0
    private, public = tmp_path / "keys" / "fleet", tmp_path / "keys" / "fleet.pub"
    assert oct(private.stat().st_mode & 0o777) == "0o600" and public.is_file()
    assert oct((tmp_path / "keys").stat().st_mode & 0o777) == "0o700"  # a new dir holding a private key
    before = private.read_bytes()
    capsys.readouterr()
    assert main(["bundle", "keygen", "keys/fleet"]) == 2
    assert "never overwritten" in capsys.readouterr().err and private.read_bytes() == before


def test_an_archive_opened_without_a_dir_of_ones_own_leaves_nothing_behind(compiled_run, tmp_path, monkeypatch):
    import gc
    import tempfile

    compile_bundle(compiled_run, "rpi4", tmp_path / "out" / "rpi4")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    opened = open_bundle(tmp_path / "out" / "rpi4.tar.gz", machine="aarch64")
    assert opened.model.is_file() and opened.model.is_relative_to(scratch)
    with pytest.raises(BundleError, match="this machine is"):
        open_bundle(tmp_path / "out" / "rpi4.tar.gz", machine="x86_64")  # refused: its unpacked copy goes at once
    assert len(list(scratch.iterdir())) == 1
    del opened
    gc.collect()
    assert list(scratch.iterdir()) == []

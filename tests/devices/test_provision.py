"""`deploy --provision`: a bare emulated Pi 4 (no numpy, no engine) gets them from wheels fetched here,
and the wheel cache those come from: pip download for the device's platform, kept whole."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgetl.cli import main
from edgetl.compile import compile_bundle
from edgetl.devices import provision
from edgetl.devices.deploy import runtime_argv
from edgetl.devices.provision import Need
from edgetl.errors import EdgetlError

LOOSE = "[budgets]\nlatency_p95_ms = 1000\nmin_top1 = 0\nmax_rss_mb = 8000\n"


@pytest.fixture
def wheel_cache(arm64_root, tmp_path, monkeypatch) -> Path:
    """The cache beside the root, seeded with the wheels tools/arm64-root.sh kept (a root built before it kept
    them: the first run downloads them there, the next ones do not); a private one where that is read-only."""
    cache = arm64_root.parent if os.access(arm64_root.parent, os.W_OK) else tmp_path / "cache"
    monkeypatch.setenv("EDGETL_CACHE", str(cache))
    return cache


@pytest.fixture
def bare_pi(arm64_root, tmp_path) -> Path:
    """The emulated Pi 4 with its pip packages out of sight: its site is a dir that is not there."""
    file = tmp_path / "fleet" / "bare.toml"
    file.parent.mkdir()
    file.write_text(f'name = "bare"\ntarget = "rpi4"\ntransport = "emulated"\n[emulated]\nroot = "{arm64_root}"\n'
                    f'site = "opt/no-site"\nworkdir = "{tmp_path / "board"}"\n{LOOSE}')
    return file


@pytest.mark.hil
def test_a_bare_board_is_refused_naming_what_it_lacks_then_provisioned_and_checked(
        bare_pi, wheel_cache, compiled_run, tmp_path, capsys):
    manifest = compile_bundle(compiled_run, "rpi4", tmp_path / "b" / "signs")
    bundle = str(tmp_path / "b" / "signs")
    engine = provision.needs(manifest.engine)[-1].name  # onnxruntime or ai-edge-litert
    assert main(["deploy", bundle, "--device", str(bare_pi)]) == 2
    err = capsys.readouterr().err
    assert f"bare: numpy, {engine} missing on the device (Python 3.11" in err and "--provision" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "board").exists()  # refused before anything was copied

    assert main(["deploy", bundle, "--device", str(bare_pi), "--provision", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert [p.split("==")[0] for p in r["provisioned"]] == ["numpy", engine] and r["changed"]
    packages = tmp_path / "board" / "packages"
    assert packages.is_symlink() and (packages / "numpy").is_dir()  # private: the device's Python is untouched
    assert not list((tmp_path / "board").glob(".provision-*"))

    assert main(["check", bundle, "--device", str(bare_pi), "--runs", "3", "--report", str(tmp_path / "report")]) == 0
    (result,) = json.loads((tmp_path / "report" / "report.json").read_text())["results"]
    assert {v["budget"]: v["status"] for v in result["verdicts"]}["min_top1"] == "pass"  # it ran on the device

    assert main(["deploy", bundle, "--device", str(bare_pi), "--provision"]) == 0
    assert "nothing to provision" in capsys.readouterr().err


@pytest.mark.hil
def test_a_device_whose_python_has_no_wheels_is_one_line_and_leaves_no_cache(bare_pi, arm64_root, tmp_path,
                                                                              monkeypatch):
    monkeypatch.setenv("EDGETL_CACHE", str(tmp_path / "cache"))
    with pytest.raises(EdgetlError) as info:  # no CPython 2.5 wheel of numpy exists, nor of anything else
        provision.fetch([Need("numpy", ">=1.24")], "aarch64", "2.5", ["glibc", "2.36"], tmp_path / "wheels")
    message = str(info.value)
    assert "no wheel of numpy" in message and "aarch64, Python 2.5" in message and "\n" not in message
    assert info.value.hint and not (tmp_path / "cache").exists()


def test_the_download_is_for_the_devices_platform_and_python_and_binary_only(tmp_path):
    tags = provision.platform_tags("aarch64", ["glibc", "2.19"])
    assert tags == ["manylinux_2_19_aarch64", "manylinux_2_18_aarch64", "manylinux_2_17_aarch64",
                    "manylinux2014_aarch64"]
    argv = provision.download_argv(["numpy>=1.24"], tags[-2:], "3.11", tmp_path / "d", tmp_path / "none", False)
    assert argv == [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                    "--only-binary=:all:", "--implementation", "cp", "--python-version", "3.11",
                    "--platform", "manylinux_2_17_aarch64", "--platform", "manylinux2014_aarch64",
                    "--dest", str(tmp_path / "d"), "numpy>=1.24"]
    with pytest.raises(EdgetlError, match="libc musl 1.2"):
        provision.platform_tags("aarch64", ["musl", "1.2"])


def test_a_wheel_the_cache_lacks_is_downloaded_once_and_kept_whole(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGETL_CACHE", str(tmp_path / "cache"))
    calls = []
    real = subprocess.run
    monkeypatch.setattr(provision.subprocess, "run", lambda argv, **kw: calls.append(argv) or real(argv, **kw))
    want = [Need("six", ">=1.16")]  # small and pure: a wheel for every platform
    first = provision.fetch(want, "aarch64", "3.11", ["glibc", "2.36"], tmp_path / "one")
    if calls[-1][-1] != "six>=1.16" or not first:
        pytest.fail(f"pip download was not run as expected: {calls}")
    cache = tmp_path / "cache" / "wheels" / "aarch64-cp3.11"
    assert sorted(os.listdir(cache)) == [w.name for w in first]  # whole wheels, no partial file beside them
    assert "--no-index" not in calls[0]
    calls.clear()
    again = provision.fetch(want, "aarch64", "3.11", ["glibc", "2.36"], tmp_path / "two")
    assert [w.name for w in again] == [w.name for w in first]
    assert len(calls) == 1 and "--no-index" in calls[0]  # the second board: from the cache, offline
    assert provision.versions(again, want)[0].startswith("six==")


def test_numpy_and_the_engine_are_what_the_runtime_needs_the_engine_at_the_hosts_version():
    import importlib.metadata

    numpy, ort = provision.needs("onnxruntime")
    assert numpy.name == "numpy" and numpy.pin is None and numpy.specifier.startswith(">=")
    assert ort.name == "onnxruntime" and ort.pin == importlib.metadata.version("onnxruntime")
    assert [n.name for n in provision.needs("litert")] == ["numpy", "ai-edge-litert"]
    assert provision.asked(provision.needs("litert"))[-1] == "tflite-runtime"  # stands in for LiteRT
    assert not Need("numpy", ">=1.24", found="1.21.5").met and Need("numpy", ">=1.24", found="2.0.1").met
    assert str(Need("numpy", ">=1.24", found="1.21.5")) == "numpy 1.21.5 (needs >=1.24)"


def test_the_runtime_finds_what_was_provisioned_first(tmp_path):
    from edgetl import devices

    (tmp_path / "d.toml").write_text(f'name = "d"\ntarget = "host-cpu"\ntransport = "local"\n'
                                     f'[local]\nworkdir = "{tmp_path / "w"}"\n')
    argv = runtime_argv(devices.read(tmp_path / "d.toml"), ["verify"])
    assert f"{tmp_path / 'w'}/runtime" in argv[2] and f"{tmp_path / 'w'}/packages" in argv[2]


def test_the_device_takes_the_wheels_in_flat_and_swaps_them_in_whole(tmp_path):
    import hashlib
    import io
    import tarfile

    from edgetl.devices.deploy import BOOTSTRAP

    def bootstrap(*args, input=None):
        done = subprocess.run([sys.executable, "-c", BOOTSTRAP, *map(str, args)], input=input, capture_output=True,
                              timeout=60)
        return done.returncode, json.loads(done.stdout)

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in ("tiny-1.0-py3-none-any.whl", "../outside.whl", "notes.txt"):
            info = tarfile.TarInfo(name)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"zip!"))
    data, work = buf.getvalue(), tmp_path / "work"
    work.mkdir()
    assert bootstrap("wheels", work, "k1", len(data), "0" * 64, input=data)[0] == 2  # damaged: refused
    code, took = bootstrap("wheels", work, "k1", len(data), hashlib.sha256(data).hexdigest(), input=data)
    assert code == 0 and os.listdir(took["wheels"]) == ["tiny-1.0-py3-none-any.whl"]  # no path, no other file
    assert not (tmp_path / "outside.whl").exists()
    dist = Path(took["site"]) / "tiny-1.0.dist-info"  # what the device's pip installs into `site`
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: Tiny\nVersion: 1.0\n")
    assert bootstrap("packages", work, "k1") == (0, {"packages": "k1"})
    code, status = bootstrap("status", work, "tiny", "numpy", "not-here")
    assert status["provisioned"] == {"tiny": "1.0"} and status["packages"]["tiny"] == "1.0"
    assert status["packages"]["not-here"] is None and status["libc"][0] in ("glibc", "")
    assert sorted(os.listdir(work)) == [".packages-k1", "packages"]  # the staging dir is gone

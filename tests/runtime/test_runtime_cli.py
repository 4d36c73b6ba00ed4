"""`python -m edgetl.runtime` and `edgetl predict|adapt` on a real bundle: damaged heads recovered with
edgetl itself, arguments refused up front, unreadable images skipped, a full disk, the head scored."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgetl.compile import compile_bundle
from edgetl.errors import ConfigError
from edgetl.runtime import Head, Model
from edgetl.runtime.cli import main as device_main
from edgetl.runtime.heads import HeadStore
from edgetl.runtime.images import InputError
from tests.runtime.test_heads import fill
from tests.standins import tiny_fs


@pytest.fixture(scope="module")
def built(quantized_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runtime-cli") / "host"
    compile_bundle(quantized_run, "host-cpu", out)
    return out


@pytest.fixture
def bundle(built, tmp_path) -> Path:
    """A private copy of the bundle dir (its head store beside it, in the test's tmp dir)."""
    return Path(shutil.copytree(built, tmp_path / "host"))


def _store(bundle: Path) -> HeadStore:
    manifest = json.loads((bundle / "manifest.json").read_text())
    return HeadStore.beside(bundle, Head.read(bundle / "head.npz", tuple(manifest["labels"])))


def _commit_copies(bundle: Path, n: int) -> HeadStore:
    """Heads 1..n: the bundle's own head, committed n times (as adapts would leave them)."""
    store = _store(bundle)
    for _ in range(n):
        store.commit(store.base, {})
    return store


def _damage(store: HeadStore, version: int, kind: str) -> None:
    path, current = store.root / f"head-{version:06d}.npz", store.root / "CURRENT"
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "nan":
        W = store.base.W.copy()
        W[0, 0] = np.nan
        np.savez(path, W=W, b=store.base.b, labels=np.asarray(store.base.labels), version=np.int64(version))
    elif kind == "current-garbage":
        current.write_bytes(b"\x89garbage\xff\n")
    elif kind == "current-missing":
        path.unlink()
    elif kind == "current-outside":
        current.write_text("../../etc/passwd\n")
    elif kind == "current-absolute":
        current.write_text(f"{path}\n")  # an absolute path, even to a real head, is not used
    else:
        raise AssertionError(kind)


KINDS = ["truncated", "nan", "current-garbage", "current-missing", "current-outside", "current-absolute"]


def _one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_head_in_force_is_refused_then_rollback_and_adapt_recover_with_edgetl_itself(
        bundle, signs, kind, capsys):
    from edgetl.cli import main as host_main

    store = _commit_copies(bundle, 3)
    _damage(store, 3, kind)
    image = str(next((signs["test"] / sorted(os.listdir(signs["test"]))[0]).iterdir()))
    assert device_main(["predict", str(bundle), image]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert f"edgetl adapt {bundle} --rollback" in line
    with pytest.raises(ConfigError):
        Model.load(bundle)

    # the command the hint names works, and says what it did; nothing damaged is deleted
    assert host_main(["adapt", str(bundle), "--rollback"]) == 0
    said = capsys.readouterr().err
    back = 3 if kind in ("current-garbage", "current-outside", "current-absolute") else 2
    assert f"rolled back to head {back}" in said and f"head version {back} in force" in said
    assert Model.load(bundle).head_version == back
    kept = sorted(p.name for p in store.root.iterdir())
    assert ("head-000003.npz.damaged" in kept) if kind in ("truncated", "nan") else \
        (kind == "current-missing" or "CURRENT.damaged" in kept)

    # and a new adapt trains past a damaged head in force, naming the head it trained from
    store.commit(store.base, {})  # head 4 ...
    _damage(store, 4, kind)  # ... damaged the same way
    assert device_main(["adapt", str(bundle), "--data", str(signs["test"]), "--margin", "100"]) == 0
    said = capsys.readouterr().out
    parent = 4 if kind in ("current-garbage", "current-outside", "current-absolute") else back
    assert f"adapting from head {parent}: " in said and "head version 5" in said, said
    again = Model.load(bundle)
    assert again.head_version == 5 and store.history()[-1]["parent"] == parent


def test_bad_arguments_are_refused_before_any_work(bundle, capsys):
    missing = bundle.with_name("nope")  # had any work started, this would be the error
    for argv, says in (
            (["predict", str(missing), "x.png", "--top", "0"], "--top 0"),
            (["predict", str(missing), "x.png", "--top", "-2"], "--top -2"),
            (["adapt", str(missing), "--data", ".", "--margin", "nan"], "--margin nan"),
            (["adapt", str(missing), "--data", ".", "--margin", "-1"], "--margin -1"),
            (["adapt", str(missing), "--data", ".", "--seed", "-1"], "--seed -1"),
            (["adapt", str(missing), "--data", ".", "--wait", "inf"], "--wait inf"),
            (["adapt", str(missing), "--rollback", "--unguarded"], "--unguarded"),
            (["adapt", str(bundle), "--data", str(missing)], "is not a directory"),
            (["measure", str(missing), "--warmup", "-1"], "--warmup -1"),
            (["measure", str(missing), "--duration", "0"], "--duration 0"),
            (["receive", str(missing), "host", "--bytes", "-1", "--sha256", "0" * 64], "--bytes -1")):
        assert device_main(argv) == 2, argv
        assert says in _one_line_error(capsys.readouterr().err), argv
    assert not missing.exists()
    model = Model.load(bundle)
    with pytest.raises(ConfigError, match="top_k=0"):
        model.predict(np.zeros((8, 8, 3), np.uint8), top_k=0)


def test_empty_or_degenerate_arrays_are_refused_not_labelled(bundle):
    model = Model.load(bundle)
    h, w = model.input_size
    for bad in (np.zeros((0, 0, 3), np.uint8), np.zeros((0, w, 3), np.uint8), np.zeros((h, 0), np.uint8),
                np.zeros((0, h, w, 3), np.uint8), [np.zeros((0, 0, 3), np.uint8)]):
        with pytest.raises(InputError, match="empty|no images given"):
            model.predict(bad)
        with pytest.raises(InputError, match="empty|no images given"):
            model.embed(bad)


def test_verbose_shows_the_traceback_and_only_then(tmp_path, capsys):
    assert device_main(["adapt", str(tmp_path / "nope"), "--rollback"]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert device_main(["adapt", str(tmp_path / "nope"), "--rollback", "--verbose"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")


def test_unreadable_images_in_adapt_data_are_skipped_and_counted(bundle, signs, tmp_path, capsys):
    data = Path(shutil.copytree(signs["test"], tmp_path / "data"))
    bad = [sorted(folder.iterdir())[0] for folder in sorted(data.iterdir())[:2]]
    bad[0].write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    bad[1].write_bytes(b"")
    assert device_main(["adapt", str(bundle), "--data", str(data), "--margin", "100", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["committed"] and r["skipped"] == 2 and r["images"] == 22
    assert sorted(s.split(":")[0] for s in r["skipped_files"]) == sorted(map(str, bad))
    assert device_main(["adapt", str(bundle), "--data", str(data), "--margin", "100"]) == 0
    assert "2 unreadable images skipped" in capsys.readouterr().out
    for path in data.rglob("*.png"):
        path.write_bytes(b"not an image")
    assert device_main(["adapt", str(bundle), "--data", str(data)]) == 2
    assert "none of the 24 images" in _one_line_error(capsys.readouterr().err)


@pytest.mark.parametrize("cli", ["device", "host"])
def test_a_full_disk_while_committing_exits_2_naming_the_file_and_keeps_the_head_in_force(
        bundle, signs, tmp_path, capsys, cli):
    from edgetl.cli import main as host_main

    run = device_main if cli == "device" else host_main
    with tiny_fs(bundle.with_name("host.heads")) as heads:
        fill(heads)
        assert run(["adapt", str(bundle), "--data", str(signs["test"]), "--margin", "100"]) == 2  # never 1
        line = _one_line_error(capsys.readouterr().err)
        assert "No space left on device" in line and str(heads / "head-000001.npz") in line
        assert sorted(p.name for p in heads.iterdir()) == ["filler"]  # nothing half-written, not even its lock file
        assert Model.load(bundle).head_version == 0


def test_predict_json_and_the_device_check_say_which_head_was_scored(bundle, signs, capsys):
    from edgetl.runtime.measure import measure

    image = str(next(iter(sorted((signs["test"] / sorted(os.listdir(signs["test"]))[0]).iterdir()))))
    assert device_main(["predict", str(bundle), image, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["head_version"] == 0
    assert device_main(["adapt", str(bundle), "--data", str(signs["test"]), "--margin", "100"]) == 0
    capsys.readouterr()
    assert device_main(["predict", str(bundle), image, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["head_version"] == 1
    assert measure(bundle, runs=2, warmup=0)["head_version"] == 1
    assert device_main(["measure", str(bundle), "--runs", "2", "--warmup", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["head_version"] == 1


def test_two_adapts_at_once_on_one_bundle_both_commit_each_from_the_head_in_force(bundle, signs):
    argv = [sys.executable, "-m", "edgetl.runtime", "adapt", str(bundle), "--data", str(signs["test"]),
            "--margin", "100", "--json"]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    assert sorted(r["version"] for r in results) == [1, 2]
    assert sorted((r["version"], r["parent"]) for r in results) == [(1, 0), (2, 1)]  # nothing lost
    history = _store(bundle).history()
    assert [(h["version"], h["parent"]) for h in history] == [(1, 0), (2, 1)]
    assert Model.load(bundle).head_version == 2


def test_the_host_check_shows_the_head_version_the_device_scored(bundle, signs, tmp_path, capsys):
    from edgetl.cli import main as host_main
    from edgetl.devices.deploy import bundles_dir

    (tmp_path / "fleet").mkdir()
    device = tmp_path / "fleet" / "bench.toml"
    device.write_text('name = "bench"\ntarget = "host-cpu"\ntransport = "local"\n[local]\nworkdir = "../board"\n'
                      "[budgets]\nlatency_p95_ms = 1000\nmin_top1 = 0\nmax_rss_mb = 8000\n")
    argv = ["check", str(bundle), "--device", str(device), "--runs", "2", "--warmup", "0",
            "--report", str(tmp_path / "report"), "--junit", str(tmp_path / "junit.xml")]
    assert host_main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["head_version"] == 0
    from edgetl import devices

    active = Path(os.path.expanduser(bundles_dir(devices.read(device)))) / "host"
    assert device_main(["adapt", str(active), "--data", str(signs["test"]), "--margin", "100"]) == 0  # on the device
    assert host_main([*argv, "--json"]) == 0  # the same bundle again: its adapted head stays in force
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["head_version"] == 1
    assert host_main(argv) == 0
    table = capsys.readouterr().out
    assert re.search(r"host \(onnxruntime \w+,\s*(│\s*)*head\s*(│\s*)*1\)", table), table  # the cell may wrap

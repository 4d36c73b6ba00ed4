"""`receive` (the device side of deploy) against adapts on the same device, and against another deploy."""

import hashlib
import io
import json
import multiprocessing
import os
import shutil
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgetl.compile import compile_bundle
from edgetl.errors import ConfigError, EdgetlError
from edgetl.runtime import Model
from edgetl.runtime.heads import HeadStore, HeadStoreBusy
from edgetl.runtime.receive import receive


@pytest.fixture(scope="module")
def archives(quantized_run, tmp_path_factory) -> dict[str, Path]:
    """Two archives of bundle "host": v1, and v2 with another backbone (the run's int8 ONNX)."""
    root = tmp_path_factory.mktemp("receive")
    v1 = root / "v1" / "host"
    compile_bundle(quantized_run, "host-cpu", v1)
    v2 = Path(shutil.copytree(v1, root / "v2" / "host"))
    int8 = json.loads((quantized_run / "quantize" / "onnx" / "quantize.json").read_text())["file"]
    manifest = json.loads((v2 / "manifest.json").read_text())
    shutil.copyfile(quantized_run / "quantize" / "onnx" / int8, v2 / manifest["model"])
    data = (v2 / manifest["model"]).read_bytes()
    manifest["files"][manifest["model"]] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (v2 / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    out = {}
    for name, folder in (("v1", v1), ("v2", v2)):
        out[name] = root / f"{name}.tar.gz"
        with tarfile.open(out[name], "w:gz") as tar:
            tar.add(folder, arcname="host")
    return out


def _receive(bundles: Path, archive: Path, **kw) -> dict:
    data = archive.read_bytes()
    with open(archive, "rb") as stream:
        return receive(bundles, "host", len(data), hashlib.sha256(data).hexdigest(), stream, **kw)


def _adapted(bundles: Path) -> HeadStore:
    """BUNDLES/host with one head adapted on the device (the bundle's own, committed)."""
    store = Model.load(bundles / "host").heads
    store.commit(store.base, {})
    return store


def test_a_deploy_waits_for_an_adapt_in_progress_then_sets_its_heads_aside(archives, tmp_path):
    bundles = tmp_path / "bundles"
    first = _receive(bundles, archives["v1"])
    store = _adapted(bundles)
    done = []
    with store.lock():  # an adapt training under the lock
        t = threading.Thread(target=lambda: done.append(_receive(bundles, archives["v2"])))
        t.start()
        time.sleep(0.5)
        assert not done and os.readlink(bundles / "host") == first["version"]  # the switch waits
        store.commit(store.base, {})  # the adapt's commit lands in the store about to be set aside
    t.join(60)
    r = done[0]
    assert r["changed"] and os.readlink(bundles / "host") == r["version"]
    aside = Path(r["heads_set_aside"])
    assert sorted(p.name for p in aside.glob("head-*.npz")) == ["head-000001.npz", "head-000002.npz"]  # none lost
    assert Model.load(bundles / "host").head_version == 0  # the new backbone runs its own head


def test_a_deploy_refused_by_a_busy_head_store_leaves_the_old_bundle_active(archives, tmp_path):
    bundles = tmp_path / "bundles"
    first = _receive(bundles, archives["v1"])
    store = _adapted(bundles)
    with store.lock():
        with pytest.raises(HeadStoreBusy, match=r"host.heads is held by another adapt or deploy"):
            _receive(bundles, archives["v2"], heads_timeout=0.3)
    assert os.readlink(bundles / "host") == first["version"]
    assert sorted(p.name for p in bundles.iterdir() if p.name.startswith(".host-")) == [first["version"]]
    assert Model.load(bundles / "host").head_version == 1


def test_an_adapt_whose_bundle_was_redeployed_meanwhile_is_refused_not_committed(archives, tmp_path, signs):
    bundles = tmp_path / "bundles"
    _receive(bundles, archives["v1"])
    model = Model.load(bundles / "host")
    _receive(bundles, archives["v2"])  # the backbone changes between load and commit
    h, w = model.input_size
    with pytest.raises(ConfigError, match="was replaced"):
        model.adapt(np.zeros((4, h, w, 3), np.uint8), ["a", "a", "b", "b"], unguarded=True)
    assert not (bundles / "host.heads").exists() or not list((bundles / "host.heads").glob("head-*"))


def _deploy(bundles: str, archive: str, start, out) -> None:
    start.wait()
    out.put(_receive(Path(bundles), Path(archive)))


def test_two_deploys_of_one_bundle_at_once_are_serialised(archives, tmp_path):
    bundles = tmp_path / "bundles"
    first = _receive(bundles, archives["v1"])
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_deploy, args=(str(bundles), str(archives[v]), start, out)) for v in ("v2", "v1")]
    for p in procs:
        p.start()
    start.set()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    # one after the other: the second saw the first's result as its previous version
    a, b = results
    assert a["previous"] == first["version"] and b["previous"] == a["version"]
    assert os.readlink(bundles / "host") == b["version"]
    assert not list(bundles.glob(".incoming-*"))
    assert Model.load(bundles / "host").predict(np.zeros((8, 8, 3), np.uint8))


def test_a_first_deploy_that_fails_leaves_no_bundles_dir_and_a_reader_makes_no_lock(archives, tmp_path):
    data = archives["v1"].read_bytes()
    bundles = tmp_path / "board" / "bundles"
    with pytest.raises(EdgetlError, match="ended after"):
        receive(bundles, "host", len(data) + 10, hashlib.sha256(data).hexdigest(), io.BytesIO(data))
    assert not bundles.exists()
    receive(bundles, "host", len(data), hashlib.sha256(data).hexdigest(), io.BytesIO(data))
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    (bundles / "host.heads").symlink_to(user)  # heads kept elsewhere, by the user's own link
    Model.load(bundles / "host").predict([np.zeros((32, 32, 3), np.uint8)])
    with pytest.raises(ConfigError, match="nothing to roll back"):
        Model.load(bundles / "host", fallback_head=True).heads.rollback()
    assert sorted(p.name for p in user.iterdir()) == ["notes.txt"]  # neither reader nor refused writer left a LOCK

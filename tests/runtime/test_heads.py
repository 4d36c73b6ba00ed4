"""The head store under concurrent writers, damage and a full disk (small random heads, no model)."""

import json
import multiprocessing
import os
import threading
import time

import numpy as np
import pytest

from edgetl.errors import ConfigError
from edgetl.runtime import Head
from edgetl.runtime.heads import HeadStore, HeadStoreBusy
from tests.standins import tiny_fs

LABELS = ("a", "b", "c")
DIM = 8


def _base() -> Head:
    return Head(np.zeros((3, DIM), np.float32), np.zeros(3, np.float32), LABELS)


def _head(value: float) -> Head:
    return Head(np.full((3, DIM), value, np.float32), np.full(3, value, np.float32), LABELS)


def _committer(root: str, rounds: int, start) -> None:
    """Trains under the lock as Model.adapt does: read the head in force, add one, commit with it as parent."""
    store = HeadStore(root, _base(), keep=3, lock_timeout=60)
    start.wait()
    for _ in range(rounds):
        with store.lock():
            state = store.in_force()
            store.commit(_head(float(state.head.W[0, 0]) + 1), {"pid": os.getpid()}, parent=state.version)


def test_concurrent_committers_never_collide_and_every_parent_is_the_head_they_trained_from(tmp_path):
    root, procs, rounds = tmp_path / "heads", 8, 20
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    workers = [ctx.Process(target=_committer, args=(str(root), rounds, start)) for _ in range(procs)]
    for w in workers:
        w.start()
    start.set()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    store = HeadStore(root, _base(), keep=3)
    history = store.history()
    assert [r["version"] for r in history] == list(range(1, procs * rounds + 1))  # each exactly once, none lost
    assert all(r["parent"] == r["version"] - 1 for r in history)  # trained from the head in force
    assert len({r["pid"] for r in history}) == procs
    assert store.current_version() == procs * rounds
    assert float(store.current().W[0, 0]) == procs * rounds  # every increment landed on its predecessor
    assert store.versions() == [158, 159, 160]  # pruned to `keep` files; the records stay
    assert [r["state"] for r in history[-4:]] == ["pruned", "kept", "kept", "in force"]
    assert not list(root.glob(".*.tmp"))


def test_a_second_writer_waits_and_is_then_refused_naming_the_store(tmp_path):
    store = HeadStore(tmp_path / "heads", _base())
    other = HeadStore(tmp_path / "heads", _base())
    with store.lock():
        t = time.monotonic()
        with pytest.raises(HeadStoreBusy, match=r"head store .*heads is held by another adapt or deploy"):
            other.commit(_head(1), {}, timeout=0.3)
        assert time.monotonic() - t >= 0.3
    assert other.commit(_head(1), {}) == 1 and store.current_version() == 1


def test_a_writer_waiting_for_the_lock_commits_once_it_is_free(tmp_path):
    store = HeadStore(tmp_path / "heads", _base())
    done = []
    with store.lock():
        t = threading.Thread(target=lambda: done.append(HeadStore(tmp_path / "heads", _base()).commit(_head(1), {})))
        t.start()
        time.sleep(0.3)
        assert not done  # still waiting
    t.join(10)
    assert done == [1]


def test_a_reader_waits_for_a_writer_and_never_reads_half_a_store(tmp_path):
    store = HeadStore(tmp_path / "heads", _base())
    store.commit(_head(1), {})
    seen = []
    with store.lock():
        t = threading.Thread(target=lambda: seen.append(HeadStore(tmp_path / "heads", _base()).current()))
        t.start()
        time.sleep(0.2)
        assert not seen  # a shared reader waits for the exclusive writer
        (tmp_path / "heads" / "head-000001.npz").unlink()  # what a prune would do mid-read
        store._point(0)
    t.join(10)
    assert seen[0].version == 0


def test_versions_stay_monotonic_after_rollback_and_pruning(tmp_path):
    store = HeadStore(tmp_path / "heads", _base(), keep=2)
    for i in range(1, 5):
        assert store.commit(_head(i), {}) == i
    assert store.rollback().version == 3
    assert store.commit(_head(9), {}) == 5
    history = store.history()
    assert [(r["version"], r["parent"]) for r in history] == [(1, 0), (2, 1), (3, 2), (4, 3), (5, 3)]
    assert store.versions() == [4, 5]


# --- damage: each kind, rollback and a new commit work past it, and say which head is in force -------

def _damage(root, kind):
    current = root / "CURRENT"
    if kind == "truncated":
        path = root / "head-000003.npz"
        path.write_bytes(path.read_bytes()[:40])
    elif kind == "garbage-npz":
        (root / "head-000003.npz").write_bytes(os.urandom(300))
    elif kind == "nan":
        np.savez(root / "head-000003.npz", W=np.full((3, DIM), np.nan, np.float32), b=np.zeros(3, np.float32),
                 labels=np.asarray(LABELS), version=np.int64(3))
    elif kind == "current-garbage":
        current.write_bytes(b"\x00\xffnot a head\n")
    elif kind == "current-missing-file":
        (root / "head-000003.npz").unlink()
    elif kind == "current-outside":
        current.write_text("../../etc/passwd\n")
    elif kind == "current-absolute":
        current.write_text("/etc/passwd\n")


KINDS = ["truncated", "garbage-npz", "nan", "current-garbage", "current-missing-file", "current-outside",
         "current-absolute"]
FILE_KINDS = ("truncated", "garbage-npz", "nan")


def _damaged_store(tmp_path, kind) -> HeadStore:
    store = HeadStore(tmp_path / "heads", _base())
    for i in (1, 2, 3):
        store.commit(_head(i), {})
    _damage(store.root, kind)
    return store


@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_head_in_force_is_refused_for_use_with_a_hint_that_works(tmp_path, kind):
    store = _damaged_store(tmp_path, kind)
    with pytest.raises(ConfigError) as err:
        store.current()
    assert "\n" not in str(err.value) and "edgetl adapt" in err.value.hint and "--rollback" in err.value.hint
    done = store.rollback()
    # garbage CURRENT names no version: the newest intact head is put back; else the one before the damaged one
    expected = 3 if kind.startswith("current-") and kind != "current-missing-file" else 2
    assert done.version == expected and f"rolled back to head {expected}" in done.note
    assert store.current().version == expected
    if kind in FILE_KINDS:
        assert "head 3" in done.note and "damaged" in done.note
        assert (store.root / "head-000003.npz.damaged").is_file()  # kept, never deleted
    elif kind != "current-missing-file":
        assert (store.root / "CURRENT.damaged").is_file()


@pytest.mark.parametrize("kind", KINDS)
def test_a_new_commit_works_past_a_damaged_head_and_names_its_parent(tmp_path, kind):
    store = _damaged_store(tmp_path, kind)
    with store.lock():
        state = store.in_force()
        assert state.problem and "CURRENT" in state.problem if kind.startswith("current-") and \
            kind != "current-missing-file" else "head 3" in state.problem
        version = store.commit(_head(7), {}, parent=state.version)
    assert version == 4 and store.current().version == 4  # numbering goes on past the damaged one
    record = store.history()[-1]
    assert record["parent"] == state.version and record["recovered_from"] == state.problem
    if kind in FILE_KINDS:
        assert [r["state"] for r in store.history()][2] == "damaged"


def test_rollback_skips_an_older_damaged_head_and_says_so(tmp_path):
    store = HeadStore(tmp_path / "heads", _base())
    for i in (1, 2, 3):
        store.commit(_head(i), {})
    (store.root / "head-000002.npz").write_bytes(b"PK\x03\x04 damaged")
    done = store.rollback()
    assert done.version == 1 and "skipped damaged head 2" in done.note
    assert (store.root / "head-000002.npz.damaged").is_file()


def test_with_no_intact_head_left_rollback_puts_the_bundles_own_head_back(tmp_path):
    store = HeadStore(tmp_path / "heads", _base())
    store.commit(_head(1), {})
    (store.root / "head-000001.npz").write_bytes(b"")
    done = store.rollback()
    assert done.version == 0 and "rolled back to the bundle's own head" in done.note
    assert store.current().version == 0 and (store.root / "head-000001.npz.damaged").is_file()


# --- a full disk ---------------------------------------------------------------------------------

def fill(root) -> None:
    """Fill the file system under `root` to the last byte."""
    fd = os.open(root / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        for size in (4096, 64, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError:
                    break
    finally:
        os.close(fd)


def test_a_full_disk_leaves_the_previous_head_in_force_and_names_the_file(tmp_path):
    with tiny_fs(tmp_path / "heads") as root:
        store = HeadStore(root, _base())
        store.commit(_head(1), {})
        fill(root)
        big = Head(np.ones((3, 4096), np.float32), np.ones(3, np.float32), LABELS)
        with pytest.raises(OSError) as err:
            store.commit(big, {})
        assert err.value.filename == str(root / "head-000002.npz") and "No space" in err.value.strerror
        (root / "filler").unlink()
        assert store.current_version() == 1 and float(store.current().W[0, 0]) == 1
        assert sorted(p.name for p in root.iterdir()) == ["CURRENT", "LOCK", "head-000001.json", "head-000001.npz"]
        assert json.loads((root / "head-000001.json").read_text())["version"] == 1


def test_a_rollback_with_nothing_to_roll_back_leaves_no_store_behind(tmp_path):
    store = HeadStore(tmp_path / "host.heads", _base())
    with pytest.raises(ConfigError, match="nothing to roll back"):
        store.rollback()
    assert not store.root.exists()  # the lock's dir and file were this writer's alone: removed again
    assert store.commit(_head(1), {}) == 1 and (store.root / "LOCK").is_file()

"""Taking a bundle in on the device: the new one becomes active only once it is complete and verified.

    BUNDLES/NAME             symlink to the active version (what an application loads)
    BUNDLES/.NAME-<sha>      one version, unpacked and verified (the active one and the one before)
    BUNDLES/NAME.heads       heads adapted on the device (see `heads`)

The archive arrives on standard input with its size and sha256 given beforehand, so a dropped
connection (a short stream, even one that ends on a tar block boundary) is told from a complete
one. It is written to a temp file, checked, unpacked into a temp dir, verified as `Model.load`
verifies it (hashes, signature, CPU, engine installed) and renamed; then a new symlink replaces
NAME by rename, which is the commit. A process killed at any point before that rename leaves the
previous version active and untouched; what it left half-done is removed by the next receive.
Two receives are serialised by BUNDLES/.lock. The switch and the setting aside of heads adapted
on the old backbone (moved, never deleted) happen holding NAME.heads' lock, so a deploy waits for
an adapt in progress on the device (up to `heads_timeout` s, then it is refused with the old
bundle still active) and an adapt never commits a head into the wrong store. Standard library
and numpy only.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import sys
from pathlib import Path

from edgetl.runtime.atomic import fsync_dir
from edgetl.runtime.heads import LOCK, LOCK_TIMEOUT_S, HeadStoreBusy, store_lock
from edgetl.runtime.manifest import MANIFEST, Manifest
from edgetl.runtime.records import Record, RecordError, record
from edgetl.runtime.verify import BundleError, _unpack

PARTIAL = ".incoming-"


@record
class Received(Record):
    """What a receive did: the active link, the version it names and the one before, whether that
    changed, and where heads adapted on the old backbone were set aside (moved, never deleted)."""

    active: str
    version: str
    previous: str | None
    changed: bool
    heads_set_aside: str | None


def _read_exactly(stream, into: Path, size: int, sha256: str) -> None:
    h, got = hashlib.sha256(), 0
    with open(into, "wb") as f:
        while got < size:
            block = stream.read(min(1 << 20, size - got))
            if not block:
                break
            f.write(block)
            h.update(block)
            got += len(block)
        f.flush()
        os.fsync(f.fileno())
    if got != size:
        raise BundleError(f"the transfer ended after {got} of {size} bytes", "deploy again: the old bundle is active")
    if h.hexdigest() != sha256:
        raise BundleError("the archive received does not match the sha256 sent with it",
                          "deploy again: the old bundle is active")


def _model_sha(bundle_dir: Path) -> str | None:
    try:
        return Manifest.read(bundle_dir / MANIFEST).model_sha256
    except (OSError, RecordError, KeyError):
        return None


def _holds_heads(heads: Path) -> bool:
    """Whether NAME.heads holds anything but its lock file."""
    try:
        return any(p.name != LOCK for p in heads.iterdir())
    except OSError:
        return False


def receive(bundles: str | Path, name: str, size: int, sha256: str, stream=None, *, key=None,
            heads_timeout: float = LOCK_TIMEOUT_S) -> Received:
    """Take the bundle archive on `stream` (default stdin) in as BUNDLES/NAME; returns what happened."""
    stream = stream or sys.stdin.buffer
    bundles = Path(bundles).expanduser()
    made = not bundles.exists()
    bundles.mkdir(parents=True, exist_ok=True)
    try:
        return _receive(bundles, name, size, sha256, stream, key, heads_timeout)
    except BaseException:
        if made:  # a first deploy that failed leaves no empty bundles dir behind
            with contextlib.suppress(OSError):
                (bundles / ".lock").unlink(missing_ok=True)
                bundles.rmdir()
        raise


def _receive(bundles: Path, name: str, size: int, sha256: str, stream, key, heads_timeout: float) -> Received:
    from edgetl.runtime.model import Model

    active = bundles / name
    if active.exists() and not active.is_symlink():
        raise BundleError(f"{active} is a directory edgetl deploy did not make",
                          "move it away: deploy keeps NAME as a link to the active version")
    with open(bundles / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one deploy at a time per bundles dir
        for stale in bundles.glob(f"{PARTIAL}*"):  # left by an interrupted receive
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
        work = bundles / f"{PARTIAL}{os.getpid()}"
        work.mkdir()
        try:
            archive = work / "bundle.tar.gz"
            _read_exactly(stream, archive, size, sha256)
            unpacked = _unpack(archive, work / "unpacked")
            if unpacked.name != name:
                raise BundleError(f"the archive holds bundle {unpacked.name!r}, not {name!r}", "deploy it by its name")
            with Model.load(unpacked, key=key):  # hashes, signature, this CPU, the engine: as the app will
                pass
            version = bundles / f".{name}-{sha256[:16]}"
            previous = os.readlink(active) if active.is_symlink() else None
            new_version = not version.is_dir()
            if new_version:
                os.replace(unpacked, version)
            link = work / "link"
            os.symlink(version.name, link)
            fsync_dir(bundles)
            old_model = _model_sha(active) if previous else None
            heads = bundles / f"{name}.heads"
            set_aside = None
            try:
                with store_lock(heads, exclusive=True, timeout=heads_timeout, what="head store of the active bundle"):
                    os.replace(link, active)  # the commit
                    fsync_dir(bundles)
                    if old_model and old_model != _model_sha(version) and _holds_heads(heads):
                        set_aside = _free(bundles / f".{name}.heads-{old_model[:16]}")
                        os.replace(heads, set_aside)  # learned on the old backbone: wrong on this one, kept
            except HeadStoreBusy:  # an adapt on the device held the heads: the old bundle stays active
                if new_version:
                    shutil.rmtree(version, ignore_errors=True)
                raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        for old in bundles.glob(f".{name}-*"):  # the active version and the one before it stay
            if old.name not in (version.name, previous):
                shutil.rmtree(old, ignore_errors=True)
    return Received(active=str(active), version=version.name, previous=previous, changed=previous != version.name,
                    heads_set_aside=str(set_aside) if set_aside else None)


def _free(path: Path) -> Path:
    """`path`, or `path-2`, ...: a set-aside store never replaces an older one set aside."""
    n, alt = 2, path
    while alt.exists():
        alt, n = path.with_name(f"{path.name}-{n}"), n + 1
    return alt

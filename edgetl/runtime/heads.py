"""Versioned classifier heads on the device, written under a lock so that concurrent adapts,
deploys and power cuts never lose a head or leave a broken one in force.

    BUNDLE.heads/
      head-000003.npz   W, b, labels, version (the last `keep` are kept, and the one in force)
      head-000003.json  what made it and its parent (never pruned: the history is never lost)
      CURRENT           the file name of the head in force
      LOCK              flock: writers (adapt, rollback, deploy) exclusive, readers shared

A new head is written to a temp file, fsynced and renamed into place; then CURRENT is replaced
the same way. Renaming CURRENT is the commit: a process killed at any point before it leaves
the previous head in force, and one killed after it leaves the new one. Without CURRENT, the
bundle's own head is in force. A damaged head (or CURRENT) never blocks rollback or a new adapt:
they fall back to the newest intact head and rename the damaged file aside
(`head-000003.npz.damaged`), never deleting it. Standard library and numpy only.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgetl.errors import ConfigError, DamagedHead, HeadStoreBusy
from edgetl.runtime.atomic import write_file
from edgetl.runtime.features import Layout
from edgetl.runtime.head import Head

CURRENT = "CURRENT"
LOCK = "LOCK"
LOCK_TIMEOUT_S = 30.0  # how long a writer waits for another adapt or deploy before it is refused
NAME = re.compile(r"^head-(\d{6})\.npz$")
ANY_VERSION = re.compile(r"^head-(\d{6})\.(?:npz|json|npz\.damaged(?:-\d+)?)$")  # what numbering must stay above


@dataclass(frozen=True)
class InForce:
    """The head in force. When CURRENT or the head it names is damaged, `problem` says how, and
    `version`/`head` are the fallback: the newest intact head (older than the damaged one when its
    version is known), else the bundle's own (version 0)."""

    version: int
    head: Head
    problem: str | None = None
    broken: tuple[int, ...] = ()  # versions whose head files are damaged (set aside on the next write)


@dataclass(frozen=True)
class Rollback:
    version: int  # the head now in force (0: the bundle's own)
    note: str = ""  # what was damaged and set aside on the way, if anything


@contextmanager
def store_lock(root: Path, *, exclusive: bool, timeout: float = LOCK_TIMEOUT_S, what: str = "head store"):
    """flock ROOT/LOCK, exclusive for writers, shared for readers; refused with `HeadStoreBusy`
    after `timeout` s. A writer creates ROOT; a reader of a store that does not exist (or cannot
    be written, so nobody writes it) reads unlocked. When the store is moved away while waiting
    (a deploy sets it aside), the lock of the store now at ROOT is taken instead. A store this
    writer made and left holding only its lock file is removed again: nothing left behind."""
    deadline = time.monotonic() + max(0.0, timeout)
    path = root / LOCK
    while True:
        made = False
        if exclusive and not root.is_dir():
            root.mkdir(parents=True, exist_ok=True)
            made = True
        made_lock = exclusive and not path.exists()
        try:  # a reader creates nothing: with no lock file, no writer has been (or is) here
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644) if exclusive else os.open(path, os.O_RDONLY)
        except OSError as exc:
            if exclusive:
                raise OSError(exc.errno, exc.strerror, str(path)) from None
            yield  # no store, or a read-only one: nothing can change under the reader
            return
        try:
            delay = 0.001
            while True:
                try:
                    fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                        raise
                if time.monotonic() >= deadline:
                    raise HeadStoreBusy(
                        f"the {what} {root} is held by another adapt or deploy (waited {timeout:g} s)",
                        "try again once it has finished, or wait longer (adapt --wait SECONDS)")
                time.sleep(delay)
                delay = min(0.05, delay * 2)
            try:
                here = os.stat(path)
                same = (here.st_ino, here.st_dev) == (os.fstat(fd).st_ino, os.fstat(fd).st_dev)
            except FileNotFoundError:
                same = False
            if same:
                try:
                    yield
                finally:
                    with contextlib.suppress(OSError):  # (moved away meanwhile: a deploy set it aside)
                        ours = [p.name for p in root.iterdir() if p.name == CURRENT or ANY_VERSION.match(p.name)]
                        if (made or made_lock) and not ours:  # nothing written: leave nothing behind
                            path.unlink(missing_ok=True)  # a waiter finds its lock file gone and retries
                            if made:
                                root.rmdir()
                return
        finally:
            os.close(fd)  # releases the lock


class HeadStore:
    def __init__(self, root: str | Path, base: Head, keep: int = 5, lock_timeout: float = LOCK_TIMEOUT_S,
                 layout: Layout | None = None):
        self.root, self.keep = Path(root), max(2, keep)
        self.base = base if base.version == 0 else replace(base, version=0)  # version 0: the bundle's own
        self.layout = layout or Layout.of((), base.width)  # the segments the bundle's backbone outputs
        self.lock_timeout = lock_timeout
        self._held: str | None = None  # "exclusive" | "shared" while this object holds the lock

    @classmethod
    def beside(cls, bundle_dir: Path, base: Head, keep: int = 5, lock_timeout: float = LOCK_TIMEOUT_S,
               layout: Layout | None = None) -> HeadStore:
        """The store for a bundle: BUNDLE.heads next to it (a bundle dir holds only what it lists)."""
        bundle_dir = Path(bundle_dir)
        return cls(bundle_dir.with_name(bundle_dir.name + ".heads"), base, keep, lock_timeout, layout)

    @property
    def bundle(self) -> Path:
        """The bundle dir this store sits beside."""
        name = self.root.name
        return self.root.with_name(name[: -len(".heads")]) if name.endswith(".heads") else self.root

    @contextmanager
    def lock(self, *, exclusive: bool = True, timeout: float | None = None):
        """Hold the store's lock (re-entrant within this object): writers exclusive, readers shared."""
        if self._held == "exclusive" or (self._held == "shared" and not exclusive):
            yield
            return
        if self._held == "shared":
            raise RuntimeError("HeadStore.lock: cannot upgrade a shared lock to an exclusive one")
        with store_lock(self.root, exclusive=exclusive,
                        timeout=self.lock_timeout if timeout is None else timeout):
            self._held = "exclusive" if exclusive else "shared"
            try:
                yield
            finally:
                self._held = None

    # --- reading ------------------------------------------------------------------------------

    def versions(self) -> list[int]:
        """The versions whose head files are kept (pruned and set-aside ones are not)."""
        if not self.root.is_dir():
            return []
        return sorted(int(m[1]) for p in self.root.iterdir() if (m := NAME.match(p.name)))

    def _file(self, version: int) -> Path:
        return self.root / f"head-{version:06d}.npz"

    def _record(self, version: int) -> Path:
        return self.root / f"head-{version:06d}.json"

    def _named(self) -> tuple[int | None, str | None]:
        """The version CURRENT names (0 without CURRENT), or (None, what is wrong with CURRENT)."""
        marker = self.root / CURRENT
        try:
            with open(marker, "rb") as f:
                raw = f.read(256)
        except FileNotFoundError:
            return (None, f"{marker} names a file that does not exist") if marker.is_symlink() else (0, None)
        except OSError as exc:
            return None, f"{marker} cannot be read ({exc.strerror or type(exc).__name__})"
        text = raw.decode("utf-8", "replace").strip()
        m = NAME.match(text)
        if not m:  # garbage, or a path (../../etc/passwd, /abs): only a file of this store is ever used
            return None, f"{marker} does not name a head file of this store (it says {text[:60]!r})"
        return int(m[1]), None

    def _read(self, version: int) -> tuple[Head | None, str | None]:
        """Head `version`, or (None, why it cannot be used)."""
        path = self._file(version)
        if not path.is_file():
            return None, f"head {version} ({path}) is missing"
        try:
            head = Head.read(path, self.base.labels)
        except DamagedHead as exc:
            return None, f"head {version} ({path}) is damaged: {exc.why}"
        mismatch = self.layout.problem(head.taps, head.dims)
        if mismatch:
            return None, f"head {version} ({path}) does not fit this bundle: {mismatch}"
        return replace(head, version=version), None

    def in_force(self) -> InForce:
        """The head in force, or the fallback and what is wrong (see `InForce`); call under the lock."""
        named, problem = self._named()
        if problem is None:
            if named == 0:
                return InForce(0, self.base)
            head, problem = self._read(named)
            if head is not None:
                return InForce(named, head)
        broken = [named] if named and self._file(named).is_file() else []
        for v in reversed(self.versions()):
            if named is not None and v >= named:
                continue
            head, _ = self._read(v)
            if head is not None:
                return InForce(v, head, problem, tuple(broken))
            broken.append(v)
        return InForce(0, self.base, problem, tuple(broken))

    def current_version(self) -> int:
        """The version CURRENT names (0: the bundle's own head); an error when CURRENT is garbage."""
        named, problem = self._named()
        if problem:
            raise self._refusal(problem)
        return named

    def current(self) -> Head:
        """The head in force: the committed one, or the bundle's own; a damaged one is refused."""
        with self.lock(exclusive=False):
            state = self.in_force()
        if state.problem:
            raise self._refusal(state.problem, state)
        return state.head

    def _refusal(self, problem: str, state: InForce | None = None) -> ConfigError:
        then = "" if state is None else (f": that puts head {state.version} back in force" if state.version
                                         else ": that puts the bundle's own head back in force")
        return ConfigError(f"{problem}", f"run `edgetl adapt {self.bundle} --rollback` (on the device: "
                                         f"python -m edgetl.runtime adapt {self.bundle} --rollback){then}")

    def history(self) -> list[dict]:
        """Every version ever committed, oldest first: its record (info, version, parent) and its
        `state`: "in force", "kept", "pruned" (file gone, record kept) or "damaged" (set aside)."""
        with self.lock(exclusive=False):
            if not self.root.is_dir():
                return []
            named, _ = self._named()
            found = sorted({int(m[1]) for p in self.root.iterdir() if (m := ANY_VERSION.match(p.name))})
            out = []
            for v in found:
                try:
                    record = json.loads(self._record(v).read_text())
                except (OSError, ValueError):
                    record = {"version": v}
                state = ("in force" if v == named else "kept") if self._file(v).is_file() else (
                    "damaged" if any(self.root.glob(f"head-{v:06d}.npz.damaged*")) else "pruned")
                out.append({**record, "version": v, "state": state})
            return out

    # --- writing (all under the exclusive lock) --------------------------------------------------

    def _next_version(self) -> int:
        named, _ = self._named()
        found = [int(m[1]) for p in self.root.iterdir() if (m := ANY_VERSION.match(p.name))]
        return max([0, named or 0, *found]) + 1

    def _set_aside(self, state: InForce) -> list[str]:
        """Rename the damaged head files of `state` (and a bad CURRENT) aside; returns what was kept where."""
        kept = []
        for v in state.broken:
            src = self._file(v)
            if src.is_file():
                dst = _free(self.root / f"{src.name}.damaged")
                os.replace(src, dst)
                kept.append(dst.name)
        marker = self.root / CURRENT
        named, problem = self._named()
        if problem and (marker.exists() or marker.is_symlink()):
            dst = _free(self.root / f"{CURRENT}.damaged")
            try:
                os.link(marker, dst, follow_symlinks=False)  # CURRENT itself is replaced by the caller
            except OSError:
                os.replace(marker, dst)
            kept.append(dst.name)
        return kept

    def _point(self, version: int) -> None:
        marker = self.root / CURRENT
        if version:
            write_file(marker, f"head-{version:06d}.npz\n".encode())
        else:
            marker.unlink(missing_ok=True)

    def commit(self, head: Head, info: dict, *, parent: int | None = None, timeout: float | None = None) -> int:
        """Write `head` as the next version and put it in force; returns its version. `parent` is the
        version it was trained from (default: the head in force, or its fallback when that is damaged);
        a caller that trains under `lock()` passes the version it read there."""
        with self.lock(exclusive=True, timeout=timeout):
            state = self.in_force()
            parent = state.version if parent is None else parent
            version = self._next_version()
            buf = io.BytesIO()
            np.savez(buf, **{**head.arrays(), "version": np.int64(version)})
            written = []
            try:
                write_file(self._file(version), buf.getvalue())
                written.append(self._file(version))
                record = {**info, "version": version, "parent": parent, "committed_at": time.time()}
                if state.problem:
                    record["recovered_from"] = state.problem
                write_file(self._record(version), json.dumps(record, indent=2).encode())
                written.append(self._record(version))
                self._set_aside(state)
                self._point(version)  # the commit point
            except BaseException:
                for path in written:  # never in force: nothing of it is kept
                    path.unlink(missing_ok=True)
                raise
            self._prune(version)
            return version

    def rollback(self, *, timeout: float | None = None) -> Rollback:
        """Put the newest intact head older than the one in force back in force (the bundle's own
        when none is left). Works past a damaged head or CURRENT: those are renamed aside, and the
        note says so."""
        with self.lock(exclusive=True, timeout=timeout):
            named, problem = self._named()
            if problem is None and named == 0:
                raise ConfigError("nothing to roll back: the bundle's own head is in force", "adapt first")
            if problem is None:
                _, problem = self._read(named)
            state = self.in_force() if problem else self._older_than(named)
            self._set_aside(state)
            self._point(state.version)
            to = f"head {state.version}" if state.version else "the bundle's own head"
            notes = [f"{problem}: rolled back to {to}"] if problem else []
            skipped = [v for v in state.broken if v != named]
            if skipped:
                notes.append(f"skipped damaged head{'s' if len(skipped) > 1 else ''} "
                             f"{', '.join(map(str, skipped))} (renamed *.damaged)")
            return Rollback(state.version, "; ".join(notes))

    def _older_than(self, version: int) -> InForce:
        broken = []
        for v in reversed(self.versions()):
            if v < version:
                head, _ = self._read(v)
                if head is not None:
                    return InForce(v, head, None, tuple(broken))
                broken.append(v)
        return InForce(0, self.base, None, tuple(broken))

    def _prune(self, current: int) -> None:
        """Drop head files beyond the newest `keep` (never the one in force); records stay."""
        for v in self.versions()[: -self.keep]:
            if v != current:
                self._file(v).unlink(missing_ok=True)
        for stale in self.root.glob(".*.tmp"):  # left by a process killed mid-write (we hold the lock)
            stale.unlink(missing_ok=True)


def _free(path: Path) -> Path:
    """`path`, or `path-2`, `path-3`... : the first name not taken (nothing set aside is overwritten)."""
    if not (path.exists() or path.is_symlink()):
        return path
    n = 2
    while (alt := path.with_name(f"{path.name}-{n}")).exists() or alt.is_symlink():
        n += 1
    return alt

"""Every write edgetl makes all at once: complete or absent, never half of one, after a crash,
a full disk, a signal or a power cut. The one module for it, host and device alike.

- `write_file`: one file: a temp file in the same dir, fsync, rename, fsync the dir.
- `staged`: a directory (and files beside it) written beside its final place and renamed in
  under a lock on the parent dir, in one step that no signal cuts (a bundle, a run, a report).
- `fsync_dir`: make a rename itself durable.

Standard library only: the device writes its heads, engines and bundles with it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from edgetl.errors import OutputError
from edgetl.runtime.lifecycle import pid_alive, signals_held

STAGING = re.compile(r"^\.(?P<name>.+)\.edgetl-(?P<pid>\d+)-[A-Za-z0-9_]+(?P<replaced>\.replaced)?$")
FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


def fsync_dir(path: Path) -> None:
    """The dir's entries on disk: a rename into it survives a power cut only once this returns."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes, *, shared: bool = False) -> None:
    """`data` at `path`, all or nothing: temp file in the same dir, fsync, rename, fsync the dir.
    `shared`: the file gets the umask's mode (mkstemp's 0600 would hide a report from the CI's
    other users). On failure (a full disk: ENOSPC) nothing is left behind and the OSError names
    `path` itself, not the temp file, so the user is told which file could not be written."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        if shared:
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        fsync_dir(path.parent)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _sweep_staging(out: Path) -> None:
    """Staging dirs left beside `out` by an edgetl process that was killed (its pid is gone)."""
    try:
        siblings = list(out.parent.iterdir())
    except OSError:
        return
    for p in siblings:
        m = STAGING.match(p.name)
        if m and m["name"] == out.name and int(m["pid"]) != os.getpid() and not pid_alive(int(m["pid"])):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)


def _made_parents(out: Path) -> list[Path]:
    """Create the missing parents of `out`; returns the ones made, deepest first (to remove on failure)."""
    missing = []
    for parent in out.parents:
        if parent.exists():
            break
        missing.append(parent)
    out.parent.mkdir(parents=True, exist_ok=True)
    return missing


def write_failed(exc: OSError, out: Path) -> OutputError:
    """Disk full (or read-only, or over quota) as one line naming the real output and the space left."""
    try:
        free = f"; {shutil.disk_usage(out.parent if out.parent.exists() else Path('.')).free / 1e6:.0f} MB free there"
    except OSError:
        free = ""
    return OutputError(f"could not write {out}: {exc.strerror or exc}{free}",
                       "free some space (or choose another --out) and run it again; nothing was replaced")


@contextmanager
def _parent_locked(out: Path) -> Iterator[None]:
    """flock on `out`'s parent dir itself (no lock file left behind): two edgetl processes that write
    the same output commit one after the other, each re-checking what is there."""
    fd = os.open(out.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextmanager
def staged(out: Path, files: Sequence[Path] = (), *,
           recheck: Callable[[], object] | None = None) -> Iterator[tuple[Path, list[Path]]]:
    """Yield (a temp dir beside `out`, a temp path beside each of `files`). On success the dir replaces
    `out` and each temp file its file, all in one step that no signal cuts, after `recheck` (the
    caller's `claim`) has passed again under a lock on the parent dir, so another process that wrote
    `out` meanwhile is not overwritten. On any error or interrupt they are removed, parents this made
    are removed again, and what was there before stays."""
    out, files = Path(out), [Path(f) for f in files]
    made = _made_parents(out)
    _sweep_staging(out)
    tag = f".edgetl-{os.getpid()}-"
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}{tag}", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would follow the dir to its final name
    tmp_files = [f.with_name(f".{f.name}{tag}{tmp.name.rsplit('-', 1)[1]}") for f in files]
    old = None
    try:
        try:
            yield tmp, tmp_files
        except OSError as exc:
            if exc.errno in FULL:
                raise write_failed(exc, out) from None
            raise
        with _parent_locked(out), signals_held():
            if recheck is not None:
                recheck()
            if out.exists():
                old = tmp.with_name(tmp.name + ".replaced")
                os.replace(out, old)
            os.replace(tmp, out)
            for t, f in zip(tmp_files, files, strict=True):
                os.replace(t, f)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for t in tmp_files:
            t.unlink(missing_ok=True)
        if old is not None and not out.exists():
            os.replace(old, out)
        for parent in made:
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

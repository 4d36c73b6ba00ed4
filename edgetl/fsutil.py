"""Where edgetl may write, and writing there all at once.

The rule (README, "What edgetl writes"): an output path is used when it is new or an empty
directory. It is replaced only when it holds the same kind of edgetl output (a bundle, a run, a
report) and only with `--force`, except where replacing is the documented default (a stage's own
dir inside a run, a check report). Anything else is refused before any work: a file where a
directory is wanted, files edgetl did not write, the command's own inputs or a folder above them,
and degenerate paths (`.`, `/`, the home or working directory). A refusal touches nothing.

`staged` then writes the output beside its final place and renames it in, so it is complete or
absent, never half-written; a failure or an interrupt leaves whatever was there before.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gzip
import json
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edgetl.errors import DataError, EdgetlError, OutputError, RunError
from edgetl.runtime.lifecycle import pid_alive, signals_held

STAGING = re.compile(r"^\.(?P<name>.+)\.edgetl-(?P<pid>\d+)-[A-Za-z0-9_]+(?P<replaced>\.replaced)?$")
FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


def _json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _listed_bundle(folder: Path) -> bool:
    """A bundle edgetl wrote: a manifest whose files are exactly what the dir holds."""
    manifest = _json(folder / "manifest.json")
    if not manifest or "schema_version" not in manifest or not isinstance(manifest.get("files"), dict):
        return False
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()}
    return present <= set(manifest["files"]) | {"manifest.json", "manifest.json.sig"}


def _junit_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return b'<testsuites name="edgetl check"' in head


def _report(folder: Path) -> bool:
    """A check report: report.json written by edgetl, report.html, and JUnit files written by edgetl."""
    record = _json(folder / "report.json")
    if not record or "edgetl" not in record or "results" not in record:
        return False
    return all(p.name in ("report.json", "report.html") or (p.suffix == ".xml" and _junit_file(p))
               for p in folder.iterdir())


STAGE_FILES = {"head.npz", "labels.json", "preprocess.json"}
MODEL_FILE = re.compile(r"^(backbone|model)[\w.-]*\.(onnx|tflite)$")
RUN_FILES = {"finetune.json", "checkpoint.pt", *STAGE_FILES}  # what `finetune` writes (train.weights.CHECKPOINT)


def _stage_record(record: str) -> Callable[[Path], bool]:
    """A stage's dir inside a run (RUN/export/onnx): its record, and only the files that stage writes."""
    def holds(folder: Path) -> bool:
        return (folder / record).is_file() and all(
            p.is_file() and not p.is_symlink() and (p.name in STAGE_FILES | {record} or MODEL_FILE.match(p.name))
            for p in folder.iterdir())
    return holds


def _all(folder: Path, ours: Callable[[Path], bool]) -> bool:
    return folder.is_dir() and not folder.is_symlink() and all(ours(p) for p in folder.iterdir())


def _run(folder: Path) -> bool:
    """A run edgetl wrote, and nothing else in it: its files, its stages' dirs and its bundles (with their
    archives; a bundle with adapted heads beside it is not replaced: the heads are the user's)."""
    if not ((folder / "finetune.json").is_file() and (folder / "labels.json").is_file()):
        return False
    stages = {"export": EXPORT.holds, "quantize": QUANTIZED.holds,
              "bundles": lambda p: _listed_bundle(p) if p.is_dir() else p.name.endswith(".tar.gz")}
    return all((p.name in RUN_FILES and p.is_file() and not p.is_symlink())
               or (p.name in stages and _all(p, stages[p.name])) for p in folder.iterdir())


@dataclass(frozen=True)
class Kind:
    """A kind of output edgetl writes, and how to tell a dir holds one."""

    name: str  # "bundle", as messages say it: "not an edgetl bundle"
    holds: Callable[[Path], bool]
    replace_by_default: bool = False  # documented default: no --force needed
    error: type[EdgetlError] = OutputError


BUNDLE = Kind("bundle", _listed_bundle)
RUN = Kind("run", _run, error=RunError)
REPORT = Kind("check report", _report, replace_by_default=True)
EXPORT = Kind("export", _stage_record("export.json"), replace_by_default=True, error=RunError)
QUANTIZED = Kind("quantized model", _stage_record("quantize.json"), replace_by_default=True, error=RunError)
DATASET = Kind("dataset", lambda folder: False, error=DataError)  # synthesized data goes to a new or empty dir


def _degenerate(out: Path) -> str | None:
    if str(out).startswith("~"):
        return f"{out} starts with a literal `~` (the shell did not expand it, and a dir named `~` invites rm -rf ~)"
    real = out.resolve()
    if real == Path(real.anchor):
        return f"{out} is the root of the file system"
    if out.name in ("", ".", ".."):
        return f"{out} names a directory by `.` or `..`"
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    if real == home:
        return f"{out} is the home directory"
    if real == cwd or real in cwd.parents:
        return f"{out} is the working directory or a folder above it"
    return None


def claim(out: str | Path, kind: Kind, *, force: bool = False, inputs: Sequence[str | Path] = (),
          flag: str = "--out") -> Path:
    """`out` if edgetl may write `kind` there (see the module docstring); else an `OutputError`, before
    anything is touched."""
    out = Path(out)
    hint_new = f"choose a new {flag}"
    error = kind.error  # each kind says which error family its stage raises
    why = _degenerate(out)
    if why:
        raise error(f"{flag} {why}; edgetl replaces whole directories", f"{hint_new}, e.g. {flag} out/NAME")
    real = out.resolve()
    for source in inputs:
        src = Path(source).resolve()
        if real == src or real in src.parents:
            raise error(f"{flag} {out} is this command's own input {source}, or holds it",
                        f"{hint_new} outside the input")
    for parent in out.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise error(f"{parent} is a file, so {out} cannot be made in it", hint_new)
            break
    if out.is_symlink():
        raise error(f"{flag} {out} is a symlink", f"give the real path ({os.path.realpath(out)}) or {hint_new}")
    if not out.exists():
        return out
    if not out.is_dir():
        raise error(f"{flag} {out} is a file, and an edgetl {kind.name} is a directory",
                    f"{hint_new}; edgetl does not replace files it did not write")
    if not any(out.iterdir()):
        return out
    if kind.holds(out):
        if force or kind.replace_by_default:
            return out
        raise error(f"{out} already exists and holds an edgetl {kind.name}",
                    f"pass --force to replace it, or {hint_new}")
    if kind is DATASET:
        raise error(f"{out} already exists and is not empty", f"{hint_new}, or remove it first")
    raise error(f"{out} exists and is not an edgetl {kind.name}: it holds files edgetl did not write; "
                      "refusing to replace it", f"{hint_new}, or move those files away")


def claim_archive(archive: Path, name: str, *, force: bool) -> Path:
    """The bundle's .tar.gz beside its dir: new, or a bundle archive of the same name (with --force)."""
    if archive.is_symlink() or (archive.exists() and not archive.is_file()):
        raise OutputError(f"{archive} is not a plain file", "choose another --out; the archive goes beside the dir")
    if not archive.exists():
        return archive
    try:
        with tarfile.open(archive, "r:gz") as tar:
            ours = f"{name}/manifest.json" in tar.getnames()
    except (tarfile.TarError, OSError, EOFError, gzip.BadGzipFile):
        ours = False
    if not ours:
        raise OutputError(f"{archive} exists and is not a bundle archive; refusing to replace it",
                          "choose another --out, or move that file away")
    if not force:
        raise OutputError(f"{archive} already holds a bundle archive", "pass --force to replace it")
    return archive


def claim_bundle(out: str | Path, *, force: bool, inputs: Sequence[str | Path] = ()) -> Path:
    """A bundle dir and its OUT.tar.gz (see `claim`). One with heads adapted beside it (OUT.heads) is not
    replaced: the new backbone would run heads learned on the old one."""
    out = claim(out, BUNDLE, force=force, inputs=inputs)
    claim_archive(out.with_name(out.name + ".tar.gz"), out.name, force=force)
    heads = out.with_name(out.name + ".heads")
    if out.exists() and (heads.exists() or heads.is_symlink()):
        raise OutputError(f"{out} has heads adapted on it in {heads}; a new bundle there would run them on "
                          "another backbone", f"move {heads} away first, or choose a new --out "
                          "(`edgetl deploy` sets such heads aside on a device)")
    return out


def claim_file(path: str | Path, holds: Callable[[Path], bool], what: str, *, flag: str) -> Path:
    """A single output file: new, or one that `holds` says edgetl wrote (replaced by default)."""
    path = Path(path)
    if str(path).startswith("~"):
        raise OutputError(f"{flag} {path} starts with a literal `~` (the shell did not expand it)",
                          f"give the full path, e.g. {flag} $HOME/{str(path)[1:].lstrip('/')}")
    if path.name in ("", ".", "..") or path.is_dir():
        raise OutputError(f"{flag} {path} is a directory, and {what} is a file", f"give a file name, e.g. {flag} "
                          f"{path / 'junit.xml' if path.is_dir() else 'junit.xml'}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{parent} is a file, so {path} cannot be made in it", f"choose another {flag}")
            break
    if path.is_symlink() or (path.exists() and not holds(path)):
        raise OutputError(f"{flag} {path} exists and is not {what} edgetl wrote; refusing to replace it",
                          f"choose another {flag}, or move that file away")
    return path


JUNIT = _junit_file


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


@contextmanager
def staged_dir(out: Path, kind: Kind | None = None, *, force: bool = False) -> Iterator[Path]:
    """`staged` for a directory alone; with `kind`, the claim is checked again at the commit."""
    with staged(out, recheck=(lambda: claim(out, kind, force=force)) if kind else None) as (tmp, _):
        yield tmp


"""Where edgetl may write, and writing there all at once.

The rule (README, "What edgetl writes"): an output path is used when it is new or an empty
directory. It is replaced only when it holds the same kind of edgetl output (a bundle, a run, a
report) and only with `--force`, except where replacing is the documented default (a stage's own
dir inside a run, a check report). Anything else is refused before any work: a file where a
directory is wanted, files edgetl did not write, the command's own inputs or a folder above them,
and degenerate paths (`.`, `/`, the home or working directory). A refusal touches nothing.

`staged_dir` then writes the output through `edgetl.runtime.atomic` (beside its final place,
renamed in), so it is complete or absent, never half-written; a failure or an interrupt leaves
whatever was there before.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import tarfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edgetl import rundir
from edgetl.errors import DataError, EdgetlError, OutputError, RunError
from edgetl.runtime.atomic import staged
from edgetl.runtime.manifest import MANIFEST, SIGNATURE


def _json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _listed_bundle(folder: Path) -> bool:
    """A bundle edgetl wrote: a manifest whose files are exactly what the dir holds (read leniently,
    not as a `Manifest`: a bundle of another schema is still edgetl's to replace)."""
    manifest = _json(folder / MANIFEST)
    if not manifest or "schema_version" not in manifest or not isinstance(manifest.get("files"), dict):
        return False
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()}
    return present <= set(manifest["files"]) | {MANIFEST, SIGNATURE}


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


MODEL_FILE = re.compile(r"^(backbone|model)[\w.-]*\.(onnx|tflite)$")


def _stage_record(record: str) -> Callable[[Path], bool]:
    """A stage's dir inside a run (RUN/export/onnx): its record, and only the files that stage writes."""
    def holds(folder: Path) -> bool:
        return (folder / record).is_file() and all(
            p.is_file() and not p.is_symlink() and (p.name in rundir.STAGE_FILES | {record} or MODEL_FILE.match(p.name))
            for p in folder.iterdir())
    return holds


def _all(folder: Path, ours: Callable[[Path], bool]) -> bool:
    return folder.is_dir() and not folder.is_symlink() and all(ours(p) for p in folder.iterdir())


def _run(folder: Path) -> bool:
    """A run edgetl wrote, and nothing else in it: its files, its stages' dirs and its bundles (with their
    archives; a bundle with adapted heads beside it is not replaced: the heads are the user's)."""
    if not ((folder / rundir.RUN_RECORD).is_file() and (folder / rundir.LABELS).is_file()):
        return False
    stages = {rundir.EXPORT_DIR: EXPORT.holds, rundir.QUANTIZE_DIR: QUANTIZED.holds,
              rundir.BUNDLES_DIR: lambda p: _listed_bundle(p) if p.is_dir() else p.name.endswith(".tar.gz")}
    return all((p.name in rundir.RUN_FILES and p.is_file() and not p.is_symlink())
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
EXPORT = Kind("export", _stage_record(rundir.EXPORT_RECORD), replace_by_default=True, error=RunError)
QUANTIZED = Kind("quantized model", _stage_record(rundir.QUANTIZE_RECORD), replace_by_default=True, error=RunError)
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


@contextmanager
def staged_dir(out: Path, kind: Kind | None = None, *, force: bool = False) -> Iterator[Path]:
    """`staged` for a directory alone; with `kind`, the claim is checked again at the commit."""
    with staged(out, recheck=(lambda: claim(out, kind, force=force)) if kind else None) as (tmp, _):
        yield tmp


"""One TOML file per thing (a target, a device): found by path or by name along a search path, and
read into its table (`edgetl.config` checks the table)."""

from __future__ import annotations

import os
from pathlib import Path

import tomllib

from edgetl.errors import ConfigError


def read(file: Path, example: str) -> dict:
    """The file's table; a one-line error when it cannot be read or is not TOML."""
    try:
        return tomllib.loads(Path(file).read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: not valid TOML ({exc})", f"see {example} for the layout") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {file}: {exc.strerror}", "check the path") from None


def search_path(variable: str, folder: str, shipped: Path) -> list[Path]:
    """$VARIABLE's directories, then ./FOLDER, then the ones shipped with edgetl."""
    dirs = [Path(d) for d in os.environ.get(variable, "").split(os.pathsep) if d]
    return dirs + [Path(folder), shipped]


def configured_path(variable: str, folder: str, shipped: Path) -> list[Path]:
    """The directories whose files make up the whole set (`edgetl devices`, a fleet): $VARIABLE's when
    it is set, else ./FOLDER when there is one, else the ones shipped. Lookup by name (`find` along
    `search_path`) still falls back to the shipped files."""
    dirs = [Path(d) for d in os.environ.get(variable, "").split(os.pathsep) if d]
    if dirs:
        return dirs
    return [Path(folder)] if Path(folder).is_dir() else [shipped]


def names(path: list[Path]) -> list[str]:
    return sorted({f.stem for d in path if d.is_dir() for f in d.glob("*.toml")})


def find(name: str | Path, path: list[Path], kind: str) -> Path:
    """The file `name` is (a .toml path), or the first NAME.toml along `path`."""
    given = Path(name)
    if given.suffix == ".toml" or len(given.parts) > 1:  # a path, not a name: never looked up by its stem
        if not given.is_file():
            raise ConfigError(f"{kind} file {given} does not exist", f"edgetl {kind}s lists the known {kind}s")
        return given
    for folder in path:
        candidate = folder / f"{name}.toml"
        if candidate.is_file():
            return candidate
    raise ConfigError(f"unknown {kind} {str(name)!r}", f"available: {', '.join(names(path)) or 'none found'}")

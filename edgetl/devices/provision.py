"""`edgetl deploy --provision`: the wheels a bare board needs (numpy, the bundle's engine), fetched here.

What the runtime needs is read from edgetl's own requirements (numpy, and the bundle's engine's
`runtime-*` extra, named in the engine table); what the device has of it, from its bootstrap status.
The wheels for the device's CPU, glibc and Python are resolved on this machine by pip
(`pip download --only-binary=:all: --platform ... --python-version X.Y --implementation cp`) into a
cache shared by every board of that kind, `$EDGETL_CACHE/wheels/ARCH-cpX.Y` (default
~/.cache/edgetl): the cache is asked first, offline, and the index only for what it lacks; a wheel
enters it whole, by rename. deploy then installs them on the device from those files alone
(`deploy.ensure_packages`), so the board needs no internet.

Versions: the engine is pinned to the one installed here, which compiled and verified the bundle,
so the device runs the kernels the host checked. numpy is left to pip within what the runtime and
that engine require: the host's numpy may have no wheel for an older device Python, and numpy's
version does not change what a model computes.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from edgetl.errors import ConfigError, EdgetlError
from edgetl.runtime.engines import table

SOURCE = Path(__file__).resolve().parent.parent.parent  # the checkout whose pyproject.toml says what is needed
# Distributions the runtime takes in place of one it asks for (runtime/engines/litert.py: tflite_runtime).
STANDS_IN = {"ai-edge-litert": ("tflite-runtime",)}
OLDEST_GLIBC = 17  # manylinux_2_17 (manylinux2014): the oldest glibc wheels are built for


@dataclass(frozen=True)
class Need:
    """A distribution the runtime needs on the device: the versions it works with, the one to fetch
    when the device lacks it (None: pip picks within `specifier`), and what the device has (None: none)."""

    name: str  # as pip and importlib.metadata know it (canonical)
    specifier: str  # ">=1.24"
    pin: str | None = None
    found: str | None = None

    @property
    def met(self) -> bool:
        try:
            return self.found is not None and SpecifierSet(self.specifier).contains(Version(self.found), True)
        except InvalidVersion:
            return False

    @property
    def fetch(self) -> str:
        """What pip is asked for: `onnxruntime==1.22.1`, `numpy>=1.24`."""
        return f"{self.name}=={self.pin}" if self.pin else f"{self.name}{self.specifier}"

    def __str__(self) -> str:
        return self.name if self.found is None else f"{self.name} {self.found} (needs {self.specifier})"


def _host_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def needs(engine: str, root: Path = SOURCE) -> list[Need]:
    """numpy (edgetl's own dependency) and the engine's extra, as pyproject.toml declares them; the
    engine pinned to the host's version where the host has one in range."""
    file = root / "pyproject.toml"
    if not file.is_file():
        raise ConfigError(f"edgetl at {root} is not a source checkout, and --provision reads its requirements",
                          "deploy from a git clone of edgetl with `pip install -e .`")
    project = tomllib.loads(file.read_text())["project"]
    extra = project["optional-dependencies"].get(table.row(engine).extra, [])
    return [*(_need(text) for text in project["dependencies"]), *(_need(text, pinned=True) for text in extra)]


def _need(text: str, pinned: bool = False) -> Need:
    """A requirement as pyproject.toml writes it; `pinned`: to the host's version, when it has one in range."""
    req = Requirement(text)
    here = _host_version(req.name) if pinned else None
    return Need(canonicalize_name(req.name), str(req.specifier), here if here and req.specifier.contains(here, True)
                else None)


def asked(wanted: list[Need]) -> list[str]:
    """The distribution names to ask the device's status for (with those that stand in for one)."""
    return [n for need in wanted for n in (need.name, *STANDS_IN.get(need.name, ()))]


def found_on(wanted: list[Need], packages: dict[str, str | None]) -> list[Need]:
    """`wanted`, each with the version the device has of it (or of what stands in for it)."""
    out = []
    for need in wanted:
        versions = [packages.get(n) for n in (need.name, *STANDS_IN.get(need.name, ()))]
        out.append(replace(need, found=next((v for v in versions if v), None)))
    return out


def platform_tags(arch: str, libc: list[str]) -> list[str]:
    """The manylinux platform tags a device with this CPU and glibc runs, newest first."""
    match = re.fullmatch(r"2\.(\d+)", libc[1] if len(libc) > 1 else "")
    if not libc or libc[0] != "glibc" or not match:
        raise EdgetlError(f"cannot provision a device with libc {' '.join(libc) or 'unknown'} ({arch})",
                          "--provision fetches manylinux wheels, which need glibc; install numpy and the "
                          "engine on the device with its own package manager")
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(int(match.group(1)), OLDEST_GLIBC - 1, -1)]
    return [*tags, f"manylinux2014_{arch}"]


def cache_dir(arch: str, python: str) -> Path:
    """Where the wheels for boards of this CPU and Python are kept (read from the environment each time)."""
    root = Path(os.environ.get("EDGETL_CACHE", "~/.cache/edgetl")).expanduser()
    return root / "wheels" / f"{arch}-cp{python}"


def download_argv(requirements: list[str], tags: list[str], python: str, dest: Path, cache: Path,
                  offline: bool) -> list[str]:
    """The `pip download` that resolves `requirements` for the device (offline: from the cache alone)."""
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
            "--only-binary=:all:", "--implementation", "cp", "--python-version", python,
            *(a for tag in tags for a in ("--platform", tag)), "--dest", str(dest)]
    if offline:
        argv.append("--no-index")
    if cache.is_dir():
        argv += ["--find-links", str(cache)]
    return [*argv, *requirements]


def _publish(wheels: list[Path], cache: Path) -> None:
    """Wheels the cache lacks enter it each whole: copied beside it under a hidden name, then renamed."""
    cache.mkdir(parents=True, exist_ok=True)
    for wheel in wheels:
        if (cache / wheel.name).is_file():
            continue
        fd, partial = tempfile.mkstemp(dir=cache, prefix=f".{wheel.name}.", suffix=".partial")
        try:
            with os.fdopen(fd, "wb") as out, open(wheel, "rb") as src:
                shutil.copyfileobj(src, out)
            os.replace(partial, cache / wheel.name)
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise


def _no_wheel(done: subprocess.CompletedProcess, requirements: list[str], arch: str, python: str) -> EdgetlError:
    errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR:")]
    last = (errors or done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
    which = re.search(r"(?:found for|satisfies the requirement) (\S+)", last)
    what = which.group(1) if which else ", ".join(requirements)
    return EdgetlError(f"no wheel of {what} for {arch}, Python {python} (pip download: "
                       f"{last.removeprefix('ERROR: ')[:200]})",
                       "PyPI has manylinux wheels of numpy and the engines for aarch64 and x86_64 CPython 3.10+; "
                       "on another board install them with its own package manager (and check this machine "
                       "reaches the package index)")


def fetch(wanted: list[Need], arch: str, python: str, libc: list[str], into: Path) -> list[Path]:
    """The wheels of `wanted` and their dependencies for the device, copied into `into` (from the cache
    when it has them all, else from the index, what was downloaded then kept in the cache)."""
    requirements, tags, cache = [n.fetch for n in wanted], platform_tags(arch, libc), cache_dir(arch, python)
    into.mkdir(parents=True, exist_ok=True)
    done = None
    for offline in ((True, False) if cache.is_dir() else (False,)):
        for stale in into.glob("*.whl"):
            stale.unlink()
        done = subprocess.run(download_argv(requirements, tags, python, into, cache, offline),
                              capture_output=True, text=True)
        if done.returncode == 0:
            break
    wheels = sorted(into.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        raise _no_wheel(done, requirements, arch, python)
    _publish(wheels, cache)
    return wheels


def versions(wheels: list[Path], wanted: list[Need]) -> tuple[str, ...]:
    """`name==version` of each of `wanted`, as the wheels fetched for it say."""
    got = {}
    for wheel in wheels:
        name, version, _, _ = parse_wheel_filename(wheel.name)
        got[canonicalize_name(name)] = str(version)
    return tuple(f"{n.name}=={got[n.name]}" for n in wanted if n.name in got)

"""`edgetl deploy`: a bundle onto a device, and edgetl's runtime with it when the device lacks it.

On the device, under its work dir (see `devices`):

    runtime -> .runtime-<hash>   edgetl's runtime, pip-installed (--target) from a wheel of this checkout
    bundles/NAME -> .NAME-<sha>  the active bundle (see `edgetl.runtime.receive`)

The runtime is a wheel built from this checkout (cached by the hash of its sources) and installed
with the device's own pip into that private dir, never into the device's Python: only when the
device has none or another build. The device needs numpy and the bundle's engine (the runtime-*
extras): deploy asks first and names what is missing; `--provision` installs it instead, from
wheels fetched on this machine (`provision`), into a private dir of its own that outlives runtime
updates (`packages -> .packages-<key>`, on the runtime's sys.path before the device's). The bundle travels
as its reproducible archive through the device's transport into `python -m edgetl.runtime receive`,
which verifies it on the device and makes it active only once it is complete.

Failures are of two kinds: the device refused something (`EdgetlError`: a bundle for another CPU,
a missing engine) and the device could not be reached or broke (`DeviceError`: retried by check).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import edgetl
from edgetl.devices import Device, bootstrap
from edgetl.devices.provision import Need, asked, fetch, found_on, needs, versions
from edgetl.errors import ConfigError, DeviceError, EdgetlError
from edgetl.runtime.manifest import Manifest
from edgetl.runtime.receive import Received
from edgetl.runtime.records import Record, RecordError, record

SOURCE = Path(edgetl.__file__).resolve().parent.parent  # the checkout the runtime wheel is built from
WHEELS = Path(os.environ.get("EDGETL_CACHE", "~/.cache/edgetl")).expanduser() / "wheels"

# Run by the device's Python before edgetl is there (`edgetl.devices.bootstrap`, sent as its source).
BOOTSTRAP = Path(bootstrap.__file__).read_text()

# Runs edgetl's runtime CLI from the private dir deploy installed it into (and what --provision installed).
RUNTIME = ("import os, sys; sys.path[:0] = [os.path.expanduser({dir!r}), os.path.expanduser({packages!r})]; "
           "from edgetl.runtime.cli import main; sys.exit(main(sys.argv[1:]))")


def source_hash(root: Path = SOURCE) -> str:
    """What the runtime wheel is built from: pyproject.toml and every module of the package."""
    h = hashlib.sha256()
    for path in [root / "pyproject.toml", *sorted((root / "edgetl").rglob("*.py"))]:
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def runtime_wheel(root: Path = SOURCE) -> tuple[Path, str]:
    """(wheel, hash): a wheel of this checkout, built once per source hash (in a copy, so the
    checkout gets no build/ dir)."""
    if not (root / "pyproject.toml").is_file():
        raise ConfigError(f"edgetl at {root} is not a source checkout, and deploy builds the runtime from one",
                          "deploy from a git clone of edgetl with `pip install -e .`")
    stamp = source_hash(root)
    cached = WHEELS / stamp
    found = sorted(cached.glob("edgetl-*.whl")) if cached.is_dir() else []
    if found:
        return found[0], stamp
    with tempfile.TemporaryDirectory(prefix="edgetl-wheel-") as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(root / "edgetl", src / "edgetl", ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("pyproject.toml", "README.md"):
            shutil.copyfile(root / name, src / name)
        done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                               "--disable-pip-version-check", "-w", str(Path(tmp) / "out"), str(src)],
                              capture_output=True, text=True)
        wheels = sorted((Path(tmp) / "out").glob("edgetl-*.whl"))
        if done.returncode != 0 or not wheels:
            last = (done.stderr.strip().splitlines() or ["no wheel written"])[-1]
            raise ConfigError(f"could not build the runtime wheel: {last}", "pip install -e '.[host]' in this venv")
        cached.mkdir(parents=True, exist_ok=True)
        os.replace(wheels[0], cached / wheels[0].name)
    return cached / wheels[0].name, stamp


def call(device: Device, command: list[str], *, timeout: float, input: bytes | None = None,
         expect_json: bool = True) -> dict:
    """Run `command` on the device and read its one JSON line. A refusal by edgetl there (exit 2 and
    a JSON `{"error": {"kind", "message", "hint"}}` line) is an EdgetlError; anything else that goes
    wrong is a DeviceError."""
    try:
        done = device.run(command, timeout=timeout, input=input)
    except FileNotFoundError as exc:
        raise DeviceError(f"{device.name}: {Path(exc.filename or '?').name} not found on this machine",
                          "install the transport's client (openssh-client, qemu-user-static)") from None
    except subprocess.TimeoutExpired:
        raise DeviceError(f"{device.name}: no answer in {timeout:g} s", "is the device up? edgetl devices") from None
    except OSError as exc:
        raise DeviceError(f"{device.name}: cannot start the transport: {exc.strerror or exc}") from None
    err = done.stderr.decode(errors="replace").strip().splitlines()
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    if done.returncode == 0 and not expect_json:
        return {}
    try:
        said = json.loads(lines[-1]) if lines else None
    except ValueError:
        said = None
    refused = said.get("error") if isinstance(said, dict) else None
    if done.returncode == 2 and isinstance(refused, dict) and "message" in refused:  # edgetl there said no
        raise EdgetlError(f"{device.name}: {refused['message']}", refused.get("hint"))
    if done.returncode != 0 or not lines:
        why = err[-1] if err else f"exit status {done.returncode}"
        raise DeviceError(f"{device.name}: {why[:300]}", f"the device is at {device.address}")
    if not isinstance(said, dict):
        raise DeviceError(f"{device.name}: unexpected answer {lines[-1][:120]!r}")
    return said


def runtime_argv(device: Device, args: list[str]) -> list[str]:
    """`python -m edgetl.runtime ARGS` on the device, from the runtime deploy installed there."""
    return ["python3", "-c", RUNTIME.format(dir=f"{device.workdir}/runtime", packages=f"{device.workdir}/packages"),
            *args]


def bundles_dir(device: Device) -> str:
    return f"{device.workdir}/bundles"


def device_status(device: Device, wanted: list[Need], timeout: float) -> dict:
    """What the device has (its bootstrap status), with the version of each of `wanted`; a device of
    another CPU than its target's is refused here."""
    status = call(device, ["python3", "-c", BOOTSTRAP, "status", device.workdir, *asked(wanted)], timeout=timeout)
    if status["arch"] not in device.target.arch:
        raise ConfigError(f"{device.name} is {status['arch']}, and its target {device.target.name} is "
                          f"{'/'.join(device.target.arch)}", f"fix target in {device.file}")
    return status


def _need_pip(device: Device, status: dict, what: str) -> None:
    if not status["pip"]:
        raise EdgetlError(f"{device.name}: its Python ({device.python}) has no pip to install {what} with",
                          "on the device: sudo apt install python3-pip (or python3 -m ensurepip)")


def ensure_packages(device: Device, status: dict, wanted: list[Need], *, provision: bool,
                    timeout: float) -> tuple[str, ...] | None:
    """Refuse a device that lacks numpy or the engine, naming them; with `provision`, install them
    instead and return what was installed (`name==version`; () when nothing lacked, None unasked).
    Wheels fetched here, one tar through the transport, the device's pip from those files alone
    into a staging dir, one swap: a failure at any step leaves WORK/packages as it was."""
    lacking = [n for n in found_on(wanted, status.get("packages", {})) if not n.met]
    if not provision:
        if lacking:
            raise EdgetlError(f"{device.name}: {', '.join(map(str, lacking))} missing on the device (Python "
                              f"{status['python']}, {status['arch']})",
                              "deploy again with --provision to install them from wheels fetched on this machine "
                              f"(the board needs no internet), or on the device: python3 -m pip install "
                              f"{' '.join(repr(n.fetch) for n in lacking)}")
        return None
    if not lacking:
        return ()
    _need_pip(device, status, "numpy and the engine")
    names = {n.name for n in lacking}  # what an earlier --provision installed stays, at its version
    keep = [Need(name, f"=={v}") for name, v in status.get("provisioned", {}).items() if name not in names]
    python = ".".join(status["python"].split(".")[:2])
    with tempfile.TemporaryDirectory(prefix="edgetl-provision-") as tmp:
        wheels = fetch([*lacking, *keep], status["arch"], python, status.get("libc", []), Path(tmp) / "wheels")
        data = _tar(wheels, Path(tmp) / "wheels.tar")
        key = hashlib.sha256("\n".join(w.name for w in wheels).encode()).hexdigest()[:16]
        took = call(device, ["python3", "-c", BOOTSTRAP, "wheels", device.workdir, key, str(len(data)),
                             hashlib.sha256(data).hexdigest()], timeout=timeout, input=data)
        call(device, ["python3", "-m", "pip", "install", "--quiet", "--no-index", "--no-compile",
                      "--disable-pip-version-check", "--no-warn-script-location", "--only-binary=:all:",
                      "--find-links", took["wheels"], "--target", took["site"],
                      *(n.fetch for n in [*lacking, *keep])], timeout=timeout, expect_json=False)
        call(device, ["python3", "-c", BOOTSTRAP, "packages", device.workdir, key], timeout=timeout)
    return versions(wheels, lacking)


def _tar(wheels: list[Path], out: Path) -> bytes:
    """The wheels as one flat, uncompressed tar (wheels are zip files already)."""
    import tarfile

    with tarfile.open(out, "w") as tar:
        for wheel in wheels:
            tar.add(wheel, arcname=wheel.name)
    return out.read_bytes()


def ensure_runtime(device: Device, timeout: float, status: dict | None = None) -> dict:
    """Install this checkout's runtime on the device unless it has this very build; returns the status
    (`status`: the device's, when already asked). Three steps through the transport (take the wheel
    in, the device's pip, swap), so that nothing on the device has to start a program itself
    (qemu-user cannot)."""
    status = status or device_status(device, [], timeout)
    wheel, stamp = runtime_wheel()
    if status.get("runtime") == stamp:
        return {**status, "installed": False}
    _need_pip(device, status, "the runtime")
    data = wheel.read_bytes()
    put = call(device, ["python3", "-c", BOOTSTRAP, "put", device.workdir, stamp, str(len(data)),
                        hashlib.sha256(data).hexdigest(), wheel.name], timeout=timeout, input=data)
    call(device, ["python3", "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--no-compile",
                  "--disable-pip-version-check", "--target", put["site"], put["wheel"]], timeout=timeout,
         expect_json=False)
    call(device, ["python3", "-c", BOOTSTRAP, "activate", device.workdir, stamp], timeout=timeout)
    return {**status, "runtime": stamp, "installed": True}


def archive_of(bundle: Path, tmp: Path) -> tuple[Path, str, Manifest]:
    """(the bundle's .tar.gz, its name on the device, its manifest), verified here first; a dir is
    packed reproducibly. The name is the dir's (or the archive's top dir's): a renamed copy keeps its name."""
    from edgetl.pack import archive
    from edgetl.runtime.verify import open_bundle

    opened = open_bundle(bundle, machine="any", unpack_to=tmp / "check")
    if Path(bundle).is_dir():
        return archive(Path(bundle), tmp / f"{opened.path.name}.tar.gz"), opened.path.name, opened.manifest
    return Path(bundle), opened.path.name, opened.manifest


@record
class Deployment(Record):
    """What `deploy` did on one device: the bundle, the runtime (and whether it was installed) and
    the device's `Received` (the active link and version), the bytes sent and the time it took."""

    device: str
    bundle: str
    target: str
    engine: str
    precision: str
    runtime: str
    runtime_installed: bool
    active: str
    version: str
    previous: str | None
    changed: bool
    heads_set_aside: str | None
    bytes: int
    seconds: float
    provisioned: tuple[str, ...] | None = None  # --provision: what it installed (name==version); None: not asked

    OPTIONAL_KEYS = frozenset({"provisioned"})  # results written before --provision existed

    def summary(self) -> str:
        what = "deployed" if self.changed else "already active"
        runtime = "runtime installed" if self.runtime_installed else "runtime up to date"
        aside = f"; adapted heads set aside in {self.heads_set_aside}" if self.heads_set_aside else ""
        return (f"{self.device}: {self.bundle} ({self.engine} {self.precision}) {what} at {self.active}; "
                f"{runtime} ({self.runtime}){self.provision_summary}; {self.bytes / 1e6:.1f} MB in "
                f"{self.seconds:.1f} s{aside}")

    @property
    def provision_summary(self) -> str:
        if self.provisioned is None:
            return ""
        return f"; provisioned {', '.join(self.provisioned)}" if self.provisioned else "; nothing to provision"


DEPLOYED, ACTIVE, REFUSED, UNREACHABLE = "deployed", "already active", "refused", "unreachable"


@record
class FleetDeployment(Record):
    """One device of `deploy --devices`: its status (deployed, already active, refused, unreachable),
    why when it did not go through, and the `Deployment` when it did."""

    device: str
    status: str
    error: str | None = None
    deployment: Deployment | None = None

    def flat(self) -> dict:
        """One flat JSON object per device, as `deploy --devices --json` prints it."""
        return {**(self.deployment.to_dict() if self.deployment else {"device": self.device}),
                "status": self.status, "error": self.error}


def deploy(bundle: str | Path, device: Device, *, timeout: float = 600.0, key: str | Path | None = None,
           provision: bool = False) -> Deployment:
    """Put `bundle` (dir or .tar.gz) on `device` and make it active there; returns what happened.
    `key` is the trusted public key's path on the device, for signed bundles; `provision` installs
    numpy and the bundle's engine where the device lacks them (else that is refused, before anything is copied)."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edgetl-deploy-") as tmp:
        archive, name, manifest = archive_of(Path(bundle), Path(tmp))
        if not manifest.runs_on(device.target.arch):
            raise ConfigError(f"bundle {name} is for {manifest.target} "
                              f"({'/'.join(manifest.arch)}); {device.name} is {'/'.join(device.target.arch)}",
                              f"compile for the device's target: edgetl compile RUN --target {device.target.name}")
        wanted = needs(manifest.engine)
        status = device_status(device, wanted, timeout)
        provisioned = ensure_packages(device, status, wanted, provision=provision, timeout=timeout)
        status = ensure_runtime(device, timeout, status)
        data = archive.read_bytes()
        args = ["receive", bundles_dir(device), name, "--bytes", str(len(data)),
                "--sha256", hashlib.sha256(data).hexdigest()]
        if key:
            args += ["--key", str(key)]
        said = call(device, runtime_argv(device, args), timeout=timeout, input=data)
    try:
        received = Received.from_dict(said, f"{device.name}'s receive")
    except RecordError as exc:
        raise DeviceError(str(exc), "the device runs another edgetl runtime: deploy again") from None
    return Deployment(device=device.name, bundle=name, target=manifest.target, engine=manifest.engine,
                      precision=manifest.precision, runtime=status["runtime"], runtime_installed=status["installed"],
                      active=received.active, version=received.version, previous=received.previous,
                      changed=received.changed, heads_set_aside=received.heads_set_aside, bytes=len(data),
                      seconds=round(time.monotonic() - started, 2), provisioned=provisioned)


def deploy_fleet(bundle: str | Path, fleet: list[Device], *, timeout: float = 600.0,
                 key: str | Path | None = None, provision: bool = False) -> list[FleetDeployment]:
    """`bundle` onto every device of `fleet` (the ones built for its CPU, see `edgetl.check.pairs`),
    the devices in parallel; one record per device, in fleet order, with its `status`: deployed,
    active (already), refused (the device said no), unreachable (the device or its transport broke)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(device: Device) -> FleetDeployment:
        try:
            r = deploy(bundle, device, timeout=timeout, key=key, provision=provision)
        except DeviceError as exc:
            return FleetDeployment(device.name, UNREACHABLE, str(exc))
        except EdgetlError as exc:
            return FleetDeployment(device.name, REFUSED, str(exc))
        return FleetDeployment(device.name, DEPLOYED if r.changed else ACTIVE, None, r)

    with ThreadPoolExecutor(max_workers=max(1, min(16, len(fleet)))) as pool:
        return list(pool.map(one, fleet))


def fleet_exit_code(results: list[FleetDeployment]) -> int:
    """2 when a device refused the bundle (about the bundle or the device file), else 3 when one
    could not be reached (about the lab, as in `edgetl check`), else 0."""
    if any(r.status == REFUSED for r in results):
        return 2
    if any(r.status == UNREACHABLE for r in results):
        return 3
    return 0

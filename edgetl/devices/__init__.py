"""Devices as data: one TOML file per board on the shelf, and how to reach it.

A device names its target (from `targets/`), its transport and, optionally, budgets that
override the target's and tags to pick it by:

    name = "lab-pi"
    target = "rpi5"
    transport = "ssh"          # local | ssh | emulated
    tags = ["lab", "arm64"]

    [ssh]
    host = "10.0.0.12"
    user = "pi"
    identity = "~/.ssh/edgetl_ed25519"

    [budgets]
    latency_p95_ms = 30

`local` is this machine (`devices/local.toml`, shipped). `ssh` runs the system OpenSSH client
in batch mode, host keys checked strictly unless the file says otherwise. `emulated` runs an
aarch64 Python under qemu-user from a directory holding its files. Every transport runs a
command the same way (`Device.run`), which is all that deploy and check build on. Any bad
file is an error naming the file, the key and the values allowed.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, get_args

from edgetl import config, targets, tomlfiles
from edgetl.config import bad as _bad
from edgetl.errors import ConfigError
from edgetl.targets import Budgets, Target

Transport = Literal["local", "ssh", "emulated"]
TRANSPORTS = get_args(Transport)
# Where device files are looked for, after an explicit path: $EDGETL_DEVICES, ./devices, the ones shipped.
SHIPPED = Path(__file__).resolve().parent.parent.parent / "devices"
PROBE = "import platform, sys; print(platform.machine(), '%d.%d.%d' % sys.version_info[:3])"
# What an [ssh] value may be, so that nothing from a device file can become an option of ssh.
HOST_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")
PLAIN = "not starting with '-', without whitespace or control characters"


@dataclass(frozen=True)
class Local:
    workdir: str = "~/.edgetl"  # where deploy puts the runtime and bundles


@dataclass(frozen=True)
class Ssh:
    host: str
    port: int = 22
    user: str | None = None
    identity: str | None = None  # private key file; None: the client's own defaults and agent
    python: str = "python3"
    workdir: str = ".edgetl"  # relative to the login's home
    strict_host_key_checking: bool = True
    known_hosts: str | None = None  # a known_hosts file of the lab's boards; None: the user's own
    connect_timeout_s: int = 10

    def argv(self, command: list[str]) -> list[str]:
        """The ssh command line that runs `command` on the board (no password prompts: batch mode)."""
        argv = ["ssh", "-p", str(self.port), "-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout_s}",
                "-o", f"StrictHostKeyChecking={'yes' if self.strict_host_key_checking else 'accept-new'}"]
        if self.identity:
            argv += ["-i", str(Path(self.identity).expanduser()), "-o", "IdentitiesOnly=yes"]
        if self.known_hosts:
            argv += ["-o", f"UserKnownHostsFile={Path(self.known_hosts).expanduser()}"]
        # `--` first: the destination and the command are never read as options
        return [*argv, "--", f"{self.user}@{self.host}" if self.user else self.host, shlex.join(command)]


@dataclass(frozen=True)
class Emulated:
    """An aarch64 board emulated by qemu-user: `root` holds its Python (and its libraries) as
    unpacked from arm64 packages, `site` its pip packages."""

    root: str
    qemu: str = "qemu-aarch64-static"
    cpu: str = "cortex-a72"  # a Raspberry Pi 4
    python: str = "usr/bin/python3"  # inside root
    site: str = "opt/site"  # inside root, on PYTHONPATH
    workdir: str = "work"  # inside root

    def argv(self, command: list[str]) -> list[str]:
        return [self.qemu, "-L", str(Path(self.root).expanduser()), *command]

    def env(self) -> dict[str, str]:
        root = Path(self.root).expanduser()
        return {**os.environ, "QEMU_CPU": self.cpu, "PYTHONPATH": str(root / self.site)}


@dataclass(frozen=True)
class Probe:
    """What asking the device for its Python said: reachable or not, and why."""

    reachable: bool
    arch: str | None = None
    python: str | None = None
    reason: str = ""

    def to_dict(self) -> dict:
        return {"reachable": self.reachable, "arch": self.arch, "python": self.python, "reason": self.reason}


@dataclass(frozen=True)
class DeviceFile:
    """A device file as written, key for key (the schema it is checked against); `Device` is it resolved."""

    name: str
    target: str  # a target's name or the path of its file
    transport: Transport
    description: str = ""
    tags: tuple[str, ...] = ()
    budgets: dict = field(default_factory=dict)  # checked against the target's, as overrides
    local: Local | None = None
    ssh: Ssh | None = None
    emulated: Emulated | None = None


@dataclass(frozen=True)
class Device:
    name: str
    target: Target
    transport: str
    file: Path
    description: str = ""
    tags: tuple[str, ...] = ()
    overrides: dict = field(default_factory=dict)  # [budgets] of the device file: they win over the target's
    ssh: Ssh | None = None
    emulated: Emulated | None = None
    local: Local = field(default_factory=Local)

    def summary(self) -> dict:
        """What `edgetl devices --json` says of the device (with its `Probe`)."""
        return {"name": self.name, "target": self.target.name, "transport": self.transport, "address": self.address,
                "tags": list(self.tags), "file": str(self.file)}

    @property
    def is_emulated(self) -> bool:
        """An emulated device (`emulated` is its [emulated] table) answers correctly but slowly: its
        timings are never judged."""
        return self.emulated is not None

    @property
    def workdir(self) -> str:
        """Where deploy keeps the runtime and bundles, as a path on the device (`~` is the device's home)."""
        if self.ssh:
            return self.ssh.workdir
        if self.emulated:
            return str(Path(self.emulated.root) / self.emulated.workdir)
        return self.local.workdir

    @property
    def budgets(self) -> Budgets:
        return self.target.budgets.merged(self.overrides)

    @property
    def address(self) -> str:
        if self.ssh:
            user = f"{self.ssh.user}@" if self.ssh.user else ""
            return f"{user}{self.ssh.host}:{self.ssh.port}"
        if self.emulated:
            return f"{self.emulated.qemu} -L {self.emulated.root}"
        return "this machine"

    @property
    def python(self) -> str:
        """The device's Python, as its transport starts it."""
        if self.ssh:
            return self.ssh.python
        if self.emulated:
            return str(Path(self.emulated.root).expanduser() / self.emulated.python)
        return sys.executable

    def argv(self, command: list[str]) -> list[str]:
        """`command` (program first; `python3` is the device's Python) as run on this device."""
        if command[0] in ("python", "python3"):
            command = [self.python, *command[1:]]
        if self.ssh:
            return self.ssh.argv(command)
        if self.emulated:
            return self.emulated.argv(command)
        return command

    def run(self, command: list[str], *, timeout: float, input: bytes | None = None) -> subprocess.CompletedProcess:
        """Run `command` on the device and wait; raises subprocess.TimeoutExpired or OSError when
        it cannot even start (a missing ssh or qemu binary)."""
        env = self.emulated.env() if self.emulated else None
        return subprocess.run(self.argv(command), input=input, capture_output=True, timeout=timeout, env=env)

    def probe(self, timeout: float = 30.0) -> Probe:
        """Ask the device's Python for its architecture and version."""
        try:
            done = self.run(["python3", "-c", PROBE], timeout=timeout)
        except FileNotFoundError as exc:
            return Probe(False, reason=f"{Path(exc.filename or '?').name} not found on this machine")
        except subprocess.TimeoutExpired:
            return Probe(False, reason=f"no answer in {timeout:g} s")
        except OSError as exc:
            return Probe(False, reason=f"cannot start: {exc.strerror or exc}")
        if done.returncode != 0:
            err = done.stderr.decode(errors="replace").strip().splitlines()
            return Probe(False, reason=(err[-1] if err else f"exit status {done.returncode}")[:200])
        words = done.stdout.decode(errors="replace").split()
        if len(words) != 2:
            return Probe(False, reason=f"unexpected answer {done.stdout[:80]!r}")
        arch, version = words
        if arch not in self.target.arch:
            return Probe(False, arch, version, f"is {arch}, target {self.target.name} is {'/'.join(self.target.arch)}")
        return Probe(True, arch, version)


def _host(value: str) -> bool:
    """A hostname (or ssh_config alias) of dot-separated labels, an IPv4 or an IPv6 address."""
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        pass
    name = value[:-1] if value.endswith(".") else value
    if not name or len(name) > 253 or re.fullmatch(r"[0-9.]+", name):  # digits and dots only: a bad IPv4
        return False
    return all(HOST_LABEL.fullmatch(label) for label in name.split("."))


def _plain(value: str, spaces: bool = False) -> bool:
    """Not an option, and no control characters (nor whitespace unless `spaces`)."""
    return (bool(value) and not value.startswith("-") and value.isprintable()
            and (spaces or not any(c.isspace() for c in value)))


def _check_ssh(file: Path, ssh: Ssh) -> None:
    if not (_plain(ssh.host) and _host(ssh.host)):
        raise _bad(file, "ssh.host", ssh.host, "a hostname (letters, digits, '-', '_' and dots), an IPv4 or an "
                                               "IPv6 address")
    if ssh.user is not None and not USER.fullmatch(ssh.user):
        raise _bad(file, "ssh.user", ssh.user, "a user name of letters, digits, '_', '.' and '-' (up to 32), "
                                               "not starting with '-'")
    if not 0 < ssh.port < 65536:
        raise _bad(file, "ssh.port", ssh.port, "1-65535")
    if ssh.connect_timeout_s < 1:
        raise _bad(file, "ssh.connect_timeout_s", ssh.connect_timeout_s, "a whole number of seconds >= 1")
    for key, spaces in (("identity", True), ("known_hosts", False), ("python", False), ("workdir", True)):
        value = getattr(ssh, key)
        if value is not None and not _plain(value, spaces):
            raise _bad(file, f"ssh.{key}", value, "a path " + (PLAIN if not spaces else
                                                                "not starting with '-', without control characters"))


def parse(file: Path, raw: dict) -> Device:
    """A device from its TOML table; every key and value checked, the target loaded."""
    spec = config.parse(DeviceFile, raw, file)
    if not spec.name or any(c in spec.name for c in "/\\ "):
        raise _bad(file, "name", spec.name, "a name without spaces or slashes")
    transport = spec.transport
    for other in TRANSPORTS:
        if other != transport and getattr(spec, other) is not None:
            raise _bad(file, f"[{other}]", "table", f"only the [{transport}] table for transport {transport!r}")
    ssh = emulated = None
    local = spec.local or Local()
    if not local.workdir.startswith("~") and not Path(local.workdir).is_absolute():
        local = Local(os.path.normpath(file.parent.absolute() / local.workdir))  # beside the file, as a root is
    if transport == "ssh":
        ssh = spec.ssh or config.parse(Ssh, {}, file, at="ssh")  # no [ssh] table: it lacks `host`
        _check_ssh(file, ssh)
    if transport == "emulated":
        emulated = spec.emulated or config.parse(Emulated, {}, file, at="emulated")  # it lacks `root`
        root = Path(emulated.root).expanduser()
        root = root if root.is_absolute() else file.parent.absolute() / root  # beside the file
        emulated = replace(emulated, root=os.path.normpath(root))
    try:
        target = targets.load(spec.target)
    except ConfigError as exc:
        raise ConfigError(f"{file}: {exc.message}", exc.hint) from None
    target.budgets.merged(spec.budgets, file)  # the overrides: same keys and checks as a target's
    return Device(name=spec.name, target=target, transport=transport, file=file, description=spec.description,
                  tags=spec.tags, overrides=dict(spec.budgets), ssh=ssh, emulated=emulated, local=local)


def read(file: Path) -> Device:
    return parse(Path(file), tomlfiles.read(file, "devices/README.md"))


def search_path() -> list[Path]:
    return tomlfiles.search_path("EDGETL_DEVICES", "devices", SHIPPED)


def fleet_path() -> list[Path]:
    """Where the default fleet is: $EDGETL_DEVICES alone when set, else ./devices, else the shipped files."""
    return tomlfiles.configured_path("EDGETL_DEVICES", "devices", SHIPPED)


def load(name: str | Path) -> Device:
    """A device by the path of its TOML file, or by name (looked up in the search path)."""
    return read(tomlfiles.find(name, search_path(), "device"))


def fleet(folder: Path | None = None) -> list[Device]:
    """Every device file in `folder` (default: `fleet_path`, first found wins by name); names must be unique
    within a folder."""
    if folder and not Path(folder).is_dir():
        raise ConfigError(f"{folder} is not a directory", "pass a directory of device .toml files")
    files = sorted(Path(folder).glob("*.toml")) if folder else [
        f for d in fleet_path() if d.is_dir() for f in sorted(d.glob("*.toml"))]
    devices: dict[str, Device] = {}
    for file in files:
        device = read(file)
        if device.name in devices:
            if folder:
                raise ConfigError(f"{file}: device name {device.name!r} is also used by {devices[device.name].file}",
                                  "give every device in a fleet its own name")
            continue  # an earlier directory of $EDGETL_DEVICES shadows it
        devices[device.name] = device
    if not devices:
        where = folder or os.pathsep.join(map(str, fleet_path()))
        raise ConfigError(f"no device files in {where}", "see devices/local.toml")
    return list(devices.values())


def select(device: str | Path | None = None, folder: Path | None = None) -> list[Device]:
    """The devices a command works on (check, deploy, the pytest plugin): every device of `folder`,
    else the one named, else this machine (`local`)."""
    return fleet(folder) if folder else [load(device or "local")]


def probe_all(devices: list[Device], timeout: float = 30.0) -> list[Probe]:
    """Probe every device at once (each waits on its own transport), in the order given."""
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(devices)))) as pool:
        return list(pool.map(lambda d: d.probe(timeout), devices))



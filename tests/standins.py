"""Real stand-ins for boards on a shelf: an OpenSSH server on loopback with throwaway keys.

Nothing here is faked: the device code talks to a real sshd through the real ssh client. Where
sshd is not installed (`make test` installs it where it can), the tests that need it skip with
the reason; under CI=true they fail instead, because CI must run them.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if os.access("/usr/sbin/sshd", os.X_OK) else None)
QEMU = shutil.which("qemu-aarch64-static")
# The emulated Raspberry Pi 4 `make test` builds (tools/arm64-root.sh), or one named by $EDGETL_ARM64_ROOT.
ARM64_ROOT = Path(os.environ.get("EDGETL_ARM64_ROOT", Path(__file__).resolve().parent.parent / ".hil" / "arm64-root"))


def need(tool: str | None, why: str) -> None:
    """Skip (or fail under CI=true) when a stand-in's program is missing."""
    if tool is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{why} (CI=true: these tests must run; `make test` installs it)")
        pytest.skip(why)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopbackSshd:
    """sshd -D on 127.0.0.1:PORT, its host key and a user key made for it alone; stopped by its PID."""

    def __init__(self, root: Path):
        self.root, self.port = root, free_port()
        root.mkdir(parents=True, exist_ok=True)
        for name in ("host_key", "user_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(root / name)],
                           check=True)
        (root / "authorized_keys").write_text((root / "user_key.pub").read_text())
        host = (root / "host_key.pub").read_text().split()
        self.known_hosts = root / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host[0]} {host[1]}\n")
        self.config = root / "sshd_config"
        self.config.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {root / 'host_key'}",
            f"PidFile {root / 'sshd.pid'}", f"AuthorizedKeysFile {root / 'authorized_keys'}",
            "UsePAM no", "StrictModes no", "PasswordAuthentication no", "PermitRootLogin prohibit-password",
            "Subsystem sftp internal-sftp", ""]))
        self.process: subprocess.Popen | None = None

    @property
    def user(self) -> str:
        return getpass.getuser()

    def start(self) -> LoopbackSshd:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation dir sshd insists on
        with open(self.root / "sshd.log", "wb") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)], stdout=subprocess.DEVNULL,
                                            stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.root / 'sshd.log').read_text()[-500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("sshd did not listen within 10 s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def device_toml(self, name: str = "loopback", target: str = "host-cpu", **ssh) -> str:
        """A device file for this server (the remote Python is this interpreter). The server lives for
        the session: a test that deploys gives its own `workdir`."""
        table = {"host": "127.0.0.1", "port": self.port, "user": self.user, "identity": str(self.root / "user_key"),
                 "known_hosts": str(self.known_hosts), "python": sys.executable, "workdir": str(self.root / "work"),
                 "connect_timeout_s": 5, **ssh}
        lines = [f'name = "{name}"', f'target = "{target}"', 'transport = "ssh"', "[ssh]"]
        lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]  # JSON scalars are TOML ones
        return "\n".join(lines) + "\n"


@contextmanager
def tiny_fs(path, size="64k"):
    """A tmpfs of `size` mounted at `path` (root only); skipped where mounting is not allowed, unless CI=true."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot mount a tmpfs for the disk-full test: {done.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)

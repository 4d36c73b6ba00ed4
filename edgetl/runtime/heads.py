"""Versioned classifier heads on the device, written so that a power cut never leaves a broken one.

    BUNDLE.heads/
      head-000003.npz   W, b, labels, version (+ head-000003.json: what made it)
      CURRENT           the file name of the head in force

A new head is written to a temp file, fsynced and renamed into place; then CURRENT is replaced
the same way. Renaming CURRENT is the commit: a process killed at any point before it leaves
the previous head in force, and one killed after it leaves the new one. The last `keep` heads
are kept for rollback; without CURRENT, the bundle's own head is in force. Standard library
and numpy only.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np

from edgetl.errors import ConfigError
from edgetl.runtime.files import atomic_write
from edgetl.runtime.model import Head

CURRENT = "CURRENT"
NAME = re.compile(r"^head-(\d{6})\.npz$")


class HeadStore:
    def __init__(self, root: str | Path, base: Head, keep: int = 5):
        self.root, self.base, self.keep = Path(root), base, max(2, keep)

    @classmethod
    def beside(cls, bundle_dir: Path, base: Head, keep: int = 5) -> HeadStore:
        """The store for a bundle: BUNDLE.heads next to it (a bundle dir holds only what it lists)."""
        bundle_dir = Path(bundle_dir)
        return cls(bundle_dir.with_name(bundle_dir.name + ".heads"), base, keep)

    def versions(self) -> list[int]:
        if not self.root.is_dir():
            return []
        return sorted(int(m[1]) for p in self.root.iterdir() if (m := NAME.match(p.name)))

    def _file(self, version: int) -> Path:
        return self.root / f"head-{version:06d}.npz"

    def current_version(self) -> int:
        marker = self.root / CURRENT
        if not marker.is_file():
            return 0
        m = NAME.match(marker.read_text().strip())
        if not m:
            raise ConfigError(f"{marker} does not name a head file", "run `edgetl adapt BUNDLE --rollback`")
        return int(m[1])

    def current(self) -> Head:
        """The head in force: the committed one, or the bundle's own."""
        version = self.current_version()
        return self.base if version == 0 else Head.read(self._file(version), self.base.labels)

    def commit(self, head: Head, info: dict) -> int:
        """Write `head` as the next version and put it in force; returns its version."""
        self.root.mkdir(parents=True, exist_ok=True)
        version = max([0, *self.versions()]) + 1
        buf = io.BytesIO()
        np.savez(buf, W=head.W.astype(np.float32), b=head.b.astype(np.float32),
                 labels=np.asarray(head.labels), version=np.int64(version))
        atomic_write(self._file(version), buf.getvalue())
        atomic_write(self.root / f"head-{version:06d}.json",
                     json.dumps({**info, "version": version, "parent": self.current_version()}, indent=2).encode())
        atomic_write(self.root / CURRENT, f"head-{version:06d}.npz\n".encode())  # the commit point
        self._prune(version)
        return version

    def rollback(self) -> int:
        """Put the previous kept head in force (the bundle's own when none is left); returns its version."""
        current = self.current_version()
        older = [v for v in self.versions() if v < current] if current else []
        if not current:
            raise ConfigError("nothing to roll back: the bundle's own head is in force", "adapt first")
        if older:
            atomic_write(self.root / CURRENT, f"head-{older[-1]:06d}.npz\n".encode())
            return older[-1]
        (self.root / CURRENT).unlink()
        return 0

    def history(self) -> list[dict]:
        out = []
        for v in self.versions():
            meta = self.root / f"head-{v:06d}.json"
            out.append(json.loads(meta.read_text()) if meta.is_file() else {"version": v})
        return out

    def _prune(self, current: int) -> None:
        for v in self.versions()[: -self.keep]:
            if v != current:
                self._file(v).unlink(missing_ok=True)
                (self.root / f"head-{v:06d}.json").unlink(missing_ok=True)
        for stale in self.root.glob(".*.tmp"):  # left by a process killed mid-write
            stale.unlink(missing_ok=True)

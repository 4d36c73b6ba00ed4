"""What the pipeline remembers between runs: one stamp per completed stage, in OUT/.edgetl-pipeline.

A stamp holds the stage's fingerprint (the hash of everything it reads: its config table, the
content of its data files, the digests of the stages before it, the edgetl version) and the digest
of what it wrote. A stage is up to date when its fingerprint is the one stamped and its outputs
still hash to the stamped digest; anything else re-runs it. A stamp is written only after the
stage's outputs are complete, so a stage killed half-way has none and runs again, while the
stages before it keep theirs. File hashes are cached by (size, mtime): a rerun with nothing
changed reads no data file twice, as DVC does.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from edgetl.runtime.atomic import write_file
from edgetl.runtime.records import Record, RecordError, record

STATE = ".edgetl-pipeline"
STAMPS = "stamps"
HASH_CACHE = "hashes.json"


@record
class Stamp(Record):
    """One completed stage: what it read (`fingerprint`) and what it wrote (`digest`)."""

    stage: str
    fingerprint: str
    digest: str
    edgetl: str
    seconds: float
    outputs: tuple[str, ...]  # relative to OUT
    inputs: dict  # the fingerprint's parts (edgetl, config, data, after:STAGE): what changed, by name


def digest_of(value) -> str:
    """sha256 of a JSON-able value, keys sorted: the same table gives the same digest."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


class State:
    """OUT/.edgetl-pipeline: the stamps and the file-hash cache."""

    def __init__(self, out: Path):
        self.out = out
        self.dir = out / STATE
        self._cache: dict | None = None

    def stamp(self, stage: str) -> Stamp | None:
        path = self.dir / STAMPS / f"{stage}.json"
        try:
            return Stamp.read(path)
        except (OSError, RecordError):
            return None  # never written, or cut by a crash before the rename: the stage runs again

    def write_stamp(self, stamp: Stamp) -> None:
        write_file(self.dir / STAMPS / f"{stamp.stage}.json", (stamp.to_json() + "\n").encode())

    def forget(self, stage: str) -> None:
        (self.dir / STAMPS / f"{stage}.json").unlink(missing_ok=True)

    # -- content hashes -------------------------------------------------------------------------
    def tree_digest(self, paths: list[Path]) -> str:
        """One digest of the files under `paths`: their names below each path and their content, not where
        the paths are (an OUT restored elsewhere, a CI cache, is still up to date); a missing path counts
        as missing, so deleting an output is a change."""
        h = hashlib.sha256()
        for i, root in enumerate(paths):
            h.update(f"{i}\0".encode())
            if not root.exists():
                h.update(b"<missing>\0")
                continue
            files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()
                                                         and not p.name.startswith("."))
            for f in files:
                h.update(f"{f.relative_to(root) if f != root else ''}\0{self.file_hash(f)}\0".encode())
        return h.hexdigest()

    def file_hash(self, path: Path) -> str:
        cache = self._load_cache()
        st = path.stat()
        key = str(path.resolve())
        seen = cache.get(key)
        if seen and seen[0] == st.st_size and seen[1] == st.st_mtime_ns:
            return seen[2]
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        cache[key] = [st.st_size, st.st_mtime_ns, h.hexdigest()]
        return cache[key][2]

    def _load_cache(self) -> dict:
        if self._cache is None:
            try:
                self._cache = json.loads((self.dir / HASH_CACHE).read_text())
            except (OSError, ValueError):
                self._cache = {}
        return self._cache

    def save_cache(self) -> None:
        if self._cache is not None and self.dir.is_dir():
            live = {k: v for k, v in self._cache.items() if os.path.exists(k)}
            write_file(self.dir / HASH_CACHE, json.dumps(live).encode())

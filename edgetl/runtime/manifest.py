"""The bundle manifest as a typed record: what `edgetl compile` writes and every reader reads.

compile writes it (`edgetl.pack`); the device verifies and loads it (`runtime.verify`,
`runtime.model`, `runtime.receive`); deploy, check, the pytest plugin and the CLI read it
through `Bundle.manifest`. Everything a device checks and needs, nothing that varies between
two builds of the same inputs (no timestamps, no paths of the building machine). Standard
library only: the device reads it with no host code.
"""

from __future__ import annotations

from dataclasses import field

from edgetl.runtime.engines import TensorSpec
from edgetl.runtime.preprocess import PreprocessSpec
from edgetl.runtime.records import Record, record
from edgetl.runtime.tokens import TextSpec

MANIFEST = "manifest.json"
SIGNATURE = "manifest.json.sig"


@record
class SourceRun(Record):
    """The run a bundle was built from: its dir's name and the hash of its record. A bundle made from a
    model file edgetl did not train (`edgetl bundle from-model`) names that file instead: `name` is the
    file's name, `id` is "sha256:" and its hash, `backbone` says "model file" and where it was cut."""

    name: str
    id: str
    backbone: str


@record
class FileEntry(Record):
    sha256: str
    bytes: int


@record
class Checkset(Record):
    """The bundle's own labelled images (uint8 pixels) that `edgetl check` scores on the device:
    `per_class` asked for of each class (`edgetl compile --checkset-per-class`); `capped_at` the
    image count the size cap cut it to, None when it did not (fewer held-out images also give fewer)."""

    OPTIONAL_KEYS = frozenset({"per_class", "capped_at"})  # manifests written before these were recorded

    file: str
    images: int
    from_: str = field(metadata={"key": "from"})  # where the images came from, e.g. "run test split"
    per_class: int = 0
    capped_at: int | None = None


@record
class Signer(Record):
    """The key a signed manifest names: raw ed25519 public key (base64) and its id."""

    key: str
    id: str


@record
class Compatibility(Record):
    summary: str
    source: str
    first_unmapped: str | None
    cpu_ops: int


@record
class ExpectedAccuracy(Record):
    """Top-1 (percent) the packed model scored when it was made: on `split` (`images` of them), and
    on the run's test split beside it where it has one; what the device's own check is held to."""

    OPTIONAL_KEYS = frozenset({"images", "test_top1"})

    top1: float
    split: str
    images: int | None = None
    test_top1: float | None = None


@record
class Manifest(Record):
    """manifest.json of a bundle. Top-1 figures in `accuracy` are percent (0-100)."""

    SCHEMA_VERSIONS = (1,)
    OPTIONAL_KEYS = frozenset({"features"})  # manifests written before feature statistics were shipped

    schema_version: int
    name: str
    target: str
    arch: tuple[str, ...]
    engine: str
    precision: str
    created_by: str
    source_run: SourceRun
    labels: tuple[str, ...]
    preprocess: PreprocessSpec | TextSpec  # a text bundle's: its tokenizer file, max_len and padding id
    model: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    head: str
    files: dict[str, FileEntry]
    budgets: dict[str, float]  # the target's: latency_p95_ms, min_top1 (percent), max_rss_mb
    checkset: Checkset | None
    accuracy: ExpectedAccuracy | None
    choice: str
    deferred: str | None
    compatibility: Compatibility
    signer: Signer | None
    features: str | None = None  # the file of the backbone outputs' mean/std on the server's training images

    def to_bytes(self) -> bytes:
        """The manifest file's bytes: sorted keys, so that two builds of the same inputs match."""
        return self.to_json(indent=2, sort_keys=True).encode() + b"\n"

    @property
    def model_sha256(self) -> str:
        return self.files[self.model].sha256

    def runs_on(self, arches) -> bool:
        """Whether this bundle is built for one of `arches` (a device's CPU architectures)."""
        return bool(set(self.arch) & set(arches))

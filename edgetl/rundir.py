"""The run dir, the one place that knows its layout, and the typed records its stages leave.

    RUN/finetune.json            FinetuneRecord   (fine-tune / pretrain)
    RUN/labels.json              the class names, in label order
    RUN/preprocess.json          PreprocessSpec   (created here, once)
    RUN/head.npz, checkpoint.pt  the head (W, b) and the trained weights
    RUN/export/FORMAT/           ExportRecord (export.json), backbone/model files, the spec with its layout
    RUN/quantize/FORMAT/         QuantizeRecord (quantize.json), the int8 backbone, the spec with its input scale
    RUN/bundles/TARGET           the default place of `edgetl compile`'s bundle

Every stage reads what an earlier one wrote through `RunDir`, so a damaged file is one
`RunError` naming it (never a KeyError), and no other module builds a run-dir path.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from edgetl.errors import RunError
from edgetl.runtime.manifest import ExpectedAccuracy
from edgetl.runtime.preprocess import PreprocessSpec
from edgetl.runtime.records import Record, RecordError, record
from edgetl.runtime.tokens import TOKENIZER, TextSpec
from edgetl.runtime.tokens import read_spec as spec_of

HINT = "the run is damaged; fine-tune again or restore it"
RUN_RECORD = "finetune.json"
LABELS = "labels.json"
SPEC = "preprocess.json"
HEAD = "head.npz"
FEATURES = "features.npz"  # per-feature mean/std of the backbone output on training images
CHECKPOINT = "checkpoint.pt"
EXPORT_RECORD = "export.json"
QUANTIZE_RECORD = "quantize.json"
FORMATS = {"onnx": ".onnx", "tflite": ".tflite"}
EXPORT_DIR, QUANTIZE_DIR, BUNDLES_DIR = "export", "quantize", "bundles"  # the stages' dirs inside a run
ENCODER = "encoder.json"  # a text run's encoder config (its tokenizer.json beside it)
RUN_FILES = frozenset({RUN_RECORD, LABELS, SPEC, HEAD, CHECKPOINT, ENCODER, TOKENIZER})  # what a fine-tune writes
STAGE_FILES = frozenset({HEAD, LABELS, SPEC, FEATURES, TOKENIZER})  # beside every export and quantize artifact


def damaged(path: Path, why: str) -> RunError:
    return RunError(f"{path} is damaged: {why}", HINT)


# -- the records ---------------------------------------------------------------------------


@record
class RunData(Record):
    """Where a run's images (a text run: its labelled text files) came from (absolute paths: later stages
    read them from anywhere)."""

    train_dir: str
    val_dir: str | None
    test_dir: str | None
    train: int
    val: int
    test: int | None
    skipped: tuple[tuple[str, str], ...] = ()


@record
class FinetuneRecord(Record):
    """What a fine-tune (or pretrain) run measured; top-1 figures in percent (0-100)."""

    OPTIONAL_KEYS = frozenset({"schema_version", "seed", "val_loss", "max_len"})  # older runs lack them

    stage: str
    backbone: str
    weights: str
    classes: int
    img_size: int
    freeze: str
    trainable_stages: list[str]  # as the API has always returned it
    val_top1: float
    test_top1: float | None
    epochs: int
    head_epochs: int
    best_epoch: int
    seconds: float
    seconds_embed: float
    seconds_head: float
    seconds_finetune: float
    world_size: int
    data: RunData
    versions: dict[str, str]
    config: dict[str, Any]
    history: tuple[dict[str, Any], ...] = ()
    seed: int | None = None  # of the split, the augmentation and the initialisation
    val_loss: float | None = None  # mean val cross-entropy (label-smoothed as trained) of the kept model
    max_len: int | None = None  # a text run's tokens per sentence (img_size is 0); None for images
    schema_version: int = 1


@record
class ExportFiles(Record):
    backbone: str
    model: str
    head: str


@record
class InputInfo(Record):
    shape: tuple[int, ...]
    layout: str
    dtype: str


@record
class ExportRecord(Record):
    """One format's export: files, input, sizes, and the parity check against PyTorch."""

    OPTIONAL_KEYS = frozenset({"schema_version"})

    format: str
    backbone: str
    run: str
    files: ExportFiles
    input: InputInfo
    embedding_dim: int
    classes: int
    sizes_bytes: dict[str, int]
    parity: dict[str, Any]
    seconds: float
    versions: dict[str, str]
    schema_version: int = 1


@record
class QuantizeStep(Record):
    """One step of `--method auto`'s escalation, in the order they run: calibration (each method),
    refinement (bias correction, equalization), float_fallback (sensitive layers kept float), qat.
    A step runs only when the one before missed the budget. `drop` and `test_drop` are the step's
    best candidate's loss in top-1 points on the guard split and on test; `gain` is how many points
    of guard-split drop it won over the best before it (negative: it lost); `kept` says whether the
    result written is this step's."""

    step: str
    ran: bool
    seconds: float = 0.0
    best: str | None = None  # the candidate's label, e.g. "percentile+bias_correction"
    drop: float | None = None
    test_drop: float | None = None
    gain: float | None = None
    kept: bool = False
    note: str = ""


@record
class QatRecord(Record):
    """Quantization-aware fine-tuning as it went: per epoch (0 = the calibrated ranges before any step)
    train loss, val loss and val top-1 (percent) with int8 simulated; the artifact's own scores; whether it
    was kept (it must beat the best post-training result on the guard split) and why not."""

    epochs: int
    best_epoch: int
    lr: float
    history: tuple[dict[str, Any], ...]
    train_seconds: float
    seconds: float
    kept: bool
    int8_top1: float | None = None
    drop: float | None = None
    test_drop: float | None = None
    agreement: float | None = None
    parity: dict[str, Any] | None = None  # the artifact against the torch q/dq graph it was converted from
    reason: str = ""


@record
class QuantizeRecord(Record):
    """One format's int8 result. `fp32_top1`/`int8_top1` are top-1 in percent (0-100, 2 decimals),
    `drop` is in points of it; `search` says how the float-layer search went and what ended it."""

    OPTIONAL_KEYS = frozenset({"schema_version", "taps", "refinements", "steps", "qat"})

    format: str
    run: str
    backbone: str
    file: str
    method: str
    method_requested: str
    max_drop: float
    float_layers: tuple[str, ...]
    eval: str
    images: int
    fp32_top1: float
    int8_top1: float
    drop: float
    agreement: float
    test: dict[str, Any] | None
    trials: tuple[dict[str, Any], ...]
    sensitivity_db: tuple[tuple[str, float], ...]
    search: dict[str, Any] | None
    calibration: dict[str, Any]
    ops: dict[str, Any]
    int8_verified: bool
    io: dict[str, Any]
    sizes_bytes: dict[str, int]
    latency_ms: dict[str, dict[str, float]]
    int8_over_fp32_latency: float
    seconds: float
    versions: dict[str, str]
    taps: dict[str, Any] | None = None  # per output segment: int8 error vs its spread; the taps dropped
    refinements: tuple[str, ...] = ()  # PTQ refinements the kept model has (bias_correction, equalization)
    steps: tuple[QuantizeStep, ...] = ()  # the escalation as it ran (`--method auto`, and qat)
    qat: QatRecord | None = None  # quantization-aware fine-tuning, when it ran (kept or not)
    schema_version: int = 1

    def accuracy(self, precision: str) -> ExpectedAccuracy:
        """The figures a bundle records for the fp32 or int8 model (top-1 in percent)."""
        key = "int8_top1" if precision == "int8" else "fp32_top1"
        return ExpectedAccuracy(top1=self[key], split=self.eval, images=self.images,
                                test_top1=self.test[key] if self.test else None)


# -- reading -------------------------------------------------------------------------------


def read_record(cls: type[Record], path: Path):
    """`cls` from the JSON file `path`; a damaged file is a RunError naming it."""
    try:
        return cls.read(path)
    except RecordError as exc:
        raise damaged(path, str(exc).removeprefix(f"{path}: ").removeprefix(f"{path}.")) from None


def read_labels(path: Path) -> tuple[str, ...]:
    """labels.json: the class names in label order, a non-empty list of distinct strings."""
    try:
        labels = json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise damaged(path, f"not valid JSON ({exc.__class__.__name__}: {str(exc).splitlines()[0]})") from None
    if not isinstance(labels, list) or not labels or not all(isinstance(c, str) for c in labels) \
            or len(set(labels)) != len(labels):
        raise damaged(Path(path), "expected a list of distinct class names")
    return tuple(labels)


def read_spec(path: Path) -> PreprocessSpec | TextSpec:
    """preprocess.json as a PreprocessSpec (its size, mean and std checked), or a text run's TextSpec."""
    try:
        try:
            raw = json.loads(Path(path).read_bytes())
        except (ValueError, UnicodeDecodeError) as exc:
            raise RecordError(f"{path}: not valid JSON ({str(exc).splitlines()[0]})") from None
        return spec_of(raw, str(path))
    except (RecordError, TypeError) as exc:
        why = str(exc).removeprefix(f"{path}: ").removeprefix(f"{path}.")
        raise damaged(path, why if "not valid JSON" in why else f"not a preprocessing spec ({why})") from None


def read_head(path: Path, classes: int) -> None:
    """head.npz: W (classes x dim) and b (classes), finite; what a bundle ships as its head."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            W, b = np.asarray(data["W"]), np.asarray(data["b"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise damaged(path, f"not a head ({exc.__class__.__name__})") from None
    if W.ndim != 2 or W.shape[0] != classes or b.shape != (classes,) or not np.isfinite(W).all():
        raise damaged(path, f"W {W.shape} and b {b.shape} do not fit {classes} classes, or hold NaN/inf")


def _file(name: str) -> property:
    """A file of the dir, by its one name."""
    return property(lambda self: self.path / name, doc=f"DIR/{name}")


@dataclass(frozen=True)
class StageDir:
    """RUN/export/FORMAT or RUN/quantize/FORMAT: one stage's output in one format, with the
    labels, head and spec of the artifact beside it (what a bundle packs)."""

    path: Path
    format: str

    spec_file = _file(SPEC)
    head = _file(HEAD)
    labels = _file(LABELS)
    features = _file(FEATURES)  # mean/std of the backbone's outputs on the run's training images (optional)

    def spec(self) -> PreprocessSpec:
        return read_spec(self.spec_file)

    RECORD: ClassVar[str] = ""

    @property
    def record_file(self) -> Path:
        return self.path / self.RECORD  # the subclass's record

    @classmethod
    def fill(cls, staged: Path, run: RunDir, spec: PreprocessSpec, record: Record, features: Path | None = None
             ) -> None:
        """Write a stage's small files into its staged dir: the run's head and labels beside the
        artifact, the feature statistics of its outputs, the spec with what this stage added, and its record."""
        shutil.copy2(run.head, staged / HEAD)
        shutil.copy2(run.labels_file, staged / LABELS)
        if (run.path / TOKENIZER).is_file():  # a text run's tokenizer goes with every artifact
            shutil.copy2(run.path / TOKENIZER, staged / TOKENIZER)
        if features is not None and features.is_file() and features != staged / FEATURES:
            shutil.copy2(features, staged / FEATURES)
        (staged / SPEC).write_text(spec.to_json())
        record.write(staged / cls.RECORD)


@dataclass(frozen=True)
class ExportDir(StageDir):
    RECORD: ClassVar[str] = EXPORT_RECORD

    @cached_property
    def record(self) -> ExportRecord:  # read once: the files below are named in it
        return read_record(ExportRecord, self.record_file)

    @property
    def backbone(self) -> Path:
        return self.path / self.record.files.backbone

    @property
    def model(self) -> Path:
        return self.path / self.record.files.model

    @staticmethod
    def names(fmt: str) -> tuple[str, str]:
        """The file names export writes: (backbone, combined model)."""
        return f"backbone{FORMATS[fmt]}", f"model{FORMATS[fmt]}"


@dataclass(frozen=True)
class QuantizeDir(StageDir):
    RECORD: ClassVar[str] = QUANTIZE_RECORD

    @cached_property
    def record(self) -> QuantizeRecord:
        return read_record(QuantizeRecord, self.record_file)

    @property
    def model(self) -> Path:
        return self.path / self.record.file

    @staticmethod
    def name(fmt: str) -> str:
        return f"backbone_int8{FORMATS[fmt]}"


@dataclass(frozen=True)
class RunDir:
    """A run dir: its files and each stage's output, by name, read checked."""

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    record_file = _file(RUN_RECORD)
    labels_file = _file(LABELS)
    spec_file = _file(SPEC)
    head = _file(HEAD)
    checkpoint = _file(CHECKPOINT)

    def is_run(self) -> bool:
        return self.path.is_dir() and self.record_file.is_file()

    def missing(self) -> list[str]:
        """The files a complete run has and this one lacks."""
        return [n for n in (RUN_RECORD, CHECKPOINT, LABELS, SPEC) if not (self.path / n).is_file()]

    @cached_property
    def record(self) -> FinetuneRecord:
        return read_record(FinetuneRecord, self.record_file)

    @cached_property
    def labels(self) -> tuple[str, ...]:
        return read_labels(self.labels_file)

    @cached_property
    def spec(self) -> PreprocessSpec:
        return read_spec(self.spec_file)

    @cached_property
    def record_id(self) -> str:
        """A short hash of what the run is: its record without the seconds it took and the dir it was
        written to (a rerun of the same inputs is the same run, and its bundles are byte for byte the
        same). What a bundle names its run by."""
        import hashlib
        import json

        raw = json.loads(self.record_file.read_bytes())
        what = {k: v for k, v in raw.items() if not k.startswith("seconds")} if isinstance(raw, dict) else raw
        if isinstance(what, dict) and isinstance(what.get("config"), dict):
            what["config"] = {k: v for k, v in what["config"].items() if k != "out"}  # where it was written
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]

    def validate(self) -> FinetuneRecord:
        """Read every small file once (record, labels, spec, head) so that later readers meet only
        sound files; returns the run record."""
        record = self.record
        labels = self.labels
        self.spec  # noqa: B018 - read to check it
        if self.head.exists():
            read_head(self.head, len(labels))
        return record

    # the stages' outputs
    def export_dir(self, fmt: str) -> ExportDir:
        return ExportDir(self.path / EXPORT_DIR / fmt, fmt)

    def quantize_dir(self, fmt: str) -> QuantizeDir:
        return QuantizeDir(self.path / QUANTIZE_DIR / fmt, fmt)

    def exported(self, fmt: str) -> ExportDir | None:
        """The export in `fmt`, when there is one."""
        d = self.export_dir(fmt)
        return d if d.record_file.is_file() else None

    def quantized(self, fmt: str) -> QuantizeDir | None:
        """The int8 result in `fmt`, when there is one."""
        d = self.quantize_dir(fmt)
        return d if d.record_file.is_file() else None

    def bundle_dir(self, target: str) -> Path:
        return self.path / BUNDLES_DIR / target

    def write_files(self, into: Path, *, labels: tuple[str, ...], spec: PreprocessSpec, record: Record) -> None:
        """A fine-tune's own small files into the staged dir `into` (the weights are torch's to write)."""
        (into / LABELS).write_text(json.dumps(list(labels), indent=2))
        (into / SPEC).write_text(spec.to_json())
        record.write(into / RUN_RECORD)

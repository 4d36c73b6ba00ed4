"""A pipeline file (`edgetl.toml`), read and checked as a whole before any stage runs.

Each table is the flags of one command: `[finetune]` takes `edgetl finetune`'s (FinetuneConfig's
fields), `[calibration]` a calibration set's keys, `[quantize]`/`[compile]`/`[check]` those
commands' flags. Paths are relative to the file. `synth:NAME` names a `[synth.NAME]` data set the
pipeline writes itself. Every complaint is one line naming the key; nothing is written until the
whole file, its data dirs, targets, devices and keys are known to be sound.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from edgetl import config, tomlfiles
from edgetl.calibration_file import MIN_SAMPLES, SetFile
from edgetl.errors import ConfigError
from edgetl.train.config import FinetuneConfig

SYNTH = "synth:"
EXAMPLE = "examples/edgetl.toml"
IMAGE_METHODS = ("auto", "minmax", "entropy", "percentile", "qat")
TEXT_METHODS = ("auto", "dynamic", "minmax", "percentile")
STAGES = ("synth", "pretrain", "finetune", "quantize", "compile", "check")  # what --force takes (or STAGE.NAME)


@dataclass(frozen=True)
class SynthSpec:
    """`[synth.NAME]`: synthetic road-sign crops written to OUT/data/NAME (`edgetl data synth`)."""

    domain: Literal["city-a", "city-b"]
    per_class: int
    seed: int = 0
    size: int = 64


@dataclass(frozen=True)
class QuantizeSpec:
    """`[quantize]`: `edgetl quantize`'s flags, once per format."""

    formats: config.Choices[Literal["onnx", "tflite"]] | None = None  # default: what the targets run
    method: Literal["auto", "minmax", "entropy", "percentile", "qat", "dynamic"] = "auto"
    max_drop: config.NonNegative = 1.0
    split: Literal["val", "test"] = "val"
    io: Literal["int8", "uint8"] = "int8"
    escalate: tuple[Literal["refinement", "float_fallback", "qat"], ...] | None = None  # quantize.ESCALATION
    search_trials: int | None = None
    search_seconds: float | None = None
    qat_epochs: int | None = None
    qat_lr: float | None = None


@dataclass(frozen=True)
class CompileSpec:
    """`[compile]`: the targets a bundle is compiled for, each into OUT/bundles/TARGET."""

    targets: config.Choices[str]
    sign: str | None = None  # ed25519 private key (edgetl bundle keygen)
    allow_cpu_only: bool = False


@dataclass(frozen=True)
class CheckSpec:
    """`[check]`: the devices the bundles are checked on (`edgetl check`), a report in OUT/check."""

    device: str | None = None  # a device name or file (default: local, this machine)
    devices: str | None = None  # a fleet: a directory of device files
    runs: int = 200
    warmup: int = 20
    budgets: dict | None = None  # over every device's own: latency_p95_ms, min_top1 (percent), max_rss_mb


@dataclass(frozen=True)
class PipelineFile:
    """The file's tables as written; the stage tables are checked against their own records."""

    name: str | None = None  # the run's name (default: the file's stem)
    out: str = "edgetl-out"  # everything the pipeline writes: data/, runs/, bundles/, check/
    synth: dict = field(default_factory=dict)
    pretrain: dict | None = None
    finetune: dict = field(default_factory=dict)
    calibration: dict | None = None
    quantize: QuantizeSpec = field(default_factory=QuantizeSpec)
    compile: CompileSpec | None = None
    check: CheckSpec | None = None


@dataclass(frozen=True)
class Pipeline:
    """A checked pipeline file: paths resolved, every section typed."""

    file: Path
    raw: dict  # the file's tables, for the stages' fingerprints
    name: str
    out: Path
    synth: dict[str, SynthSpec]
    pretrain: FinetuneConfig | None
    finetune: FinetuneConfig  # (a TextFinetuneConfig when its data holds texts)
    calibration: dict | None  # a calibration set's keys, its data resolved (written as a file for quantize)
    quantize: QuantizeSpec
    compile: CompileSpec | None
    check: CheckSpec | None
    text: bool

    def synth_dir(self, name: str) -> Path:
        return self.out / "data" / name

    @property
    def run_dir(self) -> Path:
        return self.out / "runs" / self.name

    @property
    def pretrain_dir(self) -> Path:
        return self.out / "runs" / f"{self.name}-pretrain"

    def bundle_dir(self, target: str) -> Path:
        return self.out / "bundles" / target

    @property
    def formats(self) -> tuple[str, ...]:
        """The formats quantized: as written, else the ones the targets' engines run (onnx for text)."""
        if self.quantize.formats is not None:
            return tuple(self.quantize.formats)
        if self.text or self.compile is None:
            return ("onnx",)
        from edgetl import targets
        from edgetl.runtime.engines import table

        return tuple(dict.fromkeys(table.row(targets.load(t).engine).suffix.lstrip(".")
                                   for t in self.compile.targets))


def load(file: str | Path) -> Pipeline:
    """The pipeline `file` declares, every key, path, target, device and key checked; one line on the first
    problem found."""
    file = Path(file)
    raw = tomlfiles.read(file, EXAMPLE)
    top = config.parse(PipelineFile, raw, file)
    if not top.finetune:
        raise ConfigError(f"{file}: missing table [finetune]", 'e.g. [finetune] data = "data/train"')
    base = file.parent
    out = _path(base, top.out)
    synth = {name: config.parse(SynthSpec, _table(file, f"synth.{name}", spec), file, at=f"synth.{name}")
             for name, spec in top.synth.items()}
    pipeline_name = top.name or file.stem
    if not pipeline_name or "/" in pipeline_name or pipeline_name.startswith("."):
        raise config.bad(file, "name", top.name, "a plain name, e.g. city-b")

    def train(section: str, table: dict, out_dir: Path):
        table = {k.replace("-", "_"): v for k, v in _table(file, section, table).items()}
        cls = FinetuneConfig
        if isinstance(table.get("data"), str) and not table["data"].startswith(SYNTH) \
                and is_text_data(_path(base, table["data"])):
            from edgetl.train.text import TextFinetuneConfig  # (torch: text pipelines only)

            cls = TextFinetuneConfig
        cfg = config.parse(cls, table, file, at=section, given={"out": str(out_dir), "force": True, "stage": section})
        paths = {key: _data(file, base, out, synth, f"{section}.{key}", getattr(cfg, key))
                 for key in ("data", "val", "test") if getattr(cfg, key) is not None}
        weights = getattr(cfg, "weights", None)
        if weights is not None and weights not in ("imagenet", "none") and (base / weights).exists():
            paths["weights"] = str(_path(base, weights))
        return dataclasses.replace(cfg, **paths)

    from edgetl.data.text import is_text_data

    pretrain = train("pretrain", top.pretrain, out / "runs" / f"{pipeline_name}-pretrain") \
        if top.pretrain is not None else None
    finetune = train("finetune", top.finetune, out / "runs" / pipeline_name)
    text = is_text_data(finetune.data)
    if pretrain is not None and not text:
        if finetune.weights not in (None, "pretrain"):
            raise ConfigError(f"{file}: finetune.weights = {finetune.weights!r} and a [pretrain] table: the "
                              "fine-tune would not start from the pretrain run",
                              "drop finetune.weights (it then starts from [pretrain]), or drop [pretrain]")
        finetune = dataclasses.replace(finetune, weights=str(pretrain.out))
    elif getattr(finetune, "weights", None) == "pretrain":
        raise ConfigError(f"{file}: finetune.weights = 'pretrain' and no [pretrain] table", "add a [pretrain] table")
    check = top.check
    if check is not None and check.device is not None and (check.device.endswith(".toml") or "/" in check.device):
        check = dataclasses.replace(check, device=str(_path(base, check.device)))  # a file, not a name
    if check is not None and check.devices is not None:
        check = dataclasses.replace(check, devices=str(_path(base, check.devices)))
    pipeline = Pipeline(file, raw, pipeline_name, out, synth, pretrain, finetune,
                        _calibration(file, base, out, synth, top.calibration, text), top.quantize, top.compile,
                        check, text)
    _check_stages(pipeline)
    return pipeline


def _table(file: Path, key: str, value) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{file}: {key} = {value!r} is not a table", f"write it as [{key}]")
    return value


def _path(base: Path, value: str | Path) -> Path:
    path = Path(value).expanduser()
    return (path if path.is_absolute() else base / path).resolve()


def _data(file: Path, base: Path, out: Path, synth: dict, key: str, value: Path) -> Path:
    """A data path: `synth:NAME` (the pipeline writes it), else a dir or text table that must exist now."""
    text = str(value)
    if text.startswith(SYNTH):
        name = text[len(SYNTH):]
        if name not in synth:
            raise config.bad(file, key, text, [f"{SYNTH}{n}" for n in synth] or "a [synth.NAME] table first")
        return out / "data" / name
    path = _path(base, value)
    if not path.exists():
        raise ConfigError(f"{file}: {key} = {text!r}: {path} does not exist",
                          "give an ImageFolder dir (DIR/<class>/*.png) or a text table, relative to the file")
    return path


def _calibration(file: Path, base: Path, out: Path, synth: dict, table: dict | None, text: bool) -> dict | None:
    """`[calibration]` checked as a calibration set file (data or list, samples, seed), its data resolved."""
    if table is None:
        if not text:
            raise ConfigError(f"{file}: missing table [calibration] (int8 needs real images to set its ranges)",
                              '[calibration] data = "data/train", samples = 256, seed = 0')
        return None
    spec = config.parse(SetFile, _table(file, "calibration", table), file, at="calibration")
    if (spec.data is None) == (spec.list is None):
        raise ConfigError(f"{file}: [calibration] gives exactly one of `data` (a dir) or `list` (a file)",
                          'e.g. data = "synth:NAME" or data = "data/train"')
    key = "data" if spec.data is not None else "list"
    resolved = _data(file, base, out, synth, f"calibration.{key}", Path(getattr(spec, key)))
    if spec.samples < MIN_SAMPLES:
        raise config.bad(file, "calibration.samples", spec.samples, f"at least {MIN_SAMPLES} (256-512 is typical)")
    return dataclasses.asdict(spec) | {key: str(resolved)}


def _check_stages(p: Pipeline) -> None:
    """What only the stages' own checks know, asked now: the backbone, the methods, the targets each
    format can reach, the devices and the signing key."""
    from edgetl import devices, targets
    from edgetl.runtime.engines import table

    if p.text and p.pretrain is not None:
        raise ConfigError(f"{p.file}: [pretrain] is for image backbones, and finetune.data holds texts",
                          "drop [pretrain]")
    methods = TEXT_METHODS if p.text else IMAGE_METHODS
    if p.quantize.method not in methods:
        raise config.bad(p.file, "quantize.method", p.quantize.method, methods)
    if p.text and "tflite" in p.formats:
        raise config.bad(p.file, "quantize.formats", list(p.formats), "onnx (text int8 is onnxruntime's)")
    for key, value in (("quantize.search_trials", p.quantize.search_trials),
                       ("quantize.qat_epochs", p.quantize.qat_epochs)):
        if value is not None and value < 1:
            raise config.bad(p.file, key, value, "an int >= 1")
    if p.compile is not None:
        for name in p.compile.targets:
            try:
                target = targets.load(name)
            except ConfigError as exc:
                raise ConfigError(f"{p.file}: compile.targets: {exc.message}", exc.hint) from None
            _reachable(p, target, table)
        if p.compile.sign is not None and not _path(p.file.parent, p.compile.sign).is_file():
            raise ConfigError(f"{p.file}: compile.sign = {p.compile.sign!r} does not exist",
                              "make a key pair with `edgetl bundle keygen KEY`")
    if p.check is not None:
        if p.compile is None:
            raise ConfigError(f"{p.file}: [check] and no [compile]: there is no bundle to check",
                              '[compile] targets = ["host-cpu"]')
        if p.check.device is not None and p.check.devices is not None:
            raise ConfigError(f"{p.file}: [check] gives both device and devices", "one device, or a fleet dir")
        if p.check.runs < 1 or p.check.warmup < 0:
            raise config.bad(p.file, "check.runs", p.check.runs, "runs >= 1 and warmup >= 0")
        if p.check.budgets is not None:
            from edgetl.targets import Budgets

            unknown = sorted(set(p.check.budgets) - {f.name for f in dataclasses.fields(Budgets)})
            if unknown:
                raise config.bad(p.file, f"check.budgets.{unknown[0]}", p.check.budgets[unknown[0]],
                                 "latency_p95_ms, min_top1, max_rss_mb")
            Budgets(0, 0, 0).merged(p.check.budgets, p.file)  # one line naming a bad value
        try:
            devices.select(p.check.device, Path(p.check.devices) if p.check.devices else None)
        except ConfigError as exc:
            raise ConfigError(f"{p.file}: [check]: {exc.message}", exc.hint) from None


def _reachable(p: Pipeline, target, table) -> None:
    """Refuse a target the run cannot be compiled for: one that runs int8 alone in a format not quantized,
    or (text runs) no engine that takes text."""
    if p.text:
        from edgetl.backends import TEXT_ENGINE

        if TEXT_ENGINE not in target.engines:
            raise ConfigError(f"{p.file}: compile.targets: {target.name} runs {', '.join(target.engines)}, and "
                              f"text bundles run on {TEXT_ENGINE}", "compile text runs for host-cpu, rpi4, rpi5 or "
                                                                    "a Jetson's CPU")
        return
    fmt = table.row(target.engine).suffix.lstrip(".")
    if not {"fp32", "fp16"} & set(target.precisions) and fmt not in p.formats:
        raise ConfigError(f"{p.file}: compile.targets: {target.name} runs int8 {fmt} only, and quantize.formats "
                          f"is {', '.join(p.formats)}", f'add "{fmt}" to quantize.formats, or drop {target.name}')

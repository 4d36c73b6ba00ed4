"""`edgetl bundle from-model`: a bundle from a feature extractor edgetl did not train (a .tflite or
.onnx from a model zoo, another converter, another team), so a device can learn its classes.

The model is cut at its embedding (`backends.embedding`); its preprocessing is read from the model
where it can be (size, layout and type from the input tensor; mean/std from a uint8 input's
quantization, as Coral's models hold it, or from TFLite metadata) and otherwise taken from
`--preprocess` in pixel units; the target's backend for that file type compiles it; and it is
packed as any bundle, with an empty head or one fitted on `--data` by the device's own head fitter
(`runtime.adapt.adapt_head`, the one `python -m edgetl.runtime adapt` runs), so host and device agree.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgetl import __version__, backends, fsutil, pack, targets
from edgetl.backends import Artifacts, CompatibilityReport, OpVerdict, Source, tflite_graph
from edgetl.backends.embedding import Cut, cut_onnx, cut_tflite
from edgetl.checkset import FILE as CHECKSET
from edgetl.checkset import from_images, npz_bytes
from edgetl.console import QUIET, Console
from edgetl.errors import ConfigError, InputError
from edgetl.rundir import FEATURES, HEAD
from edgetl.runtime.engines import TensorSpec, table
from edgetl.runtime.manifest import Compatibility, ExpectedAccuracy, FileEntry, Manifest, Signer, SourceRun
from edgetl.runtime.preprocess import CHANNEL_ORDERS, INTERPOLATIONS, RESIZE_MODES, PreprocessSpec
from edgetl.runtime.records import RecordError
from edgetl.runtime.verify import sha256

HINT = "--preprocess size=224,mean=127.5,std=127.5"  # what a float model's refusal suggests
KEYS = ("size", "mean", "std", "resize", "interpolation", "order")
EDGETPU_OP = "CUSTOM:edgetpu-custom-op"
BATCH = 32  # frames per engine run when --data is embedded


@dataclass(frozen=True)
class Preprocess:
    """`--preprocess` as given: mean/std in pixel units (0..255), one value or one per channel (RGB)."""

    size: tuple[int, int] | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    resize: str = "stretch"
    interpolation: str = "bilinear"
    order: str = "RGB"

    @classmethod
    def parse(cls, text: str) -> Preprocess:
        """`size=224,mean=127.5,std=127.5`; lists continue after a comma (`mean=123.7,116.3,103.5`) or
        with `/`; `size=HxW`; `resize=crop`, `interpolation=bicubic`, `order=BGR` (or a bare `bgr`)."""
        def bad(why: str) -> ConfigError:
            return ConfigError(f"--preprocess {text!r}: {why}", f"e.g. {HINT} (mean/std in pixel units, 0..255)")

        values: dict[str, list[str]] = {}
        key = None
        for token in (t.strip() for t in text.split(",")):
            if not token:
                continue
            if token.lower() in ("bgr", "rgb"):
                key, values["order"] = None, [token.upper()]
            elif "=" in token:
                key, _, value = token.partition("=")
                key = key.strip().lower()
                if key not in KEYS:
                    raise bad(f"unknown key {key!r} (keys: {', '.join(KEYS)})")
                if key in values:
                    raise bad(f"{key} is given twice")
                values[key] = [v for v in value.replace("/", " ").split() if v]
            elif key in ("mean", "std"):
                values[key].extend(v for v in token.replace("/", " ").split() if v)
            else:
                raise bad(f"{token!r} is no key=value")
        fields: dict = {}
        for key in ("mean", "std"):
            if key in values:
                try:
                    numbers = [float(v) for v in values[key]]
                except ValueError:
                    raise bad(f"{key} must be numbers, not {values[key]}") from None
                if len(numbers) not in (1, 3) or not all(math.isfinite(v) for v in numbers):
                    raise bad(f"{key} is one number or three (R, G, B), not {values[key]}")
                fields[key] = tuple(numbers * 3 if len(numbers) == 1 else numbers)
        if ("mean" in fields) != ("std" in fields):
            raise bad("give mean and std together")
        if "std" in fields:
            if any(v <= 0 for v in fields["std"]):
                raise bad("std must be > 0")
            if all(v < 1 for v in fields["std"]):
                raise bad(f"std {list(fields['std'])} looks like 0..1 units; --preprocess takes pixel units "
                          "(std=58.4,57.1,57.4 for ImageNet's 0.229,0.224,0.225)")
        if "size" in values:
            raw = " ".join(values["size"]).lower().replace("x", " ").split()
            try:
                size = tuple(int(v) for v in raw)
            except ValueError:
                raise bad(f"size must be whole pixels, not {values['size']}") from None
            if len(size) not in (1, 2) or not all(8 <= v <= 4096 for v in size):
                raise bad("size is one or two whole numbers of pixels (8..4096): size=224 or size=192x256")
            fields["size"] = size * 2 if len(size) == 1 else size
        for key, allowed in (("resize", RESIZE_MODES), ("interpolation", INTERPOLATIONS), ("order", CHANNEL_ORDERS)):
            if key in values:
                value = " ".join(values[key])
                value = value.upper() if key == "order" else value.lower()
                if value not in allowed:
                    raise bad(f"{key} must be one of {', '.join(allowed)}, not {value!r}")
                fields[key] = value
        return cls(**fields)

    @property
    def normalises(self) -> bool:
        return self.mean is not None


@dataclass(frozen=True)
class ModelInput:
    """The model's one image input, as read from the file."""

    tensor: TensorSpec
    layout: str  # NHWC | NCHW
    size: tuple[int, int] | None  # (height, width); None where the file leaves them dynamic


@dataclass(frozen=True)
class FromModel:
    """What `from_model` made: the bundle's manifest and what a person should know about it."""

    manifest: Manifest
    preprocess_from: str  # where mean/std came from
    cut: Cut
    images: int = 0  # --data images the head was fitted on
    skipped: int = 0  # --data images that could not be read


def model_input(model: Path) -> ModelInput:
    """The one image input of `model` (.tflite or .onnx); anything else is refused in one line."""
    if model.suffix == ".tflite":
        inputs = pack.tensor_specs(model)[0]
    else:
        from edgetl.backends.onnx_graph import load_onnx

        graph = load_onnx(model).graph
        initializers = {i.name for i in graph.initializer}
        inputs = tuple(t for t in pack.tensor_specs(model)[0] if t.name not in initializers)
    if len(inputs) != 1:
        raise ConfigError(f"{model.name} has {len(inputs)} inputs ({', '.join(t.name for t in inputs)}); a feature "
                          "extractor takes one image", "export the model with the image as its only input")
    t = inputs[0]
    shape = tuple(t.shape)
    if len(shape) != 4 or 3 not in (shape[1], shape[3]):
        raise ConfigError(f"{model.name}'s input {t.name!r} has shape {list(shape)}: not an RGB image "
                          "(N, H, W, 3) or (N, 3, H, W)", "bundle a model that takes one RGB image")
    layout = "NHWC" if shape[3] == 3 else "NCHW"
    h, w = (shape[1], shape[2]) if layout == "NHWC" else (shape[2], shape[3])
    if t.dtype not in ("float32", "uint8", "int8"):
        raise ConfigError(f"{model.name}'s input is {t.dtype}; edgetl feeds images as float32, uint8 or int8",
                          "convert the model with a float32 or 8-bit image input")
    return ModelInput(t, layout, (h, w) if h > 0 and w > 0 else None)


def _metadata(model: Path):
    from edgetl.backends import tflite_metadata

    return tflite_metadata.read(model) if model.suffix == ".tflite" else tflite_metadata.InputMetadata()


def _pixels_hold(mean: tuple, std: tuple, scale: float, zero_point: int) -> bool:
    """Whether feeding the raw pixel p to an input quantized (scale, zero_point) is normalising it by
    mean/std (pixel units) to within one quantization step, at both ends of 0..255, on every channel."""
    for m, s in zip(mean, std, strict=True):
        for p in (0.0, 255.0):
            if abs((p - m) / s / scale + zero_point - p) > 1.0:
                return False
    return True


def input_spec(model: Path, inp: ModelInput, given: Preprocess | None) -> tuple[PreprocessSpec, str]:
    """The bundle's preprocessing spec for `model`'s input, and where its mean/std came from."""
    t = inp.tensor
    given = given or Preprocess()
    if inp.size is not None and given.size is not None and tuple(given.size) != inp.size:
        raise ConfigError(f"--preprocess size={given.size[0]}x{given.size[1]}, and {model.name} takes "
                          f"{inp.size[0]}x{inp.size[1]}", "drop size from --preprocess: the model's own is used")
    size = inp.size or given.size
    if size is None:
        raise ConfigError(f"{model.name}'s input has no fixed height and width ({list(t.shape)})",
                          "give them: --preprocess size=224 (or size=HxW)")
    metadata = _metadata(model)
    if metadata.color_space == "GRAYSCALE":
        raise ConfigError(f"{model.name}'s metadata says its input is a grayscale image", "bundle an RGB model")
    mean = std = None
    where = ""
    if given.normalises:
        mean, std, where = given.mean, given.std, "--preprocess"
    elif metadata.mean and metadata.std and len(metadata.mean) in (1, 3) and len(metadata.std) in (1, 3) \
            and all(v > 0 for v in metadata.std):
        mean = tuple(metadata.mean * 3 if len(metadata.mean) == 1 else metadata.mean)
        std = tuple(metadata.std * 3 if len(metadata.std) == 1 else metadata.std)
        where = "the model's TFLite metadata"
    base = dict(size=tuple(int(v) for v in size), resize=given.resize, interpolation=given.interpolation,
                channel_order=given.order, layout=inp.layout)
    try:
        if t.dtype == "uint8":
            if t.quantized:  # real = (q - zp) * scale: the quantization itself says how pixels are normalised
                if mean is None or (given.order == "RGB" and _pixels_hold(mean, std, t.scale, t.zero_point)):
                    held = [float(t.zero_point)] * 3, [1.0 / t.scale] * 3
                    why = where or f"the input's quantization (scale {t.scale:.6g}, zero point {t.zero_point})"
                    return PreprocessSpec(mean=tuple(v / 255 for v in held[0]), std=tuple(v / 255 for v in held[1]),
                                          **base).with_pixels().with_input("uint8", t.scale, t.zero_point), \
                        f"{why}: the model takes the frame's pixels as they are"
                return PreprocessSpec(mean=tuple(v / 255 for v in mean), std=tuple(v / 255 for v in std),
                                      dtype="uint8", input_scale=t.scale, input_zero_point=t.zero_point,
                                      **base), f"{where}, then quantized to the uint8 input"
            if mean is not None:
                raise ConfigError(f"{model.name} takes raw uint8 pixels (no input quantization): its graph "
                                  "normalises them itself", "drop mean/std from --preprocess")
            if inp.layout != "NHWC":
                raise ConfigError(f"{model.name} takes uint8 {inp.layout}; edgetl feeds uint8 frames NHWC",
                                  "export the model with a uint8 NHWC input, or a float one")
            return PreprocessSpec(mean=(0.0, 0.0, 0.0), std=(1 / 255,) * 3, **base).with_pixels(), \
                "none needed: the model takes raw uint8 pixels and normalises them itself"
        if mean is None:
            kind = "int8 (quantized)" if t.dtype == "int8" else "float"
            raise ConfigError(f"{model.name} takes {kind} input and says nothing of its normalisation (no TFLite "
                              "metadata)", f"give it: {HINT} (pixel units; per-channel lists allowed)")
        spec_mean, spec_std = tuple(v / 255 for v in mean), tuple(v / 255 for v in std)
        if t.dtype == "int8":
            if not t.quantized:
                raise ConfigError(f"{model.name} takes int8 input without quantization parameters",
                                  "convert it with a quantized (scale, zero point) or float input")
            return PreprocessSpec(mean=spec_mean, std=spec_std, dtype="int8", input_scale=t.scale,
                                  input_zero_point=t.zero_point, **base), f"{where}, then quantized to the int8 input"
        return PreprocessSpec(mean=spec_mean, std=spec_std, **base), where
    except RecordError as exc:
        raise ConfigError(f"the preprocessing of {model.name} does not fit together: {exc}", HINT) from None


def engine_for(target: targets.Target, model: Path) -> str:
    """The target's first engine that runs `model`'s file type; a mismatch names the targets that do."""
    for name in target.engines:
        if table.row(name).suffix == model.suffix:
            return name
    runs = [t.name for t in targets.all_targets() if any(table.row(e).suffix == model.suffix for e in t.engines)]
    have = ", ".join(dict.fromkeys(table.row(e).suffix for e in target.engines))
    raise ConfigError(f"{target.name} runs {have} models ({', '.join(target.engines)}), and {model.name} is "
                      f"{model.suffix}", f"targets that run {model.suffix} models: {', '.join(runs) or 'none'}")


def _holds_edgetpu_op(model: Path) -> bool:
    """A model edgetpu_compiler wrote: its TPU part is one custom op that only an Edge TPU runs."""
    return model.suffix == ".tflite" and any(op.op == EDGETPU_OP for op in tflite_graph.read(model).ops)


def _edgetpu_artifacts(model: Path, target: targets.Target) -> Artifacts:
    """An `*_edgetpu.tflite` as given: compiled for the Edge TPU before edgetl saw it."""
    ops = tflite_graph.read(model).ops
    if not any(op.op == EDGETPU_OP for op in ops):
        raise ConfigError(f"{model.name} is named *_edgetpu.tflite and holds no Edge TPU op",
                          "pass the model edgetpu_compiler wrote, or rename a plain .tflite")
    verdicts = [OpVerdict(op.index, op.name, op.op, op.op == EDGETPU_OP,
                          "" if op.op == EDGETPU_OP else "outside the compiled Edge TPU op: runs on the CPU")
                for op in ops]
    verdicts.sort(key=lambda v: not v.mapped)  # the compiled op runs first; what it left follows it
    report = CompatibilityReport.of(target.name, "edgetpu", model, [
        OpVerdict(i, v.name, v.op, v.mapped, v.reason) for i, v in enumerate(verdicts)],
        ("compiled by edgetpu_compiler before edgetl saw it",), source="edgetpu_compiler")
    return Artifacts("edgetpu", "int8", model, report, "int8 on the Edge TPU: the model file as compiled and given")


def _check_args(model: Path, data: Path | None, sign: Path | None) -> None:
    if model.suffix not in table.SUFFIXES:
        raise ConfigError(f"{model} is not a model file edgetl reads", f"pass a {' or '.join(table.SUFFIXES)} file")
    if not model.is_file():
        raise ConfigError(f"model file {model} does not exist", "check the path")
    backends.check_model_file(model)
    if data is not None and not data.is_dir():
        raise ConfigError(f"--data {data} is not a directory", "pass DIR/<label>/*.png, one folder per label")
    if sign is not None:
        pack._private_key(sign)


def _host_engine(model: Path):
    from edgetl.runtime.engines import load

    try:
        return load(model)
    except ConfigError:
        raise
    except Exception as exc:  # an engine's own error types: the model does not load on this host
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ConfigError(f"{model.name} does not load on this host's engine: {first}",
                          "check the model with its engine alone") from None


def _embed(engine, spec: PreprocessSpec, pixels: np.ndarray, what: str) -> np.ndarray:
    try:
        out = np.concatenate([engine.run(spec.model_input(pixels[i : i + BATCH]))
                              for i in range(0, len(pixels), BATCH)])
    except ConfigError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ConfigError(f"{what} does not run on this host: {first}", "check the model with its engine alone") \
            from None
    out = out.reshape(len(pixels), -1)
    if not np.isfinite(out).all():
        raise ConfigError(f"{what} gives NaN or inf features", "check its preprocessing (--preprocess mean/std)")
    return out


def from_model(model: str | Path, target: str | Path, out: str | Path, *, preprocess: str | Preprocess | None = None,
               output: str | None = None, data: str | Path | None = None, sign: str | Path | None = None,
               force: bool = False, allow_cpu_only: bool = False, console: Console = QUIET) -> FromModel:
    """Bundle the feature extractor `model` for `target` into `out` (and `out`.tar.gz): cut at `output`
    (default its only output), preprocessed as the model says or as `preprocess` gives, with an empty
    head, or one fitted on the labelled images of `data`. Every refusal comes before anything is written."""
    from edgetl.runtime.adapt import AdaptConfig, adapt_head, statistics
    from edgetl.runtime.features import Layout
    from edgetl.runtime.head import Head

    model, out = Path(model), Path(out)
    data = Path(data) if data is not None else None
    sign = Path(sign) if sign is not None else None
    given = Preprocess.parse(preprocess) if isinstance(preprocess, str) else preprocess
    t = targets.load(target)
    _check_args(model, data, sign)
    engine = engine_for(t, model)
    compiled = model.name.endswith("_edgetpu.tflite")
    if compiled and engine != "edgetpu":
        raise ConfigError(f"{model.name} is compiled for the Edge TPU, and {t.name} has none",
                          "bundle it for coral-usb or coral-devboard, or pass the model before edgetpu_compiler")
    if compiled and data is not None:
        raise ConfigError(f"this host cannot run {model.name} (an Edge TPU model) to fit a head on --data",
                          "bundle it with an empty head and adapt on the device: python -m edgetl.runtime adapt "
                          "BUNDLE --data DIR")
    fsutil.claim_bundle(out, force=force, inputs=[p for p in (model, data) if p is not None])
    if sign is not None and sign.resolve() in (out.resolve(), pack.archive_path(out).resolve()):
        raise ConfigError(f"--sign {sign} is the bundle's own output", "keep signing keys outside the bundle")
    inp = model_input(model)
    with tempfile.TemporaryDirectory(prefix="edgetl-from-model-") as tmp:
        work = Path(tmp)
        (work / "cut").mkdir()
        spec, where = input_spec(model, inp, given)  # before the cut: a missing spec is refused before any work
        dst = work / "cut" / model.name
        cut = cut_tflite(model, dst, output) if model.suffix == ".tflite" else \
            cut_onnx(model, dst, output, size=None if inp.size else spec.size)
        if compiled:
            artifacts = _edgetpu_artifacts(cut.model, t)
        else:
            artifacts = backends.get(engine).compile(Source(cut.model), t, work, allow_cpu_only=allow_cpu_only)
        final_input = model_input(artifacts.model)
        spec, where = input_spec(model, final_input, given) if artifacts.model != cut.model else (spec, where)
        runs_here = not _holds_edgetpu_op(artifacts.model)
        host_model, host_spec = (artifacts.model, spec) if runs_here else (
            cut.model, input_spec(model, model_input(cut.model), given)[0])
        width = int(pack.tensor_specs(artifacts.model)[1][0].shape[-1])
        files: dict[str, Path] = {}
        head = Head(np.zeros((0, width), np.float32), np.zeros(0, np.float32), ())
        images = skipped = 0
        pixels = labels = None
        features = None
        if not compiled:  # the model loads and runs here, before anything is written
            with _host_engine(host_model) as e:
                probe = _embed(e, host_spec, np.zeros((1, *host_spec.size, 3), np.uint8), model.name)
                if probe.shape[1] != width:
                    raise ConfigError(f"{model.name} gives {probe.shape[1]} features, its output says {width}",
                                      "re-export the model with a fixed output shape")
                if data is not None:
                    from edgetl.runtime.images import labelled_folder, read_files

                    paths, names = labelled_folder(data)
                    pixels, kept, bad = read_files(paths, spec.size, spec.resize, spec.interpolation)
                    if not kept:
                        raise InputError(f"none of the {len(paths)} images in {data} could be read "
                                         f"({bad[0][0].name}: {bad[0][1]})", "pass readable PNG/JPEG/BMP/PPM files")
                    labels = [names[i] for i in kept]
                    images, skipped = len(kept), len(bad)
                    with console.task(f"embedding {images} images of {data}", images, "images") as advance:
                        features = _embed(e, host_spec, pixels, model.name)
                        advance(images)
        if features is not None:
            head = adapt_head(head, features, labels, AdaptConfig(), Layout.of((), width), unguarded=True).head
            mean, std = statistics(features)
            (work / FEATURES).write_bytes(npz_bytes({"mean": mean, "std": std}))
            files[FEATURES] = work / FEATURES
        (work / HEAD).write_bytes(npz_bytes(head.arrays()))
        files[HEAD] = work / HEAD
        model_name = "backbone_edgetpu.tflite" if artifacts.model.name.endswith("_edgetpu.tflite") else \
            f"backbone{artifacts.model.suffix}"
        files = {model_name: artifacts.model, **files, **artifacts.extra}
        digest = hashlib.sha256(model.read_bytes()).hexdigest()
        cut_note = f", output {cut.source}" if output else ""
        source = SourceRun(name=model.name, id=f"sha256:{digest}",
                           backbone=f"model file ({model.suffix[1:]}{cut_note})")

        def record(tmp_dir: Path, placed: dict[str, Path], signer: Signer | None) -> Manifest:
            checks = accuracy = None
            if features is not None:
                checks = from_images(pixels, labels, tmp_dir / CHECKSET, f"--data {data.name} (the head's own images)")
                placed[CHECKSET] = tmp_dir / CHECKSET
                hits = head.logits(features).argmax(1) == np.asarray([head.labels.index(x) for x in labels])
                accuracy = ExpectedAccuracy(top1=round(100.0 * float(hits.mean()), 2),
                                            split="--data images (the head was fitted on them)", images=len(labels))
            inputs, outputs = pack.tensor_specs(placed[model_name])
            report = artifacts.report
            return Manifest(
                schema_version=pack.SCHEMA_VERSION, name=out.name, target=t.name, arch=tuple(t.arch),
                engine=artifacts.engine, precision=artifacts.precision, created_by=f"edgetl {__version__}",
                source_run=source, labels=head.labels, preprocess=spec, model=model_name, inputs=inputs,
                outputs=outputs, head=HEAD,
                files={n: FileEntry(sha256=sha256(p), bytes=p.stat().st_size) for n, p in sorted(placed.items())},
                budgets=asdict(t.budgets), checkset=checks, accuracy=accuracy, choice=artifacts.choice,
                deferred=artifacts.deferred,
                compatibility=Compatibility(summary=report.summary(), source=report.source,
                                            first_unmapped=report.first_unmapped.name if report.first_unmapped
                                            else None, cpu_ops=len(report.cpu_ops)),
                signer=signer, features=FEATURES if FEATURES in placed else None)

        manifest = pack.write_bundle(out, files, record, sign=sign, force=force)
    console.log(f"{t.name}: {manifest.engine} {manifest.precision} ({manifest.choice}) -> {out} and {out.name}.tar.gz")
    return FromModel(manifest, where, cut, images, skipped)

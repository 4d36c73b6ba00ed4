"""`edgetl export`: a run's backbone as its own artifact (image -> embedding), the head as
`head.npz`, and a combined model (image -> logits) for engines that want one file.

Every export is checked against PyTorch on real images of the run's own data before it is
written; a failed check is an error and leaves no export behind.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgetl.console import QUIET, Console
from edgetl.data.imagefolder import load_images
from edgetl.errors import ConfigError, DataError
from edgetl.fsutil import EXPORT, claim, staged_dir
from edgetl.rundir import FEATURES, FORMATS, HEAD, ExportDir, ExportFiles, ExportRecord, InputInfo, RunDir
from edgetl.runtime.preprocess import PreprocessSpec

if TYPE_CHECKING:  # torch and the run reader load only once an export really starts
    import torch

    from edgetl.train.run import Run

LAYOUT = {"onnx": "NCHW", "tflite": "NHWC"}
INPUTS = ("uint8", "float")  # --input: the frame itself (default), or the normalised tensor
PARITY_IMAGES = 64
STATISTICS_IMAGES = 512


def classifier(backbone: torch.nn.Module, head: torch.nn.Linear) -> torch.nn.Module:
    """backbone + head as one graph: image -> logits."""
    import torch

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone, self.head = backbone, head

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.head(self.backbone(images))

    return Classifier()


@dataclass(frozen=True)
class Export:
    path: Path  # RUN/export/FORMAT
    format: str
    backbone: Path
    model: Path
    spec: PreprocessSpec  # with the artifact's input layout
    record: ExportRecord


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}", f"one of: {', '.join(FORMATS)}")
    return fmt


def check_tolerance(tolerance: float) -> float:
    """The parity tolerance: a finite number > 0 (relative to the embeddings' range)."""
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or not math.isfinite(tolerance) \
            or tolerance <= 0:
        raise ConfigError(f"--tolerance must be a finite number > 0, not {tolerance}",
                          "it is relative to the embeddings' range: 1e-3 (default) allows 0.1%")
    return float(tolerance)


def check_input(kind: str) -> str:
    if kind not in INPUTS:
        raise ConfigError(f"unknown --input {kind!r}", "uint8 (default: the model takes the frame itself) | float "
                                                        "(the normalised tensor, for pipelines that normalise)")
    return kind


def artifact_spec(spec: PreprocessSpec, fmt: str, kind: str = "float") -> PreprocessSpec:
    """What export adds to the run's spec: the artifact's input (uint8 frames, or float in the format's layout)."""
    return spec.with_pixels() if kind == "uint8" else spec.with_layout(LAYOUT[fmt])


def to_input_float(images: np.ndarray, spec: PreprocessSpec) -> torch.Tensor:
    """uint8 NHWC images as the backbone's float NCHW input."""
    from edgetl.train.features import nchw, to_input

    return to_input(nchw(images), spec)


def write_statistics(backbone: torch.nn.Module, run: Run, path: Path, n: int = STATISTICS_IMAGES) -> None:
    """The mean and std of each output feature on up to `n` of the run's training images (stratified,
    seeded): what the bundle's own head is standardised by when unlabelled frames on the device move
    the statistics to new conditions (`edgetl.runtime.adapt`)."""
    import torch

    from edgetl.train.run import split_samples, stratified

    samples = stratified(split_samples(run, "train"), n, 0)
    loaded = load_images(samples, run.spec.size, run.spec.resize, interpolation=run.spec.interpolation)
    with torch.no_grad():
        out = torch.cat([backbone(to_input_float(loaded.images[i : i + 64], run.spec))
                         for i in range(0, len(loaded.labels), 64)]).numpy()
    np.savez(path, mean=out.mean(0).astype(np.float32), std=out.std(0).astype(np.float32),
             images=np.int64(len(out)))


def real_images(run: Run, n: int, *, seed: int = 0) -> np.ndarray:
    """`n` of the run's own validation images (stratified, seeded), decoded at its input size."""
    from edgetl.train.run import split_samples, stratified

    samples = stratified(split_samples(run, "val"), n, seed)
    loaded = load_images(samples, run.spec.size, run.spec.resize, interpolation=run.spec.interpolation)
    if len(loaded.labels) == 0:
        raise DataError(f"none of the run's validation images can be read ({run.record.data.train_dir})",
                        "the parity check needs real images from the data the run was trained on")
    return loaded.images


def write_artifact(module: torch.nn.Module, spec: PreprocessSpec, path: Path, fmt: str, *, output_name: str) -> None:
    """`module` (normalised NCHW float in) as `fmt`, taking what `spec` says: uint8 frames or the float tensor."""
    import torch

    if spec.pixels:
        from edgetl.export.pixels import Pixels, frames_sample

        module, sample = Pixels(module, spec, channels_first=fmt == "onnx").eval(), frames_sample(spec)
    else:
        sample = torch.zeros((1, 3, *spec.size), dtype=torch.float32)
    if fmt == "onnx":
        from edgetl.export.onnx import to_onnx

        to_onnx(module, sample, path, output_name=output_name)
    else:
        from edgetl.export.tflite import channels_last, nhwc, to_tflite

        to_tflite(module if spec.pixels else channels_last(module).eval(), sample if spec.pixels else nhwc(sample),
                  path)


def tapped(run: Run, spec: PreprocessSpec) -> torch.nn.Module:
    """The module an artifact with `spec`'s outputs was made from: the backbone, with its taps if it has any."""
    if not spec.outputs:
        return run.backbone
    from edgetl.train.taps import Tapped

    taps = spec.outputs[1:]
    return Tapped(run.backbone, tuple(t.name for t in taps), tuple(t.gain for t in taps),
                  tuple(t.grid for t in taps)).eval()


def export_taps(found: Export) -> tuple[str, ...]:
    """The stages an export taps."""
    return tuple(s.name for s in found.spec.outputs[1:])


def export_input(found: Export) -> str:
    """What an export's artifacts take: "uint8" frames or the "float" tensor."""
    return found.spec.input


def export(run_path: str | Path, fmt: str = "onnx", *, tolerance: float = 1e-3, taps=None, input: str | None = None,
           console: Console = QUIET, run: Run | None = None, max_len: int | None = None) -> Export:
    """Export and parity-check one run in one format into RUN/export/FORMAT (replaced as a whole).

    `tolerance`: the largest embedding difference allowed against PyTorch, relative to the
    embeddings' range (finite, > 0; checked before any work). `taps`: "auto" (every stage whose
    output is a feature map, see `edgetl.train.taps`), "none", or stage names ("blocks.4,blocks.10"):
    their pooled outputs follow the embedding in the backbone's one output. `input`: "uint8" (default),
    the artifacts take the frame itself (uint8 NHWC RGB at the run's size; mean/std and layout are their
    first ops), or "float", the normalised tensor in the format's layout. None means "auto" and "uint8". A text
    run (`edgetl.export.text`) takes token ids at `max_len` (default: the run's) instead, and refuses taps and input."""
    check_format(fmt)
    check_tolerance(tolerance)
    if is_text_run(run_path):
        if taps is not None or input is not None:
            raise ConfigError(f"--{'taps' if taps is not None else 'input'} is for image runs, and {run_path} is a "
                              "text run", "a text run's artifacts take token ids: drop it (--max-len sets the length)")
        from edgetl.export.text import export_text

        path, spec, record = export_text(run_path, fmt, tolerance=tolerance, max_len=max_len, console=console)
        return Export(path, fmt, path / record.files.backbone, path / record.files.model, spec, record)
    if max_len is not None:
        raise ConfigError("--max-len is for text runs", f"{run_path} is an image run: its size is the run's")
    taps = "auto" if taps is None else taps
    input = check_input("uint8" if input is None else input)
    from edgetl.export import parity
    from edgetl.train import taps as tapping
    from edgetl.train.finetune import versions
    from edgetl.train.run import load_run

    run = run or load_run(run_path)
    chosen = tapping.choose(run.backbone, run.spec.size, taps)  # a bad --taps fails before any work
    out = claim(run.dir.export_dir(fmt).path, EXPORT, flag="the export dir")  # before any work
    images = real_images(run, PARITY_IMAGES)
    x = to_input_float(images, run.spec)
    grids = tapping.grids(run.backbone, run.spec.size, chosen)
    gains = tapping.gains(run.backbone, chosen, grids, x)
    spec = artifact_spec(run.spec, fmt, input).with_outputs(tapping.segments(run.backbone, chosen, gains, grids, x))
    backbone = tapped(run, spec)
    t0 = time.perf_counter()
    with staged_dir(out, EXPORT) as tmp:
        backbone_file, model_file = (tmp / name for name in ExportDir.names(fmt))
        with console.task(f"exporting {run.record.backbone} to {fmt}", 3, "steps") as advance:
            write_artifact(backbone, spec, backbone_file, fmt, output_name="embedding")
            advance(1)
            write_artifact(classifier(run.backbone, run.head), spec, model_file, fmt, output_name="logits")
            advance(1)
            result = parity.check(backbone_file, model_file, backbone, run.head, images, spec,
                                  tolerance=tolerance)
            advance(1)
        parity.require(result, f"the {fmt} export of {run.path}")
        write_statistics(backbone, run, tmp / FEATURES)
        record = ExportRecord(
            format=fmt, backbone=run.record.backbone, run=str(run.path),
            files=ExportFiles(backbone=backbone_file.name, model=model_file.name, head=HEAD),
            input=InputInfo(shape=(1, *run.spec.size, 3) if spec.layout == "NHWC" else (1, 3, *run.spec.size),
                            layout=spec.layout, dtype="uint8" if spec.pixels else "float32"),
            embedding_dim=int(run.head.in_features), classes=len(run.classes),
            sizes_bytes={"backbone": backbone_file.stat().st_size, "model": model_file.stat().st_size},
            parity=result.to_dict(), seconds=round(time.perf_counter() - t0, 2), versions=versions(),
        )
        ExportDir.fill(tmp, run.dir, spec, record, tmp / FEATURES)
    console.log(f"{fmt}: parity on {result.images} real images ({len(spec.outputs) or 1} output segment(s)): "
                f"max |diff| {result.max_abs_diff:.2e}, top-1 agreement {result.top1_agreement:.1%} -> {out}")
    return Export(out, fmt, out / backbone_file.name, out / model_file.name, spec, record)


def is_text_run(path: str | Path) -> bool:
    """A run whose spec (preprocess.json) is a text one; read without torch. An unreadable spec is not
    judged here: the image path names the damage."""
    from edgetl.errors import EdgetlError
    from edgetl.runtime.tokens import TextSpec

    try:
        return isinstance(RunDir(Path(path)).spec, TextSpec)
    except (EdgetlError, OSError):
        return False


def load_export(run_path: str | Path, fmt: str) -> Export | None:
    """A run's existing export in `fmt`, or None when there is none."""
    found = RunDir(Path(run_path)).exported(check_format(fmt))
    if found is None:
        return None
    record = found.record
    return Export(found.path, fmt, found.backbone, found.model, found.spec(), record)

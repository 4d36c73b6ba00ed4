"""Does an exported artifact compute what the PyTorch model computes? Measured on real images."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from edgetl.console import silenced
from edgetl.errors import ParityError
from edgetl.runtime import engines
from edgetl.runtime.features import EMBEDDING, Layout
from edgetl.runtime.preprocess import PreprocessSpec
from edgetl.train.features import nchw, to_input


@dataclass(frozen=True)
class Parity:
    images: int
    max_abs_diff: float  # backbone output (embedding and taps), artifact vs PyTorch
    rel_diff: float  # the worst output segment's max |diff| / its max |value|
    top1_agreement: float  # fraction of images where backbone artifact + head picks PyTorch's class
    model_top1_agreement: float  # the same for the combined (backbone + head) artifact
    tolerance: float
    min_agreement: float
    segments: dict[str, float] = field(default_factory=dict)  # rel_diff per output segment (embedding, taps)

    @property
    def ok(self) -> bool:
        return (self.rel_diff <= self.tolerance and self.top1_agreement >= self.min_agreement
                and self.model_top1_agreement >= self.min_agreement)

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


@torch.no_grad()
def check(backbone_file: Path, model_file: Path, backbone: torch.nn.Module, head: torch.nn.Linear,
          images: np.ndarray, spec: PreprocessSpec, *, tolerance: float = 1e-3,
          min_agreement: float = 0.99) -> Parity:
    """Compare both artifacts with PyTorch on uint8 NHWC `images`, given as the artifacts take them (`spec.input`).
    Every segment of the backbone's output (`spec.outputs`: the embedding and each tap) is held to
    `tolerance` relative to its own range."""
    out = backbone(to_input(nchw(images), spec)).numpy()
    layout = Layout.of(spec.outputs, out.shape[1])
    ref = out[:, layout.columns((EMBEDDING,))]
    ref_class = head(torch.from_numpy(np.ascontiguousarray(ref))).argmax(1).numpy()
    x = spec.model_input(images)  # the frames themselves for a uint8 model
    with silenced():  # interpreter creation logs (XNNPACK) and engine warnings
        with engines.load(backbone_file) as engine:
            emb = engine.run(x)
        with engines.load(model_file) as engine:
            logits = engine.run(x)
    W, b = head.weight.numpy(), head.bias.numpy()
    if emb.shape != out.shape:
        raise ParityError(f"the exported backbone gives {emb.shape[1:]} features per image, PyTorch {out.shape[1:]}",
                          "the export is not written; report the backbone and versions")
    rel = {}
    for name in layout.names:
        cols = layout.columns((name,))
        rel[name] = float(np.abs(emb[:, cols] - out[:, cols]).max()) / max(float(np.abs(out[:, cols]).max()), 1e-12)
    return Parity(
        images=len(images), max_abs_diff=float(np.abs(emb - out).max()), rel_diff=max(rel.values()),
        top1_agreement=float(((emb[:, layout.columns((EMBEDDING,))] @ W.T + b).argmax(1) == ref_class).mean()),
        model_top1_agreement=float((logits.argmax(1) == ref_class).mean()),
        tolerance=tolerance, min_agreement=min_agreement,
        segments={k: round(v, 8) for k, v in rel.items()})


def require(parity: Parity, what: str) -> None:
    if not parity.ok:
        raise ParityError(
            f"{what} does not match PyTorch: outputs differ by up to {parity.max_abs_diff:.3g} "
            f"({parity.rel_diff:.2%} of the range{_worst(parity)}, allowed {parity.tolerance:.2%}), top-1 agrees on "
            f"{parity.top1_agreement:.1%} / {parity.model_top1_agreement:.1%} (combined) of {parity.images} images",
            "the export is not written; rerun with --verbose, or report the backbone and versions")


def _worst(parity: Parity) -> str:
    if len(parity.segments) < 2:
        return ""
    name = max(parity.segments, key=parity.segments.get)
    return f" of {name}"

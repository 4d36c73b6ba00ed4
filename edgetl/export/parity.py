"""Does an exported artifact compute what the PyTorch model computes? Measured on real images."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from edgetl.console import silenced
from edgetl.errors import ParityError
from edgetl.runtime import engines
from edgetl.runtime.preprocess import PreprocessSpec
from edgetl.train.features import nchw, to_input


@dataclass(frozen=True)
class Parity:
    images: int
    max_abs_diff: float  # embeddings, artifact vs PyTorch
    rel_diff: float  # max_abs_diff / max |embedding|
    top1_agreement: float  # fraction of images where backbone artifact + head picks PyTorch's class
    model_top1_agreement: float  # the same for the combined (backbone + head) artifact
    tolerance: float
    min_agreement: float

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
    """Compare both artifacts with PyTorch on uint8 NHWC `images`; `spec.layout` is the artifacts' input layout."""
    ref = backbone(to_input(nchw(images), spec)).numpy()
    ref_class = head(torch.from_numpy(ref)).argmax(1).numpy()
    x = spec.normalize(images)
    with silenced():  # interpreter creation logs (XNNPACK) and engine warnings
        with engines.load(backbone_file) as engine:
            emb = engine.run(x)
        with engines.load(model_file) as engine:
            logits = engine.run(x)
    W, b = head.weight.numpy(), head.bias.numpy()
    diff = float(np.abs(emb - ref).max())
    return Parity(
        images=len(images), max_abs_diff=diff, rel_diff=diff / max(float(np.abs(ref).max()), 1e-12),
        top1_agreement=float(((emb @ W.T + b).argmax(1) == ref_class).mean()),
        model_top1_agreement=float((logits.argmax(1) == ref_class).mean()),
        tolerance=tolerance, min_agreement=min_agreement)


def require(parity: Parity, what: str) -> None:
    if not parity.ok:
        raise ParityError(
            f"{what} does not match PyTorch: embeddings differ by up to {parity.max_abs_diff:.3g} "
            f"({parity.rel_diff:.2%} of their range, allowed {parity.tolerance:.2%}), top-1 agrees on "
            f"{parity.top1_agreement:.1%} / {parity.model_top1_agreement:.1%} (combined) of {parity.images} images",
            "the export is not written; rerun with --verbose, or report the backbone and versions")

"""Embeddings of a frozen backbone, computed once and reused by every head epoch.

While the backbone is frozen, the head sees the same embedding of an image every epoch,
so recomputing it is pure waste: a head epoch over cached embeddings costs milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from edgetl.runtime.preprocess import PreprocessSpec
from edgetl.train.distributed import SINGLE, World


def to_input(images: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """uint8 NCHW (RGB, as decoded) -> the normalised float tensor the backbone takes, in its channel
    order (torch twin of `spec.normalize`)."""
    order = [2, 1, 0] if spec.channel_order == "BGR" else [0, 1, 2]  # mean/std are given in RGB
    x = (images[:, order] if spec.channel_order == "BGR" else images).to(torch.float32) / 255.0
    mean = torch.tensor(spec.mean, dtype=torch.float32)[order].view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32)[order].view(1, 3, 1, 1)
    return (x - mean) / std


def nchw(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC numpy (as decoded) -> uint8 NCHW tensor, without copying the pixels twice."""
    return torch.from_numpy(images).permute(0, 3, 1, 2)


@torch.no_grad()
def embed(
    backbone: torch.nn.Module,
    images: np.ndarray,
    spec: PreprocessSpec,
    *,
    batch_size: int = 128,
    world: World = SINGLE,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Embeddings of uint8 NHWC `images`, in order; under DDP each rank computes every size-th one."""
    backbone.eval()
    mine = images[world.rank :: world.size]
    rows = []
    for start in range(0, len(mine), batch_size):
        batch = mine[start : start + batch_size]
        rows.append(backbone(to_input(nchw(batch), spec)))
        if progress:
            progress(len(batch) * world.size)
    dim = getattr(backbone, "embedding_dim", None)
    local = torch.cat(rows) if rows else torch.zeros((0, dim or 0))
    return world.all_gather_rows(local, len(images))

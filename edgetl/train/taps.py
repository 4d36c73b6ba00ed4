"""Taps: the backbone exported with, beside its embedding, the pooled outputs of its stages.

A head over the final embedding cannot see what the frozen features dropped; Head2Toe (ICML
2022) showed that a linear head over features pooled from every stage of a frozen backbone
matches full fine-tuning on average. `Tapped` is the graph export writes: one output, the
embedding and each tapped stage's global average pool side by side (`runtime.features`).

`--taps auto` (the default) taps every stage whose output is a feature map, except the last
when the embedding is that map's pool (it would be a copy). Which stages those are is measured
by running a real input through the backbone, not named per architecture. A map whose height
and width are even is pooled to 2 x 2 cells, not to one: a global pool cannot tell a left arrow
from a right one, and on gtsrb-mini's new classes the 2 x 2 taps gave a device head 85.7% where
global ones gave 79.7% (README). Each tap is scaled by a constant so that its values span the
embedding's range on real images: the int8 output shares one scale, and a tap 20 times narrower
would keep only a few of its 256 levels.
"""

from __future__ import annotations

import torch
from torch import nn

from edgetl.errors import ConfigError
from edgetl.runtime.features import EMBEDDING, Segment
from edgetl.train.backbones import Backbone

AUTO, NONE = "auto", "none"


GRID = 2  # cells per side a tap's map is pooled to, where its height and width are even


def pool(x: torch.Tensor, grid: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C * grid * grid), cells in channels-last order. An average pool, as the
    embedding's: in a channels-last TFLite graph that is a MEAN over height and width (grid 1) or an
    AVERAGE_POOL_2D (grid 2), which the Edge TPU maps, and the flatten of an NHWC tensor needs no
    transpose there (a flatten of NCHW would)."""
    if grid == 1:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
    h, w = x.shape[2:]
    return torch.flatten(nn.functional.avg_pool2d(x, (h // grid, w // grid)).permute(0, 2, 3, 1), 1)


class Tapped(nn.Module):
    """image -> [embedding | gain_1 * pool(stage_1) | ...], one tensor."""

    def __init__(self, backbone: Backbone, taps: tuple[str, ...], gains: tuple[float, ...] | None = None,
                 grids: tuple[int, ...] | None = None):
        super().__init__()
        self.backbone, self.taps = backbone, tuple(taps)
        self.grids = tuple(grids or [1] * len(taps))
        self.register_buffer("gains", torch.tensor(gains or [1.0] * len(taps), dtype=torch.float32),
                             persistent=False)

    def pooled(self, images: torch.Tensor) -> list[torch.Tensor]:
        embedding, maps = self.backbone.stage_maps(images, frozenset(self.taps))
        return [embedding] + [pool(maps[t], g) for t, g in zip(self.taps, self.grids, strict=True)]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        embedding, *taps = self.pooled(images)
        return torch.cat([embedding] + [t * self.gains[i] for i, t in enumerate(taps)], dim=1)


@torch.no_grad()
def traced(backbone: Backbone, size: tuple[int, int], stages) -> tuple[torch.Tensor, dict]:
    """(embedding, {stage: output map}) of one zero image at `size`, in eval mode: the shapes taps are chosen by."""
    was = backbone.training
    backbone.eval()
    try:
        return backbone.stage_maps(torch.zeros(1, 3, *size), frozenset(stages))
    finally:
        backbone.train(was)


def candidates(backbone: Backbone, size: tuple[int, int]) -> tuple[str, ...]:
    """The stages `auto` taps: those whose output is a feature map (N, C, H, W), input first, without the
    last one when the embedding is its plain average pool. A model without registered stages (not a
    `Backbone`) has none."""
    if not isinstance(backbone, Backbone):
        return ()
    stages = backbone.body_stages()
    embedding, maps = traced(backbone, size, stages)
    found = [s for s in stages if s in maps and maps[s].dim() == 4]
    if found and not any(True for _ in backbone.pool.parameters()) and maps[found[-1]].shape[1] == embedding.shape[1]:
        found = found[:-1]
    return tuple(found)


def grids(backbone: Backbone, size: tuple[int, int], taps: tuple[str, ...]) -> tuple[int, ...]:
    """Per tap, the cells per side it is pooled to: GRID where its map's height and width are multiples
    of it (an exact average pool), else 1."""
    if not taps:
        return ()
    _, maps = traced(backbone, size, taps)
    return tuple(GRID if all(d >= GRID and d % GRID == 0 for d in maps[t].shape[2:]) else 1 for t in taps)


def choose(backbone: Backbone, size: tuple[int, int], taps: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The stages to tap for `--taps auto|none|STAGE,...` (checked against the backbone's stages)."""
    if isinstance(taps, str):
        if taps == AUTO:
            return candidates(backbone, size)
        if taps == NONE or taps == "":
            return ()
        taps = tuple(t.strip() for t in taps.split(","))
    taps = tuple(taps)
    known = candidates(backbone, size)
    stages = backbone.body_stages() if isinstance(backbone, Backbone) else []
    unknown = [t for t in taps if t not in stages]
    name = getattr(backbone, "name", type(backbone).__name__)
    why = (f"{unknown[0] or 'an empty name'} is not a stage of {name}" if unknown else
           "names a stage twice" if len(set(taps)) != len(taps) else "")
    if why:
        raise ConfigError(f"--taps {','.join(taps)}: {why}",
                          f"auto, none, or stages of: {', '.join(known) or '(none: this model has no stages to tap)'}")
    return tuple(sorted(taps, key=stages.index))


@torch.no_grad()
def gains(backbone: Backbone, taps: tuple[str, ...], tap_grids: tuple[int, ...], x: torch.Tensor
          ) -> tuple[float, ...]:
    """Per tap: max |embedding| / max |pooled tap| on the real inputs `x` (1.0 for a tap that is all zero)."""
    if not taps:
        return ()
    embedding, *pooled = Tapped(backbone, taps, grids=tap_grids).pooled(x)
    top = float(embedding.abs().max())
    return tuple(round(top / float(p.abs().max()), 6) if float(p.abs().max()) > 0 else 1.0 for p in pooled)


def segments(backbone: Backbone, taps: tuple[str, ...], tap_gains: tuple[float, ...], tap_grids: tuple[int, ...],
             x: torch.Tensor) -> tuple[Segment, ...]:
    """The output layout of `Tapped(backbone, taps, gains, grids)`; () without taps (the output is the embedding)."""
    if not taps:
        return ()
    embedding, *pooled = Tapped(backbone, taps, grids=tap_grids).pooled(x[:1])
    return (Segment(EMBEDDING, int(embedding.shape[1])),
            *(Segment(t, int(p.shape[1]), g, grid=n)
              for t, p, g, n in zip(taps, pooled, tap_gains, tap_grids, strict=True)))

"""The backbone interface: image -> embedding, with its stages, and how a spec builds one.

`Backbone` wraps a body and a pool (the registry's torchvision and EfficientNet-Lite models);
`ModelBackbone` a whole third-party model whose forward already ends in the embedding (timm,
`transformers`). The registry (`backbones`) and the model sources (`timm_source`, `hf_source`)
build them; this module imports none of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from edgetl.errors import WeightsError

TIMM, HF = "timm:", "hf:"  # the model sources beside the registry: `timm:NAME`, `hf:DIR`

class Backbone(nn.Module):
    """image (N, 3, H, W) -> embedding (N, embedding_dim)."""

    def __init__(self, name: str, body: nn.Module, pool: nn.Module, embedding_dim: int, stages: list[str]):
        super().__init__()
        self.name = name
        self.body = body
        self.pool = pool
        self.embedding_dim = embedding_dim
        self._stages = stages

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.body(images)), 1)

    def stages(self) -> list[str]:
        """Stage names, input first: the units `--freeze until:STAGE` counts in.
        `pool` is a stage when it has weights (MobileNetV3's pre-logits layer)."""
        has_pool_weights = any(True for _ in self.pool.parameters())
        return list(self._stages) + (["pool"] if has_pool_weights else [])

    def stage(self, name: str) -> nn.Module:
        return self.pool if name == "pool" else self.body.get_submodule(name)

    def body_stages(self) -> list[str]:
        """The stages whose outputs are feature maps (what taps pool), input first."""
        return list(self._stages)

    def stage_maps(self, images: torch.Tensor, wanted: frozenset[str]) -> tuple[torch.Tensor, dict]:
        """(embedding, {stage: its output feature map}) for the `wanted` stages, in one pass: the same
        computation as `forward`, written out so that an export traces the taps as plain graph edges."""
        walk = getattr(self.body, "stage_maps", None)
        if walk is not None:
            x, maps = walk(images, wanted)
        else:
            x, maps = images, {}
            for name, module in self.body.named_children():
                x = module(x)
                if name in wanted:
                    maps[name] = x
        return torch.flatten(self.pool(x), 1), maps


class ModelBackbone(Backbone):
    """A whole third-party model whose own forward already ends in the embedding (timm with
    `num_classes=0`, a `transformers` base model): `body` is that model and its stages are groups of
    its modules in execution order (`group_stages`), each ending at one of the model's own stage
    outputs. `maps(body, images, wanted)` returns (embedding, {stage: output}) in one pass, through
    the library's own intermediate-features API, so that export traces the taps as plain edges."""

    def __init__(self, name: str, body: nn.Module, embedding_dim: int, groups: dict[str, list[str]],
                 taps: list[str], maps: Callable):
        super().__init__(name, body, nn.Identity(), embedding_dim, list(groups))
        self._groups, self._taps, self._maps = groups, list(taps), maps

    def stages(self) -> list[str]:
        return list(self._groups)

    def stage(self, name: str) -> nn.Module:
        """The modules of one stage together (a view: they stay where they are in `body`)."""
        found = [_RootParameters(self.body.get_submodule(m.removesuffix(OWN)))
                 if m.endswith(OWN) else self.body.get_submodule(m) for m in self._groups[name]]
        return nn.ModuleList(found)

    def body_stages(self) -> list[str]:
        return list(self._taps)

    def stage_maps(self, images: torch.Tensor, wanted: frozenset[str]) -> tuple[torch.Tensor, dict]:
        wanted = frozenset(wanted) & frozenset(self._taps)
        if not wanted:
            return self.forward(images), {}
        return self._maps(self.body, images, wanted)


OWN = ":own"  # a group entry `PATH:own`: the parameters the module at PATH holds itself


class _RootParameters(nn.Module):
    """The parameters a model holds itself, outside any child module (a ViT's class token and
    position embedding), as a module of their own, so that a stage can freeze them."""

    def __init__(self, model: nn.Module):
        super().__init__()
        for name, p in model.named_parameters(recurse=False):
            self.register_parameter(name, p)


def group_stages(model: nn.Module, ends: list[str]) -> dict[str, list[str]]:
    """{stage: the module names it holds}, in execution order: each stage is named after one of
    `ends` (the model's own stage outputs, input first) and holds that module and every module
    registered before it since the previous end (a stem goes with the first stage). What follows the
    last end (a pre-logits conv, a final norm) is the stage `pool` when it has weights, as for the
    registry's backbones. Module registration order is taken as execution order, which holds for
    timm's and transformers' vision models; the parameters a model holds itself go with the first
    stage (they are the embeddings' in a ViT), as the entry `:own` (`PATH:own` for a container's)."""
    ends_set = set(ends)
    units: list[str] = [OWN] if any(True for _ in model.named_parameters(recurse=False)) else []

    def walk(prefix: str, module: nn.Module) -> None:
        for child, sub in module.named_children():
            name = f"{prefix}{child}"
            if name not in ends_set and any(e.startswith(name + ".") for e in ends):
                if any(True for _ in sub.named_parameters(recurse=False)):
                    units.append(f"{name}{OWN}")  # a container's own weights go with what follows them
                walk(name + ".", sub)
            else:
                units.append(name)

    walk("", model)
    groups: dict[str, list[str]] = {}
    pending: list[str] = []
    for unit in units:
        pending.append(unit)
        if unit in ends_set:
            groups[unit], pending = pending, []
    if any(True for u in pending if u != OWN for _ in model.get_submodule(u).parameters()):
        groups["pool"] = pending
    return groups


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one registered backbone and what its pretrained weights expect."""

    name: str
    build: Callable[[int, dict | None], Backbone]  # (image size, original-layout weights) -> backbone
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    default_weights: str  # what `--weights imagenet` resolves to
    default_img_size: int
    channel_order: str = "RGB"
    interpolation: str = "bilinear"
    # where `--weights imagenet` is not a name `edgetl.train.weights` knows: a model source's own
    # lookup (a timm model's file in the local Hugging Face cache, a model dir's weights file)
    load_default: Callable[[], object] | None = None


def load_original(model: nn.Module, state_dict: dict | None, classifier_keys: tuple[str, ...], arch: str) -> None:
    """Load weights saved in the architecture's own layout, dropping its ImageNet classifier."""
    if state_dict is None:
        return
    kept = {k: v for k, v in state_dict.items() if k not in classifier_keys}
    try:
        result = model.load_state_dict(kept, strict=False)
    except RuntimeError as exc:  # shape mismatch: weights of another architecture or width
        first = str(exc).strip().splitlines()[1:2] or [str(exc)]
        raise WeightsError(f"these weights do not fit {arch}: {first[0].strip()}",
                           "pass weights saved from the same architecture") from None
    missing = [k for k in result.missing_keys if k not in classifier_keys]
    if missing or result.unexpected_keys:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {result.unexpected_keys[:3]}"
        raise WeightsError(f"these weights do not fit {arch} ({detail})",
                           "pass weights saved from the same architecture")

"""timm models as backbones: `--backbone timm:NAME` (e.g. `timm:mobilenetv4_conv_small`).

timm is where most vision practitioners take backbones from, and every model of it answers one
API: `create_model(name, num_classes=0)` ends in the pre-logits embedding, `feature_info` names
the stage outputs, `forward_intermediates` returns them in the same pass. So the registry needs no
entry per model: the stages `--freeze until:STAGE` and taps count in are timm's feature-info
modules, and the normalisation and weights file are the model's `pretrained_cfg`.

Weights are never downloaded: `--weights imagenet` reads the model's file from the local Hugging
Face cache (where `huggingface-cli download` or an earlier online run put it), `--weights PATH`
a safetensors or state_dict file in timm's layout. timm is an optional extra (`edgetl[timm]`).
"""

from __future__ import annotations

import difflib
from pathlib import Path

from torch import nn

from edgetl.errors import ConfigError, WeightsError
from edgetl.train.backbone import TIMM, BackboneSpec, ModelBackbone, group_stages, load_original

# The input size a timm backbone is fine-tuned at unless --img-size says otherwise: the registry's
# choice for efficientnet_lite0 (see backbones.py), not timm's 224, which is what its ImageNet
# weights were trained at but costs 3x the latency on a Raspberry Pi for small crops.
DEFAULT_IMG_SIZE = 128


def _timm():
    try:
        import timm
    except ImportError:
        raise ConfigError("timm is not installed: timm:NAME backbones need it",
                          "pip install 'edgetl[timm]' (or timm)") from None
    return timm


def names(pattern: str = "*") -> list[str]:
    """The timm models matching a glob pattern (`edgetl backbones --timm PATTERN`)."""
    return _timm().list_models(pattern)


def _check_name(name: str) -> None:
    timm = _timm()
    arch = name.split(".", 1)[0]
    if name and timm.is_model(arch):
        return
    close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
    raise ConfigError(f"timm has no model {name!r}",
                      f"close matches: {', '.join(close)}" if close else
                      "list them with `edgetl backbones --timm 'mobilenet*'`")


def _create(name: str) -> nn.Module:
    return _timm().create_model(name, pretrained=False, num_classes=0)


def _maps(ends: list[str]):
    """(embedding, {stage: map}) through timm's `forward_intermediates`, whose indices are feature-info indices."""

    def maps(model: nn.Module, images, wanted: frozenset[str]):
        indices = [i for i, end in enumerate(ends) if end in wanted]
        final, intermediates = model.forward_intermediates(images, indices=indices)
        embedding = model.forward_head(final, pre_logits=True)
        return embedding, {ends[i]: m for i, m in zip(indices, intermediates, strict=True)}

    return maps


def _classifier_keys(model: nn.Module, state_dict: dict) -> tuple[str, ...]:
    """The keys of the ImageNet classifier in a full timm state_dict (`pretrained_cfg["classifier"]`)."""
    roots = model.pretrained_cfg.get("classifier") or ()
    roots = (roots,) if isinstance(roots, str) else tuple(roots)
    return tuple(k for k in state_dict if any(k == r or k.startswith(r + ".") for r in roots))


def _build(name: str):
    def build(img_size: int, weights: dict | None) -> ModelBackbone:
        import torch

        model = _create(name)
        if weights is not None:
            load_original(model, weights, _classifier_keys(model, weights), f"timm:{name}")
        ends = [info["module"] for info in model.feature_info]
        was = model.training
        model.eval()
        with torch.no_grad():
            dim = int(model(torch.zeros(1, 3, img_size, img_size)).shape[1])
        model.train(was)
        taps = ends if hasattr(model, "forward_intermediates") else []
        return ModelBackbone(f"{TIMM}{name}", model, dim, group_stages(model, ends), taps, _maps(ends))

    return build


def _hub_file(name: str, cfg: dict):
    """The model's pretrained weights from the local Hugging Face cache, or a one-line error naming
    the file and the folder to place it in."""
    def load():
        from edgetl.train.weights import Weights, load_state_dict

        repo = cfg.get("hf_hub_id")
        if not repo:
            raise WeightsError(f"timm:{name} has no pretrained weights on the Hugging Face hub",
                               "pass --weights PATH (a safetensors or state_dict file) or --weights none")
        from huggingface_hub import constants, try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(repo, filename)
            if isinstance(found, str):
                return Weights(source=f"hf-cache:{repo}/{filename}", original=load_state_dict(Path(found)))
        folder = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
        raise WeightsError(
            f"pretrained weights of timm:{name} are not on this machine and nothing is downloaded at run time",
            f"place model.safetensors of {repo} in the Hugging Face cache at {folder} "
            f"(`huggingface-cli download {repo}` on a connected machine, then copy that folder), "
            "or pass --weights PATH or --weights none")

    return load


def spec(name: str) -> BackboneSpec:
    """The backbone spec of a timm model (`name` as timm spells it, optionally with its pretrained tag)."""
    _check_name(name)
    found = _timm().models.get_pretrained_cfg(name)
    cfg = found.to_dict() if found is not None else {}
    mean, std = tuple(cfg.get("mean") or (0.485, 0.456, 0.406)), tuple(cfg.get("std") or (0.229, 0.224, 0.225))
    interpolation = cfg.get("interpolation") if cfg.get("interpolation") in ("bilinear", "bicubic") else "bilinear"
    return BackboneSpec(f"{TIMM}{name}", _build(name), mean, std,
                        f"hf-hub:{cfg['hf_hub_id']}" if cfg.get("hf_hub_id") else "(none published)",
                        DEFAULT_IMG_SIZE, interpolation=interpolation, load_default=_hub_file(name, cfg))

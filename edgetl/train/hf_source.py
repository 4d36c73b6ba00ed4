"""Hugging Face `transformers` image models as backbones: `--backbone hf:DIR`.

DIR is a local model dir as `save_pretrained` writes it (config.json, model.safetensors, and the
image processor's preprocessor_config.json): a MobileViT, ViT, ConvNeXt, ... saved for image
classification or as a base model. The base model (`AutoModel`) is the backbone; its embedding is
what the library's own classification head reads: the pooled output (ConvNeXt, MobileViT), or the
class token where the pooler would be untrained weights (a ViT saved for classification has
none). The preprocessing (size, mean/std, channel order, resampling filter) is the dir's image
processor config, so the device normalises as the model was trained to expect. The stages are the
items of the model's encoder (its largest ModuleList), and its hidden states are their outputs.

The run records the dir by its absolute path: later stages rebuild the architecture from its
config.json, so keep the dir where it is. `transformers` is an optional extra (`edgetl[hf]`).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch
from torch import nn

from edgetl.errors import ConfigError, WeightsError
from edgetl.train.backbone import HF, OWN, BackboneSpec, ModelBackbone, group_stages

CONFIG, PROCESSOR = "config.json", "preprocessor_config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL's filter numbers; others are nearest to bilinear


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError("transformers is not installed: hf:DIR backbones need it",
                          "pip install 'edgetl[hf]' (or transformers)") from None
    transformers.logging.set_verbosity_error()  # its load reports are about its own task heads
    transformers.utils.logging.disable_progress_bar()
    return transformers


def _dir(path: str) -> Path:
    d = Path(path).expanduser()
    if not (d / CONFIG).is_file():
        raise ConfigError(f"hf:{path} is not a Hugging Face model dir (no {CONFIG} in it)",
                          "pass a dir written by save_pretrained, e.g. hf:models/mobilevit-small")
    return d.resolve()


def _json(path: Path) -> dict:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}", "save it again with save_pretrained") from None
    if not isinstance(found, dict):
        raise ConfigError(f"{path} is not a JSON object", "save it again with save_pretrained")
    return found


def weight_files(d: Path) -> list[Path]:
    """The dir's weights: one file, or the shards its index lists."""
    for name in WEIGHT_FILES:
        index = d / f"{name}.index.json"
        if index.is_file():
            shards = sorted(set(_json(index).get("weight_map", {}).values()))
            return [d / s for s in shards]
        if (d / name).is_file():
            return [d / name]
    return []


def _saved_keys(d: Path) -> set[str]:
    """The tensor names in the dir's weights, read without loading them (safetensors headers)."""
    keys: set[str] = set()
    for f in weight_files(d):
        if f.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(f), framework="pt") as st:
                keys |= set(st.keys())
        else:
            from edgetl.train.weights import load_state_dict

            keys |= set(load_state_dict(f))
    return keys


def preprocessing(d: Path) -> tuple[tuple, tuple, str, str, int]:
    """(mean, std in edgetl's [0, 1] units, channel order, interpolation, size) from the dir's image
    processor config. edgetl normalises pixels / 255; a processor that rescales by r and normalises by
    (m, s) computes (p r - m) / s = (p / 255 - m / 255r) / (s / 255r)."""
    path = d / PROCESSOR
    if not path.is_file():
        raise ConfigError(f"hf:{d} has no {PROCESSOR}: the model's preprocessing is unknown",
                          "save its image processor there: "
                          "AutoImageProcessor.from_pretrained(...).save_pretrained(DIR)")
    p = _json(path)
    r = float(p.get("rescale_factor", 1 / 255)) if p.get("do_rescale", True) else 1.0
    mean = p.get("image_mean") if p.get("do_normalize", True) else [0.0, 0.0, 0.0]
    std = p.get("image_std") if p.get("do_normalize", True) else [1.0, 1.0, 1.0]
    if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3 and r > 0):
        raise ConfigError(f"{path}: image_mean/image_std must be 3 numbers each", "an RGB image processor config")
    mean = tuple(round(float(m) / (255 * r), 6) for m in mean)
    std = tuple(round(float(s) / (255 * r), 6) for s in std)
    order = "BGR" if p.get("do_flip_channel_order") else "RGB"
    interpolation = RESAMPLE.get(p.get("resample", 2), "bilinear")
    size = (p.get("crop_size") if p.get("do_center_crop") else None) or p.get("size") or {}
    if isinstance(size, int):
        size = {"shortest_edge": size}
    px = size.get("height") or size.get("shortest_edge") or 224
    return mean, std, order, interpolation, int(px)


class HFEmbedder(nn.Module):
    """A `transformers` base model as image -> embedding (and its hidden states, for taps)."""

    def __init__(self, model: nn.Module, use_pooler: bool):
        super().__init__()
        self.model = model
        self.use_pooler = use_pooler
        self._kwargs = ({"interpolate_pos_encoding": True}  # a ViT at another size than its position table's
                        if "interpolate_pos_encoding" in inspect.signature(model.forward).parameters else {})

    def outputs(self, images: torch.Tensor, hidden: bool):
        out = self.model(pixel_values=images, output_hidden_states=hidden, return_dict=True, **self._kwargs)
        pooled = out.get("pooler_output")
        if self.use_pooler and pooled is not None:
            embedding = pooled
        elif out.last_hidden_state.dim() == 3:
            embedding = out.last_hidden_state[:, 0]  # the class token, as the library's classifier reads it
        else:
            embedding = out.last_hidden_state.mean(dim=(2, 3))
        return torch.flatten(embedding, 1), out.hidden_states if hidden else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.outputs(images, hidden=False)[0]


def _encoder_layers(model: nn.Module) -> tuple[str, int]:
    """The name and length of the model's largest ModuleList by weights: its encoder's layers or stages."""
    lists = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 1]
    if not lists:
        raise ConfigError(f"{type(model).__name__} has no encoder layers edgetl can find", "an image encoder model")
    name, layers = max(lists, key=lambda t: sum(p.numel() for p in t[1].parameters()))
    return name, len(layers)


def _maps(ends: list[str]):
    def maps(body: HFEmbedder, images, wanted: frozenset[str]):
        embedding, hidden = body.outputs(images, hidden=True)
        offset = len(hidden) - len(ends)  # 1 when the first hidden state is the embeddings' output
        return embedding, {e: hidden[i + offset] for i, e in enumerate(ends) if e in wanted}

    return maps


def _build(d: Path):
    def build(img_size: int, weights: dict | None) -> ModelBackbone:
        transformers = _transformers()
        config = transformers.AutoConfig.from_pretrained(str(d))
        if weights is None:
            model = transformers.AutoModel.from_config(config)
        else:  # the library's own loading: it renames a checkpoint's keys to its modules' (transformers 5)
            model_class = transformers.AutoModel._model_mapping[type(config)]
            model, info = model_class.from_pretrained(None, config=config, state_dict=weights, output_loading_info=True)
            bad = [k for k in info["missing_keys"] if not k.startswith("pooler.")] + list(info["mismatched_keys"])
            if bad:
                raise WeightsError(f"these weights do not fit hf:{d.name} (missing or of another shape: {bad[:3]})",
                                   "pass weights saved from the same model")
        saved = _saved_keys(d)
        pooler = getattr(model, "pooler", None)
        use_pooler = not (isinstance(pooler, nn.Module) and any(True for _ in pooler.parameters())
                          and not any(k.startswith(("pooler.", f"{model.base_model_prefix}.pooler.")) for k in saved))
        body = HFEmbedder(model, use_pooler)
        layers, n = _encoder_layers(model)
        ends = [f"{layers}.{i}" for i in range(n)]  # stage names as the model's own modules are named
        was = body.training
        body.eval()
        with torch.no_grad():
            embedding, hidden = body.outputs(torch.zeros(1, 3, img_size, img_size), hidden=True)
        body.train(was)
        taps = ends if hidden is not None and len(hidden) - n in (0, 1) else []
        groups = {stage: [f"model{m}" if m == OWN else f"model.{m}" for m in held]  # paths inside `body`
                  for stage, held in group_stages(model, ends).items()}
        return ModelBackbone(f"{HF}{d}", body, int(embedding.shape[1]), groups, taps, _maps(ends))

    return build


def _dir_weights(d: Path):
    def load():
        from edgetl.train.weights import Weights, load_state_dict

        files = weight_files(d)
        if not files:
            raise WeightsError(f"hf:{d} holds no weights ({' or '.join(WEIGHT_FILES)})",
                               "save the model with save_pretrained, or pass --weights none for random init")
        state = {}
        for f in files:
            state.update(load_state_dict(f))
        return Weights(source=f"hf:{d}/{files[0].name}", original=state)

    return load


def spec(path: str) -> BackboneSpec:
    """The backbone spec of a local Hugging Face image model dir."""
    _transformers()
    d = _dir(path)
    mean, std, order, interpolation, size = preprocessing(d)
    return BackboneSpec(f"{HF}{d}", _build(d), mean, std, f"{d.name} ({', '.join(f.name for f in weight_files(d))})",
                        size, channel_order=order, interpolation=interpolation, load_default=_dir_weights(d))

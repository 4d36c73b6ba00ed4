import pytest
import torch

pytest.importorskip("timm")

from edgetl.errors import ConfigError, WeightsError  # noqa: E402
from edgetl.train import freeze, taps  # noqa: E402
from edgetl.train.backbones import get_spec  # noqa: E402
from edgetl.train.finetune import FinetuneConfig, finetune  # noqa: E402
from edgetl.train.weights import Weights, load_backbone, resolve  # noqa: E402
from tests.train.through import through_the_pipeline  # noqa: E402

TINY = "timm:test_efficientnet"  # timm's own 0.1M-parameter test model: the real API, any architecture's


def _backbone(name=TINY, size=32):
    return load_backbone(get_spec(name), size, Weights(source="none"))


def test_a_timm_backbone_is_image_to_embedding_with_timm_s_stages():
    backbone = _backbone()
    backbone.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        embedding = backbone(x)
        same, maps = backbone.stage_maps(x, frozenset(backbone.body_stages()))
    assert embedding.shape == (2, backbone.embedding_dim) and torch.equal(embedding, same)
    info = [f["module"] for f in backbone.body.feature_info]
    assert backbone.body_stages() == info and set(maps) == set(info)
    assert backbone.stages()[: len(info)] == info
    # every weight belongs to exactly one stage, so `--freeze all` freezes the whole backbone
    held = [id(p) for s in backbone.stages() for p in backbone.stage(s).parameters()]
    assert len(held) == len(set(held)) == len(list(backbone.parameters()))
    assert taps.candidates(backbone, (32, 32))


def test_freeze_until_a_timm_stage_freezes_it_and_everything_before():
    backbone = _backbone()
    first, second = backbone.stages()[:2]
    trainable = freeze.apply(backbone, f"until:{second}")
    assert first not in trainable and second not in trainable and trainable
    stem = next(backbone.stage(first).parameters())  # the stem goes with the first stage
    assert not stem.requires_grad and next(backbone.stage(trainable[0]).parameters()).requires_grad
    with pytest.raises(ConfigError) as err:
        freeze.apply(backbone, "until:layer9")
    assert second in err.value.hint  # the error lists timm's stage names


def test_an_unknown_timm_name_lists_close_matches():
    with pytest.raises(ConfigError) as err:
        get_spec("timm:mobilenetv4_conv_smal")
    assert "mobilenetv4_conv_small" in err.value.hint


def test_imagenet_weights_not_in_the_hf_cache_name_the_file_and_folder(monkeypatch, tmp_path):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsError) as err:
        resolve(get_spec("timm:resnet18"), "imagenet")
    assert "timm/resnet18" in str(err.value) and "model.safetensors" in err.value.hint


def test_timm_weights_from_a_safetensors_file_load_into_the_backbone(tmp_path):
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("test_efficientnet", num_classes=7)  # a full model, classifier included
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    weights = resolve(get_spec(TINY), str(path))
    backbone = load_backbone(get_spec(TINY), 32, weights)
    assert torch.equal(backbone.body.conv_stem.weight, source.conv_stem.weight)


@pytest.mark.slow
def test_a_timm_model_fine_tunes_exports_quantizes_compiles_and_adapts(signs, calib_file, tmp_path):
    run = tmp_path / "run"
    finetune(FinetuneConfig(data=signs["train"], test=signs["test"], out=run, backbone=TINY, weights="none",
                            img_size=32, epochs=1, head_epochs=10))
    seen = through_the_pipeline(run, calib_file, signs["city_b"], tmp_path / "bundles", int8="tflite")
    assert seen["parity_onnx"]["top1_agreement"] >= 0.99 and seen["parity_tflite"]["top1_agreement"] >= 0.99
    assert seen["int8"]["ops"]["int8_ops"] > 0
    assert seen["host-cpu"].source_run.backbone == TINY and seen["rpi5"].precision == "int8"
    assert len(seen["predicted"]) == len(seen["labels"]) and seen["adapted"].committed

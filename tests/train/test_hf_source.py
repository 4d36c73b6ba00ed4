import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from edgetl.errors import ConfigError, WeightsError  # noqa: E402
from edgetl.rundir import RunDir  # noqa: E402
from edgetl.train import freeze  # noqa: E402
from edgetl.train.backbones import get_spec  # noqa: E402
from edgetl.train.finetune import FinetuneConfig, finetune  # noqa: E402
from edgetl.train.weights import Weights, load_backbone, resolve  # noqa: E402
from tests.train.through import through_the_pipeline  # noqa: E402


def _convnext(d, **processor):
    """A tiny ConvNeXt saved for image classification, with its image processor, as save_pretrained writes it."""
    config = transformers.ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_labels=5)
    model = transformers.ConvNextForImageClassification(config)
    model.save_pretrained(d)
    transformers.ConvNextImageProcessor(**processor).save_pretrained(d)
    return model


def _vit(d):
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                    image_size=32, patch_size=8, num_labels=3)
    model = transformers.ViTForImageClassification(config)
    model.save_pretrained(d)
    transformers.ViTImageProcessor().save_pretrained(d)
    return model


def test_the_preprocessing_is_the_dir_s_image_processor_config(tmp_path):
    _convnext(tmp_path / "a", image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.25, 0.3], size={"shortest_edge": 160})
    spec = get_spec(f"hf:{tmp_path / 'a'}")
    assert spec.mean == (0.4, 0.5, 0.6) and spec.std == (0.2, 0.25, 0.3) and spec.default_img_size == 160
    assert spec.interpolation == "bicubic" and spec.channel_order == "RGB"
    # MobileViT's processor: no normalisation, channels flipped to BGR, [0, 1] input
    d = tmp_path / "b"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "preprocessor_config.json").write_text(json.dumps(
        {"do_normalize": False, "do_flip_channel_order": True, "do_rescale": True, "rescale_factor": 1 / 255,
         "crop_size": {"height": 256, "width": 256}, "do_center_crop": True, "resample": 2}))
    spec = get_spec(f"hf:{d}")
    assert spec.mean == (0, 0, 0) and spec.std == (1, 1, 1) and spec.channel_order == "BGR"
    assert spec.default_img_size == 256


def test_a_classification_checkpoint_loads_as_its_base_model(tmp_path):
    source = _convnext(tmp_path / "m")
    spec = get_spec(f"hf:{tmp_path / 'm'}")
    backbone = load_backbone(spec, 32, resolve(spec, "imagenet"))  # the dir's own weights
    backbone.eval()
    source.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        pooled = source.convnext(pixel_values=x).pooler_output
        assert torch.allclose(backbone(x), pooled, atol=1e-6)  # what the library's classifier reads
    assert backbone.stages()[:4] == [f"encoder.stages.{i}" for i in range(4)]
    assert "encoder.stages.1" in freeze.apply(backbone, "until:encoder.stages.0")


def test_a_vit_without_a_trained_pooler_embeds_its_class_token(tmp_path):
    source = _vit(tmp_path / "v")
    spec = get_spec(f"hf:{tmp_path / 'v'}")
    backbone = load_backbone(spec, 32, resolve(spec, None))
    backbone.eval()
    source.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        cls = source.vit(pixel_values=x).last_hidden_state[:, 0]
        assert torch.allclose(backbone(x), cls, atol=1e-6)
    held = [id(p) for s in backbone.stages() for p in backbone.stage(s).parameters()]
    assert len(held) == len(set(held)) == len(list(backbone.parameters()))


def test_a_dir_that_is_not_a_model_or_lacks_its_processor_or_weights_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="not a Hugging Face model dir"):
        get_spec(f"hf:{tmp_path}")
    _convnext(tmp_path / "m")
    (tmp_path / "m" / "preprocessor_config.json").unlink()
    with pytest.raises(ConfigError, match="preprocessing is unknown"):
        get_spec(f"hf:{tmp_path / 'm'}")
    _convnext(tmp_path / "n")
    (tmp_path / "n" / "model.safetensors").unlink()
    with pytest.raises(WeightsError, match="holds no weights"):
        resolve(get_spec(f"hf:{tmp_path / 'n'}"), "imagenet")
    assert load_backbone(get_spec(f"hf:{tmp_path / 'n'}"), 32, Weights(source="none")).embedding_dim == 32


@pytest.mark.slow
def test_a_hf_model_fine_tunes_exports_quantizes_compiles_and_adapts(signs, calib_file, tmp_path):
    # a ViT: litert-torch converts it (a ConvNeXt's Linear over NHWC maps it cannot: README)
    _vit(tmp_path / "vit")
    run = tmp_path / "run"
    finetune(FinetuneConfig(data=signs["train"], test=signs["test"], out=run, backbone=f"hf:{tmp_path / 'vit'}",
                            img_size=32, epochs=1, head_epochs=10))
    assert RunDir(run).spec.mean == (0.5, 0.5, 0.5)  # the processor's normalisation, in the run's spec
    seen = through_the_pipeline(run, calib_file, signs["city_b"], tmp_path / "bundles", int8="onnx")
    assert seen["parity_onnx"]["top1_agreement"] >= 0.99 and seen["parity_tflite"]["top1_agreement"] >= 0.99
    assert seen["int8"]["ops"]["int8_ops"] > 0
    assert seen["rpi5"].model.endswith(".tflite") and seen["adapted"].committed

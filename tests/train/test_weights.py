import pytest
import torch

from edgetl.errors import WeightsError
from edgetl.train.backbones import get_spec
from edgetl.train.weights import load_backbone, resolve


class NotATensor:
    pass


def test_missing_torchvision_weights_name_the_file_and_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with pytest.raises(WeightsError) as err:
        resolve(get_spec("mobilenet_v2"), "imagenet")
    message = str(err.value)
    assert "mobilenet_v2-7ebf99e0.pth" in message
    assert str(tmp_path / "torch-home" / "hub" / "checkpoints") in message
    assert "--weights none" in message


def test_torchvision_weights_in_the_hub_cache_are_used(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    target = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    target.parent.mkdir(parents=True)
    reference = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(reference, target)
    weights = resolve(get_spec("resnet18"), "ResNet18_Weights.IMAGENET1K_V1")
    backbone = load_backbone(get_spec("resnet18"), 64, weights)
    assert torch.equal(backbone.stage("conv1").weight, reference["conv1.weight"])


def test_a_checkpoint_that_needs_unpickling_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"weight": NotATensor()}, path)
    with pytest.raises(WeightsError, match="refusing to load"):
        resolve(get_spec("resnet18"), str(path))


def test_weights_of_another_architecture_are_refused(tmp_path):
    import torchvision

    path = tmp_path / "mnv2.pth"
    torch.save(torchvision.models.mobilenet_v2(weights=None).state_dict(), path)
    with pytest.raises(WeightsError, match="do not fit"):
        load_backbone(get_spec("resnet18"), 64, resolve(get_spec("resnet18"), str(path)))


def test_unknown_weights_value_is_explained(tmp_path):
    with pytest.raises(WeightsError, match="neither a file"):
        resolve(get_spec("resnet18"), str(tmp_path / "missing.pth"))


def test_a_headless_state_dict_keeps_its_root(tmp_path):
    """A torchvision model saved without its classifier: every key starts with `features.`, its own layout."""
    import torchvision

    features = {f"features.{k}": v for k, v in torchvision.models.mobilenet_v2(weights=None).features.state_dict()
                .items()}
    path = tmp_path / "headless.pth"
    torch.save(features, path)
    backbone = load_backbone(get_spec("mobilenet_v2"), 32, resolve(get_spec("mobilenet_v2"), str(path)))
    assert torch.equal(backbone.stage("0")[0].weight, features["features.0.0.weight"])


def test_prefixes_only_a_wrapper_adds_are_stripped():
    from edgetl.train.weights import strip_prefixes

    t = torch.zeros(1)
    assert set(strip_prefixes({"module._orig_mod.features.0.weight": t})) == {"features.0.weight"}
    assert set(strip_prefixes({"features.0.weight": t, "features.1.weight": t})) == {"features.0.weight",
                                                                                     "features.1.weight"}
    assert set(strip_prefixes({"model.features.0.weight": t}, lightning=True)) == {"features.0.weight"}
    assert set(strip_prefixes({"module.conv.weight": t, "n_averaged": t})) == {"conv.weight"}  # an AveragedModel


def test_a_safetensors_state_dict_loads_without_pickle_whatever_its_name(tmp_path):
    import torchvision
    from safetensors.torch import save_file

    source = torchvision.models.resnet18(weights=None).state_dict()
    for name in ("resnet18.safetensors", "resnet18.bin"):  # by its suffix, or by its header
        path = tmp_path / name
        save_file({k: v.contiguous() for k, v in source.items()}, str(path))
        backbone = load_backbone(get_spec("resnet18"), 32, resolve(get_spec("resnet18"), str(path)))
        assert torch.equal(backbone.stage("conv1").weight, source["conv1.weight"])
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes((tmp_path / "resnet18.bin").read_bytes()[:1000])  # cut mid-file
    with pytest.raises(WeightsError, match="cannot read safetensors file"):
        resolve(get_spec("resnet18"), str(broken))

"""Lightning interop: edgetl's recipe under a Lightning Trainer, and its checkpoints as --weights."""

import argparse

import numpy as np
import pytest
import torch

pl = pytest.importorskip("lightning.pytorch", reason="the lightning extra is not installed")

from edgetl.data.imagefolder import load_images, scan  # noqa: E402
from edgetl.errors import WeightsError  # noqa: E402
from edgetl.train.backbones import get_spec  # noqa: E402
from edgetl.train.finetune import FinetuneConfig, finetune  # noqa: E402
from edgetl.train.lightning import FinetuneModule  # noqa: E402
from edgetl.train.weights import load_backbone, resolve  # noqa: E402

SMALL = dict(backbone="mobilenet_v3_small", weights="none", img_size=32)


def _loader(folder, batch_size=8, shuffle=False):
    found = scan(folder, what="training")
    loaded = load_images(found.samples, (32, 32), "stretch")
    images = torch.from_numpy(loaded.images).permute(0, 3, 1, 2).contiguous()  # uint8 NCHW, as the module takes
    data = torch.utils.data.TensorDataset(images, torch.from_numpy(loaded.labels))
    return found.classes, torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=shuffle)


def _fit(module, train, val, root, epochs=1):
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=root)
    trainer.fit(module, train, val)
    return trainer


def test_the_module_trains_one_epoch_with_the_recipe(tmp_path, signs):
    classes, train = _loader(signs["train"], shuffle=True)
    _, val = _loader(signs["test"])
    module = FinetuneModule(classes, freeze_policy="until:2", lr_decay=0.1, **SMALL)
    frozen_before = module.backbone.stage("0")[0].weight.detach().clone()
    stats_before = module.backbone.stage("0")[1].running_mean.clone()
    ema_before = module.ema.module[1].weight.detach().clone()
    trainer = _fit(module, train, val, tmp_path)
    assert trainer.current_epoch == 1 and np.isfinite(float(trainer.callback_metrics["val_loss"]))
    assert 0.0 <= float(trainer.callback_metrics["val_top1"]) <= 100.0  # percent
    opt = trainer.optimizers[0]
    assert [g["name"] for g in opt.param_groups][-1] == "head"
    peaks = [g["max_lr"] for g in opt.param_groups]  # one-cycle's peak per group: discriminative, rising to the head
    assert peaks == sorted(peaks) and peaks[0] < peaks[-1] == pytest.approx(1e-3)
    assert torch.equal(module.backbone.stage("0")[0].weight, frozen_before)  # frozen stage: untouched
    assert torch.equal(module.backbone.stage("0")[1].running_mean, stats_before)  # and its BatchNorm statistics
    assert not torch.equal(module.ema.module[1].weight, ema_before)  # the average followed the training


def test_its_checkpoint_is_a_weights_for_finetune_with_its_head_backbone_and_size(tmp_path, signs):
    classes, train = _loader(signs["train"], shuffle=True)
    module = FinetuneModule(classes, **SMALL)
    trainer = _fit(module, train, None, tmp_path)
    ckpt = tmp_path / "signs.ckpt"
    trainer.save_checkpoint(ckpt)

    weights = resolve(get_spec("mobilenet_v3_small"), str(ckpt))
    assert weights.classes == tuple(classes) and weights.head is not None
    backbone = load_backbone(get_spec("mobilenet_v3_small"), 32, weights)
    assert torch.equal(backbone.stage("0")[0].weight, module.ema.module[0].stage("0")[0].weight)  # the EMA's
    # `--weights model.ckpt` alone, as `--weights RUN` needs no --backbone or --img-size
    result = finetune(FinetuneConfig(data=signs["train"], out=tmp_path / "run", weights=str(ckpt), epochs=0,
                                     head_epochs=2))
    assert result.weights == f"file:{ckpt}"
    assert (result.backbone, result.img_size) == ("mobilenet_v3_small", 32)


def test_a_plain_module_checkpoint_has_its_attribute_prefix_stripped(tmp_path):
    """A user's own LightningModule holding the architecture as `self.model`: keys `model.features...`."""
    import torchvision

    class UserModule(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = torchvision.models.mobilenet_v3_small(weights=None)

    user = UserModule()
    ckpt = tmp_path / "user.ckpt"
    torch.save({"state_dict": user.state_dict(), "pytorch-lightning_version": pl.__version__,
                "hyper_parameters": {"lr": 0.01}}, ckpt)
    backbone = load_backbone(get_spec("mobilenet_v3_small"), 32, resolve(get_spec("mobilenet_v3_small"), str(ckpt)))
    assert torch.equal(backbone.stage("0")[0].weight, user.model.features[0][0].weight)


def test_a_checkpoint_with_pickled_objects_is_refused(tmp_path):
    ckpt = tmp_path / "pickled.ckpt"
    state = FinetuneModule(["a", "b"], **SMALL).state_dict()
    torch.save({"state_dict": state, "hyper_parameters": {"args": argparse.Namespace(lr=0.1)}}, ckpt)
    with pytest.raises(WeightsError, match=r"refusing to load .*argparse\.Namespace") as err:
        resolve(get_spec("mobilenet_v3_small"), str(ckpt))
    assert "save_hyperparameters" in err.value.hint


def test_a_users_module_named_backbone_and_head_is_not_taken_for_edgetls(tmp_path):
    import torchvision

    class UserModule(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.backbone = torchvision.models.mobilenet_v3_small(weights=None)

    ckpt = tmp_path / "user.ckpt"
    user = UserModule()
    torch.save({"state_dict": user.state_dict()}, ckpt)
    weights = resolve(get_spec("mobilenet_v3_small"), str(ckpt))
    assert weights.backbone is None and weights.original is not None  # the architecture's own layout
    backbone = load_backbone(get_spec("mobilenet_v3_small"), 32, weights)
    assert torch.equal(backbone.stage("0")[0].weight, user.backbone.features[0][0].weight)

import json

import numpy as np
import pytest
import torch

from edgetl.errors import ConfigError, DataError, RunError
from edgetl.runtime.preprocess import PreprocessSpec
from edgetl.train.finetune import FinetuneConfig, finetune

FAST = dict(backbone="mobilenet_v3_small", weights="none", img_size=32, epochs=2, head_epochs=10, batch_size=16)


def _config(data, out, **kw):
    return FinetuneConfig(data=data, out=out, **(FAST | kw))


def test_run_dir_holds_checkpoint_labels_spec_head_and_record(tmp_path, signs):
    out = tmp_path / "runs" / "a"
    result = finetune(_config(signs["train"], out, test=signs["test"]))
    assert {p.name for p in out.iterdir()} == {"checkpoint.pt", "head.npz", "labels.json", "preprocess.json",
                                                "finetune.json"}
    record = json.loads((out / "finetune.json").read_text())
    for key in ("val_top1", "test_top1", "epochs", "seconds", "versions"):
        assert record[key] is not None
    assert record["versions"]["torch"] == torch.__version__
    assert record["test_top1"] == result.test_top1
    labels = json.loads((out / "labels.json").read_text())
    head = np.load(out / "head.npz")
    assert head["W"].shape == (len(labels), 1024) and head["b"].shape == (len(labels),)
    spec = PreprocessSpec.from_json((out / "preprocess.json").read_text())
    assert spec.size == (32, 32) and spec.mean == (0.485, 0.456, 0.406)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_same_seed_same_metrics_and_head(tmp_path, signs):
    a = finetune(_config(signs["train"], tmp_path / "a", seed=3))
    b = finetune(_config(signs["train"], tmp_path / "b", seed=3))
    assert (a.val_top1, a.history) == (b.val_top1, b.history)
    assert np.array_equal(np.load(tmp_path / "a" / "head.npz")["W"], np.load(tmp_path / "b" / "head.npz")["W"])


def test_the_record_keeps_the_seed_and_the_epoch_lowest_on_val_loss(tmp_path, signs):
    result = finetune(_config(signs["train"], tmp_path / "r", seed=5, epochs=3))
    record = json.loads((tmp_path / "r" / "finetune.json").read_text())
    assert record["seed"] == result.seed == 5
    losses = [h["val_loss"] for h in result.history]
    assert result.val_loss <= min(losses) + 1e-4  # never the head-only model when an unfrozen epoch was better
    if result.best_epoch:
        assert result.val_loss == pytest.approx(losses[result.best_epoch - 1], abs=1e-4)


def test_a_val_split_too_small_to_resolve_one_point_is_said(tmp_path, signs, capsys):
    from edgetl.cli import main

    assert main(["finetune", "--data", str(signs["train"]), "--out", str(tmp_path / "r"), "--epochs", "0",
                 "--backbone", "mobilenet_v3_small", "--weights", "none", "--img-size", "32",
                 "--head-epochs", "2"]) == 0
    err = capsys.readouterr().err
    assert "too few to resolve one point" in err and "val loss" in err


def test_pretrained_lite0_learns_the_signs(tmp_path, signs):
    """The offline default backbone with its real ImageNet weights, head plus a short fine-tune."""
    result = finetune(FinetuneConfig(data=signs["train"], out=tmp_path / "r", test=signs["test"],
                                     img_size=64, epochs=2, head_epochs=30))
    assert result.backbone == "efficientnet_lite0" and "efficientnet-lite0" in result.weights
    assert result.test_top1 >= 90.0


def test_existing_run_is_kept_unless_forced(tmp_path, signs):
    out = tmp_path / "run"
    finetune(_config(signs["train"], out, epochs=0))
    before = (out / "finetune.json").read_text()
    with pytest.raises(RunError, match="already exists"):
        finetune(_config(signs["train"], out, epochs=0))
    assert (out / "finetune.json").read_text() == before
    finetune(_config(signs["train"], out, epochs=0, seed=1, force=True))
    assert json.loads((out / "finetune.json").read_text())["config"]["seed"] == 1


def test_a_directory_that_is_not_a_run_is_never_replaced(tmp_path, signs):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.txt").write_text("keep")
    with pytest.raises(RunError, match="not an edgetl run"):
        finetune(_config(signs["train"], out, force=True))
    assert (out / "thesis.txt").read_text() == "keep"


def test_corrupt_image_is_skipped_and_recorded(tmp_path, dataset):
    bad = next(dataset.iterdir()) / "zz-corrupt.png"
    bad.write_bytes(b"garbage")
    result = finetune(_config(dataset, tmp_path / "r", epochs=0))
    assert [p for p, _ in result.data["skipped"]] == [str(bad)]
    with pytest.raises(DataError, match="zz-corrupt.png"):
        finetune(_config(dataset, tmp_path / "r2", epochs=0, strict=True))
    assert not (tmp_path / "r2").exists()


def test_head_only_uses_cached_embeddings_and_trains_no_backbone(tmp_path, signs):
    result = finetune(_config(signs["train"], tmp_path / "r", freeze="all", epochs=5))
    assert result.epochs == 0 and result.trainable_stages == []
    ckpt = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    assert set(ckpt) == {"backbone", "head"}


def test_weights_from_a_run_continue_its_backbone_and_head(tmp_path, signs):
    first = tmp_path / "city-a"
    finetune(_config(signs["train"], first))
    second = finetune(FinetuneConfig(data=signs["city_b"], out=tmp_path / "city-b", weights=str(first),
                                     epochs=0, head_epochs=1))
    assert second.backbone == "mobilenet_v3_small" and second.img_size == 32
    assert second.weights == f"run:{first}"
    with pytest.raises(ConfigError, match="does not match"):
        finetune(FinetuneConfig(data=signs["city_b"], out=tmp_path / "x", weights=str(first), backbone="resnet18"))


@pytest.mark.parametrize("kw, error", [({"epochs": -1}, ConfigError), ({"img_size": 4}, ConfigError),
                                       ({"freeze": "half"}, ConfigError), ({"backbone": "vgg"}, ConfigError)])
def test_bad_configuration_is_refused_before_any_work(tmp_path, signs, kw, error):
    with pytest.raises(error):
        finetune(_config(signs["train"], tmp_path / "r", **kw))
    assert not (tmp_path / "r").exists()


def test_epochs_are_judged_by_the_smoothed_loss_they_train_on():
    """Trained toward smoothed targets (p = 0.95 of 2 classes at 0.1), a model at that target must
    not look worse than an over-confident one: plain cross-entropy would say it does."""
    from pathlib import Path

    from edgetl.data.imagefolder import LoadedImages
    from edgetl.train.backbones import Backbone
    from edgetl.train.distributed import SINGLE
    from edgetl.train.finetune import Split, score

    images = np.zeros((8, 8, 8, 3), np.uint8)
    images[:4, ..., 0] = images[4:, ..., 2] = 255  # red signs are class 0, blue ones class 1
    labels = np.array([0] * 4 + [1] * 4)
    val = Split("val", LoadedImages(images, labels, tuple(Path(f"{i}.png") for i in range(8)), ()))
    spec = PreprocessSpec(size=(8, 8), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    backbone = Backbone("means", torch.nn.Identity(), torch.nn.AdaptiveAvgPool2d(1), 3, [])

    def head(confidence: float) -> torch.nn.Linear:
        h = torch.nn.Linear(3, 2)
        with torch.no_grad():  # logit gap log(p / (1 - p)) between the right class and the other
            gap = float(np.log(confidence / (1 - confidence))) / 4
            h.weight.copy_(torch.tensor([[gap, 0.0, -gap], [-gap, 0.0, gap]]))
            h.bias.zero_()
        return h

    at_target, over_confident = head(0.95), head(0.9999)
    plain = [score(backbone, h, val, spec, SINGLE) for h in (at_target, over_confident)]
    smoothed = [score(backbone, h, val, spec, SINGLE, label_smoothing=0.1) for h in (at_target, over_confident)]
    assert plain[0].top1 == plain[1].top1 == 100.0
    assert plain[1].better_than(plain[0])
    assert smoothed[0].better_than(smoothed[1])

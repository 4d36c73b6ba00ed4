"""The recipe's parts: discriminative learning rates, the schedules, the EMA, and how epochs are judged."""

import pytest
import torch

from edgetl.train import recipe
from edgetl.train.backbones import get_spec, make_head
from edgetl.train.weights import load_backbone, resolve


def test_stage_lrs_spread_geometrically_from_the_head_down():
    lrs = recipe.stage_lrs(["stem", "a", "b", "top"], 1e-3, 0.1)
    assert lrs["top"] == pytest.approx(1e-3) and lrs["stem"] == pytest.approx(1e-4)
    ratios = [lrs["a"] / lrs["stem"], lrs["b"] / lrs["a"], lrs["top"] / lrs["b"]]
    assert ratios == pytest.approx([10 ** (1 / 3)] * 3)  # one ratio between neighbours
    assert recipe.stage_lrs(["only"], 1e-3, 0.1) == {"only": 1e-3}


def test_param_groups_cover_every_trainable_parameter_once():
    backbone = load_backbone(get_spec("resnet18"), 32, resolve(get_spec("resnet18"), "none"))
    head = make_head(backbone.embedding_dim, 3)
    groups = recipe.param_groups(backbone, head, ["layer3", "layer4"], 1e-3, 0.01)
    assert [g["name"] for g in groups] == ["layer3", "layer4", "head"]
    assert [g["lr"] for g in groups] == pytest.approx([1e-5, 1e-3, 1e-3])
    grouped = {id(p) for g in groups for p in g["params"]}
    expected = {id(p) for s in ("layer3", "layer4") for p in backbone.stage(s).parameters()} | {
        id(p) for p in head.parameters()}
    assert grouped == expected


@pytest.mark.parametrize("kind", recipe.SCHEDULES)
def test_schedules_peak_at_each_groups_lr_and_end_near_zero(kind):
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.AdamW([{"params": params[:1], "lr": 1e-4}, {"params": params[1:], "lr": 1e-3}])
    sched = recipe.schedule(opt, kind, 100)
    seen = []
    for _ in range(100):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    peaks = [max(s[i] for s in seen) for i in (0, 1)]
    assert peaks == pytest.approx([1e-4, 1e-3], rel=1e-3)
    assert seen[-1][1] < 1e-5
    if kind == "one-cycle":  # warms up over the first quarter
        assert seen[0][1] == pytest.approx(1e-3 / 25) and max(range(100), key=lambda i: seen[i][1]) in range(20, 30)


def test_a_short_run_still_gets_a_schedule():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = recipe.schedule(opt, "one-cycle", 2)
    for _ in range(2):
        opt.step()
        sched.step()


def test_the_ema_lags_by_about_its_epochs_and_warms_up():
    assert recipe.ema_decay(1.0, 100) == pytest.approx(0.99)
    assert recipe.ema_decay(2.0, 10) == pytest.approx(0.95)
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    average = recipe.Ema(model, 0.99)
    average.update_parameters(model)  # the first update copies
    with torch.no_grad():
        model.weight.fill_(1.0)
    average.update_parameters(model)  # warm-up: keeps only (1 + 1) / (10 + 1) of itself
    assert average.module.weight.item() == pytest.approx(1 - 2 / 11)


def test_epochs_are_judged_by_val_loss_and_top1_breaks_ties():
    lower_loss = recipe.Score(top1=80.0, loss=0.50)
    higher_top1 = recipe.Score(top1=81.7, loss=0.60)  # one val image more, but less sure of the rest
    assert lower_loss.better_than(higher_top1) and not higher_top1.better_than(lower_loss)
    assert higher_top1.better_than(lower_loss, by="top1")
    assert recipe.Score(81.0, 0.5).better_than(recipe.Score(80.0, 0.5))
    assert lower_loss.better_than(None)
    assert recipe.resolution(60) == pytest.approx(100 / 60)

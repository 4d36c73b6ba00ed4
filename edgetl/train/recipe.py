"""The fine-tuning recipe's parts, shared by `edgetl finetune`, `edgetl lr-find` and the
Lightning module: discriminative learning rates per stage, the schedule, an EMA of the weights,
and how a run judges one epoch better than another.

fastai's recipe, which practitioners trust: the head first (on cached embeddings here), then
every stage unfrozen at once under a one-cycle schedule, the stages nearest the input moving
least when `lr_decay` < 1 (their features are the most general). On small sign crops, far
from ImageNet's photos, the early stages need to move as much as the rest: the default is 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.optim.swa_utils import AveragedModel

SCHEDULES = ("one-cycle", "cosine")
WARMUP = 0.25  # share of the steps the one-cycle schedule climbs for (fastai's pct_start)


def stage_lrs(stages: list[str], lr: float, decay: float) -> dict[str, float]:
    """Each stage's learning rate: `lr` at the stage next to the head, `lr * decay` at the input
    stage, geometric in between (fastai's `slice(lr * decay, lr)`).

    Spread over the stages' positions rather than per stage, so that one `--lr-decay` means the
    same for an 8-stage ResNet and an 18-stage EfficientNet."""
    if len(stages) == 1:
        return {stages[0]: lr}
    last = len(stages) - 1
    return {name: lr * decay ** ((last - i) / last) for i, name in enumerate(stages)}


def param_groups(backbone, head: torch.nn.Module, trainable: list[str], lr: float, decay: float,
                 backbone_scale: float = 1.0) -> list[dict]:
    """Optimizer groups: one per trainable stage at its discriminative lr, and the head at `lr`.
    Stages without trainable parameters (ReLU, pooling) are left out, and take no share of the spread."""
    learning = [s for s in backbone.stages()
                if s in trainable and any(p.requires_grad for p in backbone.stage(s).parameters())]
    lrs = stage_lrs(learning, lr * backbone_scale, decay) if learning else {}
    groups = []
    for name, stage_lr in lrs.items():
        params = [p for p in backbone.stage(name).parameters() if p.requires_grad]
        if params:
            groups.append({"params": params, "lr": stage_lr, "name": name})
    groups.append({"params": list(head.parameters()), "lr": lr, "name": "head"})
    return groups


def schedule(opt: torch.optim.Optimizer, kind: str, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """`one-cycle`: each group warms from lr/25 to its lr over the first quarter (at least two steps:
    up to half of a very short run), then anneals by
    cosine to lr/1e5, with Adam's beta1 cycled the other way (0.95 -> 0.85 -> 0.95), as fastai does.
    `cosine`: from each group's lr straight down to 0."""
    total_steps = max(3, total_steps)  # fewer cannot warm up and anneal
    if kind == "one-cycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=total_steps,
            pct_start=min(0.5, max(WARMUP, 2.0 / total_steps)),  # a short run still peaks
            div_factor=25.0, final_div_factor=1e5 / 25, base_momentum=0.85, max_momentum=0.95)
    if kind == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps)))
    raise ValueError(f"unknown schedule {kind!r}")


def warmup_epochs(kind: str, epochs: int) -> int:
    """Epochs before the learning rate peaks: early stopping waits for them, since a climbing lr
    raises the val loss by design."""
    return math.ceil(WARMUP * epochs) if kind == "one-cycle" else 0


def ema_decay(epochs: float, steps_per_epoch: int) -> float:
    """The per-step decay of an average over about `epochs` epochs: measured in epochs, so that it
    lags a run of 20 images per class as much as one of 2,000."""
    return 1.0 - 1.0 / max(1.0, epochs * steps_per_epoch)


class Ema(AveragedModel):
    """An exponential moving average of the weights and the BatchNorm statistics (`use_buffers`).

    With timm's warm-up: after n updates the average keeps min(decay, (1 + n) / (10 + n)) of
    itself, so early on it follows the weights closely instead of holding on to its start."""

    def __init__(self, model: torch.nn.Module, decay: float):
        super().__init__(model, multi_avg_fn=self._update, use_buffers=True)
        self.module.requires_grad_(False)  # never trained: DDP must not wait for its gradients
        self.decay = decay

    @torch.no_grad()
    def _update(self, averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        if not averaged[0].is_floating_point():  # BatchNorm's batch counters: the latest value
            torch._foreach_copy_(averaged, current)
            return
        steps = float(n)
        torch._foreach_lerp_(averaged, current, 1.0 - min(self.decay, (1 + steps) / (10 + steps)))


CRITERIA = ("loss", "top1")


@dataclass(frozen=True)
class Score:
    """One model on val: top-1 in percent and mean cross-entropy, label-smoothed as in training.

    Plain cross-entropy would judge a model trained toward smoothed targets by a loss it is not
    fitting: once it has converged (p = 0.9 at smoothing 0.1) that loss has a floor of about 0.10,
    and it rewards the early, over-confident epochs instead (gtsrb-mini: epoch 10 of 20 kept,
    0.5-1.4 points lower on test on each of 3 seeds). fastai's valid_loss is the training loss too."""

    top1: float
    loss: float

    def better_than(self, other: Score | None, by: str = "loss") -> bool:
        """By val loss (the default): it moves with every image's confidence, where top-1 on a few
        dozen images moves in steps of several points; top-1 breaks a tie. By top1: the reverse."""
        if other is None:
            return True
        if by == "top1":
            return self.top1 > other.top1 or (self.top1 == other.top1 and self.loss < other.loss)
        return self.loss < other.loss or (self.loss == other.loss and self.top1 > other.top1)


def resolution(n_val: int) -> float:
    """Points of top-1 one val image is worth."""
    return 100.0 / max(1, n_val)

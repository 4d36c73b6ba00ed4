"""Freeze policies: which stages of a backbone train during fine-tuning.

`all` trains the head only (on cached embeddings); `none` trains every stage;
`until:STAGE` freezes the stages from the input up to and including STAGE.
Frozen stages also keep their BatchNorm statistics (eval mode), as a frozen layer should.
"""

from __future__ import annotations

from torch import nn

from edgetl.errors import ConfigError
from edgetl.train.backbones import Backbone

HINT = "use --freeze all (head only), none (everything), or until:STAGE"


def check_policy(policy: str) -> None:
    if policy in ("all", "none"):
        return
    if not policy.startswith("until:") or not policy[len("until:"):]:
        raise ConfigError(f"unknown freeze policy {policy!r}", HINT)


def frozen_stages(backbone: Backbone, policy: str) -> list[str]:
    """The stages `policy` freezes, in order; raises listing the stages when STAGE is unknown."""
    check_policy(policy)
    stages = backbone.stages()
    if policy == "all":
        return stages
    if policy == "none":
        return []
    stage = policy[len("until:"):]
    if stage not in stages:
        raise ConfigError(f"backbone {backbone.name} has no stage {stage!r}", f"stages: {', '.join(stages)}")
    return stages[: stages.index(stage) + 1]


def apply(backbone: Backbone, policy: str) -> list[str]:
    """Set requires_grad per stage; returns the names of the stages left trainable."""
    frozen = set(frozen_stages(backbone, policy))
    for name in backbone.stages():
        for p in backbone.stage(name).parameters():
            p.requires_grad_(name not in frozen)
    return [s for s in backbone.stages() if s not in frozen]


def set_train_mode(backbone: Backbone, policy: str, *, frozen_bn: bool = False) -> None:
    """Training mode for the trainable stages only; frozen BatchNorms keep their running stats,
    and with `frozen_bn` (see `bn_frozen`) every BatchNorm does."""
    backbone.train()
    for name in frozen_stages(backbone, policy):
        backbone.stage(name).eval()
    if frozen_bn:
        freeze_batchnorm(backbone)


BN_MODES = ("auto", "frozen", "train")


def bn_frozen(mode: str, weights: str | None) -> bool:
    """`auto` freezes every BatchNorm's statistics when the weights are pretrained: a head trained
    on eval-mode embeddings would otherwise meet batch statistics of a new domain at the first
    step (at chance on 43 sign classes) and the fine-tune would start by relearning it. From
    scratch (`--weights none`) there are no statistics worth keeping."""
    return mode == "frozen" or (mode == "auto" and weights != "none")


def freeze_batchnorm(model: nn.Module) -> None:
    """Every BatchNorm in eval mode: it normalises with its running statistics and leaves them be."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()

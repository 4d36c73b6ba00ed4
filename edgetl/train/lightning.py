"""edgetl's backbone + head and fine-tuning recipe as a Lightning `LightningModule`, for users
whose training already runs under a Lightning `Trainer`.

The same parts as `edgetl finetune`: discriminative learning rates per stage (`lr_decay`), the
one-cycle (or cosine) schedule stepped per batch, label smoothing, BatchNorm statistics kept
frozen (`bn`: of every stage when the weights are pretrained, of frozen stages always), domain
augmentation (no horizontal flips), and an EMA of the weights (over `ema` epochs), which is what
validation scores. Pick the best epoch with `ModelCheckpoint(monitor="val_loss")`.
What the Trainer saves is a `--weights` for `edgetl finetune` (the EMA weights, and the head
when the classes match), so a Lightning-trained model goes on to export, quantize and compile.

Batches are `(images, labels)`: uint8 NCHW RGB images are normalised (and augmented while
training) here; float images are taken as already normalised with `module.spec`.

Needs `lightning` (or `pytorch-lightning`): `pip install edgetl[lightning]`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from edgetl.errors import ConfigError

try:
    import lightning.pytorch as pl
except ImportError:  # the older package name
    try:
        import pytorch_lightning as pl
    except ImportError:
        raise ConfigError("edgetl.train.lightning needs Lightning",
                          "pip install 'edgetl[lightning]' (or lightning / pytorch-lightning)") from None

from edgetl.runtime.preprocess import PreprocessSpec
from edgetl.train import freeze, recipe
from edgetl.train.backbones import get_spec, make_head
from edgetl.train.features import to_input
from edgetl.train.finetune import DEFAULT_BACKBONE, augmenter, quicken_batchnorm
from edgetl.train.weights import load_backbone, resolve


class FinetuneModule(pl.LightningModule):
    """A registered backbone with a linear head over `classes`, trained with edgetl's recipe."""

    def __init__(self, classes: Sequence[str], backbone: str = DEFAULT_BACKBONE, weights: str | None = "imagenet",
                 img_size: int | None = None, freeze_policy: str = "none", lr: float = 1e-3, lr_decay: float = 1.0,
                 schedule: str = "one-cycle", weight_decay: float = 0.05, label_smoothing: float = 0.1,
                 ema: float = 1.0, bn: str = "auto", augment: bool = True):
        super().__init__()
        if schedule not in recipe.SCHEDULES:
            raise ConfigError(f"unknown schedule {schedule!r}", f"available: {', '.join(recipe.SCHEDULES)}")
        self.save_hyperparameters()  # plain values only: the checkpoint stays loadable with weights_only=True
        self.hparams.classes = [str(c) for c in classes]  # numpy strings would not load with weights_only
        spec = get_spec(backbone)
        size = img_size or spec.default_img_size
        self.spec = PreprocessSpec(size=(size, size), mean=spec.mean, std=spec.std, channel_order=spec.channel_order,
                                   interpolation=spec.interpolation)
        self.backbone = load_backbone(spec, size, resolve(spec, weights))
        self.trainable = freeze.apply(self.backbone, freeze_policy)
        if bn not in freeze.BN_MODES:
            raise ConfigError(f"unknown bn {bn!r}", f"available: {', '.join(freeze.BN_MODES)}")
        self._frozen_bn = freeze.bn_frozen(bn, weights)
        if not self._frozen_bn:
            quicken_batchnorm(self.backbone)
        self.head = make_head(self.backbone.embedding_dim, len(classes))
        self.ema = recipe.Ema(torch.nn.Sequential(self.backbone, self.head), 0.0) if ema > 0 else None
        self._augment = augmenter(size) if augment else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits; outside training, of the EMA weights (what validation scored and the checkpoint keeps)."""
        return self._judged()(self._normalised(images))

    def _judged(self) -> torch.nn.Module:
        if self.ema is not None and not self.training:
            return self.ema.module
        return torch.nn.Sequential(self.backbone, self.head)

    def on_fit_start(self) -> None:
        if self.ema is not None:  # `ema` is in epochs: the decay follows from the Trainer's batches per epoch
            total, epochs = self.trainer.estimated_stepping_batches, self.trainer.max_epochs or -1
            steps = max(1, int(total) // epochs) if epochs > 0 and math.isfinite(total) else 100
            self.ema.decay = recipe.ema_decay(self.hparams.ema, steps)

    def on_train_batch_start(self, batch, batch_idx) -> None:
        """Frozen stages in eval mode, their BatchNorm statistics frozen (the Trainer sets every
        module training, and restores modes of its own around validation)."""
        freeze.set_train_mode(self.backbone, self.hparams.freeze_policy, frozen_bn=self._frozen_bn)
        if self.ema is not None:
            self.ema.eval()

    def _normalised(self, images: torch.Tensor, augment: bool = False) -> torch.Tensor:
        if images.dtype != torch.uint8:
            return images
        if augment and self._augment is not None:
            images = torch.stack([self._augment(img) for img in images])
        return to_input(images, self.spec)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        logits = self.head(self.backbone(self._normalised(images, augment=True)))
        loss = F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.ema is not None and (batch_idx + 1) % self.trainer.accumulate_grad_batches == 0:  # per optimizer step
            self.ema.update_parameters(torch.nn.Sequential(self.backbone, self.head))

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        judged = self.ema.module if self.ema is not None else torch.nn.Sequential(self.backbone, self.head)
        logits = judged(self._normalised(images))
        # the training's own loss, as `edgetl finetune` judges epochs; averaged over ranks under DDP
        self.log("val_loss", F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing),
                 prog_bar=True, sync_dist=True)
        self.log("val_top1", 100.0 * (logits.argmax(1) == labels).float().mean(), prog_bar=True,
                 sync_dist=True)  # percent

    def configure_optimizers(self):
        h = self.hparams
        opt = torch.optim.AdamW(recipe.param_groups(self.backbone, self.head, self.trainable, h.lr, h.lr_decay),
                                weight_decay=h.weight_decay)
        steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(steps):
            raise ConfigError("the schedule needs a known length", "give the Trainer max_epochs or max_steps")
        steps = int(steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": recipe.schedule(opt, h.schedule, steps),
                                                   "interval": "step"}}

"""What one fine-tune (or pretrain) run needs, as one frozen dataclass: the API takes it and the
CLI's flags are derived from its fields (name, type, default and help), so the three never drift.
No torch here: `edgetl --help` and the parser build without it."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path


def _opt(default, help: str, **cli):
    """A field with its CLI help; `cli` may name the flag (`flag="--no-augment"` for a bool that
    defaults to True) or make it required."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything one fine-tune (or pretrain) run needs; the CLI builds exactly this."""

    data: Path = field(metadata={"help": "ImageFolder dir: DATA/<class>/*.png|jpg|ppm|bmp", "required": True})
    out: Path = field(metadata={"help": "run dir to write, e.g. runs/city-b", "required": True})
    backbone: str | None = _opt(None, "registered backbone (see `edgetl backbones`); default: the --weights "
                                "run's, else efficientnet_lite0")
    weights: str | None = _opt(None, "imagenet (default) | none | torchvision weights name | state_dict path | "
                               "Lightning .ckpt | run dir")
    val: Path | None = _opt(None, "val ImageFolder dir (default: a seeded split of --data)")
    test: Path | None = _opt(None, "test ImageFolder dir; its top-1 goes into the run record")
    freeze: str = _opt("none", "all (head only) | none (default) | until:STAGE")
    epochs: int = _opt(20, "epochs with unfrozen stages (default 20; early stopping may end sooner)")
    head_epochs: int = _opt(60, "head-only epochs on cached embeddings (default 60)")
    img_size: int | None = _opt(None, "model input size in px (default: the weights run's, else the backbone's: "
                                "128 for efficientnet_lite0, see `edgetl backbones`)")
    resize: str = _opt("stretch", "stretch (whole crop, default) | crop (centre crop)")
    batch_size: int = _opt(32, "images per step (default 32)")
    lr: float = _opt(1e-3, "peak learning rate of the head and the stage next to it (default 1e-3); the head-only "
                     "phase uses 3 x lr. `edgetl lr-find` suggests one")
    lr_decay: float = _opt(1.0, "discriminative learning rates: the input stage learns at lr x this, the stages "
                           "between on a geometric spread (default 1: one lr for all, measured best on small "
                           "sign crops; 0.1-0.01 for data close to ImageNet photos)")
    schedule: str = _opt("one-cycle", "one-cycle (default: warm up a quarter, then anneal) | cosine")
    backbone_lr_scale: float = _opt(1.0, "every unfrozen stage's lr x this, on top of --lr-decay (default 1.0)")
    weight_decay: float = _opt(0.05, "AdamW (decoupled) weight decay (default 0.05)")
    label_smoothing: float = _opt(0.1, "label smoothing of the training loss (default 0.1; 0 = off)")
    ema: float = _opt(1.0, "the weights scored and kept are their moving average over about this many epochs "
                      "(default 1; 0 = off)")
    bn: str = _opt("auto", "BatchNorm statistics while fine-tuning: frozen (pretrained statistics; scale and shift "
                   "still train) | train (follow the batches) | auto (default: frozen for pretrained weights, "
                   "train with --weights none)")
    select: str = _opt("loss", "what picks the best epoch and stops early: loss (val cross-entropy, "
                               "label-smoothed as trained; default) | top1")
    patience: int = _opt(4, "early stopping: epochs without val gain, counted once the lr has peaked (default 4)")
    val_fraction: float = _opt(0.2, "share of --data held out for val when no --val is given (default 0.2)")
    seed: int = _opt(0, "seed of the split, the augmentation and the initialisation (default 0)")
    strict: bool = _opt(False, "refuse unreadable images instead of skipping them")
    augment: bool = _opt(True, "train without augmentation", flag="--no-augment")
    force: bool = _opt(False, "replace an existing run dir")
    stage: str = field(default="finetune", metadata={"cli": False})  # set by the command: finetune | pretrain

    @classmethod
    def add_flags(cls, parser: argparse.ArgumentParser) -> None:
        """One flag per field: `--img-size` for `img_size`, typed by the field's annotation."""
        for f in dataclasses.fields(cls):
            meta = f.metadata
            if meta.get("cli") is False:
                continue
            flag = meta.get("flag", "--" + f.name.replace("_", "-"))
            kind = f.type.split(" | ")[0] if isinstance(f.type, str) else f.type
            if kind == "bool":
                parser.add_argument(flag, dest=f.name, action="store_false" if f.default else "store_true",
                                    help=meta["help"])
                continue
            types = {"Path": Path, "int": int, "float": float, "str": str}
            parser.add_argument(flag, dest=f.name, type=types[kind], required=meta.get("required", False),
                                default=None if f.default is dataclasses.MISSING else f.default, help=meta["help"])

    @classmethod
    def from_args(cls, args: argparse.Namespace, **given) -> FinetuneConfig:
        """The config the flags of `add_flags` parsed into (plus `given`, e.g. the stage)."""
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
                      if f.metadata.get("cli") is not False}, **given)

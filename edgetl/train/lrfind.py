"""`edgetl lr-find`: fastai's learning-rate finder, for the unfrozen phase of a fine-tune.

The head is trained first on cached embeddings, as a fine-tune does; then the lr climbs
geometrically from `start` to `end` over `steps` mini-batches of the unfrozen model (every stage
at its discriminative share of it), and the smoothed training loss is recorded at each. The
suggestion is fastai's "valley": halfway down the longest stretch of falling loss, where
the loss still falls fast and is far from diverging. It is a value for `--lr`.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgetl import tomlfiles
from edgetl.config import parse
from edgetl.console import QUIET, Console
from edgetl.errors import ConfigError
from edgetl.rundir import RunDir
from edgetl.train import distributed, freeze, recipe
from edgetl.train.config import FinetuneConfig
from edgetl.train.features import nchw, to_input
from edgetl.train.finetune import augmenter, balanced_order, check, embed_splits, prepare, quicken_batchnorm, train_head

DIVERGED = 4.0  # the sweep stops once the smoothed loss is this many times its minimum
SMOOTHING = 0.98  # fastai's: an EMA of the loss, debiased
PLOT_MARK = b"edgetl lr-find"  # in the PNG's Software text chunk: a plot edgetl may replace


@dataclass(frozen=True)
class Sweep:
    """The learning rates tried, the smoothed loss at each, and the suggested `--lr`."""

    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    suggestion: float
    steepest: float  # the lr where the smoothed loss fell fastest
    minimum: float  # the lr of the lowest smoothed loss (too high to train at: a tenth of it is the old rule)
    stopped_early: bool  # the loss diverged before `end`

    def table(self, rows: int = 12) -> list[tuple[float, float]]:
        """About `rows` (lr, loss) pairs, evenly spaced in log lr, for printing."""
        picks = np.unique(np.linspace(0, len(self.lrs) - 1, min(rows, len(self.lrs))).round().astype(int))
        return [(self.lrs[i], self.losses[i]) for i in picks]


def valley(losses: Sequence[float]) -> int:
    """Index of fastai's "valley" suggestion: halfway along the longest decreasing subsequence of
    the loss curve (past its flat start, well before its divergence)."""
    n = len(losses)
    run = [1] * n
    best_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
        if run[i] > run[best_end]:
            best_end = i
    start = best_end - run[best_end]  # fastai's arithmetic, kept exactly
    third = (best_end - start) / 3
    return max(0, min(n - 1, start + int(third) + int(third / 2)))


def sweep(config: FinetuneConfig, *, steps: int = 200, start: float = 1e-5, end: float = 1.0,
          console: Console = QUIET) -> Sweep:
    """Run the finder on the data, backbone and recipe of `config` (its lr is ignored)."""
    check(config)
    if steps < 10:
        raise ConfigError(f"--steps must be >= 10, not {steps}", "e.g. --steps 200")
    if not (0 < start < end < math.inf):
        raise ConfigError(f"the sweep must climb: --start {start:g} --end {end:g}", "e.g. --start 1e-6 --end 1")
    if config.freeze == "all":
        raise ConfigError("--freeze all leaves nothing to unfreeze: lr-find sweeps the unfrozen phase",
                          "use --freeze none or until:STAGE")
    p = prepare(config, console)
    embed_splits(p, distributed.SINGLE, console)
    train_head(p.head, p.train, p.val, config, console)

    frozen_bn = freeze.bn_frozen(config.bn, config.weights)
    if not frozen_bn:
        quicken_batchnorm(p.backbone)
    model = torch.nn.Sequential(p.backbone, p.head)
    groups = recipe.param_groups(p.backbone, p.head, p.trainable, 1.0, config.lr_decay, config.backbone_lr_scale)
    shares = [g["lr"] for g in groups]  # each group's lr relative to the head's
    opt = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    augment = augmenter(p.spec.size[0]) if config.augment else None
    images, labels = nchw(p.train.loaded.images), torch.from_numpy(p.train.loaded.labels)
    rng = np.random.default_rng(config.seed + 1)
    torch.manual_seed(config.seed + 1)
    batch = max(2, min(config.batch_size, len(labels)))
    lrs, losses, smooth, lowest, stopped = [], [], 0.0, math.inf, False
    order = np.empty(0, dtype=np.int64)
    with console.task("lr sweep", steps) as advance:
        for step in range(steps):
            lr = start * (end / start) ** (step / (steps - 1))
            for g, share in zip(opt.param_groups, shares, strict=True):
                g["lr"] = lr * share
            while len(order) < batch:
                order = np.concatenate([order, balanced_order(p.train.loaded.labels, rng)])
            idx, order = torch.from_numpy(order[:batch]), order[batch:]
            freeze.set_train_mode(p.backbone, config.freeze, frozen_bn=frozen_bn)
            x = images[idx]
            if augment is not None:
                x = torch.stack([augment(img) for img in x])
            loss = F.cross_entropy(model(to_input(x, p.spec)), labels[idx], label_smoothing=config.label_smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
            advance(1)
            value = loss.item()
            if not math.isfinite(value):
                stopped = True
                break
            smooth = SMOOTHING * smooth + (1 - SMOOTHING) * value
            debiased = smooth / (1 - SMOOTHING ** (step + 1))
            lrs.append(lr)
            losses.append(debiased)
            lowest = min(lowest, debiased)
            if step > 10 and debiased > DIVERGED * lowest:
                stopped = True
                break
    if len(lrs) < 5:
        raise ConfigError(f"the loss diverged within {len(lrs)} steps of lr {start:g}", "try a lower --start")
    # as fastai: the suggestions skip the first tenth (the smoothing's start) and the last 5 points
    skip = len(lrs) // 10
    kept = slice(skip, len(lrs) - 5) if len(lrs) - 5 - skip >= 5 else slice(0, len(lrs))
    lr_kept, loss_kept = np.asarray(lrs[kept]), np.asarray(losses[kept])
    slope = np.gradient(loss_kept, np.log(lr_kept))
    return Sweep(lrs=tuple(lrs), losses=tuple(losses), suggestion=float(lr_kept[valley(list(loss_kept))]),
                 steepest=float(lr_kept[int(np.argmin(slope))]), minimum=float(lr_kept[int(np.argmin(loss_kept))]),
                 stopped_early=stopped)


def plot(result: Sweep, title: str) -> bytes:
    """The loss curve on a log lr axis with the suggestion marked, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot()
    ax.plot(result.lrs, result.losses, color="tab:blue")
    ax.set_xscale("log")
    ax.axvline(result.suggestion, color="tab:red", linestyle="--", label=f"suggested --lr {result.suggestion:.1e}")
    ax.set_xlabel("learning rate (head; stages below at their --lr-decay share)")
    ax.set_ylabel("training loss (smoothed)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", metadata={"Software": PLOT_MARK.decode()})
    return out.getvalue()


def is_plot(path: Path) -> bool:
    """A PNG this command wrote, which it may replace."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head.startswith(b"\x89PNG") and PLOT_MARK in head


def config_from(source: Path, **overrides) -> FinetuneConfig:
    """The fine-tune config an lr-find is for: a run dir's recorded one, or a TOML file of
    FinetuneConfig's keys (paths relative to the file), with `overrides` on top."""
    source = Path(source)
    if source.is_dir():
        run = RunDir(source)
        if not run.is_run():
            raise ConfigError(f"{source} is a directory but not an edgetl run",
                              "pass a run dir written by `edgetl finetune`, or a TOML file of finetune keys")
        record = run.validate()
        known = {f.name for f in dataclasses.fields(FinetuneConfig)} - {"data", "val", "test", "out", "force"}
        fields = {k: v for k, v in record.config.items() if k in known}
        data = record.data  # absolute paths, as the run resolved them; its config has them as typed
        fields |= {"backbone": record.backbone, "img_size": record.img_size, "data": Path(data.train_dir),
                   "val": Path(data.val_dir) if data.val_dir else None,
                   "test": Path(data.test_dir) if data.test_dir else None, "out": source}
        try:
            return FinetuneConfig(**(fields | overrides))
        except TypeError as exc:
            raise ConfigError(f"{run.record_file}: its config cannot be read back ({exc})",
                              "pass a TOML file of finetune keys instead") from None
    if source.suffix != ".toml":
        raise ConfigError(f"{source} is neither a run dir nor a .toml file",
                          "pass a run dir written by `edgetl finetune`, or a TOML file of finetune keys")
    raw = tomlfiles.read(source, "the finetune flags, e.g. data = \"data/city-b\"")
    if "finetune" in raw:
        if not isinstance(raw["finetune"], dict) or len(raw) > 1:
            raise ConfigError(f"{source}: give the finetune keys at the top level or in one [finetune] table",
                              'e.g. data = "data/city-b"')
        raw = raw["finetune"]
    given = {"out": "lr-find"} if "out" not in raw else {}
    config = parse(FinetuneConfig, {k.replace("-", "_"): v for k, v in raw.items()}, source, given=given)
    rebased = {}
    for key in ("data", "val", "test"):
        value = getattr(config, key)
        if value is not None and not Path(value).is_absolute():
            rebased[key] = source.parent / value
    if config.weights and not Path(config.weights).is_absolute() and (source.parent / config.weights).exists():
        rebased["weights"] = str(source.parent / config.weights)
    return dataclasses.replace(config, **rebased, **overrides)

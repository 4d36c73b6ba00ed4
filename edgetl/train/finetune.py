"""Fine-tuning (and server-side pretraining): one loop, written into a run directory.

fastai's recipe in two phases. First the head alone on the frozen backbone, over embeddings
computed once (milliseconds an epoch), at 3 x lr. Then, unless `--freeze all`, the unfrozen
stages and the head together: discriminative learning rates (the input stage at lr x
lr_decay), a one-cycle schedule, label smoothing, augmentation, class-balanced sampling, and
an EMA of the weights, which is what is scored and kept. The best epoch is judged on val loss,
the head-only model counting as epoch 0; early stopping waits until the lr has peaked.
"""

from __future__ import annotations

import copy
import errno
import math
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import edgetl
from edgetl import fsutil
from edgetl.console import QUIET, Console
from edgetl.data.imagefolder import LoadedImages, load_images, scan
from edgetl.data.split import split_train_val
from edgetl.errors import ConfigError, DataError
from edgetl.rundir import FinetuneRecord, RunData, RunDir
from edgetl.runtime.preprocess import RESIZE_MODES, PreprocessSpec
from edgetl.train import distributed, freeze, recipe
from edgetl.train.backbones import Backbone, get_spec, make_head
from edgetl.train.config import FinetuneConfig  # noqa: F401 - the API's config, imported from here too
from edgetl.train.features import embed, nchw, to_input
from edgetl.train.weights import Weights, checkpoint_hints, is_run, load_backbone, resolve, run_backbone_name

DEFAULT_BACKBONE = "efficientnet_lite0"


def validate(config: FinetuneConfig) -> None:
    """Reject bad values and combinations up front, before any image is read, and claim the run dir."""
    check(config)
    inputs = [p for p in (config.data, config.val, config.test) if p is not None]
    if config.weights and Path(config.weights).exists():
        inputs.append(Path(config.weights))  # a weights run cannot be replaced while it is read
    fsutil.claim(config.out, fsutil.RUN, force=config.force, inputs=inputs)


def check(config: FinetuneConfig) -> None:
    """Bad values and combinations, as one-line errors (nothing is written)."""
    checks = [
        (config.epochs >= 0, f"--epochs must be >= 0, not {config.epochs}", "e.g. --epochs 10"),
        (config.head_epochs >= 1, f"--head-epochs must be >= 1, not {config.head_epochs}", "e.g. --head-epochs 60"),
        (config.img_size is None or 16 <= config.img_size <= 1024,
         f"--img-size must be between 16 and 1024, not {config.img_size}", "e.g. --img-size 96"),
        (config.batch_size >= 2, f"--batch-size must be >= 2, not {config.batch_size}", "e.g. --batch-size 32"),
        (0 < config.lr < math.inf, f"--lr must be a finite number > 0, not {config.lr}", "e.g. --lr 1e-3"),
        (0 < config.backbone_lr_scale < math.inf,
         f"--backbone-lr-scale must be a finite number > 0, not {config.backbone_lr_scale}",
         "e.g. 0.1 to move pretrained stages more gently"),
        (config.weights is None or bool(str(config.weights).strip()), "--weights is empty",
         "imagenet (default) | none | a torchvision weights name | a state_dict path | a run dir"),
        (config.seed >= 0, f"--seed must be >= 0, not {config.seed}", "e.g. --seed 0"),
        (0 < config.val_fraction < 1, f"--val-fraction must be between 0 and 1, not {config.val_fraction}", "e.g. 0.2"),
        (config.patience >= 1, f"--patience must be >= 1, not {config.patience}", "e.g. --patience 4"),
        (0 < config.lr_decay <= 1, f"--lr-decay must be in (0, 1], not {config.lr_decay}",
         "e.g. 0.1: the input stage learns at a tenth of the head's lr"),
        (config.schedule in recipe.SCHEDULES, f"unknown --schedule {config.schedule!r}",
         f"available: {', '.join(recipe.SCHEDULES)}"),
        (0 <= config.label_smoothing < 1, f"--label-smoothing must be in [0, 1), not {config.label_smoothing}",
         "e.g. 0.1"),
        (0 <= config.ema < math.inf, f"--ema must be a number of epochs >= 0, not {config.ema}",
         "e.g. 1, or 0 for no average"),
        (config.bn in freeze.BN_MODES, f"unknown --bn {config.bn!r}", f"available: {', '.join(freeze.BN_MODES)}"),
        (config.select in recipe.CRITERIA, f"unknown --select {config.select!r}",
         f"available: {', '.join(recipe.CRITERIA)}"),
        (config.resize in RESIZE_MODES, f"unknown --resize {config.resize!r}", f"available: {', '.join(RESIZE_MODES)}"),
        (config.stage in ("finetune", "pretrain"), f"unknown stage {config.stage!r}", "finetune or pretrain"),
    ]
    for ok, message, hint in checks:
        if not ok:
            raise ConfigError(message, hint)
    freeze.check_policy(config.freeze)
    if config.backbone is not None:
        get_spec(config.backbone)
    if config.weights and is_run(Path(config.weights)):
        trained = run_backbone_name(Path(config.weights))
        if config.backbone is not None and config.backbone != trained:
            raise ConfigError(f"--backbone {config.backbone} does not match the weights run ({trained})",
                              "leave out --backbone to use the run's")


@dataclass
class Split:
    name: str
    loaded: LoadedImages
    features: torch.Tensor | None = None


Result = FinetuneRecord  # what a run measured; written as finetune.json


def versions() -> dict:
    import torchvision

    return {"edgetl": edgetl.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": np.__version__, "python": platform.python_version(), "machine": platform.machine()}


def balanced_order(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An epoch of indices drawn with probability 1/count(class): every class seen equally often."""
    counts = np.bincount(labels)
    p = 1.0 / counts[labels]
    return rng.choice(len(labels), size=len(labels), replace=True, p=p / p.sum())


def augmenter(size: int):
    """What an edge camera varies: framing and distance, exposure (night, glare), motion blur.
    No horizontal flip: it turns a left arrow into a right one."""
    from torchvision.transforms import v2

    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.6, 1.0), ratio=(0.8, 1.25), antialias=True),
        v2.RandomAffine(degrees=10, translate=(0.05, 0.05), scale=(0.8, 1.05)),
        v2.ColorJitter(brightness=(0.3, 1.5), contrast=0.4, saturation=0.4, hue=0.03),
        # blur in proportion to the input: a sign upscaled from 32 px blurs over several pixels
        v2.RandomApply([v2.GaussianBlur(2 * (size // 16) + 1, sigma=(0.3, max(1.0, size / 40)))], p=0.3),
    ])


@torch.no_grad()
def score(backbone: Backbone, head: torch.nn.Linear, split: Split, spec: PreprocessSpec,
          world: distributed.World, batch_size: int = 128, label_smoothing: float = 0.0) -> recipe.Score:
    """Top-1 in percent and mean cross-entropy (with the training's label smoothing, when judging
    epochs); under DDP each rank scores its share and the sums are added."""
    backbone.eval()
    images, labels = split.loaded.images, split.loaded.labels
    correct, loss = 0, 0.0
    for start in range(world.rank * batch_size, len(images), batch_size * world.size):
        x = to_input(nchw(images[start : start + batch_size]), spec)
        y = torch.from_numpy(labels[start : start + batch_size])
        logits = head(backbone(x))
        correct += int((logits.argmax(1) == y).sum())
        loss += float(F.cross_entropy(logits, y, reduction="sum", label_smoothing=label_smoothing))
    n = max(1, len(images))
    return recipe.Score(100.0 * world.sum(correct) / n, world.sum(loss) / n)


def head_epoch(head: torch.nn.Linear, opt: torch.optim.Optimizer, features: torch.Tensor, labels: torch.Tensor,
               order: np.ndarray, batch_size: int, label_smoothing: float) -> None:
    """One epoch of the head over embeddings, in `order`."""
    order = torch.from_numpy(order)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        loss = F.cross_entropy(head(features[idx]), labels[idx], label_smoothing=label_smoothing)
        opt.zero_grad()
        loss.backward()
        opt.step()


def train_head(head: torch.nn.Linear, train: Split, val: Split, config: FinetuneConfig,
               console: Console) -> tuple[recipe.Score, int]:
    """Head-only epochs over cached embeddings; keeps the best on val. Returns (its val score, epochs run)."""
    rng = np.random.default_rng(config.seed)
    opt = torch.optim.AdamW(head.parameters(), lr=config.lr * 3, weight_decay=config.weight_decay)
    x, y = train.features, torch.from_numpy(train.loaded.labels)
    vx, vy = val.features, torch.from_numpy(val.loaded.labels)
    best, best_state, stale, epochs_run = None, None, 0, 0
    for _ in range(config.head_epochs):
        epochs_run += 1
        head_epoch(head, opt, x, y, balanced_order(train.loaded.labels, rng), config.batch_size,
                   config.label_smoothing)
        with torch.no_grad():
            logits = head(vx)
            result = recipe.Score(100.0 * float((logits.argmax(1) == vy).float().mean()),
                                  float(F.cross_entropy(logits, vy, label_smoothing=config.label_smoothing)))
        if result.better_than(best, config.select):
            best, best_state, stale = result, copy.deepcopy(head.state_dict()), 0
        else:
            stale += 1
            if stale >= config.patience * 5:  # head epochs are cheap; be patient
                break
    head.load_state_dict(best_state)
    console.log(f"head on frozen backbone: val top-1 {best.top1:.1f}%, loss {best.loss:.3f} "
                f"after {epochs_run} cached epochs")
    return best, epochs_run


BN_MOMENTUM = 0.1


def quicken_batchnorm(backbone: Backbone) -> None:
    """Trainable BatchNorms follow their batches at PyTorch's default momentum (0.1).

    torchvision's MobileNetV3 and EfficientNets ship 0.01, tuned for ImageNet's thousands of
    steps an epoch. On a few thousand images the running statistics then lag the weights for
    many epochs, and the eval-mode model scores at chance while its training loss falls."""
    for m in backbone.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.momentum is not None:
            m.momentum = max(m.momentum, BN_MOMENTUM)


def train_unfrozen(backbone: Backbone, head: torch.nn.Linear, train: Split, val: Split, spec: PreprocessSpec,
                   config: FinetuneConfig, world: distributed.World, console: Console,
                   head_only: recipe.Score) -> tuple[recipe.Score, int, list[dict]]:
    """Unfrozen stages + head, end to end. Returns (best val score, best epoch, history).

    Epoch 0 is the head-only model: if no epoch beats it on val, that is what is kept. With
    `--ema`, each epoch is judged (and kept) as the moving average of its weights."""
    frozen_bn = freeze.bn_frozen(config.bn, config.weights)
    if not frozen_bn:
        quicken_batchnorm(backbone)
    model = torch.nn.Sequential(backbone, head)
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world.distributed else model
    trainable = [s for s in backbone.stages() if any(p.requires_grad for p in backbone.stage(s).parameters())]
    opt = torch.optim.AdamW(recipe.param_groups(backbone, head, trainable, config.lr, config.lr_decay,
                                                config.backbone_lr_scale), weight_decay=config.weight_decay)
    per_rank_batch = max(1, config.batch_size // world.size)
    steps_per_epoch = math.ceil(len(train.loaded.labels) / (per_rank_batch * world.size))
    lr_schedule = recipe.schedule(opt, config.schedule, config.epochs * steps_per_epoch)
    average = recipe.Ema(model, recipe.ema_decay(config.ema, steps_per_epoch)) if config.ema > 0 else None
    judged = average.module if average is not None else model  # what each epoch is scored as
    rng = np.random.default_rng(config.seed + 1)  # same draws on every rank; each takes its share
    torch.manual_seed(config.seed + 1 + world.rank)  # augmentation differs per rank
    augment = augmenter(spec.size[0]) if config.augment else None
    images = nchw(train.loaded.images)
    labels = torch.from_numpy(train.loaded.labels)
    wait = recipe.warmup_epochs(config.schedule, config.epochs)

    # `best` picks what is kept (head-only counts, as epoch 0); `phase_best` drives early
    # stopping, so the first epochs after unfreezing may dip below the head-only model.
    best, best_epoch, phase_best, stale, history = head_only, 0, None, 0, []
    best_state = copy.deepcopy(model.state_dict())
    with console.task("fine-tuning", config.epochs * steps_per_epoch) as advance:
        for epoch in range(1, config.epochs + 1):
            freeze.set_train_mode(backbone, config.freeze, frozen_bn=frozen_bn)
            order = torch.from_numpy(balanced_order(train.loaded.labels, rng))
            losses = []
            for s in range(steps_per_epoch):
                chunk = order[s * per_rank_batch * world.size : (s + 1) * per_rank_batch * world.size]
                idx = chunk[world.rank :: world.size]
                if len(chunk) < 2 * world.size:  # two samples per rank for BatchNorm; every rank skips alike
                    lr_schedule.step()
                    advance(1)
                    continue
                batch = images[idx]
                if augment is not None:
                    batch = torch.stack([augment(img) for img in batch])
                loss = F.cross_entropy(ddp(to_input(batch, spec)), labels[idx], label_smoothing=config.label_smoothing)
                opt.zero_grad()
                loss.backward()
                opt.step()
                lr_schedule.step()
                if average is not None:
                    average.update_parameters(model)
                losses.append(loss.item())
                advance(1)
            result = score(judged[0], judged[1], val, spec, world, label_smoothing=config.label_smoothing)
            history.append({"epoch": epoch, "loss": round(float(np.mean(losses)) if losses else float("nan"), 4),
                            "val_top1": round(result.top1, 2), "val_loss": round(result.loss, 4)})
            console.log(f"epoch {epoch}/{config.epochs}: loss {history[-1]['loss']:.3f}  "
                        f"val top-1 {result.top1:.1f}%  val loss {result.loss:.3f}")
            if result.better_than(best, config.select):
                best, best_epoch, best_state = result, epoch, copy.deepcopy(judged.state_dict())
            if result.better_than(phase_best, config.select):
                phase_best, stale = result, 0
            elif epoch > wait:
                stale += 1
                if stale >= config.patience:
                    console.log(f"early stop: val {config.select} has not improved for {stale} epochs")
                    break
    model.load_state_dict(best_state)
    return best, best_epoch, history


def _load_split(name: str, samples, spec: PreprocessSpec, config: FinetuneConfig, console: Console) -> Split:
    with console.task(f"reading {name} images", len(samples)) as advance:
        loaded = load_images(samples, spec.size, spec.resize, interpolation=spec.interpolation, strict=config.strict,
                             progress=advance)
    if loaded.skipped:
        first = "; ".join(f"{p}: {why}" for p, why in loaded.skipped[:3])
        more = f" (+{len(loaded.skipped) - 3} more)" if len(loaded.skipped) > 3 else ""
        console.log(f"[yellow]skipped {len(loaded.skipped)} unreadable {name} image(s): {first}{more}[/]")
    if len(loaded.labels) == 0:
        raise DataError(f"no readable {name} images", "check the files, or run with --strict to see the first failure")
    return Split(name, loaded)


def _write_run(out: Path, backbone: Backbone, head: torch.nn.Linear, classes, spec: PreprocessSpec,
               result: Result, *, force: bool = False) -> None:
    """Write the run to a temp dir beside `out`, then rename: a run is complete or absent."""
    with fsutil.staged_dir(out, fsutil.RUN, force=force) as tmp:
        staged = RunDir(tmp)
        try:
            torch.save({"backbone": backbone.state_dict(), "head": head.state_dict()}, staged.checkpoint)
        except RuntimeError as exc:  # torch says "file write failed" where the OS said ENOSPC
            full = shutil.disk_usage(tmp).free < 64 << 20
            raise OSError(errno.ENOSPC if full else errno.EIO, "No space left on device" if full else
                          str(exc).splitlines()[0][:200], str(RunDir(out).checkpoint)) from None
        np.savez(staged.head, W=head.weight.detach().numpy().astype(np.float32),
                 b=head.bias.detach().numpy().astype(np.float32), version=np.int64(1))
        staged.write_files(tmp, labels=tuple(classes), spec=spec, record=result)


def finetune(config: FinetuneConfig, console: Console = QUIET) -> Result:
    """Run one fine-tune (or pretrain) and write the run dir. Joins torchrun's process group if any."""
    validate(config)
    world = distributed.join()
    if not world.is_main:
        console = QUIET
    try:
        return _finetune(config, world, console)
    finally:
        distributed.leave()


@dataclass
class Prepared:
    """Everything a run starts from: the backbone with its weights and freeze policy applied, a
    fresh (or warm-started) head, and the images of each split, read once."""

    name: str
    weights: Weights
    backbone: Backbone
    head: torch.nn.Linear
    trainable: list[str]
    classes: tuple[str, ...]
    spec: PreprocessSpec
    train: Split
    val: Split
    test: Split | None


def prepare(config: FinetuneConfig, console: Console = QUIET) -> Prepared:
    """Build the backbone and read the splits `config` names (`finetune` and `lr-find` start here)."""
    torch.manual_seed(config.seed)
    weights_run = Path(config.weights) if config.weights and is_run(Path(config.weights)) else None
    hinted_backbone, hinted_size = checkpoint_hints(Path(config.weights)) if config.weights else (None, None)
    name = config.backbone or (run_backbone_name(weights_run) if weights_run else hinted_backbone or DEFAULT_BACKBONE)
    spec_b = get_spec(name)
    name = spec_b.name  # canonical: an hf:DIR by its absolute path, so later stages find it from anywhere
    img_size = config.img_size or hinted_size
    if img_size is None and weights_run is not None:
        img_size = RunDir(weights_run).spec.size[0]
    img_size = img_size or spec_b.default_img_size
    weights: Weights = resolve(spec_b, config.weights)
    backbone = load_backbone(spec_b, img_size, weights)
    trainable = freeze.apply(backbone, config.freeze)

    folder = scan(config.data, what="training")
    if config.val is not None:
        val_folder = scan(config.val, folder.classes, what="val")
        train_samples, val_samples = list(folder.samples), list(val_folder.samples)
    else:
        train_samples, val_samples = split_train_val(folder, config.val_fraction, config.seed)
        if not val_samples:
            raise DataError(f"{config.data} has too few images for a val split (need 2+ in a class)",
                            "add images, or give a separate --val DIR")
    spec = PreprocessSpec(size=(img_size, img_size), mean=spec_b.mean, std=spec_b.std, resize=config.resize,
                          interpolation=spec_b.interpolation, channel_order=spec_b.channel_order)
    train = _load_split("train", train_samples, spec, config, console)
    val = _load_split("val", val_samples, spec, config, console)
    missing = sorted(set(range(len(folder.classes))) - set(train.loaded.labels.tolist()))
    if missing:
        names = ", ".join(folder.classes[i] for i in missing)
        raise DataError(f"no readable training images left for class(es) {names}",
                        "add images for them, or remove the class folders")
    test = None
    if config.test is not None:
        test_folder = scan(config.test, folder.classes, what="test")
        test = _load_split("test", list(test_folder.samples), spec, config, console)
    if recipe.resolution(len(val.loaded.labels)) > 1.0:
        console.log(f"[yellow]val has {len(val.loaded.labels)} images: one image is "
                    f"{recipe.resolution(len(val.loaded.labels)):.1f} points of top-1, too few to resolve one point; "
                    f"epochs are judged by val {'loss' if config.select == 'loss' else 'top-1'}. "
                    "Give --val DIR with 100+ images for sharper choices[/]")
    console.log(f"{name} ({weights.source}), {img_size}px, {len(folder.classes)} classes, "
                f"{len(train.loaded.labels)} train / {len(val.loaded.labels)} val images, "
                f"trainable stages: {len(trainable)}/{len(backbone.stages())}")

    head = make_head(backbone.embedding_dim, len(folder.classes))
    if weights.head is not None and weights.classes == folder.classes:
        head.load_state_dict(weights.head)  # same classes as the source run: warm start
        console.log("head warm-started from the weights run (same classes)")
    return Prepared(name, weights, backbone, head, trainable, tuple(folder.classes), spec, train, val, test)


def embed_splits(p: Prepared, world: distributed.World, console: Console) -> None:
    """The frozen backbone's embeddings of train and val, once, for the head-only epochs."""
    with console.task("embedding (frozen backbone)", len(p.train.loaded.labels) + len(p.val.loaded.labels)) as advance:
        p.train.features = embed(p.backbone, p.train.loaded.images, p.spec, world=world, progress=advance)
        p.val.features = embed(p.backbone, p.val.loaded.images, p.spec, world=world, progress=advance)


def _finetune(config: FinetuneConfig, world: distributed.World, console: Console) -> Result:
    started = time.perf_counter()
    p = prepare(config, console)
    name, weights, backbone, head, trainable, spec = p.name, p.weights, p.backbone, p.head, p.trainable, p.spec
    train, val, test = p.train, p.val, p.test

    # phase 1: head on the frozen backbone, over embeddings computed once
    t0 = time.perf_counter()
    embed_splits(p, world, console)
    t1 = time.perf_counter()
    kept, head_epochs = train_head(head, train, val, config, console)
    t2 = time.perf_counter()
    best_epoch, history = 0, []

    # phase 2: unfrozen stages and head together
    if trainable and config.epochs > 0:
        kept, best_epoch, history = train_unfrozen(backbone, head, train, val, spec, config, world, console, kept)
    t3 = time.perf_counter()

    test_top1 = score(backbone, head, test, spec, world).top1 if test is not None else None
    result = Result(
        stage=config.stage, backbone=name, weights=weights.source, classes=len(p.classes), img_size=spec.size[0],
        freeze=config.freeze, trainable_stages=list(trainable), seed=config.seed,
        val_top1=round(kept.top1, 2), val_loss=round(kept.loss, 4),
        test_top1=None if test_top1 is None else round(test_top1, 2),
        epochs=len(history), head_epochs=head_epochs, best_epoch=best_epoch,
        seconds=round(time.perf_counter() - started, 2), seconds_embed=round(t1 - t0, 3),
        seconds_head=round(t2 - t1, 3), seconds_finetune=round(t3 - t2, 2), world_size=world.size,
        data=RunData(train_dir=str(Path(config.data).resolve()),  # absolute: later stages read them from anywhere
                     val_dir=str(Path(config.val).resolve()) if config.val else None,
                     test_dir=str(Path(config.test).resolve()) if config.test else None,
                     train=len(train.loaded.labels), val=len(val.loaded.labels),
                     test=len(test.loaded.labels) if test else None,
                     skipped=tuple((str(p), why) for s in (train, val, test) if s for p, why in s.loaded.skipped)),
        versions=versions(),
        config={k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        history=tuple(history),
    )
    if world.is_main:
        _write_run(Path(config.out), backbone, head, p.classes, spec, result, force=config.force)
    world.barrier()
    return result

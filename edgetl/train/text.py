"""Text fine-tuning: a BERT-family encoder, mean-pooled, and a linear head, written into a run dir like images'.

The recipe of the image loop, for transformers. First the head alone on the frozen encoder's
embeddings, computed once. Then (unless `--freeze all`) the encoder and head together: AdamW at
a transformer's learning rate (the head at 20x it, since it already fits), linear warm-up over
the first tenth and linear decay, class-balanced order, label smoothing. The best epoch is
judged on val loss, the head-only model counting as epoch 0. Every sentence is tokenized at
the run's fixed `max_len`, as the exported model and the device will see it; `max_len`
defaults to the length that holds 99% of the training sentences whole.
"""

from __future__ import annotations

import copy
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import edgetl
from edgetl import fsutil
from edgetl.console import QUIET, Console
from edgetl.data import text as textdata
from edgetl.errors import ConfigError, DataError, RunError
from edgetl.rundir import FinetuneRecord, RunData, RunDir
from edgetl.runtime.tokens import MAX_LEN, TOKENIZER, TextSpec, Tokenizer
from edgetl.train import recipe, text_backbone
from edgetl.train.backbones import make_head
from edgetl.train.finetune import balanced_order, head_epoch

COVERAGE = 0.99  # share of training sentences a default max_len keeps whole


@dataclass(frozen=True)
class TextFinetuneConfig:
    """Everything one text fine-tune needs; `edgetl finetune --data TEXTS.csv` builds exactly this."""

    data: Path
    out: Path
    backbone: str = text_backbone.MINILM
    val: Path | None = None
    test: Path | None = None
    text_column: str | None = None
    label_column: str | None = None
    max_len: int | None = None  # None: the length that holds COVERAGE of the training sentences whole
    freeze: str = "none"  # all (head only) | none
    epochs: int | None = None  # None: STEPS optimizer steps' worth, 3 to 10 epochs (see `epochs_for`)
    head_epochs: int = 200
    batch_size: int = 32
    lr: float = 5e-5  # the encoder's; the head learns at HEAD_LR_FACTOR x it, head-only at 1e-2
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    patience: int = 3
    val_fraction: float = 0.2
    seed: int = 0
    force: bool = False
    stage: str = field(default="finetune")


STEPS = 1500  # what a default run trains for: a few epochs of a big set, ten of a few-shot one
MIN_EPOCHS, MAX_EPOCHS = 3, 10


def epochs_for(examples: int, batch_size: int) -> int:
    """Default epochs: about STEPS steps, at least MIN_EPOCHS passes over a big set and at most MAX_EPOCHS
    over a small one (fine-tuning BERT-family encoders: 2-4 epochs of thousands; more for few-shot)."""
    steps = math.ceil(examples / batch_size)
    return int(min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(STEPS / max(1, steps)))))


HEAD_LR_FACTOR = 20
HEAD_ONLY_LR = 1e-2
FREEZE = ("none", "all")


def check(config: TextFinetuneConfig) -> None:
    checks = [
        (config.epochs is None or config.epochs >= 0, f"--epochs must be >= 0, not {config.epochs}",
         "e.g. --epochs 4"),
        (config.head_epochs >= 1, f"--head-epochs must be >= 1, not {config.head_epochs}", "e.g. --head-epochs 200"),
        (config.batch_size >= 2, f"--batch-size must be >= 2, not {config.batch_size}", "e.g. --batch-size 32"),
        (0 < config.lr < math.inf, f"--lr must be a finite number > 0, not {config.lr}", "e.g. --lr 5e-5"),
        (config.max_len is None or 4 <= config.max_len <= MAX_LEN,
         f"--max-len must be between 4 and {MAX_LEN} tokens, not {config.max_len}", "e.g. --max-len 64"),
        (config.freeze in FREEZE, f"--freeze {config.freeze!r}: a text run freezes all (head only) or none",
         "--freeze none (default) | all"),
        (0 < config.val_fraction < 1, f"--val-fraction must be between 0 and 1, not {config.val_fraction}",
         "e.g. --val-fraction 0.2"),
        (config.patience >= 1, f"--patience must be >= 1, not {config.patience}", "e.g. --patience 3"),
        (0 <= config.label_smoothing < 1, f"--label-smoothing must be in [0, 1), not {config.label_smoothing}",
         "e.g. --label-smoothing 0.1"),
    ]
    for ok, message, hint in checks:
        if not ok:
            raise ConfigError(message, hint)


def versions() -> dict:
    import tokenizers

    text_backbone._quiet()
    import transformers

    return {"edgetl": edgetl.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "numpy": np.__version__, "python": platform.python_version(),
            "machine": platform.machine()}


def choose_max_len(tokenizer: Tokenizer, texts, limit: int) -> int:
    """The shortest multiple of 8 that keeps COVERAGE of `texts` whole (at most `limit`)."""
    lengths = tokenizer.lengths(list(texts))
    need = int(np.ceil(np.quantile(lengths, COVERAGE)))
    return int(min(limit, max(8, 8 * math.ceil(need / 8))))


@torch.no_grad()
def embed(encoder: text_backbone.Encoder, ids: np.ndarray, batch_size: int = 128, progress=None) -> torch.Tensor:
    encoder.eval()
    out = []
    for start in range(0, len(ids), batch_size):
        out.append(encoder(_trimmed(ids[start : start + batch_size], encoder.pad_id)))
        if progress:
            progress(len(out[-1]))
    return torch.cat(out) if out else torch.zeros((0, encoder.embedding_dim))


def _trimmed(ids: np.ndarray, pad: int) -> torch.Tensor:
    """A batch without the padding columns every row has: the same embedding (the mask drops them), less work."""
    used = np.flatnonzero((ids != pad).any(0))
    width = int(used[-1]) + 1 if len(used) else 1
    return torch.from_numpy(np.ascontiguousarray(ids[:, :width]))


@torch.no_grad()
def score(encoder, head, ids: np.ndarray, labels: np.ndarray, label_smoothing: float = 0.0) -> recipe.Score:
    logits = head(embed(encoder, ids))
    y = torch.from_numpy(labels)
    return recipe.Score(100.0 * float((logits.argmax(1) == y).float().mean()),
                        float(F.cross_entropy(logits, y, label_smoothing=label_smoothing)))


def _write_run(out: Path, encoder, head, classes, spec: TextSpec, tokenizer_file: Path, config_dict: dict,
               result: FinetuneRecord, force: bool) -> None:
    with fsutil.staged_dir(out, fsutil.RUN, force=force) as tmp:
        staged = RunDir(tmp)
        torch.save({"backbone": encoder.state_dict(), "head": head.state_dict()}, staged.checkpoint)
        np.savez(staged.head, W=head.weight.detach().numpy().astype(np.float32),
                 b=head.bias.detach().numpy().astype(np.float32), version=np.int64(1))
        (tmp / TOKENIZER).write_bytes(tokenizer_file.read_bytes())
        text_backbone.write_config(config_dict, tmp / text_backbone.CONFIG)
        staged.write_files(tmp, labels=tuple(classes), spec=spec, record=result)


@dataclass
class Split:
    name: str
    data: textdata.TextSet
    ids: np.ndarray
    features: torch.Tensor | None = None

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self.data.labels, np.int64)


def finetune_text(config: TextFinetuneConfig, console: Console = QUIET) -> FinetuneRecord:
    """Fine-tune one text run and write its dir (complete or absent)."""
    check(config)
    inputs = [p for p in (config.data, config.val, config.test) if p is not None]
    fsutil.claim(config.out, fsutil.RUN, force=config.force, inputs=inputs)
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    name = text_backbone.canonical(config.backbone)
    data = textdata.read(config.data, text_column=config.text_column, label_column=config.label_column,
                         column_flags=True)
    if config.val is not None:
        train_set = data
        val_set = textdata.read(config.val, data.classes, what="val", text_column=config.text_column,
                                label_column=config.label_column, column_flags=True)
    else:
        train_set, val_set = textdata.split_train_val(data, config.val_fraction, config.seed)
        if not len(val_set):
            raise DataError(f"{config.data} has too few examples for a val split (need 2+ in a class)",
                            "add examples, or give a separate --val FILE")
    test_set = (textdata.read(config.test, data.classes, what="test", text_column=config.text_column,
                              label_column=config.label_column, column_flags=True)
                if config.test is not None else None)
    missing = sorted(set(range(len(data.classes))) - set(train_set.labels))
    if missing:
        raise DataError(f"no training examples left for class(es) {', '.join(data.classes[i] for i in missing)}",
                        "add examples for them, or give a separate --val FILE")

    encoder, tokenizer_file, encoder_config = text_backbone.load(name)
    limit = min(MAX_LEN, int(getattr(encoder.encoder.config, "max_position_embeddings", MAX_LEN)))
    probe = Tokenizer(tokenizer_file, TextSpec(kind="text", tokenizer=TOKENIZER, max_len=limit, pad_id=encoder.pad_id))
    max_len = config.max_len or choose_max_len(probe, train_set.texts, limit)
    if max_len > limit:
        raise ConfigError(f"--max-len {max_len} is longer than {name}'s {limit} positions",
                          f"--max-len {limit} or less")
    spec = TextSpec(kind="text", tokenizer=TOKENIZER, max_len=max_len, pad_id=encoder.pad_id)
    tokenizer = Tokenizer(tokenizer_file, spec)
    lengths = probe.lengths(list(train_set.texts))
    cut = float(np.mean(lengths > max_len) * 100)
    train = Split("train", train_set, tokenizer.ids(list(train_set.texts)))
    val = Split("val", val_set, tokenizer.ids(list(val_set.texts)))
    test = Split("test", test_set, tokenizer.ids(list(test_set.texts))) if test_set is not None else None
    if recipe.resolution(len(val_set)) > 1.0:
        console.log(f"[yellow]val has {len(val_set)} examples: one is {recipe.resolution(len(val_set)):.1f} points of "
                    "top-1; epochs are judged by val loss. Give --val FILE with 100+ examples for sharper choices[/]")
    console.log(f"{name}, {len(data.classes)} classes, {len(train_set)} train / {len(val_set)} val sentences, "
                f"max_len {max_len} ({cut:.1f}% of training sentences truncated)")

    head = make_head(encoder.embedding_dim, len(data.classes))
    t0 = time.perf_counter()
    with console.task("embedding (frozen encoder)", len(train_set) + len(val_set)) as advance:
        train.features = embed(encoder, train.ids, progress=advance)
        val.features = embed(encoder, val.ids, progress=advance)
    t1 = time.perf_counter()
    kept, head_epochs = train_head(head, train, val, config, console)
    t2 = time.perf_counter()
    best_epoch, history = 0, []
    epochs = config.epochs if config.epochs is not None else epochs_for(len(train_set), config.batch_size)
    if config.freeze == "none" and epochs > 0:
        kept, best_epoch, history = train_unfrozen(encoder, head, train, val, config, epochs, console, kept)
    t3 = time.perf_counter()
    test_top1 = score(encoder, head, test.ids, test.labels).top1 if test is not None else None
    result = FinetuneRecord(
        stage=config.stage, backbone=name, weights="pretrained", classes=len(data.classes), img_size=0,
        freeze=config.freeze, trainable_stages=[] if config.freeze == "all" else ["encoder"], seed=config.seed,
        val_top1=round(kept.top1, 2), val_loss=round(kept.loss, 4),
        test_top1=None if test_top1 is None else round(test_top1, 2),
        epochs=len(history), head_epochs=head_epochs, best_epoch=best_epoch,
        seconds=round(time.perf_counter() - started, 2), seconds_embed=round(t1 - t0, 3),
        seconds_head=round(t2 - t1, 3), seconds_finetune=round(t3 - t2, 2), world_size=1,
        data=RunData(train_dir=str(Path(config.data).resolve()),
                     val_dir=str(Path(config.val).resolve()) if config.val else None,
                     test_dir=str(Path(config.test).resolve()) if config.test else None,
                     train=len(train_set), val=len(val_set), test=len(test_set) if test_set else None),
        versions=versions(),
        config={k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
        | {"max_len": max_len, "epochs": epochs},  # what the defaults resolved to
        history=tuple(history), max_len=max_len,
    )
    _write_run(Path(config.out), encoder, head, data.classes, spec, tokenizer_file, encoder_config, result,
               config.force)
    return result


def train_head(head: torch.nn.Linear, train: Split, val: Split, config: TextFinetuneConfig, console: Console
               ) -> tuple[recipe.Score, int]:
    """Head-only epochs over the cached embeddings; keeps the best on val loss."""
    rng = np.random.default_rng(config.seed)
    opt = torch.optim.AdamW(head.parameters(), lr=HEAD_ONLY_LR, weight_decay=config.weight_decay)
    y, vy = torch.from_numpy(train.labels), torch.from_numpy(val.labels)
    best, best_state, stale, epochs_run = None, None, 0, 0
    for _ in range(config.head_epochs):
        epochs_run += 1
        head_epoch(head, opt, train.features, y, balanced_order(train.labels, rng), config.batch_size,
                   config.label_smoothing)
        with torch.no_grad():
            logits = head(val.features)
            result = recipe.Score(100.0 * float((logits.argmax(1) == vy).float().mean()),
                                  float(F.cross_entropy(logits, vy, label_smoothing=config.label_smoothing)))
        if result.better_than(best):
            best, best_state, stale = result, copy.deepcopy(head.state_dict()), 0
        else:
            stale += 1
            if stale >= 20:
                break
    head.load_state_dict(best_state)
    console.log(f"head on frozen encoder: val top-1 {best.top1:.1f}%, loss {best.loss:.3f} after {epochs_run} epochs")
    return best, epochs_run


def train_unfrozen(encoder, head, train: Split, val: Split, config: TextFinetuneConfig, epochs: int,
                   console: Console, head_only: recipe.Score) -> tuple[recipe.Score, int, list[dict]]:
    """Encoder and head together; the head-only model is epoch 0. Returns (best val score, its epoch, history)."""
    model = torch.nn.Sequential(encoder, head)
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW([{"params": encoder.parameters(), "lr": config.lr},
                             {"params": head.parameters(), "lr": config.lr * HEAD_LR_FACTOR}],
                            weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train.ids) / config.batch_size)
    total = epochs * steps_per_epoch
    warm = max(1, total // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))
    rng = np.random.default_rng(config.seed + 1)
    labels = torch.from_numpy(train.labels)
    best, best_epoch, stale, history = head_only, 0, 0, []
    best_state = copy.deepcopy(model.state_dict())
    with console.task("fine-tuning", total) as advance:
        for epoch in range(1, epochs + 1):
            model.train()
            order = balanced_order(train.labels, rng)
            losses = []
            for s in range(steps_per_epoch):
                idx = order[s * config.batch_size : (s + 1) * config.batch_size]
                if len(idx) < 2:
                    schedule.step()
                    advance(1)
                    continue
                loss = F.cross_entropy(model(_trimmed(train.ids[idx], encoder.pad_id)), labels[idx],
                                       label_smoothing=config.label_smoothing)
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                schedule.step()
                losses.append(loss.item())
                advance(1)
            result = score(encoder, head, val.ids, val.labels, config.label_smoothing)
            history.append({"epoch": epoch, "loss": round(float(np.mean(losses)) if losses else float("nan"), 4),
                            "val_top1": round(result.top1, 2), "val_loss": round(result.loss, 4)})
            console.log(f"epoch {epoch}/{epochs}: loss {history[-1]['loss']:.3f}  "
                        f"val top-1 {result.top1:.1f}%  val loss {result.loss:.3f}")
            if result.better_than(best):
                best, best_epoch, best_state, stale = result, epoch, copy.deepcopy(model.state_dict()), 0
            else:
                stale += 1
                if stale >= config.patience and epoch > epochs // 4:
                    console.log(f"early stop: val loss has not improved for {stale} epochs")
                    break
    model.load_state_dict(best_state)
    model.eval()
    return best, best_epoch, history


@dataclass
class TextRun:
    """A text run read back: the trained encoder and head, its labels, spec and tokenizer."""

    path: Path
    encoder: text_backbone.Encoder
    head: torch.nn.Linear
    classes: tuple[str, ...]
    spec: TextSpec
    record: FinetuneRecord

    @property
    def dir(self) -> RunDir:
        return RunDir(self.path)

    @property
    def tokenizer_file(self) -> Path:
        return self.path / TOKENIZER

    def tokenizer(self, spec: TextSpec | None = None) -> Tokenizer:
        return Tokenizer(self.tokenizer_file, spec or self.spec)

    def split(self, name: str) -> textdata.TextSet:
        """The run's train, val or test sentences, read again from the files it was trained on."""
        return recorded_split(self.record, self.classes, name)


def recorded_split(record: FinetuneRecord, classes: tuple[str, ...], split: str) -> textdata.TextSet:
    data, config = record.data, record.config
    cols = {"text_column": config.get("text_column"), "label_column": config.get("label_column")}
    if split == "test":
        if not data.test_dir:
            raise RunError("the run was trained without a test set", "pass --data FILE with labelled texts")
        return textdata.read(data.test_dir, classes, what="test", **cols)
    if split == "val" and data.val_dir:
        return textdata.read(data.val_dir, classes, what="val", **cols)
    whole = textdata.read(data.train_dir, classes, what="training", **cols)
    if data.val_dir:
        return whole
    train, val = textdata.split_train_val(whole, config.get("val_fraction", 0.2), config.get("seed", 0))
    return val if split == "val" else train


def evaluate_text(run_path: str | Path, data: str | Path):
    """Top-1 (percent) of a text run on a labelled text file with (some of) its classes (`edgetl eval`)."""
    from edgetl.train.run import Evaluation

    run = load_text_run(run_path)
    test = textdata.read(data, run.classes, what="eval")
    logits = run.head(embed(run.encoder, run.tokenizer().ids(list(test.texts))))
    hits = (logits.argmax(1).numpy() == np.asarray(test.labels))
    per_class = {run.classes[c]: round(100.0 * float(hits[np.asarray(test.labels) == c].mean()), 2)
                 for c in sorted(set(test.labels))}
    return Evaluation(top1=round(100.0 * float(hits.mean()), 2), images=len(test), skipped=0,
                      per_class_top1=per_class)


def load_text_run(path: str | Path) -> TextRun:
    path = Path(path)
    d = RunDir(path)
    missing = d.missing()
    if missing:
        raise RunError(f"{path} is not a complete run (missing {', '.join(missing)})", "fine-tune it first")
    record = d.validate()
    spec = d.spec
    if not isinstance(spec, TextSpec):
        raise RunError(f"{path} is an image run", "this stage takes a text run")
    import json
    import pickle

    from edgetl.rundir import damaged

    for name in (text_backbone.CONFIG, spec.tokenizer):
        if not (path / name).is_file():
            raise damaged(path / name, "missing (a text run keeps its encoder config and tokenizer)")
    try:
        config = json.loads((path / text_backbone.CONFIG).read_text())
        encoder = text_backbone.rebuild(config, spec.pad_id)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise damaged(path / text_backbone.CONFIG, f"not an encoder config ({type(exc).__name__})") from None
    try:
        state = torch.load(d.checkpoint, map_location="cpu", weights_only=True)
        encoder.load_state_dict(state["backbone"])
        head = make_head(encoder.embedding_dim, len(d.labels))
        head.load_state_dict(state["head"])
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, TypeError, ValueError, OSError) as exc:
        raise damaged(d.checkpoint, f"not this run's weights ({type(exc).__name__})") from None
    return TextRun(path, encoder.eval(), head.eval(), d.labels, spec, record)

"""Reading a run directory back: the trained backbone + head, its labels and preprocessing spec,
and scoring it on another labelled dataset (`edgetl eval`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgetl.console import QUIET, Console
from edgetl.data.imagefolder import load_images, scan
from edgetl.data.split import split_train_val
from edgetl.errors import DataError, RunError
from edgetl.rundir import FinetuneRecord, RunDir
from edgetl.runtime.preprocess import PreprocessSpec
from edgetl.train.backbones import Backbone, get_spec, make_head
from edgetl.train.features import nchw, to_input
from edgetl.train.weights import from_run, load_backbone


@dataclass
class Run:
    path: Path
    backbone: Backbone
    head: torch.nn.Linear
    classes: tuple[str, ...]
    spec: PreprocessSpec
    record: FinetuneRecord

    @property
    def dir(self) -> RunDir:
        return RunDir(self.path)


@dataclass(frozen=True)
class Evaluation:
    """`top1` and `per_class_top1` are percentages (0-100, 2 decimals), as everywhere in edgetl."""

    top1: float
    images: int
    skipped: int
    per_class_top1: dict[str, float]


def load_run(path: str | Path) -> Run:
    path = Path(path)
    run = RunDir(path)
    missing = run.missing()
    if missing:
        raise RunError(f"{path} is not a complete edgetl run (missing {', '.join(missing)})",
                       "pass a run dir written by `edgetl finetune` or `edgetl pretrain`")
    record = run.validate()  # a damaged file is a RunError naming it
    spec = run.spec
    weights = from_run(path)
    backbone = load_backbone(get_spec(record.backbone), spec.size[0], weights)
    head = make_head(backbone.embedding_dim, len(weights.classes))
    head.load_state_dict(weights.head)
    backbone.eval()
    head.eval()
    return Run(path, backbone, head, weights.classes, spec, record)


@torch.no_grad()
def evaluate(run: Run, data: str | Path, *, strict: bool = False, console: Console = QUIET,
             batch_size: int = 128) -> Evaluation:
    """Top-1 (in percent) of `run` on an ImageFolder dir whose classes are (a subset of) the run's."""
    folder = scan(data, run.classes, what="eval")
    with console.task("reading images", len(folder.samples), "images") as advance:
        loaded = load_images(folder.samples, run.spec.size, run.spec.resize, interpolation=run.spec.interpolation,
                             strict=strict, progress=advance)
    if len(loaded.labels) == 0:
        raise DataError(f"no readable images in {data}", "run with --strict to see the first failure")
    preds = []
    with console.task("scoring", len(loaded.labels), "images") as advance:
        for start in range(0, len(loaded.labels), batch_size):
            x = to_input(nchw(loaded.images[start : start + batch_size]), run.spec)
            preds.append(run.head(run.backbone(x)).argmax(1))
            advance(len(x))
    pred = torch.cat(preds).numpy()
    hits = pred == loaded.labels
    per_class = {run.classes[c]: round(100.0 * float(hits[loaded.labels == c].mean()), 2)
                 for c in sorted(set(loaded.labels.tolist()))}
    return Evaluation(round(100.0 * float(hits.mean()), 2), len(hits), len(loaded.skipped), per_class)


SPLITS = ("val", "test", "train")


def split_samples(run: Run, split: str) -> list[tuple[Path, int]]:
    """The run's own labelled images of one split, in its class order. Val is re-derived from the
    recorded data dir, fraction and seed (the same hash-keyed split fine-tuning used)."""
    return recorded_split(run.path, run.record, run.classes, split)


def recorded_split(path: Path, record: FinetuneRecord, classes: tuple[str, ...], split: str
                   ) -> list[tuple[Path, int]]:
    """`split_samples` from a run's record alone (no weights loaded)."""
    data, config = record.data, record.config
    if split == "test":
        if not data.test_dir:
            raise RunError(f"{path} was trained without a test set", "pass --data DIR with labelled images")
        return list(scan(data.test_dir, classes, what="test").samples)
    if split == "val" and data.val_dir:
        return list(scan(data.val_dir, classes, what="val").samples)
    if split not in SPLITS:
        raise RunError(f"unknown split {split!r}", f"one of: {', '.join(SPLITS)}")
    folder = scan(data.train_dir, classes, what="training")
    train, val = split_train_val(folder, config.get("val_fraction", 0.2), config.get("seed", 0))
    return val if split == "val" else train


def stratified(samples: list[tuple[Path, int]], n: int, seed: int) -> list[tuple[Path, int]]:
    """Up to `n` samples, as even across classes as they allow, chosen by a seeded shuffle per class."""
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[tuple[Path, int]]] = {}
    for sample in sorted(samples, key=lambda s: (s[1], str(s[0]))):
        by_class.setdefault(sample[1], []).append(sample)
    pools = [[group[i] for i in rng.permutation(len(group))] for _, group in sorted(by_class.items())]
    chosen: list[tuple[Path, int]] = []
    depth = 0
    while len(chosen) < n and any(depth < len(p) for p in pools):
        for pool in pools:  # round-robin: one per class per round, so the counts differ by at most 1
            if depth < len(pool) and len(chosen) < n:
                chosen.append(pool[depth])
        depth += 1
    return chosen

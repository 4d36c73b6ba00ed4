"""Deterministic, stratified train/val split when the user gives no val dir.

Each file's side is decided by a hash of (seed, class, file name), so adding images to a
dataset never moves the ones already there from train to val or back.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path

from edgetl.data.imagefolder import ImageFolder


def _rank(seed: int, path: Path) -> str:
    return hashlib.sha256(f"{seed}/{path.parent.name}/{path.name}".encode()).hexdigest()


def split_train_val(
    folder: ImageFolder, val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """Per class, the lowest-ranked `val_fraction` of files (at least 1 when the class has 2+) go to val."""
    by_class: dict[int, list[Path]] = defaultdict(list)
    for path, label in folder.samples:
        by_class[label].append(path)
    train, val = [], []
    for label in sorted(by_class):
        paths = sorted(by_class[label], key=lambda p: _rank(seed, p))
        n_val = 0 if len(paths) < 2 else max(1, round(len(paths) * val_fraction))
        val += [(p, label) for p in paths[:n_val]]
        train += [(p, label) for p in paths[n_val:]]
    return train, val

"""Labelled text datasets on the host: the device's own reader (`edgetl.runtime.texts`), the classes,
and the seeded, stratified train/val split that images get.

Each example's side is decided by a hash of (seed, label, text), so adding examples never moves
the ones already there. A dataset with one class, or a class with no example left, is refused.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from edgetl.errors import DataError, InputError
from edgetl.runtime.texts import is_text_data, labelled_texts

__all__ = ["TextSet", "is_text_data", "read", "split_train_val", "stratified"]


@dataclass(frozen=True)
class TextSet:
    """Texts and their label indices into `classes`."""

    texts: tuple[str, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, rows) -> TextSet:
        return TextSet(tuple(self.texts[i] for i in rows), tuple(self.labels[i] for i in rows), self.classes)


def read(path: str | Path, classes: tuple[str, ...] | None = None, *, what: str = "training",
         text_column: str | None = None, label_column: str | None = None, column_flags: bool = False) -> TextSet:
    """A labelled text file or folder; `classes` (a val/test set's run classes) refuses labels the run lacks;
    `column_flags`: the command has --text-column/--label-column (its hints name them)."""
    try:
        texts, names = labelled_texts(path, text_column=text_column, label_column=label_column,
                                      column_flags=column_flags)
    except InputError as exc:
        raise DataError(f"{what} data: {exc.message}", exc.hint) from None
    if classes is None:
        classes = tuple(sorted(set(names)))
        if len(classes) < 2:
            raise DataError(f"{path} has a single class ({classes[0]!r})",
                            "a classifier needs two or more labels")
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(names) - set(index))
    if unknown:
        raise DataError(f"{what} data {path} has label(s) the training data lacks: {', '.join(unknown[:5])}",
                        "train on every label, or remove those rows")
    return TextSet(tuple(texts), tuple(index[n] for n in names), tuple(classes))


def _rank(seed: int, label: int, text: str, n: int) -> str:
    return hashlib.sha256(f"{seed}/{label}/{n}/{text}".encode()).hexdigest()


def split_train_val(data: TextSet, val_fraction: float = 0.2, seed: int = 0) -> tuple[TextSet, TextSet]:
    """Per class, the lowest-ranked `val_fraction` of examples (at least 1 when the class has 2+) go to val."""
    by_class: dict[int, list[int]] = defaultdict(list)
    seen: dict[tuple[int, str], int] = defaultdict(int)
    ranks = []
    for i, (text, label) in enumerate(zip(data.texts, data.labels, strict=True)):
        by_class[label].append(i)
        ranks.append(_rank(seed, label, text, seen[label, text]))  # duplicates rank apart
        seen[label, text] += 1
    train, val = [], []
    for label in sorted(by_class):
        rows = sorted(by_class[label], key=lambda i: ranks[i])
        n_val = 0 if len(rows) < 2 else max(1, round(len(rows) * val_fraction))
        val += rows[:n_val]
        train += rows[n_val:]
    return data.subset(sorted(train)), data.subset(sorted(val))


def stratified(data: TextSet, per_class: int, seed: int = 0, *, total: int | None = None) -> TextSet:
    """Up to `per_class` examples of each class, chosen by a seeded hash (few-shot subsets, checksets);
    with `total`, at most that many, taken round-robin over the classes (their counts differ by one at most)."""
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, label in enumerate(data.labels):
        by_class[label].append(i)
    ranked = []  # (depth in its class, class, row)
    for label in sorted(by_class):
        rows = sorted(by_class[label], key=lambda i: _rank(seed, label, data.texts[i], i))[:per_class]
        ranked += [(depth, label, i) for depth, i in enumerate(rows)]
    ranked.sort()
    if total is not None:
        ranked = ranked[:total]
    return data.subset(sorted(i for _, _, i in ranked))

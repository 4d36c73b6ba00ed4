"""Head-only learning on the device, over embeddings computed once per image.

- Softmax regression in numpy: full-batch accelerated gradient descent on cross-entropy + L2, warm-started from the
  head in force, early-stopped on a holdout split, deterministic for a seed. New labels add rows.
- Weight imprinting: a class seen 1-5 times gets the normalised mean of its embeddings as its
  row, scaled like the others. Given alone, nothing else is retrained; given with images of
  other classes, it is the new row's warm start and the regression goes on from there.
- A guard: the new head is committed only if its holdout top-1 on the classes the old head
  already knew drops by at most `margin` points; the result says what happened and why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from edgetl.errors import ConfigError
from edgetl.runtime.head import Head, softmax

IMPRINT_MAX = 5  # a class with at most this many examples is imprinted, not regressed


@dataclass(frozen=True)
class AdaptConfig:
    l2: float = 1e-4
    max_epochs: int = 300
    patience: int = 20
    holdout: float = 0.2
    seed: int = 0
    margin: float = 1.0  # percentage points of old-class holdout top-1 the new head may lose
    imprint_max: int = IMPRINT_MAX

    def __post_init__(self):
        """Every value checked before any work: a bad one is a `ConfigError` naming it."""
        def finite(x) -> bool:
            return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)

        def whole(x) -> bool:
            return isinstance(x, int) and not isinstance(x, bool)

        checks = [(finite(self.margin) and self.margin >= 0, f"margin {self.margin!r} must be a finite number >= 0"),
                  (finite(self.l2) and self.l2 >= 0, f"l2 {self.l2!r} must be a finite number >= 0"),
                  (finite(self.holdout) and 0 <= self.holdout < 1, f"holdout {self.holdout!r} must be in [0, 1)")]
        checks += [(whole(value) and value >= low, f"{name} {value!r} must be a whole number >= {low}")
                   for name, value, low in (("max_epochs", self.max_epochs, 1), ("patience", self.patience, 1),
                                            ("seed", self.seed, 0), ("imprint_max", self.imprint_max, 0))]
        problems = [why for ok, why in checks if not ok]
        if problems:
            raise ConfigError(f"adapt: {problems[0]}", "e.g. AdaptConfig(margin=1.0, seed=0) / --margin 1 --seed 0")


@dataclass
class AdaptResult:
    committed: bool
    reason: str
    head: Head
    version: int | None = None  # the version committed (None when not committed)
    new_classes: tuple[str, ...] = ()
    imprinted: tuple[str, ...] = ()
    old_top1_before: float | None = None  # holdout top-1 in percent (0-100) on the old classes, current head
    old_top1_after: float | None = None  # ... and the new head, in percent
    holdout_top1_after: float | None = None  # in percent, on every holdout image
    epochs: int = 0
    images: int = 0
    details: dict = field(default_factory=dict)
    parent: int | None = None  # the head version trained from (0: the bundle's own), set by `Model.adapt`
    recovered: str | None = None  # what was wrong with the head in force, when it trained from a fallback

    def to_dict(self) -> dict:
        return {"committed": self.committed, "reason": self.reason, "version": self.version,
                "new_classes": list(self.new_classes), "imprinted": list(self.imprinted),
                "old_top1_before": self.old_top1_before, "old_top1_after": self.old_top1_after,
                "holdout_top1_after": self.holdout_top1_after, "epochs": self.epochs, "images": self.images,
                "parent": self.parent, "recovered": self.recovered}


def split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, holdout) indices, stratified: each class with >= 2 images gives round(fraction*n) >= 1."""
    rng = np.random.default_rng(seed)
    train, hold = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = max(1, int(round(fraction * len(idx)))) if len(idx) >= 2 and fraction > 0 else 0
        hold.extend(idx[:k])
        train.extend(idx[k:])
    return np.sort(np.asarray(train, int)), np.sort(np.asarray(hold, int))


def imprint(head: Head, embeddings: np.ndarray, label: str) -> Head:
    """`head` with `label` imprinted from its embeddings (row = normalised mean, scaled to the mean
    norm of the existing rows; bias = their mean); an existing label's row is replaced."""
    mean = embeddings.mean(axis=0)
    row = mean / max(float(np.linalg.norm(mean)), 1e-12)
    scale = float(np.linalg.norm(head.W, axis=1).mean()) if len(head.W) else 1.0
    bias = float(head.b.mean()) if len(head.b) else 0.0
    if label in head.labels:
        i = head.labels.index(label)
        W, b = head.W.copy(), head.b.copy()
        W[i], b[i] = row * scale, bias
        return Head(W, b, head.labels, head.version)
    return Head(np.vstack([head.W, row[None] * scale]).astype(np.float32),
                np.append(head.b, bias).astype(np.float32), (*head.labels, label), head.version)


def _top1(head: Head, x: np.ndarray, y: np.ndarray) -> float | None:
    return None if len(y) == 0 else round(100.0 * float((head.logits(x).argmax(1) == y).mean()), 2)


def _lipschitz(x: np.ndarray, l2: float) -> float:
    """A bound on the curvature of mean softmax cross-entropy in (W, b): 0.5 * sigma_max([x 1])^2 / n + l2
    (power iteration), so a step of 1/L never overshoots, however the embeddings are scaled."""
    xa = np.hstack([x, np.ones((len(x), 1))])
    v = np.ones(xa.shape[1]) / np.sqrt(xa.shape[1])
    for _ in range(50):
        v = xa.T @ (xa @ v)
        v /= max(float(np.linalg.norm(v)), 1e-30)
    return 0.5 * float(np.linalg.norm(xa @ v)) ** 2 / len(x) + l2


def regress(head: Head, x: np.ndarray, y: np.ndarray, hx: np.ndarray, hy: np.ndarray,
            config: AdaptConfig) -> tuple[Head, int]:
    """Softmax regression warm-started from `head`: Nesterov-accelerated full-batch gradient descent
    on mean cross-entropy + l2/2 |W|^2 with step 1/L (no learning rate to tune; a good warm start
    moves little), stopped when the holdout loss has not improved for `patience` epochs, the best
    kept. Full batch and no randomness: the same inputs give the same head."""
    W, b = head.W.astype(np.float64).copy(), head.b.astype(np.float64).copy()
    onehot = np.eye(len(b))[y]
    step = 1.0 / _lipschitz(x, config.l2)

    def holdout_loss(W, b) -> float:
        hp = softmax(hx @ W.T + b)
        return float(-np.log(hp[np.arange(len(hy)), hy] + 1e-12).mean())

    # the warm start is a candidate too: if no step improves on it, it is what comes back
    best, best_loss, since, epoch = (W.copy(), b.copy()), (holdout_loss(W, b) if len(hy) else np.inf), 0, 0
    prev_W, prev_b = W.copy(), b.copy()
    for epoch in range(1, config.max_epochs + 1):
        momentum = (epoch - 1) / (epoch + 2)
        yW, yb = W + momentum * (W - prev_W), b + momentum * (b - prev_b)
        g = (softmax(x @ yW.T + yb) - onehot) / len(y)
        prev_W, prev_b = W, b
        W, b = yW - step * (g.T @ x + config.l2 * yW), yb - step * g.sum(axis=0)
        if len(hy):
            loss = holdout_loss(W, b)
            if loss < best_loss - 1e-6:
                best, best_loss, since = (W.copy(), b.copy()), loss, 0
            else:
                since += 1
                if since >= config.patience:
                    break
        else:
            best = (W.copy(), b.copy())
    return Head(best[0].astype(np.float32), best[1].astype(np.float32), head.labels, head.version), epoch


def adapt_head(head: Head, embeddings: np.ndarray, labels, config: AdaptConfig = AdaptConfig(), *,
               unguarded: bool = False) -> AdaptResult:
    """A new head from `embeddings` (N, D) and their `labels` (strings), judged by the guard; not
    written anywhere (the caller commits it). `unguarded` commits without old-class images to judge by."""
    labels = [str(x) for x in labels]
    if len(labels) != len(embeddings) or len(labels) == 0:
        raise ConfigError(f"{len(embeddings)} images and {len(labels)} labels", "give one label per image")
    if embeddings.shape[1] != head.W.shape[1]:
        raise ConfigError(f"embeddings are {embeddings.shape[1]}-d, the head takes {head.W.shape[1]}",
                          "adapt with the bundle the head belongs to")
    old = set(head.labels)
    counts = {c: labels.count(c) for c in dict.fromkeys(labels)}
    new = tuple(c for c in counts if c not in old)
    imprinted = tuple(c for c in new if counts[c] <= config.imprint_max)
    x = embeddings.astype(np.float64)
    grown = head
    for c in new:  # imprinted rows are also the warm start of regressed new classes
        grown = imprint(grown, x[[i for i, lab in enumerate(labels) if lab == c]], c)
    y = np.asarray([grown.labels.index(lab) for lab in labels])
    train, hold = split(y, config.holdout, config.seed)
    old_hold = np.asarray([i for i in hold if labels[i] in old], int)
    before = _top1(head, x[old_hold], y[old_hold])
    if set(counts) <= set(imprinted):  # only few-shot new classes: imprinting alone, no other row changes
        candidate, epochs = grown, 0
    else:  # regression over everything given, the imprinted rows as the new classes' warm start
        candidate, epochs = regress(grown, x[train], y[train], x[hold], y[hold], config)
    after = _top1(candidate, x[old_hold], y[old_hold])
    result = AdaptResult(False, "", candidate, new_classes=new, imprinted=imprinted, old_top1_before=before,
                         old_top1_after=after, holdout_top1_after=_top1(candidate, x[hold], y[hold]),
                         epochs=epochs, images=len(labels))
    if before is None and unguarded:
        result.committed = True
        result.reason = "committed unguarded: no holdout images of the classes the head already knows"
    elif before is None:
        result.reason = ("not committed: no holdout images of the classes the head already knows, so the guard "
                         "cannot check them; include some, or pass unguarded")
    elif after < before - config.margin:
        result.reason = (f"not committed: old-class holdout top-1 would drop {before:.1f}% -> {after:.1f}% "
                         f"(more than {config.margin} points)")
    else:
        result.committed = True
        result.reason = f"committed: old-class holdout top-1 {before:.1f}% -> {after:.1f}% (margin {config.margin})"
    return result

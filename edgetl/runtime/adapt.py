"""Head-only learning on the device, over backbone outputs computed once per image.

The backbone stays frozen (int8, compiled: what a device has); the head is what is learnt:
- **Over the taps.** A head reads the embedding and the pooled stage outputs the bundle's backbone
  gives (`runtime.features`; Head2Toe), each feature standardised by its mean and std on the
  device's own frames (labelled and unlabelled), kept with the head.
- **Softmax regression or nearest class mean**, whichever the holdout prefers; the regression's
  L2 is chosen on the holdout too (a path from strong to weak, each fit warm-started from the
  last). Full-batch Nesterov descent with step 1/L: no learning rate to tune, deterministic.
- **Relearn or refine.** Labelled images of every class the head knows relearn it from scratch;
  images of some classes refine the head in force (rewritten over the taps): only the rows of the
  classes shown move. The classes not shown can still lose (the shown ones' logits grow), and no
  holdout of these images shows it, so such a head is not committed unless unguarded.
- **Imprinting** for a class seen 1-5 times: the normalised mean of its features is its row.
- **Unlabelled frames** re-estimate the standardisation of the head in force (AdaBN at the head:
  the statistics move to the new conditions, the weights stay).
- **A new label set** (`replace_labels`): a head for only the labels given.
- **The guard** (`runtime.guard`): the old and the new head on the same holdout images, McNemar's
  exact test on the discordant pairs; `margin` gives the fixed rule instead. A head with no classes
  yet (a bundle made from a model file, `edgetl bundle from-model`) has nothing to lose: the first
  head learnt on it is committed.
numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from edgetl.errors import ConfigError
from edgetl.runtime import guard
from edgetl.runtime.features import EMBEDDING, Layout
from edgetl.runtime.head import Head, softmax

IMPRINT_MAX = 5  # a class with at most this many examples is imprinted, not regressed
L2_PATH = (1e-1, 1e-2, 1e-3)  # the regularisation tried on the holdout, strong to weak
PATH_GAIN = 0.1  # the L2 path goes on while each step lowers the holdout loss by at least this fraction
STOP_GAIN = 1e-3  # an epoch counts as progress when it lowers the holdout loss by this fraction
BLOCK_ROWS = 128  # rows summed at a time for the statistics (bounds the float64 temporaries)
PRIOR_FRAMES = 32  # unlabelled statistics: the old ones weigh as much as this many new frames
STD_FLOOR = 1e-3  # a feature's std is at least this fraction of the median std (a constant feature stays ~0)


@dataclass(frozen=True)
class AdaptConfig:
    l2: float | None = None  # None: chosen on the holdout from L2_PATH
    max_epochs: int = 300
    patience: int = 20
    holdout: float = 0.2
    seed: int = 0
    margin: float | None = None  # points of old-class holdout top-1 the new head may lose (None: McNemar)
    alpha: float = guard.ALPHA  # McNemar: the significance a loss must reach to refuse the head
    min_effect: float = guard.MIN_EFFECT  # McNemar: points a significant net loss must reach to refuse it
    imprint_max: int = IMPRINT_MAX
    taps: bool = True  # read the backbone's taps (False: the embedding alone, as the bundle's own head)
    replace_labels: bool = False  # a head for only the labels given (a new label set)

    def __post_init__(self):
        """Every value checked before any work: a bad one is a `ConfigError` naming it."""
        def finite(x) -> bool:
            return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)

        def whole(x) -> bool:
            return isinstance(x, int) and not isinstance(x, bool)

        checks = [(self.margin is None or (finite(self.margin) and self.margin >= 0),
                   f"margin {self.margin!r} must be a finite number >= 0"),
                  (self.l2 is None or (finite(self.l2) and self.l2 >= 0),
                   f"l2 {self.l2!r} must be a finite number >= 0"),
                  (finite(self.holdout) and 0 <= self.holdout < 1, f"holdout {self.holdout!r} must be in [0, 1)"),
                  (finite(self.alpha) and 0 < self.alpha < 1, f"alpha {self.alpha!r} must be in (0, 1)"),
                  (finite(self.min_effect) and self.min_effect >= 0,
                   f"min_effect {self.min_effect!r} must be a finite number >= 0")]
        checks += [(whole(value) and value >= low, f"{name} {value!r} must be a whole number >= {low}")
                   for name, value, low in (("max_epochs", self.max_epochs, 1), ("patience", self.patience, 1),
                                            ("seed", self.seed, 0), ("imprint_max", self.imprint_max, 0))]
        problems = [why for ok, why in checks if not ok]
        if problems:
            raise ConfigError(f"adapt: {problems[0]}", "e.g. AdaptConfig(alpha=0.05, seed=0) / --alpha 0.05 --seed 0")


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
    details: dict = field(default_factory=dict)  # what was tried, chosen and tested
    parent: int | None = None  # the head version trained from (0: the bundle's own), set by `Model.adapt`
    recovered: str | None = None  # what was wrong with the head in force, when it trained from a fallback
    unlabelled: int = 0  # unlabelled frames whose statistics the head took

    def to_dict(self) -> dict:
        return {"committed": self.committed, "reason": self.reason, "version": self.version,
                "new_classes": list(self.new_classes), "imprinted": list(self.imprinted),
                "old_top1_before": self.old_top1_before, "old_top1_after": self.old_top1_after,
                "holdout_top1_after": self.holdout_top1_after, "epochs": self.epochs, "images": self.images,
                "unlabelled": self.unlabelled, "head": {"kind": self.head.kind, "taps": list(self.head.taps),
                                                         "features": self.head.width},
                "parent": self.parent, "recovered": self.recovered, **self.details}


def split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, holdout) indices, stratified: each class with >= 2 images gives round(fraction*n) >= 1."""
    rng = np.random.default_rng(seed)
    train, hold = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = min(max(1, int(round(fraction * len(idx)))), len(idx) - 1) if len(idx) >= 2 and fraction > 0 else 0
        hold.extend(idx[:k])
        train.extend(idx[k:])
    return np.sort(np.asarray(train, int)), np.sort(np.asarray(hold, int))


# --- the head's own input ---------------------------------------------------------------------

def head_input(head: Head, x: np.ndarray) -> np.ndarray:
    """`x` (the head's columns) as the head's weights see it: standardised when the head is."""
    return x if head.mean is None else (x - head.mean) / head.std


def statistics(*parts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std over the rows of `parts`, the std floored (a feature constant on these frames
    stays near 0, not huge). Summed in float64 over blocks of rows: no copy of the features is made."""
    total, sums, squares = 0, 0.0, 0.0
    for part in parts:
        for start in range(0, len(part), BLOCK_ROWS):
            block = part[start : start + BLOCK_ROWS].astype(np.float64)
            total += len(block)
            sums = sums + block.sum(axis=0)
            squares = squares + np.square(block).sum(axis=0)
    mean = sums / total
    std = np.sqrt(np.maximum(squares / total - mean ** 2, 0.0))
    floor = STD_FLOOR * max(float(np.median(std)), 1e-12)
    return mean.astype(np.float32), np.maximum(std, floor).astype(np.float32)


def standardised(x: np.ndarray, rows: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(x[rows] - mean) / std, in the one new array the indexing makes."""
    z = np.asarray(x[rows], np.float32)
    z -= mean
    z /= std
    return z


def rewritten(head: Head, layout: Layout, taps: tuple[str, ...], mean: np.ndarray, std: np.ndarray) -> Head:
    """`head` over the segments `taps`, standardised by (mean, std): the same logits on every input
    (the columns it did not read get zero weight), ready to be trained further."""
    W_raw = head.W / head.std if head.std is not None else head.W
    b_raw = head.b - W_raw @ head.mean if head.mean is not None else head.b
    cols = np.concatenate([np.arange(a, b) for a, b in _spans(layout, taps, head.taps)]) if head.taps else []
    W = np.zeros((len(head.labels), len(mean)), np.float32)
    W[:, cols] = W_raw * std[cols]
    b = b_raw + W_raw @ mean[cols]
    return Head(W, b.astype(np.float32), head.labels, head.version, taps, layout.dims(taps), mean, std, head.kind)


def _spans(layout: Layout, taps: tuple[str, ...], within: tuple[str, ...]) -> list[tuple[int, int]]:
    """Where each segment of `within` sits among the columns of `taps` (both in layout order)."""
    starts, at = {}, 0
    for name, dim in zip(taps, layout.dims(taps), strict=True):
        starts[name] = (at, at + dim)
        at += dim
    return [starts[n] for n in within]


def imprint(head: Head, x: np.ndarray, label: str) -> Head:
    """`head` with `label` imprinted from its features `x` (the head's columns): the row is the
    normalised mean of its standardised features, scaled to the mean norm of the existing rows,
    the bias their mean; an existing label's row is replaced."""
    mean = head_input(head, x).mean(axis=0)
    row = mean / max(float(np.linalg.norm(mean)), 1e-12)
    scale = float(np.linalg.norm(head.W, axis=1).mean()) if len(head.W) else 1.0
    bias = float(head.b.mean()) if len(head.b) else 0.0
    if label in head.labels:
        i = head.labels.index(label)
        W, b = head.W.copy(), head.b.copy()
        W[i], b[i] = row * scale, bias
        return replace(head, W=W, b=b)
    return replace(head, W=np.vstack([head.W, row[None] * scale]).astype(np.float32),
                   b=np.append(head.b, bias).astype(np.float32), labels=(*head.labels, label))


def with_labels(head: Head, labels: tuple[str, ...]) -> Head:
    """`head` with rows for exactly `labels`, in that order: its own rows where it knows the label, zero otherwise."""
    W = np.zeros((len(labels), head.width), np.float32)
    b = np.zeros(len(labels), np.float32)
    for i, label in enumerate(labels):
        if label in head.labels:
            W[i], b[i] = head.W[head.labels.index(label)], head.b[head.labels.index(label)]
    return replace(head, W=W, b=b, labels=tuple(labels))


# --- fitting ------------------------------------------------------------------------------------

def _lipschitz(x: np.ndarray, l2: float) -> float:
    """A bound on the curvature of mean softmax cross-entropy in (W, b): 0.5 * sigma_max([x 1])^2 / n + l2
    (power iteration), so a step of 1/L never overshoots, however the features are scaled."""
    v, v1 = np.ones(x.shape[1], x.dtype), 1.0  # [x 1] @ (v, v1), without building [x 1]
    for _ in range(30):
        u = x @ v + v1
        v, v1 = x.T @ u, float(u.sum())
        norm = max(float(np.sqrt(v @ v + v1 * v1)), 1e-30)
        v, v1 = v / norm, v1 / norm
    u = x @ v + v1
    return 0.5 * float(u @ u) / len(x) + l2


def _loss(W: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray, offset=0.0) -> float:
    p = softmax(x @ W.T + b + offset)
    return float(-np.log(p[np.arange(len(y)), y] + 1e-12).mean())


def regress(head: Head, x: np.ndarray, y: np.ndarray, hx: np.ndarray, hy: np.ndarray, l2: float,
            max_epochs: int, patience: int, lipschitz: float | None = None, hold_offset=0.0,
            learn: np.ndarray | None = None) -> tuple[Head, int, float]:
    """Softmax regression from `head`'s weights over its input `x` (already standardised): Nesterov-
    accelerated full-batch descent on mean cross-entropy + l2/2 |W|^2, step 1/L, stopped when the
    holdout loss has not improved for `patience` epochs, the best kept (the start is a candidate).
    `hold_offset` is added to the holdout's logits (what the weights outside `x`'s span give them).
    `learn` (one bool per class) says which rows move; the others keep their weights and bias.
    float32 and no randomness: the same inputs give the same head. Returns (head, epochs, holdout loss)."""
    W, b = head.W.astype(np.float32).copy(), head.b.astype(np.float32).copy()
    onehot = np.eye(len(b), dtype=np.float32)[y]
    step = np.float32(1.0 / ((lipschitz or _lipschitz(x, 0.0)) + l2))
    l2 = np.float32(l2)
    best, best_loss, since, epoch = (W.copy(), b.copy()), (_loss(W, b, hx, hy, hold_offset) if len(hy)
                                                            else np.inf), 0, 0
    prev_W, prev_b = W.copy(), b.copy()
    rows = np.ones(len(b), np.float32) if learn is None else np.asarray(learn, np.float32)
    for epoch in range(1, max_epochs + 1):
        momentum = np.float32((epoch - 1) / (epoch + 2))
        yW, yb = W + momentum * (W - prev_W), b + momentum * (b - prev_b)
        g = softmax(x @ yW.T + yb)
        g -= onehot
        g /= len(y)
        prev_W, prev_b = W, b
        W, b = yW - (step * rows)[:, None] * (g.T @ x + l2 * yW), yb - step * rows * g.sum(axis=0)
        if len(hy):
            loss = _loss(W, b, hx, hy, hold_offset)
            if loss < best_loss * (1 - STOP_GAIN):
                best, best_loss, since = (W.copy(), b.copy()), loss, 0
            else:
                since += 1
                if since >= patience:
                    break
        else:
            best = (W.copy(), b.copy())
    return replace(head, W=best[0], b=best[1], kind="softmax"), epoch, best_loss


def class_means(head: Head, x: np.ndarray, y: np.ndarray, hx: np.ndarray, hy: np.ndarray) -> Head:
    """Nearest class mean as a linear head: logits = (2 x.m_c - |m_c|^2) / T, T chosen on the holdout
    (the same decisions whatever T; T makes its probabilities honest). Classes with no train image
    keep the head's rows."""
    W, b = head.W.copy(), head.b.copy()
    for c in np.unique(y):
        m = x[y == c].mean(axis=0)
        W[c], b[c] = 2.0 * m, -float(m @ m)
    if len(hy):
        temperature = min((float(t) for t in np.geomspace(1.0, 4096.0, 13)),
                          key=lambda t: _loss(W / t, b / t, hx, hy))
    else:
        temperature = float(x.shape[1])
    return replace(head, W=(W / temperature).astype(np.float32), b=(b / temperature).astype(np.float32), kind="ncm")


def _top1(head: Head, z: np.ndarray, y: np.ndarray, offset=0.0) -> float | None:
    """Top-1 (percent) of `head` on its standardised input `z`."""
    return None if len(y) == 0 else round(100.0 * float(((z @ head.W.T + head.b + offset).argmax(1) == y).mean()), 2)


class RowSpace:
    """Softmax regression in the span of the training rows, when they are fewer than the features.
    Each gradient is a combination of the rows, so descent changes W only within that span: with
    the training Gram matrix K = Z Z^T = U diag(e) U^T, the coordinates U sqrt(e) give the same
    regression at r/features of the cost per epoch. From zero it is exactly the regression in
    the features; from a head in force, the part of its weights outside the span (which the new
    images cannot see) is kept as it is, not shrunk by the L2. Nothing features-wide is built
    beyond Z itself."""

    def __init__(self, z: np.ndarray):
        values, vectors = np.linalg.eigh((z @ z.T).astype(np.float64))
        keep = values > 1e-6 * max(float(values[-1]), 1e-30)
        self.z = z
        self.u, self.root = vectors[:, keep].astype(np.float32), np.sqrt(values[keep]).astype(np.float32)

    def coordinates(self) -> np.ndarray:
        return self.u * self.root

    def of(self, other: np.ndarray) -> np.ndarray:
        """Other rows (the holdout) in the same coordinates: their projection on the span."""
        return ((other @ self.z.T) @ self.u) / self.root

    def project(self, W: np.ndarray) -> np.ndarray:
        """Weights in the features -> their coordinates in the span (the part the rows see)."""
        return ((W @ self.z.T) @ self.u / self.root).astype(np.float32)

    def weights(self, W_r: np.ndarray) -> np.ndarray:
        """Coordinates in the span -> weights in the features."""
        return ((W_r / self.root) @ self.u.T @ self.z).astype(np.float32)


def _rounded(loss: float) -> float | None:
    """A holdout loss as the record keeps it (None without a holdout: JSON has no infinity)."""
    return round(loss, 4) if math.isfinite(loss) else None


def fit(start: Head, x: np.ndarray, y: np.ndarray, train: np.ndarray, hold: np.ndarray,
        config: AdaptConfig, learn: np.ndarray | None = None) -> tuple[Head, int, dict]:
    """The head the holdout prefers: softmax regression along the L2 path (or at `config.l2`), and
    nearest class mean beside it, both judged by holdout loss; `x` are the raw features the head
    reads, standardised here by the head's statistics. With fewer training images than features it
    is solved in the span of their rows (`RowSpace`). Returns (head, epochs, what was tried)."""
    z, hz, hy = (standardised(x, train, start.mean, start.std), standardised(x, hold, start.mean, start.std),
                 y[hold])
    space = RowSpace(z) if len(train) < x.shape[1] else None
    offset = 0.0
    if space is not None:
        xs, hxs = space.coordinates(), space.of(hz)
        seen = space.project(start.W)  # the start's weights as the rows see them
        if start.W.any():  # what the rest of the start's weights give the holdout, held fixed
            offset = hz @ start.W.T - hxs @ seen.T
        current = replace(start, W=seen)
    else:
        xs, hxs, current = z, hz, start
    lipschitz = _lipschitz(xs, 0.0)
    tried, best, epochs = [], None, 0
    for l2 in ((config.l2,) if config.l2 is not None else L2_PATH):
        current, n, loss = regress(current, xs, y[train], hxs, hy, l2, config.max_epochs, config.patience, lipschitz,
                                   offset, learn)
        epochs += n
        tried.append({"kind": "softmax", "l2": l2, "epochs": n, "holdout_loss": _rounded(loss),
                      "holdout_top1": _top1(current, hxs, hy, offset)})
        if best is None or loss < best[1] * (1 - PATH_GAIN):
            best = (current, loss, l2)
        else:
            break  # weaker regularisation stopped paying: the path goes no further
    chosen = best[0] if space is None else replace(best[0], W=start.W + space.weights(best[0].W - seen))
    ncm = class_means(start, z, y[train], hz, hy)
    ncm_loss = _loss(ncm.W, ncm.b, hz, hy) if len(hy) else np.inf
    tried.append({"kind": "ncm", "holdout_loss": _rounded(ncm_loss), "holdout_top1": _top1(ncm, hz, hy)})
    if ncm_loss < best[1] - 1e-6:  # judged as the regression is, by holdout loss; ties go to the regression
        return ncm, epochs, {"tried": tried, "chosen": "ncm"}
    return chosen, epochs, {"tried": tried, "chosen": f"softmax l2={best[2]:g}", "l2": best[2]}


# --- adaptation -------------------------------------------------------------------------------

def adapt_head(head: Head, features: np.ndarray | None, labels, config: AdaptConfig = AdaptConfig(),
               layout: Layout | None = None, *, unlabelled: np.ndarray | None = None,
               source: tuple[np.ndarray, np.ndarray] | None = None, unguarded: bool = False) -> AdaptResult:
    """A new head from the backbone outputs `features` (N, layout.width) and their `labels` (strings),
    and/or the statistics of `unlabelled` outputs, judged by the guard; not written anywhere (the
    caller commits it). `source`: the statistics of the server's training outputs (the bundle's
    features.npz), which the bundle's own head is standardised by before unlabelled frames move
    them. `unguarded` commits without old-class holdout images to judge by."""
    width = features.shape[1] if features is not None else unlabelled.shape[1]
    layout = layout or Layout.of((), width)
    for what, x in (("images", features), ("unlabelled frames", unlabelled)):
        if x is not None and (x.ndim != 2 or x.shape[1] != layout.width):
            raise ConfigError(f"the {what}' features are {x.shape[1:]} wide, this bundle's backbone gives "
                              f"{layout.width}", "adapt with the bundle the head belongs to")
    problem = layout.problem(head.taps, head.dims)
    if problem:
        raise ConfigError(f"the head in force does not fit this bundle: {problem}",
                          "roll back to a head made for this bundle")
    if features is None:
        return _restandardise(head, layout, unlabelled, source, config, unguarded)
    labels = [str(x) for x in labels]
    if len(labels) != len(features) or len(labels) == 0:
        raise ConfigError(f"{len(features)} images and {len(labels)} labels", "give one label per image")
    counts = {c: labels.count(c) for c in dict.fromkeys(labels)}
    if config.replace_labels and len(counts) < 2:
        raise ConfigError(f"a new label set needs two or more labels, and these are all {labels[0]!r}",
                          "give examples of every label the new head should know")
    known = set(head.labels)
    new = tuple(c for c in counts if c not in known)
    imprinted = tuple(c for c in new if counts[c] <= config.imprint_max)
    if not config.replace_labels and unlabelled is None and set(counts) <= set(imprinted):
        return _imprint_only(head, layout, features, labels, counts, config, unguarded)

    classes = tuple(counts) if config.replace_labels else (*head.labels, *new)
    covers = set(counts) >= set(classes)
    wanted = set(layout.usable if config.taps else (EMBEDDING,)) | (set() if covers else set(head.taps))
    taps = tuple(n for n in layout.names if n in wanted)  # a refine keeps what the head in force reads
    cols = layout.columns(taps)
    x = np.asarray(features[:, cols], np.float32)  # a view when the columns are one span of float32 features
    mean, std = statistics(x) if unlabelled is None else statistics(x, np.asarray(unlabelled[:, cols], np.float32))
    y = np.asarray([classes.index(lab) for lab in labels])
    if covers:  # every class shown: relearn from scratch (what the holdout measured as best)
        start = Head(np.zeros((len(classes), x.shape[1]), np.float32), np.zeros(len(classes), np.float32), classes,
                     head.version, taps, layout.dims(taps), mean, std)
    else:  # some classes shown: refine the head in force, rewritten over the taps, so the rest are kept
        start = with_labels(rewritten(head, layout, taps, mean, std), classes)
        for c in new:
            start = imprint(start, x[[i for i, lab in enumerate(labels) if lab == c]], c)
    train, hold = split(y, config.holdout, config.seed)
    shown = None if covers else np.asarray([c in counts for c in classes])  # the rows not shown stay as they are
    candidate, epochs, tried = fit(start, x, y, train, hold, config, shown)
    held = [candidate.labels[i] for i in candidate.logits(x[hold]).argmax(1)] if len(hold) else []
    if not head.labels and len(hold) and tried["chosen"].startswith("softmax"):
        candidate, more = _refit(start, x, y, tried["l2"], config)
        epochs += more
        tried = {**tried, "refit": f"{tried['chosen']} on all {len(y)} images"}
    result = AdaptResult(False, "", candidate, new_classes=() if config.replace_labels else new,
                         imprinted=imprinted if not covers else (), epochs=epochs, images=len(labels),
                         holdout_top1_after=round(100.0 * float(np.mean([p == labels[i] for p, i in
                                                                         zip(held, hold, strict=True)])), 2)
                         if held else None,
                         unlabelled=0 if unlabelled is None else len(unlabelled), details=tried)
    judged = hold if config.replace_labels else np.asarray([i for i in hold if labels[i] in known], int)
    what = "holdout of the labels given" if config.replace_labels else "old-class holdout"
    result = _judge(result, head, layout, features[judged], [labels[i] for i in judged], candidate, config,
                    unguarded, what)
    unseen = [c for c in head.labels if c not in counts] if not config.replace_labels else []
    if unseen and result.committed and not unguarded:  # the holdout cannot show what they lost
        result.committed = False
        result.reason = (f"not committed: no images of {len(unseen)} class(es) the head knows "
                         f"({', '.join(unseen[:3])}{', ...' if len(unseen) > 3 else ''}), and the holdout cannot "
                         "show what a head refined without them loses; include a few of each, or pass unguarded")
    return result


def _refit(start: Head, x: np.ndarray, y: np.ndarray, l2: float, config: AdaptConfig) -> tuple[Head, int]:
    """A first head (the bundle had no classes, so no guard needs the holdout) fitted again on every image,
    at the regularisation the holdout chose, to convergence: with 10 images a class, the holdout's 2 are a
    fifth of what the head could learn from. Returns (head, epochs)."""
    head, epochs, _ = fit(start, x, y, np.arange(len(y)), np.zeros(0, int), replace(config, l2=l2))
    return head, epochs


def _predicted(head: Head, layout: Layout, features: np.ndarray) -> list[str]:
    x = features[:, layout.columns(head.taps)]
    return [head.labels[i] for i in head.logits(x).argmax(1)] if len(x) else []


def _judge(result: AdaptResult, old: Head, layout: Layout, features: np.ndarray, truth: list[str], new: Head,
           config: AdaptConfig, unguarded: bool, what: str) -> AdaptResult:
    """The guard's verdict on `new` against `old`, both scored on the same labelled `features`."""
    old_right = np.asarray([p == t for p, t in zip(_predicted(old, layout, features), truth, strict=True)], bool)
    new_pred = _predicted(new, layout, features)
    new_right = np.asarray([p == t for p, t in zip(new_pred, truth, strict=True)], bool)
    if len(truth):
        result.old_top1_before = round(100.0 * float(old_right.mean()), 2)
        result.old_top1_after = round(100.0 * float(new_right.mean()), 2)
    if not old.labels:  # an empty head (a bundle made from a model file): nothing it knew can be lost
        result.committed = True
        result.reason = "committed: the head had no classes yet, so there was nothing to lose"
        return result
    if not len(truth):
        result.committed = unguarded
        result.reason = ("committed unguarded: no holdout images of the classes the head already knows"
                         if unguarded else
                         f"not committed: no {what} images, so the guard cannot check them; include some, "
                         "or pass unguarded")
        return result
    paired = guard.Paired.of(old_right, new_right)
    verdict = (guard.fixed_margin(paired, config.margin, what=what) if config.margin is not None
               else guard.mcnemar(paired, alpha=config.alpha, min_effect=config.min_effect, what=what))
    result.committed, result.reason = verdict.commit, verdict.reason
    result.details = {**result.details, "guard": verdict.test}
    return result


def _imprint_only(head: Head, layout: Layout, features: np.ndarray, labels: list[str], counts: dict,
                  config: AdaptConfig, unguarded: bool) -> AdaptResult:
    """Only few-shot new classes: imprinted into the head in force, in its own input space; no other row changes."""
    x = features[:, layout.columns(head.taps)].astype(np.float32)
    grown = head
    for c in counts:
        grown = imprint(grown, x[[i for i, lab in enumerate(labels) if lab == c]], c)
    result = AdaptResult(False, "", grown, new_classes=tuple(counts), imprinted=tuple(counts), images=len(labels))
    return _judge(result, head, layout, features[:0], [], grown, config, unguarded, "old-class holdout")


def _restandardise(head: Head, layout: Layout, unlabelled: np.ndarray, source, config: AdaptConfig,
                   unguarded: bool) -> AdaptResult:
    """The head in force with its feature statistics moved to the unlabelled frames' (AdaBN at the head):
    blended with the old ones as if they were PRIOR_FRAMES frames, so a handful of frames moves them
    little. Its weights are unchanged."""
    if unlabelled is None or len(unlabelled) == 0:
        raise ConfigError("nothing to adapt from: no labelled images and no unlabelled frames",
                          "give labelled images (--data DIR) or unlabelled frames (--unlabelled DIR)")
    x = np.asarray(unlabelled[:, layout.columns(head.taps)], np.float32)
    if head.mean is None:
        if source is None:
            raise ConfigError("the bundle's own head has no feature statistics to move (its bundle carries no "
                              "features.npz)", "compile the bundle again with this edgetl, or adapt with labels first")
        mean_s, std_s = source
        cols = layout.columns(head.taps)
        head = rewritten(head, layout, head.taps, mean_s[cols], std_s[cols])
    mean, std = statistics(x)
    w = len(x) / (len(x) + PRIOR_FRAMES)
    new_mean = (w * mean + (1 - w) * head.mean).astype(np.float32)
    new_std = np.sqrt(w * std ** 2 + (1 - w) * head.std ** 2).astype(np.float32)
    candidate = replace(head, mean=new_mean, std=new_std)
    result = AdaptResult(unguarded, "", candidate, unlabelled=len(x), details={"statistics_weight": round(w, 4)})
    result.reason = ("committed unguarded: the statistics of the unlabelled frames have no labels to be checked by"
                     if unguarded else "")
    return result


def guard_with(result: AdaptResult, old: Head, layout: Layout, features: np.ndarray, labels: list[str],
               config: AdaptConfig, what: str = "checkset") -> AdaptResult:
    """Judge an unlabelled adaptation on labelled `features` (the bundle's checkset, or images given)."""
    return _judge(result, old, layout, features, [str(x) for x in labels], result.head, config, False, what)

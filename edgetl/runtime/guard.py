"""The commit decision for a new head: a paired test on the same holdout images, not a fixed margin.

The old and the new head are scored on the same images, so what differs between them is the
discordant pairs: `worse` images the old head got right and the new one gets wrong, `better`
the other way round. Under "the new head is no worse", each discordant image is a fair coin;
McNemar's exact test asks how surprising `worse` heads out of `worse + better` are (one-sided
binomial tail). A new head is refused only when its loss is both significant (p < `alpha`)
and large enough to matter (net loss >= `min_effect` points of the holdout). On 4 holdout
images per class one flipped image no longer decides; a real regression of a few points on a
hundred images still does. Standard library and numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ALPHA = 0.05  # the significance a loss must reach to refuse a head
MIN_EFFECT = 1.0  # points of holdout top-1 a significant net loss must reach to refuse it


def binomial_tail(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2): the exact one-sided McNemar p-value."""
    if k <= 0:
        return 1.0
    return min(1.0, sum(math.comb(n, i) for i in range(k, n + 1)) / 2 ** n)  # int / int: exact, any n


@dataclass(frozen=True)
class Paired:
    """Old and new head on the same `images`: how many each got right, and the discordant pairs."""

    images: int
    old_right: int
    new_right: int
    worse: int  # old right, new wrong
    better: int  # old wrong, new right

    @classmethod
    def of(cls, old_right: np.ndarray, new_right: np.ndarray) -> Paired:
        old_right, new_right = np.asarray(old_right, bool), np.asarray(new_right, bool)
        if old_right.shape != new_right.shape:
            raise ValueError("the two heads must be scored on the same images")
        return cls(int(old_right.size), int(old_right.sum()), int(new_right.sum()),
                   int((old_right & ~new_right).sum()), int((~old_right & new_right).sum()))

    @property
    def p_worse(self) -> float:
        """One-sided exact p-value of "the new head is worse" (1.0 without discordant pairs)."""
        return binomial_tail(self.worse, self.worse + self.better)

    @property
    def net_loss_points(self) -> float:
        """(worse - better) as points of holdout top-1 (negative: the new head is better)."""
        return 100.0 * (self.worse - self.better) / self.images if self.images else 0.0

    def to_dict(self) -> dict:
        return {"images": self.images, "old_right": self.old_right, "new_right": self.new_right,
                "worse": self.worse, "better": self.better, "p_worse": round(self.p_worse, 6),
                "net_loss_points": round(self.net_loss_points, 2)}


@dataclass(frozen=True)
class Verdict:
    commit: bool
    reason: str
    test: dict  # what decided: the rule, its figures (JSON-ready, kept in the head's record)


def mcnemar(paired: Paired, *, alpha: float = ALPHA, min_effect: float = MIN_EFFECT, what: str = "holdout") -> Verdict:
    """Refuse only a significant (p < alpha) net loss of at least `min_effect` points."""
    rule = {"rule": "mcnemar", "alpha": alpha, "min_effect_points": min_effect, **paired.to_dict()}
    counts = (f"{paired.worse} {what} image(s) lost, {paired.better} gained of {paired.images}, "
              f"McNemar exact p = {paired.p_worse:.3g}")
    if paired.p_worse < alpha and paired.net_loss_points >= min_effect:
        return Verdict(False, f"not committed: the new head is significantly worse on the {what} ({counts}; "
                              f"alpha {alpha:g}, min effect {min_effect:g} points)", rule)
    return Verdict(True, f"committed: no significant loss on the {what} ({counts}; alpha {alpha:g})", rule)


def fixed_margin(paired: Paired, margin: float, *, what: str = "holdout") -> Verdict:
    """The fixed rule (`--margin`): refuse a top-1 drop of more than `margin` points."""
    before, after = 100.0 * paired.old_right / paired.images, 100.0 * paired.new_right / paired.images
    rule = {"rule": "margin", "margin_points": margin, **paired.to_dict()}
    if after < before - margin:
        return Verdict(False, f"not committed: {what} top-1 would drop {before:.1f}% -> {after:.1f}% "
                              f"(more than {margin:g} points)", rule)
    return Verdict(True, f"committed: {what} top-1 {before:.1f}% -> {after:.1f}% (margin {margin:g})", rule)

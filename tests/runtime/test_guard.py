"""The commit guard on constructed paired outcomes: McNemar's exact test, both ways, and the fixed rule."""

import math

import numpy as np
import pytest

from edgetl.runtime import guard


def _outcomes(both: int, worse: int, better: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """Old and new head right/wrong on the same images: `worse` only the old head got, `better` only the new."""
    old = [True] * both + [True] * worse + [False] * better + [False] * neither
    new = [True] * both + [False] * worse + [True] * better + [False] * neither
    return np.asarray(old), np.asarray(new)


def test_the_exact_p_value_is_the_binomial_tail():
    assert guard.binomial_tail(0, 0) == 1.0
    assert guard.binomial_tail(4, 4) == pytest.approx(1 / 16)
    assert guard.binomial_tail(5, 6) == pytest.approx(7 / 64)
    assert guard.binomial_tail(8, 10) == pytest.approx(sum(math.comb(10, k) for k in (8, 9, 10)) / 1024)


def test_one_flipped_image_on_a_small_holdout_no_longer_refuses():
    """88 holdout images (4 per class): one lost image is 1.1 points, which a 1-point margin refused."""
    paired = guard.Paired.of(*_outcomes(80, 1, 0, 7))
    assert guard.mcnemar(paired).commit
    assert not guard.fixed_margin(paired, 1.0).commit  # the old rule, kept for --margin


def test_a_significant_real_loss_is_refused_with_its_counts():
    paired = guard.Paired.of(*_outcomes(70, 12, 1, 5))
    verdict = guard.mcnemar(paired)
    assert not verdict.commit and "significantly worse" in verdict.reason
    assert verdict.test["worse"] == 12 and verdict.test["better"] == 1 and verdict.test["p_worse"] < 0.01
    assert "12 " in verdict.reason and "p = " in verdict.reason


def test_a_head_that_gains_as_much_as_it_loses_is_committed():
    paired = guard.Paired.of(*_outcomes(60, 10, 10, 8))
    assert guard.mcnemar(paired).commit and paired.net_loss_points == 0


def test_a_significant_but_tiny_loss_is_below_the_minimum_effect():
    """On 10,000 images, 40 lost and 10 gained is significant, and 0.3 points: not worth refusing."""
    paired = guard.Paired.of(*_outcomes(9900, 40, 10, 50))
    assert paired.p_worse < 0.001
    assert guard.mcnemar(paired, min_effect=1.0).commit
    assert not guard.mcnemar(paired, min_effect=0.1).commit


def test_the_alpha_is_the_users():
    paired = guard.Paired.of(*_outcomes(40, 6, 1, 3))  # p = 8/128 = 0.0625
    assert guard.mcnemar(paired, alpha=0.05).commit
    assert not guard.mcnemar(paired, alpha=0.10).commit


def test_a_large_holdout_is_tested_exactly_without_overflow():
    """Over 1,023 discordant pairs 2.0 ** n overflows a float; the tail is computed in integers."""
    paired = guard.Paired.of(*_outcomes(3000, 600, 500, 900))
    assert 0 < paired.p_worse < 0.01 and not guard.mcnemar(paired).commit


def test_outcomes_of_different_lengths_are_refused():
    with pytest.raises(ValueError):
        guard.Paired.of(np.ones(3, bool), np.ones(4, bool))

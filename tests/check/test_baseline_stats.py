"""The statistics of `edgetl check --baseline`, without a device: McNemar's exact tail, the block
bootstrap's interval, and what a checkset is too small to resolve."""

import math

import numpy as np
import pytest

from edgetl.check import baseline
from edgetl.check.baseline import binomial_tail, flips_needed, ratio_interval, resolution_warning, resolvable_loss


def test_mcnemar_is_the_exact_one_sided_binomial_tail():
    assert binomial_tail(5, 5) == 0.5**5 < 0.05 <= binomial_tail(4, 4)  # 5 losses, none gained: significant
    assert binomial_tail(0, 0) == 1.0 and binomial_tail(0, 7) == 1.0
    assert binomial_tail(8, 10) == pytest.approx(sum(math.comb(10, k) for k in (8, 9, 10)) / 1024)
    assert flips_needed(0.05) == 5 and flips_needed(0.01) == 7
    assert resolvable_loss(24) == pytest.approx(20.83) and resolvable_loss(500) == 1.0


def test_the_interval_is_seeded_and_holds_one_for_the_same_frames():
    rng = np.random.default_rng(1)
    frames = rng.gamma(4.0, 0.1, 300)
    same = ratio_interval(frames, frames.copy(), 95, baseline.block_length(frames))
    assert same.low <= 1 <= same.high and same == ratio_interval(frames, frames.copy(), 95, 7)
    slower = ratio_interval(frames, frames * 1.3, 95, 7)
    assert slower.low > 1.05 and slower.ratio == pytest.approx(1.3, abs=1e-3)


def test_frames_the_host_preempted_are_left_out_when_enough_are_the_models_own():
    from edgetl.runtime.measure import Latency

    fast = tuple([1.0] * 90 + [9.0] * 10)
    lat = Latency(100, 0, 1, 1, 9, 9, 9, 1.8, fast, tuple([0] * 90 + [1] * 10))
    assert list(baseline.own_frames(lat)) == [1.0] * 90
    busy = Latency(100, 0, 1, 1, 9, 9, 9, 1.8, fast, tuple([1] * 60 + [0] * 40))
    assert baseline.own_frames(busy) is None  # too few frames of its own: all are compared
    assert baseline.own_frames(Latency(100, 0, 1, 1, 9, 9, 9, 1.8, fast)) is None  # an older runtime's line


def test_a_checkset_too_small_for_the_loss_asked_about_says_so_and_how_big_would_do():
    assert resolution_warning(500, 10, 1.0, 1.0, "x", "y") == ""
    warning = resolution_warning(24, 4, 1.0, 20.83, "the smallest significant loss", "--max-top1-loss")
    assert warning.startswith("warning: the smallest significant loss on 24 images is 20.83 points")
    assert "--checkset-per-class 125" in warning  # 500 images: 5 flips are then 1 point


def test_gate_thresholds_below_zero_are_refused():
    from edgetl.errors import ConfigError

    with pytest.raises(ConfigError, match="must be >= 0"):
        baseline.Gate(max_slowdown=-1).check()

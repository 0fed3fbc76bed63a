"""The fidelity benchmark's numbers (numbers in, numbers out): the taus and front agreement the
README quotes are computed by these functions."""

from __future__ import annotations

import math

import pytest

from bench.fidelity import front_agreement, front_indices, kendall, normalised_hypervolume, seed_to_seed_tau


def test_kendall_and_seed_to_seed_tau() -> None:
    assert kendall([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall([1, 2, 3, 4], [40, 30, 20, 10]) == pytest.approx(-1.0)
    assert kendall([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)  # one discordant pair of three
    # three seeds: pairs (0,1) tau 1, (0,2) tau 1/3, (1,2) tau 1/3
    assert seed_to_seed_tau([[1, 2, 3], [1, 2, 3], [1, 3, 2]]) == pytest.approx((1 + 1 / 3 + 1 / 3) / 3)
    assert math.isnan(seed_to_seed_tau([[1, 2, 3]]))


def test_front_indices_respect_the_metric_direction() -> None:
    quality, cost = [25.0, 24.0, 23.0, 22.0], [4.0, 2.0, 3.0, 1.0]  # map 2 is dominated by map 1
    assert sorted(front_indices(quality, cost, higher_is_better=True)) == [0, 1, 3]
    losses = [1.0, 2.0, 3.0, 4.0]  # lower is better: map 2 (loss 3, cost 3) is dominated by map 1
    assert sorted(front_indices(losses, cost, higher_is_better=False)) == [0, 1, 3]


def test_front_agreement_is_one_when_the_short_run_picks_the_long_front_and_less_otherwise() -> None:
    cost = [1.0, 2.0, 3.0]
    long = [20.0, 24.0, 25.0]
    assert front_agreement([21.0, 23.0, 24.0], long, cost, True) == pytest.approx(1.0)  # same order
    # the short run thinks the middle map is worse than the cheap one: it drops it from its front
    wrong = front_agreement([21.0, 20.5, 24.0], long, cost, True)
    assert 0.0 < wrong < 1.0
    # by hand: normalised points (loss, cost) of the long front: (1,0), (0.2,0.5), (0,1), reference (1.1, 1.1)
    full = normalised_hypervolume([0, 1, 2], long, cost, True)
    assert full == pytest.approx(0.1 * 1.1 + 0.8 * 0.6 + 0.2 * 0.1)
    assert wrong == pytest.approx(normalised_hypervolume([0, 2], long, cost, True) / full)

"""bench/fidelity.py's maths and its runs cache: numbers in, numbers out, no QAT."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

import bench.fidelity as fidelity
from bench.fidelity import (
    RunCache,
    front_agreement,
    front_indices,
    kendall,
    normalised_hypervolume,
    seed_to_seed_tau,
)

# three maps: quality (higher is better) and cost; map 1 is dominated by map 0 at the long fidelity
LONG = [25.0, 24.0, 23.0]
COST = [2.0, 3.0, 1.0]


def test_normalised_hypervolume_on_a_literal_case() -> None:
    # normalised (loss, cost): map 0 (0, 0.5), map 1 (0.5, 1), map 2 (1, 0); reference (1.1, 1.1)
    assert normalised_hypervolume([0], LONG, COST, True) == pytest.approx(1.1 * 0.6)
    assert normalised_hypervolume([0, 2], LONG, COST, True) == pytest.approx(1.1 * 0.6 + 0.1 * 0.5)
    assert normalised_hypervolume([0, 1, 2], LONG, COST, True) == pytest.approx(1.1 * 0.6 + 0.1 * 0.5)


def test_front_indices_and_agreement() -> None:
    assert sorted(front_indices(LONG, COST, True)) == [0, 2]
    assert front_agreement(LONG, LONG, COST, True) == pytest.approx(1.0)
    # a short run where map 2 dominates map 0 and map 1 is best reports maps 1 and 2, not map 0:
    # at the long fidelity that is (0.5, 1) and (1, 0) against (0, 0.5) and (1, 0)
    short = [23.5, 26.0, 24.0]
    assert sorted(front_indices(short, COST, True)) == [1, 2]
    expected = (0.6 * 0.1 + 0.1 * 1.0) / (1.1 * 0.6 + 0.1 * 0.5)
    assert front_agreement(short, LONG, COST, True) == pytest.approx(expected)


def test_run_cache_trains_once_and_persists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []

    def fake_train(workload: Any, assignment: Any, steps: int, seed: int, recipe: Any) -> float:
        calls.append((steps, seed))
        return 20.0 + seed

    monkeypatch.setattr(fidelity, "train", fake_train)
    path = tmp_path / "runs.json"
    cache = RunCache(path)
    assignment = {"conv1": "int8", "fc": "int4"}
    assert cache.quality(None, "w:{}", assignment, 10, 1) == 21.0  # type: ignore[arg-type]
    assert cache.quality(None, "w:{}", assignment, 10, 1) == 21.0  # type: ignore[arg-type]
    assert calls == [(10, 1)]
    again = RunCache(path, report_only=True)
    assert again.quality(None, "w:{}", assignment, 10, 1) == 21.0  # type: ignore[arg-type]
    with pytest.raises(SystemExit, match="missing cached run"):
        again.quality(None, "w:{}", assignment, 10, 2)  # type: ignore[arg-type]


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

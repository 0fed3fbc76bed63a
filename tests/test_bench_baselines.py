"""The selection programs of bench/baselines.py: numbers in, numbers out, checked against brute force."""

from __future__ import annotations

import itertools

import pytest

from bench.baselines import greedy_path, select_formats

# three layers, int8 or int4; int4 saves cost and adds score (sensitivity x perturbation)
SCORES = {"a": {"int8": 0.0, "int4": 5.0}, "b": {"int8": 0.0, "int4": 1.0}, "c": {"int8": 0.0, "int4": 2.5}}
COSTS = {"a": {"int8": 8.0, "int4": 4.0}, "b": {"int8": 4.0, "int4": 2.0}, "c": {"int8": 6.0, "int4": 3.0}}


def brute_force(budget: float) -> tuple[float, dict[str, str]]:
    best: tuple[float, dict[str, str]] | None = None
    for combo in itertools.product(("int8", "int4"), repeat=3):
        chosen = dict(zip("abc", combo, strict=True))
        if sum(COSTS[f][m] for f, m in chosen.items()) <= budget:
            score = sum(SCORES[f][m] for f, m in chosen.items())
            if best is None or score < best[0]:
                best = (score, chosen)
    assert best is not None
    return best


@pytest.mark.parametrize("budget", [9.0, 12.0, 13.0, 15.0, 18.0])
def test_integer_program_meets_the_budget_and_is_optimal(budget: float) -> None:
    chosen = select_formats(SCORES, COSTS, budget)
    assert chosen is not None
    assert sum(COSTS[f][m] for f, m in chosen.items()) <= budget
    assert sum(SCORES[f][m] for f, m in chosen.items()) == pytest.approx(brute_force(budget)[0])


def test_integer_program_on_a_literal_case() -> None:
    # 18 affords all int8; 15 needs 3 saved: c (2.5 for 3) beats b (1.0 for 2 -- not enough alone)
    assert select_formats(SCORES, COSTS, 18.0) == {"a": "int8", "b": "int8", "c": "int8"}
    assert select_formats(SCORES, COSTS, 15.0) == {"a": "int8", "b": "int8", "c": "int4"}
    assert select_formats(SCORES, COSTS, 8.0) is None  # below all-int4 (9)


@pytest.mark.parametrize("budget", [9.0, 12.0, 13.0, 15.0, 16.5, 18.0])
def test_linear_relaxation_rounds_within_the_budget(budget: float) -> None:
    chosen = select_formats(SCORES, COSTS, budget, integer=False)
    assert chosen is not None
    assert sum(COSTS[f][m] for f, m in chosen.items()) <= budget
    # never better than the integer optimum, and equal to it where that is the LP's vertex
    assert sum(SCORES[f][m] for f, m in chosen.items()) >= brute_force(budget)[0] - 1e-9


def test_greedy_path_flips_least_drop_per_saving_first() -> None:
    path = greedy_path({"a": 5.0, "b": 1.0, "c": 2.5}, {"a": 4.0, "b": 2.0, "c": 3.0})
    assert path == [[], ["b"], ["b", "c"], ["b", "c", "a"]]


class _FakeSetup:
    workload = None

    def ratio(self, assignment: dict[str, str]) -> float:
        return sum(v == "int4" for v in assignment.values()) / len(assignment)


def test_measure_trains_only_the_seeds_the_cache_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.baselines as baselines

    calls: list[tuple[int, int]] = []

    class Outcome:
        def __init__(self, quality: float) -> None:
            self.quality = quality

    def fake_run_trial(workload: object, assignment: dict[str, str], *, qat_steps: int, seed: int) -> Outcome:
        calls.append((qat_steps, seed))
        return Outcome(10.0 * qat_steps + seed)

    monkeypatch.setattr(baselines, "run_trial", fake_run_trial)
    setup = _FakeSetup()
    cache: dict[str, list[float]] = {}
    a = {"x": "int8", "y": "int4"}
    assert baselines.measure(setup, a, 2, 5, cache) == [50.0, 51.0]  # type: ignore[arg-type]
    assert baselines.measure(setup, a, 3, 5, cache) == [50.0, 51.0, 52.0]  # type: ignore[arg-type]
    assert baselines.measure(setup, a, 1, 5, cache) == [50.0]  # type: ignore[arg-type]
    assert baselines.measure(setup, a, 1, 7, cache) == [70.0]  # type: ignore[arg-type]  # steps are in the key
    assert calls == [(5, 0), (5, 1), (5, 2), (7, 0)]

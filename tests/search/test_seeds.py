"""search.study.seeds' selection programs: numbers in, numbers out, checked against brute force."""

from __future__ import annotations

import itertools

import pytest

from search.study.seeds import ensemble_scores, program_assignments, select_formats
from search.study.space import SearchSpace

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



# -- program seeds --------------------------------------------------------------------------------
COST = {"int4": 1.0, "int8": 2.0, "fp16": 4.0}


def cost_of(free: dict[str, str]) -> float:
    return sum(COST[v] for v in free.values())


def int8_layers(free: dict[str, str]) -> list[str]:
    return sorted(f for f, v in free.items() if v == "int8")


def test_one_map_per_level_keeps_the_most_sensitive_layers_int8() -> None:
    space = SearchSpace(choices={f: ("int8", "int4") for f in "abcd"}, pinned={}, pin_reasons={})
    scores = {f: {"int8": 0.0, "int4": s} for f, s in zip("abcd", (4.0, 1.0, 3.0, 2.0), strict=True)}
    # each layer costs 1 more in int8 than in int4: 3 levels split 0..4 at 1, 2, 3 layers in int8
    maps = program_assignments(space, [scores], cost_of, levels=3, max_points=10)
    assert [int8_layers(m) for m in maps] == [["a"], ["a", "c"], ["a", "c", "d"]]


def test_proxies_interleave_by_level_without_repeats_and_the_cap_keeps_the_cheapest_levels() -> None:
    space = SearchSpace(choices={f: ("int8", "int4") for f in "abcd"}, pinned={}, pin_reasons={})
    first = {f: {"int8": 0.0, "int4": s} for f, s in zip("abcd", (4.0, 1.0, 3.0, 2.0), strict=True)}
    second = {f: {"int8": 0.0, "int4": s} for f, s in zip("abcd", (4.0, 3.0, 1.0, 2.0), strict=True)}
    maps = program_assignments(space, [first, second], cost_of, levels=3, max_points=10)
    # level 1: both keep a (a repeat is dropped); level 2: a+c, then a+b; level 3: a+c+d, a+b+d
    assert [int8_layers(m) for m in maps] == [["a"], ["a", "c"], ["a", "b"], ["a", "c", "d"], ["a", "b", "d"]]
    assert program_assignments(space, [first, second], cost_of, levels=3, max_points=2) == maps[:2]
    assert program_assignments(space, [], cost_of, levels=3, max_points=2) == []


def test_a_tied_group_takes_the_summed_score_of_its_layers() -> None:
    # b is tied to a: the group {a, b} costs 2 above int4 (two layers) and scores 1 + 1.5 = 2.5 in
    # int4; one level of 0..4 is a budget of 2: the group in int8, or c and d
    space = SearchSpace(choices={"a": ("int8", "int4"), "c": ("int8", "int4"), "d": ("int8", "int4")},
                        pinned={}, pin_reasons={}, tied={"b": "a"})

    def tied_cost(free: dict[str, str]) -> float:
        return cost_of(space.expand(free))

    scores = {"a": {"int8": 0.0, "int4": 1.0}, "b": {"int8": 0.0, "int4": 1.5},
              "c": {"int8": 0.0, "int4": 2.0}, "d": {"int8": 0.0, "int4": 0.1}}
    maps = program_assignments(space, [scores], tied_cost, levels=1, max_points=10)
    assert maps == [{"a": "int8", "c": "int4", "d": "int4"}]  # the group's 2.5 > c and d's 2.1
    scores["b"]["int4"] = 0.5  # the group now scores 1.5 < 2.1
    assert program_assignments(space, [scores], tied_cost, levels=1, max_points=10) == [
        {"a": "int4", "c": "int8", "d": "int8"}]


def test_every_allowed_format_is_weighed() -> None:
    space = SearchSpace(choices={f: ("fp16", "int8", "int4") for f in "ab"}, pinned={}, pin_reasons={})
    scores = {"a": {"fp16": 0.0, "int8": 5.0, "int4": 9.0}, "b": {"fp16": 0.0, "int8": 0.1, "int4": 0.2}}
    # above int4: int8 costs 1, fp16 3 a layer; top 6; levels at 2, 4
    maps = program_assignments(space, [scores], cost_of, levels=2, max_points=10)
    assert maps == [{"a": "int8", "b": "int8"}, {"a": "fp16", "b": "int8"}]


def test_scores_in_tiny_units_still_order_the_layers() -> None:
    """A Fisher score in loss units can be 1e-10 a layer: below the solver's tolerances every map
    looks equally good unless the scores are rescaled (the same map came back at every level)."""
    space = SearchSpace(choices={f: ("int8", "int4") for f in "abcd"}, pinned={}, pin_reasons={})
    scores = {f: {"int8": 0.0, "int4": 1e-10 * s} for f, s in zip("abcd", (4.0, 1.0, 3.0, 2.0), strict=True)}
    maps = program_assignments(space, [scores], cost_of, levels=3, max_points=10)
    assert [int8_layers(m) for m in maps] == [["a"], ["a", "c"], ["a", "c", "d"]]


def test_the_ensemble_averages_proxies_scaled_to_one() -> None:
    loss_units = {"a": {"int8": 0.0, "int4": 4e-10}, "b": {"int8": 1e-10, "int4": 2e-10}}
    decibels = {"a": {"int8": 0.0, "int4": 0.5}, "b": {"int8": 0.0, "int4": 2.0}, "c": {"int4": 9.0}}
    ens = ensemble_scores([loss_units, decibels])
    assert ens.keys() == {"a", "b"}  # c: scored by one proxy only
    assert ens["a"] == pytest.approx({"int8": 0.0, "int4": (1.0 + 0.5 / 9.0) / 2})
    assert ens["b"] == pytest.approx({"int8": 0.125, "int4": (0.5 + 2.0 / 9.0) / 2})
    assert ensemble_scores([]) == {}

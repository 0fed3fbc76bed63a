"""The live Pareto front: numbers in, numbers out."""

from __future__ import annotations

import random

import pytest

from search import objective_vector, pareto_numbers


def brute_force(points: list[tuple[int, tuple[float, ...]]]) -> set[int]:
    def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
        return all(x <= y for x, y in zip(a, b, strict=True)) and a != b

    front = {n for n, v in points if not any(dominates(w, v) for _, w in points)}
    first_of_each: dict[tuple[float, ...], int] = {}
    for n, v in sorted(points):
        first_of_each.setdefault(v, n)
    return {n for n in front if first_of_each[dict(points)[n]] == n}


def test_two_objectives_literal() -> None:
    points = [
        (0, objective_vector(0.90, [100.0], True)),
        (1, objective_vector(0.95, [200.0], True)),
        (2, objective_vector(0.85, [150.0], True)),  # worse and dearer than 0
        (3, objective_vector(0.95, [200.0], True)),  # duplicate of 1
        (4, objective_vector(0.97, [400.0], True)),
    ]
    assert pareto_numbers(points) == {0, 1, 4}


def test_lower_is_better_metric() -> None:
    points = [(0, objective_vector(0.1, [10.0], False)), (1, objective_vector(0.2, [5.0], False)),
              (2, objective_vector(0.3, [6.0], False))]
    assert pareto_numbers(points) == {0, 1}


@pytest.mark.parametrize("n_objectives", [2, 3])
def test_matches_brute_force(n_objectives: int) -> None:
    rng = random.Random(n_objectives)
    points = [(i, tuple(float(rng.randint(0, 20)) for _ in range(n_objectives))) for i in range(300)]
    assert pareto_numbers(points) == brute_force(points)


def test_empty() -> None:
    assert pareto_numbers([]) == set()

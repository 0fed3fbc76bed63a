"""Pareto fronts and hypervolume: numbers in, numbers out (plus the front of trial outcomes).

Every objective vector here is "smaller is better" in each coordinate; callers negate a quality that
is maximised (:func:`objective_vector`).

Optuna computes both (``optuna.study._multi_objective._is_pareto_front``,
``optuna._hypervolume.compute_hypervolume``) but only in private modules whose names and signatures
change between releases; its public API gives the front of a *study* (``Study.best_trials``) and a
hypervolume *plot*, not functions over arbitrary points (the service's stored trials, a benchmark's
table).  So the two small algorithms live here, once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from search.results import TrialOutcome

Vector = Sequence[float]


def objective_vector(quality: float, costs: Sequence[float], higher_is_better: bool) -> tuple[float, ...]:
    """(quality, *costs) as an all-minimised vector."""
    return (-quality if higher_is_better else quality, *costs)


def dominates(a: Vector, b: Vector) -> bool:
    """``a`` is no worse than ``b`` everywhere and better somewhere (both minimised)."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def non_dominated(vectors: Sequence[Vector], *, keep_duplicates: bool = True) -> list[int]:
    """Indices (ascending) of the vectors no other vector dominates.

    Identical vectors do not dominate each other: all are kept, or with ``keep_duplicates=False``
    only the first of them in input order.  Sorting lexicographically means a vector can only be
    dominated by an earlier one, and (dominance being transitive) by one already on the front:
    O(n log n + n x front size), fast for 10,000 points.
    """
    order = sorted(range(len(vectors)), key=lambda i: (tuple(vectors[i]), i))
    front: list[int] = []
    seen: set[tuple[float, ...]] = set()
    for i in order:
        vec = tuple(vectors[i])
        if vec in seen:
            if keep_duplicates:
                front.append(i)
            continue
        if not any(dominates(vectors[j], vec) for j in front):
            front.append(i)
            seen.add(vec)
    return sorted(front)


def pareto_numbers(points: Sequence[tuple[int, Vector]]) -> set[int]:
    """Trial numbers of the non-dominated ``(number, vector)`` points; of identical vectors, the
    lowest number (the service's live front over its stored trials)."""
    ordered = sorted(points, key=lambda p: p[0])
    return {ordered[i][0] for i in non_dominated([v for _, v in ordered], keep_duplicates=False)}


def hypervolume_2d(points: Sequence[Vector], reference: Vector) -> float:
    """Area dominated by ``points`` (both coordinates minimised) and bounded by ``reference``: a
    staircase sweep in x, adding the strip each point lowers.  Points beyond the reference add nothing.

    >>> hypervolume_2d([(0.0, 1.0), (1.0, 0.0)], (2.0, 2.0))
    3.0
    """
    if len(reference) != 2 or any(len(p) != 2 for p in points):
        raise ValueError("reference: hypervolume_2d takes 2-D points and a 2-D reference point")
    area, best_y = 0.0, reference[1]
    for x, y in sorted((p[0], p[1]) for p in points if p[0] < reference[0] and p[1] < reference[1]):
        if y < best_y:
            area += (reference[0] - x) * (best_y - y)
            best_y = y
    return area


def assignment_key(assignment: Mapping[str, str]) -> str:
    """One string per precision map, whatever the order of its layers."""
    return json.dumps(dict(sorted(assignment.items())))


def pareto_front(outcomes: Sequence[TrialOutcome], higher_is_better: bool) -> list[TrialOutcome]:
    """Non-dominated outcomes (feasible ones only if any is feasible), sorted by first cost.
    Duplicated assignments count once (the lowest trial number)."""
    unique: dict[str, TrialOutcome] = {}
    for o in sorted(outcomes, key=lambda o: o.number):
        unique.setdefault(assignment_key(o.assignment), o)
    pool = [o for o in unique.values() if o.feasible] or list(unique.values())
    vectors = [objective_vector(o.quality, list(o.costs.values()), higher_is_better) for o in pool]
    front = [pool[i] for i in non_dominated(vectors)]
    return sorted(front, key=lambda o: (tuple(o.costs.values()), o.number))

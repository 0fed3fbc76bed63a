"""Multi-fidelity maths: which maps move up a rung, which front points are within noise of a cheaper
one, and how well the short rung predicts the long one.  Numbers in, numbers out: no study, no QAT.

Promotion is asynchronous successive halving (ASHA, Li et al. 2020, "A System for Massively
Parallel Hyperparameter Tuning") with the single-objective "top 1/eta by score" replaced by "top
1/eta by non-dominated rank, ties by crowding distance" (the NSGA-II order, Deb et al. 2002): Optuna's
pruners compare one intermediate value, so the multi-objective ranking is ours.

Every objective vector here is all-minimised (see :func:`search.study.pareto.objective_vector`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

from scipy.stats import kendalltau

from search.study.pareto import dominates

Vector = Sequence[float]

TAU_WARNING_BELOW = 0.8  # issue 10: a job whose short-vs-long rank agreement falls below this says so


def non_dominated_ranks(vectors: Sequence[Vector]) -> list[int]:
    """Rank of each vector: 0 for the non-dominated ones, 1 for those only rank-0 vectors
    dominate, and so on (NSGA-II's fast non-dominated sort, O(n^2 x objectives)).

    >>> non_dominated_ranks([(0.0, 1.0), (1.0, 0.0), (1.0, 1.0), (2.0, 2.0)])
    [0, 0, 1, 2]
    """
    n = len(vectors)
    dominated_by_count = [0] * n
    dominating: list[list[int]] = [[] for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            if dominates(vectors[i], vectors[j]):
                dominating[i].append(j)
                dominated_by_count[j] += 1
            elif dominates(vectors[j], vectors[i]):
                dominating[j].append(i)
                dominated_by_count[i] += 1
    ranks = [0] * n
    current = [i for i in range(n) if dominated_by_count[i] == 0]
    rank = 0
    while current:
        following = []
        for i in current:
            ranks[i] = rank
            for j in dominating[i]:
                dominated_by_count[j] -= 1
                if dominated_by_count[j] == 0:
                    following.append(j)
        current = following
        rank += 1
    return ranks


def crowding_distances(vectors: Sequence[Vector]) -> list[float]:
    """NSGA-II crowding distance of each vector within ``vectors`` (one rank): the sum over
    objectives of the normalised gap between its two neighbours; the extremes get infinity, so a
    front's cheapest and best-quality ends are kept first."""
    n = len(vectors)
    if n <= 2:
        return [math.inf] * n
    distance = [0.0] * n
    for k in range(len(vectors[0])):
        order = sorted(range(n), key=lambda i: vectors[i][k])
        low, high = vectors[order[0]][k], vectors[order[-1]][k]
        distance[order[0]] = distance[order[-1]] = math.inf
        if high == low:
            continue
        for pos in range(1, n - 1):
            distance[order[pos]] += (vectors[order[pos + 1]][k] - vectors[order[pos - 1]][k]) / (high - low)
    return distance


def promotion_order(vectors: Sequence[Vector]) -> list[int]:
    """Indices best first: by non-dominated rank, then larger crowding distance (within the rank),
    then the first coordinate (the quality, minimised), then the index."""
    ranks = non_dominated_ranks(vectors)
    crowding = [0.0] * len(vectors)
    for rank in set(ranks):
        members = [i for i, r in enumerate(ranks) if r == rank]
        for i, d in zip(members, crowding_distances([vectors[i] for i in members]), strict=True):
            crowding[i] = d
    return sorted(range(len(vectors)), key=lambda i: (ranks[i], -crowding[i], vectors[i][0], i))


def promotable(members: Mapping[int, Vector], eta: int) -> list[int]:
    """The keys (trial numbers) of a rung's members that belong to the next rung: the top
    ``floor(len / eta)`` in :func:`promotion_order` (ASHA: a member is promoted once enough others
    have reached its rung to show it is in the top 1/eta)."""
    keys = sorted(members)
    order = promotion_order([members[k] for k in keys])
    return [keys[i] for i in order[: len(keys) // eta]]


def within_noise_of_cheaper(
    qualities: Sequence[float], stds: Sequence[float], costs: Sequence[Vector], higher_is_better: bool,
    min_gain: float | None,
) -> list[bool]:
    """For each front point: is its quality gain over some point that costs no more in every
    objective (and less in one) within noise?  Noise is ``max(min_gain, std of either point)``.
    Such a point is not a separate trade-off: the cheaper one is as good as far as we can measure."""
    sign = 1.0 if higher_is_better else -1.0
    out = []
    for i in range(len(qualities)):
        merged = False
        for j in range(len(qualities)):
            no_dearer = all(a <= b for a, b in zip(costs[j], costs[i], strict=True))
            if j == i or not no_dearer or tuple(costs[j]) == tuple(costs[i]):
                continue
            gain = sign * (qualities[i] - qualities[j])
            if gain <= max(min_gain or 0.0, stds[i], stds[j]):
                merged = True
                break
        out.append(merged)
    return out


def noise_level(stds: Sequence[float], min_gain: float | None) -> float | None:
    """The largest seed spread measured so far (None before any re-evaluation), at least ``min_gain``."""
    if not stds:
        return None
    return max(*stds, min_gain or 0.0)


def reevaluation_todo(qualities: Sequence[float], n_evaluations: Sequence[int], noise: float | None) -> list[int]:
    """Indices of front points (in cost order) to give extra seeds: those with a neighbour within
    noise, i.e. within twice the largest seed spread seen (the difference of two noisy scores);
    before any spread is known, the closest pair in quality, which measures it.  Points already
    measured more than once are not repeated."""
    pairs = list(itertools.pairwise(range(len(qualities))))
    if not pairs:
        return []
    if noise is None:
        close = [min(pairs, key=lambda ij: abs(qualities[ij[0]] - qualities[ij[1]]))]
    else:
        close = [(i, j) for i, j in pairs if abs(qualities[i] - qualities[j]) <= 2 * noise]
    return sorted({k for pair in close for k in pair if n_evaluations[k] == 1})


def rank_agreement(short: Sequence[float], long: Sequence[float]) -> float | None:
    """Kendall's tau-b between two quality lists (None with fewer than 2 points or no variation)."""
    if len(short) < 2:
        return None
    tau = kendalltau(short, long).statistic
    return None if tau is None or not math.isfinite(float(tau)) else float(tau)

"""The assignments a search tries before its sampler: numbers in, assignments out (no study).

1. The uniform maps the space allows, one per format (all-int8, int4 inside the pinned first/last,
   w4a8, w8a16, fp16 inside...).
2. A one-layer-at-a-time sensitivity sweep: all-int8 with one free layer in int4.
3. Once the sweep is scored, a greedy front over it: flip layers to int4 in order of least quality
   lost per unit of cost saved, as AIMET AMP's greedy phase.
4. Where the sweep does not fit the budget (a deep model: one QAT run per layer would spend most of
   it before the sampler starts), the greedy path is ordered by a proxy sensitivity that costs
   seconds instead (:func:`proxy_greedy_assignments`, with :mod:`search.study.sensitivity`'s scores).
5. The maps the proxy programs pick at a few cost levels (:func:`program_assignments`): integer
   programs over the proxies' ensemble (:func:`ensemble_scores`), HAWQ-V3's Hessian-trace scores and
   AutoQuantize's Fisher scores.  A program weighs every allowed format of every layer at once, where
   a greedy path only flips int8 to int4 in one order; on denoise-deep HAWQ's map was best at 0.355x
   BitOPs and the ensemble's at 0.554x (bench/results/baselines/denoise-deep.md).

Each assignment here is a *free* one (fqn -> format name for the free layers only): what a study
enqueues as a trial's parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from search.study.pareto import assignment_key, hypervolume_2d
from search.study.space import SearchSpace

Assignment = dict[str, str]  # fqn -> format name
LayerCost = Callable[[str, str], float]  # (fqn, format name) -> the layer's first cost objective


def baseline_assignments(space: SearchSpace, layer_cost: LayerCost | None = None) -> list[Assignment]:
    """Uniform maps for every format all free layers allow (split formats such as ``w4a8`` too):
    all-int8 first (the sweep's base), then all-int4, then the others cheapest first by ``layer_cost``
    (in the space's order without it).  A uniform split-format map can dominate what a search over
    int4/int8 mixes finds: on ``denoise``, w4a8 inside measured within 0.05 dB of all-int8 at 51% of
    its BitOPs, and no search without it as a seed found it in 24 trials."""
    common = [fmt for fmt in next(iter(space.choices.values()), ())
              if all(fmt in c for c in space.choices.values())]

    def total(fmt: str) -> float:
        if layer_cost is None:
            return 0.0
        return sum(layer_cost(fqn, fmt) for fqn in space.choices) + sum(
            layer_cost(fqn, fmt) for fqn in space.tied)

    head = [fmt for fmt in ("int8", "int4") if fmt in common]
    rest = sorted((fmt for fmt in common if fmt not in head), key=lambda fmt: (total(fmt), common.index(fmt)))
    return [{fqn: fmt for fqn in space.choices} for fmt in [*head, *rest]]


def sensitivity_assignments(space: SearchSpace, base: str = "int8", probe: str = "int4") -> list[Assignment]:
    """All layers at ``base`` except one at ``probe``, for every free layer that allows both."""
    if not all(base in c for c in space.choices.values()):
        return []
    out = []
    for fqn, options in space.choices.items():
        if probe in options:
            free = {f: base for f in space.choices}
            free[fqn] = probe
            out.append(free)
    return out


def greedy_assignments(
    space: SearchSpace, sensitivity: Mapping[str, float], cost_saving: Mapping[str, float], *, base: str = "int8",
    probe: str = "int4",
) -> list[Assignment]:
    """Flip layers from ``base`` to ``probe`` in order of quality lost per cost saved (least
    first); one assignment per prefix length 2..n-1 (1 and n are in the sweep/baselines)."""
    order = sorted(sensitivity, key=lambda f: sensitivity[f] / max(cost_saving.get(f, 0.0), 1e-12))
    out = []
    for k in range(2, len(order)):
        free = {f: base for f in space.choices}
        for fqn in order[:k]:
            free[fqn] = probe
        out.append(free)
    return out


def sweep_fits(n_sweep: int, n_trials: int) -> bool:
    """A one-layer QAT sweep is worth its cost when it takes at most a third of the trial budget
    (the rest: baselines, the greedy path and the sampler)."""
    return n_sweep <= max(3, n_trials // 3)


def proxy_greedy_assignments(
    space: SearchSpace,
    sensitivity: Mapping[str, float],
    cost_of: Callable[[Assignment], float],
    max_points: int,
    *,
    base: str = "int8",
    probe: str = "int4",
) -> list[Assignment]:
    """The greedy path ordered by a proxy ``sensitivity`` (fqn -> score, higher = more sensitive),
    thinned to at most ``max_points`` maps spread evenly along it (cheapest end included)."""
    flippable = [f for f, options in space.choices.items() if base in options and probe in options]
    if len(flippable) < 3 or max_points < 1 or not all(base in o for o in space.choices.values()):
        return []
    all_base = {f: base for f in space.choices}
    saving = {f: cost_of(all_base) - cost_of({**all_base, f: probe}) for f in flippable}
    path = greedy_assignments(space, {f: sensitivity.get(f, 0.0) for f in flippable}, saving,
                              base=base, probe=probe)
    if len(path) <= max_points:
        return path
    step = (len(path) - 1) / max(1, max_points - 1)
    picks = sorted({round(i * step) for i in range(max_points)})
    return [path[i] for i in picks]


def greedy_after_sweep(
    space: SearchSpace,
    quality_of: Mapping[str, float],
    cost_of: Callable[[Assignment], float],
    higher_is_better: bool,
) -> list[Assignment] | None:
    """The greedy assignments once the all-int8 baseline and the whole sweep are scored; None before
    (and always for a sweep of fewer than 3 layers: the sweep and baselines cover its greedy points).

    ``quality_of`` maps :func:`~search.study.pareto.assignment_key` of a free assignment to its quality;
    ``cost_of`` prices a free assignment (the first cost objective).
    """
    sweep = sensitivity_assignments(space)
    if len(sweep) < 3:
        return None
    base = {f: "int8" for f in space.choices}
    if assignment_key(base) not in quality_of or not all(assignment_key(s) in quality_of for s in sweep):
        return None
    sign = 1.0 if higher_is_better else -1.0
    base_quality, base_cost = quality_of[assignment_key(base)], cost_of(base)
    sensitivity, saving = {}, {}
    for s in sweep:
        fqn = next(f for f, v in s.items() if v == "int4")
        sensitivity[fqn] = max(sign * (base_quality - quality_of[assignment_key(s)]), 0.0)
        saving[fqn] = base_cost - cost_of(s)
    return greedy_assignments(space, sensitivity, saving)


def cheapest_assignment(space: SearchSpace, layer_cost: LayerCost) -> Assignment:
    """Every free layer at its cheapest allowed format (ties: the first in the space's order).

    Not always a uniform baseline: where a profile forbids int4 on some kinds (depthwise convs on
    the NPU profile) the all-int4 baseline does not exist, yet int4 elsewhere and int8 there is the
    cheapest map the space holds, one end of every front."""
    return {fqn: min(options, key=lambda name: layer_cost(fqn, name)) for fqn, options in space.choices.items()}


def dominated_formats(
    scored: Sequence[tuple[Assignment, float]], layer_cost: LayerCost, higher_is_better: bool, noise: float = 0.0,
) -> dict[str, dict[str, str]]:
    """Formats that cost more for a layer and measured no better: ``{fqn: {format: cheaper format}}``.

    The evidence is a pair of scored free assignments that differ only by one swap ``f -> g`` on a
    set of layers (the all-int8 and all-fp16 baselines; the all-int8 baseline and one sweep point),
    where ``f`` costs more than ``g`` in each of those layers and the map with ``f`` scores no better
    than the one with ``g`` (within ``noise``, in metric units).  Then ``f`` is dominated by ``g`` in
    each of those layers.  The first evidence found for a (layer, format) wins."""
    sign = 1.0 if higher_is_better else -1.0
    out: dict[str, dict[str, str]] = {}
    for i, (a, quality_a) in enumerate(scored):
        for b, quality_b in scored[i + 1 :]:
            if a.keys() != b.keys():
                continue
            changed = [fqn for fqn in a if a[fqn] != b[fqn]]
            swaps = {(a[fqn], b[fqn]) for fqn in changed}
            if len(swaps) != 1:
                continue
            fmt_a, fmt_b = next(iter(swaps))
            if all(layer_cost(fqn, fmt_a) > layer_cost(fqn, fmt_b) for fqn in changed):
                costly, cheap, gain = fmt_a, fmt_b, sign * (quality_a - quality_b)
            elif all(layer_cost(fqn, fmt_b) > layer_cost(fqn, fmt_a) for fqn in changed):
                costly, cheap, gain = fmt_b, fmt_a, sign * (quality_b - quality_a)
            else:
                continue
            if gain <= noise:
                for fqn in changed:
                    out.setdefault(fqn, {}).setdefault(costly, cheap)
    return out


def select_formats(
    scores: Mapping[str, Mapping[str, float]], costs: Mapping[str, Mapping[str, float]], budget: float,
    *, integer: bool = True,
) -> dict[str, str] | None:
    """One format per layer minimising the summed score with the summed cost <= ``budget``.

    ``scores[fqn][fmt]`` (lower = better) and ``costs[fqn][fmt]`` over the same formats.  With
    ``integer`` an exact integer program (HAWQ-V3, ``scipy.optimize.milp``); without, the linear
    relaxation (AutoQuantize), each layer then taking its largest share and a split layer its
    cheapest used format, which keeps the budget.  None when even the cheapest formats exceed it.

    >>> select_formats({"a": {"int8": 0.0, "int4": 5.0}, "b": {"int8": 0.0, "int4": 1.0}},
    ...                {"a": {"int8": 2.0, "int4": 1.0}, "b": {"int8": 2.0, "int4": 1.0}}, 3.0)
    {'a': 'int8', 'b': 'int4'}
    """
    pairs = [(fqn, fmt) for fqn in scores for fmt in scores[fqn]]
    index = {p: i for i, p in enumerate(pairs)}
    c = np.array([scores[f][m] for f, m in pairs], dtype=float)
    # to order 1: scores in loss units can be 1e-10, below the solver's tolerances
    c /= float(np.abs(c).max(initial=0.0)) or 1.0
    one_each = np.zeros((len(scores), len(pairs)))
    for row, fqn in enumerate(scores):
        for fmt in scores[fqn]:
            one_each[row, index[(fqn, fmt)]] = 1.0
    cost_row = np.array([[costs[f][m] for f, m in pairs]], dtype=float)
    constraints = [LinearConstraint(one_each, 1.0, 1.0), LinearConstraint(cost_row, -np.inf, budget)]
    result = milp(c, constraints=constraints, integrality=np.full(len(pairs), 1 if integer else 0),
                  bounds=Bounds(0.0, 1.0))
    if result.x is None:
        return None
    chosen = {}
    for fqn in scores:
        shares = {fmt: result.x[index[(fqn, fmt)]] for fmt in scores[fqn]}
        used = [fmt for fmt, x in shares.items() if x > 1e-6]
        best = max(shares, key=lambda fmt: shares[fmt])
        chosen[fqn] = best if len(used) == 1 else min(used, key=lambda fmt: costs[fqn][fmt])
    return chosen


def ensemble_scores(proxies: Sequence[Mapping[str, Mapping[str, float]]]) -> dict[str, dict[str, float]]:
    """The mean of the proxies' scores, each divided by its largest magnitude first (proxies come in
    different units: dB, loss units).  Layers and formats: those every proxy scores.

    >>> ensemble_scores([{"a": {"int4": 2.0}, "b": {"int4": 1.0}}, {"a": {"int4": 0.0}, "b": {"int4": 1e-9}}])
    {'a': {'int4': 0.5}, 'b': {'int4': 0.75}}
    """
    if not proxies:
        return {}
    scales = [max((abs(v) for by_fmt in p.values() for v in by_fmt.values()), default=0.0) or 1.0 for p in proxies]
    out: dict[str, dict[str, float]] = {}
    for fqn, by_fmt in proxies[0].items():
        for fmt in by_fmt:
            if all(fmt in p.get(fqn, {}) for p in proxies):
                total = sum(p[fqn][fmt] / k for p, k in zip(proxies, scales, strict=True))
                out.setdefault(fqn, {})[fmt] = total / len(proxies)
    return out


def program_assignments(
    space: SearchSpace,
    proxies: Sequence[Mapping[str, Mapping[str, float]]],
    cost_of: Callable[[Assignment], float],
    levels: int,
    max_points: int,
) -> list[Assignment]:
    """The maps integer programs pick from proxy scores at ``levels`` cost levels, at most ``max_points``.

    ``proxies``: per proxy, ``scores[fqn][fmt]`` (higher = more sensitive) for every free layer,
    tied ones included (a group's score is the sum of its layers').  Each program minimises the
    summed score with the map's cost (``cost_of`` a free assignment, taken as additive over layers)
    at most a level; the levels split the range between the cheapest and the costliest map evenly.
    The result interleaves the proxies level by level (cheapest level first) without repeats, so
    a cap keeps both the spread of levels and every proxy."""
    if levels < 1 or max_points < 1 or not proxies:
        return []
    leaders = {fqn: [fqn, *(f for f, lead in space.tied.items() if lead == fqn)] for fqn in space.choices}
    first = {fqn: options[0] for fqn, options in space.choices.items()}
    base_cost = cost_of(first)
    costs: dict[str, dict[str, float]] = {}
    for fqn, options in space.choices.items():
        delta = {fmt: cost_of({**first, fqn: fmt}) - base_cost for fmt in options}
        low = min(delta.values())  # each layer's cost above its cheapest format
        costs[fqn] = {fmt: d - low for fmt, d in delta.items()}
    top = sum(max(c.values()) for c in costs.values())
    summed = [{fqn: {fmt: sum(scores.get(f, {}).get(fmt, 0.0) for f in members) for fmt in space.choices[fqn]}
               for fqn, members in leaders.items()} for scores in proxies]
    out: list[Assignment] = []
    seen: set[str] = set()
    for level in range(1, levels + 1):
        budget = top * level / (levels + 1)
        for group_scores in summed:
            chosen = select_formats(group_scores, costs, budget + 1e-9 * max(1.0, abs(top)))
            if chosen is None or assignment_key(chosen) in seen:
                continue
            seen.add(assignment_key(chosen))
            out.append(chosen)
            if len(out) >= max_points:
                return out
    return out


def front_neighbours(
    space: SearchSpace, front: Sequence[Assignment], layer_cost: LayerCost, tried: set[str], *,
    upward: bool = False,
) -> list[Assignment]:
    """The untried one-layer neighbours of front points that could dominate them.

    For each front point (a free assignment), in the order given: every free layer moved to its next
    cheaper format (the costliest of its formats that costs less there), then the maps of equal cost:
    one layer in another format that costs the same there, or two layers' formats swapped where that
    keeps the cost.  A cheaper neighbour dominates its point if it scores no worse; an equal-cost one if
    it scores better.  With ``upward`` also every layer one format costlier (the next costlier of its
    formats): a map that may fill the gap to the next front point (it cannot dominate its own).  Within
    each kind the cheapest neighbours come first; a map in ``tried`` (:func:`~search.study.pareto.assignment_key`)
    or already listed is left out.  Costs are ``layer_cost`` summed over a group's layers (tied layers
    follow their leader)."""
    members = {fqn: [fqn, *(f for f, lead in space.tied.items() if lead == fqn)] for fqn in space.choices}

    def cost(fqn: str, fmt: str) -> float:
        return sum(layer_cost(m, fmt) for m in members[fqn])

    def close(a: float, b: float) -> bool:
        return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))

    cheaper: list[tuple[float, Assignment]] = []
    equal: list[tuple[float, Assignment]] = []
    dearer: list[tuple[float, Assignment]] = []
    for point in front:
        base = sum(cost(fqn, fmt) for fqn, fmt in point.items())
        for fqn, fmt in point.items():
            here = cost(fqn, fmt)
            options = [(cost(fqn, o), o) for o in space.choices[fqn] if o != fmt]
            lower = [(c, o) for c, o in options if c < here and not close(c, here)]
            if lower:
                c, o = max(lower)
                cheaper.append((base - here + c, {**point, fqn: o}))
            higher = [(c, o) for c, o in options if c > here and not close(c, here)]
            if upward and higher:
                c, o = min(higher)
                dearer.append((base - here + c, {**point, fqn: o}))
            equal += [(base, {**point, fqn: o}) for c, o in options if close(c, here)]
        names = list(point)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                fa, fb = point[a], point[b]
                if fa == fb or fb not in space.choices[a] or fa not in space.choices[b]:
                    continue
                if close(cost(a, fb) + cost(b, fa), cost(a, fa) + cost(b, fb)):
                    equal.append((base, {**point, a: fb, b: fa}))
    out: list[Assignment] = []
    seen = set(tried)
    kinds = [cheaper, equal, dearer]
    for _, neighbour in [item for kind in kinds for item in sorted(kind, key=lambda x: x[0])]:
        key = assignment_key(neighbour)
        if key not in seen:
            seen.add(key)
            out.append(neighbour)
    return out


def additive_effects(
    space: SearchSpace, scored: Sequence[tuple[Assignment, float]], ridge: float = 1e-2,
) -> dict[str, dict[str, float]]:
    """Each (layer, format)'s effect on quality in an additive model, ``quality ~ b + sum of effects``,
    fitted by ridge-regularised least squares to the scored free assignments: HAWQ's and AMP's
    assumption that layers lose quality independently, fitted to the QAT runs themselves.  An effect
    no scored map tells apart from the others stays near 0 (optimistic: a move nothing has measured
    looks free).

    >>> space = SearchSpace(choices={"a": ("int4", "int8"), "b": ("int4", "int8")}, pinned={}, pin_reasons={})
    >>> e = additive_effects(space, [({"a": "int8", "b": "int8"}, 10.0), ({"a": "int4", "b": "int8"}, 8.0),
    ...                              ({"a": "int8", "b": "int4"}, 9.0)])
    >>> round(e["a"]["int8"] - e["a"]["int4"], 1), round(e["b"]["int8"] - e["b"]["int4"], 1)
    (2.0, 1.0)
    """
    columns = [(fqn, fmt) for fqn, options in space.choices.items() for fmt in options]
    if not scored:
        return {fqn: dict.fromkeys(options, 0.0) for fqn, options in space.choices.items()}
    index = {c: i for i, c in enumerate(columns)}
    x = np.zeros((len(scored), len(columns)))
    y = np.array([q for _, q in scored], dtype=float)
    for row, (free, _) in enumerate(scored):
        for fqn, fmt in free.items():
            if (fqn, fmt) in index:
                x[row, index[(fqn, fmt)]] = 1.0
    y = y - y.mean()
    x = x - x.mean(axis=0)  # the intercept, unpenalised, taken out by centring
    weights = np.linalg.solve(x.T @ x + ridge * np.eye(len(columns)), x.T @ y)
    out: dict[str, dict[str, float]] = {}
    for (fqn, fmt), w in zip(columns, weights, strict=True):
        out.setdefault(fqn, {})[fmt] = float(w)
    return out


def rank_neighbours(
    candidates: Sequence[Assignment],
    front: Sequence[tuple[Assignment, float, float]],
    effects: Mapping[str, Mapping[str, float]],
    cost_of: Callable[[Assignment], float],
    higher_is_better: bool,
) -> list[Assignment]:
    """``candidates`` (one-layer neighbours of the ``front``'s points: (free assignment, quality, first
    cost)) in order of the hypervolume each would add to the front, predicted from its nearest front
    point's measured quality plus the additive model's change (:func:`additive_effects`); equal
    predictions keep the candidates' order (cheaper neighbours first).  Hypervolume on (quality, cost),
    each scaled to the front's range, with the reference point 10% beyond its worst corner."""
    if not front:
        return list(candidates)
    sign = 1.0 if higher_is_better else -1.0
    qualities = [sign * q for _, q, _ in front]
    costs = [c for _, _, c in front]
    q_span = (max(qualities) - min(qualities)) or 1.0
    c_span = (max(costs) - min(costs)) or max(abs(max(costs)), 1.0)
    reference = (-(min(qualities) - 0.1 * q_span) / q_span, (max(costs) + 0.1 * c_span) / c_span)
    points = [(-q / q_span, c / c_span) for q, c in zip(qualities, costs, strict=True)]
    base = hypervolume_2d(points, reference)

    def predicted(candidate: Assignment) -> float:
        def distance(point: Assignment) -> int:
            return sum(candidate[f] != point[f] for f in candidate)

        nearest, quality, _ = min(front, key=lambda p: distance(p[0]))
        change = sum(effects.get(f, {}).get(candidate[f], 0.0) - effects.get(f, {}).get(nearest[f], 0.0)
                     for f in candidate if candidate[f] != nearest[f])
        return sign * (quality + change)

    gains = [hypervolume_2d([*points, (-predicted(c) / q_span, cost_of(c) / c_span)], reference) - base
             for c in candidates]
    order = sorted(range(len(candidates)), key=lambda i: (-round(gains[i], 12), i))
    return [candidates[i] for i in order]

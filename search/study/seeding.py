"""Seeding a study: which maps are tried first, in what order, and what the seed trials teach.

``SeedPlan`` queues one uniform map per format and the cheapest allowed map, then either the one-layer
QAT sweep (where it fits a third of the budget) or the greedy path ordered by the Fisher proxy, and the
proxy programs' maps.  Once the all-int8 map is trained it is trained again with another seed (the seed
spread); once the seeds are scored, the greedy path over the sweep is queued and the formats the seeds
show to cost more for no gain beyond that spread are marked dominated (``DominatedFormatsSampler`` then
rarely samples them).  In the last :data:`NEIGHBOUR_SHARE` of the budget the front's untried one-layer
neighbours go first; after a sampler proposal that repeated a trained map, an untried map next to it.
Maps go to the study one at a time, only when its queue is empty, so a retry of a dead process's trial
(queued in the study) always runs first.  The maps themselves come from :mod:`search.study.seeds` (numbers
in, numbers out).

What every process sharing the study must agree on is a study user attribute: the sweep-or-proxy
choice, the dominated formats, whether the greedy path was queued, which trial measured the seed spread.
"""

from __future__ import annotations

import logging
import random
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from search.study.attrs import Source, StudyKey, TrialAttrs, TrialKey, is_cached, reeval_key
from search.study.ledger import Ledger
from search.study.objective import SearchSetup
from search.study.pareto import assignment_key
from search.study.seeds import (
    Assignment,
    additive_effects,
    baseline_assignments,
    cheapest_assignment,
    dominated_formats,
    ensemble_scores,
    front_neighbours,
    greedy_after_sweep,
    program_assignments,
    proxy_greedy_assignments,
    rank_neighbours,
    sensitivity_assignments,
    sweep_fits,
)

log = logging.getLogger("mixq.search")

ATTR_GREEDY = StudyKey.GREEDY
ATTR_DOMINATED = StudyKey.DOMINATED
ATTR_SENSITIVITY = StudyKey.SENSITIVITY
ATTR_NOISE = StudyKey.NOISE
PROGRAM_LEVELS = 6  # cost levels at which the proxy programs pick a map
PTQ_MAX_S = 60.0  # the PTQ proxy (one evaluation per layer and format) is skipped where it would take longer
KEEP_DOMINATED = 0.1  # probability that a sampled dominated format is kept (so a wrong call can be undone)
NEIGHBOUR_SHARE = 0.5  # the last half of the trial budget checks the front's one-layer neighbours first


def tried_maps(trials: Sequence[FrozenTrial]) -> set[str]:
    """:func:`~search.study.pareto.assignment_key` of every map the trials hold, queued ones included (their
    ``fixed_params``)."""
    return {assignment_key(t.system_attrs.get("fixed_params", t.params)) for t in trials}


LEGACY_CONSTRAINTS = "constraints"  # the system attribute optuna-dashboard (0.21) reads: a list of floats


def mark_for_dashboards(study: optuna.Study, trial: FrozenTrial) -> None:
    """Before a trial finishes (a sampler's ``after_trial``, where Optuna's own ``constraints_func``
    writes): its feasibility constraint also as the list that optuna-dashboard reads (the samplers read
    ``Trial.set_constraint``'s ``constraints:quality_drop``; both say the same, so ``trial.constraints``
    is feasible exactly when it was), and a cached repeat's ``repeat_of``, the trained trial it reuses."""
    storage = study._storage
    named = {k: v for k, v in trial.constraints.items() if k != "0"}
    if named and LEGACY_CONSTRAINTS not in trial.system_attrs:
        storage.set_trial_system_attr(trial._trial_id, LEGACY_CONSTRAINTS, [named[k] for k in sorted(named)])
    if is_cached(trial) and TrialKey.REPEAT_OF not in trial.user_attrs:
        key = assignment_key(trial.params)
        twin = min((t.number for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                    if not is_cached(t) and assignment_key(t.params) == key), default=None)
        if twin is not None:
            storage.set_trial_user_attr(trial._trial_id, str(TrialKey.REPEAT_OF), twin)


class DominatedFormatsSampler(optuna.samplers.BaseSampler):
    """``base``, except that a format marked dominated for a layer (study attribute
    ``mixq:dominated``) is replaced by its cheaper equal with probability ``1 - keep``.

    A categorical parameter's choices cannot change within an Optuna study, so the dominated formats
    stay in the space and are thinned here instead; the trial's params record what was trained.
    Enqueued (fixed) parameters never reach the sampler."""

    def __init__(self, base: optuna.samplers.BaseSampler, seed: int, keep: float = KEEP_DOMINATED) -> None:
        self.base = base
        self.keep = keep
        self._rng = random.Random(seed)
        self._dominated: tuple[int, dict[str, dict[str, str]]] = (-1, {})

    def _thin(self, study: optuna.Study, trial: FrozenTrial, params: dict[str, Any]) -> dict[str, Any]:
        if self._dominated[0] != trial.number:
            self._dominated = (trial.number, dict(study.user_attrs.get(ATTR_DOMINATED, {})))
        dominated = self._dominated[1]
        out = dict(params)
        for name, value in params.items():
            cheaper = dominated.get(name, {}).get(value) if isinstance(value, str) else None
            if cheaper is not None and self._rng.random() >= self.keep:
                out[name] = cheaper
        return out

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.base.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._thin(study, trial, self.base.sample_relative(study, trial, search_space))

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        value = self.base.sample_independent(study, trial, param_name, param_distribution)
        return self._thin(study, trial, {param_name: value})[param_name]

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        mark_for_dashboards(study, trial)
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()
        self._rng = random.Random()


class SeedPlan:
    """One process's seed queue for a (possibly shared) study.

    ``trial_budget()`` says how many first-rung trials the budget affords (it may grow wiser as
    trials finish: a time budget); ``completed()`` lists the study's finished trials."""

    def __init__(self, study: optuna.Study, setup: SearchSetup, trial_budget: Callable[[], int],
                 completed: Callable[[], list[FrozenTrial]], trials_left: Callable[[], int] | None = None,
                 front: Callable[[], list[tuple[Assignment, float, float]]] | None = None) -> None:
        self.study = study
        self.setup = setup
        self.spec = setup.spec
        self.trial_budget = trial_budget
        self.completed = completed
        self.trials_left = trials_left  # first-rung trials the budget still affords
        self.front = front  # the current front: (free assignment, quality, first cost) per point
        self.queue: list[tuple[Assignment, Source]] = []  # (free assignment, source), not yet enqueued
        self.sensitivity_pending = False  # the sweep-or-proxy choice waits for the baselines' durations
        self.repeated: Assignment | None = None  # a sampler proposal served from the cache: try a new map next

    def start(self) -> None:
        space = self.setup.space
        if self.spec.seed_with_baselines:
            self.enqueue(baseline_assignments(space, self.layer_cost), Source.BASELINE)
            # after the baselines, so where all-int4 exists it keeps its place (skip_if_exists)
            self.enqueue([cheapest_assignment(space, self.layer_cost)], Source.CHEAPEST)
        # a time budget says how many trials fit only once some trials ran: decide after the baselines
        self.sensitivity_pending = self.spec.seed_with_sensitivity
        if self.sensitivity_pending and not (self.spec.timeout_s is not None and self.queue):
            self.seed_sensitivity()

    def seed_sensitivity(self) -> None:
        """Queue the one-layer QAT sweep where it fits the budget, else the proxy-ordered greedy path;
        the first process to decide records the choice in the study, the others follow it."""
        self.sensitivity_pending = False
        choice = self.study.user_attrs.get(ATTR_SENSITIVITY)
        if choice is None:
            choice = "sweep" if self.sweep_fits() else "proxy"
            self.study.set_user_attr(ATTR_SENSITIVITY, choice)
        if choice == "sweep":
            self.enqueue(sensitivity_assignments(self.setup.space), Source.SENSITIVITY)
        else:
            self.enqueue(self.proxy_greedy(), Source.PROXY)
        self.enqueue(self.program_seeds(), Source.PROGRAM)

    def sweep_fits(self) -> bool:
        """Whether the one-layer QAT sweep fits the budget; else a proxy orders the greedy path."""
        return sweep_fits(len(sensitivity_assignments(self.setup.space)), self.trial_budget())

    def proxy_greedy(self) -> list[Assignment]:
        """Greedy maps ordered by the Fisher proxy (a few forward/backward passes): on a 17-layer
        denoiser it ranked layers like one-layer int4 QAT with Kendall tau 0.85, the PTQ drop 0.77
        (bench/results/sensitivity/denoise-deep.md), in seconds instead of 17 QAT runs."""
        from search.study.sensitivity import fisher_sensitivity

        space = self.setup.space
        scores = fisher_sensitivity(self.setup.workload, layers=list(space.choices), formats=("int4",),
                                    device=self.spec.device)
        sensitivity = {r.fqn: r.score for r in scores}
        # what ordered the search, for the result's layers (the dashboard's sensitivity panel shows them)
        self.study.set_user_attr(StudyKey.PROXY_SCORES, {fqn: float(v) for fqn, v in sensitivity.items()})
        # a third of the budget, as the sweep would have had
        return proxy_greedy_assignments(space, sensitivity, self.first_cost, max(1, self.trial_budget() // 3))

    def program_seeds(self) -> list[Assignment]:
        """The maps integer programs pick at :data:`PROGRAM_LEVELS` cost levels, at most a sixth of the
        trial budget, from three proxy scores (every allowed format): their ensemble (the mean of the
        Hessian-trace, Fisher and PTQ scores, each scaled to 1), HAWQ-V3's Hessian trace alone and
        AutoQuantize's Fisher alone.  On denoise-deep at 0.55x BitOPs the ensemble's map measured
        24.41 dB after 200 QAT steps (3 seeds) where HAWQ's gave 24.22 and Fisher's 24.20
        (bench/results/baselines/denoise-deep.md).  Seconds of forward/backward passes; a proxy the model cannot
        run (no second derivative for some op, say) is skipped with a log line: seeds only order the
        search."""
        from search.study.sensitivity import fisher_sensitivity, hessian_sensitivity, ptq_sensitivity, scores_by_layer

        space = self.setup.space
        max_points = self.trial_budget() // 6
        if max_points < 1 or len(space.choices) < 3:
            return []
        layers = [*space.choices, *space.tied]
        formats = sorted({fmt for options in space.choices.values() for fmt in options})
        proxies = []
        for proxy in (hessian_sensitivity, fisher_sensitivity, ptq_sensitivity):
            if proxy is ptq_sensitivity and not self.ptq_affordable(len(layers) * len(formats)):
                continue
            try:
                records = proxy(self.setup.workload, layers=layers, formats=formats, device=self.spec.device)
            except Exception as exc:  # noqa: BLE001 - any failure of an optional proxy only loses its seeds
                log.warning("seeds: %s skipped: %s", proxy.__name__, exc)
                continue
            proxies.append(scores_by_layer(records))
        programs = [ensemble_scores(proxies), *proxies[:2]] if len(proxies) > 1 else proxies
        return program_assignments(space, programs, self.first_cost, PROGRAM_LEVELS, max_points)

    def ptq_affordable(self, evaluations: int) -> bool:
        """Whether ``evaluations`` evaluations of the model (the PTQ proxy: one per layer and format) fit
        :data:`PTQ_MAX_S`, or a twentieth of a time budget, timed by one evaluation of the fp32 model."""
        import copy

        model = copy.deepcopy(self.setup.workload.model).eval()
        started = time.perf_counter()
        self.setup.workload.evaluate(model)
        predicted = evaluations * (time.perf_counter() - started)
        limit = PTQ_MAX_S if self.spec.timeout_s is None else min(PTQ_MAX_S, self.spec.timeout_s / 20)
        if predicted > limit:
            log.warning("seeds: the PTQ proxy skipped: %d evaluations would take about %.0f s (limit %.0f s)",
                        evaluations, predicted, limit)
            return False
        return True

    def enqueue(self, free_assignments: list[Assignment], source: Source) -> None:
        """Add seeds to this process's queue; :meth:`enqueue_next` hands them to the study one at a time."""
        self.queue += [(free, source) for free in free_assignments]

    def enqueue_next(self) -> None:
        """Queue the next map to try, only when the study's queue is empty (a queued trial is a retry
        of a dead process's trial, or a seed another process queued, and runs first): after a sampler
        proposal that repeated a trained map, an untried map next to it; the uniform maps, the
        cheapest and the one-layer sweep; in the last :data:`NEIGHBOUR_SHARE` of the budget, the
        front's untried one-layer neighbours; else the next seed not tried yet (none: the sampler
        proposes)."""
        trials = self.study.get_trials(deepcopy=False)
        if any(t.state is TrialState.WAITING for t in trials):
            return
        tried = tried_maps(trials)
        repeated, self.repeated = self.repeated, None
        if repeated is not None:
            fresh = self.untried_near(repeated, tried)
            if fresh is not None:
                self.study.enqueue_trial(fresh, user_attrs={TrialKey.SOURCE: Source.RESAMPLE}, skip_if_exists=True)
                return
        # the uniform maps, the cheapest and the one-layer sweep (the sensitivity users read) are never
        # left untried for neighbours
        while self.queue and self.queue[0][1] in (Source.BASELINE, Source.CHEAPEST, Source.SENSITIVITY):
            free, source = self.queue.pop(0)
            if assignment_key(free) not in tried:
                self.study.enqueue_trial(free, user_attrs={TrialKey.SOURCE: source}, skip_if_exists=True)
                return
        if self.polishing():
            neighbour = self.best_neighbour(tried)
            if neighbour is not None:
                self.study.enqueue_trial(neighbour, user_attrs={TrialKey.SOURCE: Source.NEIGHBOUR}, skip_if_exists=True)
                return
        while self.queue or self.sensitivity_pending:
            if not self.queue:
                self.seed_sensitivity()
                continue
            free, source = self.queue.pop(0)
            if assignment_key(free) not in tried:
                self.study.enqueue_trial(free, user_attrs={TrialKey.SOURCE: source}, skip_if_exists=True)
                return

    def best_neighbour(self, tried: set[str]) -> Assignment | None:
        """The untried one-layer neighbour of a front point that would add the most to the front, as an
        additive model fitted to every trained map predicts (``search.study.seeds.rank_neighbours``): the
        cheaper and equal-cost ones that could dominate a point, and the costlier ones that could fill
        a gap.  None when every neighbour has been tried."""
        front = self.front() if self.front else []
        space = self.setup.space
        candidates = front_neighbours(space, [free for free, _, _ in front], self.layer_cost, tried, upward=True)
        # a format the seeds showed to cost more for no gain is not a neighbour to try (except where a
        # front point already has it there)
        dominated: dict[str, dict[str, str]] = self.study.user_attrs.get(ATTR_DOMINATED, {})
        on_front = {(fqn, fmt) for free, _, _ in front for fqn, fmt in free.items()}
        candidates = [c for c in candidates
                      if all((fqn, fmt) in on_front or fmt not in dominated.get(fqn, {}) for fqn, fmt in c.items())]
        if not candidates:
            return None
        scored = [({k: str(v) for k, v in t.params.items()}, float(t.values[0])) for t in self.completed()
                  if t.values and not is_cached(t) and len(t.params) == len(space.choices)]
        ranked = rank_neighbours(candidates, front, additive_effects(space, scored), self.first_cost,
                                 self.setup.workload.higher_is_better)
        return ranked[0]

    def polishing(self) -> bool:
        """In the last :data:`NEIGHBOUR_SHARE` of the trial budget (at least one trial)?"""
        if (not self.spec.check_front_neighbours or self.trials_left is None or self.front is None
                or self.sensitivity_pending):
            return False
        reserve = max(1, round(NEIGHBOUR_SHARE * self.trial_budget()))
        return self.trials_left() <= reserve

    def repeated_map(self, trial: FrozenTrial) -> None:
        """``trial`` was a sampler proposal served from the cache (a map already trained): the next
        trial is an untried map next to it, so a repeat costs no trial and the search still moves."""
        if is_cached(trial) and TrialAttrs.of(trial).source is Source.SAMPLER:
            self.repeated = {k: str(v) for k, v in trial.params.items()}

    def untried_near(self, free: Assignment, tried: set[str]) -> Assignment | None:
        """An untried map one layer away from ``free`` (a random one), else any untried map (up to
        1,000 random draws); None when none is found."""
        space = self.setup.space
        rng = random.Random(f"{self.spec.seed}:{assignment_key(free)}:{len(tried)}")
        near = [{**free, fqn: fmt} for fqn, options in space.choices.items() for fmt in options if fmt != free[fqn]]
        rng.shuffle(near)
        for candidate in near:
            if assignment_key(candidate) not in tried:
                return candidate
        for _ in range(1000):
            candidate = {fqn: rng.choice(options) for fqn, options in space.choices.items()}
            if assignment_key(candidate) not in tried:
                return candidate
        return None

    def layer_cost(self, fqn: str, fmt: str) -> float:
        """One layer's first cost objective in one format (from the setup's table, built once)."""
        return self.setup.layer_cost(fqn, fmt)

    def first_cost(self, free: Assignment) -> float:
        """A whole map's first cost objective (pins included)."""
        return next(iter(self.setup.costs(self.setup.full_assignment(free)).values()))

    def seed_assignments(self) -> list[Assignment]:
        space, spec = self.setup.space, self.spec
        out = []
        if spec.seed_with_baselines:
            out += [*baseline_assignments(space, self.layer_cost), cheapest_assignment(space, self.layer_cost)]
        if spec.seed_with_sensitivity and self.study.user_attrs.get(ATTR_SENSITIVITY) == "sweep":
            out += sensitivity_assignments(space)
        return out

    def noise_probe_due(self, ledger: Ledger) -> FrozenTrial | None:
        """The trained all-int8 seed trial while the seed spread is not measured yet (and front points
        get extra seeds at all: ``reevaluate_front``); then it is trained once more with the first
        re-evaluation seed, a re-evaluation that counts like the front's (QAT steps, not trials).  The
        spread tells which gains of a costlier format are noise (:meth:`learn`)."""
        if not (self.spec.seed_with_baselines and self.spec.reevaluate_front > 0) or ATTR_NOISE in ledger.attrs:
            return None
        if not all("int8" in options for options in self.setup.space.choices.values()):
            return None
        key = assignment_key({fqn: "int8" for fqn in self.setup.space.choices})
        return next((t for t in ledger.completed() if assignment_key(t.params) == key), None)

    def seed_noise(self, attrs: dict[str, Any]) -> float | None:
        """What a gain must exceed to count: ``min_gain``, or the seed spread of the all-int8 map (the
        difference of its two seeds' scores) where larger; None while that probe is still running."""
        floor = self.spec.min_gain or 0.0
        number = attrs.get(ATTR_NOISE)
        if number is None or number < 0:
            return floor
        rec = attrs.get(reeval_key(number))
        if not isinstance(rec, dict) or not rec.get("qualities"):
            return None if isinstance(rec, dict) and rec.get("qualities") is None else floor
        trial = next((t for t in self.completed() if t.number == number), None)
        if trial is None or not trial.values:
            return floor
        qualities = [float(trial.values[0]), *(float(q) for q in rec["qualities"])]
        return max(floor, 2.0 * statistics.pstdev(qualities))

    def learn(self) -> None:
        """Once every seed map is scored: queue the greedy maps, and mark the formats the seeds show
        to cost more for no better quality, within the measured seed spread (the sampler then rarely
        picks them)."""
        attrs = self.study.user_attrs
        if attrs.get(ATTR_GREEDY) and ATTR_DOMINATED in attrs:
            return
        if self.spec.seed_with_sensitivity and ATTR_SENSITIVITY not in attrs:
            return  # the sweep-or-proxy choice is not made yet
        setup = self.setup
        quality_of = {assignment_key(t.params): t.values[0] for t in self.completed()
                      if t.values and not is_cached(t)}
        seeds = self.seed_assignments()
        if not seeds or not all(assignment_key(s) in quality_of for s in seeds):
            return
        # the seed spread about to be measured, or being measured (None): the marking waits for it
        noise = None if self.noise_probe_due(Ledger.read(self.study, 0)) is not None else self.seed_noise(attrs)
        if ATTR_DOMINATED not in attrs and noise is not None:
            scored = [(s, quality_of[assignment_key(s)]) for s in seeds]
            dominated = dominated_formats(scored, self.layer_cost, setup.workload.higher_is_better, noise)
            self.study.set_user_attr(ATTR_DOMINATED, dominated)
        if self.spec.seed_with_sensitivity and not attrs.get(ATTR_GREEDY):
            greedy = greedy_after_sweep(setup.space, quality_of, self.first_cost, setup.workload.higher_is_better)
            self.study.set_user_attr(ATTR_GREEDY, True)
            if greedy is not None:
                self.queue += [(free, Source.GREEDY) for free in greedy]

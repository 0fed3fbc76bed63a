"""The Optuna multi-objective search loop: ``run_search(spec)``.

It evaluates per-layer precision maps with short QAT runs and returns the Pareto front of
(quality, cost...).  Sample efficiency comes from:

1. Seeding (``search/seeds.py``): the uniform baselines, the one-layer sensitivity sweep, then a
   greedy front over the sweep.  All of it counts in the budget: they are real trials.  Seeds are
   queued one at a time, when the study's queue is empty, so a retry always runs before them.
2. A seeded multi-objective sampler (TPE by default; NSGA-II, random).
3. A cache (``search/objective.py``): an assignment already evaluated is never trained again (its
   values are reused and the repeat does not count against the budget).
4. Noise-aware reporting: front candidates are re-evaluated with extra seeds; each front point
   reports mean and spread, and the front is recomputed on the means.

Several processes can share one study through an Optuna RDB storage (SQLite on one machine,
PostgreSQL beyond): the budget is the study's, not the process's; each trial takes a budget slot
atomically before it trains (``search.storage.claim_budget_slot``).  Heartbeats mark a dead
process's trial FAIL and re-enqueue the same parameters (bounded retries).  A search whose trials
keep failing on their own (``spec.max_consecutive_failures`` in a row) stops with the cause.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timedelta

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from search.cost import cost_model, model_costs
from search.formats import parse_format
from search.layers import LayerInfo, discover_layers
from search.objective import Evaluator, Objective, SearchSetup, outcome_of
from search.pareto import assignment_key, pareto_front
from search.profiles import TargetProfile, load_profile
from search.seeds import Assignment, baseline_assignments, greedy_after_sweep, sensitivity_assignments
from search.space import build_space
from search.spec import (
    SamplerName,
    SearchError,
    SearchLayer,
    SearchProgress,
    SearchResult,
    SearchSpec,
    TrialOutcome,
)
from search.storage import claim_budget_slot, open_storage
from search.train import fp32_quality, run_trial
from search.workloads import Workload, load_workload

_ATTR_FP32 = "mixq:fp32_quality"
_ATTR_REEVAL = "mixq:reeval:"  # + trial number -> list of extra qualities

OnTrial = Callable[[TrialOutcome, SearchProgress], None]


def make_sampler(name: SamplerName, seed: int) -> optuna.samplers.BaseSampler:
    if name is SamplerName.NSGA2:
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
    if name is SamplerName.RANDOM:
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=6)


def _directions(spec: SearchSpec, higher_is_better: bool) -> list[StudyDirection]:
    quality = StudyDirection.MAXIMIZE if higher_is_better else StudyDirection.MINIMIZE
    return [quality] + [StudyDirection.MINIMIZE] * len(spec.cost_objectives)


class _Search:
    """One process's part of a (possibly shared) study: seed it, run trials until the budget is
    spent, re-evaluate the front, assemble the result."""

    def __init__(self, setup: SearchSetup, on_trial: OnTrial | None, should_stop: Callable[[], bool] | None,
                 on_progress: Callable[[SearchProgress], None] | None) -> None:
        self.setup = setup
        self.spec = setup.spec
        self.on_trial = on_trial
        self.on_progress = on_progress
        self.should_stop = should_stop or (lambda: False)
        spec = setup.spec
        self.storage = open_storage(spec.storage, spec.max_retries, spec.heartbeat_interval_s, spec.grace_period_s)
        seed = spec.seed if spec.storage is None else spec.seed + os.getpid()  # processes explore differently
        try:
            self.study = optuna.create_study(
                storage=self.storage, study_name=spec.study_name, load_if_exists=True,
                directions=_directions(spec, setup.workload.higher_is_better),
                sampler=make_sampler(spec.sampler, seed),
            )
        except ValueError as exc:  # e.g. directions differ from an existing study of that name
            raise SearchError(f"study_name: {exc}") from None
        self.started = time.monotonic()
        self.seed_queue: list[tuple[Assignment, str]] = []  # (free assignment, source), not yet enqueued
        self.greedy_queued = False

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> SearchResult:
        fp32 = self.fp32_quality()
        objective = Objective(self.setup, self.study, fp32)
        if self.spec.seed_with_baselines:
            self.seed_queue += [(free, "baseline") for free in baseline_assignments(self.setup.space)]
        if self.spec.seed_with_sensitivity:
            self.seed_queue += [(free, "sensitivity") for free in sensitivity_assignments(self.setup.space)]
        while not self.should_stop():
            state = self.budget_state()
            if state == "done":
                break
            if state == "wait":
                time.sleep(min(1.0, self.spec.heartbeat_interval_s))
                self.fail_stale_trials()
                continue
            self.enqueue_next_seed()
            self.step(objective)
            self.stop_if_failing()
            self.maybe_enqueue_greedy()
        if not self.should_stop():
            self.reevaluate_front()
        return self.result(fp32)

    def fp32_quality(self) -> float:
        value = self.study.user_attrs.get(_ATTR_FP32)
        if value is None:
            value = fp32_quality(self.setup.workload, self.spec.device)
            self.study.set_user_attr(_ATTR_FP32, value)
        return float(value)

    def completed(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))

    def progress(self, message: str = "") -> SearchProgress:
        unique = sum(1 for t in self.completed() if not t.user_attrs.get("cached"))
        values = [t.values[0] for t in self.completed() if t.values]
        best = None if not values else max(values) if self.setup.workload.higher_is_better else min(values)
        return SearchProgress(unique, self.spec.n_trials, best, message)

    def budget_state(self) -> str:
        """``run`` another trial, ``wait`` (the budget is taken by trials running elsewhere, which
        may finish or turn out stale), or ``done``."""
        if self.spec.timeout_s is not None and time.monotonic() - self.started >= self.spec.timeout_s:
            return "done"
        trials = self.study.get_trials(deepcopy=False)
        done = sum(1 for t in trials if t.state is TrialState.COMPLETE and not t.user_attrs.get("cached"))
        running = sum(1 for t in trials if t.state is TrialState.RUNNING)
        seen = {assignment_key(t.params) for t in trials if t.state is TrialState.COMPLETE}
        hard_cap = 4 * self.spec.n_trials + 10  # repeats and failures cannot loop forever
        if done >= self.spec.n_trials or len(trials) >= hard_cap or len(seen) >= self.setup.space.size:
            return "done"
        return "run" if done + running < self.spec.n_trials else "wait"

    def enqueue_next_seed(self) -> None:
        """Queue the next seed not tried yet, only when the study's queue is empty: a queued trial is
        a retry of a dead process's trial (or a seed another process queued), and runs first."""
        trials = self.study.get_trials(deepcopy=False)
        if any(t.state is TrialState.WAITING for t in trials):
            return
        tried = {assignment_key(t.system_attrs.get("fixed_params", t.params)) for t in trials}
        while self.seed_queue:
            free, source = self.seed_queue.pop(0)
            if assignment_key(free) not in tried:
                self.study.enqueue_trial(free, user_attrs={"source": source}, skip_if_exists=True)
                return

    def stop_if_failing(self) -> None:
        """Raise :class:`SearchError` once the last ``max_consecutive_failures`` finished trials all
        failed with an error of their own (a dead process's trial is retried, not counted)."""
        limit = self.spec.max_consecutive_failures
        finished = [
            t for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
            if t.state is TrialState.COMPLETE or "fail_reason" in t.user_attrs
        ]
        last = sorted(finished, key=lambda t: t.number)[-limit:]
        if len(last) == limit and all(t.state is TrialState.FAIL for t in last):
            raise SearchError(
                f"search stopped: {limit} trials in a row failed (max_consecutive_failures={limit}); "
                f"last: trial {last[-1].number}: {last[-1].user_attrs['fail_reason']}"
            )

    def maybe_enqueue_greedy(self) -> None:
        if not self.spec.seed_with_sensitivity or self.greedy_queued:
            return
        setup = self.setup
        quality_of = {assignment_key(t.params): t.values[0] for t in self.completed() if t.values}

        def first_cost(free: Assignment) -> float:
            costs = model_costs(self.spec.cost_objectives, setup.profile, setup.graph, {**setup.space.pinned, **free})
            return next(iter(costs.values()))

        greedy = greedy_after_sweep(setup.space, quality_of, first_cost, setup.workload.higher_is_better)
        if greedy is None:
            return
        # every process computes the same greedy seeds from the same sweep; the queue dedups them
        self.greedy_queued = True
        self.seed_queue += [(free, "greedy") for free in greedy]

    # -- one trial ---------------------------------------------------------------------------
    def step(self, objective: Objective) -> None:
        """Run one trial.  ``study.optimize(n_trials=1)`` rather than ask/tell: it brings the
        heartbeat thread and the failure boundary (a failing trial is recorded FAIL, the loop goes
        on), as in optuna's own ``_run_trial``, which also fails stale trials first; only the
        trials that died before their first heartbeat are ours to handle here."""
        if self.storage is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._fail_trials_without_heartbeat()
        self.study.optimize(
            self._within_budget(objective), n_trials=1, catch=(Exception,), callbacks=[self._after_optimize_trial]
        )

    def _within_budget(self, objective: Objective) -> Callable[[optuna.Trial], tuple[float, ...]]:
        """``objective`` behind an atomic claim of a budget slot (shared studies).  A trial that loses
        the race is pruned (it never trained) and its queued parameters are queued again."""

        def run(trial: optuna.Trial) -> tuple[float, ...]:
            if self.storage is not None and not claim_budget_slot(
                self.storage, self.study.study_name, trial.number, self.spec.n_trials
            ):
                frozen = next(t for t in self.study.get_trials(deepcopy=False) if t.number == trial.number)
                fixed = frozen.system_attrs.get("fixed_params")
                if fixed:
                    source = frozen.user_attrs.get("source", "sampler")
                    self.study.enqueue_trial(fixed, user_attrs={"source": source}, skip_if_exists=False)
                raise optuna.TrialPruned("budget: every slot is taken by trials running elsewhere")
            return objective(trial)

        return run

    def _after_optimize_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state is TrialState.COMPLETE and self.on_trial is not None and not trial.user_attrs.get("cached"):
            self.on_trial(outcome_of(trial, self.setup), self.progress())

    def fail_stale_trials(self) -> None:
        """Mark trials of dead processes FAIL; the storage's callback re-enqueues their params."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)
            self._fail_trials_without_heartbeat()

    def _fail_trials_without_heartbeat(self) -> None:
        """Optuna skips RUNNING trials that never recorded a heartbeat (a process killed between
        ``ask`` and its heartbeat thread's first beat): they would stay RUNNING forever.  Our
        objective stamps ``worker`` right after the first beat, so a RUNNING trial without it,
        older than the grace period, died in that gap: fail it and retry its parameters."""
        if self.storage is None:
            return
        now = datetime.now()
        grace = timedelta(seconds=self.spec.grace_period_s)
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if "worker" in t.user_attrs or t.datetime_start is None or now - t.datetime_start <= grace:
                continue
            try:
                if self.storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                    RetryHeartbeatStaleTrialCallback(max_retry=self.spec.max_retries)(self.study, t)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue

    # -- the front and the result ------------------------------------------------------------
    def outcomes(self) -> list[TrialOutcome]:
        """One outcome per trained trial; repeats served from the cache are not evaluations."""
        attrs = self.study.user_attrs
        return [
            outcome_of(t, self.setup, attrs.get(f"{_ATTR_REEVAL}{t.number}", ()))
            for t in self.completed()
            if not t.user_attrs.get("cached")
        ]

    def reevaluate_front(self) -> None:
        """Extra seeds for the current front candidates (noise-aware reporting)."""
        if self.spec.reevaluate_front == 0:
            return
        # a point's mean can fall below one that was dominated before; later rounds give the new
        # front members their extra seeds too (usually one or two points; bounded at 4 rounds)
        for _ in range(4):
            todo = [
                p for p in pareto_front(self.outcomes(), self.setup.workload.higher_is_better)
                if f"{_ATTR_REEVAL}{p.number}" not in self.study.user_attrs
            ]
            if not todo or self.should_stop():
                return
            for i, point in enumerate(todo):
                if self.on_progress is not None:
                    message = f"re-evaluating front point {i + 1}/{len(todo)} (trial {point.number})"
                    self.on_progress(self.progress(message))
                self._reevaluate(point)

    def _reevaluate(self, point: TrialOutcome) -> None:
        setup = self.setup
        qualities = []
        for k in range(1, self.spec.reevaluate_front + 1):
            seed = self.spec.seed + 1000 * k
            if setup.evaluator is not None:
                qualities.append(float(setup.evaluator(point.assignment, seed)))
                continue
            run = run_trial(setup.workload, point.assignment, qat_steps=self.spec.qat_steps, seed=seed,
                            device=self.spec.device)
            qualities.append(run.quality)
        self.study.set_user_attr(f"{_ATTR_REEVAL}{point.number}", qualities)

    def layer_costs(self, layer: LayerInfo) -> dict[str, dict[str, float]]:
        """What this layer costs in each format it may take ({format: {objective: value}}); summed
        over the layers of an assignment these are the trial's costs."""
        space = self.setup.space
        names = space.choices.get(layer.fqn) or (space.pinned[layer.fqn],)
        models = [cost_model(o, self.setup.profile) for o in self.spec.cost_objectives]
        # keyed by the names the assignments use (a pin's format is kept as the user spelled it)
        formats = {name: parse_format(name) for name in names}
        return {name: {m.name: m.layer_cost(layer, f) for m in models} for name, f in formats.items()}

    def result(self, fp32: float) -> SearchResult:
        setup = self.setup
        outcomes = self.outcomes()
        return SearchResult(
            workload=self.spec.workload,
            metric_name=setup.workload.metric,
            higher_is_better=setup.workload.higher_is_better,
            fp32_quality=fp32,
            layers=[
                SearchLayer(info=layer, choices=setup.space.choices.get(layer.fqn, ()),
                            pinned=setup.space.pinned.get(layer.fqn), costs_by_format=self.layer_costs(layer))
                for layer in setup.graph.layers
            ],
            pinned=dict(setup.space.pin_reasons),
            trials=sorted(outcomes, key=lambda o: o.number),
            front=pareto_front(outcomes, setup.workload.higher_is_better),
            study_name=self.spec.study_name,
        )


def run_search(
    spec: SearchSpec,
    *,
    workload: Workload | None = None,
    profile: TargetProfile | None = None,
    on_trial: OnTrial | None = None,
    should_stop: Callable[[], bool] | None = None,
    evaluator: Evaluator | None = None,
    on_progress: Callable[[SearchProgress], None] | None = None,
) -> SearchResult:
    """Search per-layer precision maps for ``spec``; return the Pareto front and all trials.

    ``workload`` and ``profile``, when given, are used as they are instead of loading
    ``spec.workload`` and ``spec.profile`` (a caller that already holds them, such as the service
    with a profile from its database, passes them ready).  Several processes may call this with the
    same ``spec.storage`` and ``spec.study_name``; they share the budget ``spec.n_trials``.
    ``on_trial`` is called in the process that ran each trial; ``should_stop`` is checked between
    trials.  Bad input raises before any training starts (:class:`~search.spec.SearchError`, and its
    subclass :class:`~search.storage.StorageError` when the storage cannot be opened).
    ``evaluator`` replaces the QAT run (benchmarks over a precomputed table use it).
    ``on_progress`` hears about work that is not a trial (re-evaluating the front).
    ``profile`` is a ready target profile (else ``spec.profile`` is loaded by name or path).
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    workload = workload or load_workload(spec.workload, spec.workload_options)
    profile = profile or load_profile(spec.profile)
    graph = discover_layers(workload.model, workload.example_inputs)
    space = build_space(spec, graph, profile)
    setup = SearchSetup(spec=spec, workload=workload, profile=profile, graph=graph, space=space, evaluator=evaluator)
    return _Search(setup, on_trial, should_stop, on_progress).run()

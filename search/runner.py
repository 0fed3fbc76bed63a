"""The Optuna multi-objective search: the one home of optuna in mixq.

``run_search(spec)`` evaluates per-layer precision maps with short QAT runs and returns the Pareto
front of (quality, cost...).  Sample efficiency comes from:

1. Seeding: the uniform baselines the space allows (all-int8, int4 inside the pinned first/last,
   all-int4 where allowed), then a one-layer-at-a-time sensitivity sweep (all-int8 with one free
   layer in int4); once the sweep is in, a greedy front over it (flip layers to int4 in order of
   least quality lost per unit of cost saved, as AIMET AMP's greedy phase).  All of it counts in
   the budget: they are real trials.
2. A seeded multi-objective sampler (TPE by default; NSGA-II, random).
3. A cache: an assignment already evaluated is never trained again (its values are reused and the
   repeat does not count against the budget).
4. Noise-aware reporting: front candidates are re-evaluated with extra seeds; each front point
   reports mean and spread, and the front is recomputed on the means.

Several processes can share one study through an Optuna RDB storage (SQLite on one machine,
PostgreSQL beyond): the budget is the study's, not the process's.  Heartbeats mark a dead process's
trial FAIL and re-enqueue the same parameters (bounded retries).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from search.checkpoint import save_state_dict
from search.cost import cost_model, model_costs
from search.formats import parse_format
from search.layers import LayerGraph, LayerInfo, discover_layers
from search.profiles import TargetProfile, load_profile
from search.qconfig import QualityReport, build_qconfig
from search.space import SearchSpace, build_space
from search.spec import SamplerName, SearchPhase, SearchProgress, SearchResult, SearchSpec, TrialOutcome
from search.storage import StorageError, open_storage
from search.train import fp32_quality, run_trial
from search.workloads import Workload, load_workload

log = logging.getLogger("mixq.search")

_ATTR_FP32 = "mixq:fp32_quality"
_ATTR_GREEDY = "mixq:greedy_enqueued"
_ATTR_REEVAL = "mixq:reeval:"  # + trial number -> list of extra qualities


class SearchError(ValueError):
    """The search cannot start (bad spec, unreachable storage...)."""


OnTrial = Callable[[TrialOutcome, SearchProgress], None]
# A seam for benchmarks over a precomputed table: (assignment, seed) -> quality, no QAT run.
Evaluator = Callable[[Mapping[str, str], int], float]


# ---------------------------------------------------------------------------------------------
# Study plumbing
# ---------------------------------------------------------------------------------------------


def make_sampler(name: SamplerName, seed: int) -> optuna.samplers.BaseSampler:
    if name is SamplerName.NSGA2:
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
    if name is SamplerName.RANDOM:
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=6)


def _directions(spec: SearchSpec, higher_is_better: bool) -> list[str]:
    return ["maximize" if higher_is_better else "minimize"] + ["minimize"] * len(spec.cost_objectives)


def _key(assignment: Mapping[str, str]) -> str:
    return json.dumps(dict(sorted(assignment.items())))


# ---------------------------------------------------------------------------------------------
# Seeds
# ---------------------------------------------------------------------------------------------


def baseline_assignments(space: SearchSpace) -> list[dict[str, str]]:
    """Uniform baselines the space allows: all-int8, all-int4 (inside the pins), all-fp16."""
    out = []
    for fmt in ("int8", "int4", "fp16"):
        if all(fmt in c for c in space.choices.values()):
            out.append({fqn: fmt for fqn in space.choices})
    return out


def sensitivity_assignments(space: SearchSpace, base: str = "int8", probe: str = "int4") -> list[dict[str, str]]:
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
) -> list[dict[str, str]]:
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


# ---------------------------------------------------------------------------------------------
# Trials -> outcomes
# ---------------------------------------------------------------------------------------------


def _assignment_of(trial: FrozenTrial, space: SearchSpace, graph: LayerGraph) -> dict[str, str]:
    merged = {**space.pinned, **{k: str(v) for k, v in trial.params.items()}}
    return {fqn: merged[fqn] for fqn in graph.fqns}


def _outcome(
    trial: FrozenTrial, space: SearchSpace, graph: LayerGraph, spec: SearchSpec, reevals: Sequence[float] = ()
) -> TrialOutcome:
    assert trial.values is not None
    qualities = [trial.values[0], *reevals]
    costs = {str(o): float(v) for o, v in zip(spec.cost_objectives, trial.values[1:], strict=True)}
    feasible = all(c <= 0.0 for c in trial.constraints.values())
    quality = statistics.fmean(qualities)
    quality_std = statistics.pstdev(qualities) if len(qualities) > 1 else 0.0
    qconfig = json.loads(trial.user_attrs["qconfig"]) if isinstance(trial.user_attrs.get("qconfig"), str) else None
    if qconfig is not None and isinstance(qconfig.get("quality"), dict):
        # the file reports what the front and the API report: the mean over every evaluation, not the first run
        qconfig["quality"].update(value=quality, std=quality_std, n_evaluations=len(qualities))
    return TrialOutcome(
        number=trial.number,
        assignment=_assignment_of(trial, space, graph),
        quality=quality,
        quality_std=quality_std,
        n_evaluations=len(qualities),
        costs=costs,
        feasible=feasible,
        duration_s=float(trial.user_attrs.get("duration_s", 0.0)),
        source=str(trial.user_attrs.get("source", "sampler")),
        cached=bool(trial.user_attrs.get("cached", False)),
        qconfig=qconfig,
    )


def pareto_front(outcomes: Sequence[TrialOutcome], higher_is_better: bool) -> list[TrialOutcome]:
    """Non-dominated outcomes (feasible ones only if any is feasible), sorted by first cost.
    Duplicated assignments count once (the lowest trial number)."""
    unique: dict[str, TrialOutcome] = {}
    for o in sorted(outcomes, key=lambda o: o.number):
        unique.setdefault(_key(o.assignment), o)
    pool = [o for o in unique.values() if o.feasible] or list(unique.values())
    sign = 1.0 if higher_is_better else -1.0

    def vec(o: TrialOutcome) -> tuple[float, ...]:  # all "smaller is better"
        return (-sign * o.quality, *o.costs.values())

    front = []
    for o in pool:
        v = vec(o)
        dominated = any(
            all(a <= b for a, b in zip(vec(p), v, strict=True)) and any(a < b for a, b in zip(vec(p), v, strict=True)) for p in pool if p is not o
        )
        if not dominated:
            front.append(o)
    return sorted(front, key=lambda o: (tuple(o.costs.values()), o.number))


# ---------------------------------------------------------------------------------------------
# The search
# ---------------------------------------------------------------------------------------------


class _Search:
    def __init__(self, spec: SearchSpec, workload: Workload, on_trial: OnTrial | None,
                 should_stop: Callable[[], bool] | None, evaluator: Evaluator | None = None,
                 on_progress: Callable[[SearchProgress], None] | None = None,
                 profile: TargetProfile | None = None, on_start: Callable[[SearchResult], None] | None = None) -> None:
        self.spec = spec
        self.on_progress = on_progress
        self.on_start = on_start
        self.phase = SearchPhase.FP32
        self.runs = 0  # trainings this process ran (trials and re-evaluations), for the time estimate
        self.runs_s = 0.0
        self.step_started = time.monotonic()
        self.evaluator = evaluator
        self.workload = workload
        self.on_trial = on_trial
        self.should_stop = should_stop or (lambda: False)
        self.profile: TargetProfile = profile or load_profile(spec.profile)
        self.graph = discover_layers(workload.model, workload.example_inputs)
        self.space = build_space(spec, self.graph, self.profile)
        try:
            self.storage = open_storage(spec.storage, spec.max_retries, spec.heartbeat_interval_s, spec.grace_period_s)
        except StorageError as exc:
            raise SearchError(str(exc)) from None
        seed = spec.seed if spec.storage is None else spec.seed + os.getpid()  # processes explore differently
        try:
            self.study = optuna.create_study(
                storage=self.storage, study_name=spec.study_name, load_if_exists=True,
                directions=_directions(spec, workload.higher_is_better), sampler=make_sampler(spec.sampler, seed),
            )
        except ValueError as exc:  # e.g. directions differ from an existing study of that name
            raise SearchError(f"study_name: {exc}") from None
        self.started = time.monotonic()

    # -- helpers ---------------------------------------------------------------------------
    def fp32_quality(self) -> float:
        value = self.study.user_attrs.get(_ATTR_FP32)
        if value is None:
            value = fp32_quality(self.workload, self.spec.device)
            self.study.set_user_attr(_ATTR_FP32, value)
        return float(value)

    def completed(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))

    def unique_completed(self) -> int:
        return sum(1 for t in self.completed() if not t.user_attrs.get("cached"))

    def best_quality(self) -> float | None:
        values = [t.values[0] for t in self.completed() if t.values]
        if not values:
            return None
        return max(values) if self.workload.higher_is_better else min(values)

    def progress(self, message: str = "", reevaluations_left: int | None = None) -> SearchProgress:
        """Where the search stands; the time left is this process's mean training time times the trainings
        left: the trials of the budget, then ``reevaluate_front`` extra runs per front point (the current
        front's size until the re-evaluation knows its list)."""
        finished = self.unique_completed()
        if self.phase is SearchPhase.DONE:
            reevaluations_left = 0
        elif reevaluations_left is None:
            trials_left = max(self.spec.n_trials - finished, 0)
            reevaluations_left = trials_left + self.spec.reevaluate_front * self.front_size_estimate()
        eta_s = self.runs_s / self.runs * reevaluations_left if self.runs else None
        return SearchProgress(finished, self.spec.n_trials, self.best_quality(), message, self.phase,
                              time.monotonic() - self.started, eta_s)

    def front_size_estimate(self) -> int:
        """Points on the (quality, first cost) front of the completed trials, O(n log n): best quality
        first, a point is on it if it costs less than every better one."""
        sign = -1.0 if self.workload.higher_is_better else 1.0
        vectors = sorted((sign * t.values[0], t.values[1]) for t in self.completed() if t.values and len(t.values) > 1)
        size, cheapest = 0, float("inf")
        for _, cost in vectors:
            if cost < cheapest:
                size, cheapest = size + 1, cost
        return size

    def set_phase(self, phase: SearchPhase, message: str = "") -> None:
        if phase is not self.phase:
            self.phase = phase
            if self.on_progress is not None:
                self.on_progress(self.progress(message))

    def budget_state(self) -> str:
        """``run`` another trial, ``wait`` (the budget is taken by trials running elsewhere, which
        may finish or turn out stale), or ``done``."""
        if self.spec.timeout_s is not None and time.monotonic() - self.started >= self.spec.timeout_s:
            return "done"
        trials = self.study.get_trials(deepcopy=False)
        done = sum(1 for t in trials if t.state is TrialState.COMPLETE and not t.user_attrs.get("cached"))
        running = sum(1 for t in trials if t.state is TrialState.RUNNING)
        seen = {_key(_assignment_of(t, self.space, self.graph)) for t in trials if t.state is TrialState.COMPLETE}
        hard_cap = 4 * self.spec.n_trials + 10  # repeats and failures cannot loop forever
        if done >= self.spec.n_trials or len(trials) >= hard_cap or len(seen) >= self.space.size:
            return "done"
        return "run" if done + running < self.spec.n_trials else "wait"

    def enqueue(self, free_assignments: list[dict[str, str]], source: str) -> None:
        for free in free_assignments:
            self.study.enqueue_trial(free, user_attrs={"source": source}, skip_if_exists=True)

    def maybe_enqueue_greedy(self) -> None:
        if not self.spec.seed_with_sensitivity or self.study.user_attrs.get(_ATTR_GREEDY):
            return
        sweep = sensitivity_assignments(self.space)
        if len(sweep) < 3:
            return
        results = {_key(t.params): t.values[0] for t in self.completed() if t.values}
        base = {f: "int8" for f in self.space.choices}
        if _key(base) not in results or not all(_key(s) in results for s in sweep):
            return
        sign = 1.0 if self.workload.higher_is_better else -1.0
        sensitivity, saving = {}, {}
        base_cost = next(iter(model_costs(self.spec.cost_objectives, self.profile, self.graph, {**self.space.pinned, **base}).values()))
        for s in sweep:
            fqn = next(f for f, v in s.items() if v == "int4")
            sensitivity[fqn] = max(sign * (results[_key(base)] - results[_key(s)]), 0.0)
            cost = next(iter(model_costs(self.spec.cost_objectives, self.profile, self.graph, {**self.space.pinned, **s}).values()))
            saving[fqn] = base_cost - cost
        self.study.set_user_attr(_ATTR_GREEDY, True)
        self.enqueue(greedy_assignments(self.space, sensitivity, saving), "greedy")

    # -- one trial ---------------------------------------------------------------------------
    def evaluate(self, trial: optuna.Trial, fp32: float) -> tuple[float, ...]:
        free = {fqn: trial.suggest_categorical(fqn, list(options)) for fqn, options in self.space.choices.items()}
        assignment = {fqn: {**self.space.pinned, **free}[fqn] for fqn in self.graph.fqns}
        costs = model_costs(self.spec.cost_objectives, self.profile, self.graph, assignment)
        trial.set_user_attr("source", trial.user_attrs.get("source", "sampler"))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        previous = self._claim(trial, free)
        if previous is not None:
            trial.set_user_attr("cached", True)
            trial.set_user_attr("duration_s", 0.0)
            if "qconfig" in previous.user_attrs:
                trial.set_user_attr("qconfig", previous.user_attrs["qconfig"])
            self._constraint(trial, previous.values[0], fp32)
            return tuple(previous.values)
        if self.evaluator is not None:
            quality = float(self.evaluator(assignment, self.spec.seed))
            self._constraint(trial, quality, fp32)
            return (quality, *costs.values())
        run = run_trial(
            self.workload, assignment, qat_steps=self.spec.qat_steps, seed=self.spec.seed, device=self.spec.device
        )
        qconfig = build_qconfig(
            run.model, self.graph, assignment, pinned=self.space.pin_reasons, profile=self.profile.name,
            quality=QualityReport(metric=self.workload.metric, value=run.quality, fp32_value=fp32,
                                  higher_is_better=self.workload.higher_is_better),
            costs=costs, workload=self.spec.workload, study_name=self.spec.study_name, trial_number=trial.number,
        )
        trial.set_user_attr("qconfig", qconfig.model_dump_json())
        if self.spec.weights_dir is not None:
            save_state_dict(run.model, Path(self.spec.weights_dir) / f"trial-{trial.number}.pt")
        trial.set_user_attr("duration_s", run.duration_s)
        self._constraint(trial, run.quality, fp32)
        return (run.quality, *costs.values())

    def _claim(self, trial: optuna.Trial, free: Mapping[str, str]) -> FrozenTrial | None:
        """Make sure no two trials train the same assignment, across processes.

        Returns the completed trial to reuse, or None once this trial holds the claim.  A RUNNING
        twin that already claimed it, or has a lower number (both suggested before either checked),
        wins: this trial is pruned as a duplicate.  The claim is a user attribute set right after
        the check, so the remaining race window is that gap (milliseconds), not a whole trial.
        """
        key = _key(free)
        twins = [
            t for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
            if t.number != trial.number and _key(t.params) == key and not t.user_attrs.get("cached")
        ]
        done = next((t for t in twins if t.state is TrialState.COMPLETE), None)
        if done is not None:
            return done
        if any(t.user_attrs.get("claimed") or t.number < trial.number for t in twins):
            trial.set_user_attr("duplicate_of", min(t.number for t in twins))
            raise optuna.TrialPruned("the same assignment is being trained by another trial")
        trial.set_user_attr("claimed", True)
        return None

    def _constraint(self, trial: optuna.Trial, quality: float, fp32: float) -> None:
        if self.spec.max_quality_drop is None:
            return
        drop = (fp32 - quality) if self.workload.higher_is_better else (quality - fp32)
        trial.set_constraint("quality_drop", drop - self.spec.max_quality_drop)

    def objective(self, trial: optuna.Trial, fp32: float) -> tuple[float, ...]:
        try:
            return self.evaluate(trial, fp32)
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}"[:2000])
            log.warning("trial %d failed: %s", trial.number, exc)
            raise

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

    def step(self, fp32: float) -> None:
        """Run one trial.  ``study.optimize(n_trials=1)`` rather than ask/tell: it brings the
        heartbeat thread and the failure boundary (a failing trial is recorded FAIL, the loop goes
        on), as in optuna's own ``_run_trial``, which also fails stale trials first; only the
        trials that died before their first heartbeat are ours to handle here."""
        if self.storage is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._fail_trials_without_heartbeat()
        seeded = self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        self.set_phase(SearchPhase.SEEDING if seeded else SearchPhase.SAMPLING)
        self.step_started = time.monotonic()
        self.study.optimize(
            lambda t: self.objective(t, fp32), n_trials=1, catch=(Exception,), callbacks=[self._after_optimize_trial]
        )

    def _after_optimize_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.runs, self.runs_s = self.runs + 1, self.runs_s + time.monotonic() - self.step_started
        if trial.state is TrialState.COMPLETE and self.on_trial is not None and not trial.user_attrs.get("cached"):
            self.on_trial(_outcome(trial, self.space, self.graph, self.spec), self.progress())

    # -- main loop ---------------------------------------------------------------------------
    def run(self) -> SearchResult:
        if self.on_progress is not None:
            self.on_progress(self.progress("fp32 reference"))
        fp32 = self.fp32_quality()
        if self.on_start is not None:
            self.on_start(self.result(fp32))
        if self.spec.seed_with_baselines:
            self.enqueue(baseline_assignments(self.space), "baseline")
        if self.spec.seed_with_sensitivity:
            self.enqueue(sensitivity_assignments(self.space), "sensitivity")
        while not self.should_stop():
            state = self.budget_state()
            if state == "done":
                break
            if state == "wait":
                time.sleep(min(1.0, self.spec.heartbeat_interval_s))
                self.fail_stale_trials()
                continue
            self.step(fp32)
            self.maybe_enqueue_greedy()
        if not self.should_stop():
            self.reevaluate_front(fp32)
        self.set_phase(SearchPhase.DONE)
        return self.result(fp32)

    def outcomes(self) -> list[TrialOutcome]:
        """One outcome per trained trial; repeats served from the cache are not evaluations."""
        attrs = self.study.user_attrs
        return [
            _outcome(t, self.space, self.graph, self.spec, attrs.get(f"{_ATTR_REEVAL}{t.number}", ()))
            for t in self.completed()
            if not t.user_attrs.get("cached")
        ]

    def reevaluate_front(self, fp32: float) -> None:
        """Extra seeds for the current front candidates (noise-aware reporting)."""
        if self.spec.reevaluate_front == 0:
            return
        # a point's mean can fall below one that was dominated before; later rounds give the new
        # front members their extra seeds too (usually one or two points; bounded at 4 rounds)
        for _ in range(4):
            todo = [
                p for p in pareto_front(self.outcomes(), self.workload.higher_is_better)
                if f"{_ATTR_REEVAL}{p.number}" not in self.study.user_attrs
            ]
            if not todo or self.should_stop():
                return
            self.phase = SearchPhase.REEVALUATING
            for i, point in enumerate(todo):
                if self.on_progress is not None:
                    self.on_progress(self.progress(
                        f"re-evaluating front point {i + 1}/{len(todo)} (trial {point.number})",
                        reevaluations_left=(len(todo) - i) * self.spec.reevaluate_front,
                    ))
                self._reevaluate(point)

    def _reevaluate(self, point: TrialOutcome) -> None:
        qualities = []
        for k in range(1, self.spec.reevaluate_front + 1):
            seed = self.spec.seed + 1000 * k
            if self.evaluator is not None:
                qualities.append(float(self.evaluator(point.assignment, seed)))
                continue
            started = time.monotonic()
            run = run_trial(self.workload, point.assignment, qat_steps=self.spec.qat_steps, seed=seed,
                            device=self.spec.device)
            self.runs, self.runs_s = self.runs + 1, self.runs_s + time.monotonic() - started
            qualities.append(run.quality)
        self.study.set_user_attr(f"{_ATTR_REEVAL}{point.number}", qualities)

    def layer_costs(self, layer: LayerInfo) -> dict[str, dict[str, float]]:
        """What this layer costs in each format it may take ({format: {objective: value}}); summed
        over the layers of an assignment these are the trial's costs."""
        formats = self.space.choices.get(layer.fqn) or (self.space.pinned[layer.fqn],)
        models = [cost_model(o, self.profile) for o in self.spec.cost_objectives]
        return {f: {m.name: m.layer_cost(layer, parse_format(f)) for m in models} for f in formats}

    def result(self, fp32: float) -> SearchResult:
        outcomes = self.outcomes()
        return SearchResult(
            workload=self.spec.workload,
            metric_name=self.workload.metric,
            higher_is_better=self.workload.higher_is_better,
            fp32_quality=fp32,
            layers=[
                {"fqn": lay.fqn, "kind": str(lay.kind), "index": lay.index, "macs": lay.macs,
                 "num_params": lay.num_params, "choices": list(self.space.choices.get(lay.fqn, ())),
                 "pinned": self.space.pinned.get(lay.fqn), "costs_by_format": self.layer_costs(lay)}
                for lay in self.graph.layers
            ],
            pinned=dict(self.space.pin_reasons),
            trials=sorted(outcomes, key=lambda o: o.number),
            front=pareto_front(outcomes, self.workload.higher_is_better),
            study_name=self.spec.study_name,
        )


def run_search(
    spec: SearchSpec,
    *,
    workload: Workload | None = None,
    on_trial: OnTrial | None = None,
    should_stop: Callable[[], bool] | None = None,
    evaluator: Evaluator | None = None,
    on_progress: Callable[[SearchProgress], None] | None = None,
    profile: TargetProfile | None = None,
    on_start: Callable[[SearchResult], None] | None = None,
) -> SearchResult:
    """Search per-layer precision maps for ``spec``; return the Pareto front and all trials.

    Several processes may call this with the same ``spec.storage`` and ``spec.study_name``; they
    share the budget ``spec.n_trials``.  ``on_trial`` is called in the process that ran each trial;
    ``should_stop`` is checked between trials.  Bad input raises before any training starts.
    ``evaluator`` replaces the QAT run (benchmarks over a precomputed table use it).
    ``on_progress`` hears about work that is not a trial (re-evaluating the front).
    ``profile`` is a ready target profile (else ``spec.profile`` is loaded by name or path).
    ``on_start`` gets the result before any trial (layers, pins, fp32 quality; no trials), so a
    caller can show them while the search runs.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    workload = workload or load_workload(spec.workload, spec.workload_options)
    return _Search(spec, workload, on_trial, should_stop, evaluator, on_progress, profile, on_start).run()

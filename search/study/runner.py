"""The Optuna multi-objective search loop: ``run_search(spec)``.

It evaluates per-layer precision maps with short QAT runs and returns the Pareto front of
(quality, cost...).  Sample efficiency comes from:

1. Seeding (``search/study/seeding.py``; the maps from ``search/study/seeds.py``): one uniform map per format,
   the one-layer sensitivity sweep (or a Fisher-proxy greedy path where it does not fit), the proxy
   programs' maps, then a greedy front over the sweep.  All of it counts in the budget: they are real
   trials.  The last half of the budget checks the front's one-layer neighbours first (model-ranked).  Seeds are
   queued one at a time, when the study's queue is empty, so a retry always runs before them.
2. A seeded multi-objective sampler (TPE by default; NSGA-II, random).
3. A cache (``search/study/objective.py``): an assignment already evaluated is never trained again (its
   values are reused and the repeat does not count against the budget).
4. Noise-aware reporting: front neighbours within noise of each other are re-evaluated with extra
   seeds; each front point reports mean and spread, the front is recomputed on the means, and a
   point whose gain over a cheaper one is within noise is left off it.
5. Multi-fidelity (``spec.fidelity_rungs``): every map is screened at the first rung; the top
   1/eta of a rung by non-dominated rank are trained again, longer, at the next
   (``search/study/multifidelity.py``); a map is reported at the highest rung it reached.  A budget in
   QAT steps (``spec.budget_qat_steps``) counts every rung and every re-evaluation.
6. No wasted trials: the cheapest allowed map is seeded; formats that cost more for a layer and
   measured no better in the seed trials are sampled rarely; the search stops once the cheapest
   map scores the metric's best value, or every map has been tried.

Rung results, re-evaluations and the dominated formats are study user attributes, so every process
sharing the study sees them.

Several processes can share one study through an Optuna RDB storage (SQLite on one machine,
PostgreSQL beyond): the budget is the study's, not the process's; each trial takes a budget slot
atomically before it trains (``search.study.storage.claim_budget_slot``).  Heartbeats mark a dead
process's trial FAIL and re-enqueue the same parameters (bounded retries).  A search whose trials
keep failing on their own (``spec.max_consecutive_failures`` in a row) stops with the cause.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from search.profiles import TargetProfile, load_profile
from search.quant.cost import cost_model, float_costs
from search.quant.formats import parse_format
from search.quant.layers import LayerInfo, discover_layers
from search.results import (
    FidelityCheck,
    FidelityPoint,
    SearchLayer,
    SearchPhase,
    SearchProgress,
    SearchResult,
    TrialFailure,
    TrialOutcome,
)
from search.spec import SamplerName, SearchError, SearchSpec
from search.study.ledger import Ledger, reeval_key, rung_key
from search.study.multifidelity import (
    TAU_WARNING_BELOW,
    noise_level,
    rank_agreement,
    reevaluation_todo,
    within_noise_of_cheaper,
)
from search.study.objective import Evaluator, Objective, SearchSetup, outcome_of, score_assignment
from search.study.pareto import assignment_key, pareto_front
from search.study.seeding import ATTR_NOISE, DominatedFormatsSampler, SeedPlan, tried_maps
from search.study.seeds import front_neighbours
from search.study.space import build_space
from search.study.storage import claim_budget_slot, fail_trials_without_heartbeat, open_storage
from search.train import fp32_quality, run_trial
from search.workloads import Workload, load_workload

_ATTR_FP32 = "mixq:fp32_quality"

OnTrial = Callable[[TrialOutcome, SearchProgress], None]
OnFailedTrial = Callable[[TrialFailure], None]


@dataclass(frozen=True)
class Work:
    """One unit of a search process's loop (:meth:`_Search.next_work`)."""

    kind: Literal["trial", "promote", "wait", "done"]
    number: int = -1  # promote: the trial whose map is trained again
    rung: int = 0  # promote: the rung it is trained at
    reason: str = ""  # done: why the search stops

    @classmethod
    def done(cls, reason: str) -> Work:
        return cls("done", reason=reason)


TRIAL, WAIT = Work("trial"), Work("wait")


def make_sampler(name: SamplerName, seed: int) -> optuna.samplers.BaseSampler:
    if name is SamplerName.NSGA2:
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
    if name is SamplerName.RANDOM:
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=6)


def _front_size_estimate(completed: Sequence[FrozenTrial], higher_is_better: bool) -> int:
    """Points on the (quality, first cost) front of the trials' stored values, O(n log n) and without
    building outcomes (no qconfig parsing): it runs on every progress report.  Best quality first, a
    point is on it if it costs less than every better one."""
    sign = -1.0 if higher_is_better else 1.0
    vectors = sorted((sign * t.values[0], t.values[1]) for t in completed if t.values and len(t.values) > 1)
    size, cheapest = 0, float("inf")
    for _, cost in vectors:
        if cost < cheapest:
            size, cheapest = size + 1, cost
    return size


def _directions(spec: SearchSpec, higher_is_better: bool) -> list[StudyDirection]:
    quality = StudyDirection.MAXIMIZE if higher_is_better else StudyDirection.MINIMIZE
    return [quality] + [StudyDirection.MINIMIZE] * len(spec.cost_objectives)


class _Search:
    """One process's part of a (possibly shared) study: seed it, run trials until the budget is
    spent, re-evaluate the front, assemble the result."""

    def __init__(self, setup: SearchSetup, on_trial: OnTrial | None, should_stop: Callable[[], bool] | None,
                 on_progress: Callable[[SearchProgress], None] | None,
                 on_start: Callable[[SearchResult], None] | None = None,
                 on_failed_trial: OnFailedTrial | None = None) -> None:
        self.setup = setup
        self.spec = setup.spec
        self.on_trial = on_trial
        self.on_failed_trial = on_failed_trial
        self.on_progress = on_progress
        self.on_start = on_start
        self.phase = SearchPhase.FP32
        # this process's trainings (trials, promotions, re-evaluations): seconds per QAT step, for the ETA
        self.trained_s = 0.0
        self.trained_steps = 0
        self.step_started = time.monotonic()
        self.should_stop = should_stop or (lambda: False)
        spec = setup.spec
        self.storage = open_storage(spec.storage, spec.max_retries, spec.heartbeat_interval_s, spec.grace_period_s,
                                    on_stale=self._report_stale_trial)
        seed = spec.seed if spec.storage is None else spec.seed + os.getpid()  # processes explore differently
        try:
            self.study = optuna.create_study(
                storage=self.storage, study_name=spec.study_name, load_if_exists=True,
                directions=_directions(spec, setup.workload.higher_is_better),
                sampler=DominatedFormatsSampler(make_sampler(spec.sampler, seed), seed),
            )
        except ValueError as exc:  # e.g. directions differ from an existing study of that name
            raise SearchError(f"study_name: {exc}") from None
        self.started = time.monotonic()
        self.stop_reason = ""
        self.seeds = SeedPlan(self.study, setup, self.trial_budget, self.completed, self.trials_left, self.front_points)

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> SearchResult:
        if self.on_progress is not None:
            self.on_progress(self.progress("fp32 reference"))
        fp32 = self.fp32_quality()
        if self.on_start is not None:
            self.on_start(self.result(fp32))
        objective = Objective(self.setup, self.study, fp32)
        self.seeds.start()
        while not self.should_stop():
            ledger = self.ledger()
            work = self.next_work(ledger)
            if work.kind == "done":
                self.stop_reason = work.reason
                break
            if work.kind == "wait":
                time.sleep(min(1.0, self.spec.heartbeat_interval_s))
                self.fail_stale_trials()
                continue
            probe = self.seeds.noise_probe_due(ledger)
            if probe is not None:
                self.probe_noise(probe, ledger)
            elif work.kind == "promote":
                self.promote(work.number, work.rung, fp32)
            else:
                self.seeds.enqueue_next()
                self.step(objective)
                self.stop_if_failing()
            self.seeds.learn()
        if self.should_stop():
            self.stop_reason = "stopped"
        else:
            self.reevaluate_front()
        self.set_phase(SearchPhase.DONE)
        return self.result(fp32)

    def trial_budget(self) -> int:
        """How many first-rung trials the budget affords: ``n_trials``, the QAT-step budget, or what
        is left of ``timeout_s`` at the mean duration of the trials finished so far."""
        n_trials = self.spec.n_trials
        if self.spec.budget_qat_steps is not None and self.spec.qat_steps > 0:
            n_trials = self.spec.budget_qat_steps // self.spec.qat_steps
        if self.spec.timeout_s is not None:
            durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in self.completed()
                         if t.datetime_start is not None and t.datetime_complete is not None
                         and not t.user_attrs.get("cached")]  # a repeat served from the cache took ~0 s
            if durations:
                per_trial = sum(durations) / len(durations)
                left_s = self.spec.timeout_s - (time.monotonic() - self.started)
                n_trials = min(n_trials, len(durations) + int(max(left_s, 0.0) / max(per_trial, 1e-3)))
        return n_trials

    def trials_left(self) -> int:
        """First-rung trials the budget still affords: of a QAT-step budget, what is left after every
        rung and the re-evaluation reserve; else of :meth:`trial_budget`, those not trained yet."""
        ledger = self.ledger()
        budget = self.spec.budget_qat_steps
        if budget is not None:
            return max(0, (budget - self.reevaluation_reserve() - ledger.qat_steps_used) // max(self.steps_at(0), 1))
        return max(0, self.trial_budget() - len(ledger.completed()))

    def front_points(self) -> list[tuple[dict[str, str], float, float]]:
        """The current front: (free assignment, quality, first cost) per point."""
        front = pareto_front(self.outcomes(), self.setup.workload.higher_is_better)
        return [({fqn: p.assignment[fqn] for fqn in self.setup.space.choices}, p.quality, next(iter(p.costs.values())))
                for p in front]

    def fp32_quality(self) -> float:
        value = self.study.user_attrs.get(_ATTR_FP32)
        if value is None:
            value = fp32_quality(self.setup.workload, self.spec.device)
            self.study.set_user_attr(_ATTR_FP32, value)
        return float(value)

    def completed(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))

    def steps_at(self, rung: int) -> int:
        """QAT steps of one run at ``rung``."""
        return self.spec.qat_steps * self.spec.rungs[rung]

    def ledger(self) -> Ledger:
        return Ledger.read(self.study, self.steps_at(0))

    def progress(self, message: str = "", ledger: Ledger | None = None) -> SearchProgress:
        ledger = ledger or self.ledger()
        completed = ledger.completed()
        values = [t.values[0] for t in completed if t.values]
        best = None if not values else max(values) if self.setup.workload.higher_is_better else min(values)
        budget = self.spec.budget_qat_steps
        total = self.spec.n_trials if budget is None else max(1, budget // self.steps_at(0))
        return SearchProgress(len(completed), total, best, message, ledger.qat_steps_used, budget, self.phase,
                              time.monotonic() - self.started, self.eta_s(ledger, total))

    def eta_s(self, ledger: Ledger, total: int) -> float | None:
        """Time left: this process's seconds per QAT step times the steps still to train: the budget
        left (in QAT steps), or the trials left plus ``reevaluate_front`` extra runs per point of the
        current front.  None until this process has trained something."""
        if self.phase is SearchPhase.DONE:
            return 0.0
        if not self.trained_steps:
            return None
        budget = self.spec.budget_qat_steps
        if budget is not None:
            steps_left = max(budget - ledger.qat_steps_used, 0)
        else:
            completed = ledger.completed()
            trials_left = max(total - len(completed), 0)
            front_size = _front_size_estimate(completed, self.setup.workload.higher_is_better)
            steps_left = (trials_left + self.spec.reevaluate_front * front_size) * self.steps_at(0)
        return self.trained_s / self.trained_steps * steps_left

    def set_phase(self, phase: SearchPhase, message: str = "") -> None:
        if phase is not self.phase:
            self.phase = phase
            if self.on_progress is not None:
                self.on_progress(self.progress(message))

    def count_training(self, started: float, qat_steps: int) -> None:
        self.trained_s += time.monotonic() - started
        self.trained_steps += max(qat_steps, 1)

    def reevaluation_reserve(self) -> int:
        """QAT steps a budgeted search keeps for re-evaluating the front: the extra seeds of two
        neighbours at the highest rung (the usual adaptive case), at most a quarter of the budget."""
        budget = self.spec.budget_qat_steps
        if budget is None or self.spec.reevaluate_front == 0:
            return 0
        return min(2 * self.spec.reevaluate_front * self.steps_at(len(self.spec.rungs) - 1), budget // 4)

    def fits(self, ledger: Ledger, qat_steps: int, reserve: int = 0) -> bool:
        budget = self.spec.budget_qat_steps
        return budget is None or ledger.qat_steps_used + qat_steps <= budget - reserve

    def next_work(self, ledger: Ledger) -> Work:
        """What this process does next: promote a trial to a rung, run a new map at the first rung,
        wait (the budget is taken by trials running elsewhere, which may finish or turn out stale), or
        stop with a reason."""
        spec = self.spec
        if spec.timeout_s is not None and time.monotonic() - self.started >= spec.timeout_s:
            return Work.done("timeout")
        if self.metric_at_best(ledger):
            return Work.done("the cheapest map scores the metric's best value")
        reserve = self.reevaluation_reserve()
        promotion = ledger.next_promotion(len(spec.rungs), spec.eta,
                                           self.setup.workload.higher_is_better)
        if promotion is not None and self.fits(ledger, self.steps_at(promotion[1]), reserve):
            return Work("promote", number=promotion[0], rung=promotion[1])
        done = len(ledger.completed())
        running = sum(1 for t in ledger.trials if t.state is TrialState.RUNNING)
        seen = {assignment_key(t.params) for t in ledger.trials if t.state is TrialState.COMPLETE}
        limit = spec.n_trials if spec.budget_qat_steps is None else spec.budget_qat_steps // self.steps_at(0)
        hard_cap = 4 * limit + 10  # repeats and failures cannot loop forever
        if len(seen) >= self.setup.space.size:
            return WAIT if running else Work.done("every map in the space was tried")
        if len(ledger.trials) >= hard_cap:
            return Work.done("too many repeated or failed trials")
        if done >= limit:
            return WAIT if running and spec.budget_qat_steps is not None else Work.done("budget")
        if spec.budget_qat_steps is None:
            return TRIAL if done + running < limit else WAIT
        if self.fits(ledger, self.steps_at(0), reserve):
            return TRIAL
        return WAIT if running else Work.done("budget")

    def metric_at_best(self, ledger: Ledger) -> bool:
        """Has a map costing the least possible in every objective scored the metric's best value?
        Then every other map costs more for no better quality: the front cannot change."""
        best = self.setup.workload.metric_best
        if best is None:
            return False
        sign = 1.0 if self.setup.workload.higher_is_better else -1.0
        floor = self.min_costs()
        for t in ledger.completed():
            assert t.values is not None
            top = ledger.top(t.number)
            quality = t.values[0] if top is None else top.quality
            at_floor = all(v <= c + 1e-9 * max(1.0, abs(c)) for v, c in zip(t.values[1:], floor, strict=True))
            if at_floor and sign * (quality - best) >= 0:
                return True
        return False

    def min_costs(self) -> list[float]:
        """Each cost objective's least possible value: every layer at its cheapest allowed format."""
        per_layer = [self.layer_costs(layer) for layer in self.setup.graph.layers]
        fixed = float_costs(self.spec.cost_objectives, self.setup.profile, self.setup.graph)
        return [sum(min(costs[o] for costs in layer.values()) for layer in per_layer) + fixed[o]
                for o in map(str, self.spec.cost_objectives)]

    def promote(self, number: int, rung: int, fp32: float) -> None:
        """Train trial ``number``'s map again at ``rung``; the claim (a study attribute) comes first,
        so other processes skip it and count its steps."""
        key = rung_key(rung, number)
        worker = f"{socket.gethostname()}:{os.getpid()}"
        steps = self.steps_at(rung)
        self.study.set_user_attr(key, {"qat_steps": steps, "worker": worker, "quality": None, "qconfig": None})
        trial = self.study.get_trials(deepcopy=False)[number]
        message = f"rung {rung + 1}/{len(self.spec.rungs)}: trial {number} at {steps} QAT steps"
        self.set_phase(SearchPhase.PROMOTING, message)
        if self.on_progress is not None:
            self.on_progress(self.progress(message))
        started = time.monotonic()
        free = {k: str(v) for k, v in trial.params.items()}
        try:
            scored = score_assignment(self.setup, fp32, self.setup.full_assignment(free), qat_steps=steps,
                                      seed=self.spec.seed, trial_number=number)
        except Exception as exc:  # noqa: BLE001  (one unit of work: record why, keep searching)
            self.study.set_user_attr(key, {"qat_steps": steps, "worker": worker, "quality": None, "qconfig": None,
                                           "fail_reason": f"{type(exc).__name__}: {exc}"[:2000]})
            return
        self.count_training(started, steps)
        self.study.set_user_attr(key, {"qat_steps": steps, "worker": worker, "quality": scored.quality,
                                       "qconfig": scored.qconfig})

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

    # -- one trial ---------------------------------------------------------------------------
    def step(self, objective: Objective) -> None:
        """Run one trial.  ``study.optimize(n_trials=1)`` rather than ask/tell: it brings the
        heartbeat thread and the failure boundary (a failing trial is recorded FAIL, the loop goes
        on), as in optuna's own ``_run_trial``, which also fails stale trials first; only the
        trials that died before their first heartbeat are ours to handle here."""
        if self.storage is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                fail_trials_without_heartbeat(self.study, self.storage, self.spec.grace_period_s)
        waiting = self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        # a queued seed (or a retry) is seeding; the sampler's proposals and the search's own follow-ups
        # (a map next to a repeat, a front point's neighbour) are sampling
        seeding = waiting[0].user_attrs.get("source") not in ("neighbour", "resample") if waiting else False
        self.set_phase(SearchPhase.SEEDING if seeding else SearchPhase.SAMPLING)
        self.step_started = time.monotonic()
        self.study.optimize(
            self._within_budget(objective), n_trials=1, catch=(Exception,), callbacks=[self._after_optimize_trial]
        )

    def _within_budget(self, objective: Objective) -> Callable[[optuna.Trial], tuple[float, ...]]:
        """``objective`` behind an atomic claim of a budget slot (shared studies).  A trial that loses
        the race is pruned (it never trained) and its queued parameters are queued again."""

        def run(trial: optuna.Trial) -> tuple[float, ...]:
            # a budget in trials is claimed slot by slot; a budget in QAT steps is the ledger's (next_work)
            if self.storage is not None and self.spec.budget_qat_steps is None and not claim_budget_slot(
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
        if trial.state is TrialState.COMPLETE:
            self.seeds.repeated_map(trial)
        if trial.state is TrialState.COMPLETE and not trial.user_attrs.get("cached"):
            self.count_training(self.step_started, int(trial.user_attrs.get("qat_steps", self.steps_at(0))))
        if trial.state is TrialState.COMPLETE and self.on_trial is not None and not trial.user_attrs.get("cached"):
            ledger = self.ledger()
            self.on_trial(outcome_of(trial, self.setup), self.progress(ledger=ledger))
        if trial.state is TrialState.FAIL and self.on_failed_trial is not None:
            # its own error (the objective's ``fail_reason``), or a NaN/missing value Optuna refused
            error = trial.user_attrs.get("fail_reason") or "the objective returned no finite value (NaN or None)"
            self.on_failed_trial(self._failure_of(trial, str(error), retried=False))

    def _report_stale_trial(self, study: optuna.Study, trial: FrozenTrial, retried: bool) -> None:
        """The storage's stale-trial callback failed ``trial`` here, though another process ran it."""
        if self.on_failed_trial is not None:
            error = (f"no heartbeat for over {self.spec.grace_period_s} s: the process running it died "
                     f"(killed, out of memory) or lost the database")
            self.on_failed_trial(self._failure_of(trial, error, retried))

    def _failure_of(self, trial: FrozenTrial, error: str, retried: bool) -> TrialFailure:
        # a trial that died before suggesting every layer has fewer params; a queued one has its fixed_params
        free = {k: str(v) for k, v in (trial.params or trial.system_attrs.get("fixed_params", {})).items()}
        space = self.setup.space
        merged = {**space.pinned, **space.expand(free)}
        assignment = {fqn: merged[fqn] for fqn in self.setup.graph.fqns if fqn in merged}
        return TrialFailure(trial.number, assignment, error, retried)

    def fail_stale_trials(self) -> None:
        """Mark trials of dead processes FAIL; the storage's callback re-enqueues their params."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)
            if self.storage is not None:
                fail_trials_without_heartbeat(self.study, self.storage, self.spec.grace_period_s)

    # -- the front and the result ------------------------------------------------------------
    def outcomes(self, ledger: Ledger | None = None) -> list[TrialOutcome]:
        """One outcome per trained trial, at its highest rung; repeats served from the cache are
        not evaluations.  Extra seeds count only when run at that same rung."""
        ledger = ledger or self.ledger()
        out = []
        for t in ledger.completed():
            top = ledger.top(t.number)
            out.append(outcome_of(t, self.setup, ledger.reevaluations(t.number, top.rung if top else 0), top))
        return out

    def reevaluate_front(self) -> None:
        """Extra seeds where front neighbours are within noise of each other (noise-aware reporting);
        they count in the budget and the progress."""
        if self.spec.reevaluate_front == 0:
            return
        # a point's mean can fall below one that was dominated before, and a measured spread can
        # bring more neighbours within noise: later rounds handle them (bounded at 4 rounds)
        for _ in range(4):
            ledger = self.ledger()
            outcomes = self.outcomes(ledger)
            front = pareto_front(outcomes, self.setup.workload.higher_is_better)
            # the seeding's noise probe alone (one map, two seeds) does not stand for the front's spread:
            # until a front point is re-evaluated, the closest pair is, which measures it
            measured = [o for o in outcomes if o.n_evaluations > 1]
            if all(o.number == ledger.attrs.get(ATTR_NOISE) for o in measured):
                measured = []
            noise = noise_level([o.quality_std for o in measured], self.spec.min_gain)
            todo = [front[i] for i in reevaluation_todo([p.quality for p in front],
                                                        [p.n_evaluations for p in front], noise)
                    if ledger.reevals.get(front[i].number, {}).get("rung", -1) != front[i].rung]
            if not todo or self.should_stop():
                return
            self.set_phase(SearchPhase.REEVALUATING)
            for i, point in enumerate(todo):
                ledger = self.ledger()
                if not self.fits(ledger, self.spec.reevaluate_front * point.qat_steps):
                    self.stop_reason = "budget (re-evaluation cut short)"
                    return
                if self.on_progress is not None:
                    message = f"re-evaluating front point {i + 1}/{len(todo)} (trial {point.number})"
                    self.on_progress(self.progress(message, ledger))
                self._reevaluate(point)

    def probe_noise(self, trial: FrozenTrial, ledger: Ledger) -> None:
        """Train the all-int8 seed map once more with another seed: the seed spread the seeding needs
        (:meth:`SeedPlan.noise_probe_due`).  Recorded as its re-evaluation, so the front's re-evaluation
        later gives it one seed fewer; skipped (recorded as -1) where the step budget has no room."""
        if not self.fits(ledger, self.steps_at(0), self.reevaluation_reserve()):
            self.study.set_user_attr(ATTR_NOISE, -1)
            return
        self.study.set_user_attr(ATTR_NOISE, trial.number)
        self.set_phase(SearchPhase.SEEDING)
        if self.on_progress is not None:
            self.on_progress(self.progress(f"measuring the seed spread: trial {trial.number} (all-int8), 2nd seed"))
        self._reevaluate(outcome_of(trial, self.setup), n_seeds=1)

    def _reevaluate(self, point: TrialOutcome, n_seeds: int | None = None) -> None:
        setup = self.setup
        key = reeval_key(point.number)
        n_seeds = self.spec.reevaluate_front if n_seeds is None else n_seeds
        # a noise probe at a lower rung is replaced by this record: its steps stay counted
        steps = n_seeds * point.qat_steps + int(self.ledger().reevals.get(point.number, {}).get("qat_steps", 0))
        self.study.set_user_attr(key, {"rung": point.rung, "qat_steps": steps, "qualities": None})
        qualities = []
        for k in range(1, n_seeds + 1):
            seed = self.spec.seed + 1000 * k
            if setup.evaluator is not None:
                qualities.append(float(setup.evaluator(point.assignment, seed)))
                continue
            started = time.monotonic()
            run = run_trial(setup.workload, point.assignment, qat_steps=point.qat_steps, seed=seed,
                            device=self.spec.device)
            self.count_training(started, point.qat_steps)
            qualities.append(run.quality)
        self.study.set_user_attr(key, {"rung": point.rung, "qat_steps": steps, "qualities": qualities})

    def layer_costs(self, layer: LayerInfo) -> dict[str, dict[str, float]]:
        """What this layer costs in each format it may take ({format: {objective: value}}); summed
        over the layers of an assignment these are the trial's costs."""
        space = self.setup.space
        names = space.options(layer.fqn) or (space.pinned[layer.fqn],)
        models = [cost_model(o, self.setup.profile) for o in self.spec.cost_objectives]
        # keyed by the names the assignments use (canonical: the request validators normalise them)
        formats = {name: parse_format(name) for name in names}
        return {name: {m.name: m.layer_cost(layer, f) for m in models} for name, f in formats.items()}

    def fidelity_check(self, front: list[TrialOutcome]) -> FidelityCheck | None:
        if len(self.spec.rungs) == 1:
            return None
        points = [FidelityPoint(p.number, p.short_quality, p.quality, p.qat_steps)
                  for p in front if p.short_quality is not None]
        tau = rank_agreement([p.short_quality for p in points], [p.long_quality for p in points])
        warning = None
        if tau is not None and tau < TAU_WARNING_BELOW:
            warning = (f"the first rung ({self.steps_at(0)} QAT steps) ranks the front differently from the longest "
                       f"runs (Kendall tau {tau:.2f} < {TAU_WARNING_BELOW}): trust the long-run qualities")
        return FidelityCheck(self.steps_at(0), points, tau, warning)

    def result(self, fp32: float) -> SearchResult:
        setup = self.setup
        ledger = self.ledger()
        outcomes = self.outcomes(ledger)
        front = pareto_front(outcomes, setup.workload.higher_is_better)
        merged = within_noise_of_cheaper(
            [p.quality for p in front], [p.quality_std for p in front], [list(p.costs.values()) for p in front],
            setup.workload.higher_is_better, self.spec.min_gain,
        )
        kept = [p for p, m in zip(front, merged, strict=True) if not m]
        untried = front_neighbours(setup.space, [{fqn: p.assignment[fqn] for fqn in setup.space.choices} for p in kept],
                                   self.seeds.layer_cost, tried_maps(ledger.trials))
        return SearchResult(
            workload=self.spec.workload,
            metric_name=setup.workload.metric,
            higher_is_better=setup.workload.higher_is_better,
            fp32_quality=fp32,
            layers=[
                SearchLayer(info=layer, choices=setup.space.options(layer.fqn),
                            pinned=setup.space.pinned.get(layer.fqn), costs_by_format=self.layer_costs(layer))
                for layer in setup.graph.layers
            ],
            pinned=dict(setup.space.pin_reasons),
            float_layers=list(setup.graph.float_layers),
            trials=sorted(outcomes, key=lambda o: o.number),
            front=kept,
            study_name=self.spec.study_name,
            fidelity=self.fidelity_check(kept),
            fidelity_rungs=self.spec.rungs,
            promotion_eta=self.spec.eta,
            qat_steps_used=ledger.qat_steps_used,
            stop_reason=self.stop_reason,
            merged_within_noise=[p.number for p, m in zip(front, merged, strict=True) if m],
            repeats_skipped=sum(1 for t in ledger.trials
                                if t.state is TrialState.COMPLETE and t.user_attrs.get("cached")),
            neighbour_checks=sum(1 for o in outcomes if o.source == "neighbour"),
            neighbours_untried=len(untried),
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
    on_start: Callable[[SearchResult], None] | None = None,
    on_failed_trial: OnFailedTrial | None = None,
) -> SearchResult:
    """Search per-layer precision maps for ``spec``; return the Pareto front and all trials.

    ``workload`` and ``profile``, when given, are used as they are instead of loading
    ``spec.workload`` and ``spec.profile`` (a caller that already holds them, such as the service
    with a profile from its database, passes them ready).  Several processes may call this with the
    same ``spec.storage`` and ``spec.study_name``; they share the budget (``spec.n_trials``, or
    ``spec.budget_qat_steps``).
    ``on_trial`` is called in the process that ran each trial; ``should_stop`` is checked between
    trials.  Bad input raises before any training starts (:class:`~search.spec.SearchError`, and its
    subclass :class:`~search.study.storage.StorageError` when the storage cannot be opened).
    ``evaluator`` replaces the QAT run (benchmarks over a precomputed table use it).
    ``on_progress`` hears about work that is not a trial (re-evaluating the front).
    ``profile`` is a ready target profile (else ``spec.profile`` is loaded by name or path).
    ``on_start`` gets the result before any trial (layers, pins, fp32 quality; no trials), so a
    caller can show them while the search runs.
    ``on_failed_trial`` hears about each failed trial once: one that failed by its own error, in the
    process that ran it; one whose process died mid-trial, in the process that found it stale (and
    queued its parameters again, ``retried``).
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    workload = workload or load_workload(spec.workload, spec.workload_options)
    profile = profile or load_profile(spec.profile)
    graph = discover_layers(workload.model, workload.example_inputs)
    space = build_space(spec, graph, profile)
    spec = spec.resolve_fidelity(len(space.choices))
    setup = SearchSetup(spec=spec, workload=workload, profile=profile, graph=graph, space=space, evaluator=evaluator)
    return _Search(setup, on_trial, should_stop, on_progress, on_start, on_failed_trial).run()

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

7. Several maps per QAT pass (``spec.maps_per_pass``, K; automatic: ``search.study.budget.auto_maps_per_pass``):
   a pass asks up to K new trials at once (Optuna ask/tell: queued seeds and retries first, then the
   sampler), trains them together (``search.train.run_trials``: each map's numbers are those of training it
   alone) and tells each as its own trial; maps promoted to one rung, and the front's re-evaluations with one
   seed, share passes too.  A pass ends early where the next seed depends on a result still in it
   (``SeedPlan.waits_for``).  A pass that fails is trained again one map at a time, so a failure is its own
   map's.

Rung results, re-evaluations and the dominated formats are study user attributes, so every process
sharing the study sees them.

Several processes can share one study through an Optuna RDB storage (SQLite on one machine,
PostgreSQL beyond): the budget is the study's, not the process's; each trial takes a budget slot
atomically before it trains (``search.study.storage.claim_budget_slot``; a pass claims its slots one by one,
K or fewer).  Heartbeats mark a dead
process's trial FAIL and re-enqueue the same parameters (bounded retries).  A search whose trials
keep failing on their own (``spec.max_consecutive_failures`` in a row) stops with the cause.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import warnings
from types import TracebackType
from typing import TYPE_CHECKING

import optuna
import torch
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from search.profiles import TargetProfile, load_profile
from search.quant.cost import float_costs
from search.quant.layers import LayerGraph, discover_layers
from search.results import SearchPhase, SearchProgress, SearchResult, TrialFailure, TrialOutcome
from search.spec import SamplerName, SearchError, SearchSpec
from search.study.attrs import (
    FOLLOW_UPS,
    ReevalRecord,
    RungRecord,
    Source,
    StudyKey,
    TrialAttrs,
    TrialKey,
    is_cached,
    reeval_key,
    rung_key,
)
from search.study.budget import (
    Done,
    NewTrial,
    Promote,
    StudyCounts,
    Wait,
    auto_maps_per_pass,
    batch_size,
    fits,
    next_work,
    reevaluation_reserve,
    steps_at,
    trial_budget,
    trials_left,
)
from search.study.ledger import Ledger
from search.study.multifidelity import noise_level, reevaluation_todo
from search.study.objective import (
    Evaluator,
    Objective,
    Proposal,
    SearchSetup,
    evaluate_seed,
    outcome_of,
    score_assignments,
)
from search.study.pareto import assignment_key, pareto_front
from search.study.progress import ProgressClock
from search.study.result import assemble_result, outcomes
from search.study.seeding import DominatedFormatsSampler, SeedPlan
from search.study.space import build_space
from search.study.storage import claim_budget_slot, fail_trials_without_heartbeat, open_storage
from search.train import fp32_quality
from search.workloads import Workload, load_workload
from search.workloads.training import resolve_device

if TYPE_CHECKING:
    from optuna.storages import RDBStorage

log = logging.getLogger("mixq.search")


class SearchObserver:
    """What a caller hears of a running search, and how it stops one: the one seam between the search
    and whoever runs it (the CLI's progress bar, the service's worker, a test).  Every method does
    nothing by default; override the ones you need."""

    def started(self, result: SearchResult) -> None:
        """The result before any trial (layers, pins, fp32 quality; no trials), to show while it runs."""

    def trial_done(self, outcome: TrialOutcome, progress: SearchProgress) -> None:
        """A trial trained, in the process that ran it (repeats served from the cache are not told)."""

    def trial_failed(self, failure: TrialFailure) -> None:
        """Once per failed trial: one that failed by its own error, in the process that ran it; one whose
        process died mid-trial, in the process that found it stale (and queued it again: ``retried``)."""

    def progress(self, progress: SearchProgress) -> None:
        """A change of phase, and work that is not a trial (promotions, the front's re-evaluation)."""

    def should_stop(self) -> bool:
        """Asked between units of work; True stops the search (the result says "stopped")."""
        return False


def make_sampler(name: SamplerName, seed: int) -> optuna.samplers.BaseSampler:
    if name is SamplerName.NSGA2:
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
    if name is SamplerName.RANDOM:
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=6)


def _directions(spec: SearchSpec, higher_is_better: bool) -> list[StudyDirection]:
    quality = StudyDirection.MAXIMIZE if higher_is_better else StudyDirection.MINIMIZE
    return [quality] + [StudyDirection.MINIMIZE] * len(spec.cost_objectives)


def failure_of(setup: SearchSetup, trial: FrozenTrial, error: str, retried: bool) -> TrialFailure:
    """A failed trial as the search reports it."""
    # a trial that died before suggesting every layer has fewer params; a queued one has its fixed_params
    free = {k: str(v) for k, v in (trial.params or trial.system_attrs.get("fixed_params", {})).items()}
    space = setup.space
    merged = {**space.pinned, **space.expand(free)}
    assignment = {fqn: merged[fqn] for fqn in setup.graph.fqns if fqn in merged}
    return TrialFailure(trial.number, assignment, error, retried)


def open_study(setup: SearchSetup, observer: SearchObserver) -> tuple[RDBStorage | None, optuna.Study]:
    """The spec's storage (None: in memory) and its study, created or joined (several processes may
    share one).  A trial the storage's heartbeat finds stale (its process died) is told to ``observer``."""
    spec = setup.spec

    def on_stale(study: optuna.Study, trial: FrozenTrial, retried: bool) -> None:
        error = (f"no heartbeat for over {spec.grace_period_s} s: the process running it died "
                 f"(killed, out of memory) or lost the database")
        observer.trial_failed(failure_of(setup, trial, error, retried))

    storage = open_storage(spec.storage, spec.max_retries, spec.heartbeat_interval_s, spec.grace_period_s,
                           on_stale=on_stale)
    seed = spec.seed if spec.storage is None else spec.seed + os.getpid()  # processes explore differently
    try:
        study = optuna.create_study(
            storage=storage, study_name=spec.study_name, load_if_exists=True,
            directions=_directions(spec, setup.workload.higher_is_better),
            sampler=DominatedFormatsSampler(make_sampler(spec.sampler, seed), seed),
        )
    except ValueError as exc:  # e.g. directions differ from an existing study of that name
        raise SearchError(f"study_name: {exc}") from None
    names = [setup.workload.metric, *map(str, spec.cost_objectives)]
    if study.metric_names != names:  # optuna-dashboard and study.trials_dataframe() label the objectives
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(names)
    return storage, study


class _Heartbeats:
    """The heartbeats of the trials this process holds, from one thread (``study.optimize`` runs one per
    trial; a pass holds several).  A trial's first beat is recorded when it is added, before the objective
    stamps its worker (:func:`search.study.storage.fail_trials_without_heartbeat` relies on that order)."""

    def __init__(self, storage: RDBStorage | None) -> None:
        self.storage = storage
        self.interval = None if storage is None else storage.get_heartbeat_interval()
        self.ids: set[int] = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def __enter__(self) -> _Heartbeats:
        if self.interval is not None:
            self.thread = threading.Thread(target=self._beat, name="mixq-heartbeat", daemon=True)
            self.thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()

    def add(self, trial_id: int) -> None:
        if self.storage is None or self.interval is None:
            return
        self.storage.record_heartbeat(trial_id)
        with self.lock:
            self.ids.add(trial_id)

    def discard(self, trial_id: int) -> None:
        with self.lock:
            self.ids.discard(trial_id)

    def _beat(self) -> None:
        assert self.storage is not None and self.interval is not None
        while not self.stop.wait(self.interval):
            with self.lock:
                ids = sorted(self.ids)
            for trial_id in ids:
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception as exc:  # noqa: BLE001  (a dropped connection: the next beat reconnects)
                    log.warning("heartbeat of trial id %d not recorded: %s", trial_id, exc)


class _Search:
    """One process's part of a (possibly shared) study: seed it, run trials until the budget is
    spent, re-evaluate the front, assemble the result."""

    def __init__(self, setup: SearchSetup, storage: RDBStorage | None, study: optuna.Study,
                 observer: SearchObserver) -> None:
        self.setup = setup
        self.spec = setup.spec
        self.storage = storage
        self.study = study
        self.observer = observer
        self.clock = ProgressClock(self.spec, setup.workload.higher_is_better, observer.progress)
        self.stop_reason = ""
        self.min_costs = self._min_costs()
        self.seeds = SeedPlan(study, setup, self.trial_budget, self.completed, self.trials_left, self.front_points)

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> SearchResult:
        self.clock.tell(self.ledger(), "fp32 reference")
        fp32 = self.fp32_quality()
        self.observer.started(assemble_result(self.setup, self.ledger(), fp32, self.stop_reason))
        objective = Objective(self.setup, self.study, fp32)
        self.requeue_interrupted()
        self.seeds.start()
        while not self.observer.should_stop():
            ledger = self.ledger()
            work = self.next_work(ledger)
            if isinstance(work, Done):
                self.stop_reason = work.reason
                break
            if isinstance(work, Wait):
                time.sleep(min(1.0, self.spec.heartbeat_interval_s))
                self.fail_stale_trials()
                continue
            probe = self.seeds.noise_probe_due(ledger)
            if probe is not None:
                self.probe_noise(probe, ledger)
            elif isinstance(work, Promote):
                self.promote(work.number, work.rung, fp32)
            else:
                self.step(objective, ledger)
                self.stop_if_failing()
            self.seeds.learn()
        if self.observer.should_stop():
            self.stop_reason = "stopped"
        else:
            self.reevaluate_front()
        self.set_phase(SearchPhase.DONE)
        return assemble_result(self.setup, self.ledger(), fp32, self.stop_reason)

    def requeue_interrupted(self) -> None:
        """Queue again, once, the maps of trials an interrupted process (Ctrl-C) left FAIL: a resumed
        search trains them (a sensitivity probe left out would leave a hole in the sweep).  A dead
        process's trials are the heartbeat's to retry; a trial that failed by its own error is not retried."""
        trials = self.study.get_trials(deepcopy=False)
        trained = {assignment_key(t.params) for t in trials if t.state is TrialState.COMPLETE}
        queued_again = {t.user_attrs.get(TrialKey.REQUEUE_OF) for t in trials}
        for t in trials:
            if (t.state is TrialState.FAIL and t.user_attrs.get(TrialKey.INTERRUPTED)
                    and t.number not in queued_again and assignment_key(t.params) not in trained
                    and len(t.params) == len(self.setup.space.choices)):
                self.study.enqueue_trial(dict(t.params), skip_if_exists=False, user_attrs={
                    TrialKey.SOURCE: TrialAttrs.of(t).source, TrialKey.REQUEUE_OF: t.number})

    # -- reading the study -------------------------------------------------------------------
    def ledger(self) -> Ledger:
        return Ledger.read(self.study, steps_at(self.spec, 0))

    def completed(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))

    def trial_budget(self) -> int:
        """How many first-rung trials the budget affords (:func:`search.study.budget.trial_budget`)."""
        # a trial of a pass of several shared its wall time with the others; a repeat served from the cache took ~0 s
        durations = [(t.datetime_complete - t.datetime_start).total_seconds() / TrialAttrs.of(t).batch_size
                     for t in self.completed()
                     if t.datetime_start is not None and t.datetime_complete is not None and not is_cached(t)]
        return trial_budget(self.spec, durations if self.spec.timeout_s is not None else [], self.clock.elapsed_s())

    def trials_left(self) -> int:
        ledger = self.ledger()
        budget = self.trial_budget() if self.spec.budget_qat_steps is None else 0
        return trials_left(self.spec, ledger.qat_steps_used, len(ledger.completed()), budget)

    def front_points(self) -> list[tuple[dict[str, str], float, float]]:
        """The current front: (free assignment, quality, first cost) per point."""
        front = pareto_front(outcomes(self.setup, self.ledger()), self.setup.workload.higher_is_better)
        return [({fqn: p.assignment[fqn] for fqn in self.setup.space.choices}, p.quality, next(iter(p.costs.values())))
                for p in front]

    def fp32_quality(self) -> float:
        value = self.study.user_attrs.get(StudyKey.FP32)
        if value is None:
            value = fp32_quality(self.setup.workload, self.spec.device)
            self.study.set_user_attr(StudyKey.FP32, value)
        return float(value)

    def set_phase(self, phase: SearchPhase, message: str = "") -> None:
        self.clock.set_phase(phase, self.ledger, message)

    def next_work(self, ledger: Ledger) -> NewTrial | Promote | Wait | Done:
        return next_work(self.spec, self.counts(ledger), space_size=self.setup.space.size,
                         elapsed_s=self.clock.elapsed_s(), metric_at_best=self.metric_at_best(ledger))

    def counts(self, ledger: Ledger) -> StudyCounts:
        return StudyCounts(
            completed=len(ledger.completed()),
            running=sum(1 for t in ledger.trials if t.state is TrialState.RUNNING),
            distinct_maps=len({assignment_key(t.params) for t in ledger.trials if t.state is TrialState.COMPLETE}),
            trials=len(ledger.trials),
            qat_steps_used=ledger.qat_steps_used,
            promotion=ledger.next_promotion(len(self.spec.rungs), self.spec.eta, self.setup.workload.higher_is_better),
        )

    def metric_at_best(self, ledger: Ledger) -> bool:
        """Has a map costing the least possible in every objective scored the metric's best value?
        Then every other map costs more for no better quality: the front cannot change."""
        best = self.setup.workload.metric_best
        if best is None:
            return False
        sign = 1.0 if self.setup.workload.higher_is_better else -1.0
        floor = self.min_costs
        for t in ledger.completed():
            assert t.values is not None
            top = ledger.top(t.number)
            quality = t.values[0] if top is None else top.quality
            at_floor = all(v <= c + 1e-9 * max(1.0, abs(c)) for v, c in zip(t.values[1:], floor, strict=True))
            if at_floor and sign * (quality - best) >= 0:
                return True
        return False

    def _min_costs(self) -> list[float]:
        """Each cost objective's least possible value: every layer at its cheapest allowed format."""
        per_layer = [self.setup.cost_table[layer.fqn] for layer in self.setup.graph.layers]
        fixed = float_costs(self.spec.cost_objectives, self.setup.profile, self.setup.graph)
        return [sum(min(costs[o] for costs in layer.values()) for layer in per_layer) + fixed[o]
                for o in map(str, self.spec.cost_objectives)]

    # -- promotions --------------------------------------------------------------------------
    def promote(self, number: int, rung: int, fp32: float) -> None:
        """Train trial ``number``'s map again at ``rung``, with the maps the ledger promotes next to the same
        rung (up to ``maps_per_pass``, as the budget affords) in the same pass; each claim (a study
        attribute) comes first, so other processes skip it and count its steps."""
        spec = self.spec
        steps = steps_at(spec, rung)
        worker = f"{socket.gethostname()}:{os.getpid()}"
        running: RungRecord = {"qat_steps": steps, "worker": worker, "quality": None, "qconfig": None}
        numbers = [number]
        self.study.set_user_attr(rung_key(rung, number), running)
        reserve = reevaluation_reserve(spec)
        while len(numbers) < self.setup.maps_per_pass:
            ledger = self.ledger()
            nxt = ledger.next_promotion(len(spec.rungs), spec.eta, self.setup.workload.higher_is_better)
            if nxt is None or nxt[1] != rung or not fits(spec, ledger.qat_steps_used, steps, reserve):
                break
            numbers.append(nxt[0])
            self.study.set_user_attr(rung_key(rung, nxt[0]), running)
        trials = self.study.get_trials(deepcopy=False)
        which = f"trial {number}" if len(numbers) == 1 else f"trials {', '.join(map(str, numbers))}"
        message = f"rung {rung + 1}/{len(spec.rungs)}: {which} at {steps} QAT steps"
        self.set_phase(SearchPhase.PROMOTING, message)
        self.clock.tell(self.ledger(), message)
        started = time.monotonic()
        assignments = [self.setup.full_assignment({k: str(v) for k, v in trials[n].params.items()}) for n in numbers]
        results = score_assignments(self.setup, fp32, assignments, qat_steps=steps, seed=spec.seed,
                                    trial_numbers=numbers)
        self.clock.count_training(started, steps * len(numbers))
        for n, scored in zip(numbers, results, strict=True):
            if isinstance(scored, Exception):  # one unit of work: record why, keep searching
                failed: RungRecord = {**running, "fail_reason": f"{type(scored).__name__}: {scored}"[:2000]}
                self.study.set_user_attr(rung_key(rung, n), failed)
            else:
                done: RungRecord = {**running, "quality": scored.quality, "qconfig": scored.qconfig}
                self.study.set_user_attr(rung_key(rung, n), done)

    def stop_if_failing(self) -> None:
        """Raise :class:`SearchError` once the last ``max_consecutive_failures`` finished trials all
        failed with an error of their own (a dead process's trial is retried, not counted)."""
        limit = self.spec.max_consecutive_failures
        finished = [
            t for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
            if t.state is TrialState.COMPLETE or TrialKey.FAIL_REASON in t.user_attrs
        ]
        last = sorted(finished, key=lambda t: t.number)[-limit:]
        if len(last) == limit and all(t.state is TrialState.FAIL for t in last):
            raise SearchError(
                f"search stopped: {limit} trials in a row failed (max_consecutive_failures={limit}); "
                f"last: trial {last[-1].number}: {TrialAttrs.of(last[-1]).fail_reason}"
            )

    # -- one pass of new trials ----------------------------------------------------------------
    def step(self, objective: Objective, ledger: Ledger) -> None:
        """Run the next pass of new trials: up to ``maps_per_pass`` (as the budget affords: a pass claims
        that many budget slots or fewer), taken from the study's queue (retries, seeds) or asked of the
        sampler (Optuna's ask/tell), trained together (:func:`~search.study.objective.score_assignments`)
        and told one by one, each its own trial.  As in optuna's own ``_run_trial``: stale trials are failed
        first, the trials held get heartbeats, a trial failing by its own error is recorded FAIL and the
        loop goes on, and Ctrl-C records the held trials FAIL (interrupted) and stops the search."""
        if self.storage is not None:
            self.fail_stale_trials()
        budget = self.trial_budget() if self.spec.budget_qat_steps is None else 0
        k = batch_size(self.spec, self.setup.maps_per_pass, self.counts(ledger), budget, self.setup.space.size)
        self.seeds.enqueue_next()
        waiting = self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        # a queued seed (or a retry) is seeding; the sampler's proposals and the search's own follow-ups
        # (a map next to a repeat, a front point's neighbour) are sampling
        seeding = TrialAttrs.of(waiting[0]).source not in FOLLOW_UPS if waiting else False
        self.set_phase(SearchPhase.SEEDING if seeding else SearchPhase.SAMPLING)
        held: list[optuna.Trial] = []  # asked and not told yet
        with _Heartbeats(self.storage) as beats:
            try:
                proposals = self._ask(objective, k, beats, held)
                if proposals:
                    self._train(objective, proposals, beats, held)
            except KeyboardInterrupt:  # a resumed search trains these maps again (requeue_interrupted)
                for trial in list(held):
                    Objective.interrupted(trial)
                    self._tell(trial, beats, held, state=TrialState.FAIL)
                raise

    def _ask(self, objective: Objective, k: int, beats: _Heartbeats, held: list[optuna.Trial]) -> list[Proposal]:
        """Up to ``k`` trials that hold a budget slot and the claim on a map not trained yet; repeats served
        from the cache and pruned twins are told at once (they train nothing) and the next is asked."""
        proposals: list[Proposal] = []
        for _ in range(3 * k + 2):  # repeats and twins do not loop forever
            if len(proposals) >= k or (proposals and self.seeds.waits_for([p.assignment for p in proposals])):
                break
            self.seeds.in_flight = len(proposals)
            self.seeds.enqueue_next()
            with warnings.catch_warnings():  # "Heartbeat ... supposed to be used with Study.optimize": _Heartbeats
                warnings.simplefilter("ignore", UserWarning)
                trial = self.study.ask()
            held.append(trial)
            beats.add(trial._trial_id)
            try:
                if not self._claim_slot(trial):
                    self._tell(trial, beats, held, state=TrialState.PRUNED)
                    break
                proposal = objective.propose(trial)
            except optuna.TrialPruned:  # a twin trains the same map
                if TrialAttrs.of(trial).source is Source.SAMPLER:  # the sampler repeated a map: try one near it
                    self.seeds.repeated = {name: str(v) for name, v in trial.params.items()}
                self._tell(trial, beats, held, state=TrialState.PRUNED)
                continue
            except Exception as exc:  # noqa: BLE001  (its own error: recorded FAIL, the search goes on)
                objective.failed(trial, exc)
                self._tell(trial, beats, held, state=TrialState.FAIL)
                continue
            if isinstance(proposal, Proposal):
                proposals.append(proposal)
            else:  # served from the cache
                self._tell(trial, beats, held, values=proposal)
        self.seeds.in_flight = 0
        return proposals

    def _claim_slot(self, trial: optuna.Trial) -> bool:
        """An atomic claim of a budget slot (shared studies; a budget in QAT steps is the ledger's, see
        next_work).  A trial that loses the race never trains: its queued parameters are queued again."""
        if self.storage is None or self.spec.budget_qat_steps is not None or claim_budget_slot(
            self.storage, self.study.study_name, trial.number, self.spec.n_trials
        ):
            return True
        frozen = next(t for t in self.study.get_trials(deepcopy=False) if t.number == trial.number)
        fixed = frozen.system_attrs.get("fixed_params")
        if fixed:
            source = TrialAttrs.of(frozen).source
            self.study.enqueue_trial(fixed, user_attrs={TrialKey.SOURCE: source}, skip_if_exists=False)
        log.info("trial %d pruned: every budget slot is taken by trials running elsewhere", trial.number)
        return False

    def _train(self, objective: Objective, proposals: list[Proposal], beats: _Heartbeats,
               held: list[optuna.Trial]) -> None:
        """Train the proposals' maps in one pass and tell each trial what its map scored (or its error)."""
        steps = objective.qat_steps
        started = time.monotonic()
        results = score_assignments(self.setup, objective.fp32, [p.assignment for p in proposals], qat_steps=steps,
                                    seed=self.spec.seed, trial_numbers=[p.trial.number for p in proposals])
        self.clock.count_training(started, max(steps, 1) * len(proposals))
        for proposal, scored in zip(proposals, results, strict=True):
            if isinstance(scored, Exception):
                objective.failed(proposal.trial, scored)
                self._tell(proposal.trial, beats, held, state=TrialState.FAIL)
            else:
                values = objective.complete(proposal, scored, batch_size=len(proposals))
                self._tell(proposal.trial, beats, held, values=values)

    def _tell(self, trial: optuna.Trial, beats: _Heartbeats, held: list[optuna.Trial],
              values: tuple[float, ...] | None = None, state: TrialState | None = None) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a NaN value: Optuna records a FAIL, reported below
            frozen = self.study.tell(trial, None if values is None else list(values), state=state)
        beats.discard(trial._trial_id)
        held.remove(trial)
        self._after_trial(frozen)

    def _after_trial(self, trial: FrozenTrial) -> None:
        if trial.state is TrialState.COMPLETE:
            self.seeds.repeated_map(trial)
        attrs = TrialAttrs.of(trial)
        if trial.state is TrialState.COMPLETE and not attrs.cached:
            self.observer.trial_done(outcome_of(trial, self.setup), self.clock.progress(self.ledger()))
        if trial.state is TrialState.FAIL and not trial.user_attrs.get(TrialKey.INTERRUPTED):
            # its own error (the objective's ``fail_reason``), or a NaN/missing value Optuna refused
            error = attrs.fail_reason or "the objective returned no finite value (NaN or None)"
            self.observer.trial_failed(failure_of(self.setup, trial, str(error), retried=False))

    def fail_stale_trials(self) -> None:
        """Mark trials of dead processes FAIL; the storage's callback re-enqueues their params."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)
            if self.storage is not None:
                fail_trials_without_heartbeat(self.study, self.storage, self.spec.grace_period_s)

    # -- the front's re-evaluation ----------------------------------------------------------
    @staticmethod
    def _reeval_rung(ledger: Ledger, number: int) -> int:
        """The rung trial ``number``'s extra seeds were run at (-1: none)."""
        rec = ledger.reevals.get(number)
        return -1 if rec is None else int(rec.get("rung", -1))

    def reevaluate_front(self) -> None:
        """Extra seeds where front neighbours are within noise of each other (noise-aware reporting);
        they count in the budget and the progress."""
        if self.spec.reevaluate_front == 0:
            return
        # a point's mean can fall below one that was dominated before, and a measured spread can
        # bring more neighbours within noise: later rounds handle them (bounded at 4 rounds)
        for _ in range(4):
            ledger = self.ledger()
            trained = outcomes(self.setup, ledger)
            front = pareto_front(trained, self.setup.workload.higher_is_better)
            # the seeding's noise probe alone (one map, two seeds) does not stand for the front's spread:
            # until a front point is re-evaluated, the closest pair is, which measures it
            measured = [o for o in trained if o.n_evaluations > 1]
            if all(o.number == ledger.attrs.get(StudyKey.NOISE) for o in measured):
                measured = []
            noise = noise_level([o.quality_std for o in measured], self.spec.min_gain)
            todo = [front[i] for i in reevaluation_todo([p.quality for p in front],
                                                        [p.n_evaluations for p in front], noise)
                    if self._reeval_rung(ledger, front[i].number) != front[i].rung]
            if not todo or self.observer.should_stop():
                return
            self.set_phase(SearchPhase.REEVALUATING)
            done = 0
            while done < len(todo):
                # the next points at the same rung, as many as one pass takes and the step budget affords
                ledger = self.ledger()
                used = ledger.qat_steps_used
                chunk: list[TrialOutcome] = []
                for point in todo[done:]:
                    cost = self.spec.reevaluate_front * point.qat_steps
                    if (len(chunk) == self.setup.maps_per_pass or (chunk and point.qat_steps != chunk[0].qat_steps)
                            or not fits(self.spec, used, cost)):
                        break
                    chunk.append(point)
                    used += cost
                if not chunk:
                    self.stop_reason = "budget (re-evaluation cut short)"
                    return
                numbers = ", ".join(str(p.number) for p in chunk)
                which = (f"point {done + 1}/{len(todo)} (trial {numbers})" if len(chunk) == 1 else
                         f"points {done + 1}-{done + len(chunk)}/{len(todo)} (trials {numbers})")
                self.clock.tell(ledger, f"re-evaluating front {which}")
                self._reevaluate(chunk)
                done += len(chunk)

    def probe_noise(self, trial: FrozenTrial, ledger: Ledger) -> None:
        """Train the all-int8 seed map once more with another seed: the seed spread the seeding needs
        (:meth:`SeedPlan.noise_probe_due`).  Recorded as its re-evaluation, so the front's re-evaluation
        later gives it one seed fewer; skipped (recorded as -1) where the step budget has no room."""
        if not fits(self.spec, ledger.qat_steps_used, steps_at(self.spec, 0), reevaluation_reserve(self.spec)):
            self.study.set_user_attr(StudyKey.NOISE, -1)
            return
        self.study.set_user_attr(StudyKey.NOISE, trial.number)
        self.set_phase(SearchPhase.SEEDING)
        self.clock.tell(ledger, f"measuring the seed spread: trial {trial.number} (all-int8), 2nd seed")
        self._reevaluate([outcome_of(trial, self.setup)], n_seeds=1)

    def _reevaluate(self, points: list[TrialOutcome], n_seeds: int | None = None) -> None:
        """Train ``points``' maps (one rung: the same QAT steps) with ``n_seeds`` more seeds, all maps of
        one seed in one pass; each point's record claims its steps first and then holds its qualities."""
        setup = self.setup
        n_seeds = self.spec.reevaluate_front if n_seeds is None else n_seeds
        ledger = self.ledger()
        records: list[ReevalRecord] = []
        for point in points:
            # a noise probe at a lower rung is replaced by this record: its steps stay counted
            earlier = ledger.reevals.get(point.number)
            steps = n_seeds * point.qat_steps + (0 if earlier is None else int(earlier["qat_steps"]))
            record: ReevalRecord = {"rung": point.rung, "qat_steps": steps, "qualities": None}
            self.study.set_user_attr(reeval_key(point.number), record)
            records.append(record)
        qat_steps = points[0].qat_steps
        qualities: list[list[float]] = [[] for _ in points]
        for k in range(1, n_seeds + 1):
            started = time.monotonic()
            got = evaluate_seed(setup, [p.assignment for p in points], qat_steps=qat_steps,
                                seed=self.spec.seed + 1000 * k)
            if setup.evaluator is None:
                self.clock.count_training(started, qat_steps * len(points))
            for mine, quality in zip(qualities, got, strict=True):
                mine.append(quality)
        for point, record, mine in zip(points, records, qualities, strict=True):
            self.study.set_user_attr(reeval_key(point.number), {**record, "qualities": mine})


def maps_per_pass(spec: SearchSpec, workload: Workload, graph: LayerGraph, evaluator: Evaluator | None = None) -> int:
    """``spec.maps_per_pass``, or where automatic, :func:`~search.study.budget.auto_maps_per_pass` of the
    model's size and the device's free memory; 1 with a benchmark ``evaluator`` (no QAT pass to share, and
    one at a time each proposal sees every result before it)."""
    if spec.maps_per_pass is not None:
        return spec.maps_per_pass
    if evaluator is not None:
        return 1
    n_params = sum(p.numel() for p in workload.model.parameters())
    scale = training_batch_scale(workload)  # the layer graph is of the example inputs; a step trains a batch
    activations = int(scale * sum(math.prod(layer.output_shape) for layer in graph.layers))
    layer_macs = scale * sum(layer.macs for layer in graph.layers) / max(1, len(graph.layers))
    device = resolve_device(spec.device)
    return auto_maps_per_pass(n_params, activations, device.type, free_memory(device), layer_macs)


def training_batch_scale(workload: Workload) -> float:
    """How many example inputs' worth of values a batch holds: the first calibration batch's first input
    over the first example input (1 where either is not a tensor).  The calibration data stands in for the
    training stream, which is user code not to be run before the fp32 check; it is as large or larger on
    every built-in and corpus workload, so the estimate errs toward one map per pass."""
    example = workload.example_inputs[0] if workload.example_inputs else None
    first = workload.calibration_batches[0][0] if workload.calibration_batches else None
    if not isinstance(first, torch.Tensor) or not isinstance(example, torch.Tensor) or example.numel() == 0:
        return 1.0
    return max(1.0, first.numel() / example.numel())


def free_memory(device: torch.device) -> int | None:
    """Bytes free on ``device`` (a GPU's, or the machine's available memory); None where not known."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:  # Linux: MemAvailable counts reclaimable caches
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def run_search(
    spec: SearchSpec,
    *,
    workload: Workload | None = None,
    profile: TargetProfile | None = None,
    observer: SearchObserver | None = None,
    evaluator: Evaluator | None = None,
) -> SearchResult:
    """Search per-layer precision maps for ``spec``; return the Pareto front and all trials.

    ``workload`` and ``profile``, when given, are used as they are instead of loading
    ``spec.workload`` and ``spec.profile`` (a caller that already holds them, such as the service
    with a profile from its database, passes them ready).  Several processes may call this with the
    same ``spec.storage`` and ``spec.study_name``; they share the budget (``spec.n_trials``, or
    ``spec.budget_qat_steps``).
    ``observer`` hears what happens (:class:`SearchObserver`; its ``should_stop`` is asked between
    units of work).  Bad input raises before any training starts (:class:`~search.spec.SearchError`, and its
    subclass :class:`~search.study.storage.StorageError` when the storage cannot be opened).
    ``evaluator`` replaces the QAT run (benchmarks over a precomputed table use it).
    ``profile`` is a ready target profile (else ``spec.profile`` is loaded by name or path).
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    workload = workload or load_workload(spec.workload, spec.workload_options)
    profile = profile or load_profile(spec.profile)
    graph = discover_layers(workload.model, workload.example_inputs)
    space = build_space(spec, graph, profile)
    spec = spec.resolve_fidelity(len(space.choices))
    if spec.torch_threads is None:  # fixed now for the whole search, and recorded in its result
        spec = spec.model_copy(update={"torch_threads": torch.get_num_threads()})
    setup = SearchSetup(spec=spec, workload=workload, profile=profile, graph=graph, space=space, evaluator=evaluator,
                        maps_per_pass=maps_per_pass(spec, workload, graph, evaluator))
    observer = observer or SearchObserver()
    storage, study = open_study(setup, observer)
    before = torch.get_num_threads()
    torch.set_num_threads(spec.torch_threads or before)  # one count for every trial (see search.threads)
    try:
        return _Search(setup, storage, study, observer).run()
    finally:
        torch.set_num_threads(before)

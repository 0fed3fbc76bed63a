"""One trial of the search: the Optuna objective, and a finished trial read back as an outcome.

The objective suggests a format per free layer, prices the assignment, makes sure no other trial
(in any process sharing the study) trains the same assignment, then trains and scores it with a short
QAT run (or asks the benchmark ``evaluator``) and records the qconfig JSON as a trial attribute.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.profiles import TargetProfile
from search.quant.checkpoint import save_state_dict
from search.quant.cost import cost_model, float_costs
from search.quant.formats import as_formats, parse_format, trial_filename
from search.quant.layers import LayerGraph
from search.quant.qconfig import QualityReport, build_qconfig
from search.results import TrialOutcome
from search.spec import SearchSpec
from search.study.attrs import TrialAttrs, TrialKey, is_cached, set_trial_attr
from search.study.pareto import assignment_key
from search.study.space import SearchSpace
from search.train import TrialRun
from search.train import run_trial as run_trial  # patched by tests (the engine the objective calls)
from search.train import run_trials as run_trials
from search.workloads import Workload

log = logging.getLogger("mixq.search")

# A seam for benchmarks over a precomputed table: (assignment, seed) -> quality, no QAT run.
Evaluator = Callable[[Mapping[str, str], int], float]


@dataclass(frozen=True)
class SearchSetup:
    """What every trial of one search shares: the request and what was built from it."""

    spec: SearchSpec
    workload: Workload
    profile: TargetProfile
    graph: LayerGraph
    space: SearchSpace
    evaluator: Evaluator | None = None
    maps_per_pass: int = 1  # spec.maps_per_pass resolved (automatic: search.study.budget.auto_maps_per_pass)

    @cached_property
    def cost_table(self) -> dict[str, dict[str, dict[str, float]]]:
        """fqn -> format name -> cost objective -> what that layer costs in that format, for every
        format the layer may take (built once; a map's costs are these summed over its layers)."""
        models = [cost_model(o, self.profile) for o in self.spec.cost_objectives]
        table: dict[str, dict[str, dict[str, float]]] = {}
        for layer in self.graph.layers:
            # keyed by the names the assignments use (canonical: the request validators normalise them)
            names = self.space.options(layer.fqn) or (self.space.pinned[layer.fqn],)
            table[layer.fqn] = {name: {m.name: m.layer_cost(layer, parse_format(name)) for m in models}
                                for name in names}
        return table

    def layer_cost(self, fqn: str, fmt: str, objective: str | None = None) -> float:
        """One layer's cost in one format (the first cost objective unless named)."""
        name = str(objective or self.spec.cost_objectives[0])
        by_format = self.cost_table[fqn]
        if fmt not in by_format:  # a format the space does not offer this layer (a hand-made map)
            layer = self.graph.layers[self.graph.fqns.index(fqn)]
            return cost_model(name, self.profile).layer_cost(layer, parse_format(fmt))
        return by_format[fmt][name]

    @cached_property
    def float_costs(self) -> dict[str, float]:
        """What the graph's float compute (attention matmuls, embeddings...) costs: the same in every map."""
        return float_costs(self.spec.cost_objectives, self.profile, self.graph) if self.graph.float_layers else {}

    def costs(self, assignment: Mapping[str, str]) -> dict[str, float]:
        """Each cost objective of a full map: its layers' costs summed in execution order, then the float
        compute (as :func:`search.quant.cost.model_costs` adds them, so the floats are the same)."""
        out: dict[str, float] = {}
        for objective in map(str, self.spec.cost_objectives):
            total = 0.0
            for fqn in self.graph.fqns:
                total += self.layer_cost(fqn, assignment[fqn], objective)
            out[objective] = total + self.float_costs.get(objective, 0.0)
        return out

    def full_assignment(self, free: Mapping[str, str]) -> dict[str, str]:
        """Every layer's format (pins included), in execution order."""
        merged = {**self.space.pinned, **self.space.expand(free)}
        return {fqn: merged[fqn] for fqn in self.graph.fqns}

    def quality_drop(self, quality: float, fp32: float) -> float:
        """How much worse than fp32 ``quality`` is, in the metric's units (>= 0 when worse)."""
        return (fp32 - quality) if self.workload.higher_is_better else (quality - fp32)


@dataclass(frozen=True)
class RungResult:
    """A trial's map trained again, longer, after promotion to a higher fidelity rung."""

    rung: int
    quality: float
    qat_steps: int
    qconfig: str | None  # the qconfig JSON of that run (None with a benchmark evaluator)


@dataclass(frozen=True)
class Scored:
    quality: float
    qconfig: str | None
    duration_s: float
    maps_per_pass: int = 1  # the maps of the QAT pass that trained it (search.train.TrialBatch)
    batched: bool = False  # trained as one batched computation with the others of its pass


# a map of a pass: what it scored, or the error it failed with (its own, found by training it alone)
ScoreOrError = Scored | Exception


def _scored(setup: SearchSetup, fp32: float, assignment: Mapping[str, str], run: TrialRun, *, qat_steps: int,
            seed: int, trial_number: int, maps_per_pass: int, batched: bool) -> Scored:
    """One trained map's qconfig JSON and weights (where the spec asks), as :func:`score_assignment` keeps them."""
    spec = setup.spec
    formats = as_formats(assignment)
    qconfig = build_qconfig(
        run.model, setup.graph, formats, pin_reasons=setup.space.pin_reasons, profile=setup.profile.name,
        quality=QualityReport(metric=setup.workload.metric, value=run.quality, fp32_value=fp32,
                              higher_is_better=setup.workload.higher_is_better),
        costs=setup.costs(assignment), workload=spec.workload, study_name=spec.study_name, trial_number=trial_number,
        qat_steps=qat_steps, seed=seed, spec=spec.request_json(), maps_per_pass=maps_per_pass, batched=batched,
    )
    if spec.weights_dir is not None:  # a promoted map's longer run replaces its first-rung weights
        save_state_dict(run.model, Path(spec.weights_dir) / trial_filename(trial_number, assignment, "weights"))
    return Scored(run.quality, qconfig.model_dump_json(), run.duration_s, maps_per_pass, batched)


def score_assignment(
    setup: SearchSetup, fp32: float, assignment: Mapping[str, str], *, qat_steps: int, seed: int, trial_number: int,
) -> Scored:
    """Train ``assignment`` (every layer) alone for ``qat_steps`` and score it, or ask the evaluator;
    with a trained model, build its qconfig JSON and save its weights where the spec asks."""
    if setup.evaluator is not None:
        return Scored(float(setup.evaluator(assignment, seed)), None, 0.0)
    run = run_trial(setup.workload, as_formats(assignment), qat_steps=qat_steps, seed=seed, device=setup.spec.device)
    return _scored(setup, fp32, assignment, run, qat_steps=qat_steps, seed=seed, trial_number=trial_number,
                   maps_per_pass=1, batched=False)


def _one_by_one(setup: SearchSetup, fp32: float, assignments: Sequence[Mapping[str, str]], *, qat_steps: int,
                seed: int, trial_numbers: Sequence[int]) -> list[ScoreOrError]:
    out: list[ScoreOrError] = []
    for assignment, number in zip(assignments, trial_numbers, strict=True):
        try:
            out.append(score_assignment(setup, fp32, assignment, qat_steps=qat_steps, seed=seed, trial_number=number))
        except Exception as exc:  # noqa: BLE001  (this map's own error, recorded against its trial)
            out.append(exc)
    return out


def score_assignments(
    setup: SearchSetup, fp32: float, assignments: Sequence[Mapping[str, str]], *, qat_steps: int, seed: int,
    trial_numbers: Sequence[int],
) -> list[ScoreOrError]:
    """Train several maps (every layer each) in one pass on the same batches (``seed``) and score each, as
    :func:`score_assignment` does one (its numbers are those of training it alone), in the order given.

    Where the pass fails (``search.train.run_trials`` raised: one map's NaN loss, a layer the batched
    engine trips on), its maps are trained again one at a time, so that each failure is its own map's
    and the others still score: an entry is then the exception its map failed with.  A single map, or
    a benchmark ``evaluator``, takes the one-map path."""
    if setup.evaluator is not None or len(assignments) <= 1:
        return _one_by_one(setup, fp32, assignments, qat_steps=qat_steps, seed=seed, trial_numbers=trial_numbers)
    try:
        batch = run_trials(setup.workload, [as_formats(a) for a in assignments], qat_steps=qat_steps, seed=seed,
                           device=setup.spec.device)
        if len(batch.runs) != len(assignments):
            raise RuntimeError(f"run_trials returned {len(batch.runs)} runs for {len(assignments)} maps")
    except Exception as exc:  # noqa: BLE001  (each map is tried alone: its own error, or none)
        log.warning("a QAT pass of %d maps failed (%s: %s); training them one at a time",
                    len(assignments), type(exc).__name__, exc)
        return _one_by_one(setup, fp32, assignments, qat_steps=qat_steps, seed=seed, trial_numbers=trial_numbers)
    out: list[ScoreOrError] = []
    for assignment, run, number in zip(assignments, batch.runs, trial_numbers, strict=True):
        try:
            out.append(_scored(setup, fp32, assignment, run, qat_steps=qat_steps, seed=seed, trial_number=number,
                               maps_per_pass=max(1, batch.maps_per_pass), batched=batch.batched))
        except Exception as exc:  # noqa: BLE001  (its qconfig or weights could not be written)
            out.append(exc)
    return out


def evaluate_seed(setup: SearchSetup, assignments: Sequence[Mapping[str, str]], *, qat_steps: int,
                  seed: int) -> list[float]:
    """The qualities of several maps trained with another ``seed`` (the front's re-evaluations), in one pass
    where the engine can (one at a time where the pass fails; a map's own failure raises, as alone)."""
    if setup.evaluator is not None:
        return [float(setup.evaluator(a, seed)) for a in assignments]
    formats = [as_formats(a) for a in assignments]
    device = setup.spec.device
    if len(formats) > 1:
        try:
            return [run.quality for run in run_trials(setup.workload, formats, qat_steps=qat_steps, seed=seed,
                                                      device=device).runs]
        except Exception as exc:  # noqa: BLE001  (trained again alone below: a map's own error raises there)
            log.warning("a re-evaluation pass of %d maps failed (%s: %s); training them one at a time",
                        len(formats), type(exc).__name__, exc)
    return [run_trial(setup.workload, f, qat_steps=qat_steps, seed=seed, device=device).quality for f in formats]


def outcome_of(
    trial: FrozenTrial, setup: SearchSetup, reevals: Sequence[float] = (), top: RungResult | None = None,
) -> TrialOutcome:
    """A completed trial as the search reports it: at ``top``, its highest rung above the first,
    when it was promoted; ``reevals`` are the qualities of extra seeds at that rung."""
    assert trial.values is not None
    first = trial.values[0]
    qualities = [first if top is None else top.quality, *reevals]
    costs = {str(o): float(v) for o, v in zip(setup.spec.cost_objectives, trial.values[1:], strict=True)}
    feasible = all(c <= 0.0 for c in trial.constraints.values())
    attrs = TrialAttrs.of(trial)
    raw = attrs.qconfig if top is None or top.qconfig is None else top.qconfig
    quality = statistics.fmean(qualities)
    quality_std = statistics.pstdev(qualities) if len(qualities) > 1 else 0.0
    qconfig = json.loads(raw) if isinstance(raw, str) else None
    if qconfig is not None and isinstance(qconfig.get("quality"), dict):
        # the file reports what the front and the API report: the mean over every evaluation, not the first run
        qconfig["quality"].update(value=quality, std=quality_std if len(qualities) > 1 else None,
                                  n_evaluations=len(qualities))
    return TrialOutcome(
        number=trial.number,
        assignment=setup.full_assignment({k: str(v) for k, v in trial.params.items()}),
        quality=quality,
        quality_std=quality_std,
        n_evaluations=len(qualities),
        costs=costs,
        feasible=feasible,
        duration_s=attrs.duration_s,
        source=str(attrs.source),
        cached=attrs.cached,
        qconfig=qconfig,
        rung=0 if top is None else top.rung,
        qat_steps=setup.spec.qat_steps if top is None else top.qat_steps,
        short_quality=None if top is None else first,
    )


@dataclass(frozen=True)
class Proposal:
    """A trial that holds the claim on its map and waits to train (:meth:`Objective.propose`)."""

    trial: optuna.Trial
    assignment: dict[str, str]  # every layer, pins included
    costs: dict[str, float]


class Objective:
    """``objective(trial) -> (quality, *costs)``; ``fp32`` is the reference quality of the pretrained model
    (for the quality constraint and the qconfig report).  A batched search calls its parts: :meth:`propose`
    for each trial of a pass, one :func:`score_assignments` for the pass, then :meth:`complete` (or
    :meth:`failed`) for each."""

    def __init__(self, setup: SearchSetup, study: optuna.Study, fp32: float) -> None:
        self.setup = setup
        self.study = study
        self.fp32 = fp32

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        try:
            proposal = self.propose(trial)
            if not isinstance(proposal, Proposal):
                return proposal
            steps = self.qat_steps
            scored = score_assignment(self.setup, self.fp32, proposal.assignment, qat_steps=steps,
                                      seed=self.setup.spec.seed, trial_number=trial.number)
            return self.complete(proposal, scored)
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:  # Optuna records a FAIL; a resumed search trains the map again
            self.interrupted(trial)
            raise
        except Exception as exc:  # study.optimize records the FAIL; the reason is ours to keep
            self.failed(trial, exc)
            raise

    @property
    def qat_steps(self) -> int:
        """The first rung's QAT steps."""
        return self.setup.spec.qat_steps * self.setup.spec.rungs[0]

    @staticmethod
    def interrupted(trial: optuna.Trial) -> None:
        """``trial`` was interrupted (Ctrl-C) before it finished: a resumed search trains its map again."""
        set_trial_attr(trial, TrialKey.INTERRUPTED, True)

    @staticmethod
    def failed(trial: optuna.Trial, exc: BaseException) -> None:
        """``trial`` failed with ``exc``, its own error: kept as its reason (the caller records the FAIL)."""
        set_trial_attr(trial, TrialKey.FAIL_REASON, f"{type(exc).__name__}: {exc}"[:2000])
        log.warning("trial %d failed: %s", trial.number, exc)

    def propose(self, trial: optuna.Trial) -> Proposal | tuple[float, ...]:
        """Suggest a format per free layer, price the map and claim it: the trial's values where the map
        was trained already (served from the cache, nothing to train), else the :class:`Proposal` to
        train.  Raises ``optuna.TrialPruned`` where a twin trial trains the same map."""
        setup = self.setup
        free = {fqn: trial.suggest_categorical(fqn, list(options)) for fqn, options in setup.space.choices.items()}
        assignment = setup.full_assignment(free)
        costs = setup.costs(assignment)
        set_trial_attr(trial, TrialKey.SOURCE, str(TrialAttrs.of(trial).source))
        set_trial_attr(trial, TrialKey.WORKER, f"{socket.gethostname()}:{os.getpid()}")
        previous = self._claim(trial, free)
        if previous is not None:
            assert previous.values is not None
            set_trial_attr(trial, TrialKey.CACHED, True)
            set_trial_attr(trial, TrialKey.DURATION_S, 0.0)
            qconfig = TrialAttrs.of(previous).qconfig
            if qconfig is not None:
                set_trial_attr(trial, TrialKey.QCONFIG, qconfig)
            self._constrain(trial, previous.values[0])
            return tuple(previous.values)
        # the first rung's QAT steps, counted against a budget in steps (the evaluator stands for
        # a run of that length)
        set_trial_attr(trial, TrialKey.QAT_STEPS, self.qat_steps)
        return Proposal(trial, assignment, costs)

    def complete(self, proposal: Proposal, scored: Scored, batch_size: int = 1) -> tuple[float, ...]:
        """Record what ``proposal``'s map scored (trained with ``batch_size - 1`` others); its values."""
        trial = proposal.trial
        if scored.qconfig is not None:
            set_trial_attr(trial, TrialKey.QCONFIG, scored.qconfig)
        set_trial_attr(trial, TrialKey.DURATION_S, scored.duration_s)
        if self.setup.evaluator is None:
            set_trial_attr(trial, TrialKey.MAPS_PER_PASS, scored.maps_per_pass)
            set_trial_attr(trial, TrialKey.BATCHED, scored.batched)
        set_trial_attr(trial, TrialKey.BATCH_SIZE, batch_size)
        self._constrain(trial, scored.quality)
        return (scored.quality, *proposal.costs.values())

    def _claim(self, trial: optuna.Trial, free: Mapping[str, str]) -> FrozenTrial | None:
        """Make sure no two trials train the same assignment, across processes.

        Returns the completed trial to reuse, or None once this trial holds the claim.  A RUNNING
        twin that already claimed it, or has a lower number (both suggested before either checked),
        wins: this trial is pruned as a duplicate.  The claim is a user attribute set right after
        the check, so the remaining race window is that gap (milliseconds), not a whole trial.
        """
        key = assignment_key(free)
        twins = [
            t for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
            if t.number != trial.number and assignment_key(t.params) == key and not is_cached(t)
        ]
        done = next((t for t in twins if t.state is TrialState.COMPLETE), None)
        if done is not None:
            return done
        if any(TrialAttrs.of(t).claimed or t.number < trial.number for t in twins):
            set_trial_attr(trial, TrialKey.DUPLICATE_OF, min(t.number for t in twins))
            raise optuna.TrialPruned("the same assignment is being trained by another trial")
        set_trial_attr(trial, TrialKey.CLAIMED, True)
        return None

    def _constrain(self, trial: optuna.Trial, quality: float) -> None:
        max_drop = self.setup.spec.max_quality_drop
        if max_drop is not None:
            trial.set_constraint("quality_drop", self.setup.quality_drop(quality, self.fp32) - max_drop)

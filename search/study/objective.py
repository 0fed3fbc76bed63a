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
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.profiles import TargetProfile
from search.quant.checkpoint import save_state_dict
from search.quant.cost import model_costs
from search.quant.formats import as_formats, trial_filename
from search.quant.layers import LayerGraph
from search.quant.qconfig import QualityReport, build_qconfig
from search.results import TrialOutcome
from search.spec import SearchSpec
from search.study.pareto import assignment_key
from search.study.space import SearchSpace
from search.study.storage import WORKER_ATTR
from search.train import run_trial
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


def score_assignment(
    setup: SearchSetup, fp32: float, assignment: Mapping[str, str], *, qat_steps: int, seed: int, trial_number: int,
) -> Scored:
    """Train ``assignment`` (every layer) for ``qat_steps`` and score it, or ask the evaluator;
    with a trained model, build its qconfig JSON and save its weights where the spec asks."""
    spec = setup.spec
    if setup.evaluator is not None:
        return Scored(float(setup.evaluator(assignment, seed)), None, 0.0)
    formats = as_formats(assignment)  # parsed once; the engine takes the format type
    costs = model_costs(spec.cost_objectives, setup.profile, setup.graph, formats)
    run = run_trial(setup.workload, formats, qat_steps=qat_steps, seed=seed, device=spec.device)
    qconfig = build_qconfig(
        run.model, setup.graph, formats, pinned=setup.space.pin_reasons, profile=setup.profile.name,
        quality=QualityReport(metric=setup.workload.metric, value=run.quality, fp32_value=fp32,
                              higher_is_better=setup.workload.higher_is_better),
        costs=costs, workload=spec.workload, study_name=spec.study_name, trial_number=trial_number,
        qat_steps=qat_steps, seed=seed, spec=spec.request_json(),
    )
    if spec.weights_dir is not None:  # a promoted map's longer run replaces its first-rung weights
        save_state_dict(run.model, Path(spec.weights_dir) / trial_filename(trial_number, assignment, "weights"))
    return Scored(run.quality, qconfig.model_dump_json(), run.duration_s)


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
    raw = trial.user_attrs.get("qconfig") if top is None or top.qconfig is None else top.qconfig
    quality = statistics.fmean(qualities)
    quality_std = statistics.pstdev(qualities) if len(qualities) > 1 else 0.0
    qconfig = json.loads(raw) if isinstance(raw, str) else None
    if qconfig is not None and isinstance(qconfig.get("quality"), dict):
        # the file reports what the front and the API report: the mean over every evaluation, not the first run
        qconfig["quality"].update(value=quality, std=quality_std, n_evaluations=len(qualities))
    return TrialOutcome(
        number=trial.number,
        assignment=setup.full_assignment({k: str(v) for k, v in trial.params.items()}),
        quality=quality,
        quality_std=quality_std,
        n_evaluations=len(qualities),
        costs=costs,
        feasible=feasible,
        duration_s=float(trial.user_attrs.get("duration_s", 0.0)),
        source=str(trial.user_attrs.get("source", "sampler")),
        cached=bool(trial.user_attrs.get("cached", False)),
        qconfig=qconfig,
        rung=0 if top is None else top.rung,
        qat_steps=setup.spec.qat_steps if top is None else top.qat_steps,
        short_quality=None if top is None else first,
    )


class Objective:
    """``objective(trial) -> (quality, *costs)`` for ``study.optimize``; ``fp32`` is the reference
    quality of the pretrained model (for the quality constraint and the qconfig report)."""

    def __init__(self, setup: SearchSetup, study: optuna.Study, fp32: float) -> None:
        self.setup = setup
        self.study = study
        self.fp32 = fp32

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        try:
            return self._evaluate(trial)
        except optuna.TrialPruned:
            raise
        except Exception as exc:  # study.optimize records the FAIL; the reason is ours to keep
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}"[:2000])
            log.warning("trial %d failed: %s", trial.number, exc)
            raise

    def _evaluate(self, trial: optuna.Trial) -> tuple[float, ...]:
        setup, spec = self.setup, self.setup.spec
        free = {fqn: trial.suggest_categorical(fqn, list(options)) for fqn, options in setup.space.choices.items()}
        assignment = setup.full_assignment(free)
        costs = model_costs(spec.cost_objectives, setup.profile, setup.graph, as_formats(assignment))
        trial.set_user_attr("source", trial.user_attrs.get("source", "sampler"))
        trial.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{os.getpid()}")
        previous = self._claim(trial, free)
        if previous is not None:
            assert previous.values is not None
            trial.set_user_attr("cached", True)
            trial.set_user_attr("duration_s", 0.0)
            if "qconfig" in previous.user_attrs:
                trial.set_user_attr("qconfig", previous.user_attrs["qconfig"])
            self._constrain(trial, previous.values[0])
            return tuple(previous.values)
        # the first rung's QAT steps, counted against a budget in steps (the evaluator stands for
        # a run of that length)
        trial.set_user_attr("qat_steps", spec.qat_steps * spec.rungs[0])
        scored = score_assignment(setup, self.fp32, assignment, qat_steps=spec.qat_steps * spec.rungs[0],
                                  seed=spec.seed, trial_number=trial.number)
        if scored.qconfig is not None:
            trial.set_user_attr("qconfig", scored.qconfig)
        trial.set_user_attr("duration_s", scored.duration_s)
        self._constrain(trial, scored.quality)
        return (scored.quality, *costs.values())

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
            if t.number != trial.number and assignment_key(t.params) == key and not t.user_attrs.get("cached")
        ]
        done = next((t for t in twins if t.state is TrialState.COMPLETE), None)
        if done is not None:
            return done
        if any(t.user_attrs.get("claimed") or t.number < trial.number for t in twins):
            trial.set_user_attr("duplicate_of", min(t.number for t in twins))
            raise optuna.TrialPruned("the same assignment is being trained by another trial")
        trial.set_user_attr("claimed", True)
        return None

    def _constrain(self, trial: optuna.Trial, quality: float) -> None:
        max_drop = self.setup.spec.max_quality_drop
        if max_drop is not None:
            trial.set_constraint("quality_drop", self.setup.quality_drop(quality, self.fp32) - max_drop)

"""Test doubles through the worker's seams (``run_search``, ``make_workload``): no torch training.

``fake_run_search`` is a tiny real search: it runs trials in the job's real Optuna study (so several
processes share the budget as with ``search.run_search``), each trial sleeping ``trial_s`` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import optuna
import torch
from torch import nn

from search import (
    LayerInfo,
    LayerKind,
    SearchLayer,
    SearchObserver,
    SearchProgress,
    SearchResult,
    SearchSpec,
    TargetProfile,
    TrialFailure,
    TrialOutcome,
    Workload,
)
from search.study.attrs import TrialKey
from search.study.storage import claim_budget_slot, fail_trials_without_heartbeat, open_storage
from service.db import Database
from service.models import Job
from service.settings import Settings

LAYERS = ("features.0", "features.1", "classifier")
BITS = {"int4": 4, "int8": 8, "fp16": 16}


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)

    @staticmethod
    def example_inputs() -> tuple[torch.Tensor]:
        return (torch.zeros(1, 2),)


def tiny_workload(_db: Database | None = None, _job: Job | None = None, _settings: Settings | None = None) -> Workload:
    x = torch.zeros(4, 2)
    y = torch.zeros(4, dtype=torch.long)
    return Workload(
        name="tiny", model=TinyNet(), example_inputs=TinyNet.example_inputs(), train_batches=lambda g: iter([(x, y)]),
        calibration_batches=[(x, y)], loss_fn=nn.functional.cross_entropy, evaluate=lambda m: 0.5,
        metric="accuracy", higher_is_better=True,
    )


def outcome_of(
    trial: optuna.trial.FrozenTrial | optuna.Trial, quality: float, bitops: float, dur: float
) -> TrialOutcome:
    assignment = {fqn: trial.params[fqn] for fqn in LAYERS}
    return TrialOutcome(
        number=trial.number, assignment=assignment, quality=quality, quality_std=0.0, n_evaluations=1,
        costs={"bitops": bitops}, feasible=True, duration_s=dur, source="sampler", qconfig={"fake": trial.number},
    )


HEARTBEAT_S = 1  # Optuna trial heartbeat of the fake search (the real one uses 5 s)
GRACE_S = 2  # a RUNNING trial silent this long is failed and retried with the same parameters


def make_fake_run_search(trial_s: float = 0.0) -> Callable[..., SearchResult]:
    def fake_run_search(
        spec: SearchSpec, *, workload: Workload | None = None, profile: TargetProfile | None = None,
        observer: SearchObserver | None = None,
    ) -> SearchResult:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        seen = observer or SearchObserver()

        def failed(frozen: optuna.trial.FrozenTrial, error: str, retried: bool) -> None:
            assignment = {fqn: str(frozen.params[fqn]) for fqn in LAYERS if fqn in frozen.params}
            seen.trial_failed(TrialFailure(frozen.number, assignment, error, retried))

        # as search.run_search: a stale trial is reported by the process that fails it
        storage = open_storage(spec.storage, spec.max_retries, HEARTBEAT_S, GRACE_S,
                               on_stale=lambda _study, frozen, retried: failed(frozen, "no heartbeat", retried))
        assert storage is not None, "the service always runs a job on its database"
        study = optuna.create_study(
            storage=storage, study_name=spec.study_name, load_if_exists=True,
            directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(),
        )
        stop = seen.should_stop

        def complete() -> list[optuna.trial.FrozenTrial]:
            return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))

        def objective(trial: optuna.Trial) -> tuple[float, float]:
            # the budget check in the loop below is a fast path; this claim is what makes it exact
            trial.set_user_attr(TrialKey.WORKER, "fake")  # as search.study.objective: the heartbeat thread runs
            if not claim_budget_slot(storage, study.study_name, trial.number, spec.n_trials):
                raise optuna.TrialPruned("budget taken")
            for fqn in LAYERS:
                trial.suggest_categorical(fqn, list(spec.formats or ("int4", "int8", "fp16")))  # () = the profile's
            time.sleep(trial_s)
            bits = sum(BITS.get(str(trial.params[f]), 8) for f in LAYERS)
            return 1.0 - 1.0 / bits, float(bits)

        def report(_study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
            if frozen.state is optuna.trial.TrialState.FAIL:
                failed(frozen, "the fake objective failed", False)
            if frozen.state is optuna.trial.TrialState.COMPLETE:
                assert frozen.values is not None
                outcome = outcome_of(frozen, frozen.values[0], frozen.values[1], trial_s)
                seen.trial_done(outcome, SearchProgress(len(complete()), spec.n_trials, None))

        while not stop():
            optuna.storages.fail_stale_trials(study)
            fail_trials_without_heartbeat(study, storage, GRACE_S)  # as search.run_search
            running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            if len(complete()) + len(running) >= spec.n_trials:
                if not running:
                    break
                time.sleep(0.1)
                continue
            study.optimize(objective, n_trials=1, callbacks=[report])
        outcomes = [outcome_of(t, t.values[0], t.values[1], 0.0) for t in complete()]
        front = [o for o in outcomes if not any(
            p.quality >= o.quality and p.costs["bitops"] <= o.costs["bitops"]
            and (p.quality, p.costs["bitops"]) != (o.quality, o.costs["bitops"]) for p in outcomes)]
        return SearchResult(
            workload=spec.workload, metric_name="accuracy", higher_is_better=True, fp32_quality=1.0,
            layers=[
                SearchLayer(LayerInfo(f, LayerKind.LINEAR, i, (1,), (1,), 0, 0), (), None, {})
                for i, f in enumerate(LAYERS)
            ],
            pin_reasons={"features.0": "first executed layer"}, trials=outcomes, front=front,
        )

    return fake_run_search


class ThreeLinearNet(nn.Module):
    """Three linear layers: with the first and last pinned, one is left to search."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _three_linear_workload(name: str, evaluate: Callable[[nn.Module], float]) -> Workload:
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(8, dtype=torch.long)
    with torch.random.fork_rng():  # the same "pretrained" weights every time, the global RNG untouched
        torch.manual_seed(0)
        model = ThreeLinearNet()
    return Workload(
        name=name, model=model, example_inputs=(x[:1],), train_batches=lambda g: iter([(x, y)] * 1000),
        calibration_batches=[(x, y)], loss_fn=nn.functional.cross_entropy, evaluate=evaluate, metric="minus_loss",
        higher_is_better=True,
    )


def nan_once_workload(
    _db: Database | None = None, _job: Job | None = None, _settings: Settings | None = None
) -> Workload:
    """Scores 0.5, except NaN the second time it is asked (the first is the fp32 reference): exactly one
    trial fails by its own error (``NonFiniteLossError``), as a map that diverges would."""
    calls = [0]

    def evaluate(_model: nn.Module) -> float:
        calls[0] += 1
        return float("nan") if calls[0] == 2 else 0.5

    return _three_linear_workload("nan-once", evaluate)


def minus_loss_workload(
    _db: Database | None = None, _job: Job | None = None, _settings: Settings | None = None
) -> Workload:
    """The metric is minus the loss on fixed data: each precision map scores a little differently,
    so a multi-fidelity search has a front to rank at two rungs."""
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    y = torch.arange(8) % 2

    def evaluate(model: nn.Module) -> float:
        with torch.no_grad():
            return -float(nn.functional.cross_entropy(model(x), y))

    return _three_linear_workload("minus-loss", evaluate)


def diverging_workload(
    _db: Database | None = None, _job: Job | None = None, _settings: Settings | None = None
) -> Workload:
    """A workload whose training loss is NaN at every step (as a learning rate that blows up)."""
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(8, dtype=torch.long)
    return Workload(
        name="diverging", model=ThreeLinearNet(), example_inputs=(x[:1],),
        train_batches=lambda g: iter([(x, y)] * 1000), calibration_batches=[(x, y)],
        loss_fn=lambda out, target: nn.functional.cross_entropy(out, target) * float("nan"),
        evaluate=lambda m: 0.5, metric="accuracy", higher_is_better=True,
    )

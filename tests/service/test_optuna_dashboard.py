"""optuna-dashboard, pointed at the service's database, finds a finished job's study (docs/dashboard.md)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import optuna
import optuna_dashboard
import pytest
from conftest import FAST_JOB
from fakes import make_fake_run_search, tiny_workload
from fastapi.testclient import TestClient

from search import SearchSpec, run_search
from search.study.attrs import TrialKey
from search.study.seeding import LEGACY_CONSTRAINTS, DominatedFormatsSampler
from service.db import Database
from service.settings import Settings
from service.worker import Worker, study_name


def _get(app: Any, path: str) -> tuple[str, Any]:
    """One WSGI GET, as a browser's request to ``optuna-dashboard`` would be."""
    environ: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}
    setup_testing_defaults(environ)
    answer: dict[str, str] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        answer["status"] = status

    body = b"".join(app(environ, start_response))
    return answer["status"], json.loads(body)


def test_optuna_dashboard_loads_a_finished_jobs_study(client: TestClient, db: Database, settings: Settings) -> None:
    job_id = client.post("/v1/jobs", json=FAST_JOB).json()["id"]
    worker = Worker(db, settings, run_search=make_fake_run_search(), make_workload=tiny_workload)
    assert worker.next_job() == job_id
    worker.run_job(job_id)
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"

    app = optuna_dashboard.wsgi(db.url)
    status, answer = _get(app, "/api/studies")
    assert status.startswith("200")
    (study,) = [s for s in answer["study_summaries"] if s["study_name"] == study_name(job_id)]
    status, detail = _get(app, f"/api/studies/{study['study_id']}")
    assert status.startswith("200")
    complete = [t for t in detail["trials"] if t["state"] == "Complete"]
    assert len(complete) == FAST_JOB["n_trials"]


def _dashboard_trials(storage_url: str, name: str) -> list[dict[str, Any]]:
    app = optuna_dashboard.wsgi(storage_url)
    _, answer = _get(app, "/api/studies")
    (study,) = [s for s in answer["study_summaries"] if s["study_name"] == name]
    _, detail = _get(app, f"/api/studies/{study['study_id']}")
    return list(detail["trials"])


def test_a_real_search_stores_its_feasibility_the_way_optuna_and_optuna_dashboard_read_it(tmp_path: Path) -> None:
    """A tiny real search with a quality-drop limit no quantized map meets: the samplers' view
    (``trial.constraints``, ``study.best_trials``) and optuna-dashboard's (the ``constraints`` list) both
    say which trials lose too much, in agreement with the search's own ``feasible``."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    spec = SearchSpec(workload="digits", workload_options={"pretrain_steps": 30}, n_trials=3, qat_steps=1,
                      reevaluate_front=0, seed_with_sensitivity=False, formats=("int4", "int8"),
                      max_quality_drop=0.0, pin_first_last=None, storage=storage, study_name="feasibility")
    result = run_search(spec)
    feasible = {t.number: t.feasible for t in result.trials}
    assert False in feasible.values(), feasible  # all-int4 (first/last free) loses accuracy
    study = optuna.load_study(study_name="feasibility", storage=storage)
    complete = [t for t in study.trials if t.state is optuna.trial.TrialState.COMPLETE]
    assert {t.number for t in complete} >= set(feasible)
    for trial in complete:
        assert "quality_drop" in trial.constraints  # Trial.set_constraint: what TPE and NSGA-II read
        if trial.number in feasible:
            assert all(v <= 0 for v in trial.constraints.values()) is feasible[trial.number], trial.constraints
    # Optuna's best trials skip the infeasible ones, as the front does
    assert all(feasible.get(t.number, True) for t in study.best_trials)
    shown = {t["number"]: t for t in _dashboard_trials(storage, "feasibility")}
    for number, ok in feasible.items():
        constraints = shown[number]["constraints"]  # optuna-dashboard marks a trial infeasible by this list
        assert len(constraints) == 1 and (constraints[0] <= 0) is ok, (number, constraints)
        assert constraints[0] == pytest.approx(study.trials[number].constraints["quality_drop"])


def test_a_cached_repeat_names_the_trial_it_repeats() -> None:
    """Through the search's sampler: a trial whose objective served a trained map from the cache (user
    attr ``cached``) gets ``repeat_of`` with the number of the trial that trained it; others get none."""
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=DominatedFormatsSampler(optuna.samplers.RandomSampler(seed=0), 0))
    trained: dict[str, int] = {}

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        fmt = trial.suggest_categorical("fc", ["int4", "int8"])
        if fmt in trained:
            trial.set_user_attr(str(TrialKey.CACHED), True)
        else:
            trained[fmt] = trial.number
        trial.set_constraint("quality_drop", -0.1 if fmt == "int8" else 0.2)
        return (0.9 if fmt == "int8" else 0.5), (8.0 if fmt == "int8" else 4.0)

    study.optimize(objective, n_trials=8)
    cached = [t for t in study.trials if t.user_attrs.get(TrialKey.CACHED)]
    assert cached, "8 draws from 2 maps repeat one"
    for trial in study.trials:
        fmt = trial.params["fc"]
        expected = trained[fmt] if trial.user_attrs.get(TrialKey.CACHED) else None
        assert trial.user_attrs.get(TrialKey.REPEAT_OF) == expected, trial
        assert trial.system_attrs[LEGACY_CONSTRAINTS] == [trial.constraints["quality_drop"]]

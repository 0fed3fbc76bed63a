"""optuna-dashboard, pointed at the service's database, finds a finished job's study (docs/dashboard.md)."""

from __future__ import annotations

import io
import json
from typing import Any
from wsgiref.util import setup_testing_defaults

import optuna_dashboard
from conftest import FAST_JOB
from fakes import make_fake_run_search, tiny_workload
from fastapi.testclient import TestClient

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

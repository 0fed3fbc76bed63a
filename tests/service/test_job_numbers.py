"""A tiny real search through the API (digits, real QAT): while it runs, the job already has its layers and
fp32 reference and reports its phase; once done, the qconfig files, the API and the front agree on the
numbers (mean, spread and number of runs after the front's re-evaluation)."""

from __future__ import annotations

from typing import Any

from conftest import FAST_JOB
from fastapi.testclient import TestClient

from search import SearchObserver, SearchProgress, SearchResult, SearchSpec, TrialOutcome, run_search
from service.db import Database
from service.settings import Settings
from service.worker import Worker
from tests.observe import Forward


def test_front_numbers_agree_and_progress_is_live(client: TestClient, db: Database, settings: Settings) -> None:
    job_id = client.post("/v1/jobs", json={**FAST_JOB, "reevaluate_front": 2}).json()["id"]
    seen_during_run: list[dict[str, Any]] = []

    def run_and_look(spec: SearchSpec, *, observer: SearchObserver | None = None, **kwargs: Any) -> SearchResult:
        assert observer is not None, "the worker records every trial"
        worker_hears = observer

        class Look(Forward):
            def trial_done(self, outcome: TrialOutcome, progress: SearchProgress) -> None:
                super().trial_done(outcome, progress)
                seen_during_run.append({"job": client.get(f"/v1/jobs/{job_id}").json(),
                                        "pareto": client.get(f"/v1/jobs/{job_id}/pareto").json()})

        return run_search(spec, observer=Look(worker_hears), **kwargs)

    worker = Worker(db, settings, run_search=run_and_look)
    assert worker.next_job() == job_id
    worker.run_job(job_id)

    first = seen_during_run[0]
    assert first["job"]["status"] == "running"
    assert first["pareto"]["layers"] and first["pareto"]["fp32_quality"] is not None  # not only at the end
    assert first["job"]["progress"]["phase"] == "seeding" and first["job"]["progress"]["elapsed_s"] > 0
    assert first["job"]["progress"]["eta_s"] is not None

    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded", job["error"]
    assert job["progress"]["phase"] == "done"
    pareto = client.get(f"/v1/jobs/{job_id}/pareto").json()
    assert pareto["points"]
    assert any(point["n_evaluations"] == 3 for point in pareto["points"])  # adaptive: front neighbours re-run
    for point in pareto["points"]:
        assert point["n_evaluations"] in (1, 3)
        quality = client.get(f"/v1/jobs/{job_id}/pareto/{point['number']}/qconfig.json").json()["quality"]
        assert (quality["value"], quality["std"], quality["n_evaluations"]) == (
            point["quality"], point["quality_std"], point["n_evaluations"]
        )
        assert quality["fp32_value"] == pareto["fp32_quality"]

"""What a job reports beyond its trials (issues 9 and 10): failed and retried trials are counted, and the
search's fidelity check is kept on the job.  Real searches (``search.run_search``) on a three-layer net."""

from __future__ import annotations

from typing import Any

from conftest import FAST_JOB
from fakes import minus_loss_workload, nan_once_workload
from fastapi.testclient import TestClient

from service.db import Database
from service.settings import Settings
from service.worker import MakeWorkload, Worker

TINY_JOB = {**FAST_JOB, "n_trials": 3, "qat_steps": 2}


def _run(
    client: TestClient, db: Database, settings: Settings, job: dict[str, Any], make_workload: MakeWorkload
) -> dict[str, Any]:
    job_id = client.post("/v1/jobs", json=job).json()["id"]
    worker = Worker(db, settings, make_workload=make_workload)
    assert worker.next_job() == job_id
    worker.run_job(job_id)
    done = client.get(f"/v1/jobs/{job_id}").json()
    assert done["status"] == "succeeded", done["error"]
    return done


def test_a_trial_failing_by_its_own_error_is_counted_with_its_error(
    client: TestClient, db: Database, settings: Settings
) -> None:
    # one map per pass: the NaN comes once, wherever it falls, and a pass that failed is trained again one
    # map at a time, where it would not come again (that fallback: tests/search/test_maps_per_pass.py)
    job = _run(client, db, settings, {**TINY_JOB, "maps_per_pass": 1}, nan_once_workload)
    assert job["counts"]["failed"] == 1
    assert job["counts"]["retried"] == 0  # only a dead worker's trial is queued again
    assert job["counts"]["complete"] == 3  # the failed trial did not take a budget slot
    trials = client.get(f"/v1/jobs/{job['id']}/trials", params={"limit": 50}).json()["items"]
    (failed,) = [t for t in trials if t["state"] == "failed"]
    assert failed["error"] == "NonFiniteLossError: metric: evaluation returned NaN"
    assert failed["retried"] is False and failed["quality"] is None
    assert len(failed["assignment"]) == 3  # the map it was given, every layer
    assert all(t["error"] is None for t in trials if t["state"] == "complete")
    assert job["fidelity"] is None  # one rung: no fidelity check
    for sort in ("quality", "-quality", "cost", "-cost"):  # failed trials (no quality, no cost) come last
        states = [t["state"] for t in client.get(f"/v1/jobs/{job['id']}/trials", params={"sort": sort}).json()["items"]]
        assert states[-1] == "failed" and "failed" not in states[:-1], (sort, states)


def test_a_multi_fidelity_job_keeps_its_fidelity_check(client: TestClient, db: Database, settings: Settings) -> None:
    job = _run(client, db, settings, {**TINY_JOB, "fidelity_rungs": [1, 2]}, minus_loss_workload)
    fidelity = job["fidelity"]
    assert fidelity is not None and fidelity["short_qat_steps"] == 2
    assert fidelity["points"], "the front's promoted points"
    for point in fidelity["points"]:
        assert point["long_qat_steps"] == 4
        assert isinstance(point["short_quality"], float) and isinstance(point["long_quality"], float)
    assert "kendall_tau" in fidelity and "warning" in fidelity
    if len(fidelity["points"]) >= 2:
        assert -1.0 <= fidelity["kendall_tau"] <= 1.0
    assert job["counts"]["failed"] == 0

"""The /v1 jobs API against a real database (SQLite and PostgreSQL) with the fake search."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from conftest import FAST_JOB
from fakes import make_fake_run_search, tiny_workload
from fastapi.testclient import TestClient

from service.db import Database
from service.settings import Settings
from service.worker import Worker


def run_worker_once(db: Database, settings: Settings, trial_s: float = 0.0) -> Worker:
    worker = Worker(db, settings, run_search=make_fake_run_search(trial_s), make_workload=tiny_workload)
    job_id = worker.next_job()
    assert job_id is not None
    worker.run_job(job_id)
    return worker


def test_health(client: TestClient) -> None:
    assert client.get("/livez").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ok"}
    assert "mixq_http_requests_total" in client.get("/metrics").text


def test_submit_get_list_paginate(client: TestClient) -> None:
    ids = [client.post("/v1/jobs", json={**FAST_JOB, "seed": i}).json()["id"] for i in range(5)]
    job = client.get(f"/v1/jobs/{ids[0]}").json()
    assert job["status"] == "queued" and job["progress"]["finished"] == 0 and job["progress"]["total"] == 3
    assert job["progress"]["phase"] is None  # no search has reported yet
    assert job["spec"]["qat_steps"] == 5
    page = client.get("/v1/jobs", params={"limit": 2, "offset": 1}).json()
    assert page["total"] == 5 and page["limit"] == 2 and page["offset"] == 1
    assert [j["id"] for j in page["items"]] == sorted(ids, reverse=True)[1:3]
    assert client.get("/v1/jobs", params={"status": "running"}).json()["total"] == 0
    assert client.get("/v1/jobs", params={"limit": 0}).status_code == 422
    assert client.get("/v1/jobs", params={"status": "bogus"}).status_code == 422


def test_idempotency_key_returns_the_same_job(client: TestClient) -> None:
    headers = {"Idempotency-Key": "submit-1"}
    first = client.post("/v1/jobs", json=FAST_JOB, headers=headers)
    again = client.post("/v1/jobs", json=FAST_JOB, headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    other = client.post("/v1/jobs", json={**FAST_JOB, "seed": 9}, headers=headers)
    assert other.status_code == 409 and "Idempotency-Key" in other.json()["detail"]
    assert client.get("/v1/jobs").json()["total"] == 1


def test_concurrent_duplicate_submissions_make_one_job(client: TestClient) -> None:
    def submit(_: int) -> tuple[int, int]:
        r = client.post("/v1/jobs", json=FAST_JOB, headers={"Idempotency-Key": "race"})
        return r.status_code, r.json()["id"]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(submit, range(16)))
    assert {job_id for _, job_id in results} == {results[0][1]}
    assert sorted(code for code, _ in results).count(201) == 1
    assert client.get("/v1/jobs").json()["total"] == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({**FAST_JOB, "colour": "red"}, "colour", id="unknown-field"),
        pytest.param({"n_trials": 3}, "workload", id="missing-workload"),
        pytest.param({**FAST_JOB, "workload": "nope"}, "workload", id="unknown-workload"),
        pytest.param({**FAST_JOB, "workload": "os:system"}, "workload", id="entry-point-not-allow-listed"),
        pytest.param({**FAST_JOB, "formats": ["int3"]}, "formats", id="bad-format"),
        pytest.param({**FAST_JOB, "n_trials": 0}, "n_trials", id="zero-trials"),
        pytest.param({**FAST_JOB, "seed": 2**40}, "seed", id="seed-overflow"),
        pytest.param({**FAST_JOB, "profile": "no-such"}, "profile", id="unknown-profile"),
        pytest.param({**FAST_JOB, "model": "m"}, "dataset", id="model-without-dataset"),
        pytest.param({**FAST_JOB, "workload_options": {"a": "x\u0000y"}}, "workload_options", id="nul-in-options"),
        pytest.param({**FAST_JOB, "pins": [{"match": "a", "format": "int3"}]}, "pins", id="bad-pin-format"),
        pytest.param({**FAST_JOB, "workload_options": {"bogus": 1}}, "workload_options", id="unknown-workload-option"),
    ],
)
def test_bad_job_specs_are_422_naming_the_field(client: TestClient, body: dict[str, Any], field: str) -> None:
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 422, r.text
    assert field in json.dumps(r.json()["detail"])


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        pytest.param(b'{"workload": "digits", "max_quality_drop": NaN}', "max_quality_drop", id="nan"),
        pytest.param(b'{"workload": "digits", "timeout_s": Infinity}', "timeout_s", id="inf"),
        pytest.param(b'{"workload": "digits", "workload_options": {"x": -Infinity}}', "workload_options", id="inf-nested"),
        pytest.param(b'{"workload": "digits", "colour": NaN}', "colour", id="nan-unknown-field"),
        pytest.param(b'{"workload": "digits",', "body", id="truncated-json"),
        pytest.param(b'[1, 2]', "body", id="not-an-object"),
    ],
)
def test_malformed_json_and_non_finite_numbers(client: TestClient, raw: bytes, field: str) -> None:
    r = client.post("/v1/jobs", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert field in json.dumps(r.json()["detail"])


def test_undecodable_body_is_a_clear_4xx(client: TestClient) -> None:
    r = client.post("/v1/jobs", content=b"\xff\xfe not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "body" in r.json()["detail"]


def test_oversized_json_body_is_413(client: TestClient) -> None:
    big = json.dumps({**FAST_JOB, "workload_options": {"pad": "x" * (2 * 1024 * 1024)}})
    assert client.post("/v1/jobs", content=big, headers={"content-type": "application/json"}).status_code == 413


def test_worker_runs_job_and_results_are_served(client: TestClient, db: Database, settings: Settings) -> None:
    job_id = client.post("/v1/jobs", json={**FAST_JOB, "n_trials": 6}).json()["id"]
    run_worker_once(db, settings)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded", job
    assert job["progress"]["finished"] == 6 and job["counts"]["complete"] == 6
    assert job["metric"] == "accuracy" and job["fp32_quality"] == 1.0 and job["best"] is not None

    trials = client.get(f"/v1/jobs/{job_id}/trials", params={"sort": "-quality", "limit": 4}).json()
    assert trials["total"] == 6 and len(trials["items"]) == 4
    qualities = [t["quality"] for t in trials["items"]]
    assert qualities == sorted(qualities, reverse=True)
    by_cost = client.get(f"/v1/jobs/{job_id}/trials", params={"sort": "cost"}).json()["items"]
    assert [t["costs"]["bitops"] for t in by_cost] == sorted(t["costs"]["bitops"] for t in by_cost)

    pareto = client.get(f"/v1/jobs/{job_id}/pareto").json()
    assert pareto["points"] and all(p["on_front"] for p in pareto["points"])
    assert len(pareto["trials"]) == 6 and pareto["cost_objectives"] == ["bitops"]
    assert {layer["fqn"]: layer["pinned"] for layer in pareto["layers"]}["features.0"] is True

    number = pareto["points"][0]["number"]
    download = client.get(f"/v1/jobs/{job_id}/pareto/{number}/qconfig.json")
    assert download.status_code == 200
    stored = download.json()
    assert stored["fake"] == number and stored["on_front"] is True and stored["provenance"]["job_id"] == job_id
    assert stored["provenance"]["spec"] == client.get(f"/v1/jobs/{job_id}").json()["spec"]
    disposition = download.headers["content-disposition"]
    assert disposition.startswith("attachment;") and f'filename="trial{number:04d}-' in disposition
    assert client.get(f"/v1/jobs/{job_id}/pareto/9999/qconfig.json").status_code == 404


def test_live_pareto_before_the_job_finishes(client: TestClient, db: Database, settings: Settings) -> None:
    job_id = client.post("/v1/jobs", json={**FAST_JOB, "n_trials": 8}).json()["id"]
    worker = Worker(db, settings, run_search=make_fake_run_search(), make_workload=tiny_workload)
    assert worker.next_job() == job_id
    seen: list[int] = []
    original = worker._on_trial

    def spy(run, outcome, progress):  # type: ignore[no-untyped-def]
        original(run, outcome, progress)
        seen.append(len(client.get(f"/v1/jobs/{job_id}/pareto").json()["points"]))

    worker._on_trial = spy  # type: ignore[method-assign]
    worker.run_job(job_id)
    assert seen and all(n >= 1 for n in seen)


def test_events_stream_progress_trials_and_done(client: TestClient, db: Database, settings: Settings) -> None:
    job_id = client.post("/v1/jobs", json={**FAST_JOB, "n_trials": 3}).json()["id"]
    thread = threading.Thread(target=run_worker_once, args=(db, settings, 0.1))
    events: list[str] = []
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        thread.start()
        for line in r.iter_lines():
            if line.startswith("event: "):
                events.append(line.removeprefix("event: "))
    thread.join()
    assert events[0] == "progress" and events[-1] == "done"
    assert events.count("trial") == 3


def test_cancel_and_delete(client: TestClient) -> None:
    job_id = client.post("/v1/jobs", json=FAST_JOB).json()["id"]
    assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"  # idempotent
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert client.get(f"/v1/jobs/{job_id}").status_code == 404
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 404
    assert client.get("/v1/jobs/99999999999").status_code == 422  # beyond any stored id: no DB overflow


def test_deleted_job_ids_are_never_reused(client: TestClient) -> None:
    first = client.post("/v1/jobs", json=FAST_JOB).json()["id"]
    client.delete(f"/v1/jobs/{first}")
    assert client.post("/v1/jobs", json=FAST_JOB).json()["id"] > first  # Optuna study names stay unique


def test_meta(client: TestClient) -> None:
    meta = client.get("/v1/meta").json()
    assert "digits" in meta["workloads"] and "generic" in meta["profiles"] and "int4" in meta["formats"]
    assert meta["defaults"]["n_trials"] == 24


def test_the_dashboard_hints_are_the_request_model_s_descriptions(client: TestClient) -> None:
    """Every field of the dashboard's job form has its hint in /v1/meta, and it is the schema's text."""
    import re
    from pathlib import Path

    import service

    meta = client.get("/v1/meta").json()
    page = (Path(service.__file__).parent / "static" / "jobs.html").read_text()
    fields = re.findall(r'data-field="([a-z_]+)"', page)
    schema = client.get("/openapi.json").json()["components"]["schemas"]["JobCreate"]["properties"]
    assert len(fields) >= 15
    for name in fields:
        assert meta["help"][name] == schema[name]["description"], name


def test_trials_on_front_agrees_with_pareto_while_running(client: TestClient, db: Database, settings: Settings) -> None:
    job_id = client.post("/v1/jobs", json={**FAST_JOB, "n_trials": 8}).json()["id"]
    worker = Worker(db, settings, run_search=make_fake_run_search(), make_workload=tiny_workload)
    assert worker.next_job() == job_id
    worker._finalize = lambda run, result: None  # type: ignore[method-assign]  # stays running, live front
    worker.run_job(job_id)
    points = {p["number"] for p in client.get(f"/v1/jobs/{job_id}/pareto").json()["points"]}
    listed = client.get(f"/v1/jobs/{job_id}/trials", params={"limit": 50}).json()["items"]
    assert points and {t["number"] for t in listed if t["on_front"]} == points


def test_entry_point_workloads_need_the_operator_allow_list(settings: Settings, db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.main import create_app

    monkeypatch.setenv("MIXQ_ALLOWED_WORKLOADS", "mypkg.models:make_workload, other.mod:factory")
    allowed = Settings().allowed_workloads
    assert allowed == ["mypkg.models:make_workload", "other.mod:factory"]
    with TestClient(create_app(settings.model_copy(update={"allowed_workloads": allowed}), db)) as c:
        assert c.post("/v1/jobs", json={**FAST_JOB, "workload": "mypkg.models:make_workload"}).status_code == 201
        assert c.post("/v1/jobs", json={**FAST_JOB, "workload": "os:system"}).status_code == 422
        assert "mypkg.models:make_workload" in c.get("/v1/meta").json()["workloads"]

"""Per-owner limits (issue 9, tenancy): active jobs, training work per job, upload bytes, and priority
above the default only for operator tokens.  Real SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from conftest import FAST_JOB
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from test_uploads import npz_bytes

from service import routes, store
from service.auth import create_token
from service.db import Database
from service.main import create_app
from service.models import Job, TokenRole, Upload
from service.settings import Settings
from service.uploads import inspect_dataset_here


def _client(settings: Settings, db: Database, **limits: object) -> TestClient:
    return TestClient(create_app(settings.model_copy(update=limits), db))


@pytest.fixture
def limited(settings: Settings, db: Database) -> Iterator[TestClient]:
    with _client(settings, db, max_active_jobs_per_owner=2, max_qat_steps_per_job=100,
                 max_upload_bytes_per_owner=len(npz_bytes()) * 2 + 10) as client:
        yield client


def test_active_jobs_per_owner_is_429_naming_the_limit(limited: TestClient) -> None:
    first = [limited.post("/v1/jobs", json={**FAST_JOB, "seed": i}) for i in range(2)]
    assert [r.status_code for r in first] == [201, 201]
    third = limited.post("/v1/jobs", json={**FAST_JOB, "seed": 2})
    assert third.status_code == 429, third.text
    assert "jobs" in third.json()["detail"] and "MIXQ_MAX_ACTIVE_JOBS_PER_OWNER=2" in third.json()["detail"]
    limited.post(f"/v1/jobs/{first[0].json()['id']}/cancel")  # a finished job frees its place
    assert limited.post("/v1/jobs", json={**FAST_JOB, "seed": 3}).status_code == 201


def test_training_work_per_job_is_422_naming_the_fields(limited: TestClient) -> None:
    r = limited.post("/v1/jobs", json={**FAST_JOB, "n_trials": 30, "qat_steps": 5})  # 150 > 100
    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    assert detail["loc"] == ["body", "qat_steps"]
    assert "30 x 5 = 150" in detail["msg"] and "MIXQ_MAX_QAT_STEPS_PER_JOB" in detail["msg"]
    assert limited.post("/v1/jobs", json={**FAST_JOB, "n_trials": 20, "qat_steps": 5}).status_code == 201


def test_upload_bytes_per_owner_is_429(limited: TestClient, settings: Settings, db: Database) -> None:
    data = npz_bytes()
    codes = [limited.post("/v1/datasets", files={"file": ("d.npz", data)}, data={"name": f"d{i}"}).status_code
             for i in range(3)]
    assert codes == [201, 201, 429]
    r = limited.post("/v1/datasets", files={"file": ("d.npz", data)}, data={"name": "d9"})
    assert "file" in r.json()["detail"] and "MIXQ_MAX_UPLOAD_BYTES_PER_OWNER" in r.json()["detail"]
    with db.session() as session:  # the quota is per owner: someone else still may upload
        token = create_token(session, "bob")
    with _client(settings, db, auth_required=True, max_upload_bytes_per_owner=len(data) * 2 + 10) as secured:
        other = secured.post("/v1/datasets", files={"file": ("d.npz", data)}, data={"name": "d0"},
                             headers={"Authorization": f"Bearer {token}"})
    assert other.status_code == 201, other.text


def test_priority_above_default_needs_an_operator_token(settings: Settings, db: Database) -> None:
    with db.session() as session:
        user = create_token(session, "alice")
        operator = create_token(session, "olga", role=TokenRole.OPERATOR)
    with _client(settings, db, auth_required=True) as secured:
        def submit(token: str, priority: int) -> int:
            r = secured.post("/v1/jobs", json={**FAST_JOB, "priority": priority},
                             headers={"Authorization": f"Bearer {token}"})
            if r.status_code == 403:
                assert "priority" in r.json()["detail"] and "operator" in r.json()["detail"]
            return r.status_code

        assert submit(user, 5) == 403
        assert submit(user, 0) == 201 and submit(user, -5) == 201
        assert submit(operator, 5) == 201


N_CONCURRENT = 6


def _slow_read(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Widen the gap between a limit's read and the insert (0.3 s): requests that are not serialized all
    read the same count before any of them writes, so a race shows every run rather than now and then."""
    original: Callable[..., Any] = getattr(store, name)

    def read_then_wait(*args: Any) -> Any:
        value = original(*args)
        time.sleep(0.3)
        return value

    monkeypatch.setattr(store, name, read_then_wait)


def _at_once(n: int, request: Callable[[int], int]) -> list[int]:
    start = threading.Barrier(n)

    def go(i: int) -> int:
        start.wait()
        return request(i)

    with ThreadPoolExecutor(n) as pool:
        return sorted(pool.map(go, range(n)))


def test_upload_quota_holds_under_concurrent_uploads(
    settings: Settings, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = npz_bytes()
    quota = len(data) * 2 + 10  # exactly two files
    # inspected in-process: six sandbox children at once would spread the requests over seconds
    monkeypatch.setattr(routes, "inspect_dataset", inspect_dataset_here)
    _slow_read(monkeypatch, "upload_bytes_of_owner")
    with _client(settings, db, max_upload_bytes_per_owner=quota) as client:
        codes = _at_once(N_CONCURRENT, lambda i: client.post(
            "/v1/datasets", files={"file": ("d.npz", data)}, data={"name": f"d{i}"}).status_code)
    assert codes == [201, 201] + [429] * (N_CONCURRENT - 2)
    with db.session() as session:
        stored = session.scalar(select(func.sum(Upload.size_bytes)))
    assert stored == 2 * len(data) <= quota


def test_active_job_limit_holds_under_concurrent_submissions(
    settings: Settings, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    _slow_read(monkeypatch, "active_job_count")
    with _client(settings, db, max_active_jobs_per_owner=2) as client:
        codes = _at_once(N_CONCURRENT, lambda i: client.post("/v1/jobs", json={**FAST_JOB, "seed": i}).status_code)
    assert codes == [201, 201] + [429] * (N_CONCURRENT - 2)
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 2

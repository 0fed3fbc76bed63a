"""Processes that die: a worker SIGKILLed mid-trial, the API server restarted mid-job."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import optuna
import pytest
from conftest import FAST_JOB
from fastapi.testclient import TestClient
from sqlalchemy import select
from test_worker import status_of, trial_count, wait_for

from service.db import Database
from service.models import Trial
from service.settings import Settings

HERE = Path(__file__).parent


def start_fake_worker(url: str, trial_s: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(HERE / "fake_worker.py"), url, str(trial_s)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            if os.getpgid(proc.pid) == proc.pid:  # a session leader (`mixq serve`): its workers too
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
        proc.wait(timeout=10)


def test_sigkilled_worker_loses_only_its_trial(
    db: Database, settings: Settings, client: TestClient, processes: list[subprocess.Popen[bytes]]
) -> None:
    from test_worker import submit

    url = settings.resolved_database_url
    job_id = submit(db, n_trials=6)[0]
    victim = start_fake_worker(url, trial_s=1.0)
    processes.append(victim)
    wait_for(lambda: trial_count(db, job_id) >= 1, what="first trial")
    time.sleep(0.3)  # well inside the next 1 s trial
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=10)
    survivor = start_fake_worker(url, trial_s=0.2)
    processes.append(survivor)
    wait_for(lambda: status_of(db, job_id) == "succeeded", timeout_s=90, what="job to finish after the kill")

    with db.session() as session:
        complete = select(Trial.number).where(Trial.job_id == job_id, Trial.state == "complete")
        numbers = sorted(session.scalars(complete))
    assert len(numbers) == 6 == len(set(numbers))
    study = optuna.load_study(study_name=f"mixq-job-{job_id}", storage=url)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert states.count(optuna.trial.TrialState.FAIL) == 1  # the killed trial, and only it
    killed = next(t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.FAIL)
    retried = [t for t in study.get_trials(deepcopy=False) if t.system_attrs.get("failed_trial") == killed.number]
    assert retried and retried[0].params == killed.params  # retried with the same parameters
    assert retried[0].number in numbers
    # the job reports it: the survivor, which found the killed trial stale, recorded it once
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert (job["counts"]["failed"], job["counts"]["retried"]) == (1, 1), job["counts"]
    trials = client.get(f"/v1/jobs/{job_id}/trials", params={"limit": 50}).json()["items"]
    (failed,) = [t for t in trials if t["state"] == "failed"]
    assert failed["number"] == killed.number and failed["retried"] and failed["error"] == "no heartbeat"
    assert failed["assignment"] == killed.params


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_api(url: str, port: int, tmp_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MIXQ_DATABASE_URL": url, "MIXQ_DATA_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "service.main:create_app", "--factory", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )

    def up() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, timeout_s=30, what="API to start")
    return proc


def test_api_restart_mid_job_loses_nothing(
    db: Database, settings: Settings, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    url = settings.resolved_database_url
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    api = start_api(url, port, tmp_path)
    processes.append(api)
    job_id = httpx.post(f"{base}/v1/jobs", json={**FAST_JOB, "n_trials": 10}, headers={"Idempotency-Key": "once"},
                        timeout=30).json()["id"]
    processes.append(start_fake_worker(url, trial_s=0.3))
    wait_for(lambda: trial_count(db, job_id) >= 2, what="two trials")
    api.send_signal(signal.SIGKILL)
    api.wait(timeout=10)
    api = start_api(url, port, tmp_path)
    processes.append(api)
    again = httpx.post(f"{base}/v1/jobs", json={**FAST_JOB, "n_trials": 10}, headers={"Idempotency-Key": "once"}, timeout=30)
    assert again.status_code == 200 and again.json()["id"] == job_id  # the key survives the restart too
    wait_for(lambda: httpx.get(f"{base}/v1/jobs/{job_id}").json()["status"] == "succeeded", what="job to finish")
    trials = httpx.get(f"{base}/v1/jobs/{job_id}/trials", params={"limit": 50}).json()
    assert trials["total"] == 10 and sorted(t["number"] for t in trials["items"]) == list(range(10))

"""End to end with the real ``search.run_search`` (digits, a few QAT steps): `mixq serve` restarted
mid-job, `mixq worker` joining a running job on PostgreSQL, and a job on an uploaded model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import optuna
import pytest
from conftest import FAST_JOB
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from test_resilience import free_port, processes  # noqa: F401 - fixture
from test_uploads import npz_bytes, onnx_bytes
from test_worker import status_of, trial_count, wait_for

from search import (
    SearchObserver,
    SearchProgress,
    SearchResult,
    SearchSpec,
    TrialOutcome,
    run_search,
)
from service import store
from service.db import Database, upgrade
from service.models import Trial, utcnow
from service.settings import Settings
from service.worker import Worker
from tests.observe import Forward

REAL_JOB = {**FAST_JOB, "n_trials": 12, "qat_steps": 20}


def start_serve(url: str, port: int, data_dir: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MIXQ_DATABASE_URL": url, "MIXQ_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--workers", "1"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def up() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, timeout_s=60, what="mixq serve to start")
    return proc


def test_serve_restarted_mid_job_finishes_it(tmp_path: Path, processes: list[subprocess.Popen[bytes]]) -> None:  # noqa: F811
    url = f"sqlite:///{tmp_path / 'serve.db'}"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    processes.append(serve := start_serve(url, port, tmp_path))
    job_id = httpx.post(f"{base}/v1/jobs", json=REAL_JOB, timeout=30).json()["id"]
    db = Database(url)
    wait_for(lambda: trial_count(db, job_id) >= 3, timeout_s=120, what="three real trials")
    serve.send_signal(signal.SIGTERM)  # API stops; its worker finishes the trial in hand and exits
    serve.wait(timeout=60)
    assert status_of(db, job_id) == "running"
    processes.append(start_serve(url, port, tmp_path))
    wait_for(lambda: status_of(db, job_id) == "succeeded", timeout_s=180, what="the job to finish after restart")
    pareto = httpx.get(f"{base}/v1/jobs/{job_id}/pareto").json()
    assert pareto["metric"] == "accuracy" and pareto["points"] and len(pareto["trials"]) >= 12
    number = pareto["points"][0]["number"]
    qconfig = httpx.get(f"{base}/v1/jobs/{job_id}/pareto/{number}/qconfig.json")
    assert qconfig.status_code == 200 and qconfig.json()["schema_version"] == 2
    db.dispose()
    # SIGKILLed `mixq serve`: its worker notices and exits by itself
    serve = processes[-1]
    workers = children_of(serve.pid)
    assert workers
    os.kill(serve.pid, signal.SIGKILL)
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() and not is_zombie(pid) for pid in workers),
             timeout_s=30, what="orphaned workers to exit")


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_worker_process_joins_a_running_job_on_postgres(
    pg_url: str, tmp_path: Path, processes: list[subprocess.Popen[bytes]]  # noqa: F811
) -> None:
    settings = Settings(database_url=pg_url, data_dir=tmp_path, heartbeat_interval_s=0.5, poll_interval_s=0.2)
    db = Database(pg_url)
    from service.main import create_app

    with TestClient(create_app(settings, db)) as client:
        refused = client.post("/v1/jobs", json={**REAL_JOB, "maps_per_pass": 0})
        assert refused.status_code == 422 and "maps_per_pass" in refused.text
        # batched workers (issue 22): passes of up to 4 maps each, 22 trials (not a multiple of 4)
        job_id = client.post("/v1/jobs", json={**REAL_JOB, "n_trials": 22, "qat_steps": 40,
                                                "maps_per_pass": 4}).json()["id"]
        holder: list[Worker] = []

        def run_search_then_wait_for_the_other(spec: SearchSpec, *, observer: SearchObserver | None = None,
                                               **kwargs: Any) -> SearchResult:
            """The real search; after each trial this worker waits (up to 4 min) until the `mixq worker` process
            has recorded a trial of its own, so that on a loaded machine it cannot finish all 22 trials first."""
            assert observer is not None
            worker_hears = observer

            class WaitAfterTheFirstTrial(Forward):
                def trial_done(self, outcome: TrialOutcome, progress: SearchProgress) -> None:
                    super().trial_done(outcome, progress)
                    deadline = time.monotonic() + 240
                    while time.monotonic() < deadline:
                        with db.session() as session:
                            others = session.scalar(select(func.count()).select_from(Trial).where(
                                Trial.job_id == job_id, Trial.worker_id != holder[0].id))
                        if others:
                            return
                        time.sleep(0.2)

            return run_search(spec, observer=WaitAfterTheFirstTrial(worker_hears), **kwargs)

        local = Worker(db, settings, run_search=run_search_then_wait_for_the_other)
        holder.append(local)
        thread = threading.Thread(target=local.run_forever, kwargs={"max_jobs": 1})
        thread.start()
        wait_for(lambda: trial_count(db, job_id) >= 1, timeout_s=120, what="first trial")
        # another "machine": its own data folder, so its trials' weights are not where this worker looks
        env = {**os.environ, "MIXQ_DATABASE_URL": pg_url, "MIXQ_POLL_INTERVAL_S": "0.2", "OMP_NUM_THREADS": "1",
               "MIXQ_DATA_DIR": str(tmp_path / "other-machine")}
        processes.append(subprocess.Popen([sys.executable, "-m", "service.cli", "worker"], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for(lambda: status_of(db, job_id) == "succeeded", timeout_s=240, what="the shared job to finish")
        thread.join(timeout=30)
        with db.session() as session:
            ran_by = set(session.scalars(select(Trial.worker_id).where(Trial.job_id == job_id)))
        assert local.id in ran_by and len(ran_by) == 2  # the `mixq worker` process did trials too
        assert client.get(f"/v1/jobs/{job_id}").json()["progress"]["finished"] >= 22
        # the budget stayed exact: each pass claimed its slots one by one, no map trained twice
        study = optuna.load_study(study_name=f"mixq-job-{job_id}", storage=pg_url)
        trained = [t for t in study.get_trials(deepcopy=False)
                   if t.state == optuna.trial.TrialState.COMPLETE and not t.user_attrs.get("cached")]
        assert len(trained) == 22 and len({str(sorted(t.params.items())) for t in trained}) == 22
        sizes = [t.user_attrs["mixq:batch_size"] for t in trained]
        assert max(sizes) > 1 and all(1 <= n <= 4 for n in sizes), sizes
        # every front point's weights and ONNX are stored, whichever machine trained it: a worker that leaves
        # first stores its own, the finalizer the rest
        pareto = client.get(f"/v1/jobs/{job_id}/pareto").json()
        with db.session() as session:
            trained_by = dict(session.execute(select(Trial.number, Trial.worker_id).where(Trial.job_id == job_id)).all())
        front = [p["number"] for p in pareto["points"]]
        print("front points by worker:", {n: trained_by.get(n) for n in front})
        missing = {n: pareto["artefacts"].get(str(n)) for n in front if not pareto["artefacts"].get(str(n), {}).get("onnx")}
        assert not missing, missing
    db.dispose()


def test_job_on_an_uploaded_model(client: TestClient, db: Database, settings: Settings) -> None:
    files = {"file": ("m.onnx", onnx_bytes())}
    assert client.post("/v1/models", files=files, data={"name": "cnn"}).status_code == 201
    assert client.post("/v1/datasets", files={"file": ("d.npz", npz_bytes(64))}, data={"name": "data"}).status_code == 201
    job = client.post("/v1/jobs", json={**FAST_JOB, "workload": "my-cnn", "workload_options": {"batch_size": 16},
                                        "model": "cnn", "dataset": "data", "n_trials": 3, "pin_first_last": None})
    assert job.status_code == 201, job.text
    worker = Worker(db, settings)
    job_id = worker.next_job()
    assert job_id is not None
    assert job_id == job.json()["id"]
    worker.run_job(job_id)
    done = client.get(f"/v1/jobs/{job_id}").json()
    assert done["status"] == "succeeded", done["error"]
    pareto = client.get(f"/v1/jobs/{job_id}/pareto").json()
    assert {layer["fqn"] for layer in pareto["layers"]} == {"features_features_0_Conv", "classifier_classifier_1_Gemm"}
    number = pareto["points"][0]["number"]
    assert client.get(f"/v1/jobs/{job_id}/pareto/{number}/qconfig.json").status_code == 200
    # the uploaded model's front point comes back as a QDQ ONNX model that onnxruntime opens with its defaults
    exported = client.get(f"/v1/jobs/{job_id}/pareto/{number}/model.onnx")
    assert exported.status_code == 200, exported.text
    import onnxruntime

    onnxruntime.InferenceSession(exported.content, providers=["CPUExecutionProvider"])
    assert pareto["artefacts"][str(number)]["max_abs_diff_default"] is not None


@pytest.mark.slow
def test_real_worker_sigkilled_mid_trial_is_retried_with_same_parameters(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]  # noqa: F811
) -> None:
    """The real search's heartbeat (5 s) and grace period (20 s) make this take a minute or more."""
    url = f"sqlite:///{tmp_path / 'kill.db'}"
    upgrade(url)
    db = Database(url)
    with db.session() as session:
        # one map per pass: the kill lands inside a trial after the first (test_runner's killed-process test
        # covers a batched pass, whose every trial dies with it)
        job_id = store.add_job(session, "local", {**REAL_JOB, "n_trials": 4, "qat_steps": 600, "maps_per_pass": 1},
                               4, 0, None).id
    env = {**os.environ, "MIXQ_DATABASE_URL": url, "MIXQ_POLL_INTERVAL_S": "0.2", "OMP_NUM_THREADS": "1"}
    processes.append(victim := subprocess.Popen([sys.executable, "-m", "service.cli", "worker"], env=env,
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    wait_for(lambda: trial_count(db, job_id) >= 1, timeout_s=180, what="first real trial")

    def training() -> bool:  # the next trial holds its map (its worker stamped): its QAT run has started
        study = optuna.load_study(study_name=f"mixq-job-{job_id}", storage=url)
        return any("worker" in t.user_attrs for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)))

    wait_for(training, timeout_s=120, what="the next trial to start training")
    time.sleep(0.5)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=10)
    processes.append(subprocess.Popen([sys.executable, "-m", "service.cli", "worker"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    wait_for(lambda: status_of(db, job_id) == "succeeded", timeout_s=300, what="job to finish after the kill")
    study = optuna.load_study(study_name=f"mixq-job-{job_id}", storage=url)
    trials = study.get_trials(deepcopy=False)
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == 1
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == failed[0].number]
    assert retried and retried[0].params == failed[0].params
    assert trial_count(db, job_id) >= 4
    with db.session() as session:  # the job counts it: the second worker's search found it stale
        counts = store.trial_counts(session, [job_id], utcnow())[job_id]
        row = store.get_trial(session, job_id, failed[0].number)
        assert row is not None and row.state == "failed" and row.retried and row.error
    assert (counts.failed, counts.retried) == (1, 1), counts
    db.dispose()


def test_best_so_far_follows_the_re_evaluated_means(client: TestClient, db: Database, settings: Settings) -> None:
    job = client.post("/v1/jobs", json={**FAST_JOB, "reevaluate_front": 2, "n_trials": 3}).json()
    worker = Worker(db, settings)
    assert worker.next_job() == job["id"]
    worker.run_job(job["id"])
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "succeeded", done["error"]
    trials = client.get(f"/v1/jobs/{job['id']}/trials", params={"limit": 50}).json()["items"]
    assert any(t["n_evaluations"] > 1 for t in trials)  # the front was re-evaluated
    best = max((t for t in trials if t["feasible"] and t["state"] == "complete"), key=lambda t: (t["quality"], -t["number"]))
    assert done["best"] == {"quality": best["quality"], "trial_number": best["number"]}

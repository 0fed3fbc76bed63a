"""``service.client.Client`` and ``mixq jobs ...`` against a real server: the app under uvicorn on a free
port (a thread), a worker thread running the real search, SQLite and PostgreSQL alike."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import onnxruntime as ort
import pytest
import uvicorn
from conftest import FAST_JOB
from test_resilience import free_port
from typer.testing import CliRunner

from search.quant.checkpoint import load_checkpoint
from search.quant.qconfig import load_qconfig
from service.cli import app as mixq
from service.client import ApiError, Client, ConnectionFailed
from service.db import Database
from service.main import create_app
from service.settings import Settings
from service.worker import Worker

JOB = {**FAST_JOB, "n_trials": 3, "qat_steps": 5}


@pytest.fixture
def server(settings: Settings, db: Database) -> Iterator[str]:
    """The app on 127.0.0.1:<free port> and one worker, both threads; yields the base URL."""
    port = free_port()
    config = uvicorn.Config(create_app(settings, db), host="127.0.0.1", port=port, log_level="warning")
    api = uvicorn.Server(config)
    api_thread = threading.Thread(target=api.run, daemon=True)
    api_thread.start()
    worker = Worker(db, settings)
    worker_thread = threading.Thread(target=worker.run_forever, daemon=True)
    worker_thread.start()
    deadline = time.monotonic() + 30
    while not api.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        worker.stop()
        api.should_exit = True
        worker_thread.join(timeout=60)
        api_thread.join(timeout=30)


def test_client_submit_wait_front_downloads(server: str, tmp_path: Path) -> None:
    with Client(server) as client:
        job = client.submit(JOB, idempotency_key="client-1")
        assert client.submit(JOB, idempotency_key="client-1").id == job.id
        seen: list[str] = []
        done = client.wait(job.id, timeout_s=300, on_event=lambda e: seen.append(e.name))
        assert done.status == "succeeded", done.error
        assert "done" in seen or client.get(job.id).status == "succeeded"
        assert [j.id for j in client.list().items] == [job.id]
        front = client.front(job.id)
        assert front.points and all(front.artefacts[str(p.number)].onnx for p in front.points)
        number = front.points[0].number
        qpath = client.download_qconfig(job.id, number, tmp_path)
        assert qpath.name.startswith(f"trial{number:04d}-") and qpath.suffix == ".json"
        assert load_qconfig(qpath).on_front is True
        wpath = client.download_weights(job.id, number, tmp_path)
        assert wpath.name == qpath.with_suffix(".pt").name
        assert load_checkpoint(wpath).fingerprint == front.artefacts[str(number)].fingerprint
        opath = client.download_onnx(job.id, number, tmp_path / "m.onnx")
        ort.InferenceSession(str(opath), providers=["CPUExecutionProvider"])  # default session options

        with pytest.raises(ApiError) as err:
            client.get(987654)
        assert err.value.status == 404 and err.value.message == "job 987654 not found"
        with pytest.raises(ApiError) as err:
            client.submit({**JOB, "n_trials": 0})
        assert err.value.status == 422 and "n_trials" in err.value.message
        with pytest.raises(ApiError) as err:
            client.submit({**JOB, "workload": "digits"}, idempotency_key="client-1")  # same key, same spec: fine
            client.submit({**JOB, "n_trials": 4}, idempotency_key="client-1")
        assert err.value.status == 409 and "Idempotency-Key" in err.value.message
        queued = client.submit({**JOB, "n_trials": 50})
        assert client.cancel(queued.id).status == "cancelled"
    with pytest.raises(ConnectionFailed), Client(f"http://127.0.0.1:{free_port()}", timeout=2) as nobody:
        nobody.meta()


def test_mixq_jobs_commands(server: str, tmp_path: Path) -> None:
    runner = CliRunner()
    spec = tmp_path / "job.json"
    spec.write_text('{"workload_options": {"pretrain_steps": 30}, "seed_with_sensitivity": false}')
    r = runner.invoke(mixq, ["jobs", "submit", str(spec), "--workload", "digits", "--set", "n_trials=3",
                             "--set", "qat_steps=5", "--set", "reevaluate_front=0", "--watch", "--server", server])
    assert r.exit_code == 0, r.output
    assert "job 1 " in r.output and "succeeded" in r.output and "3/3" in r.output  # the bar's last state
    r = runner.invoke(mixq, ["jobs", "list", "--server", server])
    assert r.exit_code == 0 and "succeeded" in r.output, r.output
    front = httpx.get(f"{server}/v1/jobs/1", timeout=30).json()["front"]  # the front's size and cheapest point
    assert front["size"] >= 1 and front["final"] is True
    assert f"{front['size']} · #{front['cheapest']['trial_number']} {front['cheapest']['quality']:.4g}" in r.output
    r = runner.invoke(mixq, ["jobs", "show", "1", "--server", server])
    assert r.exit_code == 0 and "qconfig onnx weights" in r.output, r.output
    r = runner.invoke(mixq, ["jobs", "download", "1", "--out", str(tmp_path / "job-1"), "--server", server])
    assert r.exit_code == 0, r.output
    names = {kind: sorted(p.stem for p in (tmp_path / "job-1" / kind).iterdir())
             for kind in ("qconfig", "weights", "onnx")}
    assert names["qconfig"] and names["qconfig"] == names["weights"] == names["onnx"]  # one name scheme
    r = runner.invoke(mixq, ["jobs", "watch", "1", "--server", server])
    assert r.exit_code == 0, r.output
    r = runner.invoke(mixq, ["jobs", "show", "99", "--server", server])
    assert r.exit_code == 2 and "error: 404: job 99 not found" in r.output, r.output
    r = runner.invoke(mixq, ["jobs", "submit", "--workload", "digits", "--set", "qat_steps=-1", "--server", server])
    assert r.exit_code == 2 and "qat_steps" in r.output, r.output
    r = runner.invoke(mixq, ["jobs", "submit", "--workload", "digits", "--set", "n_trials=80", "--server", server])
    assert r.exit_code == 0, r.output
    job_id = r.output.split()[1]
    r = runner.invoke(mixq, ["jobs", "cancel", job_id, "--server", server])
    assert r.exit_code == 0 and "cancelled" in r.output, r.output
    r = runner.invoke(mixq, ["jobs", "download", "1", "--what", "pt", "--server", server])
    assert r.exit_code == 2 and "--what" in r.output


def test_client_uploads(server: str, tmp_path: Path) -> None:
    from test_uploads import npz_bytes, onnx_bytes

    (tmp_path / "m.onnx").write_bytes(onnx_bytes())
    (tmp_path / "d.npz").write_bytes(npz_bytes(64))
    profile = (Path(__file__).resolve().parents[2] / "search" / "profiles" / "generic.yaml").read_text()
    (tmp_path / "p.yaml").write_text(profile.replace("name: generic", "name: mine", 1))
    with Client(server) as client:
        assert client.upload_model(tmp_path / "m.onnx", "cnn").name == "cnn"
        assert client.upload_dataset(tmp_path / "d.npz", "data").kind == "dataset"
        assert client.upload_profile(tmp_path / "p.yaml").name == "mine"
        with pytest.raises(ApiError) as err:
            client.upload_model(tmp_path / "m.onnx", "cnn")
        assert err.value.status == 409 and "already exists" in err.value.message
        with pytest.raises(ApiError) as err:
            client.upload_dataset(tmp_path / "p.yaml", "bad")
        assert err.value.status == 422 and "file" in err.value.message


def _job_json(status: str) -> dict[str, object]:
    return {"id": 1, "status": status, "spec": {"workload": "digits"},
            "progress": {"finished": 0, "total": 3, "fraction": 0.0},
            "counts": {"complete": 0, "failed": 0, "retried": 0, "running": 0, "infeasible": 0}, "best": None,
            "metric": None, "higher_is_better": None, "fp32_quality": None, "created_at": "2026-01-01T00:00:00Z",
            "started_at": None, "finished_at": None, "error": None, "fidelity": None}


def test_client_error_messages_and_wait_timeout() -> None:
    import httpx

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(422, json={"detail": [
                {"loc": ["body", "n_trials"], "msg": "Input should be greater than or equal to 1", "type": "x"},
                {"loc": ["body", "pins", 2, "match"], "msg": "matches no layer", "type": "value_error"}]})
        if request.url.path.endswith("/events"):
            return httpx.Response(200, text="event: progress\ndata: {}\n\n",
                                  headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json=_job_json("running"))

    with Client("http://mixq.test", transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(ApiError) as err:
            client.submit({"workload": "digits", "n_trials": 0})
        assert err.value.status == 422
        assert err.value.message == ("n_trials: Input should be greater than or equal to 1; "
                                     "pins.2.match: matches no layer")
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="job 1 still running"):
            client.wait(1, timeout_s=0.5, reconnect_s=0.05)
        assert time.monotonic() - started < 5

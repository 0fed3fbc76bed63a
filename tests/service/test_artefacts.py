"""Each front point's trained weights and QDQ ONNX: made and checked by the worker when the job ends,
stored in the database with the weights' fingerprint, downloadable from ``.../pareto/{n}/model.onnx``
and ``.../weights`` (404 with a reason for a point off the front or a job not done), and the ONNX opens
in onnxruntime with its default session options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import FAST_JOB
from fastapi.testclient import TestClient

from search import load_workload
from search.quant.checkpoint import load_checkpoint, load_trained_weights
from search.quant.qconfig import SCHEMA_VERSION, apply_qconfig, load_qconfig
from service import store
from service.artefacts import trial_weights_dir
from service.db import Database
from service.settings import Settings
from service.store import TrialRecord
from service.worker import Worker

JOB = {**FAST_JOB, "n_trials": 4, "qat_steps": 5, "formats": ["int4", "int8"]}


def _run(client: TestClient, db: Database, settings: Settings, spec: dict[str, object]) -> int:
    job = client.post("/v1/jobs", json=spec)
    assert job.status_code == 201, job.text
    worker = Worker(db, settings)
    job_id = worker.next_job()
    assert job_id is not None
    assert job_id == job.json()["id"]
    worker.run_job(job_id)
    done = client.get(f"/v1/jobs/{job_id}").json()
    assert done["status"] == "succeeded", done["error"]
    return job_id


def test_front_points_get_weights_and_onnx(client: TestClient, db: Database, settings: Settings,
                                           tmp_path: Path) -> None:
    job_id = _run(client, db, settings, JOB)
    pareto = client.get(f"/v1/jobs/{job_id}/pareto").json()
    front = [p["number"] for p in pareto["points"]]
    assert front
    assert not trial_weights_dir(settings, job_id).exists()  # working copies removed once stored
    workload = load_workload("digits", {"pretrain_steps": 30})
    x = workload.example_inputs[0] if isinstance(workload.example_inputs, tuple) else workload.example_inputs
    for number in front:
        qconf = client.get(f"/v1/jobs/{job_id}/pareto/{number}/qconfig.json")
        assert qconf.status_code == 200
        data = qconf.json()
        assert data["schema_version"] == SCHEMA_VERSION and data["on_front"] is True and "feasible" in data
        prov = data["provenance"]
        assert prov["qat_steps"] == 5 and prov["seed"] == JOB.get("seed", 0) and prov["job_id"] == job_id
        assert prov["spec"]["n_trials"] == 4
        name = qconf.headers["content-disposition"].split('filename="')[1].rstrip('"')
        assert name.startswith(f"trial{number:04d}-") and name.endswith(".json")

        weights = client.get(f"/v1/jobs/{job_id}/pareto/{number}/weights")
        assert weights.status_code == 200, weights.text
        assert weights.headers["content-disposition"].endswith(f'{name[:-5]}.pt"')  # one name scheme
        path = tmp_path / f"{number}.pt"
        path.write_bytes(weights.content)
        checkpoint = load_checkpoint(path)
        assert checkpoint.fingerprint == weights.headers["x-mixq-weights-fingerprint"]

        onnx_file = client.get(f"/v1/jobs/{job_id}/pareto/{number}/model.onnx")
        assert onnx_file.status_code == 200, onnx_file.text
        assert onnx_file.headers["content-disposition"].endswith(f'{name[:-5]}.onnx"')
        session = ort.InferenceSession(onnx_file.content, providers=["CPUExecutionProvider"])  # defaults
        got = session.run(None, {"input_0": x.numpy()})[0]
        # the same model rebuilt from the downloads as a user would (mixq export's steps)
        model = apply_qconfig(load_workload("digits", {"pretrain_steps": 30}).model, load_qconfig(data),
                              workload.example_inputs)
        load_trained_weights(model, checkpoint)
        with torch.no_grad():
            want = model.eval()(x).numpy()
        diff = float(np.max(np.abs(got - want)))
        print(f"trial {number}: ONNX (onnxruntime defaults) vs fake-quant from downloaded weights: {diff:.3g}")
        assert diff <= 1e-5 + 4 * float(np.max(np.abs(want))) / 127


def test_off_front_point_and_unfinished_job_are_404_with_a_reason(
    client: TestClient, db: Database, settings: Settings
) -> None:
    job_id = _run(client, db, settings, JOB)
    record = TrialRecord(number=50, assignment={"features.0": "int8"}, quality=0.1, quality_std=None,
                         n_evaluations=1, costs={}, primary_cost=None, feasible=False, duration_s=0.0, source="test",
                         qconfig={"schema_version": 1, "layers": {}, "provenance": {"mixq_version": "0",
                                                                                   "model_fingerprint": "x"}})
    with db.session() as session:
        store.record_trial(session, job_id, record, None, True)  # complete, off the front
    r = client.get(f"/v1/jobs/{job_id}/pareto/50/model.onnx")
    assert r.status_code == 404 and "not on job" in r.json()["detail"], r.text
    q = client.get(f"/v1/jobs/{job_id}/pareto/50/qconfig.json").json()
    assert q["on_front"] is False and q["feasible"] is False and q["schema_version"] == 2  # an old file, upgraded
    missing = client.get(f"/v1/jobs/{job_id}/pareto/9999/weights").json()["detail"]
    assert missing == f"trial 9999 of job {job_id} not found"
    assert client.get("/v1/jobs/999999/pareto/0/model.onnx").status_code == 404
    queued = client.post("/v1/jobs", json=JOB).json()["id"]
    with db.session() as session:
        store.record_trial(session, queued, record, None, True)
    r = client.get(f"/v1/jobs/{queued}/pareto/50/weights")
    assert r.status_code == 404 and f"job {queued} is queued" in r.json()["detail"], r.text


def test_points_trained_on_another_machine_keep_their_files(
    client: TestClient, db: Database, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Worker A (its own weights folder) trains every trial and leaves while it believes another worker is
    still on the job: it stores its front points' files.  Worker B, on "another machine" (another folder,
    none of the weights), finalizes: the job succeeds and A's files stay, none replaced by B's reasons."""
    job_id = client.post("/v1/jobs", json=JOB).json()["id"]
    machine_a = Worker(db, settings.model_copy(update={"trial_weights_dir": tmp_path / "a"}), worker_id="a")
    machine_b = Worker(db, settings.model_copy(update={"trial_weights_dir": tmp_path / "b"}), worker_id="b")
    real = store.other_live_workers
    monkeypatch.setattr(store, "other_live_workers",
                        lambda session, job, me, before: 1 if me == "a" else real(session, job, me, before))
    assert machine_a.next_job() == job_id
    machine_a.run_job(job_id)
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "running"  # A left the report to B
    monkeypatch.setattr(store, "other_live_workers", real)
    with db.session() as session:
        store.unregister_worker(session, "a")
    machine_b.run_job(job_id)
    done = client.get(f"/v1/jobs/{job_id}").json()
    assert done["status"] == "succeeded", done["error"]
    pareto = client.get(f"/v1/jobs/{job_id}/pareto").json()
    assert pareto["points"]
    for point in pareto["points"]:
        files = pareto["artefacts"][str(point["number"])]
        assert files["onnx"] and files["weights"] and files["error"] is None, files
        r = client.get(f"/v1/jobs/{job_id}/pareto/{point['number']}/model.onnx")
        ort.InferenceSession(r.content, providers=["CPUExecutionProvider"])

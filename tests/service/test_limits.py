"""Per-owner limits (issue 9, tenancy): active jobs, training work per job, upload bytes, and priority
above the default only for operator tokens.  Real SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
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
    r = limited.post("/v1/jobs", json={**FAST_JOB, "n_trials": 30, "qat_steps": 5})  # 150 + 30 > 100
    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    assert detail["loc"] == ["body", "qat_steps"]
    assert "30 x 5 + 30 = 180" in detail["msg"] and "MIXQ_MAX_QAT_STEPS_PER_JOB" in detail["msg"]
    assert limited.post("/v1/jobs", json={**FAST_JOB, "n_trials": 14, "qat_steps": 5}).status_code == 201


def test_work_limit_counts_pretraining(limited: TestClient) -> None:
    """Pretraining is training work too (issue 21): a built-in's pretrain_steps, given or its default."""
    r = limited.post("/v1/jobs", json={**FAST_JOB, "n_trials": 2, "qat_steps": 5,
                                       "workload_options": {"pretrain_steps": 95}})  # 10 + 95 > 100
    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    assert detail["loc"] == ["body", "workload_options", "pretrain_steps"]
    assert "2 x 5 + 95 = 105" in detail["msg"]
    r = limited.post("/v1/jobs", json={**FAST_JOB, "n_trials": 2, "qat_steps": 5, "workload_options": {}})
    assert r.status_code == 422 and "+ 600 =" in r.json()["detail"][0]["msg"], r.text  # digits' default


@pytest.mark.parametrize(("workload", "option", "value", "allowed"), [
    ("digits", "batch_size", 10**8, "1..4096"),
    ("digits", "pretrain_steps", 10**9, "1..100000"),
    ("digits", "batch_size", 0, "1..4096"),
    ("denoise", "patch_size", 100_000, "4..256"),
    ("denoise", "eval_size", 10_000, "8..427"),
    ("denoise-deep", "batch_size", 100_000, "1..256"),
    ("denoise-deep", "pretrain_steps", -1, "1..100000"),
])
def test_builtin_workload_options_are_bounded(
    client: TestClient, workload: str, option: str, value: int, allowed: str
) -> None:
    r = client.post("/v1/jobs", json={**FAST_JOB, "workload": workload, "workload_options": {option: value}})
    assert r.status_code == 422, r.text
    msg = r.json()["detail"][0]["msg"]
    assert f"workload_options.{option}" in msg and allowed in msg, msg


def test_a_dncnn_training_batch_is_bounded_as_a_whole(client: TestClient) -> None:
    r = client.post("/v1/jobs", json={**FAST_JOB, "workload": "denoise", "workload_options": {
        "pretrain_steps": 30, "batch_size": 256, "patch_size": 256, "width": 1024, "depth": 200}})
    assert r.status_code == 422, r.text
    assert "workload_options.batch_size" in r.json()["detail"][0]["msg"]


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
    with _client(settings, db, max_upload_bytes_per_owner=quota, max_concurrent_inspections=N_CONCURRENT) as client:
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


# --- uploads past the API (issue 21): the worker trains them inside limits --------------------------------

WIDE = 32768  # hidden width of the blow-up model: 128 KiB of activations per sample and layer


def wide_onnx(width: int = WIDE, features: int = 16, classes: int = 3) -> bytes:
    """A tiny ONNX (two MatMuls around a ReLU) whose activations grow with the batch: ``width`` floats per
    sample after the first MatMul."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array((rng.standard_normal((features, width)) * 0.1).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((width, classes)) * 0.01).astype(np.float32), "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="up"),
             helper.make_node("Relu", ["h"], ["r"], name="act"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="down")]
    graph = helper.make_graph(nodes, "wide", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, features])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, classes])], [w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def wide_npz(n_train: int = 64, n_test: int = 16, features: int = 16) -> bytes:
    import io

    import numpy as np

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(buf, x_train=rng.standard_normal((n_train, features)).astype(np.float32),
             y_train=rng.integers(0, 3, n_train), x_test=rng.standard_normal((n_test, features)).astype(np.float32),
             y_test=rng.integers(0, 3, n_test))
    return buf.getvalue()


UPLOAD_JOB = {**FAST_JOB, "workload": "wide", "pin_first_last": None, "model": "wide", "dataset": "wide",
              "n_trials": 2, "qat_steps": 2}


def _store_uploads(db: Database, model: bytes, dataset: bytes) -> None:
    import hashlib

    from service.models import UploadKind
    from service.uploads import inspect_model_here

    with db.session() as session:
        store.add_upload(session, "local", UploadKind.MODEL, "wide", model, hashlib.sha256(model).hexdigest(),
                         inspect_model_here(model))
        store.add_upload(session, "local", UploadKind.DATASET, "wide", dataset, hashlib.sha256(dataset).hexdigest(),
                         inspect_dataset_here(dataset))


def _run_upload_job(db: Database, settings: Settings, batch_size: int) -> tuple[Any, Any]:
    from service.worker import Worker

    with db.session() as session:  # straight into the queue: the submission check is tested on its own
        job_id = store.add_job(session, "local", {**UPLOAD_JOB, "workload_options": {"batch_size": batch_size}},
                               2, 0, None).id
    with db.session() as session:
        assert store.claim_queued_job(session) == job_id
    worker = Worker(db, settings)
    assert getattr(worker, "isolate_uploads", False)  # else the job would train in the test's own process
    worker.run_job(job_id)
    with db.session() as session:
        job = store.get_job(session, job_id)
        assert job is not None
        return (job.status, job.error), worker.last_child


def test_worker_trains_an_uploaded_model_in_a_child_under_a_memory_limit(settings: Settings, db: Database) -> None:
    """One training batch of 4096 through the wide model is ~0.5 GiB per activation (a couple of GiB for a
    step): in a child limited to 256 MiB the job fails naming the limit, and the child's peak RSS (wait4)
    stays within the limit above what a small job's child uses."""
    _store_uploads(db, wide_onnx(), wide_npz(n_train=4096))
    limit = 256 * 2**20
    limited = settings.model_copy(update={"upload_job_memory_bytes": limit})
    (status, error), small = _run_upload_job(db, limited, batch_size=8)
    assert status == "succeeded", error
    assert small is not None and small.returncode == 0  # it ran in a child
    (status, error), big = _run_upload_job(db, limited, batch_size=4096)
    assert status == "failed"
    assert "MIXQ_UPLOAD_JOB_MEMORY_BYTES" in error and "batch_size" in error, error
    assert big is not None
    assert big.max_rss_bytes < small.max_rss_bytes + limit, (big.max_rss_bytes, small.max_rss_bytes)


EVAL_SCRIPT = """
import resource, sys
import torch
from service.uploads import build_workload
sys.path.insert(0, "tests/service")
from test_limits import wide_onnx, wide_npz
torch.set_num_threads(1)
w = build_workload("wide", wide_onnx(), wide_npz(n_test=4096), {"batch_size": 16})
w.model(*w.example_inputs)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
quality = w.evaluate(w.model)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, quality)
"""


def test_uploaded_model_is_evaluated_in_bounded_batches() -> None:
    """A 4096-sample test set through the wide model: one forward would hold 4096 x 32768 floats (512 MiB)
    twice; in batches of batch_size the evaluating child's peak RSS grows by a few MiB."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", EVAL_SCRIPT], capture_output=True, text=True, cwd=root, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(root)}, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    grown_kib, quality = done.stdout.split()
    assert 0.0 <= float(quality) <= 1.0
    assert int(grown_kib) < 64 * 1024, f"evaluation grew the peak RSS by {int(grown_kib) // 1024} MiB"


def test_submission_refuses_a_batch_that_cannot_fit_the_job_memory(settings: Settings, db: Database) -> None:
    _store_uploads(db, wide_onnx(), wide_npz())
    with _client(settings, db, upload_job_memory_bytes=256 * 2**20) as client:
        r = client.post("/v1/jobs", json={**UPLOAD_JOB, "workload_options": {"batch_size": 4096}})
        assert r.status_code == 422, r.text
        detail = r.json()["detail"][0]
        assert detail["loc"] == ["body", "workload_options", "batch_size"]
        assert "MIXQ_UPLOAD_JOB_MEMORY_BYTES" in detail["msg"] and "at most about" in detail["msg"]
        r = client.post("/v1/jobs", json={**UPLOAD_JOB, "workload_options": {"batch_size": 8}})
        assert r.status_code == 201, r.text
        r = client.post("/v1/jobs", json={**UPLOAD_JOB, "workload_options": {"batch_size": 0}})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "workload_options"], r.text


# --- inspections bounded, the quota first; profiles over the body limit (issue 21) ------------------------


def test_concurrent_inspections_are_bounded_with_retry_after(
    settings: Settings, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    started: list[int] = []

    def slow_inspection(data: bytes) -> dict[str, Any]:
        started.append(len(data))
        release.wait(30)
        return inspect_dataset_here(data)

    monkeypatch.setattr(routes, "inspect_dataset", slow_inspection)
    data = npz_bytes()
    with _client(settings, db, max_concurrent_inspections=2) as client, ThreadPoolExecutor(2) as pool:
        running = [pool.submit(client.post, "/v1/datasets", files={"file": ("d.npz", data)}, data={"name": f"d{i}"})
                   for i in range(2)]
        deadline = time.monotonic() + 30
        while len(started) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        third = client.post("/v1/datasets", files={"file": ("d.npz", data)}, data={"name": "d2"})
        release.set()
        assert [f.result().status_code for f in running] == [201, 201]
    assert third.status_code == 429, third.text
    assert third.headers["Retry-After"].isdigit()
    assert "MIXQ_MAX_CONCURRENT_INSPECTIONS" in third.json()["detail"]
    assert len(started) == 2  # the third never started a child


def test_upload_quota_is_checked_before_inspecting(
    settings: Settings, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    inspected: list[int] = []

    def counting(data: bytes) -> dict[str, Any]:
        inspected.append(len(data))
        return inspect_dataset_here(data)

    monkeypatch.setattr(routes, "inspect_dataset", counting)
    data = npz_bytes()
    with _client(settings, db, max_upload_bytes_per_owner=len(data) + 10) as client:
        codes = [client.post("/v1/datasets", files={"file": ("d.npz", data)}, data={"name": f"d{i}"}).status_code
                 for i in range(2)]
    assert codes == [201, 429]
    assert len(inspected) == 1  # the upload past the quota cost no inspection


@pytest.mark.parametrize("how", ["json", "chunked", "multipart"])
def test_profile_over_the_body_limit_is_413(settings: Settings, db: Database, how: str) -> None:
    big = b'{"name": "' + b"x" * 200_000 + b'"}'
    with _client(settings, db, max_profile_bytes=1000) as client:
        if how == "json":
            r = client.post("/v1/profiles", content=big, headers={"content-type": "application/json"})
        elif how == "chunked":
            r = client.post("/v1/profiles", content=iter([big]), headers={"content-type": "application/json"})
        else:
            r = client.post("/v1/profiles", files={"file": ("p.yaml", big)})
        assert r.status_code == 413, r.text
        assert r.headers["content-type"].startswith("application/json") and "limit" in r.json()["detail"]
        assert client.get("/livez").status_code == 200


# --- names that cannot collide with mixq's own; free axes only where the model has them (issue 21) -------


def two_gemm_onnx(second_name: str, first_name: str = "first") -> bytes:
    """x (1, 16) -> Gemm 16->256 -> Relu -> Gemm 256->3, the nodes named as given."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.1).astype(np.float32), n)
             for n, s in (("w1", (256, 16)), ("b1", (256,)), ("w2", (3, 256)), ("b2", (3,)))]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name=first_name, transB=1),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name=second_name, transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_a_node_named_like_mixqs_output_quantizer_keeps_its_layer() -> None:
    import torch

    from search.quant.formats import parse_format
    from search.quant.qat import OUTPUT_QUANT_ATTR, quantize_model
    from service.uploads import inspect_model_here, load_model

    data = two_gemm_onnx(OUTPUT_QUANT_ATTR)
    info = inspect_model_here(data)
    assert OUTPUT_QUANT_ATTR not in info["layers"] and len(info["layers"]) == 2
    assert OUTPUT_QUANT_ATTR in info["onnx_names"].values()  # the file's name is still shown
    model = load_model(data)
    x = torch.randn(4, 16)
    fp32 = model(x)
    quantize_model(model, {name: parse_format("int8") for name in info["layers"]}, (x[:1],))
    out = model(x)
    assert out.shape == (4, 3)  # the last Gemm was not replaced by the output quantizer
    assert torch.allclose(out, fp32, atol=0.05)


@pytest.mark.parametrize("name", ["training", "onnx_names", "input_shapes", "_modules", "forward"])
def test_a_node_named_like_an_attribute_of_the_module_imports(name: str) -> None:
    from service.uploads import inspect_model_here

    info = inspect_model_here(two_gemm_onnx(name))
    assert name not in info["layers"] and list(info["onnx_names"].values()) == ["first", name]


def test_a_torch_model_with_mixqs_reserved_name_is_refused_not_replaced() -> None:
    import torch
    from torch import nn

    from search.errors import QuantizationError
    from search.quant.formats import parse_format
    from search.quant.qat import quantize_model

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 8)
            self.mixq_output_quant = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.mixq_output_quant(self.fc(x))

    with pytest.raises(QuantizationError, match="mixq_output_quant"):
        quantize_model(Net(), {"fc": parse_format("int8"), "mixq_output_quant": parse_format("int8")},
                       (torch.zeros(1, 4),))


def test_export_verification_compares_with_the_original_model(tmp_path: Any) -> None:
    import torch
    from torch import nn

    from search.errors import ExportError
    from search.quant.export_onnx import export_onnx, verify_onnx

    lost_a_layer = nn.Linear(16, 256).eval()  # what a quantized copy that lost its last Gemm computes
    path = export_onnx(lost_a_layer, (torch.zeros(1, 16),), tmp_path / "m.onnx")
    assert verify_onnx(lost_a_layer, (torch.zeros(1, 16),), path) < 1e-5  # agrees with itself
    with pytest.raises(ExportError, match="original fp32 model"):
        verify_onnx(nn.Sequential(nn.Linear(16, 256), nn.ReLU(), nn.Linear(256, 3)), (torch.zeros(1, 16),), path,
                    what="original fp32 model")


def test_conv_flatten_linear_from_onnx_is_exported_without_free_spatial_axes(tmp_path: Any) -> None:
    """A fixed-width Reshape after a Conv: at twice the size the model folds the extra pixels into rows (a
    batch of 2 at 16x16 gives 8 rows), so the spatial axes must stay static."""
    import io
    import json
    import warnings

    import onnx
    import torch
    from torch import nn

    from search.quant.export_onnx import StaticShapesWarning, export_onnx, onnxruntime_session
    from search.quant.formats import parse_format
    from search.quant.qat import quantize_model
    from service.uploads import load_model

    class ConvReshapeLinear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 8 * 8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.conv(x).reshape(-1, 4 * 8 * 8))

    buf = io.BytesIO()
    # the TorchScript exporter writes to file objects too
    torch.onnx.export(ConvReshapeLinear().eval(), (torch.zeros(1, 1, 8, 8),), buf, dynamo=False, opset_version=17)  # type: ignore[arg-type]
    model = load_model(buf.getvalue())
    example = (torch.randn(1, 1, 8, 8),)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    quantize_model(model, {n: parse_format("int8") for n in names}, example)
    with torch.no_grad():
        model(example[0])  # calibrates the activation quantizers
    model.eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StaticShapesWarning)
        path = export_onnx(model, example, tmp_path / "m.onnx")
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["mixq.dynamic_axes"])["input_0"] == ["batch"]
    assert any(issubclass(w.category, StaticShapesWarning) for w in caught)
    session = onnxruntime_session(path)
    out = session.run(None, {"input_0": torch.randn(2, 1, 8, 8).numpy()})[0]
    assert out.shape == (2, 3)
    with pytest.raises(Exception):  # noqa: B017 - onnxruntime's own error: 16x16 is refused, not 8 rows
        session.run(None, {"input_0": torch.randn(2, 1, 16, 16).numpy()})


# --- datasets that do not fit the model: refused at upload or submission, naming the array (issue 21) ------


def _npz(**arrays: Any) -> bytes:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _misfits() -> list[Any]:
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 16)).astype(np.float32)
    y = rng.integers(0, 3, 32)
    return [
        pytest.param({"x_train": rng.standard_normal((32, 15)).astype(np.float32), "y_train": y}, "x_train",
                     "[15]", id="sample-shape"),
        pytest.param({"x_train": x, "y_train": y, "x_test": rng.standard_normal((8, 4, 4)).astype(np.float32),
                      "y_test": y[:8]}, "x_test", "[4, 4]", id="test-sample-shape"),
        pytest.param({"x_train": x, "y_train": y + 5}, "y_train", "labels 0..2", id="label-range"),
        pytest.param({"x_train": x, "y_train": -y - 1}, "y_train", "labels 0..2", id="negative-labels"),
        pytest.param({"x_train": x, "y_train": rng.integers(0, 3, (32, 2))}, "y_train", "one label per sample",
                     id="label-shape"),
        pytest.param({"x_train": x, "y_train": rng.standard_normal((32, 5)).astype(np.float32)}, "y_train",
                     "regression", id="regression-target-shape"),
    ]


@pytest.mark.parametrize(("arrays", "array", "expected"), _misfits())
def test_dataset_that_does_not_fit_the_model_is_422_at_submission(
    settings: Settings, db: Database, arrays: dict[str, Any], array: str, expected: str
) -> None:
    _store_uploads(db, two_gemm_onnx("second"), _npz(**arrays))
    with _client(settings, db) as client:
        r = client.post("/v1/jobs", json={**UPLOAD_JOB, "workload_options": {"batch_size": 8}})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    assert detail["loc"] == ["body", "dataset"]
    assert f"array {array!r}" in detail["msg"] and expected in detail["msg"], detail["msg"]


def test_a_dataset_that_fits_is_accepted(settings: Settings, db: Database) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    _store_uploads(db, two_gemm_onnx("second"), _npz(x_train=rng.standard_normal((32, 16)).astype(np.float32),
                                                     y_train=rng.integers(0, 3, 32)))
    with _client(settings, db) as client:
        r = client.post("/v1/jobs", json={**UPLOAD_JOB, "workload_options": {"batch_size": 8}})
    assert r.status_code == 201, r.text


@pytest.mark.parametrize(("arrays", "expected"), [
    pytest.param({"x_train": np.ones((4, 16), ">f4"), "y_train": np.zeros(4, int)},
                 "big-endian", id="big-endian"),
    pytest.param({"x_train": np.full((4, 16), 3e38, "f4"), "y_train": np.zeros(4, int)},
                 "overflow", id="near-float32-max"),
])
def test_unusable_arrays_are_refused_at_upload(client: TestClient, arrays: dict[str, Any], expected: str) -> None:
    r = client.post("/v1/datasets", files={"file": ("d.npz", _npz(**arrays))}, data={"name": "d"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "file"] and expected in r.json()["detail"][0]["msg"]


# --- the inspection child's environment; error messages capped (issue 21) ---------------------------------


def test_inspection_child_gets_an_empty_environment_and_scratch_cwd(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from service.sandbox import run_sandboxed

    monkeypatch.setenv("MIXQ_DATABASE_URL", "postgresql+psycopg://mixq:secret@db/mixq")
    monkeypatch.setenv("MIXQ_SOME_TOKEN", "t0ken")
    info = run_sandboxed("probe", b"")["info"]
    leaked = [k for k in info["environment"] if k.startswith("MIXQ_") and not k.startswith("MIXQ_SANDBOX_")]
    assert leaked == [] and "MIXQ_DATABASE_URL" not in info["environment"]
    assert set(info["environment"]) <= {"OMP_NUM_THREADS", "PYTHONPATH", "MIXQ_SANDBOX_MEMORY_BYTES",
                                        "MIXQ_SANDBOX_CPU_S", "PATH", "LC_ALL", "PYTHONNOUSERSITE", "HOME", "TMPDIR",
                                        "LC_CTYPE"}
    assert info["cwd"] != os.getcwd() and info["cwd_entries"] == 0
    assert not os.path.exists(info["cwd"])  # the scratch directory is gone afterwards


def test_an_error_quoting_a_huge_name_is_capped(client: TestClient) -> None:
    from onnx import TensorProto, helper

    huge = "Op" * 1_000_000  # an operator type of 2 MB, quoted by "unsupported ONNX operator(s)"
    graph = helper.make_graph([helper.make_node(huge, ["x"], ["y"], name="n")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    r = client.post("/v1/models", files={"file": ("m.onnx", model)}, data={"name": "huge"})
    assert r.status_code == 422, r.text[:300]
    assert len(r.content) < 10_000 and "unsupported ONNX operator" in r.json()["detail"][0]["msg"]


def test_serve_sets_the_servers_timeouts_and_caps() -> None:
    """No header/body timeouts before (5 slow connections stayed open 40 s): idle keep-alive closed, header
    block capped, connections capped (issue 21)."""
    from service.cli import uvicorn_config

    config = uvicorn_config(Settings(keep_alive_timeout_s=3, max_header_bytes=8192, max_connections=50), object())
    assert config.timeout_keep_alive == 3
    assert config.h11_max_incomplete_event_size == 8192
    assert config.limit_concurrency == 50
    defaults = uvicorn_config(Settings(), object())
    assert defaults.timeout_keep_alive == 5 and defaults.h11_max_incomplete_event_size == 16 * 1024


def test_a_job_past_its_cpu_limit_is_killed_and_failed_naming_the_limit(settings: Settings, db: Database) -> None:
    _store_uploads(db, wide_onnx(), wide_npz(n_train=256))
    limited = settings.model_copy(update={"upload_job_cpu_s": 1})
    from service.worker import Worker

    spec = {**UPLOAD_JOB, "workload_options": {"batch_size": 64}, "n_trials": 50, "qat_steps": 2000}
    with db.session() as session:
        job_id = store.add_job(session, "local", spec, 50, 0, None).id
    with db.session() as session:
        assert store.claim_queued_job(session) == job_id
    worker = Worker(db, limited)
    assert getattr(worker, "isolate_uploads", False)  # else this job would train in the test's own process
    started = time.monotonic()
    worker.run_job(job_id)
    assert time.monotonic() - started < 120
    assert worker.last_child is not None and worker.last_child.signal_name in ("SIGXCPU", "SIGKILL")
    with db.session() as session:
        job = store.get_job(session, job_id)
        assert job is not None and job.status == "failed"
        assert "MIXQ_UPLOAD_JOB_CPU_S" in (job.error or "") and "SIGXCPU" in (job.error or ""), job.error


@pytest.fixture
def slow_body_server(settings: Settings, db: Database) -> Iterator[tuple[str, int]]:
    import socket

    import uvicorn

    app = create_app(settings.model_copy(update={"body_timeout_s": 1.0}), db)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield "127.0.0.1", port
    server.should_exit = True
    thread.join(timeout=10)


def test_a_stalled_request_body_is_408(slow_body_server: tuple[str, int]) -> None:
    """Headers, then 10 of 1000 promised bytes, then silence: answered 408 after MIXQ_BODY_TIMEOUT_S (1 s
    here) rather than held open."""
    import socket

    head = ("POST /v1/profiles HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Content-Length: 1000\r\n\r\n")
    started = time.monotonic()
    with socket.create_connection(slow_body_server, timeout=10) as sock:
        sock.sendall(head.encode() + b'{"name": "')
        answer = sock.recv(65536)
        while b"MIXQ_BODY_TIMEOUT_S" not in answer and time.monotonic() - started < 8:
            more = sock.recv(65536)
            if not more:
                break
            answer += more
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"MIXQ_BODY_TIMEOUT_S" in answer and time.monotonic() - started < 8
    with socket.create_connection(slow_body_server, timeout=10) as sock:  # the server still answers
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")


def test_requests_in_progress_per_client_are_capped(
    settings: Settings, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    started: list[int] = []

    def slow_inspection(data: bytes) -> dict[str, Any]:
        started.append(1)
        release.wait(30)
        return inspect_dataset_here(data)

    monkeypatch.setattr(routes, "inspect_dataset", slow_inspection)
    with _client(settings, db, max_requests_per_client=1) as client, ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, "/v1/datasets", files={"file": ("d.npz", npz_bytes())}, data={"name": "d"})
        deadline = time.monotonic() + 30
        while not started and time.monotonic() < deadline:
            time.sleep(0.02)
        second = client.get("/livez")
        release.set()
        assert first.result().status_code == 201
        assert client.get("/livez").status_code == 200  # the place is free again
    assert second.status_code == 429 and second.headers["Retry-After"] == "1"
    assert "MIXQ_MAX_REQUESTS_PER_CLIENT" in second.json()["detail"]

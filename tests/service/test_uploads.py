"""Uploads: ONNX models through the allow-listed importer in a sandbox, .pt2 refused (crafted archives never run
code), .npz without pickles or bombs, size
limits answered before the body is read, truncated bodies and files, names sanitized."""

from __future__ import annotations

import io
import json
import os
import pickle
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import uvicorn
from conftest import FAST_JOB
from fastapi.testclient import TestClient
from numpy.lib import format as npy_format
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from service.db import Database
from service.main import create_app
from service.sandbox import SandboxLimits, run_sandboxed
from service.settings import Settings
from service.uploads import UploadError, build_workload, check_npz_sizes, inspect_model, inspect_model_here


class ConvThenLinearNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(4 * 6 * 6, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    @staticmethod
    def example_inputs() -> tuple[torch.Tensor]:
        return (torch.zeros(1, 1, 8, 8),)


def pt2_bytes() -> bytes:
    program = torch.export.export(ConvThenLinearNet().eval(), ConvThenLinearNet.example_inputs())
    buf = io.BytesIO()
    torch.export.save(program, buf)
    return buf.getvalue()


def npz_bytes(n: int = 40, **extra: np.ndarray) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    # allow_pickle=True is numpy's default, spelled out so that mypy does not match **extra to it
    np.savez(buf, allow_pickle=True, x_train=rng.random((n, 1, 8, 8), dtype=np.float32), y_train=rng.integers(0, 10, n),
             **extra)
    return buf.getvalue()


class CreatesFile:
    """Unpickling this creates ``path``: proof that code ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.path), "w"))


def replace_member(archive: bytes, suffix: str, payload: bytes, add: str | None = None) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive)) as src, zipfile.ZipFile(out, "w") as dst:
        root = src.namelist()[0].split("/")[0]
        for info in src.infolist():
            dst.writestr(info, payload if info.filename.endswith(suffix) else src.read(info))
        if add is not None:
            dst.writestr(f"{root}/{add}", payload)
    return out.getvalue()


def onnx_bytes() -> bytes:
    buf = io.BytesIO()
    # the TorchScript exporter writes to file objects too
    torch.onnx.export(ConvThenLinearNet().eval(), ConvThenLinearNet.example_inputs(), buf, dynamo=False, opset_version=17)  # type: ignore[arg-type]
    return buf.getvalue()


@pytest.fixture(scope="module")
def good_pt2() -> bytes:
    return pt2_bytes()


@pytest.fixture(scope="module")
def good_onnx() -> bytes:
    return onnx_bytes()


def mutate_program(archive: bytes, change) -> bytes:  # type: ignore[no-untyped-def]
    """The archive with its program JSON and weights config passed through ``change(member, obj)``."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            raw = src.read(info)
            if info.filename.endswith(".json") and ("models/" in info.filename or "config" in info.filename):
                obj = json.loads(raw)
                change(info.filename, obj)
                raw = json.dumps(obj).encode()
            dst.writestr(info, raw)
    return out.getvalue()


def _expr(marker: Path) -> str:
    return f"__import__('os').system('touch {marker}')"


def _set_symbolic(member: str, program: dict, marker: Path, field: str) -> None:  # type: ignore[type-arg]
    if not member.endswith("models/model.json"):
        return
    graph = program["graph_module"]["graph"]
    sym = {"as_expr": {"expr_str": _expr(marker), "hint": None}}
    first = next(iter(graph["tensor_values"].values()))
    if field == "tensor-size":
        first["sizes"][0] = sym
    elif field == "tensor-stride":
        first["strides"][0] = sym
    elif field == "storage-offset":
        first["storage_offset"] = sym
    elif field == "range-constraint":
        program["range_constraints"][_expr(marker)] = {"min_val": 0, "max_val": 10}
    else:
        graph.setdefault(field.replace("-", "_"), {})[_expr(marker)] = sym


def _evil_name(member: str, obj: dict, marker: Path, place: str) -> None:  # type: ignore[type-arg]
    if (place == "weights-config") != member.endswith("_weights_config.json"):
        return
    evil = f"features.0.weight'\n{_expr(marker)}\n#"
    text = json.dumps(obj).replace('"features.0.weight"', json.dumps(evil))
    obj.clear()
    obj.update(json.loads(text))


PT2_ATTACKS = [
    *[pytest.param(lambda m, o, mk, f=f: _set_symbolic(m, o, mk, f), id=f"expr-in-{f}") for f in (
        "tensor-size", "tensor-stride", "storage-offset", "range-constraint", "sym-int-values",
        "sym-float-values", "sym-bool-values")],
    *[pytest.param(lambda m, o, mk, p=p: _evil_name(m, o, mk, p), id=f"name-in-{p}") for p in ("program", "weights-config")],
]


@pytest.mark.parametrize("attack", PT2_ATTACKS)
def test_crafted_pt2_never_runs_code(good_pt2: bytes, tmp_path: Path, attack) -> None:  # type: ignore[no-untyped-def]
    """Expressions in torch's symbolic fields and quotes/newlines in names: .pt2 is refused, nothing runs."""
    marker = tmp_path / "pwned"
    crafted = mutate_program(good_pt2, lambda member, obj: attack(member, obj, marker))
    with pytest.raises(UploadError, match="ONNX"):
        inspect_model(crafted)
    with pytest.raises(UploadError, match="ONNX"):
        build_workload("evil", crafted, npz_bytes(), {})
    assert not marker.exists()


@pytest.mark.parametrize(
    "craft",
    [
        pytest.param(lambda good, p: replace_member(good, "sample_inputs/model.pt", p), id="sample-inputs-member"),
        pytest.param(lambda good, p: replace_member(good, "weight_0", p, add="data/weights/model.pt"), id="legacy-weights-pt"),
        pytest.param(lambda good, p: replace_member(good, "models/model.json", p), id="pickle-as-graph-json"),
        pytest.param(lambda good, p: p, id="bare-pickle-as-model"),
    ],
)
def test_pickle_in_any_member_never_executes(good_pt2: bytes, tmp_path: Path, craft) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "pwned"
    crafted = craft(good_pt2, pickle.dumps(CreatesFile(marker)))
    with pytest.raises(UploadError):
        inspect_model_here(crafted)
    with pytest.raises(UploadError):
        build_workload("evil", crafted, npz_bytes(), {})
    assert not marker.exists()


def test_uploaded_onnx_becomes_a_workload(good_onnx: bytes) -> None:
    info = inspect_model_here(good_onnx)
    assert info["n_layers"] == 2
    assert list(info["onnx_names"].values()) == ["/features/features.0/Conv", "/classifier/classifier.1/Gemm"]
    workload = build_workload("mine", good_onnx, npz_bytes(), {"batch_size": 8})
    assert [n for n, _ in workload.model.named_children()] == info["layers"]
    assert workload.model(torch.randn(3, 1, 8, 8)).shape == (3, 10)  # any batch size, though exported with batch 1
    assert 0.0 <= workload.evaluate(workload.model) <= 1.0 and workload.metric == "accuracy"


def upload(client: TestClient, path: str, name: str, data: bytes, filename: str = "f") -> tuple[int, dict[str, Any]]:
    r = client.post(path, files={"file": (filename, data)}, data={"name": name})
    return r.status_code, r.json() if r.headers.get("content-type", "").startswith("application/json") else {}


def test_upload_onnx_and_dataset_then_submit(client: TestClient, good_onnx: bytes, good_pt2: bytes) -> None:
    code, body = upload(client, "/v1/models", "tiny-cnn", good_onnx, "m.onnx")
    assert code == 201, body
    assert body["kind"] == "model" and body["info"]["n_layers"] == 2
    code, body = upload(client, "/v1/datasets", "tiny-data", npz_bytes(), "d.npz")
    assert code == 201, body
    assert body["info"]["x_train"]["shape"] == [40, 1, 8, 8]
    assert upload(client, "/v1/models", "tiny-cnn", good_onnx)[0] == 409
    # two layers: left free (pin_first_last would anchor both, leaving nothing to search: a 422)
    job = client.post("/v1/jobs", json={**FAST_JOB, "workload": "mine", "workload_options": {}, "pin_first_last": None,
                                         "model": "tiny-cnn", "dataset": "tiny-data"})
    assert job.status_code == 201, job.text
    code, body = upload(client, "/v1/models", "old", good_pt2, "m.pt2")
    assert code == 422 and body["detail"][0]["loc"] == ["body", "file"] and "ONNX" in body["detail"][0]["msg"]


def test_unsupported_operator_and_evil_names_via_the_api(client: TestClient, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    graph = helper.make_graph([helper.make_node("Loop", ["x"], ["y"], name="n")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    code, body = upload(client, "/v1/models", "loop", helper.make_model(graph).SerializeToString())
    assert code == 422 and "Loop" in body["detail"][0]["msg"]
    evil = f"x\"\n{_expr(marker)}\n#"
    weight = numpy_helper.from_array(np.ones((3, 4), np.float32), evil)
    gemm = helper.make_node("Gemm", ["x", evil], ["y"], name=evil, transB=1)
    graph = helper.make_graph([gemm], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    code, body = upload(client, "/v1/models", "evil", model)
    assert code == 201, body
    assert body["info"]["onnx_names"] == {body["info"]["layers"][0]: evil}
    assert body["info"]["layers"][0].replace("_", "a").isalnum()
    assert not marker.exists()


def test_huge_declared_input_hits_the_sandbox_limit(client: TestClient) -> None:
    weight = numpy_helper.from_array(np.ones((3, 4), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 200_000, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 200_000, 4])], [weight])
    huge = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    with pytest.raises(UploadError, match=r"MiB|killed|bad_alloc"):  # wherever the allocation fails first
        inspect_model(huge, SandboxLimits(memory_bytes=4 * 2**20))
    assert client.get("/livez").status_code == 200


def test_sandbox_child_runs_under_limits_without_network() -> None:
    info = run_sandboxed("probe", b"")["info"]
    assert info["rlimit_fsize"] == 0 and info["rlimit_cpu"] == SandboxLimits().cpu_s and info["rlimit_as"] > 0
    assert not info["tcp_5432_reachable"]  # PostgreSQL listens there for the tests; the child cannot reach it
    if os.geteuid() == 0:
        assert info["network_isolated"]


def test_npz_bomb_is_refused_before_loading(client: TestClient) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, x_train=np.zeros((25_000, 1000), np.float32), y_train=np.zeros(25_000, np.int64))
    bomb = buf.getvalue()  # ~100 MB of arrays in well under 1 MB
    assert len(bomb) < 1_000_000
    with pytest.raises(UploadError, match="decompression bomb"):
        check_npz_sizes(bomb)
    code, body = upload(client, "/v1/datasets", "bomb", bomb)
    assert code == 422 and "bomb" in body["detail"][0]["msg"]


def test_npy_header_that_lies_about_its_size_is_refused() -> None:
    lying = io.BytesIO()
    npy_format.write_array_header_1_0(lying, {"descr": "<f4", "fortran_order": False, "shape": (10**9,)})
    lying.write(np.zeros(4, np.float32).tobytes())
    honest = io.BytesIO()
    np.save(honest, np.zeros(4, np.int64))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("x_train.npy", lying.getvalue())
        z.writestr("y_train.npy", honest.getvalue())
    with pytest.raises(UploadError, match=r"x_train.*declares shape"):
        check_npz_sizes(out.getvalue())


@pytest.mark.parametrize(
    ("path", "data", "name", "field"),
    [
        pytest.param("/v1/models", b"not a zip", "m", "file", id="model-not-zip"),
        pytest.param("/v1/models", onnx_bytes()[:2000], "m", "file", id="model-truncated"),
        pytest.param("/v1/datasets", npz_bytes()[:300], "d", "file", id="dataset-truncated"),
        pytest.param("/v1/datasets", b"\x93NUMPY garbage", "d", "file", id="dataset-garbage"),
        pytest.param("/v1/datasets", npz_bytes(z=np.zeros(3)), "d", "file", id="dataset-unknown-array"),
        pytest.param("/v1/models", b"x", "../../etc/passwd", "name", id="path-in-name"),
        pytest.param("/v1/datasets", b"x", "a b", "name", id="space-in-name"),
    ],
)
def test_bad_uploads_are_422(client: TestClient, path: str, data: bytes, name: str, field: str) -> None:
    code, body = upload(client, path, name, data)
    assert code == 422, body
    assert body["detail"][0]["loc"] == ["body", field]


def test_npz_with_object_arrays_is_never_unpickled(client: TestClient, tmp_path: Path) -> None:
    marker = tmp_path / "pwned-npz"
    buf = io.BytesIO()
    np.savez(buf, x_train=np.array([CreatesFile(marker), 1], dtype=object), y_train=np.arange(2))
    code, _ = upload(client, "/v1/datasets", "evil", buf.getvalue())
    assert code == 422 and not marker.exists()


def test_profile_upload(client: TestClient) -> None:
    profile = {"name": "my-npu", "peak_macs_per_ms": 1e6, "formats": {"int8": {"throughput": 2.0}, "fp16": {"throughput": 1.0}}}
    r = client.post("/v1/profiles", json=profile)
    assert r.status_code == 201, r.text
    assert "my-npu" in client.get("/v1/meta").json()["profiles"]
    yaml_text = b"name: npu-yaml\npeak_macs_per_ms: 1000\nformats: {int8: {throughput: 2}}\n"
    assert client.post("/v1/profiles", files={"file": ("p.yaml", yaml_text)}).status_code == 201
    assert client.post("/v1/profiles", json={**profile, "bogus": 1}).status_code == 422
    assert client.post("/v1/profiles", json={**profile, "name": "generic"}).status_code == 422
    assert client.post("/v1/profiles", content=b"!!python/object:os.system ls", headers={"content-type": "text/yaml"}).status_code == 422
    job = client.post("/v1/jobs", json={**FAST_JOB, "profile": "my-npu", "formats": ["int8", "fp16"]})
    assert job.status_code == 201, job.text


# --- size limits on a live server: answered from the headers, before the body is sent --------------


@pytest.fixture
def live_server(settings: Settings, db: Database) -> Iterator[tuple[str, int]]:
    small = settings.model_copy(update={"max_model_bytes": 50_000, "max_dataset_bytes": 50_000})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(small, db), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield "127.0.0.1", port
    server.should_exit = True
    thread.join(timeout=10)


def raw_request(addr: tuple[str, int], head: str, body: bytes = b"", close_early: bool = False) -> bytes:
    with socket.create_connection(addr, timeout=10) as sock:
        sock.sendall(head.encode() + body)
        if close_early:
            return b""
        return sock.recv(65536)


def test_oversized_upload_is_413_before_the_body_is_read(live_server: tuple[str, int]) -> None:
    head = ("POST /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {500 * 1024 * 1024}\r\n\r\n")
    answer = raw_request(live_server, head)  # not one byte of the 500 MB body is sent
    assert answer.startswith(b"HTTP/1.1 413")


def test_oversized_chunked_upload_is_413(live_server: tuple[str, int]) -> None:
    head = ("POST /v1/datasets HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            "Transfer-Encoding: chunked\r\n\r\n")
    chunk = b'--b\r\nContent-Disposition: form-data; name="file"; filename="d.npz"\r\n\r\n' + b"x" * 200_000
    answer = raw_request(live_server, head, f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 413")


def test_truncated_upload_body_leaves_the_server_healthy(live_server: tuple[str, int]) -> None:
    head = ("POST /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            "Content-Length: 40000\r\n\r\n")
    raw_request(live_server, head, b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"m.pt2\"\r\n\r\nPK",
                close_early=True)
    answer = raw_request(live_server, "GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200")

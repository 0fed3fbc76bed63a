"""Uploads: .pt2 never unpickled (a crafted archive must not run code), .npz without pickles, size
limits answered before the body is read, truncated bodies and files, names sanitized."""

from __future__ import annotations

import contextlib
import io
import pickle
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import uvicorn
from conftest import FAST_JOB
from fastapi.testclient import TestClient
from torch import nn

from service.db import Database
from service.main import create_app
from service.settings import Settings
from service.uploads import UploadError, build_workload, inspect_model, sanitize_pt2


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
    np.savez(buf, x_train=rng.random((n, 1, 8, 8), dtype=np.float32), y_train=rng.integers(0, 10, n), **extra)
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


@pytest.fixture(scope="module")
def good_pt2() -> bytes:
    return pt2_bytes()


def test_crafted_pickle_runs_code_with_plain_torch_load(good_pt2: bytes, tmp_path: Path) -> None:
    """Control: the crafted archive is a real threat to ``torch.export.load`` (so the tests below mean something)."""
    marker = tmp_path / "pwned-by-torch-export-load"
    crafted = replace_member(good_pt2, "sample_inputs/model.pt", pickle.dumps(CreatesFile(marker)))
    with contextlib.suppress(Exception):  # it fails, but only after the payload ran
        torch.export.load(io.BytesIO(crafted))
    assert marker.exists()


@pytest.mark.parametrize(
    "craft",
    [
        pytest.param(lambda good, p: replace_member(good, "sample_inputs/model.pt", p), id="sample-inputs-member"),
        pytest.param(lambda good, p: replace_member(good, "weight_0", p, add="data/weights/model.pt"), id="legacy-weights-pt"),
        pytest.param(lambda good, p: replace_member(good, "models/model.json", p), id="pickle-as-graph-json"),
        pytest.param(lambda good, p: replace_member(good, "never", p, add="data/constants/custom_obj_0"), id="custom-object"),
        pytest.param(lambda good, p: p, id="bare-pickle-named-pt2"),
    ],
)
def test_pickle_disguised_as_pt2_never_executes(good_pt2: bytes, tmp_path: Path, craft) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "pwned"
    crafted = craft(good_pt2, pickle.dumps(CreatesFile(marker)))
    try:
        inspect_model(crafted)
    except UploadError:
        pass
    try:
        build_workload("evil", crafted, npz_bytes(), {})
    except UploadError:
        pass
    assert not marker.exists()


def test_weights_config_asking_for_pickle_is_refused(good_pt2: bytes) -> None:
    with zipfile.ZipFile(io.BytesIO(good_pt2)) as z:
        name = next(n for n in z.namelist() if n.endswith("_weights_config.json"))
        text = z.read(name).decode().replace('"use_pickle": false', '"use_pickle": true', 1)
    with pytest.raises(UploadError, match="pickled"):
        sanitize_pt2(replace_member(good_pt2, "_weights_config.json", text.encode()))


def test_zip_member_paths_are_sanitized(good_pt2: bytes) -> None:
    for evil in ("../../etc/passwd", "/abs/path", "a\\b"):
        out = io.BytesIO()
        with zipfile.ZipFile(io.BytesIO(good_pt2)) as src, zipfile.ZipFile(out, "w") as dst:
            for info in src.infolist():
                dst.writestr(info, src.read(info))
            dst.writestr(evil, b"x")
        with pytest.raises(UploadError, match="file"):
            sanitize_pt2(out.getvalue())


def test_uploaded_model_becomes_a_workload(good_pt2: bytes) -> None:
    sanitized, info = inspect_model(good_pt2)
    assert info["layers"] == ["features.0", "classifier.1"]
    workload = build_workload("mine", sanitized, npz_bytes(), {"batch_size": 8})
    x = torch.randn(3, 1, 8, 8)
    assert workload.model(x).shape == (3, 10)  # any batch size, though exported with batch 1
    assert 0.0 <= workload.evaluate(workload.model) <= 1.0 and workload.metric == "accuracy"


def upload(client: TestClient, path: str, name: str, data: bytes, filename: str = "f") -> tuple[int, dict]:
    r = client.post(path, files={"file": (filename, data)}, data={"name": name})
    return r.status_code, r.json() if r.headers.get("content-type", "").startswith("application/json") else {}


def test_upload_model_and_dataset_then_submit(client: TestClient, good_pt2: bytes, tmp_path: Path) -> None:
    code, body = upload(client, "/v1/models", "tiny-cnn", good_pt2, "m.pt2")
    assert code == 201, body
    assert body["kind"] == "model" and body["info"]["n_layers"] == 2
    code, body = upload(client, "/v1/datasets", "tiny-data", npz_bytes(), "d.npz")
    assert code == 201, body
    assert body["info"]["x_train"]["shape"] == [40, 1, 8, 8]
    assert upload(client, "/v1/models", "tiny-cnn", good_pt2)[0] == 409
    job = client.post("/v1/jobs", json={**FAST_JOB, "workload": "mine", "workload_options": {},
                                         "model": "tiny-cnn", "dataset": "tiny-data"})
    assert job.status_code == 201, job.text
    missing = client.post("/v1/jobs", json={**FAST_JOB, "model": "nope", "dataset": "tiny-data"})
    assert missing.status_code == 422 and "model" in missing.text
    marker = tmp_path / "pwned"
    # a pickle in the sample inputs is stripped (torch then loads no sample inputs): accepted, never run
    stripped = replace_member(good_pt2, "sample_inputs/model.pt", pickle.dumps(CreatesFile(marker)))
    assert upload(client, "/v1/models", "stripped", stripped, "s.pt2")[0] == 201
    # a pickle anywhere torch would unpickle it is refused
    evil = replace_member(good_pt2, "weight_0", pickle.dumps(CreatesFile(marker)), add="data/weights/model.pt")
    code, body = upload(client, "/v1/models", "evil", evil, "evil.pt2")
    assert code == 422 and body["detail"][0]["loc"] == ["body", "file"]
    assert not marker.exists()


def test_sample_inputs_are_stripped(good_pt2: bytes) -> None:
    with zipfile.ZipFile(io.BytesIO(sanitize_pt2(good_pt2))) as z:
        members = {n: z.read(n) for n in z.namelist()}
    assert [n for n in members if "sample_inputs" in n and members[n] == b""]
    assert not [n for n in members if "sample_inputs" in n and members[n]]


@pytest.mark.parametrize(
    ("path", "data", "name", "field"),
    [
        pytest.param("/v1/models", b"not a zip", "m", "file", id="model-not-zip"),
        pytest.param("/v1/models", pt2_bytes()[:2000], "m", "file", id="model-truncated"),
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

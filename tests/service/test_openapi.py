"""The OpenAPI document a generated client is built from: stable readable operationIds, every error
response documented, every ``$ref`` resolving, the qconfig file's JSON Schema as a component (a real
qconfig file validates against it), the SSE events described, and schemathesis loads every operation."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema_rs
import pytest
import schemathesis
import torch
from fastapi.testclient import TestClient
from schemathesis.core.result import Ok
from torch import nn

from search.quant.layers import discover_layers
from search.quant.qconfig import build_qconfig

OPERATION_IDS = {
    ("get", "/v1/meta"): "meta",
    ("post", "/v1/jobs"): "create_job",
    ("get", "/v1/jobs"): "list_jobs",
    ("get", "/v1/jobs/{job_id}"): "get_job",
    ("delete", "/v1/jobs/{job_id}"): "delete_job",
    ("post", "/v1/jobs/{job_id}/cancel"): "cancel_job",
    ("get", "/v1/jobs/{job_id}/trials"): "list_trials",
    ("get", "/v1/jobs/{job_id}/pareto"): "pareto",
    ("get", "/v1/jobs/{job_id}/pareto/{number}/qconfig.json"): "download_qconfig",
    ("get", "/v1/jobs/{job_id}/pareto/{number}/model.onnx"): "download_onnx",
    ("get", "/v1/jobs/{job_id}/pareto/{number}/weights"): "download_weights",
    ("get", "/v1/jobs/{job_id}/events"): "job_events",
    ("post", "/v1/models"): "upload_model",
    ("post", "/v1/datasets"): "upload_dataset",
    ("post", "/v1/profiles"): "upload_profile",
}


@pytest.fixture
def doc(client: TestClient) -> dict[str, Any]:
    return dict(client.get("/openapi.json").json())


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m, p, op) for p, item in doc["paths"].items() for m, op in item.items() if isinstance(op, dict)]


def test_operation_ids_are_stable_and_readable(doc: dict[str, Any]) -> None:
    ops = _operations(doc)
    ids = [op["operationId"] for _, _, op in ops]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", i) for i in ids), ids
    assert {(m, p): op["operationId"] for m, p, op in ops if p.startswith("/v1/")} == OPERATION_IDS


def test_every_error_response_is_documented(doc: dict[str, Any]) -> None:
    for method, path, op in _operations(doc):
        if not path.startswith("/v1/"):
            continue
        codes = set(op["responses"])
        want = {"400", "401", "422", "503"} | ({"404"} if "{" in path else set())
        if method != "get":
            want.add("403")
        if method == "post" and path in ("/v1/jobs", "/v1/models", "/v1/datasets", "/v1/profiles"):
            want |= {"409", "413", "429"}
        assert want <= codes, f"{method} {path}: {sorted(want - codes)} not documented"
        for code in codes - {"200", "201", "204"}:
            assert op["responses"][code]["description"]
    union = {c for _, p, op in _operations(doc) if p.startswith("/v1/") for c in op["responses"]}
    assert {"400", "401", "403", "404", "409", "413", "422", "429", "503"} <= union


def test_every_ref_resolves(doc: dict[str, Any]) -> None:
    text = json.dumps(doc)
    refs = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', text))
    assert refs and refs <= set(doc["components"]["schemas"]), sorted(refs - set(doc["components"]["schemas"]))


def test_qconfig_json_references_the_qconfig_schema_and_a_file_validates(doc: dict[str, Any]) -> None:
    op = doc["paths"]["/v1/jobs/{job_id}/pareto/{number}/qconfig.json"]["get"]
    schema = op["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/QConfigFile"}
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    graph = discover_layers(model, torch.randn(2, 4))
    cfg = build_qconfig(None, graph, dict.fromkeys((layer.fqn for layer in graph.layers), "int8"), qat_steps=5,
                        seed=0, spec={"workload": "x"})
    validator = jsonschema_rs.validator_for({**schema, "components": doc["components"]})
    validator.validate(json.loads(cfg.model_dump_json()))
    bad = {**json.loads(cfg.model_dump_json()), "on_front": "yes"}
    assert not validator.is_valid(bad)


def test_binary_downloads_and_events_are_described(doc: dict[str, Any]) -> None:
    paths = doc["paths"]
    onnx_ok = paths["/v1/jobs/{job_id}/pareto/{number}/model.onnx"]["get"]["responses"]["200"]
    assert onnx_ok["content"]["application/onnx"]["schema"]["format"] == "binary"
    events = paths["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]
    assert "text/event-stream" in events["content"]
    assert all(f"`event: {name}`" in events["description"] for name in ("progress", "trial", "done", "error"))


def test_schemathesis_loads_every_operation(doc: dict[str, Any]) -> None:
    schema = schemathesis.openapi.from_dict(doc)
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()
        operations.append(result.ok())
    assert len(operations) >= len(OPERATION_IDS)

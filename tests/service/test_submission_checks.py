"""What can be known at submission is a 422 naming the field, not a failed job later (issue 9): pins and
groups that match no layer, a search space with nothing left to search, formats and built-in workload
options that cannot work.  The layers come from the built-in's architecture (no training) or from the
uploaded model's inspection; nothing is stored for a refused job.  Real SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import FAST_JOB
from fastapi.testclient import TestClient
from test_uploads import npz_bytes, onnx_bytes, upload

from service.db import Database
from service.main import create_app
from service.settings import Settings

DIGITS_LAYERS = ("features.0", "features.3", "features.7", "classifier.1", "classifier.3")


def refused(client: TestClient, **changes: Any) -> dict[str, Any]:
    """The first error of a submission that must be a 422; nothing may have been stored."""
    before = client.get("/v1/jobs").json()["total"]
    r = client.post("/v1/jobs", json={**FAST_JOB, **changes})
    assert r.status_code == 422, r.text
    assert client.get("/v1/jobs").json()["total"] == before
    detail: dict[str, Any] = r.json()["detail"][0]
    return detail


@pytest.mark.parametrize(
    ("changes", "loc", "words"),
    [
        pytest.param({"pins": [{"match": "features.3", "format": "int4"}, {"match": "head.*", "format": "int8"}]},
                     ["pins", 1, "match"], ["pins[1].match: 'head.*' matches no layer", *DIGITS_LAYERS],
                     id="pin-matches-no-layer"),
        pytest.param({"pins": [{"match": "kind:conv1d", "format": "int8"}]}, ["pins", 0, "match"],
                     ["'kind:conv1d' matches no layer"], id="pin-kind-matches-no-layer"),
        pytest.param({"pins": [{"match": "*", "format": "int8"}]}, ["pins"], ["nothing to search"],
                     id="everything-pinned"),
        pytest.param({"formats": ["int8"]}, ["formats"], ["nothing to search"], id="one-format"),
        pytest.param({"groups": [["features.3", "features.9"]]}, ["groups", 0],
                     ["groups[0]: 'features.9' matches no layer", "features.0"], id="group-with-an-unknown-layer"),
        pytest.param({"groups": [["features.3", "classifier.1"]],
                      "pins": [{"match": "features.3", "format": "int4"}, {"match": "classifier.1", "format": "fp16"}]},
                     ["groups"], ["pinned to different ones"], id="group-with-two-pins"),
        pytest.param({"formats": ["int4", "w8a16"], "profile": "npu-int4"}, ["formats", 1],
                     ["'w8a16' is not supported by profile 'npu-int4'"], id="format-the-profile-lacks"),
        pytest.param({"workload_options": {"pretrain_steps": 30, "width": 0}}, ["workload_options"],
                     ["workload_options.width: 1..1024"], id="option-out-of-range"),
    ],
)
def test_builtin_workload_refused_at_submission(
    client: TestClient, changes: dict[str, Any], loc: list[Any], words: list[str]
) -> None:
    detail = refused(client, **changes)
    assert detail["loc"] == ["body", *loc]
    for word in words:
        assert word in detail["msg"]


def test_builtin_workload_valid_pins_and_groups_are_accepted(client: TestClient) -> None:
    r = client.post("/v1/jobs", json={
        **FAST_JOB, "pins": [{"match": "features.3", "format": "int4"}, {"match": "kind:linear", "format": None}],
        "groups": [["features.3", "features.7"]],
    })
    assert r.status_code == 201, r.text
    assert client.get("/v1/jobs").json()["total"] == 1


def test_refused_pin_carries_the_input(client: TestClient) -> None:
    detail = refused(client, pins=[{"match": "nope", "format": "int8"}])
    assert detail["input"] == "nope"


def test_uploaded_model_is_checked_against_its_layers(client: TestClient) -> None:
    assert upload(client, "/v1/models", "tiny-cnn", onnx_bytes(), "m.onnx")[0] == 201
    assert upload(client, "/v1/datasets", "tiny-data", npz_bytes(), "d.npz")[0] == 201
    job = {"workload": "mine", "workload_options": {}, "model": "tiny-cnn", "dataset": "tiny-data"}
    detail = refused(client, **job, pins=[{"match": "features.*", "format": "int4"}])
    assert detail["loc"] == ["body", "pins", 0, "match"]
    assert "'features.*' matches no layer" in detail["msg"]
    # the importer's module names (ONNX node names made identifiers), so the user can copy one
    assert "features_features_0_Conv" in detail["msg"], detail["msg"]
    # two layers, both anchored to int8 by pin_first_last: nothing left to search
    detail = refused(client, **job, formats=["int4", "int8"])
    assert detail["loc"] == ["body", "pin_first_last"] and "nothing to search" in detail["msg"]
    ok = client.post("/v1/jobs", json={**FAST_JOB, **job, "pin_first_last": None,
                                       "pins": [{"match": "features_*", "format": "int8"}]})
    assert ok.status_code == 201, ok.text


def test_entry_point_workloads_are_not_imported_to_check(settings: Settings, db: Database) -> None:
    entry_point = "tests.search.user_workload:make_workload"
    with TestClient(create_app(settings.model_copy(update={"allowed_workloads": [entry_point]}), db)) as c:
        r = c.post("/v1/jobs", json={**FAST_JOB, "workload": entry_point, "workload_options": {},
                                     "pins": [{"match": "no-such-layer", "format": "int8"}]})
    assert r.status_code == 201, r.text  # its worker checks the space (and fails the job) as before


def test_a_stored_profile_that_no_longer_validates_is_a_422(client: TestClient, db: Database) -> None:
    """A profile row written under an older, looser schema: submission parses it now, so it must be
    refused on ``profile``, not a 500."""
    from service import store
    from service.auth import LOCAL_OWNER

    with db.session() as session:
        store.add_profile(session, LOCAL_OWNER, "legacy", '{"name": "legacy", "layers_per_second": "fast"}')
    detail = refused(client, profile="legacy")
    assert detail["loc"][-1] == "profile" and "'legacy' no longer validates" in detail["msg"], detail

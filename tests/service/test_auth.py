"""Tokens, ownership isolation and the exposure guard."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import FAST_JOB
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from service.auth import create_token, hash_token
from service.cli import app as cli_app
from service.db import Database
from service.main import create_app
from service.models import ApiToken
from service.settings import Settings


@pytest.fixture
def secured(settings: Settings, db: Database) -> Iterator[TestClient]:
    with TestClient(create_app(settings.model_copy(update={"auth_required": True}), db)) as test_client:
        yield test_client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_tokens_are_stored_hashed(db: Database) -> None:
    with db.session() as session:
        token = create_token(session, "alice", "laptop")
    with db.session() as session:
        stored = session.scalars(select(ApiToken.token_sha256)).all()
    assert stored == [hash_token(token)] and token not in stored


def test_someone_elses_job_is_404(secured: TestClient, db: Database) -> None:
    with db.session() as session:
        alice, bob = create_token(session, "alice"), create_token(session, "bob")
    job_id = secured.post("/v1/jobs", json=FAST_JOB, headers=bearer(alice)).json()["id"]
    for method, path in [
        ("GET", f"/v1/jobs/{job_id}"), ("GET", f"/v1/jobs/{job_id}/trials"), ("GET", f"/v1/jobs/{job_id}/pareto"),
        ("GET", f"/v1/jobs/{job_id}/events"), ("GET", f"/v1/jobs/{job_id}/pareto/0/qconfig.json"),
        ("POST", f"/v1/jobs/{job_id}/cancel"), ("DELETE", f"/v1/jobs/{job_id}"),
    ]:
        assert secured.request(method, path, headers=bearer(bob)).status_code == 404, path
    assert secured.get("/v1/jobs", headers=bearer(bob)).json()["total"] == 0
    assert secured.get(f"/v1/jobs/{job_id}", headers=bearer(alice)).json()["status"] == "queued"
    # the same Idempotency-Key is per owner
    h = {"Idempotency-Key": "k"}
    a = secured.post("/v1/jobs", json=FAST_JOB, headers={**bearer(alice), **h}).json()["id"]
    b = secured.post("/v1/jobs", json=FAST_JOB, headers={**bearer(bob), **h}).json()["id"]
    assert a != b


def test_missing_or_bad_token_is_401(secured: TestClient, client: TestClient) -> None:
    assert secured.get("/v1/jobs").status_code == 401
    assert secured.get("/v1/jobs", headers=bearer("mixq_not-a-real-token")).status_code == 401
    assert client.get("/v1/jobs", headers=bearer("garbage")).status_code == 401
    assert client.get("/v1/jobs").status_code == 200  # loopback without auth: the local owner
    assert secured.get("/livez").status_code == 200


def test_token_create_cli(settings: Settings, db: Database) -> None:
    result = CliRunner().invoke(
        cli_app, ["token", "create", "--owner", "carol", "--database-url", settings.resolved_database_url]
    )
    assert result.exit_code == 0, result.output
    token = result.output.strip()
    with db.session() as session:
        assert session.scalar(select(ApiToken.owner).where(ApiToken.token_sha256 == hash_token(token))) == "carol"
    bad = CliRunner().invoke(cli_app, ["token", "create", "--owner", "../x", "--database-url", settings.resolved_database_url])
    assert bad.exit_code != 0 and "owner" in bad.output


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "::"])
def test_non_loopback_without_auth_is_refused(host: str) -> None:
    with pytest.raises(ValueError, match="MIXQ_AUTH_REQUIRED"):
        Settings(host=host).check_exposure()
    Settings(host=host, auth_required=True).check_exposure()
    Settings(host="127.0.0.1").check_exposure()
    Settings(host="::1").check_exposure()


def test_serve_refuses_non_loopback_without_auth(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(
        cli_app, ["serve", "--host", "0.0.0.0", "--database-url", f"sqlite:///{tmp_path}/x.db"]
    )
    assert result.exit_code == 2 and "refusing to serve" in result.output

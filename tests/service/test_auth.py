"""Tokens, ownership isolation and the exposure guard."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from conftest import FAST_JOB
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from service import store
from service.auth import create_token, hash_token
from service.cli import app as cli_app
from service.db import Database
from service.main import create_app
from service.models import ApiToken, TokenRole
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


def cli(*args: str) -> Any:
    return CliRunner().invoke(cli_app, list(args))


def test_token_list_revoke_and_expiry_cli(secured: TestClient, settings: Settings) -> None:
    url = ["--database-url", settings.resolved_database_url]
    keep = cli("token", "create", "--owner", "dave", "--name", "laptop", *url).output.strip()
    short = cli("token", "create", "--owner", "erin", "--expires-in", "2s", *url).output.strip()
    assert secured.get("/v1/jobs", headers=bearer(keep)).status_code == 200
    assert secured.get("/v1/jobs", headers=bearer(short)).status_code == 200
    listed = cli("token", "list", *url)
    assert listed.exit_code == 0, listed.output
    rows = [line.split("\t") for line in listed.output.strip().splitlines()[1:]]
    assert [(r[1], r[2], r[5]) for r in rows] == [("dave", "laptop", "active"), ("erin", "", "active")]
    assert rows[0][4] == "never" and rows[1][4] != "never"
    assert keep not in listed.output and short not in listed.output  # only hashes are kept
    revoked = cli("token", "revoke", rows[0][0], *url)
    assert revoked.exit_code == 0 and "revoked" in revoked.output
    assert secured.get("/v1/jobs", headers=bearer(keep)).status_code == 401
    time.sleep(2.5)
    assert secured.get("/v1/jobs", headers=bearer(short)).status_code == 401
    states = [line.split("\t")[5] for line in cli("token", "list", *url).output.strip().splitlines()[1:]]
    assert states == ["revoked", "expired"]
    missing = cli("token", "revoke", "9999", *url)
    assert missing.exit_code == 2 and "token_id" in missing.output
    bad = cli("token", "create", "--owner", "x", "--expires-in", "soon", *url)
    assert bad.exit_code != 0 and "--expires-in" in bad.output


def test_metrics_need_an_operator_token_when_auth_is_on(secured: TestClient, client: TestClient, db: Database) -> None:
    with db.session() as session:
        token = create_token(session, "alice")
        operator = create_token(session, "olga", role=TokenRole.OPERATOR)
    assert secured.get("/metrics").status_code == 401
    # job counts across tenants (issue 21): a tenant's token does not see them
    user = secured.get("/metrics", headers=bearer(token))
    assert user.status_code == 403 and "operator" in user.json()["detail"]
    assert secured.get("/metrics", headers=bearer(operator)).status_code == 200
    assert client.get("/metrics").status_code == 200  # loopback without auth


@pytest.fixture
def live_secured(settings: Settings, db: Database) -> Iterator[str]:
    """The app under real uvicorn (access log on) in a thread, auth required: the base URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = create_app(settings.model_copy(update={"auth_required": True}), db)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="info"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_revoking_a_token_ends_its_event_stream_and_tokens_stay_out_of_the_access_log(
    live_secured: str, db: Database
) -> None:
    records = _Records()
    logging.getLogger("uvicorn.access").addHandler(records)
    try:
        with db.session() as session:
            token = create_token(session, "alice")
        job_id = httpx.post(live_secured + "/v1/jobs", json=FAST_JOB, headers=bearer(token), timeout=30).json()["id"]
        events: list[str] = []
        with httpx.stream("GET", f"{live_secured}/v1/jobs/{job_id}/events", params={"token": token},
                          timeout=httpx.Timeout(10, read=15)) as stream:
            for line in stream.iter_lines():
                events.append(line)
                if line.startswith("event: progress"):
                    with db.session() as session:
                        (row,) = store.list_tokens(session, "alice")
                        store.revoke_token(session, row.id)
        assert "event: error" in events and "revoked" in "".join(events)
        assert httpx.get(f"{live_secured}/v1/jobs/{job_id}/events", params={"token": token}).status_code == 401
    finally:
        logging.getLogger("uvicorn.access").removeHandler(records)
    access = [line for line in records.lines if "/events" in line]
    assert len(access) == 2 and all("token=[redacted]" in line for line in access), access
    assert not any(token in line for line in records.lines)

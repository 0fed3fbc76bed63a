"""Host allow-list, same-origin writes, security headers, JSON 413 and relative redirects, through the real
app on SQLite and PostgreSQL (the browser-level check is tests/browser/test_cross_site.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import FAST_JOB
from fastapi.testclient import TestClient

from service.db import Database
from service.main import create_app
from service.security import HostPolicy
from service.settings import Settings


@pytest.fixture
def loopback(settings: Settings, db: Database) -> Iterator[TestClient]:
    """The default deployment: loopback names only, as `mixq serve` runs it."""
    app = create_app(settings.model_copy(update={"allowed_hosts": []}), db)
    with TestClient(app, base_url="http://127.0.0.1:8000") as test_client:
        yield test_client


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "10.0.0.5"])
def test_unserved_host_is_refused(loopback: TestClient, host: str) -> None:
    for method, path in [("GET", "/v1/jobs"), ("GET", "/"), ("POST", "/v1/jobs"), ("GET", "/livez")]:
        response = loopback.request(method, path, headers={"Host": host}, json=FAST_JOB)
        assert response.status_code == 400, (method, path, host)
        assert response.json()["detail"].startswith("Host:")
        assert host not in response.text


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "[::1]:8000", "localhost"])
def test_loopback_hosts_are_served(loopback: TestClient, host: str) -> None:
    assert loopback.get("/v1/jobs", headers={"Host": host}).status_code == 200


def test_configured_hosts_are_served(settings: Settings, db: Database) -> None:
    app = create_app(settings.model_copy(update={"allowed_hosts": ["mixq.lab.example", ".corp.example"]}), db)
    with TestClient(app) as c:
        for host, status in [("mixq.lab.example", 200), ("MIXQ.lab.example:443", 200), ("a.corp.example", 200),
                             ("corp.example", 200), ("notcorp.example", 400), ("lab.example", 400)]:
            assert c.get("/v1/jobs", headers={"Host": host}).status_code == status, host


def test_allowed_hosts_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIXQ_ALLOWED_HOSTS", "a.example, b.example")
    assert Settings().allowed_hosts == ["a.example", "b.example"]
    assert HostPolicy(["*"]).serves("anything.example")
    assert HostPolicy([], bind_host="192.168.1.4").serves("192.168.1.4:8000")
    assert not HostPolicy([], bind_host="0.0.0.0").serves("0.0.0.0")


CROSS_SITE = [
    pytest.param({"Origin": "http://evil.example"}, "Origin", id="foreign-origin"),
    pytest.param({"Origin": "http://127.0.0.1:9999"}, "Origin", id="other-port"),
    pytest.param({"Origin": "null"}, "Origin", id="null-origin"),
    pytest.param({"Sec-Fetch-Site": "cross-site"}, "Sec-Fetch-Site", id="sec-fetch-site"),
]


@pytest.mark.parametrize(("headers", "named"), CROSS_SITE)
@pytest.mark.parametrize("auth_required", [False, True], ids=["auth-off", "auth-on"])
def test_cross_site_writes_are_refused(
    settings: Settings, db: Database, headers: dict[str, str], named: str, auth_required: bool
) -> None:
    app = create_app(settings.model_copy(update={"allowed_hosts": [], "auth_required": auth_required}), db)
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        job_id = None
        if not auth_required:
            job_id = c.post("/v1/jobs", json=FAST_JOB).json()["id"]
        writes = [
            ("POST", "/v1/jobs", {"json": FAST_JOB}),
            ("POST", "/v1/models", {"files": {"file": ("m.pt2", b"x")}, "data": {"name": "m"}}),
            ("POST", f"/v1/jobs/{job_id or 1}/cancel", {}),
            ("DELETE", f"/v1/jobs/{job_id or 1}", {}),
            ("PUT", "/v1/jobs", {}), ("PATCH", "/v1/jobs", {}),
        ]
        for method, path, kwargs in writes:
            response = c.request(method, path, headers=headers, **kwargs)
            assert response.status_code == 403, (method, path)
            assert response.json()["detail"].startswith(named + ":")
        if job_id is not None:
            assert c.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
            assert c.get("/v1/jobs").json()["total"] == 1


def test_same_origin_and_non_browser_writes_pass(loopback: TestClient) -> None:
    same = {"Origin": "http://127.0.0.1:8000", "Sec-Fetch-Site": "same-origin"}
    job_id = loopback.post("/v1/jobs", json=FAST_JOB, headers=same).json()["id"]
    assert loopback.post(f"/v1/jobs/{job_id}/cancel", headers=same).status_code == 200
    assert loopback.post("/v1/jobs", json=FAST_JOB).status_code == 201  # curl: neither header
    # reads are not refused for their Origin (CORS already keeps other origins from reading them)
    assert loopback.get("/v1/jobs", headers={"Origin": "http://evil.example"}).status_code == 200


def test_pages_send_csp_and_frame_ancestors(loopback: TestClient) -> None:
    for path in ["/", "/jobs/1", "/jobs/1/compare", "/v1/jobs"]:
        headers = loopback.get(path).headers
        assert "frame-ancestors 'none'" in headers["content-security-policy"], path
        assert "script-src 'self'" in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY"


def test_too_large_body_is_json_413(settings: Settings, db: Database) -> None:
    app = create_app(settings.model_copy(update={"max_json_bytes": 100, "max_model_bytes": 1000}), db)
    with TestClient(app) as c:
        response = c.post("/v1/jobs", content=b"{" + b" " * 200 + b"}", headers={"content-type": "application/json"})
        assert response.status_code == 413
        assert response.json()["detail"].startswith("body: larger than the limit")
        streamed = c.post("/v1/jobs", content=iter([b"{", b" " * 200, b"}"]),
                          headers={"content-type": "application/json"})
        assert streamed.status_code == 413 and "detail" in streamed.json()
        upload = c.post("/v1/models", files={"file": ("m.pt2", b"x" * 200_000)}, data={"name": "m"})
        assert upload.status_code == 413 and "detail" in upload.json()


def test_redirects_do_not_echo_the_host(loopback: TestClient) -> None:
    response = loopback.get("/v1/jobs/", headers={"Host": "localhost:8000"}, follow_redirects=False)
    if response.status_code in (301, 302, 307, 308):
        assert response.headers["location"].startswith("/")
        assert "localhost" not in response.headers["location"]
    else:
        assert "location" not in response.headers

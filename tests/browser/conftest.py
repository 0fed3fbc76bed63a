"""Browser-test fixtures: the real server (``mixq serve`` in a subprocess, SQLite in a temporary folder,
one local worker) and Debian's Chromium driven by Python Playwright.

The tests are marked ``browser`` and skipped, with the reason, when ``/usr/bin/chromium`` or
Playwright is missing.  Screenshots go to ``test-artifacts/screenshots/`` (gitignored).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.auth import create_token
from service.db import Database

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
REPO_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO_ROOT / "test-artifacts" / "screenshots"
SERVER_START_TIMEOUT_S = 60.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the ``browser`` tests, saying why, where Chromium or Playwright is missing."""
    reason = None
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing (Debian: apt-get install -y chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "Python Playwright is not installed (pip install -e '.[test]')"
    if reason:
        for item in items:
            if item.get_closest_marker("browser"):
                item.add_marker(pytest.mark.skip(reason=reason))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    base_url: str
    token: str | None  # a Bearer token when the server requires auth
    database_url: str = ""

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return httpx.request(method, self.base_url + path, headers=headers, timeout=30, **kwargs)


def _mixq() -> list[str]:
    """The ``mixq`` console script of this interpreter's environment."""
    exe = Path(sys.executable).with_name("mixq")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "service.cli"]


def _start_server(tmp: Path, *, auth: bool, local_workers: int) -> tuple[subprocess.Popen[bytes], LiveServer]:
    """``mixq serve`` (it migrates the database first) on a free loopback port."""
    port = _free_port()
    env = {
        **os.environ,
        "MIXQ_DATA_DIR": str(tmp),
        "MIXQ_DATABASE_URL": f"sqlite:///{tmp / 'mixq.db'}",
        "MIXQ_HOST": "127.0.0.1",
        "MIXQ_PORT": str(port),
        "MIXQ_LOCAL_WORKERS": str(local_workers),
        "MIXQ_AUTH_REQUIRED": "true" if auth else "false",
        "MIXQ_POLL_INTERVAL_S": "0.2",
        "MIXQ_EVENTS_POLL_S": "0.2",
        "OMP_NUM_THREADS": "1",  # the machine is shared; the tiny job needs no more
        # this checkout's packages, whichever checkout the console script was installed from
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p),
    }
    log = (tmp / "server.log").open("wb")
    # its own session, so teardown can end the server and the worker processes it started
    proc = subprocess.Popen(
        [*_mixq(), "serve"], env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    server = LiveServer(f"http://127.0.0.1:{port}", None, env["MIXQ_DATABASE_URL"])
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"mixq serve exited with {proc.returncode}:\n{(tmp / 'server.log').read_text()}")
        try:
            if httpx.get(server.base_url + "/readyz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            _stop(proc)
            raise RuntimeError(
                f"mixq serve not ready after {SERVER_START_TIMEOUT_S} s:\n{(tmp / 'server.log').read_text()}"
            )
        time.sleep(0.3)
    if auth:  # `mixq serve` has migrated the database by now
        db = Database(env["MIXQ_DATABASE_URL"])
        with db.session() as session:
            server.token = create_token(session, "alice", "browser tests")
        db.dispose()
    return proc, server


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory, mixq_cache_dir: Path) -> Iterator[LiveServer]:
    """Loopback, no auth, one local worker."""
    proc, server = _start_server(tmp_path_factory.mktemp("server"), auth=False, local_workers=1)
    yield server
    _stop(proc)


@pytest.fixture(scope="session")
def auth_server(tmp_path_factory: pytest.TempPathFactory, mixq_cache_dir: Path) -> Iterator[LiveServer]:
    """Auth required, no workers (jobs stay queued)."""
    proc, server = _start_server(tmp_path_factory.mktemp("auth-server"), auth=True, local_workers=0)
    yield server
    _stop(proc)


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    """A fresh browser context per test; JS errors on the page fail the test."""
    context = chromium.new_context(viewport={"width": 1300, "height": 900}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def screenshot(page: Any) -> Any:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def take(name: str) -> Path:
        path = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take

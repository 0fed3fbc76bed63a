"""A page from another origin, in real Chromium, cannot change anything on a local `mixq serve`
(auth off, the default): upload, job submission, cancel and delete are refused before they reach the
API, while the dashboard's own same-origin requests work and its pages load under the CSP.

The attacker's page is served by a plain HTTP server on another loopback port (cross-origin, and the
browser lets loopback pages talk to loopback) and on ``localhost`` (cross-site as well).  Whether a
request reached the API is read from the server's own ``/metrics`` request counter.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import REPO_ROOT, LiveServer, _start_server, _stop

pytestmark = pytest.mark.browser

QUEUED_JOB = {"workload": "digits", "n_trials": 2, "qat_steps": 5, "seed_with_sensitivity": False}

# Each attack is a "simple" request (no CORS preflight) where the method allows; DELETE cannot be
# simple, so it is sent as a browser would try it.  mode "no-cors": the attacker needs no answer.
ATTACK_PAGE = """<!doctype html><meta charset="utf-8"><title>attack</title><script>
const target = new URLSearchParams(location.search).get("target");
const jobId = new URLSearchParams(location.search).get("job");
async function attack() {
  const form = new FormData();
  form.append("name", "drive-by");
  form.append("file", new Blob(["PK not really a model"]), "m.pt2");
  const tries = [
    fetch(target + "/v1/models", {method: "POST", mode: "no-cors", body: form}),
    fetch(target + "/v1/jobs", {method: "POST", mode: "no-cors", headers: {"content-type": "text/plain"},
                                body: JSON.stringify(__JOB__)}),
    fetch(target + "/v1/jobs/" + jobId + "/cancel", {method: "POST", mode: "no-cors"}),
    fetch(target + "/v1/jobs/" + jobId, {method: "DELETE", mode: "no-cors"}),
  ];
  await Promise.allSettled(tries);
  document.title = "done";
}
attack();
</script>""".replace("__JOB__", json.dumps(QUEUED_JOB))


class _AttackPage(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = ATTACK_PAGE.encode()
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def idle_server(tmp_path_factory: pytest.TempPathFactory, mixq_cache_dir: Path) -> Iterator[LiveServer]:
    """Loopback, auth off, no workers: jobs stay queued, so a cancel would show.  PYTHONPATH: the
    ``mixq`` script of a shared environment may point at another checkout; serve this one's code."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PYTHONPATH", str(REPO_ROOT))
        proc, server = _start_server(tmp_path_factory.mktemp("cross-site"), auth=False, local_workers=0)
    yield server
    _stop(proc)


@pytest.fixture(scope="module")
def attacker_port() -> Iterator[int]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _AttackPage)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield int(httpd.server_address[1])
    httpd.shutdown()


def requests_reaching_the_api(server: LiveServer) -> dict[tuple[str, str], float]:
    """``(method, route) -> count`` from ``mixq_http_requests_total``, every status summed."""
    counts: dict[tuple[str, str], float] = {}
    for line in server.api("GET", "/metrics").text.splitlines():
        match = re.match(r'mixq_http_requests_total\{method="(\w+)",route="([^"]+)",status="\d+"\} (\S+)', line)
        if match:
            key = (match[1], match[2])
            counts[key] = counts.get(key, 0.0) + float(match[3])
    return counts


WRITES = [("POST", "/v1/models"), ("POST", "/v1/jobs"), ("POST", "/v1/jobs/{job_id}/cancel"),
          ("DELETE", "/v1/jobs/{job_id}")]


@pytest.mark.parametrize("attacker_host", ["127.0.0.1", "localhost"], ids=["other-port", "other-site"])
def test_another_origin_cannot_upload_submit_cancel_or_delete(
    page: Any, idle_server: LiveServer, attacker_port: int, attacker_host: str
) -> None:
    job = idle_server.api("POST", "/v1/jobs", json=QUEUED_JOB).json()
    jobs_before = idle_server.api("GET", "/v1/jobs").json()["total"]
    before = requests_reaching_the_api(idle_server)
    page.goto(f"http://{attacker_host}:{attacker_port}/?target={idle_server.base_url}&job={job['id']}")
    page.wait_for_function("() => document.title === 'done'", timeout=30_000)
    after = requests_reaching_the_api(idle_server)
    for key in WRITES:
        assert after.get(key, 0.0) == before.get(key, 0.0), f"{key} reached the API from another origin"
    assert idle_server.api("GET", f"/v1/jobs/{job['id']}").json()["status"] == "queued"  # not cancelled or deleted
    assert idle_server.api("GET", "/v1/jobs").json()["total"] == jobs_before  # nothing submitted


def test_the_dashboards_own_requests_still_work(page: Any, idle_server: LiveServer) -> None:
    csp_violations: list[str] = []
    page.on("console", lambda msg: csp_violations.append(msg.text) if "Content Security Policy" in msg.text else None)
    page.goto(idle_server.base_url + "/")
    page.wait_for_selector("#f-profile option", state="attached")  # its scripts ran and read /v1/meta
    done = page.evaluate("""async (job) => {
        const post = await fetch("/v1/jobs", {method: "POST", headers: {"content-type": "application/json"},
                                               body: JSON.stringify(job)});
        const created = await post.json();
        const cancel = await fetch(`/v1/jobs/${created.id}/cancel`, {method: "POST"});
        const del = await fetch(`/v1/jobs/${created.id}`, {method: "DELETE"});
        return [post.status, cancel.status, del.status, created.id];
    }""", QUEUED_JOB)
    assert done[:3] == [201, 200, 204], done
    queued = idle_server.api("POST", "/v1/jobs", json=QUEUED_JOB).json()["id"]
    page.goto(f"{idle_server.base_url}/jobs/{queued}")  # Plotly's page under the same policy
    page.wait_for_function("() => document.querySelector('#job-status .badge')?.textContent === 'queued'")
    page.wait_for_timeout(1000)
    assert csp_violations == []

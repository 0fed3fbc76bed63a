"""Take the dashboard screenshots of README.md and docs/dashboard.md from a real tiny job.

    python -m tests.browser.screenshots            # writes docs/dashboard-*.png

It starts the real server (``mixq serve``, one worker, SQLite in a temporary folder, as the browser
tests do), runs a digits search to the end, starts a longer one to catch it mid-run, and drives
Debian's Chromium (``/usr/bin/chromium``) at 1280x800 and at a 390x844 phone width.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from playwright.sync_api import sync_playwright

from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, REPO_ROOT, LiveServer, _start_server, _stop

DOCS = REPO_ROOT / "docs"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
FINISHED_JOB = {
    "workload": "digits", "workload_options": {"pretrain_steps": 60}, "n_trials": 10, "qat_steps": 10,
    "reevaluate_front": 2, "max_quality_drop": 0.05,
}
RUNNING_JOB = {**FINISHED_JOB, "n_trials": 40, "qat_steps": 80}
TIMEOUT_S = 600


def _wait_for(server: LiveServer, job_id: int, statuses: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        job = server.api("GET", f"/v1/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        time.sleep(0.5)
    raise TimeoutError(f"job {job_id} is not {statuses} after {TIMEOUT_S} s")


def take_screenshots(server: LiveServer, browser: Any) -> list[Path]:
    done_id = server.api("POST", "/v1/jobs", json=FINISHED_JOB).json()["id"]
    job = _wait_for(server, done_id, {"succeeded", "failed", "cancelled"})
    if job["status"] != "succeeded":
        raise RuntimeError(f"the screenshot job ended {job['status']}: {job['error']}")
    written = []
    page = browser.new_page(viewport=DESKTOP)

    def shot(name: str, *, full_page: bool = True) -> None:
        path = DOCS / f"dashboard-{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        written.append(path)

    page.goto(server.base_url + f"/jobs/{done_id}")
    page.wait_for_selector("body[data-job-done=true]")
    page.wait_for_selector("#trials-table tbody tr")
    shot("job")
    numbers = [p["number"] for p in server.api("GET", f"/v1/jobs/{done_id}/pareto").json()["points"]]
    page.goto(server.base_url + f"/jobs/{done_id}/compare?a={numbers[0]}&b={numbers[-1]}")
    page.wait_for_selector("#layers tbody tr")
    shot("compare")

    running_id = server.api("POST", "/v1/jobs", json=RUNNING_JOB).json()["id"]
    page.goto(server.base_url + f"/jobs/{running_id}")
    page.wait_for_function("() => /left/.test(document.getElementById('job-phase').textContent)"
                           " && document.querySelectorAll('#front-table tbody tr').length > 0", timeout=TIMEOUT_S * 1000)
    shot("running", full_page=False)
    page.goto(server.base_url + "/")
    page.wait_for_selector(f'#jobs-table tr[data-job-id="{running_id}"]')
    shot("jobs", full_page=False)
    server.api("POST", f"/v1/jobs/{running_id}/cancel")
    page.close()

    phone = browser.new_page(viewport=PHONE)
    phone.goto(server.base_url + f"/jobs/{done_id}")
    phone.wait_for_selector("body[data-job-done=true]")
    path = DOCS / "dashboard-phone.png"
    phone.screenshot(path=str(path), full_page=False)
    written.append(path)
    phone.close()
    return written


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="mixq-screenshots-") as tmp:
        os.environ.setdefault("MIXQ_CACHE_DIR", str(Path(tmp) / "cache"))
        proc, server = _start_server(Path(tmp), auth=False, local_workers=1)
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
                try:
                    for path in take_screenshots(server, browser):
                        print(path.relative_to(REPO_ROOT))
                finally:
                    browser.close()
        finally:
            _stop(proc)


if __name__ == "__main__":
    main()

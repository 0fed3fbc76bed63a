"""The dashboard tells the whole story while a job runs and after it ends (issue 12), in real Chromium
against the real server and worker: phase and time left, layers and fp32 before the end, the front star in
step with the front table, cancel, form and compare errors, failed jobs' reasons, the added charts and
tables, accessibility, and the 390 px phone width."""

from __future__ import annotations

import csv
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service import store
from service.auth import LOCAL_OWNER
from service.db import Database
from service.models import JobStatus
from service.schemas import JobCreate
from tests.browser.conftest import LiveServer

pytestmark = pytest.mark.browser

JOB_DONE_TIMEOUT_S = 180
PHONE = {"width": 390, "height": 844}
# 5 layers, first/last pinned: 3 baselines + a 3-layer sweep + 1 greedy seed, then the sampler
FINISHED_JOB = {
    "workload": "digits", "workload_options": {"pretrain_steps": 40}, "n_trials": 8, "qat_steps": 5,
    "reevaluate_front": 1, "max_quality_drop": 0.05,
}
# slow enough to be watched while it runs (about half a second per QAT step batch on a busy machine)
LONG_JOB = {**FINISHED_JOB, "n_trials": 40, "qat_steps": 60, "reevaluate_front": 2}


def _wait_for_status(server: LiveServer, job_id: int, statuses: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + JOB_DONE_TIMEOUT_S
    while time.monotonic() < deadline:
        job = server.api("GET", f"/v1/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} not in {statuses} after {JOB_DONE_TIMEOUT_S} s")


@pytest.fixture(scope="module")
def finished_job(live_server: LiveServer) -> Iterator[int]:
    job_id = live_server.api("POST", "/v1/jobs", json=FINISHED_JOB).json()["id"]
    job = _wait_for_status(live_server, job_id, {"succeeded", "failed", "cancelled"})
    assert job["status"] == "succeeded", job["error"]
    yield job_id


def _wait(page: Any, js: str, timeout_ms: int = 60_000) -> None:
    page.wait_for_function(js, timeout=timeout_ms)


def test_running_job_shows_phase_layers_fp32_and_star_then_cancels(
    page: Any, live_server: LiveServer, screenshot: Any
) -> None:
    job_id = live_server.api("POST", "/v1/jobs", json=LONG_JOB).json()["id"]
    page.goto(f"{live_server.base_url}/jobs/{job_id}")
    # the phase, the elapsed time and the time left, live
    _wait(page, "() => /^(seeding|sampling)\\b.*elapsed \\d+.*about \\d+.* left/.test("
                "document.getElementById('job-phase').textContent)", 120_000)
    assert page.get_attribute("#job-phase", "aria-live") == "polite"
    assert "seeding · " in page.inner_text("#job-progress .progress-label") or "sampling · " in page.inner_text(
        "#job-progress .progress-label"
    )
    # a few trials in: the heat map, the fp32 line and the front while the job still runs
    _wait(page, "() => document.querySelectorAll('#front-table tbody tr').length >= 1"
                " && document.getElementById('heatmap').data?.[0]?.x?.length === 5", 120_000)
    assert live_server.api("GET", f"/v1/jobs/{job_id}").json()["status"] == "running"
    pareto = live_server.api("GET", f"/v1/jobs/{job_id}/pareto").json()
    assert pareto["fp32_quality"] is not None and len(pareto["layers"]) == 5
    shapes = page.evaluate("() => document.getElementById('pareto').layout.shapes")
    assert any(s["y0"] == pytest.approx(pareto["fp32_quality"]) for s in shapes), "the fp32 line"
    # the trial table's stars are the front table's points, once both have drawn the same /pareto
    _wait(page, """() => {
        const stars = [...document.querySelectorAll('#trials-table tbody tr.front')].map(r => r.dataset.trial).sort();
        const front = [...document.querySelectorAll('#front-table tbody tr')].map(r => r.dataset.trial).sort();
        return stars.length > 0 && stars.join() === front.join();
    }""")
    screenshot("job-running")

    page.click("#cancel-job")
    _wait(page, "() => document.querySelector('#job-status .badge')?.textContent === 'cancelled'")
    facts = page.inner_text("#job-facts")
    assert "0 running" in facts, facts
    assert page.inner_text("#job-phase") == ""

    # a cancelled job's compare page has its layers; an unknown trial number is an error, not trial #0
    numbers = [t["number"] for t in live_server.api("GET", f"/v1/jobs/{job_id}/pareto").json()["trials"]]
    page.goto(f"{live_server.base_url}/jobs/{job_id}/compare?a={numbers[0]}&b={numbers[-1]}")
    page.wait_for_selector("#layers tbody tr")
    assert page.locator("#layers tbody tr").count() == 5
    page.goto(f"{live_server.base_url}/jobs/{job_id}/compare?a={numbers[0]}&b=9999")
    page.wait_for_selector("#page-message .message.error")
    assert "b: no complete trial #9999" in page.inner_text("#page-message")
    assert page.locator("#layers tbody tr").count() == 0


@pytest.mark.parametrize(
    ("field", "typed", "message"),
    [
        pytest.param("n_trials", "1e", "not a number", id="1e"),
        pytest.param("n_trials", "--3", "not a number", id="double-minus"),
        pytest.param("fidelity_rungs", "1,--3", 'not a whole number: "--3"', id="rungs-double-minus"),
        pytest.param("fidelity_rungs", "1,3e", 'not a whole number: "3e"', id="rungs-3e"),
    ],
)
def test_an_invalid_number_is_a_form_error(
    page: Any, live_server: LiveServer, field: str, typed: str, message: str
) -> None:
    before = live_server.api("GET", "/v1/jobs").json()["total"]
    page.goto(live_server.base_url + "/")
    page.wait_for_selector("#f-profile option", state="attached")
    if not page.is_visible(f"#f-{field}"):  # in the closed "more options"
        page.click("#job-form details > summary")
    page.fill(f"#f-{field}", "")
    page.click(f"#f-{field}")
    page.keyboard.type(typed)  # fill() refuses text in a number input; a person's keys do not
    page.click("#submit-job")
    error = page.locator(f'[data-error-for="{field}"]')
    error.wait_for()
    assert message in error.inner_text()
    assert page.get_attribute(f"#f-{field}", "aria-invalid") == "true"
    described = page.get_attribute(f"#f-{field}", "aria-describedby").split()
    assert f"error-{field}" in described and f"hint-{field}" in described
    assert live_server.api("GET", "/v1/jobs").json()["total"] == before


def test_a_failed_job_shows_its_reason_in_the_list(page: Any, live_server: LiveServer) -> None:
    db = Database(live_server.database_url)
    with db.session() as session:  # one transaction: the worker never sees it queued
        job = store.add_job(session, LOCAL_OWNER, {"workload": "digits"}, 3, 0, None)
        store.transition(session, job.id, JobStatus.FAILED, "ValueError: workload_options: pretrain_steps must be > 0")
        job_id = job.id
    db.dispose()
    assert live_server.api("GET", f"/v1/jobs/{job_id}").json()["status"] == "failed"
    page.goto(live_server.base_url + "/")
    row = page.wait_for_selector(f'#jobs-table tr[data-job-id="{job_id}"]')
    assert "pretrain_steps must be > 0" in row.inner_text()


HOSTILE_ERROR = 'WorkloadError: evaluate: raised <img src=x onerror="document.body.dataset.pwned=1">'


def _job_with_failures_and_a_fidelity_check(server: LiveServer) -> int:
    """A finished two-rung job written straight into the database (one transaction: the worker never
    sees it queued): one complete trial, two failed ones (one retried, one with markup in its error),
    and a fidelity check whose tau is low enough to warn."""
    db = Database(server.database_url)
    spec = JobCreate.model_validate({**FINISHED_JOB, "fidelity_rungs": [1, 3]}).model_dump(mode="json")
    with db.session() as session:
        job_id = store.add_job(session, LOCAL_OWNER, spec, 8, 0, None).id
        store.transition(session, job_id, JobStatus.RUNNING)
        layers = [{"fqn": "fc", "kind": "linear", "index": 0, "pinned": False, "pin_reason": None}]
        store.set_job_info(session, job_id, "accuracy", True, 0.9, layers, {})
        for number, fmt, quality in [(0, "int8", 0.88), (3, "int4", 0.8)]:
            store.record_trial(session, job_id, store.TrialRecord(
                number=number, assignment={"fc": fmt}, quality=quality, quality_std=0.0, n_evaluations=1,
                costs={"bitops": 8.0 if fmt == "int8" else 4.0}, primary_cost=8.0 if fmt == "int8" else 4.0,
                feasible=True, duration_s=1.0, source="baseline", qconfig=None), None, True)
        store.record_failed_trial(session, job_id, 1, {"fc": "int4"}, "no heartbeat for over 20 s", True)
        store.record_failed_trial(session, job_id, 2, {"fc": "fp16"}, HOSTILE_ERROR, False)
        store.mark_front(session, job_id, [0, 3])
        store.set_job_fidelity(session, job_id, {
            "short_qat_steps": 5, "kendall_tau": -1.0, "warning": "the first rung ranks the front differently",
            "points": [{"number": 0, "short_quality": 0.85, "long_quality": 0.88, "long_qat_steps": 15},
                       {"number": 3, "short_quality": 0.86, "long_quality": 0.8, "long_qat_steps": 15}],
        })
        store.transition(session, job_id, JobStatus.SUCCEEDED)
    db.dispose()
    return job_id


def test_failed_and_retried_trials_and_the_fidelity_check_are_shown(
    page: Any, live_server: LiveServer, screenshot: Any
) -> None:
    job_id = _job_with_failures_and_a_fidelity_check(live_server)
    job = live_server.api("GET", f"/v1/jobs/{job_id}").json()
    assert (job["counts"]["failed"], job["counts"]["retried"]) == (2, 1)
    page.goto(f"{live_server.base_url}/jobs/{job_id}")
    page.wait_for_selector("body[data-job-done=true]")
    assert "2 failed (1 retried)" in page.inner_text("#job-facts")
    # the failed trials and why, the error as text (its markup is not run)
    page.wait_for_selector("#failed-table tbody tr")
    rows = page.eval_on_selector_all("#failed-table tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))")
    assert rows == [["1", "yes", "int4x1", "no heartbeat for over 20 s"], ["2", "no", "fp16x1", HOSTILE_ERROR]]
    assert page.locator("#failed-table img").count() == 0 and page.get_attribute("body", "data-pwned") is None
    # the fidelity check: the table, tau, and the warning in the warning style
    headers = page.eval_on_selector_all("#fidelity-table th", "cells => cells.map(c => c.textContent)")
    assert headers == ["trial", "short quality @ 5 steps", "long quality @ 15 steps"]
    cells = page.eval_on_selector_all("#fidelity-table tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))")
    assert cells == [["#0", "0.8500", "0.8800"], ["#3", "0.8600", "0.8000"]]
    assert "-1.000" in page.inner_text("#fidelity-tau")
    warning = page.locator("#fidelity-warning")
    assert warning.is_visible() and "ranks the front differently" in warning.inner_text()
    assert "warn" in (warning.get_attribute("class") or "")
    screenshot("job-failed-and-fidelity")
    # the jobs list says so too
    page.goto(live_server.base_url + "/")
    row = page.wait_for_selector(f'#jobs-table tr[data-job-id="{job_id}"]')
    assert "2 failed (1 retried)" in row.inner_text()


def test_finished_job_page_has_spec_sortable_trials_csv_and_charts(
    page: Any, live_server: LiveServer, finished_job: int, tmp_path: Path, screenshot: Any
) -> None:
    job_id = finished_job
    page.goto(f"{live_server.base_url}/jobs/{job_id}")
    page.wait_for_selector("body[data-job-done=true]")
    page.wait_for_selector("#trials-table tbody tr")
    # a one-rung search: no fidelity check, and how to get one; no failed trials
    assert "fidelity_rungs, e.g. [1, 3]" in page.inner_text("#fidelity-none")
    assert page.locator("#failed-panel").is_hidden()
    assert "0 failed (0 retried)" in page.inner_text("#job-facts")
    # the whole spec
    spec_text = page.text_content("#job-spec")
    for key in ("max_quality_drop", "reevaluate_front", "seed_with_sensitivity", "sampler"):
        assert f'"{key}"' in spec_text
    trials = live_server.api("GET", f"/v1/jobs/{job_id}/trials?limit=200").json()["items"]
    pareto = live_server.api("GET", f"/v1/jobs/{job_id}/pareto").json()

    # sortable: by quality, then reversed
    page.click('#trials-table th[data-sort="quality"]')
    shown = page.eval_on_selector_all("#trials-table tbody tr", "rows => rows.map(r => Number(r.dataset.trial))")
    by_quality = sorted(trials, key=lambda t: (t["quality"], t["number"]))
    assert shown == [t["number"] for t in by_quality]
    assert page.get_attribute('#trials-table th[data-sort="quality"]', "aria-sort") == "ascending"
    page.click('#trials-table th[data-sort="quality"]')
    assert page.get_attribute('#trials-table th[data-sort="quality"]', "aria-sort") == "descending"

    # the layers below int8, as a column and in the CSV
    with page.expect_download() as info:
        page.click("#trials-csv")
    saved = tmp_path / "trials.csv"
    info.value.save_as(saved)
    rows = list(csv.DictReader(saved.open()))
    assert len(rows) == len(trials)
    for trial in trials:
        row = next(r for r in rows if int(r["#"]) == trial["number"])
        below = sorted(f for f, fmt in trial["assignment"].items() if fmt in ("int4", "w4a8"))
        assert sorted(row["layers below int8"].split()) == below
        assert float(row["quality"]) == pytest.approx(trial["quality"])

    # the sensitivity chart: one bar per swept layer, quality lost vs the all-int8 baseline
    sweep = [t for t in trials if t["source"] == "sensitivity"]
    assert len(sweep) == 3
    (bars,) = page.evaluate("() => document.getElementById('sensitivity').data")
    base = next(t for t in trials if set(t["assignment"].values()) == {"int8"})
    expected = {next(f for f, fmt in t["assignment"].items() if fmt != "int8"): base["quality"] - t["quality"]
                for t in sweep}
    assert dict(zip(bars["x"], bars["y"], strict=True)) == pytest.approx(expected)
    assert page.locator("#sensitivity-table tbody tr").count() == 3

    # the history: every trial's quality and the front size
    history = {t["name"]: t for t in page.evaluate("() => document.getElementById('history').data")}
    assert sorted(history["quality"]["x"]) == sorted(t["number"] for t in pareto["trials"])
    assert max(next(v for k, v in history.items() if k.startswith("front size"))["y"]) >= 1

    # the quality-drop limit on the Pareto chart
    shapes = page.evaluate("() => document.getElementById('pareto').layout.shapes")
    assert any(s.get("name") == "quality-drop limit" and s["y0"] == pytest.approx(pareto["fp32_quality"] - 0.05)
               for s in shapes)
    # the front table's numbers are the qconfig file's
    # (a re-evaluated one where there is one: which points are depends on the trials' numbers)
    point = max(pareto["points"], key=lambda p: p["n_evaluations"])
    cells = page.eval_on_selector(f'#front-table tr[data-trial="{point["number"]}"]',
                                  "r => [...r.cells].map(c => c.textContent)")
    assert cells[3] == str(point["n_evaluations"])
    assert max(t["n_evaluations"] for t in pareto["trials"]) == 2  # reevaluate_front=1: re-evaluations are shown
    assert float(cells[4]) == pytest.approx(pareto["fp32_quality"] - point["quality"], abs=1e-4)
    screenshot("job-story")


@pytest.mark.parametrize("path", [pytest.param("/", id="jobs"), pytest.param("/jobs/{id}", id="job"),
                                  pytest.param("/jobs/{id}/compare", id="compare")])
def test_accessibility_one_h1_described_charts_and_live_status(
    page: Any, live_server: LiveServer, finished_job: int, path: str
) -> None:
    page.goto(live_server.base_url + path.format(id=finished_job))
    page.wait_for_load_state("networkidle")
    assert page.locator("h1").count() == 1
    for chart in page.query_selector_all(".chart"):
        assert chart.get_attribute("role") == "img" and chart.get_attribute("aria-label")
        target = chart.get_attribute("aria-describedby")
        assert target and page.locator(f"#{target}").count() == 1, "each chart names its table"
    if path == "/":
        page.wait_for_selector("#f-profile option", state="attached")
        for name in ("workload", "profile", "max_quality_drop", "n_trials"):
            ids = page.get_attribute(f"#f-{name}", "aria-describedby").split()
            assert f"hint-{name}" in ids and f"error-{name}" in ids
        assert "w4a8" in page.inner_text("#hint-formats") and "units" in page.inner_text("#hint-max_quality_drop")
        assert page.get_attribute('fieldset[data-field="cost_objectives"]', "aria-describedby")
    if path == "/jobs/{id}":
        assert page.get_attribute("#job-status", "aria-live") == "polite"


@pytest.mark.parametrize("path", [pytest.param("/", id="jobs"), pytest.param("/jobs/{id}", id="job"),
                                  pytest.param("/jobs/{id}/compare", id="compare")])
def test_pages_fit_a_390_px_phone(chromium: Any, live_server: LiveServer, finished_job: int, path: str) -> None:
    context = chromium.new_context(viewport=PHONE)
    try:
        page = context.new_page()
        page.goto(live_server.base_url + path.format(id=finished_job))
        page.wait_for_load_state("networkidle")
        if path != "/":
            page.wait_for_selector("table tbody tr")
        width = page.evaluate("() => document.scrollingElement.scrollWidth")
        assert width <= PHONE["width"], f"{path}: the page is {width} px wide"
        name = {"/": "jobs", "/jobs/{id}": "job", "/jobs/{id}/compare": "compare"}[path]
        page.screenshot(path=str(Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
                                 / f"phone-{name}.png"), full_page=True)
    finally:
        context.close()

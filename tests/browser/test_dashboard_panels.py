"""The dashboard's panels say what they show and what they wait for (issue 20), in real headless Chromium
against the real server: the Fisher proxy's scores in the sensitivity panel where no sweep ran, the history
plot's best-so-far and hypervolume lines and whole-number front-size ticks, the jobs list's front size and
cheapest point within the quality-drop limit, the form's and the job page's "no format = the profile's",
the upload field's accepted file type, the empty panels of a job that has not finished a trial, and the
link to the job's study in optuna-dashboard.  The jobs are written straight into the database (one
transaction each: the worker never sees them queued), so no training runs here."""

from __future__ import annotations

from typing import Any

import pytest

from search import load_profile
from service import store
from service.auth import LOCAL_OWNER
from service.db import Database
from service.models import JobStatus
from service.schemas import JobCreate
from tests.browser.conftest import LiveServer

pytestmark = pytest.mark.browser

FP32 = 0.92
MAX_DROP = 0.05
PROXY = {"b": 0.0123, "c": 0.25, "d": 0.031}  # Fisher scores of the free layers
# number -> (format of b, c, d; source; quality; bitops): 0 and 5 lose more than MAX_DROP
TRIALS = {
    0: ("int4", "int4", "int4", "baseline", 0.70, 4.0),
    1: ("int4", "int8", "int4", "proxy", 0.88, 5.0),
    2: ("int4", "int8", "int8", "proxy", 0.89, 6.0),
    3: ("int8", "int8", "int8", "baseline", 0.90, 8.0),
    4: ("int8", "int8", "int4", "sampler", 0.885, 5.0),
    5: ("int4", "int4", "int8", "sampler", 0.86, 4.5),
}
FRONT = [4, 2, 3]  # 1 is dominated by 4 (same cost, lower quality)
GENERIC_FORMATS = [f for f in load_profile("generic").formats if f != "fp32"]


def _proxy_job(server: LiveServer) -> int:
    """A finished job whose search ordered its layers by the Fisher proxy (no one-layer sweep)."""
    db = Database(server.database_url)
    spec = JobCreate.model_validate({"workload": "digits", "n_trials": 6, "max_quality_drop": MAX_DROP}
                                    ).model_dump(mode="json")
    assert spec["formats"] == [] or spec["formats"] is None
    layers = [{"fqn": "a", "kind": "conv2d", "index": 0, "pinned": True, "pin_reason": "first executed layer",
               "proxy_score": None}]
    layers += [{"fqn": fqn, "kind": "linear", "index": i + 1, "pinned": False, "pin_reason": None, "proxy_score": v}
               for i, (fqn, v) in enumerate(PROXY.items())]
    with db.session() as session:
        job_id = store.add_job(session, LOCAL_OWNER, spec, 6, 0, None).id
        store.transition(session, job_id, JobStatus.RUNNING)
        store.set_job_info(session, job_id, "accuracy", True, FP32, layers, {"a": "first executed layer"})
        for number, (b, c, d, source, quality, cost) in TRIALS.items():
            store.record_trial(session, job_id, store.TrialRecord(
                number=number, assignment={"a": "int8", "b": b, "c": c, "d": d}, quality=quality, quality_std=None,
                n_evaluations=1, costs={"bitops": cost}, primary_cost=cost, feasible=FP32 - quality <= MAX_DROP,
                duration_s=1.0, source=source, qconfig=None), None, True)
        store.mark_front(session, job_id, FRONT)
        store.transition(session, job_id, JobStatus.SUCCEEDED)
    db.dispose()
    return job_id


def _running_job_without_trials(server: LiveServer) -> int:
    db = Database(server.database_url)
    spec = JobCreate.model_validate({"workload": "digits", "n_trials": 6}).model_dump(mode="json")
    with db.session() as session:
        job_id = store.add_job(session, LOCAL_OWNER, spec, 6, 0, None).id
        store.transition(session, job_id, JobStatus.RUNNING)
    db.dispose()
    return job_id


def _expected_history() -> tuple[list[float | None], list[int], list[float]]:
    """Best so far, front size and hypervolume share, computed here from TRIALS independently."""
    feasible = {n: (q, c) for n, (*_, q, c) in TRIALS.items() if FP32 - q <= MAX_DROP}
    q_ref, c_ref = min(q for q, _ in feasible.values()), max(c for _, c in feasible.values())
    best: list[float | None] = []
    sizes: list[int] = []
    volumes: list[float] = []
    for number in sorted(TRIALS):
        seen = [v for n, v in feasible.items() if n <= number]
        best.append(max((q for q, _ in seen), default=None))
        front = [p for p in seen if not any(o[0] >= p[0] and o[1] <= p[1] and o != p for o in seen)]
        sizes.append(len(front))
        # the area dominated by the front inside the reference box, on a fine grid
        steps = 400
        area = 0.0
        for i in range(steps):
            cost = c_ref - (c_ref - 4.0) * (i + 0.5) / steps
            top = max((q for q, c in front if c <= cost), default=q_ref)
            area += max(0.0, top - q_ref) * (c_ref - 4.0) / steps
        volumes.append(area)
    return best, sizes, [v / volumes[-1] for v in volumes]


def test_a_proxy_ordered_job_shows_its_fisher_scores_labelled_as_such(
    page: Any, live_server: LiveServer, screenshot: Any
) -> None:
    job_id = _proxy_job(live_server)
    assert [t["source"] for t in live_server.api("GET", f"/v1/jobs/{job_id}/pareto").json()["trials"]].count(
        "sensitivity") == 0
    page.goto(f"{live_server.base_url}/jobs/{job_id}")
    page.wait_for_selector("body[data-job-done=true]")
    page.wait_for_selector("#sensitivity-table tbody tr[data-fqn]")
    assert page.get_attribute("#sensitivity", "data-source") == "proxy"
    (bars,) = page.evaluate("() => document.getElementById('sensitivity').data")
    assert dict(zip(bars["x"], bars["y"], strict=True)) == pytest.approx(PROXY)
    assert bars["name"] == "Fisher proxy score"
    title = page.evaluate("() => document.getElementById('sensitivity').layout.yaxis.title.text")
    assert "Fisher proxy score" in title
    assert "From the Fisher proxy, not a sweep" in page.inner_text("#sensitivity-about")
    headers = page.eval_on_selector_all("#sensitivity-table th", "cells => cells.map(c => c.textContent)")
    assert headers == ["layer", "probe", "Fisher proxy score (int4, loss units)"]
    rows = page.eval_on_selector_all("#sensitivity-table tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))")
    assert rows == [[fqn, "int4", f"{v:#.4g}"] for fqn, v in PROXY.items()]

    # the history: quality, best so far, a whole-number front-size axis, and the hypervolume's share
    traces = {t["name"]: t for t in page.evaluate("() => document.getElementById('history').data")}
    assert set(traces) == {"quality", "best so far", "front size (bitops)", "hypervolume (share of final)"}
    best, sizes, volumes = _expected_history()
    assert traces["best so far"]["y"] == best
    assert traces["front size (bitops)"]["y"] == sizes
    assert traces["hypervolume (share of final)"]["y"] == pytest.approx(volumes, abs=0.01)
    assert volumes[-1] == 1.0 and volumes[2] == pytest.approx(0.8, abs=0.01)
    axis = page.evaluate("() => document.getElementById('history').layout.yaxis2")
    assert axis["tickformat"] == "d" and axis["dtick"] == 1
    ticks = page.eval_on_selector_all("#history .y2tick text", "ts => ts.map(t => t.textContent)")
    assert ticks and all(t.isdigit() for t in ticks), ticks

    # a blank formats list is the profile's, and says which
    facts = page.inner_text("#job-facts")
    assert f"profile default ({', '.join(GENERIC_FORMATS)})" in facts, facts
    # the study, and how to open it in optuna-dashboard
    assert page.inner_text("#study-name") == f"mixq-job-{job_id}"
    assert "optuna-dashboard" in page.get_attribute("#optuna-dashboard-link", "href")
    assert "optuna-dashboard <MIXQ_DATABASE_URL>" in facts
    screenshot("job-proxy-sensitivity-and-history")

    # the jobs list: the front's size and its cheapest point within the drop limit (#4: #1 costs the same, less)
    page.goto(live_server.base_url + "/")
    row = page.wait_for_selector(f'#jobs-table tr[data-job-id="{job_id}"] .front-summary')
    text = row.inner_text()
    assert "3 points on the front" in text and "so far" not in text, text
    assert f"cheapest within drop {MAX_DROP}: #4 · 0.8850 at 5.00 bitops" in text, text
    job = live_server.api("GET", f"/v1/jobs/{job_id}").json()
    assert job["front"]["cheapest"] == {"trial_number": 4, "quality": 0.885, "cost": 5.0, "cost_objective": "bitops"}
    assert job["front"]["size"] == 3 and job["front"]["final"] is True


def test_a_job_that_has_not_finished_a_trial_says_what_each_panel_waits_for(
    page: Any, live_server: LiveServer, screenshot: Any
) -> None:
    job_id = _running_job_without_trials(live_server)
    page.goto(f"{live_server.base_url}/jobs/{job_id}")
    page.wait_for_selector("#heatmap-empty:not([hidden])")
    for note, what in [("#heatmap-empty", "precision per layer"), ("#history-empty", "best so far"),
                       ("#front-empty", "downloads"), ("#pareto-note", "No front yet"),
                       ("#trials-empty", "No trials yet")]:
        text = page.inner_text(note)
        assert what in text and "waiting for the first trial to finish" in text, (note, text)
    assert "Waiting for the sensitivity sweep" in page.inner_text("#sensitivity-waiting")
    assert "Fisher proxy" in page.inner_text("#sensitivity-waiting")
    screenshot("job-waiting-for-the-first-trial")
    # the jobs list: no front yet
    page.goto(live_server.base_url + "/")
    row = page.wait_for_selector(f'#jobs-table tr[data-job-id="{job_id}"] .front-summary')
    assert "no front yet" in row.inner_text()


def test_the_form_says_what_no_format_and_the_upload_field_mean(
    page: Any, live_server: LiveServer, screenshot: Any
) -> None:
    meta = live_server.api("GET", "/v1/meta").json()
    assert meta["profile_formats"]["generic"] == GENERIC_FORMATS
    page.goto(live_server.base_url + "/")
    page.wait_for_selector("#f-profile option", state="attached")
    assert page.eval_on_selector_all("#f-formats input:checked", "xs => xs.length") == 0
    hint = page.inner_text("#formats-none")
    assert hint == f"None checked: the profile's formats ({', '.join(GENERIC_FORMATS)}).", hint
    other = next(p for p in meta["profiles"] if p != "generic")
    page.select_option("#f-profile", other)
    assert f"({', '.join(meta['profile_formats'][other])})" in page.inner_text("#formats-none")
    page.click("#job-form details > summary")
    label = page.inner_text('label[for="f-model"]')
    assert ".pt2" not in label and ".onnx" in label, label
    accepted = page.inner_text("#model-accepted")
    assert ".onnx" in accepted and ".pt2" in accepted and "refused" in accepted, accepted
    screenshot("form-formats-and-upload")

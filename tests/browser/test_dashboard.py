"""The dashboard in real headless Chromium against the real server and worker.

One end-to-end run of a tiny job (digits, 4 trials, 5 QAT steps): submitted through the form, followed
to the end over SSE, its Pareto chart and heat map read back from Plotly and checked against the API,
a front point's qconfig downloaded and validated.  Plus the form's validation messages, and the pages
with auth on.  Screenshots: ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from search import load_qconfig
from search.quant.qconfig import SCHEMA_PATH
from tests.browser.conftest import LiveServer

pytestmark = pytest.mark.browser

JOB_DONE_TIMEOUT_MS = 120_000
TINY_JOB = {
    "workload": "digits", "workload_options": '{"pretrain_steps": 40}', "n_trials": "4", "qat_steps": "5",
    "fidelity_rungs": "1,2",  # the best maps trained again at 10 steps: the job reports a fidelity check
}


def _plot(page: Any, element_id: str) -> list[dict[str, Any]]:
    """The traces Plotly drew into ``element_id`` (its ``.data``)."""
    return page.evaluate(f"() => document.getElementById({element_id!r}).data")


def _fill_form(page: Any, values: dict[str, str]) -> None:
    page.wait_for_selector("#f-profile option", state="attached")  # /v1/meta has filled the selects
    for name, value in values.items():
        if not page.is_visible(f"#f-{name}"):  # in the closed "more options"
            page.click("#job-form details > summary")
        page.fill(f"#f-{name}", value)


def test_submit_tiny_job_and_inspect_its_front(
    page: Any, live_server: LiveServer, screenshot: Any, tmp_path: Path
) -> None:
    page.goto(live_server.base_url + "/")
    _fill_form(page, TINY_JOB)
    page.click("#submit-job")
    link = page.wait_for_selector("#submitted-job")
    job_id = link.get_attribute("href").rsplit("/", 1)[-1]
    page.wait_for_selector(f'#jobs-table tr[data-job-id="{job_id}"]')
    screenshot("jobs-list")
    spec = live_server.api("GET", f"/v1/jobs/{job_id}").json()["spec"]
    assert (spec["workload"], spec["n_trials"], spec["qat_steps"]) == ("digits", 4, 5)
    assert spec["workload_options"] == {"pretrain_steps": 40}
    # promotion_eta left blank: null, 3 when the search resolves it (search.spec.SearchSpec.resolve_fidelity)
    assert (spec["fidelity_rungs"], spec["promotion_eta"], spec["budget_qat_steps"]) == ([1, 2], None, None)

    # live progress to the end
    link.click()
    page.wait_for_url(f"**/jobs/{job_id}")
    page.wait_for_selector("body[data-job-done=true]", timeout=JOB_DONE_TIMEOUT_MS)
    assert page.get_attribute("body", "data-done-via") == "events", "followed live over SSE to the `done` event"
    job = live_server.api("GET", f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded", job.get("error")
    assert page.inner_text("#job-status") == "succeeded"
    # two rungs: the job page shows the fidelity check of 5-step runs against 10-step ones
    assert job["fidelity"] is not None and job["fidelity"]["short_qat_steps"] == 5
    page.wait_for_selector("#fidelity-tau")
    assert (
        page.inner_text("#job-progress .progress-label") == f"{job['progress']['finished']}/{job['progress']['total']}"
    )

    # the Pareto scatter shows every complete trial once, the front as its own trace
    pareto = live_server.api("GET", f"/v1/jobs/{job_id}/pareto").json()
    assert pareto["points"], "a finished job has a non-empty front"
    traces = {t["name"]: t for t in _plot(page, "pareto")}
    assert set(traces) == {"feasible", "infeasible", "Pareto front"}
    assert sum(len(t["x"]) for t in traces.values()) == len(pareto["trials"]) == job["counts"]["complete"]
    front = traces["Pareto front"]
    assert len(front["x"]) == len(pareto["points"])
    cost = pareto["cost_objectives"][0]
    assert sorted(zip(front["x"], front["y"], strict=True)) == sorted((p["costs"][cost], p["quality"]) for p in pareto["points"])
    assert "features.0" in front["text"][0]  # hover carries the per-layer map

    # heat map: one row per front point, layers in execution order, pinned ones marked
    (heat,) = _plot(page, "heatmap")
    layers = sorted(pareto["layers"], key=lambda layer: layer["index"])
    assert heat["x"] == [layer["fqn"] for layer in layers]
    assert len(heat["z"]) == len(pareto["points"])
    ticks = page.evaluate("() => document.getElementById('heatmap').layout.xaxis.ticktext")
    assert [t.endswith("[pinned]") for t in ticks] == [layer["pinned"] for layer in layers]
    assert layers[0]["pinned"] and layers[-1]["pinned"], "first/last are pinned to int8 by default"

    # the trial table lists every trial
    trials = live_server.api("GET", f"/v1/jobs/{job_id}/trials?limit=200").json()
    assert page.locator("#trials-table tbody tr").count() == trials["total"] > 0
    screenshot("job-finished")

    # download a front point's qconfig and validate it
    number = pareto["points"][0]["number"]
    with page.expect_download() as info:
        page.click(f'#front-table [data-download="{number}"][data-file="qconfig.json"]')
    download = info.value
    assert re.fullmatch(rf"trial{number:04d}-.+\.json", download.suggested_filename)  # the CLI's name scheme
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    qconfig = load_qconfig(saved)
    assert {fqn: layer.format for fqn, layer in qconfig.layers.items()} == pareto["points"][0]["assignment"]
    assert qconfig.provenance.trial_number == number
    assert qconfig.on_front is True
    # and its QDQ ONNX model, which opens in onnxruntime with the default session options
    with page.expect_download() as info:
        page.click(f'#front-table [data-download="{number}"][data-file="model.onnx"]')
    onnx_file = tmp_path / info.value.suggested_filename
    assert onnx_file.name == saved.with_suffix(".onnx").name
    info.value.save_as(onnx_file)
    import onnxruntime

    onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert page.locator(f'#front-table [data-download="{number}"][data-file="weights"]').count() == 1
    try:
        import jsonschema_rs
    except ImportError:
        pass
    else:
        jsonschema_rs.validator_for(json.loads(SCHEMA_PATH.read_text())).validate(json.loads(saved.read_text()))

    # side by side: a front point and another front point (or, with a one-point front, another trial)
    first = pareto["points"][0]
    other = next(t for t in [*pareto["points"][1:], *pareto["trials"]] if t["number"] != first["number"])
    page.select_option("#compare-a", str(first["number"]))
    page.select_option("#compare-b", str(other["number"]))
    page.click("#compare-form button")
    page.wait_for_selector("#layers tbody tr")
    differing = [lay["fqn"] for lay in layers if first["assignment"][lay["fqn"]] != other["assignment"][lay["fqn"]]]
    assert differing, "two different trials differ in some layer"
    assert page.inner_text("#diff-count") == f"({len(differing)} of {len(layers)} differ)"
    assert (
        page.eval_on_selector_all('#layers tr[data-differs="true"]', "rows => rows.map(r => r.dataset.fqn)")
        == differing
    )
    screenshot("compare")


@pytest.mark.parametrize(
    ("field", "form_value", "api_body"),
    [
        pytest.param("n_trials", "0", {"n_trials": 0}, id="n_trials-zero"),
        pytest.param("qat_steps", "-1", {"qat_steps": -1}, id="qat_steps-negative"),
        pytest.param("fidelity_rungs", "3,1", {"fidelity_rungs": [3, 1]}, id="fidelity_rungs-decreasing"),
        pytest.param("promotion_eta", "1", {"promotion_eta": 1}, id="promotion_eta-below-2"),
        pytest.param(
            "pins", "features.* = int3", {"pins": [{"match": "features.*", "format": "int3"}]}, id="pin-format"
        ),
    ],
)
def test_bad_form_value_shows_the_api_message_next_to_the_field(
    page: Any, live_server: LiveServer, screenshot: Any, field: str, form_value: str, api_body: dict[str, Any]
) -> None:
    before = live_server.api("GET", "/v1/jobs").json()["total"]
    expected = live_server.api("POST", "/v1/jobs", json={"workload": "digits", **api_body})
    assert expected.status_code == 422
    (message,) = [e["msg"] for e in expected.json()["detail"]]

    page.goto(live_server.base_url + "/")
    _fill_form(page, {"workload": "digits", field: form_value})
    page.click("#submit-job")
    error = page.locator(f'[data-field="{field}"] [data-error-for="{field}"]')
    error.wait_for()
    assert message in error.inner_text()
    assert page.get_attribute(f"#f-{field}", "aria-invalid") == "true"
    assert page.locator(".field.invalid").count() == 1, "only the offending field is marked"
    assert page.inner_text('[data-error-for="_form"]') == ""
    assert live_server.api("GET", "/v1/jobs").json()["total"] == before
    screenshot(f"form-error-{field}")


def _submit_with_token(page: Any, server: LiveServer) -> str:
    page.goto(server.base_url + "/")
    page.wait_for_selector("#auth-banner:not([hidden])")  # a 401 without a token says what to do
    page.fill("#token", server.token or "")
    page.click("#token-form button")
    _fill_form(page, {"workload": "digits", "n_trials": "2", "qat_steps": "1"})
    page.click("#submit-job")
    link = page.wait_for_selector("#submitted-job")
    job_id = link.get_attribute("href").rsplit("/", 1)[-1]
    assert server.api("GET", f"/v1/jobs/{job_id}").json()["spec"]["n_trials"] == 2
    link.click()
    page.wait_for_url(f"**/jobs/{job_id}")
    page.wait_for_function("() => document.querySelector('#job-status .badge')?.textContent === 'queued'")
    return job_id


def test_pages_work_with_a_bearer_token(page: Any, auth_server: LiveServer, screenshot: Any) -> None:
    _submit_with_token(page, auth_server)
    assert page.is_hidden("#auth-banner")
    assert page.inner_text("#page-message") == ""
    screenshot("job-queued-with-auth")


def test_event_stream_accepts_the_token_as_a_query_parameter(page: Any, auth_server: LiveServer) -> None:
    _submit_with_token(page, auth_server)
    page.wait_for_timeout(1500)  # a refused stream has closed by now
    assert page.inner_text("#live") == "● live"

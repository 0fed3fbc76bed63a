"""One JSON form per result type (search.results): produced from the declared fields, NaN/inf as null."""

from __future__ import annotations

import dataclasses
import json
import math

from search import LayerInfo, LayerKind, SearchLayer, SearchResult, TrialOutcome, json_safe
from search.results import FidelityCheck, FidelityPoint, SearchProgress


def outcome(number: int, quality: float) -> TrialOutcome:
    return TrialOutcome(number=number, assignment={"a": "int8"}, quality=quality, quality_std=0.0, n_evaluations=1,
                        costs={"bitops": math.inf}, feasible=True, duration_s=1.0, source="sampler",
                        qconfig={"schema_version": 3})


def test_json_safe_writes_non_finite_numbers_as_null_at_any_depth() -> None:
    data = {"a": math.nan, "b": [1.0, (math.inf, -math.inf)], "c": {"d": 2.5, 3: "x"}}
    assert json_safe(data) == {"a": None, "b": [1.0, [None, None]], "c": {"d": 2.5, "3": "x"}}
    json.dumps(json_safe(data), allow_nan=False)  # strict JSON


def test_an_outcome_s_json_has_every_declared_field_once() -> None:
    data = outcome(3, math.nan).to_json()
    assert set(data) == {f.name for f in dataclasses.fields(TrialOutcome)}
    assert data["quality"] is None and data["costs"] == {"bitops": None} and data["qconfig"] == {"schema_version": 3}
    assert "qconfig" not in outcome(3, 1.0).to_json(qconfig=False)


def test_a_map_measured_once_has_no_spread_anywhere() -> None:
    """Not ``± 0.0000``: the JSON says null, tables say how many runs."""
    once, thrice = outcome(1, 0.5), dataclasses.replace(outcome(2, 0.5), quality_std=0.01, n_evaluations=3)
    assert once.to_json()["quality_std"] is None and thrice.to_json()["quality_std"] == 0.01
    assert once.spread_text() == "- (1 run)" and thrice.spread_text() == "0.0100 (3 runs)"


def test_pinned_means_one_thing_in_a_layer_s_json() -> None:
    info = LayerInfo("conv", LayerKind.CONV2D, 0, (1, 1, 4, 4), (1, 2, 4, 4), 10, 5)
    pinned = SearchLayer(info, (), "int8", {"int8": {"bitops": 640.0}}, "first executed layer").to_json()
    free = SearchLayer(info, ("int4", "int8"), None, {"int8": {"bitops": 640.0}}).to_json()
    assert (pinned["pinned"], pinned["pinned_format"], pinned["pin_reason"]) == (True, "int8", "first executed layer")
    assert (free["pinned"], free["pinned_format"], free["pin_reason"]) == (False, None, None)


def test_the_result_and_its_fidelity_check_serialize_without_nan() -> None:
    check = FidelityCheck(30, [FidelityPoint(1, 0.5, 0.6, 90), FidelityPoint(2, math.nan, 0.7, 90)], math.nan)
    result = SearchResult(workload="digits", metric_name="accuracy", higher_is_better=True, fp32_quality=math.nan,
                          layers=[], pin_reasons={"conv": "first"}, trials=[outcome(0, 0.9)], front=[outcome(0, 0.9)],
                          fidelity=check)
    data = result.to_json()
    text = json.dumps(data, allow_nan=False)
    assert data["fp32_quality"] is None and data["pin_reasons"] == {"conv": "first"}
    assert [p["number"] for p in data["fidelity"]["points"]] == [1] and data["fidelity"]["kendall_tau"] is None
    assert "schema_version" not in text  # qconfig bodies are files of their own
    progress = SearchProgress(1, 2, None, eta_s=math.inf).to_json()
    assert progress["eta_s"] is None and progress["phase"] == "sampling"


def test_the_front_table_says_runs_and_qat_steps_per_point() -> None:
    from search.report import front_markdown

    info = LayerInfo("a", LayerKind.LINEAR, 0, (1, 2), (1, 2), 4, 4)
    short = dataclasses.replace(outcome(1, 0.5), qat_steps=30)
    long = dataclasses.replace(outcome(2, 0.6), qat_steps=90, quality_std=0.02, n_evaluations=3, costs={"bitops": 9.0})
    result = SearchResult(workload="digits", metric_name="accuracy", higher_is_better=True, fp32_quality=0.7,
                          layers=[SearchLayer(info, ("int8",), None, {})], pin_reasons={}, front=[short, long])
    rows = [line for line in front_markdown(result).splitlines() if line.startswith("| ")]
    assert "± std (runs)" in rows[0] and "QAT steps" in rows[0]
    assert "| - (1 run) | 30 |" in rows[1] and "| 0.0200 (3 runs) | 90 |" in rows[2]

"""The Optuna search: seeding, cache, constraint, front, shared studies, crash recovery."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import optuna
import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from search import (
    SearchError,
    SearchPhase,
    SearchProgress,
    SearchResult,
    SearchSpec,
    TrialFailure,
    TrialOutcome,
    load_workload,
    pareto_front,
    run_search,
)
from search.study.seeds import baseline_assignments, greedy_assignments, sensitivity_assignments
from search.study.space import SearchSpace
from tests.observe import Hooks

TINY = {"pretrain_steps": 30}


def tiny_spec(**overrides: object) -> SearchSpec:
    base: dict[str, object] = dict(
        workload="digits", workload_options=TINY, n_trials=4, qat_steps=3, reevaluate_front=0,
        seed_with_sensitivity=False,
    )
    base.update(overrides)
    return SearchSpec(**base)  # type: ignore[arg-type]


def outcome(number: int, quality: float, cost: float, feasible: bool = True, fmt: str = "int8") -> TrialOutcome:
    return TrialOutcome(
        number=number, assignment={"a": fmt, "b": str(number)}, quality=quality, quality_std=0.0, n_evaluations=1,
        costs={"bitops": cost}, feasible=feasible, duration_s=0.0, source="sampler",
    )


# -- pure parts ----------------------------------------------------------------------------------


def test_pareto_front_keeps_only_non_dominated_points() -> None:
    points = [outcome(0, 0.9, 10), outcome(1, 0.8, 5), outcome(2, 0.85, 12), outcome(3, 0.95, 20), outcome(4, 0.8, 6)]
    front = pareto_front(points, higher_is_better=True)
    assert [p.number for p in front] == [1, 0, 3]


def test_pareto_front_prefers_feasible_points() -> None:
    points = [outcome(0, 0.99, 1, feasible=False), outcome(1, 0.9, 10), outcome(2, 0.8, 20)]
    assert [p.number for p in pareto_front(points, higher_is_better=True)] == [1]


def test_pareto_front_lower_is_better_metric() -> None:
    points = [outcome(0, 0.5, 10), outcome(1, 0.2, 10), outcome(2, 0.9, 1)]
    assert [p.number for p in pareto_front(points, higher_is_better=False)] == [2, 1]


SPACE = SearchSpace(
    choices={"b": ("int4", "int8", "fp16"), "c": ("int4", "int8", "fp16"), "d": ("int8", "fp16")},
    pinned={"a": "int8", "e": "int8"}, pin_reasons={},
)


def test_baselines_only_where_every_free_layer_allows_the_format() -> None:
    # d forbids int4 (e.g. a depthwise conv on the NPU profile): no all-int4 baseline
    assert baseline_assignments(SPACE) == [
        {"b": "int8", "c": "int8", "d": "int8"}, {"b": "fp16", "c": "fp16", "d": "fp16"},
    ]


def test_sensitivity_sweep_flips_one_layer_at_a_time() -> None:
    assert sensitivity_assignments(SPACE) == [
        {"b": "int4", "c": "int8", "d": "int8"},
        {"b": "int8", "c": "int4", "d": "int8"},
    ]


def test_greedy_flips_least_sensitive_per_cost_first() -> None:
    space = SearchSpace(choices={k: ("int4", "int8") for k in "wxyz"}, pinned={}, pin_reasons={})
    sensitivity = {"w": 0.5, "x": 0.01, "y": 0.2, "z": 0.02}
    saving = {"w": 1.0, "x": 1.0, "y": 10.0, "z": 1.0}  # y saves a lot: 0.02 per unit
    out = greedy_assignments(space, sensitivity, saving)
    flipped = [sorted(k for k, v in a.items() if v == "int4") for a in out]
    assert flipped == [["x", "y"], ["x", "y", "z"]]


# -- with real (tiny) QAT -------------------------------------------------------------------------


def test_search_seeds_baselines_and_reports_front() -> None:
    seen: list[TrialOutcome] = []
    result = run_search(tiny_spec(n_trials=4), observer=Hooks(trial_done=lambda o, p: seen.append(o)))
    assert [o.source for o in seen[:2]] == ["baseline", "baseline"]  # all-int8, int4 inside (fp16 third)
    assert seen[0].assignment == {layer.fqn: "int8" for layer in result.layers}
    inner = list(seen[1].assignment.values())
    assert inner[0] == "int8" and inner[-1] == "int8" and set(inner[1:-1]) == {"int4"}
    assert len([t for t in result.trials if not t.cached]) == 4
    assert result.front and all(p.qconfig is not None for p in result.front)
    assert result.pin_reasons.keys() == {result.layers[0].fqn, result.layers[-1].fqn}
    # per-layer costs per format add up to each trial's cost
    for t in result.trials:
        total = sum(layer.costs_by_format[t.assignment[layer.fqn]]["bitops"] for layer in result.layers)
        assert total == pytest.approx(t.costs["bitops"])
    # every front point dominates or equals each baseline it was seeded with, in at least one objective
    baselines = [t for t in result.trials if t.source == "baseline"]
    for b in baselines:
        assert any(p.quality >= b.quality or p.costs["bitops"] <= b.costs["bitops"] for p in result.front)


def test_same_assignment_is_never_trained_twice() -> None:
    spec = tiny_spec(n_trials=3, formats=("int4", "int8"), seed_with_baselines=True)
    result = run_search(spec)
    keys = [json.dumps(t.assignment, sort_keys=True) for t in result.trials if not t.cached]
    assert len(keys) == len(set(keys))


def test_a_trial_failing_by_its_own_error_is_reported_once_and_not_retried() -> None:
    """The evaluator seam raises for the second map: the search goes on, and the observer hears
    of that trial once, with its error and its whole map."""
    calls: list[dict[str, str]] = []

    def evaluate(assignment: Mapping[str, str], seed: int) -> float:
        calls.append(dict(assignment))
        if len(calls) == 2:
            raise RuntimeError("workload blew up on this map")
        return 0.5

    failures: list[TrialFailure] = []
    result = run_search(tiny_spec(n_trials=3), evaluator=evaluate, observer=Hooks(trial_failed=failures.append))
    (failure,) = failures
    assert failure.error == "RuntimeError: workload blew up on this map"
    assert failure.assignment == calls[1] and list(failure.assignment) == [layer.fqn for layer in result.layers]
    assert not failure.retried  # only a dead process's trial is queued again
    assert failure.number not in {t.number for t in result.trials}
    assert len(result.trials) == 3  # the failed trial did not use up the budget


def test_quality_constraint_marks_trials_infeasible() -> None:
    for max_drop in (0.0, 1.0):
        result = run_search(tiny_spec(n_trials=3, max_quality_drop=max_drop, qat_steps=0))
        for t in result.trials:
            assert t.feasible == (result.fp32_quality - t.quality <= max_drop), (max_drop, t)
    # with a generous limit everything is feasible (the check above cannot pass vacuously)
    assert all(t.feasible for t in result.trials)


def test_front_reevaluation_reports_spread() -> None:
    # qat_steps=5 with pretrain 40: single-run scores are noisy.  Re-evaluation is adaptive (issue 10):
    # the closest front neighbours first, which measures the seed spread, then every pair of front
    # neighbours within twice that spread; the reported front is recomputed on the means
    reports: list[SearchProgress] = []
    result = run_search(tiny_spec(workload_options={"pretrain_steps": 40}, n_trials=4, qat_steps=5,
                                  seed_with_sensitivity=True, reevaluate_front=2),
                        observer=Hooks(progress=reports.append, trial_done=lambda _o, p: reports.append(p)))
    assert result.front
    # the all-int8 seed gets a second seed right away (the seed spread the seeding needs); the front
    # two extra seeds, the all-int8 map one more
    all_int8 = next(t for t in result.trials if set(t.assignment.values()) == {"int8"})
    assert all(t.n_evaluations in (1, 3) or (t is all_int8 and t.n_evaluations == 2) for t in result.trials)
    spreads = [t.quality_std for t in result.trials if t.n_evaluations == 3]
    if len(result.front) + len(result.merged_within_noise) > 1:
        assert spreads, "a front of several points must have its closest pair re-evaluated"
    noise = max(spreads, default=0.0)
    for a, b in zip(result.front, result.front[1:], strict=False):
        if abs(a.quality - b.quality) <= 2 * noise:
            assert min(a.n_evaluations, b.n_evaluations) >= 2, (a.number, b.number)
    assert all(p.quality_std >= 0 for p in result.front)
    assert result.qat_steps_used == 5 * sum(t.n_evaluations for t in result.trials)

    # the downloaded file says what the front says: the mean over every run, not the first run
    for point in result.front:
        assert point.qconfig is not None
        assert point.qconfig["quality"]["value"] == point.quality
        assert point.qconfig["quality"]["std"] == (point.quality_std if point.n_evaluations > 1 else None)
        assert point.qconfig["quality"]["n_evaluations"] == point.n_evaluations
    # the progress tells the phases in order, and the re-evaluation is not hidden behind "4/4"
    phases = [r.phase for r in reports]
    order = [SearchPhase.FP32, SearchPhase.SEEDING]
    order += [SearchPhase.REEVALUATING] if spreads else []
    order += [SearchPhase.DONE]
    assert [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p] == order, phases
    reevaluating = [r for r in reports if r.phase is SearchPhase.REEVALUATING]
    assert all(r.finished == 4 and r.eta_s is not None and r.eta_s > 0 for r in reevaluating)
    assert reports[-1].eta_s == 0.0 and reports[-1].elapsed_s > reports[0].elapsed_s


def test_progress_phases_seeding_then_sampling() -> None:
    reports: list[SearchProgress] = []
    starts: list[SearchResult] = []
    run_search(tiny_spec(n_trials=6, qat_steps=0, reevaluate_front=0),
               observer=Hooks(progress=reports.append, trial_done=lambda _o, p: reports.append(p),
                              started=starts.append),
               evaluator=lambda assignment, seed: sum(f == "int8" for f in assignment.values()) / len(assignment))
    phases = [r.phase for r in reports]
    assert SearchPhase.SEEDING in phases and SearchPhase.SAMPLING in phases
    assert phases.index(SearchPhase.SEEDING) < phases.index(SearchPhase.SAMPLING), phases
    # the layers and the fp32 reference are known before the first trial
    assert len(starts) == 1 and starts[0].layers and not starts[0].trials


def test_bad_input_fails_before_training() -> None:
    with pytest.raises(ValueError, match="formats"):
        run_search(tiny_spec(profile="npu-int4", formats=("int4", "fp32")))
    with pytest.raises(ValueError, match="nothing to search"):
        run_search(tiny_spec(formats=("int8",)))
    with pytest.raises(SearchError, match="storage"):
        run_search(tiny_spec(storage="postgresql+psycopg://nobody@127.0.0.1:1/none"))
    with pytest.raises(ValueError, match="workload"):
        run_search(tiny_spec(workload="no-such-workload"))


def test_spec_validation_names_the_field() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="n_trials"):
        SearchSpec(workload="digits", n_trials=0)
    with pytest.raises(ValidationError, match="format"):
        SearchSpec(workload="digits", formats=("int3",))
    with pytest.raises(ValidationError, match=r"unexpected|extra"):
        SearchSpec(workload="digits", colour="blue")  # type: ignore[call-arg]


# -- several processes on one study ----------------------------------------------------------------

SEARCH_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from search import SearchObserver, SearchSpec, run_search
class Print(SearchObserver):
    def trial_done(self, o, p):
        print("trial", o.number, flush=True)
    def trial_failed(self, f):
        print("failed", f.number, f.retried, len(f.assignment), flush=True)
storage, study, n, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
spec = SearchSpec(workload="digits", workload_options={"pretrain_steps": 30}, n_trials=n, qat_steps=steps,
                  reevaluate_front=0, storage=storage, study_name=study, heartbeat_interval_s=1, grace_period_s=4)
run_search(spec, observer=Print())
"""


def _spawn(storage: str, study: str, n: int, steps: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", SEARCH_SCRIPT, storage, study, str(n), str(steps)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy(),
    )


def _warm_cache() -> None:
    load_workload("digits", TINY)  # pretrain once so the processes start together


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    import uuid

    import psycopg

    name = f"mixq_test_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 unreachable: {exc}")

    def drop() -> None:
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    request.addfinalizer(drop)
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def test_two_processes_share_the_budget_without_duplicates(storage_url: str) -> None:
    _warm_cache()
    n = 8
    procs = [_spawn(storage_url, "shared", n, 10) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    study = optuna.load_study(study_name="shared", storage=storage_url)
    done = [t for t in study.trials if t.state is TrialState.COMPLETE and not t.user_attrs.get("cached")]
    assert len(done) == n
    params = [json.dumps(t.params, sort_keys=True) for t in done]
    assert len(set(params)) == len(params), "an assignment was trained twice"
    workers = {t.user_attrs["worker"] for t in done}
    assert len(workers) == 2, f"one process did all the work: {workers}"


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_killed_process_trial_is_retried_with_same_params(storage_url: str) -> None:
    _warm_cache()
    victim = _spawn(storage_url, "crash", 3, 100_000)  # its first trial runs for minutes
    deadline = time.monotonic() + 120
    running = []
    while time.monotonic() < deadline and not running:
        time.sleep(0.5)
        try:
            study = optuna.load_study(study_name="crash", storage=storage_url)
            # wait until the trial has all its parameters (3 free digits layers; they are written
            # one by one): then QAT is running, the moment to kill
            running = [t for t in study.get_trials(states=(TrialState.RUNNING,)) if len(t.params) == 3]
        except KeyError:
            continue
    assert running, "the victim never started a trial"
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    # every trial the victim held died with it: its pass trains up to maps_per_pass maps together
    killed = optuna.load_study(study_name="crash", storage=storage_url).get_trials(states=(TrialState.RUNNING,))
    assert running[0].number in {t.number for t in killed}

    # retries run before the seeds still to come: a budget of three trials reaches them
    survivor = _spawn(storage_url, "crash", 3, 5)
    out, err = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, err[-2000:]
    study = optuna.load_study(study_name="crash", storage=storage_url)
    trials = {t.number: t for t in study.trials}
    for dead in killed:
        assert trials[dead.number].state is TrialState.FAIL
        retries = [t for t in study.trials if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == dead.number]
        assert retries and retries[0].params == dead.params
        assert retries[0].state is TrialState.COMPLETE
    assert not study.get_trials(states=(TrialState.RUNNING,))
    # the survivor, which found them stale, reported each once: retried, with its whole map (5 digits layers)
    assert sorted(line for line in out.splitlines() if line.startswith("failed")) == sorted(
        f"failed {dead.number} True 5" for dead in killed)


# -- proxy seeding where a one-layer QAT sweep does not fit the budget ----------------------------


def test_proxy_greedy_orders_by_score_per_cost_and_thins_evenly() -> None:
    from search.study.seeds import proxy_greedy_assignments

    space = SearchSpace(choices={f: ("int4", "int8") for f in "abcdef"}, pinned={}, pin_reasons={})
    cost = {"int8": 2.0, "int4": 1.0}

    def cost_of(free: dict[str, str]) -> float:
        return sum(cost[v] for v in free.values())  # every layer saves 1 by going to int4

    sensitivity = {"a": 5.0, "b": 0.1, "c": 3.0, "d": 0.2, "e": 4.0, "f": 1.0}  # order: b d f c e a
    path = proxy_greedy_assignments(space, sensitivity, cost_of, max_points=10)
    flipped = [sorted(f for f, v in p.items() if v == "int4") for p in path]
    assert flipped == [["b", "d"], ["b", "d", "f"], ["b", "c", "d", "f"], ["b", "c", "d", "e", "f"]]
    thinned = proxy_greedy_assignments(space, sensitivity, cost_of, max_points=2)
    assert thinned == [path[0], path[-1]]  # both ends of the path


@pytest.mark.parametrize(("n_trials", "expected"), [(6, "proxy"), (16, "sensitivity")])
def test_seeding_uses_the_proxy_only_when_the_sweep_does_not_fit(n_trials: int, expected: str) -> None:
    """digits with first/last free has 5 free layers: a 5-run sweep fits 16 trials (<= a third, or 3),
    not 6; then the greedy path comes from the Fisher proxy, with no one-layer sweep trials."""
    spec = tiny_spec(n_trials=n_trials, seed_with_sensitivity=True, formats=("int4", "int8"), qat_steps=1,
                     pin_first_last=None)
    result = run_search(spec)
    sources = [t.source for t in result.trials]
    other = {"proxy": "sensitivity", "sensitivity": "proxy"}[expected]
    assert expected in sources and other not in sources, sources
    if expected == "proxy":
        flipped = [sum(v == "int4" for v in t.assignment.values()) for t in result.trials if t.source == "proxy"]
        assert all(2 <= n <= 4 for n in flipped)  # greedy prefixes between the uniform baselines


@pytest.mark.parametrize(("timeout_s", "expected"), [(3.0, "proxy"), (600.0, "sensitivity")])
def test_a_time_budget_chooses_sweep_or_proxy_from_the_baselines_durations(
    monkeypatch: pytest.MonkeyPatch, timeout_s: float, expected: str,
) -> None:
    """With only ``timeout_s`` binding (``n_trials`` huge), how many trials fit is known once the
    baselines ran: at 0.25 s a trial, 3 s afford about 12 trials, too few for a 5-run sweep plus the
    rest (it must fit in a third), so the greedy path comes from the proxy; 600 s afford the sweep."""
    import search.study.objective as objective_module

    real = objective_module.run_trial

    def slow_trial(*args: object, **kwargs: object) -> object:
        time.sleep(0.25)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    def slow_trials(workload: object, assignments: list[object], **kwargs: object) -> object:
        time.sleep(0.25 * len(assignments))  # a pass of several maps: as slow as training them one by one
        return real_trials(workload, assignments, **kwargs)  # type: ignore[arg-type]

    real_trials = objective_module.run_trials
    monkeypatch.setattr(objective_module, "run_trial", slow_trial)
    monkeypatch.setattr(objective_module, "run_trials", slow_trials)
    n_trials = 10_000 if expected == "proxy" else 16
    spec = tiny_spec(n_trials=n_trials, timeout_s=timeout_s, seed_with_sensitivity=True, formats=("int4", "int8"),
                     qat_steps=1, pin_first_last=None)
    result = run_search(spec)
    sources = [t.source for t in result.trials]
    other = {"proxy": "sensitivity", "sensitivity": "proxy"}[expected]
    assert expected in sources and other not in sources, sources
    assert sources[:2] == ["baseline"] * 2 and sources[2] == expected, sources  # the choice waited for them


def test_the_proxy_programs_maps_are_tried_before_the_sampler() -> None:
    """digits with first/last free (5 layers): 18 trials leave 3 program seeds (a sixth); they are
    the maps search.study.seeds.program_assignments picks from the proxies' ensemble, Hessian and Fisher
    scores, tried
    after the uniform baselines and the sweep and before any sampler trial."""
    from search import discover_layers, load_profile, load_workload
    from search.quant.cost import model_costs
    from search.study.pareto import assignment_key
    from search.study.seeds import ensemble_scores, program_assignments
    from search.study.sensitivity import fisher_sensitivity, hessian_sensitivity, ptq_sensitivity, scores_by_layer
    from search.study.space import build_space

    spec = tiny_spec(n_trials=18, seed_with_sensitivity=True, formats=("int4", "int8"), qat_steps=1,
                     pin_first_last=None)
    result = run_search(spec)
    sources = [t.source for t in result.trials]
    programs = [dict(t.assignment) for t in result.trials if t.source == "program"]
    assert 1 <= len(programs) <= 3, sources
    first_sampler = sources.index("sampler") if "sampler" in sources else len(sources)
    assert max(i for i, s in enumerate(sources) if s == "program") < first_sampler, sources

    workload = load_workload(spec.workload, spec.workload_options)
    profile = load_profile(spec.profile)
    graph = discover_layers(workload.model, workload.example_inputs)
    space = build_space(spec, graph, profile)
    proxies = []
    for proxy in (hessian_sensitivity, fisher_sensitivity, ptq_sensitivity):
        proxies.append(scores_by_layer(proxy(workload, layers=list(space.choices), formats=["int4", "int8"])))

    def cost_of(free: dict[str, str]) -> float:
        costs = model_costs(spec.cost_objectives, profile, graph, {**space.pinned, **space.expand(free)})
        return next(iter(costs.values()))

    expected = program_assignments(space, [ensemble_scores(proxies), *proxies[:2]], cost_of, 6, 3)
    tried = {assignment_key(t.assignment) for t in result.trials}
    # a program map the sweep or the baselines already tried is not tried twice
    assert [m for m in expected if assignment_key(m) not in tried] == []
    assert all(m in expected for m in programs)


def test_the_ptq_proxy_is_skipped_where_its_evaluations_would_take_too_long(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """The PTQ proxy evaluates the model once per layer and format: on a large model that is minutes, so
    it is left out (with a log line) when one timed evaluation says it would pass PTQ_MAX_S; the other
    programs still seed the search."""
    import search.study.seeding as seeding
    import search.study.sensitivity as sensitivity

    def never(*args: object, **kwargs: object) -> object:
        raise AssertionError("the PTQ proxy ran")

    monkeypatch.setattr(seeding, "PTQ_MAX_S", 1e-9)
    monkeypatch.setattr(sensitivity, "ptq_sensitivity", never)
    spec = tiny_spec(n_trials=18, seed_with_sensitivity=True, formats=("int4", "int8"), qat_steps=1,
                     pin_first_last=None)
    with caplog.at_level("WARNING", logger="mixq.search"):
        result = run_search(spec)
    assert any("the PTQ proxy skipped: 10 evaluations" in r.getMessage() for r in caplog.records), caplog.text
    assert "program" in [t.source for t in result.trials]


def test_the_study_names_its_objectives_for_optuna_dashboard(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 's.db'}"
    spec = tiny_spec(n_trials=2, qat_steps=0, reevaluate_front=0, storage=storage, study_name="named")
    result = run_search(spec, evaluator=lambda a, s: 1.0)
    study = optuna.load_study(study_name="named", storage=storage)
    assert study.metric_names == [result.metric_name, "bitops"]

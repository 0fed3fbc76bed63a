"""Several maps per QAT pass in the search (issue 22): K (``maps_per_pass``) from the spec or chosen
automatically, the runner's passes (asked together, trained by ``search.train.run_trials``, told one by
one), the same front as one map at a time, the exact budget when batched workers share a study, the
one-at-a-time fallback of a failing pass, and K in each trial's attributes and qconfig's provenance."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

import search.study.objective as objective_module
from search import SearchError, SearchResult, SearchSpec, TrialFailure, load_workload, run_search
from search.errors import NonFiniteLossError
from search.study.attrs import TrialKey
from search.study.budget import (
    AUTO_MAPS_CPU,
    AUTO_MAPS_GPU,
    BATCHING_PAYS_BELOW_MACS,
    SMALL_MODEL_PARAMS_CPU,
    StudyCounts,
    auto_maps_per_pass,
    batch_size,
    map_bytes,
)
from search.train import TrialBatch, run_trial
from tests.observe import Hooks
from tests.search.test_runner import storage_url  # noqa: F401 - fixture (SQLite, and a fresh PostgreSQL database)

TINY = {"pretrain_steps": 30}
ALL_INT4 = {"features.0": "int8", "features.3": "int4", "features.7": "int4", "classifier.1": "int4",
            "classifier.3": "int8"}


def spec(**overrides: object) -> SearchSpec:
    """digits with int4/int8: 3 free layers (the first and last pinned to int8), 8 maps; 8 trials try them all."""
    base: dict[str, object] = dict(workload="digits", workload_options=TINY, n_trials=8, qat_steps=3,
                                   reevaluate_front=0, seed_with_sensitivity=False, formats=("int4", "int8"))
    base.update(overrides)
    return SearchSpec(**base)


def by_map(result: SearchResult) -> dict[str, tuple[float, int]]:
    """Each trained map's (reported quality, evaluations), keyed by the map."""
    return {json.dumps(t.assignment, sort_keys=True): (t.quality, t.n_evaluations) for t in result.trials}


def front_maps(result: SearchResult) -> list[str]:
    return sorted(json.dumps(p.assignment, sort_keys=True) for p in result.front)


def study_trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)


def close(a: float, b: float) -> bool:
    """The batched engine's numbers are those of one map alone within 1e-5 (relative)."""
    return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7)


# -- K ---------------------------------------------------------------------------------------------


def test_automatic_k_follows_the_model_size_and_the_device_memory() -> None:
    small, big = 100_000, 10 * SMALL_MODEL_PARAMS_CPU
    assert auto_maps_per_pass(small, 50_000, "cpu", None) == AUTO_MAPS_CPU == 8
    assert auto_maps_per_pass(small, 50_000, "cuda", None) == AUTO_MAPS_GPU
    assert auto_maps_per_pass(big, 50_000, "cpu", 10**12) == 1  # a large model: compute, not overhead
    assert auto_maps_per_pass(big, 50_000, "cuda", 10**12) == AUTO_MAPS_GPU  # ... which a GPU still batches
    one = map_bytes(small, 50_000)
    assert one == 4 * (5 * small + 3 * 50_000)
    assert auto_maps_per_pass(small, 50_000, "cpu", 12 * one) == 3  # a quarter of the free memory: 3 maps
    assert auto_maps_per_pass(small, 50_000, "cpu", one) == 1  # not even one fits: still one map at a time
    assert auto_maps_per_pass(small, 50_000, "cpu", 10**15) == AUTO_MAPS_CPU  # memory never raises it
    # arithmetic-bound steps (bench/results/batched_qat: digits, denoise) gain nothing on a CPU: one map
    assert auto_maps_per_pass(small, 50_000, "cpu", None, BATCHING_PAYS_BELOW_MACS) == 1
    assert auto_maps_per_pass(small, 50_000, "cpu", None, BATCHING_PAYS_BELOW_MACS / 4) == AUTO_MAPS_CPU
    assert auto_maps_per_pass(small, 50_000, "cuda", None, 10 * BATCHING_PAYS_BELOW_MACS) == AUTO_MAPS_GPU


def test_automatic_k_batches_the_small_corpus_cnns_and_not_the_builtin_denoisers() -> None:
    """The rule read from the measured speedups, on the workloads measured: batched where K = 8 paid
    (corpus kws, espcn), one map where it did not (digits, denoise)."""
    from search import discover_layers, load_workload
    from search.study.runner import maps_per_pass
    from tests.corpus.models import corpus_workload

    for workload, expected in [(corpus_workload("kws"), 8), (corpus_workload("espcn"), 8),
                               (load_workload("digits", TINY), 1), (load_workload("denoise", {"pretrain_steps": 30}), 1)]:
        graph = discover_layers(workload.model, workload.example_inputs)
        assert maps_per_pass(SearchSpec(workload="digits"), workload, graph) == expected


def counts(completed: int = 0, running: int = 0, distinct: int | None = None, used: int = 0) -> StudyCounts:
    return StudyCounts(completed=completed, running=running, trials=completed + running, qat_steps_used=used,
                       distinct_maps=completed if distinct is None else distinct)


def test_a_pass_never_asks_for_more_than_the_budget_affords() -> None:
    s = spec(n_trials=10).resolve_fidelity(3)
    assert batch_size(s, 4, counts(), 10, 100) == 4
    assert batch_size(s, 4, counts(completed=8), 10, 100) == 2  # 10 is not a multiple of 4
    assert batch_size(s, 4, counts(completed=6, running=3), 10, 100) == 1  # slots held elsewhere count
    assert batch_size(s, 4, counts(completed=2), 10, 4) == 2  # only 2 maps of the space are untried
    steps = spec(budget_qat_steps=30, qat_steps=10, reevaluate_front=0).resolve_fidelity(3)
    assert batch_size(steps, 4, counts(completed=1, used=10), 0, 100) == 2  # 20 steps left: 2 trials of 10
    assert batch_size(spec().resolve_fidelity(3), 1, counts(), 8, 100) == 1  # K = 1: one map at a time


@pytest.mark.parametrize("bad", [0, -1, 65, "many"])
def test_maps_per_pass_is_bounded_and_its_error_names_the_field(bad: object) -> None:
    with pytest.raises(ValueError, match="maps_per_pass"):
        spec(maps_per_pass=bad)


def test_automatic_k_is_chosen_for_the_search_and_recorded_in_its_result(monkeypatch: pytest.MonkeyPatch) -> None:
    # digits' step (6M MACs per layer) is arithmetic on a CPU: one map per pass; were the threshold above it,
    # the small model would batch AUTO_MAPS_CPU; a benchmark evaluator keeps 1
    assert run_search(spec(n_trials=2, qat_steps=1)).maps_per_pass == 1
    import search.study.budget as budget

    monkeypatch.setattr(budget, "BATCHING_PAYS_BELOW_MACS", 10**12)
    trained = run_search(spec(n_trials=2, qat_steps=1))
    assert trained.maps_per_pass == AUTO_MAPS_CPU and trained.to_json()["maps_per_pass"] == AUTO_MAPS_CPU
    table = run_search(spec(n_trials=2), evaluator=lambda a, s: 0.5)
    assert table.maps_per_pass == 1
    assert run_search(spec(n_trials=2, maps_per_pass=3), evaluator=lambda a, s: 0.5).maps_per_pass == 3


# -- the same search, K maps at a time --------------------------------------------------------------


def table(assignment: Mapping[str, str], seed: int) -> float:
    """A deterministic quality: int4 costs each layer a little, and seeds move it by up to 0.004."""
    return 1.0 - 0.01 * sum(f == "int4" for f in assignment.values()) - 0.001 * (seed // 1000 % 5)


def test_batched_search_gives_the_front_and_qualities_of_one_map_at_a_time(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'k.db'}"
    runs = {k: run_search(spec(maps_per_pass=k, reevaluate_front=2, storage=url, study_name=f"k{k}"), evaluator=table)
            for k in (1, 4)}
    assert len(runs[1].trials) == len(runs[4].trials) == 8  # every map of the space, either way
    assert by_map(runs[4]) == by_map(runs[1])
    assert front_maps(runs[4]) == front_maps(runs[1])
    assert [p.quality for p in runs[4].front] == [p.quality for p in runs[1].front]
    sizes = {k: [t.user_attrs.get(TrialKey.BATCH_SIZE) for t in study_trials(url, f"k{k}")
                 if t.state is TrialState.COMPLETE and not t.user_attrs.get("cached")] for k in (1, 4)}
    assert set(sizes[1]) == {1} and max(s or 0 for s in sizes[4]) == 4  # the batched search did train passes of 4


def test_batched_search_with_real_qat_scores_each_map_as_alone(tmp_path: Path) -> None:
    """Tiny real QAT (3 steps) with one re-evaluation seed: the same maps, each with the numbers of training
    it alone, whether the runner trains them 1 or 4 to a pass."""
    runs = {k: run_search(spec(maps_per_pass=k, reevaluate_front=1)) for k in (1, 4)}
    one, four = by_map(runs[1]), by_map(runs[4])
    assert one.keys() == four.keys() and len(one) == 8
    for key, (quality, n) in one.items():
        assert close(four[key][0], quality) and four[key][1] == n, key
    assert front_maps(runs[4]) == front_maps(runs[1])


def test_promotions_and_reevaluations_train_together_with_the_numbers_of_one_map(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """Rungs 1,3 (eta 2) and a re-evaluation seed, K = 4: the maps promoted to one rung train in one pass,
    and every rung result and re-evaluation equals training that map alone with the same steps and seed."""
    calls: list[tuple[int, int, int]] = []  # (maps, QAT steps, seed) of each pass
    real = objective_module.run_trials

    def recorded(workload: Any, assignments: list[Any], **kwargs: Any) -> TrialBatch:
        calls.append((len(assignments), kwargs["qat_steps"], kwargs["seed"]))
        return real(workload, assignments, **kwargs)

    monkeypatch.setattr(objective_module, "run_trials", recorded)
    url = f"sqlite:///{tmp_path / 'rungs.db'}"
    result = run_search(spec(maps_per_pass=4, fidelity_rungs=(1, 3), promotion_eta=2, reevaluate_front=1,
                             storage=url, study_name="rungs"))
    assert any(n > 1 and steps == 9 for n, steps, _ in calls), calls  # a pass of promotions
    study = optuna.load_study(study_name="rungs", storage=url)
    params = {t.number: t.params for t in study.get_trials(deepcopy=False)}
    workload = load_workload("digits", TINY)
    full = {p.number: p.assignment for p in result.trials}
    checked = 0
    for key, rec in study.user_attrs.items():
        if key.startswith("mixq:rung:") and rec.get("quality") is not None:
            number = int(key.rsplit(":", 1)[1])
            alone = run_trial(workload, full[number], qat_steps=rec["qat_steps"], seed=0)
            assert close(rec["quality"], alone.quality), (key, params[number])
            checked += 1
        if key.startswith("mixq:reeval:") and rec.get("qualities"):
            number = int(key.rsplit(":", 1)[1])
            steps = 3 * (1, 3)[rec["rung"]]
            alone = run_trial(workload, full[number], qat_steps=steps, seed=1000)
            assert close(rec["qualities"][-1], alone.quality), key
            checked += 1
    assert checked >= 3


# -- a failing pass -----------------------------------------------------------------------------------


def test_a_failing_pass_is_trained_again_one_map_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The all-int4 map fails (its loss goes NaN, say) and takes the batched engine's pass with it: the
    pass's maps are trained again alone, the failure is recorded against that map's trial only, and the
    other maps of the pass complete with the numbers of training them alone."""
    real_trials, real_trial = objective_module.run_trials, objective_module.run_trial
    passes: list[int] = []

    def bad(assignment: Mapping[str, Any]) -> bool:
        return {fqn: str(f) for fqn, f in assignment.items()} == ALL_INT4

    def engine(workload: Any, assignments: list[Any], **kwargs: Any) -> TrialBatch:
        passes.append(len(assignments))
        if any(bad(a) for a in assignments):
            raise NonFiniteLossError("loss: NaN at step 2 (all-int4)")
        return real_trials(workload, assignments, **kwargs)

    def alone(workload: Any, assignment: Any, **kwargs: Any) -> Any:
        if bad(assignment):
            raise NonFiniteLossError("loss: NaN at step 2 (all-int4)")
        return real_trial(workload, assignment, **kwargs)

    monkeypatch.setattr(objective_module, "run_trials", engine)
    monkeypatch.setattr(objective_module, "run_trial", alone)
    failures: list[TrialFailure] = []
    result = run_search(spec(n_trials=5, maps_per_pass=4, storage=None), observer=Hooks(trial_failed=failures.append))
    assert passes and passes[0] >= 2  # the baselines' pass: all-int4 with all-int8
    # (the sampler may propose the map again later: it fails again, on its own)
    assert failures and all(f.assignment == ALL_INT4 for f in failures)
    assert "NaN" in failures[0].error and not failures[0].retried
    assert len(result.trials) == 5 and ALL_INT4 not in [t.assignment for t in result.trials]
    int8 = next(t for t in result.trials if set(t.assignment.values()) == {"int8"})
    workload = load_workload("digits", TINY)
    assert close(int8.quality, real_trial(workload, int8.assignment, qat_steps=3, seed=0).quality)
    assert int8.qconfig is not None and int8.qconfig["provenance"]["maps_per_pass"] == 1  # trained alone
    assert int8.qconfig["provenance"]["batched"] is False


def test_a_pass_whose_every_map_fails_stops_the_search_with_the_cause(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise NonFiniteLossError("loss: NaN at step 1")

    monkeypatch.setattr(objective_module, "run_trials", broken)
    monkeypatch.setattr(objective_module, "run_trial", broken)
    with pytest.raises(SearchError, match=r"3 trials in a row failed.*NaN at step 1"):
        run_search(spec(n_trials=6, maps_per_pass=4, seed_with_baselines=False))


# -- K in the attributes and the provenance -----------------------------------------------------------


def test_k_is_recorded_in_each_trial_and_each_qconfig_provenance(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    """An engine that batches (here: the one-map path reporting its passes as batched) records its maps per
    pass and ``batched`` in every trained trial's attributes and its qconfig's provenance; K = 1 records one
    map, not batched."""
    real = objective_module.run_trials

    def batching(workload: Any, assignments: list[Any], **kwargs: Any) -> TrialBatch:
        runs = real(workload, assignments, **kwargs).runs
        return TrialBatch(runs=runs, maps_per_pass=len(assignments), batched=True)

    monkeypatch.setattr(objective_module, "run_trials", batching)
    url = f"sqlite:///{tmp_path / 'prov.db'}"
    for k in (4, 1):
        result = run_search(spec(maps_per_pass=k, storage=url, study_name=f"k{k}"))
        assert result.maps_per_pass == k
        trained = [t for t in study_trials(url, f"k{k}") if t.state is TrialState.COMPLETE
                   and not t.user_attrs.get("cached")]
        assert len(trained) == 8
        for t in trained:
            prov = json.loads(t.user_attrs[TrialKey.QCONFIG])["provenance"]
            size = t.user_attrs[TrialKey.BATCH_SIZE]
            assert 1 <= size <= k
            expect = (size, size > 1)  # a pass of one map takes the one-map path
            assert (t.user_attrs[TrialKey.MAPS_PER_PASS], t.user_attrs[TrialKey.BATCHED]) == expect
            assert (prov["maps_per_pass"], prov["batched"]) == expect
        if k == 4:
            assert max(t.user_attrs[TrialKey.BATCH_SIZE] for t in trained) == 4
        for point in result.front:
            assert point.qconfig is not None and point.qconfig["provenance"]["maps_per_pass"] in range(1, k + 1)


# -- the exact budget with batched workers -------------------------------------------------------------

WORKER = """
import os, sys, time, torch
torch.set_num_threads(1)
from search import SearchSpec, run_search
storage, study, ready, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
open(os.path.join(ready, str(os.getpid())), "w").close()
deadline = time.monotonic() + 120
while len(os.listdir(ready)) < n and time.monotonic() < deadline:  # the workers start their searches together
    time.sleep(0.05)
spec = SearchSpec(workload="digits", workload_options={"pretrain_steps": 30}, n_trials=10, qat_steps=10,
                  maps_per_pass=4, reevaluate_front=0, seed_with_sensitivity=False, storage=storage,
                  study_name=study, heartbeat_interval_s=1, grace_period_s=4)
run_search(spec)
"""


def test_batched_workers_sharing_a_study_train_exactly_the_budget(storage_url: str, tmp_path: Path) -> None:  # noqa: F811
    """Three processes, K = 4, n_trials = 10 (not a multiple of 4): each pass claims 4 budget slots or fewer,
    slot by slot, so exactly 10 first-rung trials train, no map twice, and a trial that lost the race for a
    slot trained nothing."""
    load_workload("digits", TINY)  # pretrain once, so the processes start together
    ready = tmp_path / "ready"
    ready.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, storage_url, "shared", str(ready), "3"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
             for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    trials = study_trials(storage_url, "shared")
    trained = [t for t in trials if t.state is TrialState.COMPLETE and not t.user_attrs.get("cached")]
    assert len(trained) == 10
    maps = [json.dumps(t.params, sort_keys=True) for t in trained]
    assert len(set(maps)) == 10, "a map was trained twice"
    # every trained trial held a slot; nothing else trained (a pruned trial has no QAT run recorded)
    assert all(t.user_attrs.get(TrialKey.BUDGET_SLOT) for t in trained)
    ran = [t for t in trials if TrialKey.QCONFIG in t.user_attrs and not t.user_attrs.get("cached")]
    assert len(ran) == 10 and not [t for t in trials if t.state is TrialState.RUNNING]
    assert all(1 <= t.user_attrs[TrialKey.BATCH_SIZE] <= 4 for t in trained)
    assert max(t.user_attrs[TrialKey.BATCH_SIZE] for t in trained) > 1  # passes of several maps ran
    workers = {t.user_attrs["worker"] for t in trained}
    assert len(workers) >= 2, f"one process did all the work: {workers}"

"""Multi-fidelity maths (numbers in, numbers out) and the search's multi-fidelity, budget, seeding,
stop and noise rules on tiny workloads."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import optuna
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import kendalltau
from torch import nn

from search import SearchSpec, TrialOutcome, Workload, load_workload, run_search
from search.study.attrs import rung_key
from search.study.ledger import Ledger
from search.study.multifidelity import (
    crowding_distances,
    noise_level,
    non_dominated_ranks,
    promotable,
    promotion_order,
    rank_agreement,
    reevaluation_todo,
    within_noise_of_cheaper,
)
from search.study.pareto import objective_vector
from search.study.seeds import cheapest_assignment, dominated_formats
from search.study.space import SearchSpace
from search.workloads.base import random_batches
from tests.observe import Hooks
from tests.search.models import DepthwiseNet

TINY = {"pretrain_steps": 30}

# -- pure parts ----------------------------------------------------------------------------------


def test_noise_level_is_the_largest_spread_at_least_min_gain() -> None:
    assert noise_level([], 0.5) is None
    assert noise_level([0.02, 0.07], None) == 0.07
    assert noise_level([0.02, 0.07], 0.1) == 0.1


def test_reevaluation_todo_closest_pair_first_then_neighbours_within_twice_the_noise() -> None:
    qualities = [20.0, 22.0, 22.05, 25.0, 25.15]  # front in cost order
    once = [1, 1, 1, 1, 1]
    assert reevaluation_todo(qualities, once, None) == [1, 2]  # the closest pair measures the noise
    assert reevaluation_todo(qualities, once, 0.1) == [1, 2, 3, 4]  # 0.15 <= 2 x 0.1
    assert reevaluation_todo(qualities, [1, 3, 1, 1, 1], 0.05) == [2]  # point 1 already has seeds
    assert reevaluation_todo([20.0], [1], None) == []


def test_ledger_promotes_the_top_third_and_finishes_a_climb_first() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    for quality, cost in [(20.0, 1.0), (21.0, 2.0), (22.0, 3.0), (19.0, 3.0), (18.0, 4.0), (17.0, 5.0)]:
        study.add_trial(optuna.trial.create_trial(values=[quality, cost], user_attrs={"qat_steps": 10}))
    ledger = Ledger.read(study, first_rung_steps=10)
    assert ledger.qat_steps_used == 60
    first = ledger.next_promotion(n_rungs=3, eta=3, higher_is_better=True)
    assert first is not None and first[1] == 1 and first[0] in {0, 1, 2}  # two of the front of three
    study.set_user_attr(rung_key(1, first[0]), {"qat_steps": 30, "quality": 23.0, "qconfig": None})
    ledger = Ledger.read(study, first_rung_steps=10)
    assert ledger.qat_steps_used == 90 and ledger.top(first[0]) is not None
    # rung 1 holds one finished map: 1 // 3 = 0 promotable there, so rung 1 fills up first
    second = ledger.next_promotion(n_rungs=3, eta=3, higher_is_better=True)
    assert second is not None and second[1] == 1 and second[0] != first[0]


def test_non_dominated_ranks_peel_fronts() -> None:
    vectors = [(0.0, 3.0), (1.0, 1.0), (3.0, 0.0), (2.0, 2.0), (3.0, 3.0), (1.0, 1.0)]
    assert non_dominated_ranks(vectors) == [0, 0, 0, 1, 2, 0]


def test_crowding_keeps_the_ends_first() -> None:
    d = crowding_distances([(0.0, 4.0), (1.0, 3.0), (3.0, 1.0), (4.0, 0.0)])
    assert math.isinf(d[0]) and math.isinf(d[3])
    assert d[1] == pytest.approx((3 - 0) / 4 + (4 - 1) / 4) and d[2] == pytest.approx((4 - 1) / 4 + (3 - 0) / 4)


def test_promotion_takes_the_top_third_by_rank_then_crowding() -> None:
    # rank 0: 10, 11 (the ends), 12 (crowding 0.44 + 0.62), 13 (0.6 + 0.4); rank 1: 14; rank 2: 15
    members = {10: (0.0, 5.0), 11: (5.0, 0.0), 12: (2.0, 2.0), 13: (2.2, 1.9), 14: (3.0, 3.0), 15: (6.0, 6.0)}
    assert promotion_order([members[k] for k in sorted(members)])[:2] == [0, 1]
    assert promotable(members, eta=3) == [10, 11]
    assert promotable(members, eta=2) == [10, 11, 12]
    assert promotable({1: (0.0, 0.0)}, eta=2) == []  # one member cannot show it is in the top half


def test_noise_merge_drops_a_dearer_point_within_spread() -> None:
    # the case: fp16 +0.015 dB over int8 at 2.5x the cost, 0.024 dB spread
    merged = within_noise_of_cheaper([25.61, 25.625], [0.01, 0.024], [[1.0], [2.5]], True, None)
    assert merged == [False, True]
    assert within_noise_of_cheaper([25.61, 25.70], [0.01, 0.024], [[1.0], [2.5]], True, None) == [False, False]
    assert within_noise_of_cheaper([25.61, 25.70], [0.0, 0.0], [[1.0], [2.5]], True, 0.1) == [False, True]
    # lower is better: a loss of 0.50 vs 0.49 at more cost, no spread known, min_gain 0.02
    assert within_noise_of_cheaper([0.50, 0.49], [0.0, 0.0], [[1.0], [2.0]], False, 0.02) == [False, True]


def test_rank_agreement_is_kendall_tau() -> None:
    short, long = [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0]
    assert rank_agreement(short, long) == pytest.approx(kendalltau(short, long).statistic)
    assert rank_agreement([1.0], [2.0]) is None


SPACE = SearchSpace(choices={"b": ("int4", "int8", "fp16"), "d": ("int8", "fp16")}, pinned={"a": "int8"},
                    pin_reasons={})
BITS = {"int4": 4.0, "int8": 8.0, "fp16": 16.0}


def test_cheapest_assignment_respects_each_layers_formats() -> None:
    assert cheapest_assignment(SPACE, lambda fqn, fmt: BITS[fmt]) == {"b": "int4", "d": "int8"}


def test_dominated_formats_from_baselines_and_sweep() -> None:
    scored = [
        ({"b": "int8", "d": "int8"}, 0.90),
        ({"b": "fp16", "d": "fp16"}, 0.90),  # fp16 everywhere: twice the cost, no better
        ({"b": "int4", "d": "int8"}, 0.80),  # int4 on b costs quality: int8 stays
    ]
    out = dominated_formats(scored, lambda fqn, fmt: BITS[fmt], higher_is_better=True)
    assert out == {"b": {"fp16": "int8"}, "d": {"fp16": "int8"}}
    better_fp16 = [scored[0], ({"b": "fp16", "d": "fp16"}, 0.95)]
    assert dominated_formats(better_fp16, lambda fqn, fmt: BITS[fmt], higher_is_better=True) == {}
    assert dominated_formats(better_fp16, lambda fqn, fmt: BITS[fmt], True, noise=0.1) == {
        "b": {"fp16": "int8"}, "d": {"fp16": "int8"}}


def test_spec_checks_the_fidelity_fields() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="fidelity_rungs"):
        SearchSpec(workload="digits", fidelity_rungs=(2, 4))
    with pytest.raises(ValidationError, match="fidelity_rungs"):
        SearchSpec(workload="digits", fidelity_rungs=(1, 3, 3))
    with pytest.raises(ValidationError, match="budget_qat_steps"):
        SearchSpec(workload="digits", budget_qat_steps=100, qat_steps=0)
    with pytest.raises(ValidationError, match="promotion_eta"):
        SearchSpec(workload="digits", promotion_eta=1)


@pytest.mark.parametrize(
    ("fields", "free", "rungs", "eta"),
    [
        pytest.param({"timeout_s": 600}, 15, (1, 3), 2, id="deep-time-budget"),
        pytest.param({"budget_qat_steps": 5000}, 10, (1, 3), 2, id="deep-step-budget"),
        pytest.param({}, 15, (1,), 3, id="deep-trials-only"),  # promotions would add compute not asked for
        pytest.param({"timeout_s": 600}, 9, (1,), 3, id="shallow"),
        pytest.param({"timeout_s": 600, "promotion_eta": 4}, 15, (1, 3), 4, id="users-eta-kept"),
        pytest.param({"timeout_s": 600, "fidelity_rungs": (1,)}, 15, (1,), 3, id="users-one-rung-kept"),
        pytest.param({"fidelity_rungs": (1, 3, 9)}, 4, (1, 3, 9), 3, id="users-rungs-default-eta"),
    ],
)  # fmt: skip
def test_automatic_rungs(fields: dict[str, object], free: int, rungs: tuple[int, ...], eta: int) -> None:
    spec = SearchSpec(workload="digits", **fields)
    resolved = spec.resolve_fidelity(free)
    assert (resolved.rungs, resolved.eta) == (rungs, eta)
    assert resolved.resolve_fidelity(0) == resolved  # resolved fields stay


def test_unresolved_rungs_are_not_read_by_mistake() -> None:
    with pytest.raises(RuntimeError, match="resolve_fidelity"):
        _ = SearchSpec(workload="digits").rungs


def test_a_search_over_enough_free_layers_under_a_step_budget_promotes_by_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import search.spec as spec_module

    monkeypatch.setattr(spec_module, "AUTO_FIDELITY_FREE_LAYERS", 3)  # tiny digits: 3 free layers
    spec = mf_spec(tmp_path, fidelity_rungs=None, promotion_eta=None, n_trials=100, budget_qat_steps=60)
    result = run_search(spec)
    assert (result.fidelity_rungs, result.promotion_eta) == ((1, 3), 2)
    assert any(t.rung > 0 for t in result.trials)
    assert result.fidelity is not None


# -- searches on tiny workloads --------------------------------------------------------------------


def mf_spec(tmp_path: Path, **overrides: object) -> SearchSpec:
    base: dict[str, object] = dict(
        workload="digits", workload_options=TINY, formats=("int4", "int8"), qat_steps=3, fidelity_rungs=(1, 3),
        promotion_eta=2, n_trials=6, reevaluate_front=0, seed_with_sensitivity=False,
        storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="mf",
    )
    base.update(overrides)
    return SearchSpec(**base)


def test_promotion_moves_only_the_top_by_rank_and_reports_the_highest_rung(tmp_path: Path) -> None:
    spec = mf_spec(tmp_path, n_trials=8)  # 3 free digits layers, int4/int8: 8 maps
    result = run_search(spec)
    assert spec.storage is not None
    study = optuna.load_study(study_name="mf", storage=spec.storage)
    trials = sorted((t for t in study.trials if t.values and not t.user_attrs.get("cached")), key=lambda t: t.number)
    promoted = {int(k.split(":")[-1]): v for k, v in study.user_attrs.items() if k.startswith("mixq:rung:1:")}
    assert 0 < len(promoted) < len(trials), "promotion must pick some maps, not all"
    # ASHA: each promoted map was in the top 1/eta by non-dominated rank of the first rung when it
    # was promoted, i.e. of some prefix of the trials in the order they finished (here: by number)
    for number in promoted:
        assert any(
            number in promotable({t.number: objective_vector(t.values[0], t.values[1:], True) for t in trials[:k]}, 2)
            for k in range(1, len(trials) + 1)
        ), number
    # the final top half is all there
    final = {t.number: objective_vector(t.values[0], t.values[1:], True) for t in trials}
    assert set(promotable(final, 2)) <= set(promoted)
    by_number = {o.number: o for o in result.trials}
    for number, rec in promoted.items():
        o = by_number[number]
        assert (o.rung, o.qat_steps, o.quality) == (1, 9, rec["quality"])
        assert o.short_quality == next(t.values[0] for t in trials if t.number == number)
        assert o.qconfig is not None and o.qconfig == __import__("json").loads(rec["qconfig"])
    for o in result.trials:
        if o.number not in promoted:
            assert (o.rung, o.qat_steps, o.short_quality) == (0, 3, None)
    # the front uses the highest-rung qualities, and the fidelity check compares its promoted points
    assert result.fidelity is not None and result.fidelity.short_qat_steps == 3
    assert [p.number for p in result.fidelity.points] == [p.number for p in result.front if p.rung == 1]
    if len(result.fidelity.points) >= 2:
        expected = kendalltau([p.short_quality for p in result.fidelity.points],
                              [p.long_quality for p in result.fidelity.points]).statistic
        assert result.fidelity.kendall_tau == pytest.approx(expected) or math.isnan(expected)
        assert (result.fidelity.warning is not None) == (result.fidelity.kendall_tau is not None
                                                         and result.fidelity.kendall_tau < 0.8)
    # steps: 3 per first-rung map and 9 per promotion, nothing else (no re-evaluation asked)
    assert result.qat_steps_used == 3 * len(trials) + 9 * len(promoted)


def test_budget_in_qat_steps_counts_rungs_and_reevaluations(tmp_path: Path) -> None:
    budget = 60
    spec = mf_spec(tmp_path, n_trials=1, budget_qat_steps=budget, reevaluate_front=1,
                   formats=("int4", "int8", "fp16"))
    progress_steps: list[int] = []
    value = {"int4": 0.0, "int8": 1.0, "fp16": 1.05}  # a front of several points; seeds add noise

    def evaluate(assignment: Mapping[str, str], seed: int) -> float:
        return sum(value[f] for f in assignment.values()) + 0.01 * (seed % 7)

    # the evaluator stands for a QAT run of the rung's length: the accounting is the same
    result = run_search(spec, evaluator=evaluate,
                        observer=Hooks(progress=lambda p: progress_steps.append(p.qat_steps_used)))
    assert spec.storage is not None
    study = optuna.load_study(study_name="mf", storage=spec.storage)
    trained = [t for t in study.trials if not t.user_attrs.get("cached")]
    first_rung = sum(int(t.user_attrs.get("qat_steps", 0)) for t in trained)
    attrs = study.user_attrs
    promotions = sum(v["qat_steps"] for k, v in attrs.items() if k.startswith("mixq:rung:"))
    reevals = sum(v["qat_steps"] for k, v in attrs.items() if k.startswith("mixq:reeval:"))
    assert result.qat_steps_used == first_rung + promotions + reevals <= budget
    assert len(trained) > 1, "n_trials must not limit a search with a budget in steps"
    assert promotions > 0 and reevals > 0, (promotions, reevals)
    assert sum(o.n_evaluations - 1 for o in result.trials) * 3 <= reevals  # extra seeds were run and counted
    assert progress_steps and max(progress_steps) <= budget
    # it spent what it could: another first-rung map would not have fitted beside the re-evaluation reserve
    assert budget - result.qat_steps_used < 3 + min(2 * 1 * 9, budget // 4) or result.stop_reason != "budget"


def _depthwise_workload() -> Workload:
    """DepthwiseNet regressing a fixed random teacher: quality = -MSE (higher is better)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 4, 8, 8, generator=gen)
    teacher = DepthwiseNet()
    with torch.no_grad():
        y = teacher(x)
    model = DepthwiseNet()
    model.load_state_dict(teacher.state_dict())

    def evaluate(m: nn.Module) -> float:
        with torch.no_grad():
            return -float(F.mse_loss(m(x), y))

    return Workload(name="depthwise", model=model, example_inputs=DepthwiseNet.example_inputs(),
                    train_batches=lambda g: random_batches(x, y, 8, g), calibration_batches=[(x[:16], y[:16])],
                    loss_fn=F.mse_loss, evaluate=evaluate, metric="neg_mse", higher_is_better=True)


def test_cheapest_allowed_map_is_seeded_when_there_is_no_all_int4_baseline() -> None:
    seen: list[TrialOutcome] = []
    spec = SearchSpec(workload="depthwise", profile="npu-int4", n_trials=3, qat_steps=1, reevaluate_front=0,
                      seed_with_sensitivity=False)
    result = run_search(spec, workload=_depthwise_workload(), observer=Hooks(trial_done=lambda o, p: seen.append(o)))
    choices = {layer.fqn: layer.choices for layer in result.layers}
    assert choices["dw"] == ("int8", "fp16")  # the NPU has no int4 depthwise kernels
    assert "w4a8" in choices["grouped"]  # the default formats follow the profile, split ones included
    assert [o.source for o in seen] == ["baseline", "baseline", "cheapest"]  # all-int8, all-fp16, cheapest
    assert dict(seen[2].assignment) == {"pw": "int8", "dw": "int8", "grouped": "int4", "dw_mult": "int8"}
    assert seen[2].costs["bitops"] == min(o.costs["bitops"] for o in result.trials)


def test_search_stops_once_the_cheapest_map_scores_the_metric_best() -> None:
    workload = load_workload("digits", TINY)
    workload.metric_best = 1.0
    spec = SearchSpec(workload="digits", n_trials=20, formats=("int4", "int8", "fp16"), reevaluate_front=0)
    result = run_search(spec, workload=workload, evaluator=lambda a, s: 1.0)  # every map saturates
    # all-int8 then all-int4 (the cheapest map): the front cannot change after it
    assert len(result.trials) == 2 and result.stop_reason.startswith("the cheapest map")
    assert [p.number for p in result.front] == [result.trials[1].number]
    # without a known best the same search runs its trials
    workload.metric_best = None
    assert len(run_search(spec.model_copy(update={"n_trials": 5}), workload=workload,
                          evaluator=lambda a, s: 1.0).trials) == 5


def test_search_stops_when_the_space_is_exhausted() -> None:
    spec = SearchSpec(workload="digits", workload_options=TINY, n_trials=50, formats=("int4", "int8"),
                      reevaluate_front=0, seed_with_sensitivity=False, sampler="random")
    result = run_search(spec, evaluator=lambda a, s: float(list(a.values()).count("int8")))
    assert len(result.trials) == 8 and result.stop_reason == "every map in the space was tried"


def test_dominated_formats_are_sampled_rarely(tmp_path: Path) -> None:
    bonus = {"int4": 0.0, "int8": 1.0, "fp16": 1.0}  # fp16 costs more and is no better than int8
    spec = SearchSpec(workload="digits", workload_options=TINY, n_trials=20, formats=("int4", "int8", "fp16"),
                      reevaluate_front=0, seed_with_sensitivity=True, sampler="random", check_front_neighbours=False,
                      storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="thin")
    run_search(spec, evaluator=lambda a, s: sum(bonus[f] for f in a.values()))
    assert spec.storage is not None
    study = optuna.load_study(study_name="thin", storage=spec.storage)
    assert study.user_attrs["mixq:dominated"] == {fqn: {"fp16": "int8"} for fqn in study.trials[0].params}
    # every sampled trial, repeats served from the cache included (what the sampler proposed)
    values = [v for t in study.trials if t.user_attrs.get("source") == "sampler" for v in t.params.values()]
    assert len(values) >= 30
    # a random sampler alone gives fp16 a third of the slots; thinned it keeps about a tenth of that
    assert values.count("fp16") / len(values) < 0.12, values.count("fp16") / len(values)


def test_noise_merge_leaves_a_dearer_point_within_spread_off_the_front() -> None:
    # the numbers: all-fp16 +0.015 dB over all-int8, spread 0.024 dB
    noise = {0: 0.0, 1000: 0.03, 2000: -0.03}

    def evaluate(assignment: Mapping[str, str], seed: int) -> float:
        fp16 = "fp16" in assignment.values()
        return (25.625 if fp16 else 25.61) + (noise[seed] if fp16 else noise[seed] / 3)

    spec = SearchSpec(workload="digits", workload_options=TINY, n_trials=2, formats=("int8", "fp16"),
                      reevaluate_front=2, seed_with_sensitivity=False)
    result = run_search(spec, evaluator=evaluate)
    fp16 = next(o for o in result.trials if "fp16" in o.assignment.values())
    assert fp16.n_evaluations == 3 and fp16.quality == pytest.approx(25.625)
    assert [p.number for p in result.front] != [] and fp16.number not in [p.number for p in result.front]
    assert result.merged_within_noise == [fp16.number]
    # a real gain stays on the front
    result = run_search(spec, evaluator=lambda a, s: evaluate(a, s) + (0.3 if "fp16" in a.values() else 0.0))
    assert len(result.front) == 2 and result.merged_within_noise == []

"""The schedule and budget as pure functions (search.study.budget): literals in, work out."""

from __future__ import annotations

from search import SearchSpec
from search.study.budget import (
    Done,
    NewTrial,
    Promote,
    StudyCounts,
    Wait,
    fits,
    next_work,
    reevaluation_reserve,
    trial_budget,
    trials_left,
)


def spec(**kw: object) -> SearchSpec:
    return SearchSpec(workload="digits", **{"n_trials": 10, "qat_steps": 100, **kw})


def counts(completed: int = 0, running: int = 0, *, distinct: int | None = None, trials: int | None = None,
           used: int = 0, promotion: tuple[int, int] | None = None) -> StudyCounts:
    return StudyCounts(completed, running, completed if distinct is None else distinct,
                       completed + running if trials is None else trials, used, promotion)


def test_a_trial_budget_runs_to_n_trials_then_stops_or_waits_for_the_running() -> None:
    s = spec()
    assert next_work(s, counts(3), space_size=100, elapsed_s=0) == NewTrial()
    assert next_work(s, counts(9, 1), space_size=100, elapsed_s=0) == Wait()  # the last slot is taken
    assert next_work(s, counts(10), space_size=100, elapsed_s=0) == Done("budget")


def test_the_space_and_the_clock_end_a_search() -> None:
    assert next_work(spec(), counts(5), space_size=5, elapsed_s=0) == Done("every map in the space was tried")
    assert next_work(spec(), counts(4, 1, distinct=5), space_size=5, elapsed_s=0) == Wait()
    assert next_work(spec(timeout_s=60), counts(1), space_size=100, elapsed_s=61) == Done("timeout")
    assert next_work(spec(), counts(1), space_size=100, elapsed_s=0, metric_at_best=True) == Done(
        "the cheapest map scores the metric's best value")
    # repeats and failures cannot loop for ever: 4x the budget plus 10 trials at most
    assert next_work(spec(), counts(2, trials=50), space_size=100, elapsed_s=0) == Done(
        "too many repeated or failed trials")


def test_a_step_budget_keeps_a_reserve_for_the_front_and_promotes_what_fits() -> None:
    s = spec(budget_qat_steps=2000, fidelity_rungs=(1, 3), reevaluate_front=2)
    # 2 neighbours x 2 seeds x 300 steps = 1200, capped at a quarter of the budget
    assert reevaluation_reserve(s) == 500
    assert fits(s, 1400, 100, 500) and not fits(s, 1401, 100, 500)
    assert next_work(s, counts(3, used=300, promotion=(1, 1)), space_size=100, elapsed_s=0) == Promote(1, 1)
    # a promotion of 300 steps no longer fits: a first-rung trial of 100 still does
    assert next_work(s, counts(3, used=1300, promotion=(1, 1)), space_size=100, elapsed_s=0) == NewTrial()
    assert next_work(s, counts(3, used=1450), space_size=100, elapsed_s=0) == Done("budget")
    assert trials_left(s, 1000, 3, 0) == 5  # (2000 - 500 - 1000) // 100


def test_the_trial_budget_shrinks_with_the_time_left() -> None:
    assert trial_budget(spec(), [], 0.0) == 10
    assert trial_budget(spec(budget_qat_steps=450), [], 0.0) == 4
    # 3 trials took 10 s each; 30 s of the 60 s are left: 3 more at most
    assert trial_budget(spec(timeout_s=60), [10.0, 10.0, 10.0], 30.0) == 6
    assert trials_left(spec(), 0, 4, 10) == 6

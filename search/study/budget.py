"""What a search process does next, and what the budget still affords: pure functions of the spec,
a few counts read from the study's ledger, and the clock (no study, no training), tested with
literals in ``tests/search/test_budget.py``.

The budget is ``n_trials`` first-rung trials, or ``budget_qat_steps`` QAT steps over every rung and
re-evaluation; ``timeout_s`` bounds either in wall time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from search.spec import SearchSpec


@dataclass(frozen=True)
class NewTrial:
    """Train a new map at the first rung."""


@dataclass(frozen=True)
class Promote:
    """Train trial ``number``'s map again, longer, at ``rung``."""

    number: int
    rung: int


@dataclass(frozen=True)
class Wait:
    """The budget is held by trials running elsewhere (they may finish, or turn out stale)."""


@dataclass(frozen=True)
class Done:
    """Stop searching, for ``reason``."""

    reason: str


Work = NewTrial | Promote | Wait | Done  # one unit of a search process's loop
TRIAL, WAIT = NewTrial(), Wait()


@dataclass(frozen=True)
class StudyCounts:
    """What :func:`next_work` needs of the study's ledger."""

    completed: int  # first-rung trials that trained (cached repeats excluded)
    running: int  # trials running anywhere
    distinct_maps: int  # maps with a completed trial
    trials: int  # every trial, failed and repeated ones included
    qat_steps_used: int  # every rung and re-evaluation, claimed runs included
    promotion: tuple[int, int] | None = None  # (trial number, rung) the ledger would promote next


def steps_at(spec: SearchSpec, rung: int) -> int:
    """QAT steps of one run at ``rung``."""
    return spec.qat_steps * spec.rungs[rung]


def reevaluation_reserve(spec: SearchSpec) -> int:
    """QAT steps a budgeted search keeps for re-evaluating the front: the extra seeds of two
    neighbours at the highest rung (the usual adaptive case), at most a quarter of the budget."""
    budget = spec.budget_qat_steps
    if budget is None or spec.reevaluate_front == 0:
        return 0
    return min(2 * spec.reevaluate_front * steps_at(spec, len(spec.rungs) - 1), budget // 4)


def fits(spec: SearchSpec, qat_steps_used: int, qat_steps: int, reserve: int = 0) -> bool:
    """Does a run of ``qat_steps`` fit in a QAT-step budget (always, without one)?"""
    budget = spec.budget_qat_steps
    return budget is None or qat_steps_used + qat_steps <= budget - reserve


def trial_budget(spec: SearchSpec, durations_s: Sequence[float], elapsed_s: float) -> int:
    """How many first-rung trials the budget affords: ``n_trials``, the QAT-step budget, or what is
    left of ``timeout_s`` at the mean of ``durations_s`` (the trials trained so far)."""
    n_trials = spec.n_trials
    if spec.budget_qat_steps is not None and spec.qat_steps > 0:
        n_trials = spec.budget_qat_steps // spec.qat_steps
    if spec.timeout_s is not None and durations_s:
        per_trial = sum(durations_s) / len(durations_s)
        left_s = spec.timeout_s - elapsed_s
        n_trials = min(n_trials, len(durations_s) + int(max(left_s, 0.0) / max(per_trial, 1e-3)))
    return n_trials


def trials_left(spec: SearchSpec, qat_steps_used: int, completed: int, budget_trials: int) -> int:
    """First-rung trials the budget still affords: of a QAT-step budget, what is left after every
    rung and the re-evaluation reserve; else of ``budget_trials``, those not trained yet."""
    budget = spec.budget_qat_steps
    if budget is not None:
        return max(0, (budget - reevaluation_reserve(spec) - qat_steps_used) // max(steps_at(spec, 0), 1))
    return max(0, budget_trials - completed)


def progress_total(spec: SearchSpec) -> int:
    """The trial count a progress bar runs to."""
    budget = spec.budget_qat_steps
    return spec.n_trials if budget is None else max(1, budget // steps_at(spec, 0))


def next_work(spec: SearchSpec, counts: StudyCounts, *, space_size: int, elapsed_s: float,
              metric_at_best: bool = False) -> Work:
    """What this process does next: promote a trial to a rung, run a new map at the first rung,
    wait (the budget is taken by trials running elsewhere, which may finish or turn out stale), or
    stop with a reason."""
    if spec.timeout_s is not None and elapsed_s >= spec.timeout_s:
        return Done("timeout")
    if metric_at_best:
        return Done("the cheapest map scores the metric's best value")
    reserve = reevaluation_reserve(spec)
    used = counts.qat_steps_used
    if counts.promotion is not None and fits(spec, used, steps_at(spec, counts.promotion[1]), reserve):
        return Promote(number=counts.promotion[0], rung=counts.promotion[1])
    limit = spec.n_trials if spec.budget_qat_steps is None else spec.budget_qat_steps // steps_at(spec, 0)
    hard_cap = 4 * limit + 10  # repeats and failures cannot loop forever
    if counts.distinct_maps >= space_size:
        return WAIT if counts.running else Done("every map in the space was tried")
    if counts.trials >= hard_cap:
        return Done("too many repeated or failed trials")
    if counts.completed >= limit:
        return WAIT if counts.running and spec.budget_qat_steps is not None else Done("budget")
    if spec.budget_qat_steps is None:
        return TRIAL if counts.completed + counts.running < limit else WAIT
    if fits(spec, used, steps_at(spec, 0), reserve):
        return TRIAL
    return WAIT if counts.running else Done("budget")

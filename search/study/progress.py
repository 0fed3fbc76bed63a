"""A search process's progress: its phase, the QAT it trained (seconds per step, for the ETA), and the
:class:`~search.results.SearchProgress` it reports."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from optuna.trial import FrozenTrial

from search.results import SearchPhase, SearchProgress
from search.spec import SearchSpec
from search.study.budget import progress_total, steps_at
from search.study.ledger import Ledger


def front_size_estimate(completed: Sequence[FrozenTrial], higher_is_better: bool) -> int:
    """Points on the (quality, first cost) front of the trials' stored values, O(n log n) and without
    building outcomes (no qconfig parsing): it runs on every progress report.  Best quality first, a
    point is on it if it costs less than every better one."""
    sign = -1.0 if higher_is_better else 1.0
    vectors = sorted((sign * t.values[0], t.values[1]) for t in completed if t.values and len(t.values) > 1)
    size, cheapest = 0, float("inf")
    for _, cost in vectors:
        if cost < cheapest:
            size, cheapest = size + 1, cost
    return size


class ProgressClock:
    """Phase, elapsed time and ETA of one search process; ``report`` hears every change of phase."""

    def __init__(self, spec: SearchSpec, higher_is_better: bool,
                 report: Callable[[SearchProgress], None] | None) -> None:
        self.spec = spec
        self.higher_is_better = higher_is_better
        self.report = report
        self.phase = SearchPhase.FP32
        self.started = time.monotonic()
        # this process's trainings (trials, promotions, re-evaluations): seconds per QAT step
        self.trained_s = 0.0
        self.trained_steps = 0

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def count_training(self, started: float, qat_steps: int) -> None:
        """A training that began at ``started`` (``time.monotonic()``) ran ``qat_steps`` steps."""
        self.trained_s += time.monotonic() - started
        self.trained_steps += max(qat_steps, 1)

    def progress(self, ledger: Ledger, message: str = "") -> SearchProgress:
        completed = ledger.completed()
        values = [t.values[0] for t in completed if t.values]
        best = None if not values else max(values) if self.higher_is_better else min(values)
        total = progress_total(self.spec)
        return SearchProgress(len(completed), total, best, message, ledger.qat_steps_used,
                              self.spec.budget_qat_steps, self.phase, self.elapsed_s(), self.eta_s(ledger, total))

    def eta_s(self, ledger: Ledger, total: int) -> float | None:
        """Time left: this process's seconds per QAT step times the steps still to train: the budget
        left (in QAT steps), or the trials left plus ``reevaluate_front`` extra runs per point of the
        current front.  None until this process has trained something."""
        if self.phase is SearchPhase.DONE:
            return 0.0
        if not self.trained_steps:
            return None
        budget = self.spec.budget_qat_steps
        if budget is not None:
            steps_left = max(budget - ledger.qat_steps_used, 0)
        else:
            completed = ledger.completed()
            trials_left = max(total - len(completed), 0)
            front_size = front_size_estimate(completed, self.higher_is_better)
            steps_left = (trials_left + self.spec.reevaluate_front * front_size) * steps_at(self.spec, 0)
        return self.trained_s / self.trained_steps * steps_left

    def tell(self, ledger: Ledger, message: str) -> None:
        """Report ``message`` (with the counts of ``ledger``)."""
        if self.report is not None:
            self.report(self.progress(ledger, message))

    def set_phase(self, phase: SearchPhase, ledger: Callable[[], Ledger], message: str = "") -> None:
        if phase is not self.phase:
            self.phase = phase
            if self.report is not None:
                self.report(self.progress(ledger(), message))

"""A :class:`search.SearchObserver` for tests: each hook calls the function given for it (if any)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from search import SearchObserver, SearchProgress, SearchResult, TrialFailure, TrialOutcome


class Hooks(SearchObserver):
    def __init__(self, *, trial_done: Callable[[TrialOutcome, SearchProgress], Any] | None = None,
                 trial_failed: Callable[[TrialFailure], Any] | None = None,
                 progress: Callable[[SearchProgress], Any] | None = None,
                 started: Callable[[SearchResult], Any] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> None:
        self._trial_done, self._trial_failed, self._progress = trial_done, trial_failed, progress
        self._started, self._should_stop = started, should_stop

    def started(self, result: SearchResult) -> None:
        if self._started is not None:
            self._started(result)

    def trial_done(self, outcome: TrialOutcome, progress: SearchProgress) -> None:
        if self._trial_done is not None:
            self._trial_done(outcome, progress)

    def trial_failed(self, failure: TrialFailure) -> None:
        if self._trial_failed is not None:
            self._trial_failed(failure)

    def progress(self, progress: SearchProgress) -> None:
        if self._progress is not None:
            self._progress(progress)

    def should_stop(self) -> bool:
        return self._should_stop() if self._should_stop is not None else False


class Forward(SearchObserver):
    """Passes every hook on to ``inner`` (the worker's observer); a test overrides the hook it watches."""

    def __init__(self, inner: SearchObserver) -> None:
        self.inner = inner

    def started(self, result: SearchResult) -> None:
        self.inner.started(result)

    def trial_done(self, outcome: TrialOutcome, progress: SearchProgress) -> None:
        self.inner.trial_done(outcome, progress)

    def trial_failed(self, failure: TrialFailure) -> None:
        self.inner.trial_failed(failure)

    def progress(self, progress: SearchProgress) -> None:
        self.inner.progress(progress)

    def should_stop(self) -> bool:
        return self.inner.should_stop()

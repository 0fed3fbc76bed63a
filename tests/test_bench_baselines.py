"""bench/baselines.py: AMP's greedy path and the long-fidelity cache (the selection programs are
search.study.seeds', tested in tests/search/test_seeds.py)."""

from __future__ import annotations

import pytest

from bench.baselines import greedy_path


def test_greedy_path_flips_least_drop_per_saving_first() -> None:
    path = greedy_path({"a": 5.0, "b": 1.0, "c": 2.5}, {"a": 4.0, "b": 2.0, "c": 3.0})
    assert path == [[], ["b"], ["b", "c"], ["b", "c", "a"]]


class _FakeSetup:
    workload = None

    def ratio(self, assignment: dict[str, str]) -> float:
        return sum(v == "int4" for v in assignment.values()) / len(assignment)


def test_measure_trains_only_the_seeds_the_cache_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.baselines as baselines

    calls: list[tuple[int, int]] = []

    class Outcome:
        def __init__(self, quality: float) -> None:
            self.quality = quality

    def fake_run_trial(workload: object, assignment: dict[str, str], *, qat_steps: int, seed: int) -> Outcome:
        calls.append((qat_steps, seed))
        return Outcome(10.0 * qat_steps + seed)

    monkeypatch.setattr(baselines, "run_trial", fake_run_trial)
    setup = _FakeSetup()
    cache: dict[str, list[float]] = {}
    a = {"x": "int8", "y": "int4"}
    assert baselines.measure(setup, a, 2, 5, cache) == [50.0, 51.0]  # type: ignore[arg-type]
    assert baselines.measure(setup, a, 3, 5, cache) == [50.0, 51.0, 52.0]  # type: ignore[arg-type]
    assert baselines.measure(setup, a, 1, 5, cache) == [50.0]  # type: ignore[arg-type]
    assert baselines.measure(setup, a, 1, 7, cache) == [70.0]  # type: ignore[arg-type]  # steps are in the key
    assert calls == [(5, 0), (5, 1), (5, 2), (7, 0)]

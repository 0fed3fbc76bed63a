"""bench/baselines.py: AMP's greedy path, the long-fidelity cache and the real tools' picks files (the selection programs are
search.study.seeds', tested in tests/search/test_seeds.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import bench.baselines as baselines_t
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


# -- the real tools' methods (aimet-amp, nncf-hawq): their plumbing, without their virtual environments --------
def _deep_setup(space: str = "int8-int4") -> baselines_t.Setup:
    from search import CostObjective, load_profile
    from search.quant.cost import model_costs
    from search.workloads import builtin_layer_graph

    graph = builtin_layer_graph("denoise-deep", {"width": 16})  # meta device: nothing built or trained
    int8 = {f: "int8" for f in graph.fqns}
    bitops = model_costs((CostObjective.BITOPS,), load_profile("generic"), graph, int8)["bitops"]
    return baselines_t.Setup(None, graph, graph.fqns[1:-1], bitops, (0.4, 0.6, 0.8), {"width": 16},  # type: ignore[arg-type]
                             baselines_t.space_formats(space), space)


def _picks_file(path: Path, picks: dict[str, dict[str, str]]) -> Path:
    path.write_text(json.dumps({"method": "aimet-amp", "tool": "aimet-torch 2.42.0", "wall_s": 12.5, "picks": picks,
                                "path": [{"bitops_ratio": 0.75, "tool_score": 24.2, "changes": {}}],
                                "note": "crafted"}))
    return path


def test_space_formats_are_the_profiles_default_or_int8_int4() -> None:
    assert baselines_t.space_formats("int8-int4") == ("int8", "int4")
    assert set(baselines_t.space_formats("default")) == {"int4", "int8", "w4a8", "w8a16", "fp16"}
    with pytest.raises(ValueError, match="space: one of int8-int4, default"):
        baselines_t.space_formats("int2")


def test_a_peer_picks_file_becomes_a_methods_picks(tmp_path: Path) -> None:
    setup = _deep_setup("default")
    free = setup.free
    low = setup.with_changes({f: "int4" for f in free})  # 0.25 x int8 inside
    mid = setup.with_changes({f: "w4a8" for f in free[:10]})
    path = _picks_file(tmp_path / "p.json", {"0.4": low, "0.8": mid, "0.5": low})  # 0.5: not a budget here
    result = baselines_t.read_peer_picks(path, setup, "aimet-amp")
    assert result.name == "aimet-amp" and result.wall_s == 12.5
    assert result.picks == {0.4: low, 0.8: mid}
    assert setup.ratio(mid) <= 0.8 < setup.ratio(setup.full([]))
    assert result.note == "aimet-torch 2.42.0: crafted"
    assert result.trials == [{"source": "aimet-amp", "bitops_ratio": 0.75, "tool_score": 24.2, "changes": {}}]


@pytest.mark.parametrize(("change", "message"), [
    ({"body.5": "w4a8"}, r"picks\.0\.8: formats \{'body\.5': 'w4a8'\} are not in the space \(int8, int4\)"),
    ({"body.0": "int4"}, r"picks\.0\.8: first and last layer must stay int8"),
    ({f"body.{i}": "int8" for i in (2, 5, 8, 11, 14, 17, 20, 23)},  # back to all-int8
     r"picks\.0\.8: 1\.0000 x all-int8's BitOPs, over the budget 0\.8"),
    ({"body.99": "int4"}, r"picks\.0\.8: a map of every layer"),
])
def test_a_bad_peer_pick_is_refused_naming_the_budget(tmp_path: Path, change: dict[str, str], message: str) -> None:
    setup = _deep_setup("int8-int4")
    pick = setup.with_changes({f: "int4" for f in setup.free[:8]}) | change
    path = _picks_file(tmp_path / "p.json", {"0.8": pick})
    with pytest.raises(baselines_t.PeerError, match=message):
        baselines_t.read_peer_picks(path, setup, "aimet-amp")


def test_a_missing_peer_venv_skips_the_method_with_how_to_install(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    setup = _deep_setup("int8-int4")
    picks = tmp_path / "picks.json"
    assert baselines_t.run_peer(setup, "aimet-amp", tmp_path / "peers", picks, reuse=False) is None
    out = capsys.readouterr().out
    assert f"skipped aimet-amp: no virtual environment at {tmp_path / 'peers' / 'aimet'}" in out
    assert f"bash bench/peers/setup.sh --root {tmp_path / 'peers'} aimet" in out
    monkeypatch.setitem(baselines_t.PEERS, "only-default", ("nncf", "bench.peers.nncf_hawq", (), ("default",)))
    assert baselines_t.run_peer(setup, "only-default", tmp_path, picks, reuse=False) is None
    assert "skipped only-default: it runs in the space(s) default, not 'int8-int4'" in capsys.readouterr().out
    # an earlier run's picks file is read without the tool (--reuse-peer-picks)
    pick = setup.full(list(setup.free))
    _picks_file(picks, {"0.4": pick})
    result = baselines_t.run_peer(setup, "aimet-amp", tmp_path / "peers", picks, reuse=True)
    assert result is not None and result.picks == {0.4: pick}


def test_peer_picks_are_the_tools_best_score_under_each_budget() -> None:
    from bench.peers._common import picks_under_budgets

    a, b, c = {"x": "int4"}, {"x": "w4a8"}, {"x": "int8"}
    path = [(0.3, 18.0, a), (0.55, 21.0, b), (0.5, 22.0, c), (0.9, 25.0, c)]
    assert picks_under_budgets(path, [0.25, 0.4, 0.6, 0.8]) == {0.4: a, 0.6: c, 0.8: c}


def test_nncf_node_names_map_to_fqns_and_old_trials_still_read() -> None:
    from bench.peers.nncf_hawq import node_fqn

    assert node_fqn("DnCNN/Sequential[body]/NNCFConv2d[14]/conv2d_0") == "body.14"
    setup = _deep_setup("default")
    assert baselines_t.trial_map(setup, {"int4": ["body.2"]}) == setup.with_changes({"body.2": "int4"})
    assert baselines_t.trial_map(setup, {"int4": [], "changes": {"body.5": "w4a8"}})["body.5"] == "w4a8"

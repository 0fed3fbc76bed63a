"""mixq's search against the methods users would otherwise pick, in one harness, on ``denoise-deep``.

Every method searches the same space (first and last layer int8, every other layer int8 or int4 -- or
with ``--space default`` any of the profile's default formats -- BitOPs as the cost) with the same
wall-clock budget on the same machine, then names one map per BitOPs budget (its best under that budget
by its own estimate).  Every named map is then measured
the same way: ``search.run_trial`` at the long fidelity with several seeds.  Methods:

* ``amp`` -- AIMET AMP style: PTQ per-layer int4 drop (:func:`search.study.sensitivity.ptq_sensitivity`),
  then a greedy path flipping layers to int4, least drop per BitOPs saved first.
* ``hawq`` -- HAWQ-V3 style: Hutchinson estimate of each layer's Hessian trace (per weight) times the
  weight quantization perturbation ``||Q(W) - W||^2``, then an integer program per budget
  (``scipy.optimize.milp``).
* ``autoquantize`` -- ModelOpt AutoQuantize style: output-space Fisher score
  (:func:`search.study.sensitivity.fisher_sensitivity`), then a linear program per budget (relaxed, then
  rounded within the budget).
* ``random`` / ``tpe`` -- ``run_search`` with no seeding, sampler random / TPE, short QAT.
* ``mixq`` -- ``run_search`` as shipped (seeded with baselines, the sensitivity sweep or the
  Fisher-proxy greedy path where the sweep does not fit the budget, and the proxy programs' maps;
  automatic ``fidelity_rungs``: [1, 3] with eta 2 here, 15 free layers under a time budget).
* ``mixq-1rung`` -- the same with one rung (every map at the search's QAT steps): ``mixq`` before
  automatic rungs.
* ``mixq-mf`` / ``mixq-mf-eta2`` -- the same with ``fidelity_rungs`` (``--mixq-rungs``): the top
  third / half of the first rung retrained longer within the same wall budget.

* ``aimet-amp`` / ``aimet-amp-binary`` -- the real AIMET AMP (aimet-torch 2.42.0,
  ``aimet_torch.mixed_precision.choose_mixed_precision``; phase 2 brute force / binary search), candidates
  W8A8 / W4A4, and W4A8 too with ``--space default``: ``bench/peers/aimet_amp.py``.
* ``nncf-hawq`` -- the real NNCF 2.19.0 HAWQ precision initializer (legacy torch API), bits [4, 8],
  activations following the weights (so int8/int4 maps in either space): ``bench/peers/nncf_hawq.py``.

The real tools run by subprocess in their own virtual environments (``bash bench/peers/setup.sh``, outside
the repository, ``--peers-dir`` / ``MIXQ_PEERS_DIR``; not dependencies of mixq, not run in CI); a method
whose environment is missing is skipped with a message saying how to create it.  Each writes its picks file
(``bench/cache/baselines_<name>_<method>_picks.json``; ``--reuse-peer-picks`` reads it instead of running the
tool again); every pick's BitOPs are mixq's own (``search.quant.cost``), so every method meets the same budget.

``--space int8-int4`` (default, the space of the earlier results) gives every method int8 / int4 on the free
layers; ``--space default`` the profile's default formats, as a search given none (int4, int8, w4a8, w8a16,
fp16): ``amp`` greedily lowers a layer to any cheaper format (least PTQ drop per BitOPs saved), ``hawq`` and
``autoquantize`` score every format, ``mixq`` and the samplers search with ``formats`` unset.

A method's picks are its best trial under each budget by its own estimate (a search: the trial's
score at the highest rung it reached).  The report also scores every pick at the search fidelity
and measures mixq's runners-up at the long one, to say why a pick won or lost.

Run from the repository root (the full configuration; hours on 2 cores)::

    python -m bench.baselines --budget-s 1800 --search-qat-steps 60 --long-qat-steps 300 --seeds 3

The medium run recorded in ``bench/results/baselines/denoise-deep.md`` (about 30 minutes on one core)::

    python -m bench.baselines --budget-s 240 --search-qat-steps 40 --long-qat-steps 200 --seeds 3

The int8/int4 space with the real tools, at the medium run's fidelity but one seed (a reduced run)::

    python -m bench.baselines --space int8-int4 --name denoise-deep_peers --keep --methods aimet-amp nncf-hawq \
        --budget-s 240 --search-qat-steps 40 --long-qat-steps 200 --seeds 1

``--name`` is the setting: the report, plot and numbers go to ``bench/results/baselines/<name>.{md,png,json}``
(default ``denoise-deep``; ``--name denoise-deep_seed1 --search-seed 1`` for another search seed).
Long-fidelity runs are kept in ``bench/cache/baselines_<name>_runs.json`` (deterministic on CPU with one
thread); ``--methods X --keep`` adds or reruns method X and keeps the others from ``<name>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.report import (
    code_version,
    markdown_table,
    mean_std,
    repo_relative,
    result_path,
    runs_cache,
    setting_name,
    write_report,
)
from search import CostObjective, SearchSpec, discover_layers, load_profile, load_workload, run_search, run_trial
from search.quant.cost import model_costs
from search.quant.layers import LayerGraph
from search.study.pareto import assignment_key, hypervolume_2d, objective_vector
from search.study.seeds import select_formats
from search.study.sensitivity import fisher_sensitivity, hessian_sensitivity, ptq_sensitivity, scores_by_layer
from search.workloads import Workload
from search.workloads.denoise_deep import noisy_input_psnr

FORMATS = ("int8", "int4")
Assignment = dict[str, str]  # fqn -> format name, every layer
SPACES = ("int8-int4", "default")  # --space: int8/int4 only, or the profile's default formats (split ones too)
# the real tools, each run by its script in its own virtual environment (bench/peers/setup.sh): method ->
# (venv folder under --peers-dir, module, extra arguments, the spaces it runs in)
PEERS: dict[str, tuple[str, str, tuple[str, ...], tuple[str, ...]]] = {
    "aimet-amp": ("aimet", "bench.peers.aimet_amp", ("--phase2", "bruteforce"), SPACES),
    "aimet-amp-binary": ("aimet", "bench.peers.aimet_amp", ("--phase2", "binary"), SPACES),
    "nncf-hawq": ("nncf", "bench.peers.nncf_hawq", (), SPACES),
}
DEFAULT_PEERS_DIR = Path("/work/peers")


def space_formats(space: str) -> tuple[str, ...]:
    """The formats a free layer may take in ``space``: int8/int4, or (``default``) every format the generic
    profile runs except fp32, as a search given no ``formats`` (int4, int8, w4a8, w8a16, fp16)."""
    if space == "int8-int4":
        return FORMATS
    if space == "default":
        return tuple(name for name in load_profile("generic").formats if name != "fp32")
    raise ValueError(f"space: one of {', '.join(SPACES)}, got {space!r}")


# -- AMP's greedy phase: numbers in, numbers out ---------------------------------------------------
def greedy_path(drop: Mapping[str, float], saving: Mapping[str, float]) -> list[list[str]]:
    """AMP's greedy phase: prefixes of the layers in order of quality drop per cost saved (least first)."""
    order = sorted(drop, key=lambda f: max(drop[f], 0.0) / max(saving[f], 1e-12))
    return [order[:k] for k in range(len(order) + 1)]


# -- the harness ---------------------------------------------------------------------------------
@dataclass
class Setup:
    workload: Workload
    graph: LayerGraph
    free: tuple[str, ...]  # layers a method may set (first and last are int8)
    int8_bitops: float
    budgets: tuple[float, ...]  # BitOPs ratios to all-int8
    options: dict[str, object]
    formats: tuple[str, ...] = FORMATS  # a free layer's formats (--space)
    space: str = "int8-int4"

    def full(self, int4_layers: Sequence[str]) -> Assignment:
        return {f: "int4" if f in int4_layers else "int8" for f in self.graph.fqns}

    def with_changes(self, changes: Mapping[str, str]) -> Assignment:
        """Every layer int8 but those ``changes`` names (fqn -> format)."""
        return {f: changes.get(f, "int8") for f in self.graph.fqns}

    def ratio(self, assignment: Mapping[str, str]) -> float:
        bitops = model_costs((CostObjective.BITOPS,), load_profile("generic"), self.graph, assignment)["bitops"]
        return bitops / self.int8_bitops


@dataclass
class MethodResult:
    name: str
    wall_s: float
    picks: dict[float, Assignment] = field(default_factory=dict)  # budget -> map
    note: str = ""
    trials: list[dict[str, Any]] = field(default_factory=list)  # a search's trials, in order


def layer_bitops(setup: Setup) -> dict[str, dict[str, float]]:
    profile = load_profile("generic")
    out: dict[str, dict[str, float]] = {}
    for fqn in setup.free:
        out[fqn] = {}
        for fmt in setup.formats:
            base = setup.full([])
            base[fqn] = fmt
            out[fqn][fmt] = model_costs((CostObjective.BITOPS,), profile, setup.graph, base)["bitops"]
    return out


def picks_from_program(
    setup: Setup, scores: Mapping[str, Mapping[str, float]], integer: bool
) -> dict[float, Assignment]:
    costs = layer_bitops(setup)
    fixed = setup.int8_bitops - sum(costs[f]["int8"] for f in setup.free)  # first and last layer
    picks = {}
    for budget in setup.budgets:
        chosen = select_formats(scores, costs, budget * setup.int8_bitops - fixed, integer=integer)
        if chosen is not None:
            picks[budget] = {f: chosen.get(f, "int8") for f in setup.graph.fqns}
    return picks


def run_amp(setup: Setup) -> MethodResult:
    """AMP style: PTQ drop of each (layer, cheaper format), then the greedy path from all-int8, each step the
    move (a layer to a format cheaper than its current one) with the least added drop per BitOPs saved; per
    budget the first map on the path that fits.  In the int8/int4 space: ``greedy_path`` (one move per layer)."""
    started = time.monotonic()
    costs = layer_bitops(setup)
    cheaper = [fmt for fmt in setup.formats if costs[setup.free[0]][fmt] < costs[setup.free[0]]["int8"]]
    records = ptq_sensitivity(setup.workload, setup.free, tuple(cheaper))
    drop = {(r.fqn, r.format): r.score for r in records}
    path: list[Assignment] = [setup.full([])]
    current = {f: "int8" for f in setup.free}
    while True:
        moves = [(max(drop[(f, fmt)] - drop.get((f, current[f]), 0.0), 0.0)
                  / max(costs[f][current[f]] - costs[f][fmt], 1e-12), i, j)  # ties: execution order
                 for i, f in enumerate(setup.free) for j, fmt in enumerate(cheaper)
                 if costs[f][fmt] < costs[f][current[f]]]
        if not moves:
            break
        _, i, j = min(moves)
        fqn, fmt = setup.free[i], cheaper[j]
        current[fqn] = fmt
        path.append(setup.with_changes(current))
    picks = {}
    for budget in setup.budgets:  # the fewest moves that meet the budget
        fitting = [a for a in path if setup.ratio(a) <= budget + 1e-9]
        if fitting:
            picks[budget] = fitting[0]
    return MethodResult("amp", time.monotonic() - started, picks)


def run_hawq(setup: Setup, samples: int) -> MethodResult:
    started = time.monotonic()
    records = hessian_sensitivity(setup.workload, setup.free, setup.formats, samples=samples)
    scores = scores_by_layer(records)
    picks = picks_from_program(setup, scores, integer=True)
    return MethodResult("hawq", time.monotonic() - started, picks)


def run_autoquantize(setup: Setup) -> MethodResult:
    started = time.monotonic()
    records = fisher_sensitivity(setup.workload, setup.free, setup.formats)
    scores = scores_by_layer(records)
    picks = picks_from_program(setup, scores, integer=False)
    return MethodResult("autoquantize", time.monotonic() - started, picks)


def run_sampler(setup: Setup, name: str, budget_s: float, qat_steps: int, rungs: Sequence[int] | None = (1,),
                eta: int | None = 3, seed: int = 0) -> MethodResult:
    seeded = name.startswith("mixq")
    spec = SearchSpec(
        workload="denoise-deep", workload_options=setup.options,
        formats=() if setup.space == "default" else setup.formats, n_trials=10_000,  # (): as shipped
        timeout_s=budget_s, qat_steps=qat_steps, sampler="tpe" if name != "random" else "random",
        seed_with_baselines=seeded, seed_with_sensitivity=seeded, check_front_neighbours=seeded, reevaluate_front=0,
        fidelity_rungs=None if rungs is None else tuple(rungs), promotion_eta=eta, seed=seed,
    )
    started = time.monotonic()
    if "-proxy" in name:  # an experiment: the Fisher-ordered greedy path instead of the one-layer QAT sweep
        from unittest import mock

        from search.study.seeding import SeedPlan

        with mock.patch.object(SeedPlan, "sweep_fits", return_value=False):
            result = run_search(spec, workload=setup.workload)
    else:
        result = run_search(spec, workload=setup.workload)
    wall_s = time.monotonic() - started
    picks = {}
    for budget in setup.budgets:  # its best trial under the budget (at the highest rung it reached)
        fitting = [t for t in result.trials if t.costs["bitops"] / setup.int8_bitops <= budget + 1e-9]
        if fitting:
            picks[budget] = dict(max(fitting, key=lambda t: t.quality).assignment)
    trials: list[dict[str, Any]] = [
        {"number": t.number, "source": t.source, "bitops_ratio": t.costs["bitops"] / setup.int8_bitops,
         "psnr_db": t.quality, "duration_s": t.duration_s, "qat_steps": t.qat_steps,
         "short_psnr_db": t.short_quality,
         "int4": [f for f in setup.free if t.assignment[f] == "int4"],
         "changes": {f: t.assignment[f] for f in setup.free if t.assignment[f] != "int8"}}
        for t in result.trials
    ]
    for t in trials:
        print(f"  {name} trial {t['number']} {t['source']}: {t['bitops_ratio']:.3f} x int8, "
              f"{t['psnr_db']:.2f} dB at {t['qat_steps']} steps, {t['duration_s']:.1f} s", flush=True)
    sources: dict[str, int] = {}
    for outcome in result.trials:
        sources[outcome.source] = sources.get(outcome.source, 0) + 1
    note = f"{len(result.trials)} trials (" + ", ".join(f"{k} {v}" for k, v in sources.items()) + ")"
    promoted = sum(1 for outcome in result.trials if outcome.rung > 0)
    if promoted:
        note += (f", {promoted} promoted to {qat_steps * result.fidelity_rungs[-1]} steps "
                 f"(top 1/{result.promotion_eta} of a rung)")
    return MethodResult(name, wall_s, picks, note, trials)


def trial_map(setup: Setup, trial: Mapping[str, Any]) -> Assignment:
    """A recorded search trial's map: its ``changes`` (fqn -> format, layers not int8), or in results
    written before split formats its ``int4`` layers."""
    if "changes" in trial:
        return setup.with_changes(trial["changes"])
    return setup.full(trial["int4"])


class PeerError(RuntimeError):
    """A peer tool's picks file that cannot be used (the message names the file and the field)."""


def peer_python(peers_dir: Path, method: str) -> Path:
    return peers_dir / PEERS[method][0] / "bin" / "python"


def peer_skip_reason(peers_dir: Path, method: str, space: str) -> str | None:
    """Why ``method`` cannot run here (None: it can): its virtual environment is missing, or it has no
    setting for ``space``."""
    venv, _, _, spaces = PEERS[method]
    if space not in spaces:
        return f"skipped {method}: it runs in the space(s) {', '.join(spaces)}, not {space!r}"
    python = peer_python(peers_dir, method)
    if not python.exists():
        return (f"skipped {method}: no virtual environment at {python.parent.parent} "
                f"(create it with `bash bench/peers/setup.sh --root {peers_dir} {venv}`; not a dependency of mixq)")
    return None


def read_peer_picks(path: Path, setup: Setup, method: str) -> MethodResult:
    """A peer script's picks file (bench/peers/_common.py) as a method's result: every pick a full map of the
    workload's layers in the space's formats, first and last int8, within its budget by mixq's BitOPs."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PeerError(f"{path}: not a readable picks file ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("picks"), dict):
        raise PeerError(f"{path}: picks: expected an object budget -> map")
    pinned = (setup.graph.fqns[0], setup.graph.fqns[-1])
    picks: dict[float, Assignment] = {}
    for key, assignment in data["picks"].items():
        try:
            budget = float(key)
        except ValueError:
            raise PeerError(f"{path}: picks.{key}: a budget must be a number (a BitOPs ratio)") from None
        if budget not in setup.budgets:
            continue
        if not isinstance(assignment, dict) or set(assignment) != set(setup.graph.fqns):
            raise PeerError(f"{path}: picks.{key}: a map of every layer ({', '.join(setup.graph.fqns)})")
        bad = {f: v for f, v in assignment.items() if v not in setup.formats}
        if bad:
            raise PeerError(f"{path}: picks.{key}: formats {bad} are not in the space "
                            f"({', '.join(setup.formats)})")
        if any(assignment[f] != "int8" for f in pinned):
            raise PeerError(f"{path}: picks.{key}: first and last layer must stay int8 ({', '.join(pinned)})")
        ratio = setup.ratio(assignment)
        if ratio > budget + 1e-9:
            raise PeerError(f"{path}: picks.{key}: {ratio:.4f} x all-int8's BitOPs, over the budget {budget:g}")
        picks[budget] = dict(assignment)
    note = f"{data.get('tool', '?')}: {data.get('note', '')}".strip()
    trials = [{"source": method, **p} for p in data.get("path", []) if isinstance(p, dict)]
    return MethodResult(method, float(data.get("wall_s", 0.0)), picks, note, trials)


def run_peer(setup: Setup, method: str, peers_dir: Path, picks_path: Path, reuse: bool) -> MethodResult | None:
    """Run ``method``'s script in its virtual environment (the checkout on PYTHONPATH) and read its picks;
    None (with the reason printed) where it cannot run.  ``reuse``: read an existing ``picks_path`` instead."""
    if not (reuse and picks_path.exists()):
        reason = peer_skip_reason(peers_dir, method, setup.space)
        if reason is not None:
            print(reason, flush=True)
            return None
        _, module, extra, _ = PEERS[method]
        repo = Path(__file__).resolve().parent.parent
        command = [str(peer_python(peers_dir, method)), "-m", module, "--out", str(picks_path),
                   "--space", setup.space, "--width", str(setup.options["width"]),
                   "--budgets", *(f"{b:g}" for b in setup.budgets), *extra]
        print("running " + " ".join(command), flush=True)
        env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
        subprocess.run(command, cwd=repo, env=env, check=True)
    return read_peer_picks(picks_path, setup, method)


def measure(setup: Setup, assignment: Assignment, seeds: int, qat_steps: int, cache: dict[str, list[float]],
            ) -> list[float]:
    """Long-fidelity PSNR of ``assignment`` for seeds 0..seeds-1 (``run_trial`` is deterministic on
    CPU with one thread, so ``cache`` -- also kept on disk -- holds each (map, steps, seed) once)."""
    key = f"{assignment_key(assignment)}|{qat_steps}"
    if len(cache.get(key, [])) < seeds:
        done = cache.get(key, [])
        cache[key] = done + [run_trial(setup.workload, assignment, qat_steps=qat_steps, seed=s).quality
                             for s in range(len(done), seeds)]
        print(f"measured {setup.ratio(assignment):.3f} x int8: {cache[key]}", flush=True)
    return cache[key][:seeds]


def load_previous(name: str) -> list[MethodResult]:
    """The methods of an earlier run of the same ``--name`` (to add a method without rerunning all)."""
    path = result_path("baselines", name, ".json")
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    return [MethodResult(m, float(v["wall_s"]), {float(b): a for b, a in v["picks"].items()}, v.get("note", ""),
                         v.get("trials", []))
            for m, v in data["methods"].items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=16, help="denoise-deep width (channels)")
    parser.add_argument("--budget-s", type=float, default=60.0, help="wall-clock budget of each search method")
    parser.add_argument("--search-qat-steps", type=int, default=15, help="QAT steps of a search trial")
    parser.add_argument("--long-qat-steps", type=int, default=60, help="QAT steps of the long-fidelity measurement")
    parser.add_argument("--seeds", type=int, default=2, help="seeds of the long-fidelity measurement")
    parser.add_argument("--hutchinson-samples", type=int, default=8)
    parser.add_argument("--budgets", type=float, nargs=3, default=[0.4, 0.6, 0.8], help="BitOPs ratios to all-int8")
    parser.add_argument("--methods", nargs="*",
                        default=["amp", "hawq", "autoquantize", "random", "tpe", "mixq", "mixq-mf", "mixq-mf-eta2"])
    parser.add_argument("--name", type=setting_name, default="denoise-deep",
                        help="the setting: results in bench/results/baselines/NAME.{md,png,json}, long runs in "
                             "bench/cache/baselines_NAME_runs.json")
    parser.add_argument("--mixq-rungs", type=int, nargs="+", default=[1, 3],
                        help="fidelity_rungs of the mixq-mf method (multiples of --search-qat-steps)")
    parser.add_argument("--runners-up", type=int, default=2,
                        help="mixq trials after its pick, at the pick's cost, to measure long")
    parser.add_argument("--notes", type=Path, default=None, help="markdown appended to the report")
    parser.add_argument("--search-seed", type=int, default=0, help="seed of the searches' samplers")
    parser.add_argument("--keep", action="store_true",
                        help="keep the methods of the previous run of --name that --methods does not run")
    parser.add_argument("--space", choices=SPACES, default="int8-int4",
                        help="the formats every method searches on the free layers: int8-int4, or default (the "
                             "profile's default formats, as a search given none: int4, int8, w4a8, w8a16, fp16)")
    parser.add_argument("--peers-dir", type=Path, default=Path(os.environ.get("MIXQ_PEERS_DIR", DEFAULT_PEERS_DIR)),
                        help="where bench/peers/setup.sh put the peer tools' virtual environments (methods "
                             f"{', '.join(PEERS)}; env MIXQ_PEERS_DIR)")
    parser.add_argument("--reuse-peer-picks", action="store_true",
                        help="a peer method reads its picks file from an earlier run of --name instead of "
                             "running its tool (bench/cache/baselines_NAME_METHOD_picks.json)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    options: dict[str, object] = {"width": args.width}
    workload = load_workload("denoise-deep", options)
    graph = discover_layers(workload.model, workload.example_inputs)
    free = graph.fqns[1:-1]
    int8 = {f: "int8" for f in graph.fqns}
    int8_bitops = model_costs((CostObjective.BITOPS,), load_profile("generic"), graph, int8)["bitops"]
    setup = Setup(workload, graph, free, int8_bitops, tuple(args.budgets), options, space_formats(args.space),
                  args.space)
    seed = args.search_seed
    def peer(method: str) -> Callable[[], MethodResult | None]:
        picks = runs_cache("baselines", args.name).with_name(f"baselines_{args.name}_{method}_picks.json")
        return lambda: run_peer(setup, method, args.peers_dir, picks, args.reuse_peer_picks)

    runners: dict[str, Callable[[], MethodResult | None]] = {
        "amp": lambda: run_amp(setup),
        "hawq": lambda: run_hawq(setup, args.hutchinson_samples),
        "autoquantize": lambda: run_autoquantize(setup),
        "random": lambda: run_sampler(setup, "random", args.budget_s, args.search_qat_steps, seed=seed),
        "tpe": lambda: run_sampler(setup, "tpe", args.budget_s, args.search_qat_steps, seed=seed),
        "mixq": lambda: run_sampler(setup, "mixq", args.budget_s, args.search_qat_steps, None, None, seed=seed),
        "mixq-1rung": lambda: run_sampler(setup, "mixq-1rung", args.budget_s, args.search_qat_steps, seed=seed),
        "mixq-mf": lambda: run_sampler(setup, "mixq-mf", args.budget_s, args.search_qat_steps, args.mixq_rungs,
                                       seed=seed),
        "mixq-mf-eta2": lambda: run_sampler(setup, "mixq-mf-eta2", args.budget_s, args.search_qat_steps,
                                            args.mixq_rungs, eta=2, seed=seed),
        "mixq-proxy-mf-eta2": lambda: run_sampler(setup, "mixq-proxy-mf-eta2", args.budget_s,
                                                  args.search_qat_steps, args.mixq_rungs, eta=2, seed=seed),
        **{method: peer(method) for method in PEERS},
    }
    unknown = [m for m in args.methods if m not in runners]
    if unknown:
        parser.error(f"--methods: unknown {', '.join(unknown)}; allowed: {', '.join(runners)}")
    kept = [m for m in load_previous(args.name) if m.name not in args.methods] if args.keep else []
    methods = list(kept)
    for name in args.methods:
        result = runners[name]()
        if result is None:  # a peer tool that is not installed here (the reason is printed)
            continue
        methods.append(result)
        print(f"{name}: {result.wall_s:.1f} s, {len(result.picks)} picks", flush=True)
    cache_path = runs_cache("baselines", args.name)
    cache: dict[str, list[float]] = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    try:
        measure_all(args, setup, methods, cache)
    finally:
        cache_path.write_text(json.dumps(cache, indent=0) + "\n")


def measure_all(args: argparse.Namespace, setup: Setup, methods: Sequence[MethodResult],
                cache: dict[str, list[float]]) -> None:
    int8 = setup.full([])
    int8_quality, int8_std = mean_std(measure(setup, int8, args.seeds, args.long_qat_steps, cache))
    reference_quality = noisy_input_psnr()  # hypervolume reference: the noisy input's PSNR
    points: dict[str, list[tuple[float, float, float]]] = {}  # method -> (bitops ratio, mean, std)
    for m in methods:
        points[m.name] = []
        for assignment in m.picks.values():
            mean, std = mean_std(measure(setup, assignment, args.seeds, args.long_qat_steps, cache))
            points[m.name].append((setup.ratio(assignment), mean, std))
    hv: dict[str, dict[float, float]] = {}
    for m in methods:
        hv[m.name] = {}
        for budget in setup.budgets:
            vecs = [objective_vector(q, [r], True) for r, q, _ in points[m.name] if r <= budget + 1e-9]
            hv[m.name][budget] = hypervolume_2d(vecs, (-reference_quality, budget))
    diagnosis = diagnose(args, setup, methods, cache)
    write_outputs(args, setup, methods, points, hv, (int8_quality, int8_std), reference_quality, diagnosis)


@dataclass
class Diagnosis:
    """Why a search picked what it picked: each pick's score at the search's own fidelity (seed 0,
    the search's seed: what a search would have seen had it tried that map), and the long-fidelity
    score of mixq's runners-up (its next-best short-fidelity trials at the cost of each pick)."""

    short: dict[str, dict[float, float]]  # method -> budget -> its pick at --search-qat-steps, seed 0
    runners_up: list[dict[str, Any]]  # budget, number, source, bitops_ratio, short, long mean/std, int4


def diagnose(args: argparse.Namespace, setup: Setup, methods: Sequence[MethodResult],
             cache: dict[str, list[float]]) -> Diagnosis:
    short = {m.name: {b: measure(setup, a, 1, args.search_qat_steps, cache)[0] for b, a in m.picks.items()}
             for m in methods}
    runners_up: list[dict[str, Any]] = []
    mixq = next((m for m in methods if m.name == "mixq" and m.trials), None)
    for budget, pick in (mixq.picks.items() if mixq is not None else []):
        ratio = setup.ratio(pick)
        same_cost = sorted((t for t in mixq.trials if abs(t["bitops_ratio"] - ratio) < 1e-6),  # type: ignore[union-attr]
                           key=lambda t: -t["psnr_db"])
        for t in same_cost[: 1 + args.runners_up]:
            mean, std = mean_std(measure(setup, trial_map(setup, t), args.seeds, args.long_qat_steps, cache))
            runners_up.append({"budget": budget, "number": t["number"], "source": t["source"],
                               "bitops_ratio": ratio, "short_psnr_db": t["psnr_db"], "long_psnr_db_mean": mean,
                               "long_psnr_db_std": std, "int4": t["int4"],
                               "changes": t.get("changes", {f: "int4" for f in t["int4"]})})
    return Diagnosis(short, runners_up)


def write_outputs(args: argparse.Namespace, setup: Setup, methods: Sequence[MethodResult],
                  points: Mapping[str, Sequence[tuple[float, float, float]]], hv: Mapping[str, Mapping[float, float]],
                  int8: tuple[float, float], reference_quality: float, diagnosis: Diagnosis) -> None:
    int8_quality, int8_std = int8
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    markers = "osD^vP*Xh"
    for i, m in enumerate(methods):
        pts = sorted(points[m.name])
        shift = (i - (len(methods) - 1) / 2) * 0.003  # methods with the same picks stay visible
        ax.errorbar([p[0] + shift for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts],
                    marker=markers[i % len(markers)], capsize=3, label=m.name, alpha=0.8)
    ax.axhline(int8_quality, color="grey", linestyle="--", label="all int8")
    ax.set_xlabel("BitOPs (x all-int8)")
    ax.set_ylabel(f"PSNR (dB), {args.long_qat_steps} QAT steps, {args.seeds} seeds")
    ax.set_title("denoise-deep: each method's picks at 3 BitOPs budgets (x shifted per method)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    png = result_path("baselines", args.name, ".png")
    fig.savefig(png, dpi=110)
    budgets = setup.budgets
    rows = [[m.name, f"{m.wall_s:.1f}", *(f"{hv[m.name][b]:.4f}" for b in budgets),
             "; ".join(f"{r:.3f}: {q:.2f} ± {s:.2f}" for r, q, s in sorted(points[m.name])), m.note]
            for m in methods]
    summary = {
        "commit": code_version(), "args": vars(args), "int8_quality_db": int8_quality,
        "reference_quality_db": reference_quality,
        "methods": {
            m.name: {
                "wall_s": m.wall_s, "note": m.note, "hypervolume": {str(b): hv[m.name][b] for b in budgets},
                "points": [{"bitops_ratio": r, "psnr_db_mean": q, "psnr_db_std": s} for r, q, s in points[m.name]],
                "picks": {str(b): a for b, a in m.picks.items()},
                "trials": m.trials,
            }
            for m in methods
        },
    }
    summary["diagnosis"] = {"pick_at_search_fidelity_seed0": {m: {str(b): q for b, q in v.items()}
                                                              for m, v in diagnosis.short.items()},
                            "mixq_runners_up": diagnosis.runners_up}
    # target 1: mixq's HV >= every baseline's at every budget
    others = [m.name for m in methods if not m.name.startswith("mixq")]
    target1_rows = []
    for name in [m.name for m in methods if m.name.startswith("mixq")]:  # every mixq configuration run
        for b in budgets:
            best = max(others, key=lambda n: hv[n][b])
            gap = 100 * (hv[name][b] / hv[best][b] - 1)
            verdict = "met" if hv[name][b] >= hv[best][b] else f"not met ({gap:+.1f}%)"
            target1_rows.append([name, f"{b:g}", f"{hv[name][b]:.4f}", f"{best} {hv[best][b]:.4f}", verdict])
    # target 2: a measured map within 0.1 dB of all-int8 at <= 60% of its BitOPs, and the best near miss
    measured = sorted({(r, q, s) for pts in points.values() for r, q, s in pts if r <= 0.6 + 1e-9},
                      key=lambda p: -p[1])
    near = [p for p in measured if p[1] >= int8_quality - 0.1]
    best_low = measured[0] if measured else None
    summary["target_int8_within_0.1db_at_0.6"] = {"met": bool(near), "best_at_or_below_0.6": best_low}
    json_path, long_runs = result_path("baselines", args.name, ".json"), runs_cache("baselines", args.name)
    json_path.write_text(json.dumps(summary, indent=1, default=str) + "\n")
    short_rows = [[m.name, *(f"{diagnosis.short[m.name][b]:.2f}" if b in diagnosis.short[m.name] else "-"
                             for b in budgets)] for m in methods]
    runner_rows = [[f"{r['budget']:g}", f"{r['bitops_ratio']:.3f}", f"#{r['number']} {r['source']}",
                    f"{r['short_psnr_db']:.2f}", f"{r['long_psnr_db_mean']:.2f} ± {r['long_psnr_db_std']:.2f}",
                    " ".join(f"{f.removeprefix('body.')}:{v}" for f, v in r["changes"].items())]
                   for r in diagnosis.runners_up]
    target2 = (f"met: {near[0][0]:.3f} x int8 at {near[0][1]:.2f} dB" if near else
               "not met: no measured map at <= 0.6 x all-int8 BitOPs is within 0.1 dB of all-int8 "
               f"({int8_quality:.2f} dB); the best is {best_low[0]:.3f} x int8 at {best_low[1]:.2f} ± "
               f"{best_low[2]:.2f} dB ({int8_quality - best_low[1]:.2f} dB below)" if best_low else "no map measured")
    body = "\n".join([
        (f"**Configuration**: `denoise-deep` "
         f"(DnCNN depth 17, width {args.width}, 17 quantizable layers; first and last pinned int8, 15 free, "
         f"space `{getattr(args, 'space', 'int8-int4')}`: {' / '.join(setup.formats)}), "
         f"{args.budget_s:.0f} s per search method with {args.search_qat_steps} QAT steps a trial "
         f"(`mixq-mf` / `mixq-mf-eta2`: `fidelity_rungs` {list(args.mixq_rungs)}, the top third / half "
         f"promoted, in the same {args.budget_s:.0f} s); every pick measured with {args.long_qat_steps} QAT "
         f"steps x {args.seeds} seeds (`search.run_trial`).  The full configuration is the command in the "
         "module docstring of `bench/baselines.py`."),
        "",
        (f"Hypervolume at budget B: area dominated by the method's measured picks with BitOPs <= B, "
         f"reference (PSNR of the noisy input {reference_quality:.2f} dB, B).  All-int8 measured "
         f"{int8_quality:.2f} ± {int8_std:.2f} dB.  "
         "Wall time: the method's own search or proxy time (the common measurement is not counted).  "
         f"The plot is `{repo_relative(png)}`, the numbers `{repo_relative(json_path)}` "
         f"(every search trial, with its source), the long runs `{repo_relative(long_runs)}`."),
        "",
        markdown_table(
            ["method", "wall (s)", *(f"HV @ {b:g}" for b in budgets), "picks: BitOPs ratio: PSNR dB", "note"], rows
        ),
        "",
        f"![fronts]({png.name})",
        "",
        "## Targets",
        "",
        "1. mixq's hypervolume >= the best baseline's at every budget:",
        "",
        markdown_table(["mixq configuration", "budget", "its HV", "best baseline HV", "target"], target1_rows),
        "",
        f"2. A map within 0.1 dB of all-int8 at <= 60% of its BitOPs: {target2}.",
        "",
        "## Why: each pick at the search's fidelity, and mixq's runners-up at the long one",
        "",
        (f"PSNR (dB) of every method's pick after {args.search_qat_steps} QAT steps, seed 0: the score a "
         "search trial of that map gets (a search ranks its maps by it)."),
        "",
        markdown_table(["method", *(f"pick @ {b:g}" for b in budgets)], short_rows),
        "",
        (f"mixq's pick and its next {args.runners_up} trials at the same BitOPs (by search-fidelity score), "
         f"each measured like the picks ({args.long_qat_steps} steps x {args.seeds} seeds).  int4 layers "
         "are `body.N`, each with its format."),
        "",
        markdown_table(["budget", "BitOPs", "trial", f"{args.search_qat_steps} steps", f"{args.long_qat_steps} steps",
                        "layers not int8 (body.N:format)"], runner_rows),
        *(["", args.notes.read_text().strip()] if args.notes is not None else []),
    ])
    write_report("baselines", args.name, "mixq vs AMP, HAWQ-V3, AutoQuantize, random and TPE on denoise-deep", body)


if __name__ == "__main__":
    main()

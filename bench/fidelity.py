"""Fidelity: does the ranking a search reports survive the user's full QAT?

For the maps of a search (its front, the next non-dominated layer, and the uniform baselines) this
retrains each map from the pretrained weights at the search's fidelity (``--short-steps``, >= 2 seeds)
and at a long fidelity (``--long-factor`` x the steps, >= 3 seeds: the long run is noisier), then
reports

* Kendall's tau and Spearman's rho between the short and the long mean quality over the maps;
* the seed-to-seed tau of each fidelity (short vs short, long vs long: the long one is the ceiling any
  short recipe can reach);
* front agreement: the hypervolume of the short-fidelity front re-measured at the long fidelity,
  divided by the hypervolume of the long-fidelity front over the same maps (1.0: the short run picks
  the maps the long run would).

Run from the repository root (any workload: built-in or ``package.module:factory``)::

    python -m bench.fidelity --workload denoise                       # search, then retrain its maps
    python -m bench.fidelity --workload denoise --summary mixq-out/summary.json   # a finished CLI search
    python -m bench.fidelity --workload denoise --report-only

Runs are cached per (workload setting, map, steps, seed, recipe) in ``bench/cache/fidelity_runs.json``,
so an interrupted run resumes and a second recipe reuses nothing it should not.  The report goes to
``bench/results/fidelity/<out-name>.{md,png,json}`` (default: the workload's name, e.g. ``fidelity/denoise.md``).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from scipy import stats

from bench.report import cache_path, code_version, markdown_table, mean_std, result_path, setting_name, write_report
from search import (
    CostObjective,
    SearchResult,
    SearchSpec,
    TrialOutcome,
    discover_layers,
    load_profile,
    load_workload,
    run_search,
    run_trial,
)
from search.quant.cost import model_costs
from search.study.pareto import hypervolume_2d, non_dominated
from search.train import fp32_quality
from search.workloads.base import Workload
from search.workloads.training import DEFAULT_RECIPE, QatRecipe

RUNS_FILE = cache_path("fidelity_runs.json")  # shared with bench/multifidelity.py


def map_key(assignment: Mapping[str, str]) -> str:
    return ",".join(f"{fqn}={fmt}" for fqn, fmt in assignment.items())


def uniform_baselines(fqns: Sequence[str]) -> dict[str, dict[str, str]]:
    """The maps a user would try by hand: all int8, int4 inside int8 first/last, all int4, one end in int4."""
    first, last = fqns[0], fqns[-1]
    return {
        "all int8": dict.fromkeys(fqns, "int8"),
        "int8 first+last, int4 inside": {f: "int8" if f in (first, last) else "int4" for f in fqns},
        "all int4": dict.fromkeys(fqns, "int4"),
        "int4 first layer only": {f: "int4" if f == first else "int8" for f in fqns},
        "int4 last layer only": {f: "int4" if f == last else "int8" for f in fqns},
    }


def label(assignment: Mapping[str, str]) -> str:
    """Which layers are below int8, by execution index (``#0 #3 int4``); ``all int8`` otherwise."""
    parts: dict[str, list[str]] = {}
    for i, fmt in enumerate(assignment.values()):
        if fmt != "int8":
            parts.setdefault(fmt, []).append(f"#{i}")
    return "; ".join(f"{fmt} at {' '.join(ix)}" for fmt, ix in parts.items()) or "all int8"


def search_maps(summary: Mapping[str, Any], near_front_layers: int) -> list[dict[str, str]]:
    """Front and near-front maps of a search summary (``mixq search``'s summary.json or our own)."""
    trials = [t for t in summary["trials"] if t.get("feasible", True)] or list(summary["trials"])
    sign = 1.0 if summary.get("higher_is_better", True) else -1.0
    pool = {map_key(t["assignment"]): t for t in trials}
    chosen: list[dict[str, str]] = []
    for _ in range(near_front_layers):
        items = list(pool.values())
        if not items:
            break
        points = [(-sign * t["quality"], *t["costs"].values()) for t in items]
        for i in non_dominated(points):
            chosen.append(dict(items[i]["assignment"]))
            pool.pop(map_key(items[i]["assignment"]))
    return chosen


def summarise(result: SearchResult, wall_s: float) -> dict[str, Any]:
    """The JSON a search leaves in the runs cache: every trial and the reported front (as outcomes)."""

    def outcome(t: TrialOutcome) -> dict[str, Any]:
        return {"number": t.number, "assignment": dict(t.assignment), "quality": t.quality,
                "quality_std": t.quality_std, "n_evaluations": t.n_evaluations, "costs": dict(t.costs),
                "feasible": t.feasible, "rung": t.rung, "qat_steps": t.qat_steps, "short_quality": t.short_quality}

    return {
        "higher_is_better": result.higher_is_better,
        "trials": [outcome(t) for t in result.trials],
        "front": [outcome(t) for t in result.front],
        "qat_steps_used": result.qat_steps_used,
        "stop_reason": result.stop_reason,
        "wall_s": wall_s,
        "code": code_version(),
    }


def search_key(spec: SearchSpec) -> str:
    """Runs-cache key of a search: its whole spec, so a different search (or knob) never reuses it."""
    # null fidelity fields resolve to one rung without a time or step budget (as every search here):
    # keyed as resolved, so searches cached before automatic rungs existed are found
    if spec.timeout_s is None and spec.budget_qat_steps is None:
        spec = spec.resolve_fidelity(0)
    return f"search|{spec.model_dump_json()}"


def train(workload: Workload, assignment: Mapping[str, str], steps: int, seed: int, recipe: QatRecipe) -> float:
    return run_trial(workload, assignment, qat_steps=steps, seed=seed, recipe=recipe).quality


class RunCache:
    """Trained runs and finished searches, cached in a JSON file (written after each new entry, so an
    interrupted benchmark resumes).  Keys: ``run|SETTING|MAP|STEPS|SEED[|RECIPE]`` and
    ``search|SPEC``; ``SETTING`` is the workload and its options."""

    def __init__(self, path: Path, *, merge: Sequence[Path] = (), report_only: bool = False) -> None:
        self.path = path
        self.report_only = report_only
        self.entries: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        for other in merge:
            self.entries.update(json.loads(other.read_text()))
        if merge:
            self.save()

    def save(self) -> None:
        self.path.write_text(json.dumps(self.entries, indent=1))

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def quality(self, workload: Workload, setting: str, assignment: Mapping[str, str], steps: int, seed: int,
                recipe: QatRecipe = DEFAULT_RECIPE) -> float:
        """The workload's metric after ``steps`` QAT steps of ``assignment`` from the pretrained weights."""
        key = f"run|{setting}|{map_key(assignment)}|{steps}|{seed}{recipe_key(recipe)}"
        if key not in self.entries:
            if self.report_only:
                raise SystemExit(f"missing cached run {key}")
            self.entries[key] = train(workload, assignment, steps, seed, recipe)
            self.save()
            print(f"{label(assignment):40s} steps={steps:5d} seed={seed} {recipe.name}: {self.entries[key]:.4f}",
                  flush=True)
        return float(self.entries[key])

    def search(self, spec: SearchSpec, workload: Workload, rerun: bool = False) -> dict[str, Any]:
        """The summary of ``spec``'s search (run now unless cached, or with ``rerun``: the search code
        changed), see :func:`summarise`."""
        key = search_key(spec)
        if key not in self.entries or (rerun and not self.report_only):
            if self.report_only:
                raise SystemExit(f"no cached search for {key}; run without --report-only first")
            print(f"searching: {spec.model_dump_json()}", flush=True)
            started = time.perf_counter()
            result = run_search(spec, workload=workload)
            self.entries[key] = summarise(result, time.perf_counter() - started)
            self.save()
        return dict(self.entries[key])


def weights_digest(workload: Workload) -> str:
    """12 hex digits of the pretrained weights: a workload pretrained on another machine (another CPU's
    float rounding) starts QAT elsewhere, so its runs are not comparable (a 200-step all-int8 denoise
    trial: 25.5691 dB with the weights the first cached runs used, 25.5743 dB with this machine's)."""
    digest = hashlib.sha256()
    for name, tensor in workload.model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def workload_setting(workload_name: str, options: Mapping[str, Any], workload: Workload | None = None) -> str:
    """Runs-cache key of a workload: its name and options, and with ``workload`` its weights' digest
    (runs cached before the digest was part of the key have none: ``--legacy-maps``)."""
    setting = f"{workload_name}:{json.dumps(options, sort_keys=True)}"
    return setting if workload is None else f"{setting}#w{weights_digest(workload)}"


def parse_recipe(text: str) -> QatRecipe:
    """``SCHEDULE[:LR_SCALE[:WARMUP_FRAC]]``, e.g. ``constant``, ``cosine:3``, ``cosine:3:0.1``."""
    schedule, *rest = text.split(":")
    numbers = [float(x) for x in rest]
    return QatRecipe(schedule=schedule, lr_scale=numbers[0] if numbers else 1.0,  # type: ignore[arg-type]
                     warmup_frac=numbers[1] if len(numbers) > 1 else 0.0)


def recipe_key(recipe: QatRecipe) -> str:
    """Cache key suffix; empty for the default recipe (runs cached before recipes existed)."""
    return "" if recipe == DEFAULT_RECIPE else f"|{recipe.schedule}:{recipe.lr_scale:g}:{recipe.warmup_frac:g}"


def kendall(a: Sequence[float], b: Sequence[float]) -> float:
    return float(stats.kendalltau(a, b).statistic)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    return float(stats.spearmanr(a, b).statistic)


def seed_to_seed_tau(per_seed: Sequence[Sequence[float]]) -> float:
    """Mean Kendall tau over pairs of seeds (rows: seeds, columns: maps)."""
    taus = [kendall(a, b) for a, b in itertools.combinations(per_seed, 2)]
    return sum(taus) / len(taus) if taus else float("nan")


def normalised_hypervolume(
    indices: Sequence[int], long: Sequence[float], cost: Sequence[float], higher_is_better: bool
) -> float:
    """Hypervolume of the maps ``indices`` at their long quality, 2-D (quality loss, cost).

    Points are normalised to the long-quality and cost ranges of ALL the maps given (``long``,
    ``cost``); the reference point is the worst corner plus 10%, so every map contributes.  Maps
    dominated at the long fidelity add nothing."""
    sign = 1.0 if higher_is_better else -1.0
    q_lo, q_hi = min(long), max(long)
    c_lo, c_hi = min(cost), max(cost)

    def norm(q: float, c: float) -> tuple[float, float]:
        loss = (q_hi - q) if sign > 0 else (q - q_lo)  # 0 at the best quality seen
        return loss / ((q_hi - q_lo) or 1.0), (c - c_lo) / ((c_hi - c_lo) or 1.0)

    return hypervolume_2d([norm(long[i], cost[i]) for i in indices], (1.1, 1.1))


def front_indices(quality: Sequence[float], cost: Sequence[float], higher_is_better: bool) -> list[int]:
    """Indices of the maps non-dominated in (``quality``, cost)."""
    sign = 1.0 if higher_is_better else -1.0
    return non_dominated([(-sign * q, c) for q, c in zip(quality, cost, strict=True)])


def front_agreement(
    short: Sequence[float], long: Sequence[float], cost: Sequence[float], higher_is_better: bool
) -> float:
    """HV(short front, measured long) / HV(long front), both over the same maps (see
    :func:`normalised_hypervolume`); 1.0: the short run picks the maps the long run would."""
    hv_short = normalised_hypervolume(front_indices(short, cost, higher_is_better), long, cost, higher_is_better)
    hv_long = normalised_hypervolume(front_indices(long, cost, higher_is_better), long, cost, higher_is_better)
    return hv_short / hv_long if hv_long > 0 else float("nan")


def plot(rows: Sequence[dict[str, Any]], path: Path, metric: str, short_steps: int, long_steps: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    xs = [r["short_mean"] for r in rows]
    ys = [r["long_mean"] for r in rows]
    ax.errorbar(xs, ys, xerr=[r["short_std"] for r in rows], yerr=[r["long_std"] for r in rows], fmt="o", capsize=3)
    for r in rows:
        ax.annotate(r["label"], (r["short_mean"], r["long_mean"]), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
    lo, hi = min(xs + ys), max(xs + ys)
    ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--", label="long = short")
    ax.set_xlabel(f"{metric} after {short_steps} QAT steps (search fidelity)")
    ax.set_ylabel(f"{metric} after {long_steps} QAT steps (long fidelity)")
    ax.set_title("Short vs long QAT quality per precision map")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="denoise")
    parser.add_argument("--workload-options", default="{}", help="JSON object")
    parser.add_argument("--summary", type=Path, help="a finished search's summary.json (else a search is run)")
    parser.add_argument("--search-trials", type=int, default=24)
    parser.add_argument("--short-steps", type=int, default=200)
    parser.add_argument("--long-factor", type=int, default=10)
    parser.add_argument("--short-seeds", type=int, default=2)
    parser.add_argument("--long-seeds", type=int, default=3)
    parser.add_argument("--near-front", type=int, default=2,
                        help="non-dominated layers of the search taken (1: front only)")
    parser.add_argument("--max-maps", type=int, default=14)
    parser.add_argument("--short-recipes", nargs="+", default=["constant"],
                        help="QAT recipes of the short runs, SCHEDULE[:LR_SCALE[:WARMUP_FRAC]] (the long runs use "
                             "the workload's recipe: constant lr); the first one is plotted")
    parser.add_argument("--runs-file", type=Path, default=RUNS_FILE,
                        help="cache of trained runs (JSON); several processes may each fill their own, then --merge")
    parser.add_argument("--merge", type=Path, nargs="*", default=[], help="runs files to merge into --runs-file first")
    parser.add_argument("--reverse", action="store_true", help="train the maps in reverse order (a second process)")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--rerun-search", action="store_true",
                        help="run the search again even if one with this spec is cached (the search changed)")
    parser.add_argument("--out-name", type=setting_name,
                        help="the setting: results in bench/results/fidelity/OUT_NAME.{md,png,json} (default WORKLOAD)")
    parser.add_argument("--legacy-maps", action="store_true",
                        help="the maps and runs of the table before split formats (bench/results/"
                             "fidelity_denoise_previous.md, in git history; measured at 5f0a012, their "
                             "pretrained weights were another machine's), not a new search")
    parser.add_argument("--complete-only", action="store_true",
                        help="with --report-only: report the maps whose runs are all cached (an interrupted run)")
    args = parser.parse_args()
    try:  # the default setting is the workload's name; checked now, not after hours of training
        args.out_name = setting_name(args.out_name or args.workload)
    except argparse.ArgumentTypeError as e:
        parser.error(f"--out-name: {e}")
    if args.short_seeds < 2 or args.long_seeds < 3:
        parser.error("--short-seeds must be >= 2 and --long-seeds >= 3 (the long fidelity is the noisier one)")
    recipes = [parse_recipe(r) for r in args.short_recipes]
    torch.set_num_threads(int(os.environ.get("MIXQ_TORCH_THREADS", "1")))

    options = json.loads(args.workload_options)
    workload = load_workload(args.workload, options)
    fqns = [layer.fqn for layer in discover_layers(workload.model, workload.example_inputs).layers]
    setting = workload_setting(args.workload, options, None if args.legacy_maps else workload)
    long_steps = args.short_steps * args.long_factor

    runs = RunCache(args.runs_file, merge=args.merge, report_only=args.report_only)
    if args.legacy_maps:  # the maps and runs of fidelity_denoise_previous.md (git history; 5f0a012), so it reproduces
        legacy_key = f"maps|{setting}|{args.short_steps}|{args.search_trials}"
        if legacy_key not in runs:
            raise SystemExit(f"no cached maps for {legacy_key}")
        found = runs.entries[legacy_key]["search"]
    else:
        summary = json.loads(args.summary.read_text()) if args.summary else runs.search(SearchSpec(
            workload=args.workload, workload_options=options, n_trials=args.search_trials,
            qat_steps=args.short_steps, seed=0), workload, rerun=args.rerun_search)
        found = search_maps(summary, args.near_front)
    maps: dict[str, dict[str, str]] = dict(uniform_baselines(fqns))
    for assignment in found:
        if map_key(assignment) not in {map_key(m) for m in maps.values()}:
            maps[label(assignment)] = assignment
    maps = dict(list(maps.items())[: args.max_maps])
    if args.complete_only:
        def cached(a: Mapping[str, str]) -> bool:
            keys = [f"run|{setting}|{map_key(a)}|{long_steps}|{s}" for s in range(args.long_seeds)]
            keys += [f"run|{setting}|{map_key(a)}|{args.short_steps}|{s}{recipe_key(r)}"
                     for s in range(args.short_seeds) for r in recipes]
            return all(k in runs for k in keys)

        skipped = [name for name, a in maps.items() if not cached(a)]
        maps = {name: a for name, a in maps.items() if cached(a)}
        if skipped:
            print(f"left out (runs missing): {', '.join(skipped)}")

    def quality(assignment: Mapping[str, str], steps: int, seed: int, recipe: QatRecipe = DEFAULT_RECIPE) -> float:
        return runs.quality(workload, setting, assignment, steps, seed, recipe)

    profile = load_profile("generic")
    graph = discover_layers(workload.model, workload.example_inputs)
    order = list(maps.items())[::-1] if args.reverse else list(maps.items())
    for _, a in order:  # train map by map (short, then long), so an interrupted run leaves whole maps
        for recipe in recipes:
            for s in range(args.short_seeds):
                quality(a, args.short_steps, s, recipe)
        for s in range(args.long_seeds):
            quality(a, long_steps, s)
    longs = {name: [quality(a, long_steps, s) for s in range(args.long_seeds)] for name, a in maps.items()}
    costs = [model_costs((CostObjective.BITOPS,), profile, graph, a)[str(CostObjective.BITOPS)] for a in maps.values()]
    long_means = [mean_std(v)[0] for v in longs.values()]
    tau_long_seeds = seed_to_seed_tau([[v[s] for v in longs.values()] for s in range(args.long_seeds)])

    per_recipe: list[dict[str, Any]] = []
    for recipe in recipes:
        shorts = {name: [quality(a, args.short_steps, s, recipe) for s in range(args.short_seeds)]
                  for name, a in maps.items()}
        short_means = [mean_std(v)[0] for v in shorts.values()]
        per_recipe.append({
            "recipe": recipe.name, "shorts": shorts,
            "tau": kendall(short_means, long_means), "rho": spearman(short_means, long_means),
            "tau_short_seeds": seed_to_seed_tau([[v[s] for v in shorts.values()] for s in range(args.short_seeds)]),
            "front_agreement": front_agreement(short_means, long_means, costs, workload.higher_is_better),
        })
    first = per_recipe[0]
    rows: list[dict[str, Any]] = []
    for (name, assignment), cost in zip(maps.items(), costs, strict=True):
        s_mean, s_std = mean_std(first["shorts"][name])
        l_mean, l_std = mean_std(longs[name])
        rows.append({"label": name, "assignment": assignment, "bitops": cost, "short": first["shorts"][name],
                     "long": longs[name], "short_mean": s_mean, "short_std": s_std, "long_mean": l_mean,
                     "long_std": l_std})
    fp32 = fp32_quality(workload)

    name = args.out_name
    png = result_path("fidelity", name, ".png")
    plot(rows, png, workload.metric, args.short_steps, long_steps)
    rel = max(costs)
    table = markdown_table(
        ["map", "BitOPs (rel. the costliest map)",
         f"{args.short_steps} steps, {first['recipe']} ({args.short_seeds} seeds)",
         f"{long_steps} steps ({args.long_seeds} seeds)"],
        [[r["label"], f"{r['bitops'] / rel:.3f}", f"{r['short_mean']:.3f} ± {r['short_std']:.3f}",
          f"{r['long_mean']:.3f} ± {r['long_std']:.3f}"] for r in rows],
    )
    recipe_table = markdown_table(
        ["short-run recipe", "Kendall tau vs long", "Spearman rho vs long", "seed-to-seed tau (short)",
         "front agreement"],
        [[r["recipe"], f"{r['tau']:.3f}", f"{r['rho']:.3f}", f"{r['tau_short_seeds']:.3f}",
          f"{r['front_agreement']:.3f}"] for r in per_recipe],
    )
    body = "\n".join([
        f"Workload `{args.workload}` (options {json.dumps(options)}), metric {workload.metric}, "
        f"fp32 {fp32:.3f}. {len(rows)} maps: the uniform baselines plus the search's front and next "
        f"{args.near_front - 1} non-dominated layer(s) ({args.search_trials} trials at {args.short_steps} steps). "
        f"Short runs: {args.short_steps} QAT steps, {args.short_seeds} seeds; long runs: {long_steps} steps at the "
        f"workload's constant lr, {args.long_seeds} seeds. Every short recipe costs the same compute.",
        "",
        f"Seed-to-seed Kendall tau of the long runs (the ceiling any short recipe can reach): {tau_long_seeds:.3f}",
        "",
        recipe_table,
        "",
        table,
        "",
        f"![short vs long]({png.name})",
    ])
    result_path("fidelity", name, ".json").write_text(json.dumps({
        "tau_long_seeds": tau_long_seeds, "short_steps": args.short_steps, "long_steps": long_steps,
        "recipes": [{k: v for k, v in r.items() if k != "shorts"} for r in per_recipe], "rows": rows,
    }, indent=1))
    title = f"Fidelity: {args.short_steps}-step vs {long_steps}-step QAT on {args.workload}"
    write_report("fidelity", name, title, body)


if __name__ == "__main__":
    main()

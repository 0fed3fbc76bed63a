"""Search efficiency: hypervolume of the front each method finds with a small budget, relative to
the exhaustive front of a space every map of which was trained.

Run from the repository root::

    python -m bench.search_efficiency --space default         # the README's denoise, default formats
    python -m bench.search_efficiency --space default --shard 0/2 & \
        python -m bench.search_efficiency --space default --shard 1/2   # train the table in 2 processes
    python -m bench.search_efficiency --space inner --qat-steps 60      # another QAT length: another table

The spaces (:data:`CONFIGS`): ``default`` is the README's main job, the ``denoise`` workload with its
default options, first and last conv pinned int8 (mixq's default), 4 inner convs free x the generic
profile's 5 formats (int4, int8, w4a8, w8a16, fp16) = 625 maps at the search's 200 QAT steps;
``default-d5`` the same at depth 5 (125 maps); ``inner`` and ``ends`` a narrowed depth-7 denoiser over
int4/int8/fp16 only (243 maps at 40 steps; the spaces measured before split formats were the default).
Every map is trained once (QAT seed 0) and scored: the exhaustive table, cached in
``bench/cache/exhaustive_*.json``.  The report and its plot go to ``bench/results/search_efficiency/<space>.{md,png}``.
The methods then search that table, each "trial" a lookup:

* mixq: ``run_search`` with its defaults (seeded: uniform maps of every format, the one-layer
  sensitivity sweep, the proxy programs, the greedy front; TPE; the front's neighbours in the last
  half), ``reevaluate_front=0`` (so no second seed of all-int8 either: the table has one score per
  map), ``evaluator=`` the table.
* random: the same runner with ``sampler="random"``, no seeding and no neighbour checks.
* sensitivity-greedy without QAT: per-layer sensitivities from post-training quantization only
  (``run_trial(..., qat_steps=0)``: the costliest format everywhere with one layer one notch down;
  PTQ runs that do not count against the budget), then the greedy path to the cheapest format
  everywhere, one notch at a time, least predicted loss per bitop saved first (as AIMET AMP's greedy
  phase); its points are scored from the table.  It is the same for every seed and budget.
* TPE without seeding (ablation): mixq's sampler with the seeds and the neighbour checks turned off.

Hypervolume (2-D, both objectives minimised after normalisation): quality and bitops are scaled by
the exhaustive front's ideal and nadir points, ``f_q = (q_ideal - q) / (q_ideal - q_nadir)`` and
``f_b = (b - b_ideal) / (b_nadir - b_ideal)``, so the exhaustive front spans [0, 1] on both axes; the
reference point is (1.1, 1.1) (nadir + 10% of each range, so the front's extreme points count).
Points beyond the reference point add nothing.  Reported: HV(found front) / HV(exhaustive front).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.report import cache_path, code_version, markdown_table, mean_std, repo_relative, result_path, write_report
from search import (
    CostObjective,
    Pin,
    SearchSpec,
    discover_layers,
    load_profile,
    load_workload,
    run_search,
    run_trial,
)
from search.quant.cost import model_costs
from search.study.pareto import hypervolume_2d, non_dominated
from search.study.space import build_space
from search.train import fp32_quality
from search.workloads.base import Workload

WORKLOAD = "denoise"
BUDGETS = (12, 24, 48)
SEEDS = 5
OLD_FORMATS = ("int4", "int8", "fp16")  # the default formats before split formats were added


@dataclass(frozen=True)
class Config:
    """One benchmark space: a workload (every option explicit, so a cached table does not silently go
    stale when a workload default changes), the formats (None: the profile's, as ``mixq search``),
    the pins and the QAT steps of every trial."""

    words: str
    workload_options: dict[str, Any]
    formats: tuple[str, ...] | None
    qat_steps: int
    space: dict[str, Any]
    table_suffix: str = ""  # the cached table's file name, after the options and QAT steps


DEPTH7 = {"depth": 7, "width": 16, "eval_size": 96, "pretrain_steps": 1500, "batch_size": 8, "patch_size": 40}
README_DENOISE = {"depth": 6, "width": 32, "eval_size": 160, "pretrain_steps": 2000, "batch_size": 8,
                  "patch_size": 32}  # make_workload's defaults: the README's main job
CONFIGS: dict[str, Config] = {
    # mixq's default pins (first and last conv int8), 5 equal-cost inner convs free, int4/int8/fp16
    "inner": Config("denoise depth 7: first and last conv pinned int8, the 5 inner convs free, int4/int8/fp16",
                    DEPTH7, OLD_FORMATS, 40, {}),
    # the first and last conv (16x cheaper, and the ones that touch the 8-bit image) plus the first three
    # inner convs free, the last two inner convs pinned int8: unequal layer costs
    "ends": Config("denoise depth 7: the first and last conv and the first 3 inner convs free, the last 2 inner "
                   "convs pinned int8, int4/int8/fp16", DEPTH7, OLD_FORMATS, 40,
                   {"pin_first_last": None,
                    "pins": (Pin(match="body.11", format="int8"), Pin(match="body.14", format="int8"))},
                   table_suffix="_ends"),
    # the README's main job: the default workload, the profile's formats (split ones included), default pins
    "default": Config("the README's `denoise` (depth 6): first and last conv pinned int8, the 4 inner convs free, "
                      "the profile's default formats (int4, int8, w4a8, w8a16, fp16)", README_DENOISE, None, 200, {},
                      table_suffix="_default"),
    # a second space of the default formats: 3 free layers
    "default-d5": Config("`denoise` at depth 5: first and last conv pinned int8, the 3 inner convs free, the "
                         "profile's default formats", {**README_DENOISE, "depth": 5}, None, 200, {},
                         table_suffix="_default"),
}
MIXQ = "mixq (TPE, seeded)"
REFERENCE = (1.1, 1.1)  # in normalised (quality loss, bitops) units; see the module docstring

Point = tuple[float, float]  # (quality, bitops)


# ---------------------------------------------------------------------------------------------
# Pareto fronts and hypervolume on the (quality, bitops) plane (the maths is search.study.pareto's)
# ---------------------------------------------------------------------------------------------


def pareto_points(points: Sequence[Point]) -> list[Point]:
    """Non-dominated (quality up, bitops down) points, sorted by bitops; duplicates once."""
    unique = sorted(set(points))
    front = [unique[i] for i in non_dominated([(-q, b) for q, b in unique])]
    return sorted(front, key=lambda p: (p[1], -p[0]))


@dataclass(frozen=True)
class Normalisation:
    """Maps (quality, bitops) to minimised [0, 1] coordinates on the exhaustive front's range."""

    q_ideal: float
    q_nadir: float
    b_ideal: float
    b_nadir: float

    @classmethod
    def of_front(cls, front: Sequence[Point]) -> Normalisation:
        qs, bs = [p[0] for p in front], [p[1] for p in front]
        return cls(q_ideal=max(qs), q_nadir=min(qs), b_ideal=min(bs), b_nadir=max(bs))

    def __call__(self, point: Point) -> Point:
        q, b = point
        return (self.q_ideal - q) / (self.q_ideal - self.q_nadir), (b - self.b_ideal) / (self.b_nadir - self.b_ideal)


# ---------------------------------------------------------------------------------------------
# The exhaustive table
# ---------------------------------------------------------------------------------------------


@dataclass
class Table:
    fqns: list[str]
    free: list[str]
    fp32_quality: float
    quality: dict[tuple[str, ...], float]  # full map in execution order -> PSNR (dB)
    bitops: dict[tuple[str, ...], float]

    def key(self, assignment: Mapping[str, str]) -> tuple[str, ...]:
        return tuple(assignment[f] for f in self.fqns)

    def point(self, assignment: Mapping[str, str]) -> Point:
        k = self.key(assignment)
        return self.quality[k], self.bitops[k]

    def lookup(self, assignment: Mapping[str, str], seed: int) -> float:
        """The runner's evaluator seam: one stored QAT result per assignment (seed ignored)."""
        return self.quality[self.key(assignment)]


def spec_for(config: Config, n_trials: int, seed: int, **overrides: Any) -> SearchSpec:
    return SearchSpec(
        workload=WORKLOAD, workload_options=config.workload_options, n_trials=n_trials, seed=seed,
        qat_steps=config.qat_steps, reevaluate_front=0, **({"formats": config.formats} if config.formats else {}),
        **{**config.space, **overrides},
    )


def all_assignments(workload: Workload, config: Config) -> tuple[list[str], dict[str, str], list[dict[str, str]]]:
    """(fqns in execution order, pinned fqn -> format, every full assignment of the space)."""
    graph = discover_layers(workload.model, workload.example_inputs)
    space = build_space(spec_for(config, 1, 0), graph, load_profile("generic"))
    free = list(space.choices)
    out = []
    for combo in itertools.product(*(space.choices[f] for f in free)):
        merged = {**space.pinned, **dict(zip(free, combo, strict=True))}
        out.append({f: merged[f] for f in graph.fqns})
    return list(graph.fqns), dict(space.pinned), out


def table_path(config: Config) -> Path:
    options = "_".join(f"{k}{v}" for k, v in sorted(config.workload_options.items()))
    return cache_path(f"exhaustive_{WORKLOAD}_{options}_qat{config.qat_steps}{config.table_suffix}.json")


def exhaustive_table(workload: Workload, config: Config, path: Path, shard: tuple[int, int] = (0, 1)) -> Table:
    """Train and score every assignment once (seed 0); resumes from ``path``.  With ``shard`` (k, n)
    only every n-th assignment from the k-th is trained, into ``path``'s shard file (run the n shards in
    parallel, then once without ``shard``: it merges them into ``path``)."""
    fqns, pinned, assignments = all_assignments(workload, config)
    graph = discover_layers(workload.model, workload.example_inputs)
    stored: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    rows: dict[str, dict[str, float]] = stored.get("rows", {})
    shard_files = sorted(path.parent.glob(f"{path.stem}.shard*.json"))
    for extra in shard_files:
        rows.update(json.loads(extra.read_text()).get("rows", {}))
    k, n = shard
    out_path = path if n == 1 else path.with_name(f"{path.stem}.shard{k}of{n}.json")
    fp32 = stored.get("fp32_quality") or fp32_quality(workload)
    profile = load_profile("generic")
    started = time.perf_counter()

    def write() -> None:
        out_path.write_text(json.dumps({
            "workload": WORKLOAD, "workload_options": config.workload_options, "qat_steps": config.qat_steps,
            "seed": 0, "fqns": fqns, "pinned": pinned, "fp32_quality": fp32, "rows": rows,
            "trained_at": stored.get("trained_at")
            or f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, mixq {code_version()}",
        }, indent=1))

    for i, assignment in enumerate(assignments):
        name = " ".join(assignment[f] for f in fqns)
        if name in rows or i % n != k:
            continue
        run = run_trial(workload, assignment, qat_steps=config.qat_steps, seed=0)
        bitops = model_costs((CostObjective.BITOPS,), profile, graph, assignment)["bitops"]
        rows[name] = {"quality": run.quality, "bitops": bitops, "duration_s": run.duration_s}
        write()
        elapsed = time.perf_counter() - started
        print(f"[{len(rows)}/{len(assignments)}] {name}: {run.quality:.3f} dB ({run.duration_s:.1f} s, "
              f"{elapsed:.0f} s so far)", flush=True)
    if n == 1 and shard_files:
        write()
        for extra in shard_files:
            extra.unlink()
    return Table(
        fqns=fqns, free=[f for f in fqns if f not in pinned], fp32_quality=fp32,
        quality={tuple(k.split()): v["quality"] for k, v in rows.items()},
        bitops={tuple(k.split()): v["bitops"] for k, v in rows.items()},
    )


# ---------------------------------------------------------------------------------------------
# The methods
# ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One search over the table: its front and what it spent its trials on."""

    front: list[Point]
    trials: list[dict[str, str]]  # every trained map (full), in trial order
    sources: list[str]
    repeats_skipped: int = 0
    neighbour_checks: int = 0
    neighbours_untried: int = 0


def mixq_run(table: Table, workload: Workload, config: Config, budget: int, seed: int, **overrides: Any) -> Run:
    result = run_search(spec_for(config, budget, seed, **overrides), workload=workload, evaluator=table.lookup)
    evaluated = [t for t in result.trials if not t.cached]
    if len(evaluated) > budget:
        raise RuntimeError(f"budget: the runner evaluated {len(evaluated)} assignments, more than {budget}")
    # getattr: the same script measures an older search (no such counts) for a before/after table
    return Run(pareto_points([table.point(t.assignment) for t in result.trials]),
               [dict(t.assignment) for t in evaluated], [t.source for t in evaluated],
               getattr(result, "repeats_skipped", sum(t.cached for t in result.trials)),
               getattr(result, "neighbour_checks", 0), getattr(result, "neighbours_untried", 0))


def mixq_front(table: Table, workload: Workload, config: Config, budget: int, seed: int, **overrides: Any,
               ) -> list[Point]:
    return mixq_run(table, workload, config, budget, seed, **overrides).front


def format_order(table: Table) -> tuple[str, ...]:
    """The free layers' formats, costliest first (one notch down = one step right)."""
    formats = {k[table.fqns.index(table.free[0])] for k in table.quality}
    pinned = {f: "int8" for f in table.fqns if f not in table.free}

    def uniform_cost(fmt: str) -> float:
        return table.bitops[table.key({**pinned, **{f: fmt for f in table.free}})]

    return tuple(sorted(formats, key=uniform_cost, reverse=True))


def greedy_path(table: Table, workload: Workload) -> list[dict[str, str]]:
    """The PTQ-sensitivity greedy path from the costliest format everywhere (fp16) to the cheapest
    (int4), one notch at a time (no QAT in the loop)."""
    order = format_order(table)
    pinned = {f: "int8" for f in table.fqns if f not in table.free}
    base = {**pinned, **{f: order[0] for f in table.free}}

    def ptq(assignment: Mapping[str, str]) -> float:
        return run_trial(workload, {f: assignment[f] for f in table.fqns}, qat_steps=0, seed=0).quality

    base_quality = ptq(base)
    loss = {  # (layer, format) -> PSNR lost by that layer alone at that format (>= 0)
        (f, fmt): max(base_quality - ptq({**base, f: fmt}), 0.0) for f in table.free for fmt in order[1:]
    }
    loss.update({(f, order[0]): 0.0 for f in table.free})
    current = dict(base)
    path = [dict(current)]
    while any(current[f] != order[-1] for f in table.free):
        best: tuple[float, str, str] | None = None
        for f in table.free:
            idx = order.index(current[f])
            if idx == len(order) - 1:
                continue
            down = order[idx + 1]
            saved = table.bitops[table.key(current)] - table.bitops[table.key({**current, f: down})]
            ratio = (loss[(f, down)] - loss[(f, current[f])]) / max(saved, 1e-12)
            if best is None or ratio < best[0]:
                best = (ratio, f, down)
        assert best is not None
        current[best[1]] = best[2]
        path.append(dict(current))
    return path


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def plot(
    path: Path, table: Table, exhaustive: list[Point], fronts: dict[str, list[Point]], budget: int, title: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    int8_bitops = table.bitops[tuple("int8" for _ in table.fqns)]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([b / int8_bitops for b in table.bitops.values()], list(table.quality.values()), s=10, c="0.75",
               label=f"all {len(table.quality)} assignments")
    styles = {"exhaustive front": ("k", "-", "o")}
    colours = zip(fronts, ("tab:blue", "tab:orange", "tab:green"), "s^D", strict=False)
    styles.update({name: (c, "--", m) for name, c, m in colours})
    for name, front in {"exhaustive front": exhaustive, **fronts}.items():
        color, line, marker = styles[name]
        xs, ys = [p[1] / int8_bitops for p in front], [p[0] for p in front]
        ax.step(xs, ys, where="post", color=color, linestyle=line, marker=marker, markersize=4, label=name)
    ax.axhline(table.fp32_quality, color="0.4", linestyle=":", label="fp32")
    ax.set_xlabel("bitops (x all-int8)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(f"{title}: exhaustive front vs fronts found with {budget} trials (seed 0)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def dominated_share(runs: Sequence[Run], table: Table, exhaustive: Sequence[Point]) -> tuple[int, int]:
    """(trials carrying a format of a layer that no exhaustive-front map has there, trials): how well
    the search thins formats that only cost.  Over every run given."""
    on_front = {table.key(dict(zip(table.fqns, k, strict=True))) for k in table.quality
                if (table.quality[k], table.bitops[k]) in set(exhaustive)}
    useful = {(i, key[i]) for key in on_front for i in range(len(table.fqns))}
    carrying = total = 0
    for run in runs:
        for assignment in run.trials:
            key = table.key(assignment)
            total += 1
            carrying += any((i, key[i]) not in useful for i in range(len(key)))
    return carrying, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", choices=list(CONFIGS), default="inner",
                        help="which space: " + "; ".join(f"{k}: {c.words}" for k, c in CONFIGS.items()))
    parser.add_argument("--qat-steps", type=int, default=None, help="QAT steps per trial (default: the space's)")
    parser.add_argument("--seeds", type=int, default=SEEDS)
    parser.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    parser.add_argument("--shard", default=None, metavar="K/N",
                        help="only train the K-th of N slices of the exhaustive table (run N in parallel), then stop")
    parser.add_argument("--methods", nargs="+", default=None,
                        help="methods to run (default all): mixq random greedy tpe")
    args = parser.parse_args()
    torch.set_num_threads(1)

    config = CONFIGS[args.space]
    if args.qat_steps is not None:
        config = dataclasses.replace(config, qat_steps=args.qat_steps)
    workload = load_workload(WORKLOAD, config.workload_options)
    path = table_path(config)
    if args.shard is not None:
        k, n = (int(x) for x in args.shard.split("/"))
        exhaustive_table(workload, config, path, (k, n))
        return
    table = exhaustive_table(workload, config, path)
    exhaustive = pareto_points(list(zip(table.quality.values(), table.bitops.values(), strict=True)))
    norm = Normalisation.of_front(exhaustive)
    hv_max = hypervolume_2d([norm(p) for p in exhaustive], REFERENCE)

    def hv_ratio(front: Sequence[Point]) -> float:
        return hypervolume_2d([norm(p) for p in front], REFERENCE) / hv_max

    chosen = set(args.methods or ("mixq", "random", "greedy", "tpe"))
    greedy = pareto_points([table.point(a) for a in greedy_path(table, workload)]) if "greedy" in chosen else []
    results: dict[tuple[str, int], list[float]] = {}  # (method, budget) -> HV ratio per seed
    found: dict[tuple[str, int], list[float]] = {}  # (method, budget) -> share of exhaustive-front points found
    runs: dict[tuple[str, int], list[Run]] = {}
    seed0_fronts: dict[int, dict[str, list[Point]]] = {}
    formats = format_order(table)
    pinned = {f: "int8" for f in table.fqns if f not in table.free}
    uniform = [{**pinned, **{f: fmt for f in table.free}} for fmt in formats]
    baselines = [table.point(a) for a in uniform]
    covered = checked = 0  # uniform maps weakly dominated by mixq's returned front
    for budget in args.budgets:
        for seed in range(args.seeds):
            methods: dict[str, Run] = {}
            if "mixq" in chosen:
                methods[MIXQ] = mixq_run(table, workload, config, budget, seed)
            if "random" in chosen:
                methods["random"] = mixq_run(table, workload, config, budget, seed, sampler="random",
                                             seed_with_baselines=False, seed_with_sensitivity=False,
                                             check_front_neighbours=False)
            if "greedy" in chosen:
                methods["sensitivity-greedy (PTQ proxy)"] = Run(greedy, [], [])
            if "tpe" in chosen:
                methods["TPE without seeding (ablation)"] = mixq_run(
                    table, workload, config, budget, seed, seed_with_baselines=False, seed_with_sensitivity=False,
                    check_front_neighbours=False)
            if MIXQ in methods:
                covered += sum(any(q >= bq and b <= bb for q, b in methods[MIXQ].front) for bq, bb in baselines)
                checked += len(baselines)
            for name, run in methods.items():
                results.setdefault((name, budget), []).append(hv_ratio(run.front))
                found.setdefault((name, budget), []).append(len(set(run.front) & set(exhaustive)) / len(exhaustive))
                runs.setdefault((name, budget), []).append(run)
            if seed == 0:
                seed0_fronts[budget] = {name: run.front for name, run in methods.items()}
            print(f"budget {budget} seed {seed}: "
                  + ", ".join(f"{n} {results[(n, budget)][-1]:.3f}" for n in methods), flush=True)

    names = list(seed0_fronts[args.budgets[0]])
    rows = []
    for name in names:
        row = [name]
        for budget in args.budgets:
            mean, std = mean_std(results[(name, budget)])
            row.append(f"{100 * mean:.1f} ± {100 * std:.1f}")
        rows.append(row)
    found_rows = [
        [name, *(f"{100 * mean_std(found[(name, b)])[0]:.0f} ± {100 * mean_std(found[(name, b)])[1]:.0f}"
                 for b in args.budgets)]
        for name in names
    ]
    wins = [
        [str(b), f"{sum(m > r for m, r in zip(results[(MIXQ, b)], results[('random', b)], strict=True))}/{args.seeds}",
         f"{100 * (statistics.fmean(results[(MIXQ, b)]) - statistics.fmean(results[('random', b)])):+.1f}"]
        for b in args.budgets
    ] if MIXQ in names and "random" in names else []
    spend_rows = []
    for name in names:
        for budget in args.budgets:
            group = runs[(name, budget)]
            if not group[0].trials:
                continue
            carrying, total = dominated_share(group, table, exhaustive)
            spend_rows.append([
                name, str(budget), f"{carrying}/{total} ({100 * carrying / max(total, 1):.0f}%)",
                f"{statistics.fmean(r.repeats_skipped for r in group):.1f}",
                f"{statistics.fmean(r.neighbour_checks for r in group):.1f}",
                f"{statistics.fmean(r.neighbours_untried for r in group):.1f}",
            ])
    plot_budget = 24 if 24 in args.budgets else args.budgets[0]
    png = result_path("search_efficiency", args.space, ".png")
    plotted = {k: v for k, v in seed0_fronts[plot_budget].items() if "ablation" not in k}
    plot(png, table, exhaustive, plotted, plot_budget, args.space)
    stored = json.loads(path.read_text())
    trial_s = statistics.median(v["duration_s"] for v in stored["rows"].values())
    int8_bitops = table.bitops[tuple("int8" for _ in table.fqns)]
    front_rows = [[f"{q:.2f}", f"{b / int8_bitops:.3f}"] for q, b in exhaustive]
    uniform_rows = [[fmt, f"{q:.3f}", f"{b / int8_bitops:.3f}", "yes" if (q, b) in set(exhaustive) else "no"]
                    for fmt, (q, b) in zip(formats, baselines, strict=True)]
    body = "\n".join([
        (f"Command: `python -m bench.search_efficiency --space {args.space}"
         + (f" --qat-steps {args.qat_steps}" if args.qat_steps is not None else "")
         + (f" --seeds {args.seeds}" if args.seeds != SEEDS else "")
         + (f" --budgets {' '.join(map(str, args.budgets))}" if tuple(args.budgets) != BUDGETS else "") + "`, at "
         f"mixq {code_version()}."),
        "",
        (f"Benchmark model: `load_workload({WORKLOAD!r}, {config.workload_options})`; {config.words}: "
         f"{len(table.free)} free x ({', '.join(formats)}) = {len(table.quality)} assignments, each trained once "
         f"with {config.qat_steps} QAT steps (seed 0; median {trial_s:.1f} s per trial on this machine).  fp32 PSNR "
         f"{table.fp32_quality:.2f} dB.  Table: `{repo_relative(path)}`, trained "
         f"{stored.get('trained_at', '(time not recorded)')}."),
        "",
        (f"Hypervolume of the found front / hypervolume of the exhaustive front ({len(exhaustive)} points), "
         f"mean ± std over seeds 0..{args.seeds - 1}, in %.  Normalised by the exhaustive front's ideal and nadir; "
         f"reference point {REFERENCE} (see the docstring of `bench/search_efficiency.py`).  Each search has "
         "`reevaluate_front=0`; a trial is a table lookup."),
        "",
        markdown_table(["method", *(f"{b} trials" for b in args.budgets)], rows),
        "",
        ("A stricter view: the share of the exhaustive front's points that each method evaluated (in %, "
         "mean ± std over seeds).  Hypervolume forgives near misses; this does not."),
        "",
        markdown_table(["method", *(f"{b} trials" for b in args.budgets)], found_rows),
        "",
        *(["mixq vs random, per seed (same seed, same budget):", "",
           markdown_table(["budget", "mixq > random (seeds)", "mean difference (HV points)"], wins), ""]
          if wins else []),
        ("Where the trials went (all seeds): trials that carry a format in a layer where no exhaustive-front "
         "map has it (a format that only costs there); sampler proposals of an already trained map, served "
         "from the cache without using a trial; one-layer neighbour checks of front points, and the "
         "neighbours of the reported points left untried (means per search)."),
        "",
        markdown_table(["method", "trials", "trials carrying a never-useful format", "repeats skipped",
                        "neighbour checks", "neighbours untried"], spend_rows),
        "",
        (f"Uniform maps (every free layer in one format) weakly dominated by mixq's returned front: "
         f"{covered}/{checked} (every budget and seed)." if checked else ""),
        "",
        markdown_table(["uniform map", "PSNR (dB)", "bitops (x all-int8)", "on the exhaustive front"], uniform_rows),
        "",
        ("\"TPE without seeding\" is mixq's sampler with the uniform baselines and the sensitivity sweep turned "
         "off: it separates what the seeding contributes from what the sampler does.  The sensitivity-greedy "
         "baseline spends post-training-quantization evaluations (no QAT, not counted in the budget) and "
         "proposes a path from the costliest format everywhere to the cheapest, scored from the QAT table; it "
         "does not depend on the seed or the budget."),
        "",
        "Exhaustive front (PSNR dB, bitops x all-int8): " + "; ".join(f"({q}, {b})" for q, b in front_rows),
        "",
        f"Plot (`{png.name}`): all assignments, the exhaustive front and the seed-0 fronts at {plot_budget} trials.",
        "",
        f"![search efficiency]({png.name})",
    ])
    title = f"Search efficiency ({args.space}): hypervolume vs the exhaustive front"
    write_report("search_efficiency", args.space, title, body)


if __name__ == "__main__":
    main()

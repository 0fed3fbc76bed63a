"""Multi-fidelity vs single-fidelity search at equal compute, judged at the long fidelity.

Runs today's default search (one rung: ``--trials`` maps at ``--qat-steps``), reads the QAT steps it
used (trials and front re-evaluations), then runs the multi-fidelity search (``--rungs``, e.g.
``1,3,9``, promotion by non-dominated rank with ``--eta``) with exactly that budget in QAT steps.  Every
map a search reports on its front, plus the uniform baselines the searches tried, is then retrained at the long
fidelity (``--long-factor`` x the steps, constant lr, ``--long-seeds`` seeds: the runs
``bench/fidelity.py`` trains, from the same cache) and each search gets

* the hypervolume of its reported front measured at the long fidelity, normalised over all those maps
  as ``bench.fidelity.front_agreement`` does, and its ratio to the long-fidelity front over all of them
  (1.0: the search reported the maps a long QAT of every candidate would have picked);
* Kendall's tau between the quality it reports for its front maps and their long quality;
* QAT steps used and wall time.

Run from the repository root::

    python -m bench.multifidelity --workload denoise --rungs 1,3,9 1,3

Searches and runs are cached in ``bench/cache/fidelity_runs.json`` (a search under its whole spec).  The
report goes to ``bench/results/multifidelity/<out-name>.{md,png,json}`` (default: the workload's name).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from bench.fidelity import (
    RUNS_FILE,
    RunCache,
    front_indices,
    kendall,
    label,
    map_key,
    normalised_hypervolume,
    uniform_baselines,
    workload_setting,
)
from bench.report import markdown_table, mean_std, result_path, setting_name, write_report
from search import CostObjective, SearchSpec, discover_layers, load_profile, load_workload
from search.quant.cost import model_costs


def parse_rungs(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def plot(searches: Sequence[dict[str, Any]], maps: Sequence[dict[str, Any]], union_front: Sequence[int],
         path: Path, metric: str, long_steps: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5.5))
    rel = max(m["bitops"] for m in maps)
    ax.errorbar([m["bitops"] / rel for m in maps], [m["long_mean"] for m in maps],
                yerr=[m["long_std"] for m in maps], fmt="o", color="lightgrey", capsize=2, label="every map measured")
    styles = [("tab:blue", "s", "-"), ("tab:orange", "^", "--"), ("tab:green", "v", ":"), ("tab:red", "D", "-.")]
    for s, (color, marker, line) in zip(searches, styles, strict=False):
        pts = sorted((maps[i]["bitops"] / rel, maps[i]["long_mean"]) for i in s["indices"])
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, ls=line, color=color, ms=7, mfc="none",
                label=f"{s['name']}: HV ratio {s['hv_ratio']:.3f}")
    pts = sorted((maps[i]["bitops"] / rel, maps[i]["long_mean"]) for i in union_front)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], color="black", lw=0.8, label="long-fidelity front of all maps")
    for m in maps:
        ax.annotate(m["label"], (m["bitops"] / rel, m["long_mean"]), fontsize=6, xytext=(3, -8),
                    textcoords="offset points")
    ax.set_xlabel("BitOPs (relative to the dearest map)")
    ax.set_ylabel(f"{metric} after {long_steps} QAT steps (mean of seeds)")
    ax.set_title("Reported fronts, measured at the long fidelity")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="denoise")
    parser.add_argument("--workload-options", default="{}", help="JSON object")
    parser.add_argument("--trials", type=int, default=24, help="the single-fidelity search's trials (its default)")
    parser.add_argument("--qat-steps", type=int, default=200, help="QAT steps of a first-rung trial")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rungs", type=parse_rungs, nargs="+", default=[(1, 3, 9)],
                        help="fidelity rungs of each multi-fidelity search, e.g. 1,3,9 1,3")
    parser.add_argument("--eta", type=int, default=3, help="promotion_eta of the multi-fidelity searches")
    parser.add_argument("--long-factor", type=int, default=10)
    parser.add_argument("--long-seeds", type=int, default=3)
    parser.add_argument("--runs-file", type=Path, default=RUNS_FILE)
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--rerun-search", action="store_true",
                        help="run the searches again even if cached under the same spec (the search changed)")
    parser.add_argument("--out-name", type=setting_name,
                        help="the setting: results in bench/results/multifidelity/OUT_NAME.{md,png,json} "
                             "(default WORKLOAD)")
    args = parser.parse_args()
    try:  # the default setting is the workload's name; checked now, not after hours of training
        args.out_name = setting_name(args.out_name or args.workload)
    except argparse.ArgumentTypeError as e:
        parser.error(f"--out-name: {e}")
    torch.set_num_threads(int(os.environ.get("MIXQ_TORCH_THREADS", "1")))

    options = json.loads(args.workload_options)
    workload = load_workload(args.workload, options)
    setting = workload_setting(args.workload, options, workload)
    runs = RunCache(args.runs_file, report_only=args.report_only)
    long_steps = args.qat_steps * args.long_factor

    single_spec = SearchSpec(workload=args.workload, workload_options=options, n_trials=args.trials,
                             qat_steps=args.qat_steps, seed=args.seed)
    single = runs.search(single_spec, workload, rerun=args.rerun_search)
    budget = int(single["qat_steps_used"])  # equal compute: trials and re-evaluations, every step counted
    searches: list[dict[str, Any]] = [{"name": "single fidelity (default)", "spec": single_spec, "summary": single}]
    for rungs in args.rungs:
        spec = single_spec.model_copy(update={"fidelity_rungs": rungs, "promotion_eta": args.eta,
                                              "budget_qat_steps": budget})
        spec = SearchSpec.model_validate(spec.model_dump())  # validated like a user's spec
        searches.append({"name": f"multi-fidelity, rungs {','.join(map(str, rungs))}", "spec": spec,
                         "summary": runs.search(spec, workload, rerun=args.rerun_search)})

    fqns = [layer.fqn for layer in discover_layers(workload.model, workload.example_inputs).layers]
    maps: dict[str, dict[str, Any]] = {}  # map key -> row
    # the baselines the searches could report (with first/last pinned to int8, all-int4 is not one: a
    # map no search can return would lower every search's ratio alike and say nothing about them)
    tried = {map_key(t["assignment"]) for s in searches for t in s["summary"]["trials"]}
    for name, assignment in uniform_baselines(fqns).items():
        if map_key(assignment) in tried:
            maps[map_key(assignment)] = {"label": name, "assignment": assignment, "reported": {}}
    for s in searches:
        for point in s["summary"]["front"]:
            row = maps.setdefault(map_key(point["assignment"]),
                                  {"label": label(point["assignment"]), "assignment": point["assignment"],
                                   "reported": {}})
            row["reported"][s["name"]] = point
    rows = list(maps.values())
    # the searches' fronts first, so an interrupted run has measured what the comparison needs most
    for row in sorted(rows, key=lambda r: not r["reported"]):
        for seed in range(args.long_seeds):
            runs.quality(workload, setting, row["assignment"], long_steps, seed)

    profile = load_profile("generic")
    graph = discover_layers(workload.model, workload.example_inputs)
    for row in rows:
        row["long"] = [runs.quality(workload, setting, row["assignment"], long_steps, s)
                       for s in range(args.long_seeds)]
        row["long_mean"], row["long_std"] = mean_std(row["long"])
        row["bitops"] = model_costs((CostObjective.BITOPS,), profile, graph, row["assignment"])[
            str(CostObjective.BITOPS)]
    long_means = [r["long_mean"] for r in rows]
    costs = [r["bitops"] for r in rows]
    hib = workload.higher_is_better
    union_front = front_indices(long_means, costs, hib)
    hv_union = normalised_hypervolume(union_front, long_means, costs, hib)
    for s in searches:
        s["indices"] = [i for i, r in enumerate(rows) if s["name"] in r["reported"]]
        s["hv"] = normalised_hypervolume(s["indices"], long_means, costs, hib)
        s["hv_ratio"] = s["hv"] / hv_union if hv_union > 0 else float("nan")
        # the same ratio with each long seed alone: how much of a difference between searches is noise
        s["hv_ratio_per_seed"] = []
        for seed in range(args.long_seeds):
            q = [r["long"][seed] for r in rows]
            hv_all = normalised_hypervolume(front_indices(q, costs, hib), q, costs, hib)
            s["hv_ratio_per_seed"].append(normalised_hypervolume(s["indices"], q, costs, hib) / hv_all)
        reported = [rows[i]["reported"][s["name"]]["quality"] for i in s["indices"]]
        s["tau"] = kendall(reported, [long_means[i] for i in s["indices"]]) if len(reported) > 1 else float("nan")

    def rung_counts(summary: Mapping[str, Any]) -> str:
        counts: dict[int, int] = {}
        for t in summary["trials"]:
            counts[t["rung"]] = counts.get(t["rung"], 0) + 1
        return " / ".join(str(counts.get(r, 0)) for r in range(max(counts) + 1))

    search_table = markdown_table(
        ["search", "front maps", f"HV of its front at {long_steps} steps", "ratio to the long front of all maps",
         "ratio, each long seed alone",
         "Kendall tau (reported vs long, front maps)", "QAT steps used", "maps trained (top rung reached: 0 / 1 / ..)",
         "wall (s)", "stop reason"],
        [[s["name"], len(s["indices"]), f"{s['hv']:.4f}", f"{s['hv_ratio']:.3f}",
          " / ".join(f"{r:.3f}" for r in s["hv_ratio_per_seed"]), f"{s['tau']:.3f}",
          s["summary"]["qat_steps_used"], rung_counts(s["summary"]), f"{s['summary']['wall_s']:.0f}",
          s["summary"]["stop_reason"] or "-"] for s in searches],
    )
    rel = max(costs)

    def reported_cell(row: Mapping[str, Any], s: Mapping[str, Any]) -> str:
        point = row["reported"].get(s["name"])
        if point is None:
            return ""
        spread = f" ± {point['quality_std']:.3f}" if point["n_evaluations"] > 1 else ""
        return f"{point['quality']:.3f}{spread} ({point['qat_steps']} steps, {point['n_evaluations']} run(s))"

    map_table = markdown_table(
        ["map", "BitOPs (rel.)", *[f"reported by {s['name']}" for s in searches],
         f"{long_steps} steps ({args.long_seeds} seeds)", "on the long front"],
        [[r["label"], f"{r['bitops'] / rel:.3f}", *[reported_cell(r, s) for s in searches],
          f"{r['long_mean']:.3f} ± {r['long_std']:.3f}", "yes" if i in union_front else ""]
         for i, r in sorted(enumerate(rows), key=lambda ir: ir[1]["bitops"])],
    )
    name = args.out_name
    png = result_path("multifidelity", name, ".png")
    plot(searches, rows, union_front, png, workload.metric, long_steps)
    specs = "\n".join(f"- {s['name']}: `{s['spec'].model_dump_json(exclude_defaults=True)}`" for s in searches)
    body = "\n".join([
        f"Workload `{args.workload}` (options {json.dumps(options)}), metric {workload.metric}. The single-fidelity "
        f"search is today's default ({args.trials} trials at {args.qat_steps} QAT steps, front re-evaluation "
        f"included); each multi-fidelity search gets the QAT steps it used as its budget ({budget}). "
        f"{len(rows)} maps: every map on a reported front and the uniform baselines the searches tried, each trained "
        f"{args.long_seeds} times at {long_steps} steps (constant lr) from the pretrained weights. HV: "
        "2-D (quality loss, BitOPs) normalised to the ranges of all these maps at the long fidelity, "
        "reference at the worst corner + 10% (as bench/fidelity.py's front agreement).",
        "",
        specs,
        "",
        search_table,
        "",
        map_table,
        "",
        f"![fronts at the long fidelity]({png.name})",
    ])
    result_path("multifidelity", name, ".json").write_text(json.dumps({
        "long_steps": long_steps, "budget_qat_steps": budget, "hv_union": hv_union,
        "searches": [{"name": s["name"], "spec": s["spec"].model_dump(mode="json"), "hv": s["hv"],
                      "hv_ratio": s["hv_ratio"], "hv_ratio_per_seed": s["hv_ratio_per_seed"], "tau": s["tau"],
                      "qat_steps_used": s["summary"]["qat_steps_used"],
                      "wall_s": s["summary"]["wall_s"]} for s in searches],
        "maps": [{k: v for k, v in r.items()} for r in rows],
    }, indent=1))
    title = f"Multi-fidelity vs single-fidelity search at equal compute on {args.workload}"
    write_report("multifidelity", name, title, body)


if __name__ == "__main__":
    main()

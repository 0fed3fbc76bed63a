"""Which short QAT recipe orders deep-model maps like the long measurement, within one BitOPs level?

On ``denoise-deep`` a search ranks maps after a few dozen QAT steps; what matters for its picks is
the order *within* one cost level (maps with the same number of int4 layers), where long-fidelity
differences are a few tenths of a dB.  This takes every map ``bench/baselines.py`` measured at the
long fidelity (``--runs``, >= 3 seeds), trains each once (seed 0) with each short recipe, and reports

* Kendall's tau between the short score and the long mean over all maps;
* within-level pair agreement: of the pairs of maps at the same BitOPs whose long means differ by
  at least ``--min-gap`` dB, how many the short score orders the same way.

Run from the repository root (about 10 minutes on one core)::

    python -m bench.short_recipes

The long runs (``--runs``) default to ``bench/cache/short_recipes_long_runs.json``: the long-fidelity runs of
``bench/baselines.py``'s first medium run (commit 88179f8, before the program seeds; a subset of
``bench/cache/baselines_denoise-deep_runs.json``, kept as it was so a rerun ranks the same 20 maps).  Short runs
are cached in ``bench/cache/short_recipes_denoise-deep_runs.json`` (deterministic on CPU, 1 thread); the report
goes to ``bench/results/short_recipes/denoise-deep.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from scipy.stats import kendalltau

from bench.report import cache_path, markdown_table, repo_relative, runs_cache, write_report
from search import load_workload, run_trial
from search.study.pareto import assignment_key
from search.workloads.training import QatRecipe

WORKLOAD = "denoise-deep"
RECIPES: dict[str, tuple[QatRecipe, int]] = {  # name -> (recipe, QAT steps)
    "constant, lr x1, 40 steps (the search's)": (QatRecipe(), 40),
    "constant, lr x2, 40 steps": (QatRecipe(lr_scale=2.0), 40),
    "cosine, lr x2, 40 steps": (QatRecipe(lr_scale=2.0, schedule="cosine"), 40),
    "cosine, lr x4, 40 steps": (QatRecipe(lr_scale=4.0, schedule="cosine"), 40),
    "constant, lr x1, 80 steps (twice the compute)": (QatRecipe(), 80),
}


def pair_agreement(
    short: Sequence[float], long: Sequence[float], level: Sequence[int], min_gap: float,
) -> tuple[int, int]:
    """(agreeing, counted) over the pairs at the same level whose long values differ by >= ``min_gap``."""
    agree = counted = 0
    for i, j in itertools.combinations(range(len(short)), 2):
        if level[i] != level[j] or abs(long[i] - long[j]) < min_gap:
            continue
        counted += 1
        agree += (short[i] - short[j]) * (long[i] - long[j]) > 0
    return agree, counted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, default=cache_path("short_recipes_long_runs.json"),
                        help="long-fidelity runs of bench/baselines.py")
    parser.add_argument("--long-steps", type=int, default=200)
    parser.add_argument("--min-gap", type=float, default=0.05, help="dB between long means for a pair to count")
    args = parser.parse_args()
    torch.set_num_threads(1)
    workload = load_workload(WORKLOAD, {"width": 16})
    maps: list[tuple[dict[str, str], float]] = []
    for key, values in json.loads(args.runs.read_text()).items():
        text, steps = key.rsplit("|", 1)
        if int(steps) == args.long_steps and len(values) >= 3:
            maps.append((json.loads(text), sum(values[:3]) / 3))
    short_path = runs_cache("short_recipes", WORKLOAD)
    cache: dict[str, float] = json.loads(short_path.read_text()) if short_path.exists() else {}
    long = [q for _, q in maps]
    level = [sum(v == "int4" for v in m.values()) for m, _ in maps]
    rows = []
    for name, (recipe, steps) in RECIPES.items():
        short = []
        for assignment, _ in maps:
            key = f"{assignment_key(assignment)}|{steps}|{recipe.name}"
            if key not in cache:
                cache[key] = run_trial(workload, assignment, qat_steps=steps, seed=0, recipe=recipe).quality
                short_path.write_text(json.dumps(cache, indent=1) + "\n")
            short.append(cache[key])
        agree, counted = pair_agreement(short, long, level, args.min_gap)
        rows.append([name, f"{kendalltau(short, long).statistic:.3f}", f"{agree}/{counted}"])
        print(rows[-1], flush=True)
    body = "\n\n".join([
        f"```\npython -m bench.short_recipes --runs {repo_relative(args.runs)} --long-steps {args.long_steps}\n```",
        f"{len(maps)} maps of `denoise-deep` with a {args.long_steps}-step x 3-seed mean in `{args.runs.name}` "
        f"(the picks and runners-up of `bench/baselines.py`); each trained once (seed 0) per recipe.  Within-level "
        f"pairs: same BitOPs, long means >= {args.min_gap} dB apart.",
        markdown_table(["short recipe", "Kendall tau vs long (all maps)", "within-level pairs ordered as long"], rows),
    ])
    title = "Short QAT recipes: do they order deep-model maps like the long run?"
    write_report("short_recipes", WORKLOAD, title, body)


if __name__ == "__main__":
    main()

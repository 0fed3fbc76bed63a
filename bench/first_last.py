"""The first/last-layer table: how much the first and last layer's precision matters, on both
built-in workloads (digits, denoise, denoise-deep), mean and standard deviation over seeds.

Run from the repository root::

    python -m bench.first_last                  # both workloads, 3 seeds (denoise: minutes per trial)
    python -m bench.first_last --workloads digits
    python -m bench.first_last --workloads denoise-deep   # 17 layers, 100 QAT steps a run
    python -m bench.first_last --report-only    # tabulate the cached runs

Each row is one precision map, trained by ``search.run_trial`` (copy the pretrained fp32 model,
apply the map, calibrate, short QAT, evaluate) with QAT seeds 0..n-1: 200 QAT steps for digits, 300
for denoise.  "fp32 (pretrained)" is the cached pretrained model as is; "fp32 + QAT steps" runs the
same fine-tuning with no quantization, to separate the effect of the extra steps from the
precision's.  For denoise the noisy input's own PSNR is the trivial baseline a denoiser must beat.

The report goes to ``bench/results/first_last/<setting>.md``: ``digits+denoise.md`` for the shallow
workloads (one table, whichever of them ``--workloads`` names), ``denoise-deep.md`` for denoise-deep.
Per-seed results are cached in ``bench/cache/first_last_<setting>_runs.json`` (reruns skip what is there).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from bench.report import markdown_table, mean_std, repo_relative, runs_cache, write_report
from search import CostObjective, discover_layers, load_profile, load_workload, run_trial
from search.quant.cost import model_costs
from search.train import fp32_quality
from search.workloads import denoise, denoise_deep
from search.workloads.base import Workload

# denoise-deep: 100 steps, the long fidelity bench/baselines.py measures fronts at (0.2 s a step on
# one shared core at width 16: 15 runs fit in minutes)
QAT_STEPS = {"digits": 200, "denoise": 300, "denoise-deep": 100}
SHALLOW = "digits+denoise"  # the setting of the shallow workloads' table
RUNS_FILE = runs_cache("first_last", SHALLOW)

# row label -> (index, first index, last index) -> format name
MAPS: dict[str, Callable[[int, int, int], str]] = {
    "all int8": lambda i, first, last: "int8",
    "all int4": lambda i, first, last: "int4",
    "int8 first+last, int4 inside": lambda i, first, last: "int8" if i in (first, last) else "int4",
    "int4 first layer only (rest int8)": lambda i, first, last: "int4" if i == first else "int8",
    "int4 last layer only (rest int8)": lambda i, first, last: "int4" if i == last else "int8",
    "fp32 + QAT steps": lambda i, first, last: "fp32",
}


def load_runs(path: Path) -> dict[str, float]:
    return json.loads(path.read_text()) if path.exists() else {}


def qat_setting(workload: Workload) -> str:
    """What the QAT runs of a workload depend on besides the map and seed: the training batch shape
    and the learning rate.  Part of each cached run's key, so a changed default retrains."""
    inputs, _ = next(workload.train_batches(torch.Generator().manual_seed(0)))
    return f"batch {'x'.join(map(str, inputs.shape))}, lr {workload.lr:g}"


def run_key(workload: str, label: str, seed: int, setting: str) -> str:
    return f"{workload}|{label}|{seed}|{setting}"


def save_run(path: Path, key: str, quality: float) -> dict[str, float]:
    """Merge one result into the runs file (re-read first: several processes may share it)."""
    runs = load_runs(path)
    runs[key] = quality
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(runs, indent=1, sort_keys=True))
    os.replace(tmp, path)
    return runs


def measure(
    workload_name: str, seeds: int, runs: dict[str, float], path: Path, train_seeds: Sequence[int]
) -> tuple[list[list[str]], float]:
    """Rows of the table for one workload at its current QAT setting, then rows for any earlier
    setting found in ``runs`` (kept for comparison, never retrained)."""
    workload = load_workload(workload_name)
    setting = qat_setting(workload)
    graph = discover_layers(workload.model, workload.example_inputs)
    n = len(graph.fqns)
    profile = load_profile("generic")
    fp32 = fp32_quality(workload)
    int8_bitops = model_costs((CostObjective.BITOPS,), profile, graph, {f: "int8" for f in graph.fqns})["bitops"]
    unit = "accuracy (%)" if workload.metric == "accuracy" else workload.metric
    scale = 100.0 if workload.metric == "accuracy" else 1.0

    def fmt(mean: float, std: float) -> str:
        return f"{scale * mean:.2f} ± {scale * std:.2f}"

    rows = [[workload_name, "fp32 (pretrained)", fmt(fp32, 0.0), "-", "0.00", "-", "-"]]
    if workload_name in ("denoise", "denoise-deep"):
        noisy = denoise.noisy_input_psnr() if workload_name == "denoise" else denoise_deep.noisy_input_psnr()
        baseline = [
            workload_name, "noisy input (trivial baseline)", fmt(noisy, 0.0), "-", f"{fp32 - noisy:.2f}", "-", "-",
        ]
        rows.insert(0, baseline)
    assignments = {label: {fqn: rule(i, 0, n - 1) for i, fqn in enumerate(graph.fqns)} for label, rule in MAPS.items()}
    # seeds outermost: a run cut short still has every row, with fewer seeds
    for seed in train_seeds:
        for label, assignment in assignments.items():
            key = run_key(workload_name, label, seed, setting)
            if key not in runs:
                run = run_trial(workload, assignment, qat_steps=QAT_STEPS[workload_name], seed=seed)
                runs.update(save_run(path, key, run.quality))
                print(f"{key}: {run.quality:.4f} ({run.duration_s:.1f} s)", flush=True)
    earlier = sorted({k.split("|")[3] for k in runs if k.startswith(f"{workload_name}|")} - {setting})
    for each in [setting, *earlier]:
        name = f"{workload_name} (QAT {each})" + ("" if each == setting else ", earlier default")
        for label, assignment in assignments.items():
            qualities = [runs[k] for s in range(seeds) if (k := run_key(workload_name, label, s, each)) in runs]
            if not qualities:
                continue
            mean, std = mean_std(qualities)
            bitops = model_costs((CostObjective.BITOPS,), profile, graph, assignment)["bitops"]
            maps = " ".join(assignment.values())
            rows.append([name, label, fmt(mean, std), str(len(qualities)), f"{scale * (fp32 - mean):.2f}",
                         f"{bitops / int8_bitops:.3f}", f"`{maps}`"])
    for row in rows:
        row[2] = f"{row[2]} {unit}"
    return rows, fp32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", nargs="+", default=["digits", "denoise"], choices=sorted(QAT_STEPS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--report-only", action="store_true", help="tabulate the cached runs, train nothing new")
    parser.add_argument("--train-seeds", type=int, nargs="+", help="train only these seeds (parallel processes)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    # the shallow workloads keep their original table; denoise-deep gets its own (and its own runs file)
    shallow = set(args.workloads) <= {"digits", "denoise"}
    setting = SHALLOW if shallow else "+".join(args.workloads)
    runs_file = runs_cache("first_last", setting)
    runs = load_runs(runs_file)
    cached = set(runs)
    train_seeds = [] if args.report_only else (args.train_seeds or list(range(args.seeds)))
    rows: list[list[str]] = []
    for name in args.workloads:
        rows += measure(name, args.seeds, runs, runs_file, train_seeds)[0]
    body = "\n".join([
        (f"QAT steps: digits {QAT_STEPS['digits']}, denoise {QAT_STEPS['denoise']}, denoise-deep "
        f"{QAT_STEPS['denoise-deep']} (Adam, the workload's lr, "
        f"minmax ranges); mean ± sample std over seeds 0..{args.seeds - 1}.  Built-in workloads with default "
        "options (digits: `DigitsCNN` width 16, test split of 597 images; denoise: `DnCNN` depth 6 width 32, "
        "sigma 25/255 on a 160x160 crop of `flower.jpg`; denoise-deep: `DnCNN` depth 17 width 16, 17 quantizable "
        "layers, PSNR over 128x128 crops of the held-out photos camera, coins, astronaut).  "
        "drop = fp32 (pretrained) - mean; "
        "bitops relative to all-int8 (MACs x weight bits x activation bits).  "
        "Maps list the layers in execution order.  "
        "The workload column names the QAT batch shape and learning rate; rows marked \"earlier default\" were "
        "trained before the workload's default QAT batches changed (kept for comparison)."),
        "",
        (f"Runs trained by this invocation: {len(set(runs) - cached)}; taken from "
         f"`{repo_relative(runs_file)}` (earlier invocations of this script, e.g. "
         f"`--train-seeds` processes run in parallel): {len(cached & set(runs))}."),
        "",
        markdown_table(
            ["workload", "precision map", "quality", "seeds", "drop vs fp32", "bitops (x int8)", "map"], rows
        ),
    ])
    write_report("first_last", setting, "First/last-layer precision table", body)


if __name__ == "__main__":
    main()

"""Cheap sensitivity proxies against per-layer QAT sensitivity, on ``denoise-deep``.

Run from the repository root::

    python -m bench.sensitivity                      # default workload options, QAT 80 steps, seed 0
    python -m bench.sensitivity --qat-steps 60

What it measures (torch on one thread):

* the workload: PSNR of the noisy held-out input, of the pretrained fp32 model, and of three maps
  after ``--spread-steps`` QAT steps (seed 0): all int8, int8 first+last with int4 inside, all int4;
* the wall time of :func:`search.study.sensitivity.ptq_sensitivity` and
  :func:`search.study.sensitivity.fisher_sensitivity` for every layer, formats int8 and int4;
* the per-layer QAT sensitivity: for each layer, ``search.run_trial`` with only that layer int4
  (the others fp32) for ``--qat-steps`` steps, seed 0; drop = PSNR of the same QAT with no
  quantization minus that run's PSNR;
* Kendall's tau (scipy.stats) of each proxy's int4 scores against the QAT drops.

The report goes to ``bench/results/sensitivity/denoise-deep.md``; QAT results are cached in
``bench/cache/sensitivity_denoise-deep_runs.json`` (a rerun skips them).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from scipy import stats

from bench.report import markdown_table, runs_cache, write_report
from search import discover_layers, load_workload, run_trial
from search.study.sensitivity import LayerSensitivity, fisher_sensitivity, ptq_sensitivity
from search.train import fp32_quality
from search.workloads.base import Workload
from search.workloads.denoise_deep import EVAL_PHOTOS, noisy_input_psnr

WORKLOAD = "denoise-deep"
RUNS_FILE = runs_cache("sensitivity", WORKLOAD)


def cached_quality(path: Path, key: str, train: Callable[[], float]) -> float:
    runs = json.loads(path.read_text()) if path.exists() else {}
    if key not in runs:
        start = time.perf_counter()
        runs[key] = train()
        print(f"{key}: {runs[key]:.3f} dB ({time.perf_counter() - start:.1f} s)", flush=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(runs, indent=1, sort_keys=True))
        os.replace(tmp, path)
    return float(runs[key])


def timed(proxy: Callable[[], list[LayerSensitivity]]) -> tuple[dict[tuple[str, str], float], float]:
    start = time.perf_counter()
    records = proxy()
    return {(r.fqn, r.format): r.score for r in records}, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--qat-steps", type=int, default=80, help="QAT steps of each one-layer-int4 run")
    parser.add_argument("--spread-steps", type=int, default=150, help="QAT steps of the all-int8/int4 maps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    start = time.perf_counter()
    workload: Workload = load_workload(WORKLOAD)
    load_s = time.perf_counter() - start
    fqns = discover_layers(workload.model, workload.example_inputs).fqns
    n = len(fqns)

    def quality(label: str, assignment: dict[str, str], steps: int) -> float:
        key = f"{label}|qat{steps}|seed{args.seed}|calibration batches {len(workload.calibration_batches)}"
        return cached_quality(
            RUNS_FILE, key, lambda: run_trial(workload, assignment, qat_steps=steps, seed=args.seed).quality
        )

    ptq, ptq_s = timed(lambda: ptq_sensitivity(workload, fqns, ["int8", "int4"]))
    fisher, fisher_s = timed(lambda: fisher_sensitivity(workload, fqns, ["int8", "int4"]))
    print(f"ptq {ptq_s:.1f} s, fisher {fisher_s:.1f} s", flush=True)

    noisy, fp32 = noisy_input_psnr(), fp32_quality(workload)
    maps = {
        "all int8": {f: "int8" for f in fqns},
        "int8 first+last, int4 inside": {f: "int8" if i in (0, n - 1) else "int4" for i, f in enumerate(fqns)},
        "all int4": {f: "int4" for f in fqns},
    }
    spread = {label: quality(label, m, args.spread_steps) for label, m in maps.items()}

    qat_fp32 = quality("fp32", {f: "fp32" for f in fqns}, args.qat_steps)
    qat_drop = {f: qat_fp32 - quality(f"{f} int4", {f: "int4"}, args.qat_steps) for f in fqns}

    def tau(scores: dict[tuple[str, str], float]) -> str:
        result = stats.kendalltau([scores[(f, "int4")] for f in fqns], [qat_drop[f] for f in fqns])
        return f"{result.statistic:.3f} (p = {result.pvalue:.3g})"

    workload_rows = [
        ["noisy input (trivial baseline)", f"{noisy:.2f}"],
        ["fp32 (pretrained)", f"{fp32:.2f}"],
        *[[f"{label} ({args.spread_steps} QAT steps)", f"{psnr:.2f}"] for label, psnr in spread.items()],
    ]
    layer_rows = [
        [f"`{f}`", f"{ptq[(f, 'int8')]:.3f}", f"{ptq[(f, 'int4')]:.3f}", f"{fisher[(f, 'int8')]:.3g}",
         f"{fisher[(f, 'int4')]:.3g}", f"{qat_drop[f]:.3f}"]
        for f in fqns
    ]  # fmt: skip
    body = "\n".join([
        (f"`{WORKLOAD}` at default options: {n} quantizable layers (DnCNN depth 17, width 16), held-out "
        f"photos {', '.join(EVAL_PHOTOS)}; "
        f"loading the workload took {load_s:.1f} s (pretraining only on a cache miss)."),
        "",
        "## Workload: PSNR on the held-out crops (dB), seed 0",
        "",
        markdown_table(["model", "PSNR (dB)"], workload_rows),
        "",
        "## Proxy cost (all layers, int8 and int4)",
        "",
        markdown_table(
            ["proxy", "wall time (s)", "Kendall tau vs QAT int4 drop"],
            [["PTQ per-layer drop", f"{ptq_s:.1f}", tau(ptq)],
             ["Fisher (output space)", f"{fisher_s:.1f}", tau(fisher)]],
        ),
        "",
        (f"## Per layer (QAT: only that layer int4, {args.qat_steps} steps, seed {args.seed}; "
        f"reference: the same QAT all fp32, {qat_fp32:.3f} dB)"),
        "",
        "PTQ drop in dB; Fisher in loss units (sum over 4 batches); QAT drop in dB.",
        "",
        markdown_table(["layer", "PTQ int8", "PTQ int4", "Fisher int8", "Fisher int4", "QAT int4 drop"], layer_rows),
    ])  # fmt: skip
    write_report("sensitivity", WORKLOAD, f"Sensitivity proxies vs QAT on {WORKLOAD}", body)


if __name__ == "__main__":
    main()

"""Trials per CPU-second of the batched QAT engine (issue 22: K maps in one pass) against the one-map path,
side by side in one process, for K = 1, 2, 4, 8, 16; and memory per map.

Run from the repository root::

    python -m bench.batched_qat                      # denoise-deep and three corpus CNNs (a few minutes)
    python -m bench.batched_qat --quick              # a smoke run
    python -m bench.batched_qat --workloads corpus:resnet18 --ks 1 8 --steps 40 --name resnet18

How it measures: for each workload, K random maps (formats int4, int8, w4a8, fp16, w8a16 per layer, the
first and last layer int8, seeded) are trained for ``--steps`` QAT steps and scored, once by
``search.run_trials`` (one pass; it falls back to one map at a time where the model cannot be batched, and the
report says so) and once by ``search.run_trial`` per map (the one-map path), both with the same seed.
Each includes everything a trial costs: deep copy, quantize, calibrate, QAT, evaluate.  Time is this process's
CPU time (``time.process_time``), one torch thread (``torch.set_num_threads(1)``), so time spent descheduled
on a shared machine does not count.  The two paths alternate within each round (the order flips every round)
and every K is warmed up once untimed (first-call costs, the engine's per-shape kernel probes: a search pays
them once per process).  Reported: trials per CPU-second of each path (median over rounds) and their ratio.

Memory per map: the bytes a training step holds per map, parameters x 4 (weights, gradients, Adam's two
moments) plus the tensors autograd saves for the backward (counted once per storage with
``torch.autograd.graph.saved_tensors_hooks``), batched (divided by K) and one-map.

Workloads: ``denoise-deep`` (its defaults: depth 17, width 16, 8 patches of 32 px) and ``corpus:<name>``,
a corpus model of ``tests/corpus/models.py`` at its test size (``corpus_workload``: batch 4, tiny width).
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from bench.report import markdown_table, result_path, setting_name, write_report
from search import discover_layers, load_workload, run_trial
from search.quant.batched import BatchedModel
from search.quant.formats import as_formats
from search.quant.qat import RangeMethod, calibrate, quantize_model
from search.train import run_trials
from search.workloads.base import Workload

FORMATS = ("int4", "int8", "w4a8", "fp16", "w8a16")
DEFAULT_WORKLOADS = ("denoise-deep", "corpus:resnet18", "corpus:kws", "corpus:espcn")
DEFAULT_KS = (1, 2, 4, 8, 16)


def make_workload(name: str) -> Workload:
    if name.startswith("corpus:"):
        from tests.corpus.models import corpus_workload

        return corpus_workload(name.removeprefix("corpus:"))
    return load_workload(name)


def random_maps(workload: Workload, k: int, seed: int = 0) -> list[dict[str, str]]:
    fqns = discover_layers(workload.model, workload.example_inputs).fqns
    rng = random.Random(seed)
    return [{f: "int8" if i in (0, len(fqns) - 1) else rng.choice(FORMATS) for i, f in enumerate(fqns)}
            for _ in range(k)]


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------


def _saved_bytes(step: Any) -> int:
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        try:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


def calibrated_models(workload: Workload, maps: Sequence[dict[str, str]]) -> list[torch.nn.Module]:
    """One fake-quant copy of the workload's model per map, calibrated (the one-map path's start)."""
    models = []
    for qmap in maps:
        model = copy.deepcopy(workload.model)
        quantize_model(model, as_formats(qmap), workload.example_inputs)
        calibrate(model, workload.calibration_batches)
        models.append(model)
    return models


def memory_per_map(workload: Workload, maps: Sequence[dict[str, str]]) -> tuple[float, float]:
    """(batched, one-map) bytes per map one training step holds: parameters x 4 + saved activations."""
    models = calibrated_models(workload, maps)
    batched = BatchedModel(models, RangeMethod.MINMAX).train()
    x, y = next(workload.train_batches(torch.Generator().manual_seed(0)))

    def step_batched() -> None:
        out = batched(x)
        sum(workload.loss_fn(part, y) for part in batched.split(out, x.shape[0]))

    def step_one() -> None:
        workload.loss_fn(models[0].train()(x), y)

    def param_bytes(m: torch.nn.Module) -> int:
        return sum(p.numel() * p.element_size() for p in m.parameters() if p.requires_grad)

    k = len(models)
    b = (4 * param_bytes(batched) + _saved_bytes(step_batched)) / k
    one = 4 * param_bytes(models[0]) + _saved_bytes(step_one)
    return b, one


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


@dataclass
class Row:
    workload: str
    k: int
    batched: bool
    fallback: str
    batched_cpu_s: list[float] = field(default_factory=list)
    one_map_cpu_s: list[float] = field(default_factory=list)
    mem_batched_mib: float = 0.0
    mem_one_mib: float = 0.0

    @property
    def ratio(self) -> float:
        return statistics.median(self.one_map_cpu_s) / statistics.median(self.batched_cpu_s)


def _cpu(fn: Any) -> tuple[float, Any]:
    start = time.process_time()
    out = fn()
    return time.process_time() - start, out


def measure(name: str, ks: Sequence[int], steps: int, rounds: int) -> list[Row]:
    workload = make_workload(name)
    maps = random_maps(workload, max(ks))
    rows = []
    for k in ks:
        chosen = maps[:k]
        warm = run_trials(workload, chosen, qat_steps=1, seed=0)  # first-call costs, kernel probes
        run_trial(workload, chosen[0], qat_steps=1, seed=0)
        row = Row(workload=name, k=k, batched=warm.batched, fallback=warm.fallback)
        for r in range(rounds):
            order = ["batched", "one-map"] if r % 2 == 0 else ["one-map", "batched"]
            for path in order:
                if path == "batched":
                    seconds, _ = _cpu(lambda: run_trials(workload, chosen, qat_steps=steps, seed=r))  # noqa: B023
                    row.batched_cpu_s.append(seconds)
                else:
                    seconds, _ = _cpu(lambda: [run_trial(workload, m, qat_steps=steps, seed=r)  # noqa: B023
                                               for m in chosen])  # noqa: B023
                    row.one_map_cpu_s.append(seconds)
        if row.batched and k > 1:
            b, one = memory_per_map(workload, chosen)
            row.mem_batched_mib, row.mem_one_mib = b / 2**20, one / 2**20
        rows.append(row)
        print(f"{name} K={k}: batched {statistics.median(row.batched_cpu_s):.2f} s, one-map "
              f"{statistics.median(row.one_map_cpu_s):.2f} s CPU, ratio {row.ratio:.2f}"
              + ("" if row.batched else f" (not batched: {row.fallback})"), flush=True)
    return rows


# ---------------------------------------------------------------------------------------------
# Profile: where a batched step's time goes
# ---------------------------------------------------------------------------------------------

_CONV_OPS = ("convolution", "conv2d", "conv1d", "conv_transpose", "mkldnn", "addmm", "bmm", "mm")


def profile_step(name: str, k: int) -> list[list[str]]:
    """Self CPU time per training step, per map, in convolutions/matmuls vs everything else, for the
    batched model (K maps) and the one-map model (torch.profiler; its overhead inflates both alike)."""
    from torch.profiler import ProfilerActivity, profile

    workload = make_workload(name)
    maps = random_maps(workload, k)
    models = calibrated_models(workload, maps)
    batched = BatchedModel(models, RangeMethod.MINMAX).train()
    one = models[0].train()
    x, y = next(workload.train_batches(torch.Generator().manual_seed(0)))

    def step_batched() -> None:
        out = batched(x)
        loss = torch.stack([workload.loss_fn(p, y) for p in batched.split(out, x.shape[0])]).sum()
        loss.backward()

    def step_one() -> None:
        workload.loss_fn(one(x), y).backward()

    rows = []
    for label, step, per in (("batched", step_batched, k), ("one-map", step_one, 1)):
        for _ in range(3):
            step()
        start = time.process_time()
        for _ in range(5):
            step()
        plain_ms = (time.process_time() - start) / 5 * 1e3 / per
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        conv = other = 0.0
        for event in prof.key_averages():
            if any(tag in event.key for tag in _CONV_OPS):
                conv += event.self_cpu_time_total
            else:
                other += event.self_cpu_time_total
        total = conv + other
        rows.append([name, label, f"{plain_ms:.2f}", f"{conv / total:.0%}", f"{other / total:.0%}"])
    return rows


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def render(rows: list[Row], steps: int, rounds: int, profile_rows: list[list[str]], profile_k: int) -> str:
    table = []
    for r in rows:
        b, o = statistics.median(r.batched_cpu_s), statistics.median(r.one_map_cpu_s)
        note = "" if r.batched else f"one at a time: {r.fallback}"
        mem = f"{r.mem_batched_mib:.2f} / {r.mem_one_mib:.2f}" if r.mem_batched_mib else ""
        table.append([r.workload, r.k, f"{r.k / b:.2f}", f"{r.k / o:.2f}", f"{r.ratio:.2f}", mem, note])
    targets = []
    for name in dict.fromkeys(r.workload for r in rows):
        at8 = [r for r in rows if r.workload == name and r.k == 8]
        if at8:
            targets.append([name, f"{at8[0].ratio:.2f}", ">= 2.5", "met" if at8[0].ratio >= 2.5 else "missed"])
    parts = [
        "## Trials per CPU-second",
        "",
        f"{steps} QAT steps per trial, {rounds} round(s) per K (median), each trial complete (copy, quantize, "
        "calibrate, QAT, evaluate).  `batched` = `search.run_trials` (K maps in one pass), `one-map` = "
        "`search.run_trial` per map; same maps, same seed.  Memory = bytes a training step holds per map "
        "(parameters x 4 + tensors saved for backward), batched / one-map, MiB.",
        "",
        markdown_table(["workload", "K", "batched trials/CPU-s", "one-map trials/CPU-s", "ratio",
                        "memory per map (MiB)", "note"], table),
        "",
        "## Target: >= 2.5x at K = 8",
        "",
        markdown_table(["workload", "ratio at K = 8", "target", ""], targets),
    ]
    if profile_rows:
        parts += [
            "",
            f"## Where a training step's time goes (K = {profile_k})",
            "",
            "Forward + backward of one training step (no optimizer), CPU ms per map (`time.process_time`, "
            "5 steps), and the share of self CPU time in convolution/matmul kernels vs everything else "
            "(fake quant, activations, copies, autograd) from one `torch.profiler` step.",
            "",
            markdown_table(["workload", "path", "CPU ms per map", "conv/matmul", "other"], profile_rows),
        ]
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", default=list(DEFAULT_WORKLOADS),
                        help="built-in names or corpus:<name> (default: %(default)s)")
    parser.add_argument("--ks", nargs="+", type=int, default=list(DEFAULT_KS),
                        help="maps per pass (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=20, help="QAT steps per trial (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=1, help="timed rounds per K (default: %(default)s)")
    parser.add_argument("--profile-k", type=int, default=8, help="K of the profile table; 0 skips it")
    parser.add_argument("--quick", action="store_true", help="smoke run: corpus:kws, K 1 2, 3 steps")
    parser.add_argument("--name", type=setting_name, default=None,
                        help="setting name of the report (default: 'default', or 'quick' with --quick)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.quick:
        args.workloads, args.ks, args.steps, args.rounds, args.profile_k = ["corpus:kws"], [1, 2], 3, 1, 2
    if args.name is None:  # a smoke run never overwrites the recorded report
        args.name = "quick" if args.quick else "default"
    rows: list[Row] = []
    for name in args.workloads:
        rows += measure(name, args.ks, args.steps, args.rounds)
    profile_rows = []
    if args.profile_k:
        for name in args.workloads:
            if any(r.workload == name and r.batched for r in rows):
                profile_rows += profile_step(name, args.profile_k)
    body = render(rows, args.steps, args.rounds, profile_rows, args.profile_k)
    write_report("batched_qat", args.name, "Batched QAT: K maps per pass vs one map at a time", body)
    result_path("batched_qat", args.name, ".json").write_text(json.dumps(
        {"steps": args.steps, "rounds": args.rounds, "rows": [asdict(r) | {"ratio": r.ratio} for r in rows],
         "profile": profile_rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()

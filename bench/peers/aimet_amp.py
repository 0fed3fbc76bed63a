"""The real AIMET AMP (aimet-torch 2.42.0, ``aimet_torch.mixed_precision.choose_mixed_precision``) on
``denoise-deep``: its picks at each BitOPs budget, for bench/baselines.py's ``aimet-amp`` method.

Runs in the AIMET virtual environment (bench/peers/setup.sh), the checkout on PYTHONPATH::

    PYTHONPATH=. /work/peers/aimet/bin/python -m bench.peers.aimet_amp --space default --out picks.json

AIMET's own flow: batch norms folded into the convolutions (``fold_all_batch_norms``), a
``QuantizationSimModel`` at W8A8 (min-max encodings from the workload's calibration batches), then AMP:
phase 1 scores every quantizer group at every candidate (the others at the highest); phase 2 quantizes the
groups cumulatively in the order of that list (least sensitive first) and scores each prefix (the pareto
list).  Candidates: W8A8 / W4A4 (``--space int8-int4``) or W8A8 / W4A8 / W4A4 (``--space default``: mixq's
``int8`` / ``w4a8`` / ``int4``; not ``w8a16`` / ``fp16``: AMP's path starts with every group at its highest
candidate and only lowers, so those would only add a costlier start above every budget here).  The score
of both phases is the workload's metric (PSNR of the held-out crops, dB, the same data
``search.study.sensitivity.ptq_sensitivity`` scores).  First and last layer stay W8A8 (mixq's default pin):
their quantizer groups are left out of the groups AMP may change.

Phase 2 ``--phase2 bruteforce`` scores every prefix; the pick at budget B is the best-scored prefix whose BitOPs
(mixq's own cost model) are <= B x all-int8's.  ``--phase2 binary`` (AMP's default search) needs an accuracy
target, not a BitOPs budget, so it is driven as a user of ``allowed_accuracy_drop`` would: per budget, AMP
again with the drop of brute force's pick at B (the same results folder, ``clean_start=False``: AMP reuses
its phase 1 and the prefixes it already scored), and the map AMP leaves the sim at is the pick (left out if
it exceeds B: binary search assumes scores fall monotonically along the path).
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import torch

import bench.peers._tv  # noqa: F401  (before torchvision: defines the schemas its CPU import needs)
from bench.peers._common import SPACES, Problem, arguments, problem, write_picks

CANDIDATE_OF = {"int8": (8, 8), "w4a8": (8, 4), "int4": (4, 4)}  # mixq format -> (activation bits, weight bits)


def _forward(model: torch.nn.Module, batches: Any) -> None:
    with torch.no_grad():
        for inputs, _ in batches:
            model(inputs)


def _group_fqn(group: Any, free: tuple[str, ...]) -> str | None:
    names = [n.removeprefix("_module_to_wrap.") for n in group.parameter_quantizers]
    hits = [f for f in free if any(n == f or n.endswith("." + f) for n in names)]
    return hits[0] if len(hits) == 1 else None


def run(prob: Problem, formats: tuple[str, ...], search_algo: str, results_dir: str,
        allowed_drop: float | None = None, clean_start: bool = True,
        ) -> tuple[list[tuple[float, float, dict[str, str]]], dict[str, str], float]:
    """AMP once: (the pareto list as (mixq BitOPs ratio, AMP score, map), the map the sim is left at, fp32 score)."""
    import aimet_torch._base.amp.mixed_precision_algo as algo_module
    from aimet_torch.batch_norm_fold import fold_all_batch_norms
    from aimet_torch.common.amp.utils import AMPSearchAlgo
    from aimet_torch.common.defs import CallbackFunc, QuantizationDataType
    from aimet_torch.mixed_precision import choose_mixed_precision
    from aimet_torch.quantsim import QuantizationSimModel

    workload = prob.workload
    model = copy.deepcopy(workload.model).eval()
    dummy = workload.example_inputs[0]
    fold_all_batch_norms(model, tuple(dummy.shape), dummy)
    fp32_score = float(workload.evaluate(model))
    sim = QuantizationSimModel(model, dummy_input=dummy, default_output_bw=8, default_param_bw=8)
    sim.compute_encodings(_forward, workload.calibration_batches)

    found = algo_module.find_quantizer_group
    fqn_of: dict[Any, str] = {}
    quantizers: dict[str, Any] = {}  # AMP's module name -> quantized module, to read the final settings

    def free_groups(sim_: Any) -> tuple[dict[str, Any], list[Any]]:  # first and last layer stay W8A8
        name_to_quantizer, groups = found(sim_)
        quantizers.update(name_to_quantizer)
        kept = []
        for g in groups:
            fqn = _group_fqn(g, prob.free)
            if fqn is not None:
                fqn_of[g] = fqn
                kept.append(g)
        return name_to_quantizer, kept

    int_ = QuantizationDataType.int
    candidates = [((CANDIDATE_OF[f][0], int_), (CANDIDATE_OF[f][1], int_)) for f in formats]
    format_of = {(CANDIDATE_OF[f][0], CANDIDATE_OF[f][1]): f for f in formats}

    def evaluate(m: torch.nn.Module, _args: Any) -> float:
        return float(workload.evaluate(m))

    algo_module.find_quantizer_group = free_groups
    try:
        pareto = choose_mixed_precision(
            sim, dummy, candidates, CallbackFunc(evaluate), CallbackFunc(evaluate), allowed_drop, results_dir,
            clean_start, CallbackFunc(_forward, workload.calibration_batches), use_all_amp_candidates=True,
            amp_search_algo=AMPSearchAlgo.BruteForce if search_algo == "bruteforce" else AMPSearchAlgo.Binary)
    finally:
        algo_module.find_quantizer_group = found
    if len(fqn_of) != len(prob.free):
        raise SystemExit(f"aimet_amp: AMP's quantizer groups cover {sorted(fqn_of.values())}, "
                         f"not the {len(prob.free)} free layers {list(prob.free)}")
    path: list[tuple[float, float, dict[str, str]]] = []
    changes: dict[str, str] = {}
    for _rel_bitops, score, group, candidate in pareto or []:  # cumulative, in AMP's order
        changes[fqn_of[group]] = format_of[(candidate[0][0], candidate[1][0])]
        full = prob.full(changes)
        path.append((prob.ratio(full), float(score), full))
    final = _sim_map(sim, quantizers, fqn_of, format_of, prob)
    return path, final, fp32_score


def _sim_map(sim: Any, quantizers: Mapping[str, Any], fqn_of: Mapping[Any, str],
             format_of: Mapping[tuple[int, int], str], prob: Problem) -> dict[str, str]:
    """The map the sim's quantizers are left at (AMP applies its choice to the sim)."""
    from aimet_torch.amp.utils import _mock_v1_quantizers

    out: dict[str, str] = {}
    with _mock_v1_quantizers(sim):
        for group, fqn in fqn_of.items():
            (act_bw, _), (param_bw, _) = group.get_candidate(quantizers)
            out[fqn] = format_of.get((act_bw, param_bw), f"a{act_bw}w{param_bw}")
    return prob.full(out)


def main() -> None:
    parser = arguments(__doc__.split("\n\n")[0])
    parser.add_argument("--phase2", choices=["bruteforce", "binary"], default="bruteforce")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.monotonic()
    prob = problem(args.width)
    formats = SPACES[args.space]
    import aimet_torch

    tool = f"aimet-torch {aimet_torch.__version__}"
    with tempfile.TemporaryDirectory() as results_dir:
        path, _, fp32 = run(prob, formats, "bruteforce", results_dir)
        note = (f"AMP phase 2 brute force over {'/'.join(formats)} (W8A8/W4A8/W4A4 notation: "
                f"{len(path)} pareto points scored), fp32 (BN folded) {fp32:.2f} dB")
        method = "aimet-amp"
        if args.phase2 == "binary":
            method = "aimet-amp-binary"
            binary_path = []
            for budget in args.budgets:
                fitting = [p for p in path if p[0] <= budget + 1e-9]
                if not fitting:
                    continue
                best = max(fitting, key=lambda p: p[1])
                _, chosen, _ = run(prob, formats, "binary", results_dir, allowed_drop=fp32 - best[1],
                                   clean_start=False)
                binary_path.append((prob.ratio(chosen), best[1], chosen))
            note = (f"AMP phase 2 binary search, allowed drop per budget from the brute-force pareto list "
                    f"over {'/'.join(formats)}")
            path = binary_path
    write_picks(args.out, method, tool, args.space, started, args.budgets, path, note)


if __name__ == "__main__":
    main()

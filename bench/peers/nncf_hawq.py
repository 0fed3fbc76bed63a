"""The real NNCF HAWQ precision initializer (nncf 2.19.0, the legacy torch API
``nncf.torch.create_compressed_model``) on ``denoise-deep``: its picks at each BitOPs budget, for
bench/baselines.py's ``nncf-hawq`` method.

Runs in the NNCF virtual environment (bench/peers/setup.sh), the checkout on PYTHONPATH::

    PYTHONPATH=. /work/peers/nncf/bin/python -m bench.peers.nncf_hawq --traces traces.pt --out picks.json

NNCF's quantization algorithm with ``initializer.precision`` ``{"type": "hawq", "bits": [4, 8]}``: Hutchinson
estimates of each weighted layer's average Hessian trace (on the workload's training patches, MSE loss), the
weight bitwidth sequences that do not decrease with the traces' order, each scored by its HAWQ metric (trace x
weight quantization noise, summed), and the best-scored sequence whose compression ratio is >= the target.
Activation bitwidths follow the weights (NNCF's default, liberal ``bitwidth_assignment_mode``: a convolution's
input quantizer takes its weight's bitwidth), so its maps are int8 / int4 in either space: HAWQ's metric sees
weight noise only and cannot choose w4a8 over int4.  (Activations constrained to 8 bits beside ``bits`` [4, 8]
were tried: the precision initializer's ``bits`` override the activations' constraint too, and the maps stayed
int8 / int4.)  ``target_device`` is ``TRIAL`` (no hardware config): with the default CPU config HAWQ's
bitwidths were that config's [8, 16], not ``bits``.

Two adaptations, so that NNCF answers the same question as every other method:
* the compression ratio of a sequence is mixq's: all-int8 BitOPs / the map's BitOPs (``search.quant.cost``,
  weight bits x activation bits x MACs), in place of NNCF's max(bits) x FLOPs; a target ratio 1/B then means
  "BitOPs <= B x all-int8's", and NNCF's own rule (``choose_qconfig_sequence``: the lowest HAWQ metric among the
  sequences at or above the ratio) picks per budget B.  All budgets come from one run (one trace estimate).
* first and last layer stay int8 (mixq's default pin): a sequence that lowers either is taken with them at
  int8, as a hardware constraint of 8 bits on those two quantizers would make NNCF's matcher do (their traces
  are among the lowest here, so rejecting such sequences left only all-int8).
"""

from __future__ import annotations

import copy
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.peers._common import Problem, arguments, problem, write_picks

FORMAT_OF = {(8, 8): "int8", (4, 8): "w4a8", (4, 4): "int4"}  # (weight bits, activation bits) -> mixq format


def node_fqn(node_name: str) -> str:
    """NNCF's node name ``DnCNN/Sequential[body]/NNCFConv2d[2]/conv2d_0`` -> the module's fqn ``body.2``."""
    return ".".join(re.findall(r"\[([^\]]+)\]", node_name))


def main() -> None:
    parser = arguments(__doc__.split("\n\n")[0])
    parser.add_argument("--num-data-points", type=int, default=64, help="HAWQ: samples of the trace estimate")
    parser.add_argument("--iter-number", type=int, default=50, help="HAWQ: Hutchinson iterations at most")
    parser.add_argument("--traces", type=Path, default=None,
                        help="the per-layer Hessian traces: read by NNCF (its traces_per_layer_path) where the file "
                             "exists, else estimated and saved there)")
    args = parser.parse_args()
    args.out = args.out.resolve()
    args.traces = None if args.traces is None else args.traces.resolve()
    os.chdir(tempfile.mkdtemp(prefix="nncf_hawq_"))  # NNCF writes bitwidth_per_scope.json into the working folder
    torch.set_num_threads(1)
    started = time.monotonic()
    prob = problem(args.width)

    os.environ.setdefault("NNCF_TORCH_LEGACY_TRACING", "1")  # 2.19's legacy API wraps torch ops only then
    os.environ.setdefault("NNCF_CI", "1")  # no telemetry
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "0")  # its CPU ops: built by setup.sh, else here (minutes)
    import nncf
    from nncf import NNCFConfig
    from nncf.torch import create_compressed_model, register_default_init_args
    from nncf.torch.quantization.precision_init.hawq_init import HAWQPrecisionInitializer

    workload = prob.workload
    gen = torch.Generator().manual_seed(0)
    stream = workload.train_batches(gen)
    batches = [next(stream) for _ in range(max(1, args.num_data_points // 8))]
    noisy = torch.cat([b[0] for b in batches])
    clean = torch.cat([b[1] for b in batches])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(noisy, clean), batch_size=8)
    side = workload.example_inputs[0].shape[-1]
    quantization: dict[str, Any] = {
        "algorithm": "quantization",
        "initializer": {
            "range": {"num_init_samples": len(noisy)},
            "batchnorm_adaptation": {"num_bn_adaptation_samples": 0},
            "precision": {"type": "hawq", "bits": [4, 8], "compression_ratio": 1.0,
                          "num_data_points": args.num_data_points, "iter_number": args.iter_number},
        },
    }
    reuse_traces = args.traces is not None and args.traces.exists()
    if reuse_traces:
        quantization["initializer"]["precision"]["traces_per_layer_path"] = str(args.traces)
    # target_device TRIAL: no hardware config, so HAWQ's "bits" are the bitwidths it chooses from (with the default
    # CPU config they were replaced by that config's [8, 16], seen here)
    config = NNCFConfig.from_dict({"input_info": {"sample_size": [1, 1, side, side]}, "target_device": "TRIAL",
                                   "compression": quantization})
    config = register_default_init_args(config, loader, criterion=torch.nn.MSELoss())

    pinned = (prob.graph.fqns[0], prob.graph.fqns[-1])
    seen: list[dict[str, str] | None] = []  # each sequence's map, in NNCF's order (None: not in the space)
    metrics: list[float] = []
    rejected: list[str] = []  # why a sequence's setup is not a map of the space
    ratio_of = HAWQPrecisionInitializer.__dict__["get_compression_ratio_per_qconfig_sequence"]
    metric_raw = HAWQPrecisionInitializer.__dict__["calc_hawq_metric_per_qconfig_sequence"]  # a staticmethod
    metric_of = HAWQPrecisionInitializer.calc_hawq_metric_per_qconfig_sequence

    def to_map(init: Any, setup: Any) -> dict[str, str] | None:
        pairs = init._compression_ratio_calculator._weight_qp_id_per_activation_qp_id
        out: dict[str, str] = {}
        for qp_id, qp in setup.quantization_points.items():
            if not qp.is_weight_quantization_point():
                continue
            fqn = node_fqn(qp.insertion_point.target_node_name)
            bits = (qp.qconfig.num_bits, setup.quantization_points[pairs[qp_id]].qconfig.num_bits)
            if fqn in pinned:  # held at int8 below, whatever NNCF set (16 bits on body.0 in its lowered sequences)
                out[fqn] = "int8"
                continue
            if fqn not in prob.graph.fqns or bits not in FORMAT_OF:
                rejected.append(f"{qp.insertion_point.target_node_name} -> {fqn}: weight/activation bits {bits}")
                return None
            out[fqn] = FORMAT_OF[bits]
        if set(out) != set(prob.graph.fqns):
            rejected.append(f"layers {sorted(set(prob.graph.fqns) - set(out))} not quantized")
            return None
        # first and last stay int8, as a hardware constraint of 8 bits only on them would keep them
        # (NNCF's matcher gives such a quantizer the closest bitwidth it allows)
        return out | {f: "int8" for f in pinned}

    def mixq_ratios(self: Any, sequences: list[Any], traces_order: Any) -> list[float]:
        ratios = []
        for seq in sequences:
            assignment = to_map(self, self.get_quantizer_setup_for_qconfig_sequence(seq, traces_order))
            seen.append(assignment)
            ratios.append(0.0 if assignment is None else 1.0 / prob.ratio(assignment))
        return ratios

    def record_metrics(self: Any, *a: Any, **k: Any) -> Any:
        out = metric_of(*a, **k)  # NNCF's is a staticmethod: no self
        metrics.extend(float(m) for m in out)
        return out

    calc_traces = HAWQPrecisionInitializer._calc_traces

    def save_traces(self: Any, *a: Any, **k: Any) -> Any:
        traces = calc_traces(self, *a, **k)
        if args.traces is not None and not reuse_traces:
            args.traces.parent.mkdir(parents=True, exist_ok=True)
            torch.save(traces.get_all().cpu(), args.traces)
        return traces

    HAWQPrecisionInitializer._calc_traces = save_traces
    HAWQPrecisionInitializer.get_compression_ratio_per_qconfig_sequence = mixq_ratios
    HAWQPrecisionInitializer.calc_hawq_metric_per_qconfig_sequence = record_metrics
    try:
        create_compressed_model(copy.deepcopy(workload.model).eval(), config, dump_graphs=False)
    finally:
        HAWQPrecisionInitializer.get_compression_ratio_per_qconfig_sequence = ratio_of
        HAWQPrecisionInitializer.calc_hawq_metric_per_qconfig_sequence = metric_raw
        HAWQPrecisionInitializer._calc_traces = calc_traces
    if len(metrics) != len(seen):
        raise SystemExit(f"nncf_hawq: {len(seen)} sequences but {len(metrics)} HAWQ metrics recorded")
    # NNCF's choose_qconfig_sequence per budget == the lowest metric among maps with BitOPs <= B x int8
    path = [(prob.ratio(a), -m, a) for a, m in zip(seen, metrics, strict=True) if a is not None]
    traces_note = f"; traces {'read from' if reuse_traces else 'saved to'} {args.traces}" if args.traces else ""
    check_rule(prob, path, seen, metrics, args.budgets, HAWQPrecisionInitializer.choose_qconfig_sequence)
    method = "nncf-hawq"
    note = (f"HAWQ bits [4, 8], activations follow the weights"
            f", {args.num_data_points} data points, <= {args.iter_number} Hutchinson iterations; "
            f"{len(path)} of {len(seen)} trace-ordered sequences in the space (first and last held at int8)"
            f"{traces_note}" + (f"; first rejected: {rejected[0]}" if rejected else ""))
    write_picks(args.out, method, f"nncf {nncf.__version__}", args.space,
                started, args.budgets, path, note, hawq_metric=[{"bitops_ratio": r, "metric": -s} for r, s, _ in path])


def check_rule(prob: Problem, path: list[tuple[float, float, dict[str, str]]], seen: list[dict[str, str] | None],
               metrics: list[float], budgets: list[float], choose: Any) -> None:
    """NNCF's own selection rule gives the same map as the picks file's (best score under the budget)."""
    ratios = [0.0 if a is None else 1.0 / prob.ratio(a) for a in seen]
    for budget in budgets:
        if not any(r <= budget + 1e-9 for r, _, _ in path):
            continue
        index = choose([torch.tensor(m) for m in metrics], ratios, 1.0 / budget - 1e-9)
        best = max((p for p in path if p[0] <= budget + 1e-9), key=lambda p: p[1])
        assert seen[index] == best[2], f"budget {budget}: NNCF's rule and the picks file disagree"


if __name__ == "__main__":
    main()

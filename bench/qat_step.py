"""QAT training-step time of mixq's fake-quant model against the fp32 step of the same model, and
against torch.ao FX (``prepare_qat_fx``) and torchao PT2E (``prepare_qat_pt2e``) on the same model and
the same per-layer map (int8 first and last layer, int4 inside); plus one short digits trial.

Run from the repository root::

    python -m bench.qat_step            # full run (several minutes on one core)
    python -m bench.qat_step --quick    # a smoke run

How it measures: every variant gets its own copy of the pretrained model and its own Adam optimizer,
all see the same pre-drawn batches.  Rounds alternate the variants (the order rotates every round);
each round runs ``--steps-per-round`` timed steps of each.  The step is what ``search.train.qat_train``
does: forward, loss, ``float(loss)``, zero_grad, backward, Adam step.  Each step records the process's
CPU time (``time.process_time``: robust on a shared machine, where wall time includes time spent
descheduled) and wall time.  Reported: the median step time of each variant, the ratio of medians,
and the spread (25th-75th percentile) of the per-round ratios.  One thread (``torch.set_num_threads(1)``).

What each route quantizes:

* mixq: the layer's input activation (per tensor, 8 or 4 bits) and weight (per channel, symmetric),
  int32 bias, the model output; BatchNorm folded into the preceding conv before QAT.
* FX: ``QConfigMapping`` with one ``QConfig`` per layer name (``FakeQuantize`` with ``quant_min``/
  ``quant_max`` giving 8 or 4 bits, per-channel symmetric weights); FX fuses conv-bn(-relu) into its
  QAT modules, which keep BatchNorm in training mode.  FX fake-quantizes the model input and each
  layer's *output* at that layer's width, so a layer's input carries the previous layer's width
  (int8 into the second layer here): the same number of activation fake-quants, placed one op
  earlier than mixq's.
* PT2E: a custom ``Quantizer`` (torchao 0.18 ships no XNNPACKQuantizer; the X86/Arm inductor
  quantizers have no int4 activations) annotating each conv/linear's input and weight with the same
  specs; ``prepare_qat_pt2e`` rewrites conv-bn into its QAT conv-bn pattern (BatchNorm in training
  mode).  Both torch routes express int4 activations exactly, via ``quant_min=0, quant_max=15``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from bench.report import markdown_table, write_report
from search import discover_layers, load_workload, parse_format, run_trial
from search.quant.qat import calibrate, fold_batchnorm, quantize_model
from search.workloads.base import Batch, Workload

WORKLOADS = ("digits", "denoise")
VARIANTS = ("fp32", "fp32 (BN folded)", "mixq", "FX", "PT2E")


def inside_int4_map(workload: Workload) -> dict[str, str]:
    """fqn -> format: int8 first and last executed layer, int4 inside (mixq's default pins)."""
    graph = discover_layers(workload.model, workload.example_inputs)
    return {fqn: "int8" if fqn in (graph.first.fqn, graph.last.fqn) else "int4" for fqn in graph.fqns}


# ---------------------------------------------------------------------------------------------
# The five models
# ---------------------------------------------------------------------------------------------


def fp32_model(workload: Workload) -> nn.Module:
    return copy.deepcopy(workload.model).train()


def fp32_folded_model(workload: Workload) -> nn.Module:
    model = copy.deepcopy(workload.model).eval()
    fold_batchnorm(model)
    return model.train()


def mixq_model(workload: Workload, assignment: Mapping[str, str]) -> nn.Module:
    model = copy.deepcopy(workload.model)
    quantize_model(model, {fqn: parse_format(f) for fqn, f in assignment.items()}, workload.example_inputs)
    calibrate(model, workload.calibration_batches)
    return model.train()


def _bits(fmt: str) -> int:
    return parse_format(fmt).weight.bits


def fx_model(workload: Workload, assignment: Mapping[str, str], example: Tensor) -> nn.Module:
    from torch.ao.quantization import FakeQuantize, QConfig, QConfigMapping
    from torch.ao.quantization.observer import MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    def qconfig(bits: int) -> QConfig:
        wmax = 2 ** (bits - 1) - 1  # narrow symmetric range, as mixq (int4: -7..7)
        return QConfig(
            activation=FakeQuantize.with_args(
                observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=2**bits - 1, dtype=torch.quint8,
                qscheme=torch.per_tensor_affine,
            ),
            weight=FakeQuantize.with_args(
                observer=MovingAveragePerChannelMinMaxObserver, quant_min=-wmax, quant_max=wmax, dtype=torch.qint8,
                qscheme=torch.per_channel_symmetric, ch_axis=0,
            ),
        )

    mapping = QConfigMapping().set_global(None)
    for fqn, fmt in assignment.items():
        mapping.set_module_name(fqn, qconfig(_bits(fmt)))
    model = prepare_qat_fx(copy.deepcopy(workload.model).train(), mapping, (example,))
    with torch.no_grad():
        for inputs, _ in workload.calibration_batches:
            model(inputs)
    return model


def pt2e_model(workload: Workload, assignment: Mapping[str, str], example: Tensor) -> nn.Module:
    from torchao.quantization.pt2e import move_exported_model_to_train
    from torchao.quantization.pt2e.fake_quantize import FakeQuantize
    from torchao.quantization.pt2e.observer import MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e
    from torchao.quantization.pt2e.quantizer import (
        QuantizationAnnotation,
        QuantizationSpec,
        Quantizer,
        get_module_name_filter,
    )

    def specs(bits: int) -> tuple[QuantizationSpec, QuantizationSpec]:
        wmax = 2 ** (bits - 1) - 1
        act = QuantizationSpec(
            dtype=torch.uint8, quant_min=0, quant_max=2**bits - 1, qscheme=torch.per_tensor_affine,
            observer_or_fake_quant_ctr=FakeQuantize.with_args(observer=MovingAverageMinMaxObserver),
        )
        weight = QuantizationSpec(
            dtype=torch.int8, quant_min=-wmax, quant_max=wmax, qscheme=torch.per_channel_symmetric, ch_axis=0,
            observer_or_fake_quant_ctr=FakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver),
        )
        return act, weight

    layer_ops = (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default)

    class PerLayerQuantizer(Quantizer):  # type: ignore[misc]  # torchao ships no types
        """Annotates each named conv/linear's input and weight with that layer's bit width."""

        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            filters = {fqn: get_module_name_filter(fqn) for fqn in assignment}
            for node in model.graph.nodes:
                if node.op != "call_function" or node.target not in layer_ops:
                    continue
                fqn = next((f for f, matches in filters.items() if matches(node)), None)
                if fqn is None:
                    continue
                act, weight = specs(_bits(assignment[fqn]))
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map={node.args[0]: act, node.args[1]: weight}, _annotated=True
                )
            return model

        def validate(self, model: torch.fx.GraphModule) -> None:
            annotated = sum("quantization_annotation" in n.meta for n in model.graph.nodes)
            if annotated != len(assignment):
                raise RuntimeError(f"PT2E: annotated {annotated} layers, expected {len(assignment)}")

    exported = torch.export.export(copy.deepcopy(workload.model).train(), (example,)).module()
    model = prepare_qat_pt2e(exported, PerLayerQuantizer())
    move_exported_model_to_train(model)
    with torch.no_grad():
        for inputs, _ in workload.calibration_batches:
            if inputs.shape == example.shape:  # the exported graph is specialised to the batch shape
                model(inputs)
    return model


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


@dataclass
class Trainer:
    """One variant's model and optimizer; ``step`` is one QAT step as ``qat_train`` runs it."""

    model: nn.Module
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    lr: float
    times_s: list[float] = field(default_factory=list)  # wall clock per step
    cpu_s: list[float] = field(default_factory=list)  # this process's CPU time per step

    def __post_init__(self) -> None:
        self.opt = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=self.lr)

    def step(self, batch: Batch) -> float:
        inputs, target = batch
        start, start_cpu = time.perf_counter(), time.process_time()
        loss = self.loss_fn(self.model(inputs), target)
        value = float(loss.detach())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.times_s.append(time.perf_counter() - start)
        self.cpu_s.append(time.process_time() - start_cpu)
        return value


@dataclass
class StepTiming:
    workload: str
    median_ms: dict[str, float]  # wall clock
    median_cpu_ms: dict[str, float]  # process CPU time: what the step costs, less the time spent descheduled
    round_ratios: dict[tuple[str, str], list[float]]  # (variant, reference) -> per-round ratio of CPU medians
    steps_per_variant: int
    batch_shape: str  # the QAT batch, e.g. "8x1x32x32"


def time_steps(name: str, rounds: int, steps_per_round: int, warmup: int) -> StepTiming:
    workload = load_workload(name)
    assignment = inside_int4_map(workload)
    gen = torch.Generator().manual_seed(0)
    stream = workload.train_batches(gen)
    batches = [next(stream) for _ in range(16)]
    example = batches[0][0]
    builders: dict[str, Callable[[], nn.Module]] = {
        "fp32": lambda: fp32_model(workload),
        "fp32 (BN folded)": lambda: fp32_folded_model(workload),
        "mixq": lambda: mixq_model(workload, assignment),
        "FX": lambda: fx_model(workload, assignment, example),
        "PT2E": lambda: pt2e_model(workload, assignment, example),
    }
    trainers = {v: Trainer(build(), workload.loss_fn, workload.lr) for v, build in builders.items()}
    for trainer in trainers.values():
        for i in range(warmup):
            trainer.step(batches[i % len(batches)])
        trainer.times_s.clear()
        trainer.cpu_s.clear()

    per_round: list[dict[str, float]] = []
    order = list(VARIANTS)
    for r in range(rounds):
        order = order[1:] + order[:1]  # rotate who goes first
        medians = {}
        for variant in order:
            trainer = trainers[variant]
            start = len(trainer.cpu_s)
            for i in range(steps_per_round):
                trainer.step(batches[(r * steps_per_round + i) % len(batches)])
            medians[variant] = statistics.median(trainer.cpu_s[start:])
        per_round.append(medians)
    pairs = [(v, "fp32") for v in VARIANTS[1:]] + [("FX", "mixq"), ("PT2E", "mixq"), ("mixq", "fp32 (BN folded)")]
    return StepTiming(
        workload=name,
        median_ms={v: 1e3 * statistics.median(t.times_s) for v, t in trainers.items()},
        median_cpu_ms={v: 1e3 * statistics.median(t.cpu_s) for v, t in trainers.items()},
        round_ratios={(a, b): [m[a] / m[b] for m in per_round] for a, b in pairs},
        steps_per_variant=rounds * steps_per_round,
        batch_shape="x".join(map(str, example.shape)),
    )


def time_trials(repeats: int, qat_steps: int) -> tuple[list[float], list[float]]:
    """(wall, CPU) seconds of ``run_trial`` on digits (copy, apply, calibrate, QAT, evaluate)."""
    workload = load_workload("digits")
    assignment = inside_int4_map(workload)
    run_trial(workload, assignment, qat_steps=qat_steps, seed=0)  # warm-up (first-call overheads)
    wall, cpu = [], []
    for seed in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        run_trial(workload, assignment, qat_steps=qat_steps, seed=seed)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def render(timings: list[StepTiming], trial_wall_s: list[float], trial_cpu_s: list[float], trial_steps: int) -> str:
    step_rows = []
    for t in timings:
        for v in VARIANTS:
            step_rows.append([
                t.workload, v, f"{t.median_cpu_ms[v]:.2f}", f"{t.median_cpu_ms[v] / t.median_cpu_ms['fp32']:.2f}",
                f"{t.median_ms[v]:.2f}", f"{t.median_ms[v] / t.median_ms['fp32']:.2f}",
            ])
    ratio_rows = []
    labels = {
        ("mixq", "fp32"): "mixq / fp32", ("FX", "fp32"): "FX / fp32", ("PT2E", "fp32"): "PT2E / fp32",
        ("FX", "mixq"): "FX / mixq", ("PT2E", "mixq"): "PT2E / mixq",
        ("mixq", "fp32 (BN folded)"): "mixq / fp32 (BN folded)",
    }
    targets = {
        ("mixq", "fp32"): "<= 1.2", ("FX", "mixq"): ">= 1.6", ("PT2E", "mixq"): ">= 1.6",
    }
    for t in timings:
        for pair, label in labels.items():
            ratio = t.median_cpu_ms[pair[0]] / t.median_cpu_ms[pair[1]]
            lo, hi = _quartiles(t.round_ratios[pair])
            wall = t.median_ms[pair[0]] / t.median_ms[pair[1]]
            ratio_rows.append(
                [t.workload, label, f"{ratio:.2f}", f"{lo:.2f}-{hi:.2f}", f"{wall:.2f}", targets.get(pair, "")]
            )
    n_steps = {t.workload: t.steps_per_variant for t in timings}
    trial_row: list[int | str] = [len(trial_wall_s)]
    for values in (trial_cpu_s, trial_wall_s):
        trial_row += [f"{statistics.median(values):.2f}", f"{min(values):.2f}-{max(values):.2f}"]
    return "\n".join([
        "## QAT step time",
        "",
        "Per-layer map: int8 first and last layer, int4 inside (mixq's default).  Steps timed per variant: "
        + ", ".join(f"{k} {v}" for k, v in n_steps.items())
        + ".  Models: digits `DigitsCNN`, denoise `DnCNN` depth 6 width 32 (defaults); QAT batches (the "
        "workload's own stream): " + ", ".join(f"{t.workload} {t.batch_shape}" for t in timings) + ".  "
        "CPU = this process's CPU time per step (`time.process_time`), the primary measure on a shared "
        "machine (time spent descheduled does not count); wall = `time.perf_counter`.  The variants alternate "
        "round by round in one process (the order rotates each round), so load that hits all of them cancels "
        "to first order.",
        "",
        markdown_table(
            ["workload", "variant", "median CPU (ms)", "CPU x fp32", "median wall (ms)", "wall x fp32"], step_rows
        ),
        "",
        "## Ratios",
        "",
        ("Ratio of median CPU step times; IQR = 25th-75th percentile of the per-round CPU ratios; the wall-clock "
        "ratio of medians alongside."),
        "",
        markdown_table(["workload", "ratio", "CPU", "per-round IQR", "wall", "target"], ratio_rows),
        "",
        "## One short digits trial",
        "",
        (f"`search.run_trial` on digits (deep copy, apply the map, calibrate, {trial_steps} QAT steps, evaluate), "
         "one thread, after one warm-up trial; target: about 1 s."),
        "",
        markdown_table(["trials", "median CPU (s)", "CPU range (s)", "median wall (s)", "wall range (s)"], [trial_row]),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--rounds", type=int, default=40, help="alternation rounds (digits; denoise uses half)")
    parser.add_argument("--steps-per-round", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--trials", type=int, default=7, help="timed digits trials")
    parser.add_argument("--quick", action="store_true", help="few rounds, for a smoke run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.quick:
        args.rounds, args.steps_per_round, args.warmup, args.trials = 2, 3, 2, 2
    timings = []
    for name in args.workloads:
        rounds = args.rounds if name == "digits" else max(args.rounds // 2, 1)
        steps = args.steps_per_round if name == "digits" else max(args.steps_per_round // 2, 1)
        timings.append(time_steps(name, rounds, steps, args.warmup))
    trial_steps = 200
    trial_wall, trial_cpu = time_trials(args.trials, trial_steps)
    setting = "+".join(args.workloads) + ("_quick" if args.quick else "")
    write_report(
        "qat_step", setting, "QAT step time: mixq vs fp32, torch.ao FX, torchao PT2E",
        render(timings, trial_wall, trial_cpu, trial_steps),
    )


if __name__ == "__main__":
    main()

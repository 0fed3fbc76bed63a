"""Cheap per-layer sensitivity proxies: seconds of forward/backward passes instead of QAT runs.

Both proxies score one (layer, format) pair with every other layer left fp32, on the pretrained
model with BatchNorm folded (as QAT sees it).  Higher score = more sensitive.

* :func:`ptq_sensitivity` -- post-training-quantized quality drop, as AIMET AMP's per-layer
  sensitivity: the fp32 input range of every layer (and the model output's) is recorded in one pass
  over the workload's calibration batches; then each layer in turn is swapped for its fake-quant
  version with those ranges and the workload's own metric is evaluated.  Score: metric drop vs fp32,
  in the metric's unit (dB for PSNR), positive = worse, whatever the metric's direction.
  Cost: one evaluation per (layer, format).
* :func:`fisher_sensitivity` -- the output-space empirical-Fisher score of NVIDIA ModelOpt's
  AutoQuantize: ``sum over batches of sum((dL/dY)^2 * (Y_q - Y)^2)``, where ``Y`` is the layer's
  fp32 output, ``Y_q`` its output with its weights and input quantized, and ``dL/dY`` the gradient
  of the workload's loss at the fp32 model.  A second-order Taylor estimate of the loss increase
  with the Fisher standing in for the Hessian (HAWQ uses the Hessian trace instead).  Cost: one
  forward and backward pass per batch, then one single-layer forward per (layer, format).  It does
  not score the model-output quantizer that the last layer's format also sets (PTQ does).
* :func:`hessian_sensitivity` -- HAWQ-V3's score: the layer's mean Hessian trace (Hutchinson's
  estimate, ``v^T H v`` with Rademacher ``v``) times its weight quantization perturbation
  ``||Q(W) - W||^2``.  Weights only (HAWQ's assumption).  Cost: two backward passes per sample.

Numbers in, numbers out: no study, no database.  The quantization arithmetic is
:mod:`search.quant.qat`'s, so a score reflects exactly the rounding QAT and export use.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from search.quant.formats import LayerFormat, parse_format
from search.quant.layers import LayerGraph, discover_layers
from search.quant.qat import (
    OUTPUT_QUANT_ATTR,
    ActivationQuantizer,
    FakeQuantMixin,
    RangeMethod,
    dequantize_model,
    fold_batchnorm,
    quantize_model,
    to_fake_quant,
)
from search.workloads.base import Workload
from search.workloads.training import resolve_device

ForwardHook = Callable[[nn.Module, tuple[Any, ...], Any], None]
OUTPUT_RANGE_KEY = "<output>"  # key of the model output's range in the recorded ranges


@dataclass(frozen=True)
class LayerSensitivity:
    fqn: str
    format: str  # format name, e.g. "int4"
    score: float  # higher = more sensitive; unit depends on the proxy (see the module docstring)


def scores_by_layer(records: Sequence[LayerSensitivity]) -> dict[str, dict[str, float]]:
    """``{fqn: {format: score}}``: the shape the selection programs (:mod:`search.study.seeds`) take."""
    out: dict[str, dict[str, float]] = {}
    for r in records:
        out.setdefault(r.fqn, {})[r.format] = r.score
    return out


@dataclass
class _Prepared:
    model: nn.Module  # a BN-folded copy of the workload's model, eval mode, on the device
    graph: LayerGraph
    example_inputs: tuple[Any, ...]
    layers: tuple[str, ...]
    formats: tuple[LayerFormat, ...]
    ranges: dict[str, tuple[float, float]]  # fqn (or OUTPUT_RANGE_KEY) -> fp32 (min, max) over calibration
    device: torch.device


def _to(value: Any, device: torch.device) -> Any:
    return value.to(device) if isinstance(value, Tensor) else value


def _parse_formats(formats: Sequence[str]) -> tuple[LayerFormat, ...]:
    if isinstance(formats, str) or not formats:
        raise ValueError(f"formats: a non-empty list of format names, e.g. ['int8', 'int4'], got {formats!r}")
    parsed = []
    for name in formats:
        try:
            parsed.append(parse_format(name))
        except ValueError as exc:
            raise ValueError(f"formats: {exc}") from None
    return tuple(parsed)


def _check_layers(layers: Sequence[str] | None, graph: LayerGraph) -> tuple[str, ...]:
    if layers is None:
        return graph.fqns
    if isinstance(layers, str):
        raise ValueError(f"layers: a list of layer fqns, got the string {layers!r}")  # noqa: TRY004 - every bad argument is a ValueError here
    for fqn in layers:
        if fqn not in graph.fqns:
            raise ValueError(
                f"layers: {fqn!r} is not a quantizable layer of this model; known layers: "
                f"{', '.join(graph.fqns[:12])}{' ...' if len(graph.fqns) > 12 else ''}"
            )
    return tuple(layers)


def _record_ranges(model: nn.Module, fqns: Sequence[str], batches: Sequence[Any]) -> dict[str, tuple[float, float]]:
    """fp32 (min, max) of each layer's input and of the model output over ``batches``."""
    ranges: dict[str, tuple[float, float]] = {}

    def update(key: str, x: Tensor) -> None:
        lo, hi = (float(v) for v in torch.aminmax(x.detach()))
        old = ranges.get(key, (lo, hi))
        ranges[key] = (min(old[0], lo), max(old[1], hi))

    def hook_for(fqn: str) -> ForwardHook:
        return lambda module, args, out: update(fqn, args[0])

    handles = [model.get_submodule(fqn).register_forward_hook(hook_for(fqn)) for fqn in fqns]
    try:
        with torch.no_grad():
            for batch in batches:
                out = model(batch[0])
                if isinstance(out, Tensor):  # several outputs stay float (no output quantizer)
                    update(OUTPUT_RANGE_KEY, out)
    finally:
        for handle in handles:
            handle.remove()
    return ranges


def _set_range(quantizer: ActivationQuantizer, lo_hi: tuple[float, float]) -> None:
    """Fix a quantizer's range to a recorded one (what :func:`search.quant.qat.calibrate` would observe)."""
    if not quantizer.fmt.is_int:
        return
    quantizer.min_val.fill_(lo_hi[0])
    quantizer.max_val.fill_(lo_hi[1])
    quantizer.finish_calibration()


def _prepare(workload: Workload, layers: Sequence[str] | None, formats: Sequence[str], device: str) -> _Prepared:
    parsed = _parse_formats(formats)
    dev = resolve_device(device)
    model = copy.deepcopy(workload.model).to(dev).eval()
    fold_batchnorm(model)
    example = tuple(_to(t, dev) for t in workload.example_inputs)
    graph = discover_layers(model, example)
    fqns = _check_layers(layers, graph)
    calibration = [(_to(x, dev), y) for x, y in workload.calibration_batches]
    ranges = _record_ranges(model, graph.fqns, calibration)
    return _Prepared(model, graph, example, fqns, parsed, ranges, dev)


@contextmanager
def _one_layer_quantized(prep: _Prepared, fqn: str, fmt: LayerFormat, range_method: RangeMethod) -> Iterator[nn.Module]:
    """``prep.model`` with only ``fqn`` fake-quantized (recorded ranges), restored to fp32 after."""
    model = quantize_model(
        prep.model, {fqn: fmt}, prep.example_inputs, range_method=range_method, fold_bn=False, graph=prep.graph
    )
    try:
        layer = model.get_submodule(fqn)
        if isinstance(layer, FakeQuantMixin):
            _set_range(layer.input_quant, prep.ranges[fqn])
        output_quant = getattr(model, OUTPUT_QUANT_ATTR, None)
        if isinstance(output_quant, ActivationQuantizer):
            _set_range(output_quant, prep.ranges[OUTPUT_RANGE_KEY])
        model.eval()
        yield model
    finally:
        dequantize_model(model)


def ptq_sensitivity(
    workload: Workload,
    layers: Sequence[str] | None = None,
    formats: Sequence[str] = ("int8", "int4"),
    *,
    range_method: RangeMethod | str = RangeMethod.MINMAX,
    device: str = "cpu",
) -> list[LayerSensitivity]:
    """Per-layer post-training-quantized quality drop vs fp32 (metric units, positive = worse).

    ``layers``: fqns to score (default: every quantizable layer, in execution order).  One record
    per (layer, format), layers outer, formats inner in the order given."""
    prep = _prepare(workload, layers, formats, device)
    method = RangeMethod(range_method)
    sign = 1.0 if workload.higher_is_better else -1.0
    baseline = float(workload.evaluate(prep.model))
    records = []
    for fqn in prep.layers:
        for fmt in prep.formats:
            with _one_layer_quantized(prep, fqn, fmt, method) as model:
                quality = float(workload.evaluate(model))
            records.append(LayerSensitivity(fqn, fmt.name, sign * (baseline - quality)))
    return records


def fisher_sensitivity(
    workload: Workload,
    layers: Sequence[str] | None = None,
    formats: Sequence[str] = ("int8", "int4"),
    *,
    num_batches: int = 4,
    seed: int = 0,
    range_method: RangeMethod | str = RangeMethod.MINMAX,
    device: str = "cpu",
) -> list[LayerSensitivity]:
    """Per-layer empirical-Fisher score ``sum_batches sum((dL/dY)^2 * (Y_q - Y)^2)`` (loss units).

    Gradients come from ``num_batches`` batches of ``workload.train_batches`` drawn with ``seed``
    (deterministic for a seed).  Records as :func:`ptq_sensitivity`."""
    if num_batches < 1:
        raise ValueError(f"num_batches: at least 1, got {num_batches}")
    prep = _prepare(workload, layers, formats, device)
    method = RangeMethod(range_method)
    model = prep.model
    # fake-quant twins of each scored layer, sharing its parameters, inputs fixed to the fp32 ranges
    twins: dict[tuple[str, str], nn.Module] = {}
    for fqn in prep.layers:
        for fmt in prep.formats:
            twin = to_fake_quant(model.get_submodule(fqn), fmt, method).eval()
            if isinstance(twin, FakeQuantMixin):
                _set_range(twin.input_quant, prep.ranges[fqn])
            twins[(fqn, fmt.name)] = twin
    scores = dict.fromkeys(twins, 0.0)
    captured: dict[str, tuple[Tensor, Tensor]] = {}  # fqn -> (input, output with retained grad)

    def hook_for(fqn: str) -> ForwardHook:
        def hook(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            out.retain_grad()
            captured[fqn] = (args[0].detach(), out)

        return hook

    handles = [model.get_submodule(fqn).register_forward_hook(hook_for(fqn)) for fqn in prep.layers]
    batches = workload.train_batches(torch.Generator().manual_seed(seed))
    try:
        for _ in range(num_batches):
            inputs, target = next(batches)
            model.zero_grad(set_to_none=True)
            with torch.enable_grad():
                loss = workload.loss_fn(model(_to(inputs, prep.device)), _to(target, prep.device))
                loss.backward()
            with torch.no_grad():
                for (fqn, fmt_name), twin in twins.items():
                    x, out = captured[fqn]
                    grad = out.grad if out.grad is not None else torch.zeros_like(out)
                    delta = twin(x) - out.detach()  # (N, C_out, ...) quantization error of this layer alone
                    scores[(fqn, fmt_name)] += float((grad.square() * delta.square()).sum())
    finally:
        for handle in handles:
            handle.remove()
        model.zero_grad(set_to_none=True)
    return [LayerSensitivity(fqn, fmt_name, score) for (fqn, fmt_name), score in scores.items()]


def hessian_sensitivity(
    workload: Workload,
    layers: Sequence[str] | None = None,
    formats: Sequence[str] = ("int8", "int4"),
    *,
    samples: int = 8,
    seed: int = 0,
    range_method: RangeMethod | str = RangeMethod.MINMAX,
    device: str = "cpu",
) -> list[LayerSensitivity]:
    """HAWQ-V3's per-layer score ``mean trace(H_W) * ||Q(W) - W||^2`` (loss units).

    The trace is Hutchinson's estimate over ``samples`` batches of ``workload.train_batches`` (one
    Rademacher vector each, drawn with ``seed``: deterministic); cross-layer terms vanish in
    expectation, so all layers share the samples.  Records as :func:`ptq_sensitivity`."""
    if samples < 1:
        raise ValueError(f"samples: at least 1, got {samples}")
    prep = _prepare(workload, layers, formats, device)
    method = RangeMethod(range_method)
    model = prep.model
    weights = [model.get_parameter(f"{fqn}.weight") for fqn in prep.layers]
    gen = torch.Generator().manual_seed(seed)
    batches = workload.train_batches(gen)
    traces = dict.fromkeys(prep.layers, 0.0)
    for _ in range(samples):
        inputs, target = next(batches)
        with torch.enable_grad():
            loss = workload.loss_fn(model(_to(inputs, prep.device)), _to(target, prep.device))
            grads = torch.autograd.grad(loss, weights, create_graph=True)
            vs = [(torch.randint(0, 2, w.shape, generator=gen).float() * 2 - 1).to(w.device) for w in weights]
            hvs = torch.autograd.grad(grads, weights, grad_outputs=vs)
        for fqn, v, hv in zip(prep.layers, vs, hvs, strict=True):
            traces[fqn] += float((v * hv).sum()) / samples
    records = []
    for fqn, weight in zip(prep.layers, weights, strict=True):
        w = weight.detach()
        for fmt in prep.formats:
            twin = to_fake_quant(copy.deepcopy(model.get_submodule(fqn)), fmt, method)
            assert isinstance(twin, FakeQuantMixin)
            with torch.no_grad():
                perturbation = float((twin.weight_quant(w) - w).square().sum())
            records.append(LayerSensitivity(fqn, fmt.name, traces[fqn] / w.numel() * perturbation))
    return records

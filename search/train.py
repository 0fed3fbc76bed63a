"""One trial: copy the pretrained model, apply a precision map, calibrate, run short QAT, evaluate."""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from search.errors import NonFiniteLossError
from search.quant.attention import prepare_model
from search.quant.batched import BatchedModel, BatchingError, check_forward, train_batched, unsupported_reason
from search.quant.formats import FormatMap, as_formats
from search.quant.layers import LayerGraph, discover_layers
from search.quant.qat import RangeMethod, calibrate, fold_batchnorm, quantize_model
from search.workloads.base import Workload, WorkloadError, call_user_code
from search.workloads.training import (
    DEFAULT_RECIPE,
    QatRecipe,
    resolve_device,
    seed_everything,
    train_steps,
)


@dataclass
class TrialRun:
    model: nn.Module  # the trained fake-quant model (eval mode)
    quality: float
    losses: list[float]
    duration_s: float


def qat_train(
    model: nn.Module, workload: Workload, steps: int, seed: int, device: torch.device,
    recipe: QatRecipe = DEFAULT_RECIPE,
) -> list[float]:
    """``steps`` QAT steps on the workload's stream; deterministic for a seed."""
    batches = workload.train_batches(torch.Generator().manual_seed(seed))
    return train_steps(model, batches, workload.loss_fn, steps=steps, lr=workload.lr, device=device, recipe=recipe)


def run_trial(
    workload: Workload,
    assignment: FormatMap,
    *,
    qat_steps: int,
    seed: int,
    range_method: RangeMethod | str = RangeMethod.MINMAX,
    device: str = "cpu",
    recipe: QatRecipe = DEFAULT_RECIPE,
) -> TrialRun:
    """Train and score one precision map (fqn -> format) from the pretrained fp32 weights."""
    start = time.perf_counter()
    seed_everything(seed)
    dev = resolve_device(device)
    model = copy.deepcopy(workload.model).to(dev)
    qmap = as_formats(assignment)
    example, calib = _inputs_on(workload, dev)
    quantize_model(model, qmap, example, range_method=range_method)
    calibrate(model, calib)
    losses = qat_train(model, workload, qat_steps, seed, dev, recipe)
    quality = _score(workload, model)
    return TrialRun(model=model, quality=quality, losses=losses, duration_s=time.perf_counter() - start)


def _inputs_on(
    workload: Workload, dev: torch.device,
) -> tuple[tuple[Any, ...], list[tuple[torch.Tensor, torch.Tensor]]]:
    """The workload's example inputs and calibration batches on ``dev``."""
    example = tuple(t.to(dev) if isinstance(t, torch.Tensor) else t for t in workload.example_inputs)
    return example, [(x.to(dev), y) for x, y in workload.calibration_batches]


def _score(workload: Workload, model: nn.Module) -> float:
    """The trained model's metric (NaN is a :class:`NonFiniteLossError`)."""
    quality = float(workload.evaluate(model))
    if quality != quality:
        raise NonFiniteLossError("metric: evaluation returned NaN")
    return quality


def fp32_quality(workload: Workload, device: str = "cpu") -> float:
    """The pretrained model's metric; a :class:`WorkloadError` if ``evaluate`` fails or is not a
    finite number (checked before any trial trains: every trial would fail the same way)."""
    model = copy.deepcopy(workload.model).to(resolve_device(device)).eval()
    quality = call_user_code("evaluate", workload.evaluate, model)
    try:
        value = float(quality)
    except (TypeError, ValueError):
        raise WorkloadError(f"evaluate: must return a number, returned {type(quality).__name__}") from None
    if not math.isfinite(value):
        raise WorkloadError(f"evaluate: the fp32 model scores {value}; the metric must be a finite number")
    return value



@dataclass
class TrialBatch:
    """What :func:`run_trials` did: one :class:`TrialRun` per map, in the order given, and how they
    were trained (``batched`` False and a ``fallback`` reason when they trained one at a time)."""

    runs: list[TrialRun]
    maps_per_pass: int
    batched: bool
    fallback: str = ""


def run_trials(
    workload: Workload,
    assignments: Sequence[FormatMap],
    *,
    qat_steps: int,
    seed: int,
    range_method: RangeMethod | str = RangeMethod.MINMAX,
    device: str = "cpu",
    recipe: QatRecipe = DEFAULT_RECIPE,
) -> TrialBatch:
    """Train and score several maps on the same batches (the same ``seed``): each map's numbers are
    those :func:`run_trial` gives it alone.  Where the model allows, the maps train together in one QAT
    pass (:mod:`search.quant.batched`); otherwise one at a time, and the reason is given once (a warning)
    and in :attr:`TrialBatch.fallback`.  A batched map's ``duration_s`` is its share of the pass."""
    maps = [as_formats(a) for a in assignments]
    if len(maps) < 2:
        return _one_at_a_time(workload, maps, "one map: nothing to batch", qat_steps=qat_steps, seed=seed,
                              range_method=range_method, device=device, recipe=recipe, warn=False)
    start = time.perf_counter()
    dev = resolve_device(device)
    example, calib = _inputs_on(workload, dev)
    models: list[nn.Module] = []
    reason = ""
    if len(example) != 1 or not isinstance(example[0], torch.Tensor):
        reason = "the model takes several inputs (batching replicates one input tensor)"
    graph: LayerGraph | None = None
    for qmap in maps:
        if reason:
            break
        seed_everything(seed)  # as run_trial: the global RNG at the first batch is the one-map path's
        model = copy.deepcopy(workload.model).to(dev)
        if graph is None:  # the layers of the BN-folded model, the same for every map: discovered once
            prepare_model(model)
            fold_batchnorm(model)
            graph = discover_layers(model, example)
        quantize_model(model, qmap, example, range_method=range_method, graph=graph)
        if not models:
            reason = unsupported_reason(model)
            if reason:
                break
        calibrate(model, calib)
        models.append(model)
    batched: BatchedModel | None = None
    if not reason:
        batched = BatchedModel(models, RangeMethod(range_method))
        reason = check_forward(batched, models, example[0])
    losses: list[list[float]] = []
    if not reason:
        assert batched is not None
        batches = workload.train_batches(torch.Generator().manual_seed(seed))
        try:
            losses = train_batched(batched, batches, workload.loss_fn, steps=qat_steps, lr=workload.lr, device=dev,
                                   recipe=recipe)
        except BatchingError as exc:
            reason = str(exc)
    if reason:
        return _one_at_a_time(workload, maps, reason, qat_steps=qat_steps, seed=seed, range_method=range_method,
                              device=device, recipe=recipe)
    assert batched is not None
    batched.write_back(models)
    runs = []
    share = (time.perf_counter() - start) / len(models)
    for model, map_losses in zip(models, losses, strict=True):
        model.eval()
        t0 = time.perf_counter()
        quality = _score(workload, model)
        runs.append(TrialRun(model=model, quality=quality, losses=map_losses,
                             duration_s=share + time.perf_counter() - t0))
    return TrialBatch(runs=runs, maps_per_pass=len(models), batched=True)


def _one_at_a_time(
    workload: Workload, maps: Sequence[FormatMap], reason: str, *, qat_steps: int, seed: int,
    range_method: RangeMethod | str, device: str, recipe: QatRecipe, warn: bool = True,
) -> TrialBatch:
    if warn:  # once per reason (the warnings module's default filter)
        warnings.warn(f"run_trials: training {len(maps)} maps one at a time: {reason}", RuntimeWarning,
                      stacklevel=3)
    runs = [run_trial(workload, a, qat_steps=qat_steps, seed=seed, range_method=range_method, device=device,
                      recipe=recipe) for a in maps]
    return TrialBatch(runs=runs, maps_per_pass=1, batched=False, fallback=reason)

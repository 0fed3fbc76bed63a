"""One trial: copy the pretrained model, apply a precision map, calibrate, run short QAT, evaluate."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from search.errors import NonFiniteLossError
from search.quant.formats import FormatMap, as_formats
from search.quant.qat import RangeMethod, calibrate, quantize_model
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
    example = tuple(t.to(dev) if isinstance(t, torch.Tensor) else t for t in workload.example_inputs)
    quantize_model(model, qmap, example, range_method=range_method)
    calibrate(model, [(x.to(dev), y) for x, y in workload.calibration_batches])
    losses = qat_train(model, workload, qat_steps, seed, dev, recipe)
    quality = float(workload.evaluate(model))
    if quality != quality:
        raise NonFiniteLossError("metric: evaluation returned NaN")
    return TrialRun(model=model, quality=quality, losses=losses, duration_s=time.perf_counter() - start)


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
    those :func:`run_trial` gives it alone.  This is the one-at-a-time path; the batched engine
    (several maps in one QAT pass) replaces it where the model allows and falls back to it otherwise."""
    runs = [run_trial(workload, a, qat_steps=qat_steps, seed=seed, range_method=range_method, device=device,
                      recipe=recipe) for a in assignments]
    return TrialBatch(runs=runs, maps_per_pass=1, batched=False, fallback="one map per pass")

"""One trial: copy the pretrained model, apply a precision map, calibrate, run short QAT, evaluate."""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from search.formats import FormatMap, as_formats
from search.qat import RangeMethod, calibrate, quantize_model
from search.workloads.base import Batch, Workload, WorkloadError, call_user_code


class NonFiniteLossError(RuntimeError):
    """QAT produced a NaN or infinite loss."""


@dataclass
class TrialRun:
    model: nn.Module  # the trained fake-quant model (eval mode)
    quality: float
    losses: list[float]
    duration_s: float


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} asked for but CUDA is not available; use 'cpu' or 'auto'")
    return torch.device(device)


def train_steps(
    model: nn.Module,
    batches: Iterator[Batch],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    steps: int,
    lr: float,
    device: torch.device | None = None,
    cosine_lr: bool = False,
    phase: str = "QAT",
) -> list[float]:
    """``steps`` Adam steps on ``batches`` (the pretraining of a workload, and QAT); returns the
    losses and leaves the model in eval mode.  ``cosine_lr`` anneals the rate to 0 over ``steps``.
    Raises :class:`NonFiniteLossError` on a NaN or infinite loss (``phase`` names the training in it)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if cosine_lr else None
    losses: list[float] = []
    model.train()
    for step in range(steps):
        inputs, target = next(batches)
        if device is not None:
            inputs, target = inputs.to(device), target.to(device)
        loss = loss_fn(model(inputs), target)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"loss: {float(loss.detach())} at {phase} step {step}; lower the workload's lr or check the data"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def qat_train(model: nn.Module, workload: Workload, steps: int, seed: int, device: torch.device) -> list[float]:
    """``steps`` QAT steps on the workload's stream; deterministic for a seed."""
    batches = workload.train_batches(torch.Generator().manual_seed(seed))
    return train_steps(model, batches, workload.loss_fn, steps=steps, lr=workload.lr, device=device)


def run_trial(
    workload: Workload,
    assignment: FormatMap,
    *,
    qat_steps: int,
    seed: int,
    range_method: RangeMethod | str = RangeMethod.MINMAX,
    device: str = "cpu",
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
    losses = qat_train(model, workload, qat_steps, seed, dev)
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


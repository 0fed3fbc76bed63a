"""The training loop every model here trains with: a workload's fp32 pretraining and a trial's QAT
(``search.train`` builds the trial on it).  It sits under ``workloads`` so that the workloads, which
pretrain their models, import nothing above them."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from search.errors import NonFiniteLossError
from search.workloads.base import Batch


@dataclass(frozen=True)
class QatRecipe:
    """How a trial's QAT trains (Adam on every trainable tensor).

    The default is the recipe the search has always used: the workload's ``lr``, constant.  A short
    run at a constant rate stops before training has recovered what int4 costs in some layers, so
    its ranking of maps can differ from a long QAT's; ``bench/fidelity.py`` measures which recipe's
    short run predicts the long one best."""

    lr_scale: float = 1.0  # x the workload's lr
    schedule: Literal["constant", "cosine"] = "constant"  # cosine: anneal to 0 over the run
    warmup_frac: float = 0.0  # linear warm-up over this fraction of the steps (then the schedule)

    def __post_init__(self) -> None:
        if not self.lr_scale > 0:
            raise ValueError(f"lr_scale: must be > 0, got {self.lr_scale}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule: 'constant' or 'cosine', got {self.schedule!r}")
        if not 0.0 <= self.warmup_frac < 1.0:
            raise ValueError(f"warmup_frac: must be in [0, 1), got {self.warmup_frac}")

    @property
    def name(self) -> str:
        parts = [self.schedule, f"lr x{self.lr_scale:g}"]
        if self.warmup_frac:
            parts.append(f"warm-up {self.warmup_frac:.0%}")
        return ", ".join(parts)

    def lr_factor(self, step: int, steps: int) -> float:
        """Multiplier of the base rate at ``step`` of ``steps`` (LambdaLR's contract)."""
        warmup = int(self.warmup_frac * steps)
        if step < warmup:
            return (step + 1) / warmup
        if self.schedule == "cosine":
            progress = (step - warmup) / max(1, steps - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0


DEFAULT_RECIPE = QatRecipe()


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
    recipe: QatRecipe | None = None,
    phase: str = "QAT",
) -> list[float]:
    """``steps`` Adam steps on ``batches`` (the pretraining of a workload, and QAT); returns the
    losses and leaves the model in eval mode.  ``cosine_lr`` anneals the rate to 0 over ``steps``;
    a ``recipe`` scales and schedules ``lr`` instead.
    Raises :class:`NonFiniteLossError` on a NaN or infinite loss (``phase`` names the training in it)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr * (recipe.lr_scale if recipe else 1.0))
    sched: torch.optim.lr_scheduler.LRScheduler | None = None
    if recipe is not None and recipe != DEFAULT_RECIPE:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: recipe.lr_factor(step, steps))
    elif cosine_lr:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
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

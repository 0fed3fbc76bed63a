"""A runnable user workload: ``tests.search.user_workload:make_workload``.

What a user's entry point looks like (see ``search/workloads/base.py``): a factory taking keyword
options and returning a :class:`search.Workload`.  Tiny on purpose (trains in a fraction of a second
on one CPU thread) so the trial, qconfig and entry-point tests stay fast: 3-class classification
of random 1x4x4 "images" labelled by a fixed random teacher.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from search import Workload
from search.workloads.base import random_batches
from search.workloads.training import train_steps

N_CLASSES = 3


class TinyNet(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width * 16, N_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(torch.relu(self.bn(self.conv(x))), 1))


def _data(n: int, seed: int) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    teacher = torch.randn(16, N_CLASSES, generator=torch.Generator().manual_seed(1000))
    x = torch.rand(n, 1, 4, 4, generator=gen)
    y = ((x.flatten(1) - 0.5) @ teacher).argmax(dim=1)
    return x, y


def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


def make_workload(width: int = 8, pretrain_steps: int = 150, lr: float = 1e-3, batch_size: int = 32) -> Workload:
    x_train, y_train = _data(512, seed=1)
    x_test, y_test = _data(256, seed=2)
    with torch.random.fork_rng():  # do not disturb the caller's global RNG
        torch.manual_seed(0)
        model = TinyNet(width)
        batches = random_batches(x_train, y_train, 64, torch.Generator().manual_seed(0))
        train_steps(model, batches, F.cross_entropy, steps=pretrain_steps, lr=1e-2, phase="pretraining")
    return Workload(
        name="tiny",
        model=model,
        example_inputs=(x_test[:1],),
        train_batches=lambda gen: random_batches(x_train, y_train, batch_size, gen),
        calibration_batches=[(x_train[:128], y_train[:128])],
        loss_fn=F.cross_entropy,
        evaluate=lambda m: _accuracy(m, x_test, y_test),
        metric="accuracy",
        higher_is_better=True,
        lr=lr,
    )


def not_a_workload() -> int:
    """An entry point that returns the wrong type (for the error-path test)."""
    return 42


def broken_factory(width: int = 8) -> Workload:
    """A factory with a bug of its own (for the error-path test): its TypeError must surface."""
    return make_workload(width=width) + 1  # type: ignore[operator, return-value]

"""Tiny named test models.  Each has ``example_inputs()`` (a tuple of positional inputs, batch 1)
and, where the tests check them, hand-computed MACs in the docstring."""

from __future__ import annotations

from typing import Protocol, TypeVar

import torch
from torch import Tensor, nn


class NetClass(Protocol):
    """What the tests take for a model class: it builds without arguments and has example inputs."""

    def __call__(self) -> nn.Module: ...

    def example_inputs(self) -> tuple[Tensor, ...]: ...


class ConvThenLinearNet(nn.Module):
    """Defines ``fc`` *before* ``conv`` but runs conv -> relu -> flatten -> fc.

    MACs (input 1x1x6x6): conv 4*6*6 outputs x 1*3*3 = 1296; fc 10 outputs x 144 = 1440.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4 * 6 * 6, 10)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))

    @staticmethod
    def example_inputs() -> tuple[Tensor, ...]:
        return (torch.rand(1, 1, 6, 6, generator=torch.Generator().manual_seed(0)),)


class ResidualNet(nn.Module):
    """stem -> (branch_a -> branch_b) + skip -> head; ``skip`` and ``head`` are defined first."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(4, 2, 1)
        self.skip = nn.Conv2d(4, 4, 1)
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.branch_a = nn.Conv2d(4, 4, 3, padding=1)
        self.branch_b = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.stem(x))
        z = self.branch_b(torch.relu(self.branch_a(y)))
        return self.head(torch.relu(z + self.skip(y)))

    @staticmethod
    def example_inputs() -> tuple[Tensor, ...]:
        return (torch.rand(1, 1, 5, 5, generator=torch.Generator().manual_seed(0)),)


class SharedLayerNet(nn.Module):
    """``block`` is called twice in one forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.block = nn.Linear(8, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.block(torch.relu(self.block(self.inp(x)))))

    @staticmethod
    def example_inputs() -> tuple[Tensor, ...]:
        return (torch.randn(1, 4, generator=torch.Generator().manual_seed(0)),)


class UnusedLayerNet(nn.Module):
    """``spare`` is a Linear that forward never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(4, 8)
        self.spare = nn.Linear(8, 8)
        self.last = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.last(torch.relu(self.first(x)))

    @staticmethod
    def example_inputs() -> tuple[Tensor, ...]:
        return (torch.randn(1, 4, generator=torch.Generator().manual_seed(0)),)


class DepthwiseNet(nn.Module):
    """pointwise -> depthwise -> grouped -> depthwise with channel multiplier 2.

    MACs (input 1x4x8x8, all outputs 8x8 spatial):
    pw 8*64 outputs x 4*1*1 = 2048; dw 8*64 x 1*3*3 = 4608; grouped (groups 2) 8*64 x 4*3*3 = 18432;
    dw_mult (8 -> 16, groups 8) 16*64 x 1*3*3 = 9216.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pw = nn.Conv2d(4, 8, 1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.dw_mult = nn.Conv2d(8, 16, 3, padding=1, groups=8)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.pw(x))
        x = torch.relu(self.dw(x))
        x = torch.relu(self.grouped(x))
        return self.dw_mult(x)

    @staticmethod
    def example_inputs() -> tuple[Tensor, ...]:
        return (torch.rand(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)),)


class ConvTransposeNet(nn.Module):
    """conv -> relu -> ConvTranspose2d(stride 2).

    MACs (input 1x2x5x5): conv 4*25 outputs x 2*3*3 = 1800; up: each of the 4*25 input elements is
    scattered into 3 output channels x 3*3 taps = 2700 (output 1x3x11x11).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.up = nn.ConvTranspose2d(4, 3, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(torch.relu(self.conv(x)))

    @staticmethod
    def example_inputs() -> tuple[Tensor, ...]:
        return (torch.rand(1, 2, 5, 5, generator=torch.Generator().manual_seed(0)),)


class Conv1dNet(nn.Module):
    """Conv1d(3, 6, 5) -> relu -> flatten -> Linear(72, 4).

    MACs (input 1x3x16): conv 6*12 outputs x 3*5 = 1080; fc 4 x 72 = 288.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 6, 5)
        self.fc = nn.Linear(6 * 12, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))

    @staticmethod
    def example_inputs() -> tuple[Tensor, ...]:
        return (torch.randn(1, 3, 16, generator=torch.Generator().manual_seed(0)),)


class BatchNormNet(nn.Module):
    """conv-bn-relu in a Sequential, then a conv-bn and a linear-bn called from forward (FX path)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 5 * 5, 6)
        self.fc_bn = nn.BatchNorm1d(6)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn(self.conv(self.features(x))))
        return self.fc_bn(self.fc(torch.flatten(x, 1)))

    @staticmethod
    def example_inputs() -> tuple[Tensor, ...]:
        return (torch.randn(1, 2, 5, 5, generator=torch.Generator().manual_seed(0)),)


class UntraceableBatchNormNet(nn.Module):
    """Data-dependent control flow (FX cannot trace it): BN folding falls back to Sequential
    adjacency."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        if x.sum() > 0:  # data-dependent branch
            return self.body(x)
        return self.body(-x)

    @staticmethod
    def example_inputs() -> tuple[Tensor, ...]:
        return (torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(0)),)


M = TypeVar("M", bound=nn.Module)


def randomize_batchnorm(model: M, seed: int = 0) -> M:
    """Give every BatchNorm non-trivial running statistics and affine parameters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                assert m.running_mean is not None and m.running_var is not None  # track_running_stats
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.2)
    return model

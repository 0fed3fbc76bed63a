"""``digits``: a small CNN on scikit-learn's 8x8 handwritten digits (ships with scikit-learn).

Easy: nearly every precision map scores alike here, so this is a smoke test and the workload for
speed measurements, not a benchmark of precision choices.  Pixel values are integers 0..16.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import Tensor, nn

from search.workloads.base import Architecture, Workload, WorkloadError, random_batches
from search.workloads.cache import cached_pretrained
from search.workloads.training import train_steps

N_TRAIN = 1200  # of 1797 images; the rest is the test split
INPUT_SHAPE = (1, 1, 8, 8)  # one 8x8 grey image
MAX_WIDTH = 1024  # channels; far past what 8x8 digits need, and it bounds what an option can make us build
# every option's range but width (_check_width; search.workloads.check_workload_options)
OPTION_BOUNDS = {"pretrain_steps": (1, 100_000), "batch_size": (1, 4096)}


class DigitsCNN(nn.Module):
    """conv-bn-relu x2, pool, conv-relu, linear-relu, linear.  Input (N, 1, 8, 8) in [0, 1]."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.MaxPool2d(2),  # (N, 2w, 4, 4)
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * 16, 64), nn.ReLU(), nn.Linear(64, 10),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def _check_width(width: int) -> None:
    if not 1 <= width <= MAX_WIDTH:
        raise WorkloadError(f"workload_options.width: 1..{MAX_WIDTH} channels, got {width}")


def make_architecture(width: int = 16) -> Architecture:
    """The untrained network for ``width`` (the workload's architecture options; the others are training's)."""
    _check_width(width)
    return Architecture(DigitsCNN(width), (torch.zeros(INPUT_SHAPE),))


def digits_arrays() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x_train, y_train, x_test, y_test); images scaled to [0, 1], fixed split."""
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8)
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.from_numpy(np.random.default_rng(0).permutation(len(y)))
    x, y = x[perm], y[perm]
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    device = next(model.parameters()).device
    with torch.no_grad():
        pred = model(x.to(device)).argmax(dim=1).cpu()
    return float((pred == y).float().mean())


def _pretrain(width: int, steps: int) -> nn.Module:
    x_tr, y_tr, _, _ = digits_arrays()
    torch.manual_seed(0)
    model = DigitsCNN(width)
    batches = random_batches(x_tr, y_tr, 64, torch.Generator().manual_seed(0))
    train_steps(model, batches, F.cross_entropy, steps=steps, lr=3e-3, phase="pretraining")
    return model


def make_workload(width: int = 16, pretrain_steps: int = 600, batch_size: int = 64) -> Workload:
    _check_width(width)
    x_tr, y_tr, x_te, y_te = digits_arrays()
    model = cached_pretrained(
        "digits", {"width": width, "pretrain_steps": pretrain_steps},
        build=lambda: make_architecture(width).model, train=lambda: _pretrain(width, pretrain_steps),
    )
    return Workload(
        name="digits",
        model=model,
        example_inputs=(x_te[:1],),  # INPUT_SHAPE
        train_batches=lambda gen: random_batches(x_tr, y_tr, batch_size, gen),
        calibration_batches=[(x_tr[i : i + 256], y_tr[i : i + 256]) for i in range(0, 512, 256)],
        loss_fn=F.cross_entropy,
        evaluate=lambda m: _accuracy(m, x_te, y_te),
        metric="accuracy",
        higher_is_better=True,
        lr=3e-4,
    )

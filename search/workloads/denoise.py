"""``denoise``: DnCNN-style denoising of real 8-bit photos (the forum user's scenario).

Data ships with scikit-learn: ``china.jpg`` (train, random 40x40 patches) and ``flower.jpg``
(evaluation, a fixed central crop), luma channel, 8-bit.  The noisy input is the clean image plus
Gaussian noise (sigma 25/255) rounded back to 8 bits, so the input really is 8-bit data; the metric
is PSNR (dB) of the clipped output against the clean image.  The network predicts the noise
(residual learning, Zhang et al., "Beyond a Gaussian Denoiser", 2017): ``out = x - net(x)``.

Precision matters here: the first layer sees the 8-bit image, and the output is the picture.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_sample_image
from torch import Tensor, nn

from search.workloads.base import Architecture, Batch, Workload, WorkloadError
from search.workloads.cache import cached_pretrained
from search.workloads.training import train_steps

SIGMA = 25.0 / 255.0
EXAMPLE_SIDE = 40  # px: the example input is a 40x40 crop of one grey image
MAX_DEPTH = 200  # convolutions; bounds what an option can make us build (DnCNN's published depth is 17-20)
MAX_WIDTH = 1024  # channels
# every option's range (search.workloads.check_workload_options); eval_size: the test photo is 427 px high
OPTION_BOUNDS = {"pretrain_steps": (1, 100_000), "eval_size": (8, 427), "batch_size": (1, 256), "patch_size": (4, 256)}


class DnCNN(nn.Module):
    """``depth`` 3x3 convs of ``width`` channels; BatchNorm on the inner ones; residual output.
    Input and output (N, 1, H, W) in [0, 1]."""

    def __init__(self, depth: int = 6, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, width, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
        layers.append(nn.Conv2d(width, 1, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x - self.body(x)


def check_dncnn_options(depth: int, width: int, min_depth: int) -> None:
    """``depth`` convolutions (``min_depth``..:data:`MAX_DEPTH`) of ``width`` channels (1..:data:`MAX_WIDTH`)."""
    if not min_depth <= depth <= MAX_DEPTH:
        raise WorkloadError(
            f"workload_options.depth: {min_depth}..{MAX_DEPTH} convolutions"
            + (" (first, one inner, last)" if min_depth == 3 else "") + f", got {depth}"
        )
    if not 1 <= width <= MAX_WIDTH:
        raise WorkloadError(f"workload_options.width: 1..{MAX_WIDTH} channels, got {width}")


def dncnn_architecture(depth: int, width: int, min_depth: int) -> Architecture:
    check_dncnn_options(depth, width, min_depth)
    return Architecture(DnCNN(depth, width), (torch.zeros(1, 1, EXAMPLE_SIDE, EXAMPLE_SIDE),))


def make_architecture(depth: int = 6, width: int = 32) -> Architecture:
    """The untrained network (the workload's architecture options; the others are training's)."""
    return dncnn_architecture(depth, width, min_depth=2)


def luma(name: str) -> Tensor:
    """8-bit luma (BT.601) of a scikit-learn sample image, as float in [0, 1], shape (H, W)."""
    rgb = load_sample_image(name).astype(np.float64)
    y = np.clip(np.round(rgb @ np.array([0.299, 0.587, 0.114])), 0, 255)
    return torch.tensor(y / 255.0, dtype=torch.float32)


def add_noise(clean: Tensor, gen: torch.Generator) -> Tensor:
    noisy = clean + SIGMA * torch.randn(clean.shape, generator=gen)
    return torch.clamp(torch.round(noisy * 255.0), 0, 255) / 255.0  # back to 8-bit data


def _patches(image: Tensor, size: int, batch_size: int, gen: torch.Generator) -> Iterator[Batch]:
    h, w = image.shape
    while True:
        ys = torch.randint(0, h - size + 1, (batch_size,), generator=gen).tolist()
        xs = torch.randint(0, w - size + 1, (batch_size,), generator=gen).tolist()
        clean = torch.stack([image[y : y + size, x : x + size] for y, x in zip(ys, xs, strict=True)]).unsqueeze(1)
        yield add_noise(clean, gen), clean  # (B, 1, size, size) each


def psnr_db(output: Tensor, clean: Tensor) -> float:
    mse = float(F.mse_loss(torch.clamp(output, 0.0, 1.0), clean))
    return 10.0 * float(np.log10(1.0 / max(mse, 1e-12)))


def _evaluate(model: nn.Module, noisy: Tensor, clean: Tensor) -> float:
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model(noisy.to(device)).cpu()
    return psnr_db(out, clean)


def _pretrain(depth: int, width: int, steps: int, train_image: Tensor) -> nn.Module:
    torch.manual_seed(0)
    model = DnCNN(depth, width)
    batches = _patches(train_image, 40, 16, torch.Generator().manual_seed(0))
    train_steps(model, batches, F.mse_loss, steps=steps, lr=1e-3, cosine_lr=True, phase="pretraining")
    return model


def make_workload(
    depth: int = 6,
    width: int = 32,
    pretrain_steps: int = 2000,
    eval_size: int = 160,
    batch_size: int = 8,
    patch_size: int = 32,
) -> Workload:
    check_dncnn_options(depth, width, min_depth=2)
    train_image = luma("china.jpg")
    test_image = luma("flower.jpg")
    h, w = test_image.shape
    top, left = (h - eval_size) // 2, (w - eval_size) // 2
    clean = test_image[top : top + eval_size, left : left + eval_size].reshape(1, 1, eval_size, eval_size)
    noisy = add_noise(clean, torch.Generator().manual_seed(1234))
    model = cached_pretrained(
        "denoise", {"depth": depth, "width": width, "pretrain_steps": pretrain_steps},
        build=lambda: make_architecture(depth, width).model,
        train=lambda: _pretrain(depth, width, pretrain_steps, train_image),
    )
    calib = list(_patches(train_image, 64, 8, torch.Generator().manual_seed(7)).__next__() for _ in range(1))
    # QAT batches are smaller than the pretraining ones (16 x 40x40): a trial is ~3x cheaper, and
    # short QAT from good fp32 weights needs less data per step than training from scratch
    return denoising_workload("denoise", model, noisy, clean,
                              lambda gen: _patches(train_image, patch_size, batch_size, gen), calib)


def denoising_workload(
    name: str,
    model: nn.Module,
    noisy: Tensor,
    clean: Tensor,
    train_batches: Callable[[torch.Generator], Iterator[Batch]],
    calibration_batches: list[Batch],
) -> Workload:
    """A denoiser's workload: MSE loss, PSNR (dB) of its output against ``clean`` on ``noisy`` (N, 1, H,
    W), a 40x40 example crop; shared by ``denoise`` and ``denoise-deep``."""
    return Workload(
        name=name,
        model=model,
        example_inputs=(noisy[:1, :, :EXAMPLE_SIDE, :EXAMPLE_SIDE].clone(),),
        train_batches=train_batches,
        calibration_batches=calibration_batches,
        loss_fn=F.mse_loss,
        evaluate=lambda m: _evaluate(m, noisy, clean),
        metric="psnr_db",
        higher_is_better=True,
        lr=1e-4,
    )


def noisy_input_psnr(eval_size: int = 160) -> float:
    """PSNR of the noisy input itself: the trivial baseline a denoiser must beat."""
    test_image = luma("flower.jpg")
    h, w = test_image.shape
    top, left = (h - eval_size) // 2, (w - eval_size) // 2
    clean = test_image[top : top + eval_size, left : left + eval_size].reshape(1, 1, eval_size, eval_size)
    return psnr_db(add_noise(clean, torch.Generator().manual_seed(1234)), clean)

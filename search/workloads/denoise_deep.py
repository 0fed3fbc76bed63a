"""``denoise-deep``: DnCNN at its published depth (17 convolutions, global residual) on real photos.

The built-in ``denoise`` has 6-7 layers, too few for the search problem users face with 20-100 layer
networks.  This is the same network family (:class:`search.workloads.denoise.DnCNN`: conv-ReLU,
15 conv-BN-ReLU, conv; ``out = x - net(x)``) at depth 17 (Zhang et al., "Beyond a Gaussian
Denoiser", 2017, the sigma-known model), trained on scikit-image's bundled 8-bit photos rather
than a single picture.  Photos are split by name: :data:`TRAIN_PHOTOS` for pretraining, QAT and
calibration; :data:`EVAL_PHOTOS` held out, a central crop of each, for the metric (PSNR in dB over
all held-out crops together).  Noise and 8-bit rounding are denoise's own (:func:`add_noise`), so
input and output are 8-bit data.

``cat`` is left out altogether: it is ``chelsea`` under another name.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import numpy as np
import skimage.data
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from search.workloads.base import Architecture, Batch, Workload
from search.workloads.cache import cached_pretrained
from search.workloads.denoise import (
    DnCNN,
    add_noise,
    check_dncnn_options,
    denoising_workload,
    dncnn_architecture,
    psnr_db,
)

TRAIN_PHOTOS = (
    "brick", "chelsea", "clock", "coffee", "grass", "gravel", "hubble_deep_field",
    "immunohistochemistry", "moon", "page", "rocket", "text", "cell", "retina",
)  # fmt: skip
EVAL_PHOTOS = ("camera", "coins", "astronaut")
# every option's range (search.workloads.check_workload_options); eval_size: 'coins' is 303 px high
OPTION_BOUNDS = {"pretrain_steps": (1, 100_000), "eval_size": (8, 303), "batch_size": (1, 256), "patch_size": (4, 256)}
PRETRAIN_BATCH = (16, 32)  # patches per step, patch side (px)
PRETRAIN_LR = 1e-3  # Adam, cosine-annealed to 0


def photo_luma(name: str) -> Tensor:
    """8-bit luma (BT.601, as ``denoise``) of a scikit-image sample photo, float in [0, 1], (H, W)."""
    image = np.asarray(getattr(skimage.data, name)(), dtype=np.float64)
    if image.ndim == 3:
        image = np.clip(np.round(image[..., :3] @ np.array([0.299, 0.587, 0.114])), 0, 255)
    return torch.tensor(image / 255.0, dtype=torch.float32)


def photo_patches(images: Sequence[Tensor], size: int, batch_size: int, gen: torch.Generator) -> Iterator[Batch]:
    """Endless (noisy, clean) batches of ``size`` x ``size`` patches; each patch from a photo drawn
    uniformly, at a uniform position."""
    while True:
        picks = torch.randint(0, len(images), (batch_size,), generator=gen).tolist()
        patches = []
        for i in picks:
            h, w = images[i].shape
            y = int(torch.randint(0, h - size + 1, (1,), generator=gen))
            x = int(torch.randint(0, w - size + 1, (1,), generator=gen))
            patches.append(images[i][y : y + size, x : x + size])
        clean = torch.stack(patches).unsqueeze(1)  # (B, 1, size, size)
        yield add_noise(clean, gen), clean


def held_out_pair(eval_size: int) -> tuple[Tensor, Tensor]:
    """(noisy, clean) central ``eval_size`` crops of the held-out photos, (len(EVAL_PHOTOS), 1, s, s).
    The noise is fixed (seed 1234, as ``denoise``)."""
    crops = []
    for name in EVAL_PHOTOS:
        image = photo_luma(name)
        h, w = image.shape
        if min(h, w) < eval_size:
            raise ValueError(f"eval_size: at most {min(h, w)} px ({name!r} is {h}x{w}), got {eval_size}")
        top, left = (h - eval_size) // 2, (w - eval_size) // 2
        crops.append(image[top : top + eval_size, left : left + eval_size])
    clean = torch.stack(crops).unsqueeze(1)
    return add_noise(clean, torch.Generator().manual_seed(1234)), clean


def _pretrain(depth: int, width: int, steps: int, images: Sequence[Tensor]) -> nn.Module:
    torch.manual_seed(0)
    model = DnCNN(depth, width)
    opt = torch.optim.Adam(model.parameters(), lr=PRETRAIN_LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    batch_size, patch = PRETRAIN_BATCH
    batches = photo_patches(images, patch, batch_size, torch.Generator().manual_seed(0))
    model.train()
    for _ in range(steps):
        noisy, clean = next(batches)
        loss = F.mse_loss(model(noisy), clean)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def make_architecture(depth: int = 17, width: int = 16) -> Architecture:
    """The untrained network (the workload's architecture options; the others are training's)."""
    return dncnn_architecture(depth, width, min_depth=3)


def make_workload(
    depth: int = 17,
    width: int = 16,
    pretrain_steps: int = 1200,
    eval_size: int = 128,
    batch_size: int = 8,
    patch_size: int = 32,
) -> Workload:
    check_dncnn_options(depth, width, min_depth=3)
    train_images = [photo_luma(name) for name in TRAIN_PHOTOS]
    noisy, clean = held_out_pair(eval_size)
    options = {"depth": depth, "width": width, "pretrain_steps": pretrain_steps, "photos": list(TRAIN_PHOTOS)}
    model = cached_pretrained(
        "denoise-deep",
        options,
        build=lambda: make_architecture(depth, width).model,
        train=lambda: _pretrain(depth, width, pretrain_steps, train_images),
    )
    # 8 batches of 8 patches (64x64 px): deep layers' activations peak on texture and edges, and
    # one batch saw only ~1/10 of their range on the held-out photos (measured at layer 16)
    calib = list(itertools.islice(photo_patches(train_images, 64, 8, torch.Generator().manual_seed(7)), 8))
    return denoising_workload("denoise-deep", model, noisy, clean,
                              lambda gen: photo_patches(train_images, patch_size, batch_size, gen), calib)


def noisy_input_psnr(eval_size: int = 128) -> float:
    """PSNR of the noisy held-out crops themselves: the trivial baseline a denoiser must beat."""
    noisy, clean = held_out_pair(eval_size)
    return psnr_db(noisy, clean)

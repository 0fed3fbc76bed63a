"""Small models written after published architectures, for the ONNX importer's tests
(tests/search/test_onnx_models.py): each exported by torch's stock exporter, freshly initialised (so the
exporter shares equal initializers, e.g. all-zero biases, through Identity nodes).  Widths and inputs are
tiny: the architecture is what matters.  Each class has ``example_inputs()``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tests.search.models import NetClass


class ResNetBlocks(nn.Module):
    """ResNet-style: conv-BN-ReLU stem, two basic blocks (one strided with a 1x1 projection), GAP, FC."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.b1 = nn.ModuleList([nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1),
                                 nn.BatchNorm2d(8)])
        self.b2 = nn.ModuleList([nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16),
                                 nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)])
        self.proj = nn.Conv2d(8, 16, 1, stride=2)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        c1, n1, c2, n2 = self.b1
        x = torch.relu(x + n2(c2(torch.relu(n1(c1(x))))))
        c1, n1, c2, n2 = self.b2
        x = torch.relu(self.proj(x) + n2(c2(torch.relu(n1(c1(x))))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    @staticmethod
    def example_inputs() -> tuple[Tensor]:
        return (torch.randn(1, 3, 16, 16),)


class MobileNetV3Block(nn.Module):
    """MobileNetV3-style: Hardswish stem, inverted residual with depthwise conv and a Hardsigmoid SE."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.Hardswish())
        self.expand = nn.Sequential(nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16), nn.Hardswish())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.Hardswish())
        self.se_reduce, self.se_expand = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)
        self.project = nn.Sequential(nn.Conv2d(16, 8, 1), nn.BatchNorm2d(8))
        self.head = nn.Linear(8, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        y = self.dw(self.expand(x))
        s = F.hardsigmoid(self.se_expand(torch.relu(self.se_reduce(F.adaptive_avg_pool2d(y, 1)))))
        x = x + self.project(y * s)
        return self.head(x.mean((2, 3)))

    @staticmethod
    def example_inputs() -> tuple[Tensor]:
        return (torch.randn(1, 3, 16, 16),)


class TinyViT(nn.Module):
    """ViT-style: patch embedding (strided conv), class token, position embedding, one pre-norm encoder block
    (LayerNorm, multi-head attention written out: qkv Linear, reshape by x.shape, chunk, Q K^T, softmax, A V;
    GELU MLP), head on the class token."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, 17, dim) * 0.02)
        self.norm1, self.norm2, self.norm = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)  # (N, 16, dim)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        n, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        q, k, v = (z.reshape(n, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        attn = torch.softmax(q @ k.transpose(-2, -1) / (d // self.heads) ** 0.5, dim=-1)
        x = x + self.out((attn @ v).transpose(1, 2).reshape(n, t, d))
        x = x + self.mlp(self.norm2(x))
        return self.head(self.norm(x)[:, 0])

    @staticmethod
    def example_inputs() -> tuple[Tensor]:
        return (torch.randn(1, 3, 16, 16),)


class ESPCN(nn.Module):
    """ESPCN super-resolution: Tanh convs, then a conv to r^2 channels and PixelShuffle (DepthToSpace)."""

    def __init__(self, r: int = 2) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 16, 5, padding=2), nn.Conv2d(16, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, r * r, 3, padding=1)
        self.r = r

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(F.pixel_shuffle(self.c3(torch.tanh(self.c2(torch.tanh(self.c1(x))))), self.r))

    @staticmethod
    def example_inputs() -> tuple[Tensor]:
        return (torch.randn(1, 1, 12, 12),)


class YoloNeck(nn.Module):
    """YOLO-style C2f/PAN neck: SiLU convs, ``chunk`` into two halves, nearest 2x upsample, Concat, two
    detection outputs at two scales."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.SiLU())
        self.deep = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.SiLU())
        self.c2f = nn.Conv2d(16, 16, 1)
        self.bottleneck = nn.Conv2d(8, 8, 3, padding=1)
        self.fuse = nn.Conv2d(24, 16, 1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.lateral = nn.Conv2d(24, 8, 3, padding=1)
        self.head_small, self.head_large = nn.Conv2d(8, 6, 1), nn.Conv2d(16, 6, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        p3 = self.down(x)  # (N, 8, 8, 8)
        p4 = self.deep(p3)  # (N, 16, 4, 4)
        a, b = F.silu(self.c2f(p4)).chunk(2, 1)
        p4 = F.silu(self.fuse(torch.cat([a, b, F.silu(self.bottleneck(b))], 1)))
        p3 = F.silu(self.lateral(torch.cat([self.up(p4), p3], 1)))
        return self.head_small(p3), self.head_large(p4)

    @staticmethod
    def example_inputs() -> tuple[Tensor]:
        return (torch.randn(1, 3, 16, 16),)


class AudioConv1d(nn.Module):
    """Keyword-spotting-style 1-D conv net over (N, mel bins, frames): BN-ReLU 1-D convs, a depthwise 1-D
    conv, mean over time (ReduceMean), Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv1d(10, 16, 3, padding=1), nn.BatchNorm1d(16), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv1d(16, 16, 5, padding=2, groups=16), nn.BatchNorm1d(16), nn.ReLU())
        self.pw = nn.Conv1d(16, 16, 1)
        self.fc = nn.Linear(16, 12)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.pw(self.dw(self.c1(x))))
        return self.fc(x.mean(-1))

    @staticmethod
    def example_inputs() -> tuple[Tensor]:
        return (torch.randn(1, 10, 20),)


MODELS: dict[str, NetClass] = {
    "resnet_blocks": ResNetBlocks, "mobilenetv3_block": MobileNetV3Block, "tiny_vit": TinyViT, "espcn": ESPCN,
    "yolo_neck": YoloNeck, "audio_conv1d": AudioConv1d,
}


def weighted_layers(model: nn.Module) -> int:
    """How many Conv / Linear modules the model has: each must be a searchable layer after the import."""
    return sum(isinstance(m, nn.Conv1d | nn.Conv2d | nn.ConvTranspose2d | nn.Linear) for m in model.modules())

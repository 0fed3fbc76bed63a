"""The model corpus: the architectures engineers deploy, written here after the published papers (no
downloads), at tiny widths and input sizes: the architecture is what matters, not the size.

``CORPUS[name]()`` returns ``(model, example_inputs)``, deterministic (seed 0, the global RNG left as it
was); ``build(name, seed=..., trained=True)`` re-initialises weights and BatchNorm statistics with
non-trivial random values (:func:`trained_like`), as a trained checkpoint would have them (fresh init
has all-zero biases, unit BN statistics: equal initializers the ONNX exporter shares).

=================== ================================================================================
name                what it exercises
=================== ================================================================================
resnet18            basic blocks [2, 2, 2, 2], 1x1 downsample + BN (He et al., 2016)
resnet50            bottleneck blocks [3, 4, 6, 3] (ResNet-50 depth), expansion 4
mobilenet_v2        inverted residuals, depthwise 3x3, ReLU6, linear bottleneck (Sandler et al., 2018)
mobilenet_v3        Hardswish, squeeze-excite with Hardsigmoid (Howard et al., 2019)
efficientnet        MBConv, SiLU, sigmoid squeeze-excite (Tan & Le, 2019)
shufflenet          ShuffleNet v2 units: chunk, channel shuffle by reshape/transpose (Ma et al., 2018)
squeezenet          fire modules (squeeze 1x1, expand 1x1 | 3x3, cat), conv classifier (Iandola, 2016)
densenet            dense blocks (BN-ReLU-conv, cat of all earlier maps), transitions (Huang, 2017)
inception           GoogLeNet modules: 4 parallel branches, cat; LocalResponseNorm (Szegedy, 2015)
unet                encoder/decoder, ConvTranspose2d and bilinear interpolate up, skip cat
espcn               super-resolution: Tanh, sub-pixel conv (PixelShuffle) (Shi et al., 2016)
yolo_neck           CSP/C2f blocks (chunk), SiLU, nearest upsample, cat, two detection outputs
vit                 patch embedding, class token, nn.TransformerEncoderLayer (pre-norm, GELU,
                    nn.MultiheadAttention, batch_first) (Dosovitskiy et al., 2021)
text_encoder        nn.Embedding tokens, post-norm nn.TransformerEncoderLayer (ReLU, seq-first)
kws                 1-D conv keyword spotting on MFCC frames, depthwise-separable, mean over time
=================== ================================================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Built = tuple[nn.Module, tuple[Tensor, ...]]


def _bn_act(c_in: int, c_out: int, k: int = 3, s: int = 1, groups: int = 1, act: type[nn.Module] | None = nn.ReLU,
            dim: int = 2) -> nn.Sequential:
    conv = nn.Conv2d if dim == 2 else nn.Conv1d
    bn = nn.BatchNorm2d if dim == 2 else nn.BatchNorm1d
    layers: list[nn.Module] = [conv(c_in, c_out, k, s, k // 2, groups=groups, bias=False), bn(c_out)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, c: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.downsample = (nn.Sequential(nn.Conv2d(c_in, c, 1, stride, bias=False), nn.BatchNorm2d(c))
                           if stride != 1 or c_in != c else None)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, c: int, stride: int) -> None:
        super().__init__()
        out = c * self.expansion
        self.conv1 = nn.Conv2d(c_in, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (nn.Sequential(nn.Conv2d(c_in, out, 1, stride, bias=False), nn.BatchNorm2d(out))
                           if stride != 1 or c_in != out else None)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + identity)


class ResNet(nn.Module):
    def __init__(self, block: type[BasicBlock] | type[Bottleneck], depths: list[int], width: int = 8,
                 classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)  # CIFAR-style stem (tiny inputs)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages: list[nn.Module] = []
        c_in = width
        for i, n in enumerate(depths):
            c = width * 2**i
            blocks = []
            for j in range(n):
                blocks.append(block(c_in, c, 2 if (j == 0 and i > 0) else 1))
                c_in = c * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(c_in, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def resnet18() -> Built:
    return ResNet(BasicBlock, [2, 2, 2, 2], width=8), (torch.randn(1, 3, 32, 32),)


def resnet50() -> Built:
    return ResNet(Bottleneck, [3, 4, 6, 3], width=4), (torch.randn(1, 3, 32, 32),)


# ------------------------------------------------------------------------------------------ MobileNets


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_bn_act(c_in, hidden, 1, act=nn.ReLU6))
        layers += [_bn_act(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
                   _bn_act(hidden, c_out, 1, act=None)]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    CONFIG = ((1, 8, 1, 1), (6, 12, 2, 2), (6, 16, 2, 2), (6, 24, 1, 1))  # t, c, n, s

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [_bn_act(3, 8, 3, 2, act=nn.ReLU6)]
        c_in = 8
        for t, c, n, s in self.CONFIG:
            for i in range(n):
                layers.append(InvertedResidual(c_in, c, s if i == 0 else 1, t))
                c_in = c
        layers.append(_bn_act(c_in, 64, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(64, classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


def mobilenet_v2() -> Built:
    return MobileNetV2(), (torch.randn(1, 3, 32, 32),)


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, squeeze: int, act: type[nn.Module], gate: type[nn.Module]) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.act = act()
        self.fc2 = nn.Conv2d(squeeze, c, 1)
        self.gate = gate()

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(self.fc2(self.act(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


class V3Block(nn.Module):
    def __init__(self, c_in: int, hidden: int, c_out: int, k: int, stride: int, se: bool, hs: bool) -> None:
        super().__init__()
        act = nn.Hardswish if hs else nn.ReLU
        layers: list[nn.Module] = []
        if hidden != c_in:
            layers.append(_bn_act(c_in, hidden, 1, act=act))
        layers.append(_bn_act(hidden, hidden, k, stride, groups=hidden, act=act))
        if se:
            layers.append(SqueezeExcite(hidden, max(8, hidden // 4), nn.ReLU, nn.Hardsigmoid))
        layers.append(_bn_act(hidden, c_out, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.use_res = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        y = self.block(x)
        return x + y if self.use_res else y


class MobileNetV3(nn.Module):
    # c_in, hidden, c_out, kernel, stride, SE, hard-swish (the V3-Small pattern, narrowed)
    CONFIG = ((8, 8, 8, 3, 2, True, False), (8, 24, 12, 3, 2, False, False), (12, 36, 12, 3, 1, False, False),
              (12, 48, 16, 5, 2, True, True), (16, 64, 16, 5, 1, True, True))

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [_bn_act(3, 8, 3, 2, act=nn.Hardswish)]
        layers += [V3Block(*cfg) for cfg in self.CONFIG]
        layers.append(_bn_act(16, 64, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(64, 96), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(96, classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


def mobilenet_v3() -> Built:
    return MobileNetV3(), (torch.randn(1, 3, 32, 32),)


class MBConv(nn.Module):
    def __init__(self, c_in: int, c_out: int, k: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_bn_act(c_in, hidden, 1, act=nn.SiLU))
        layers += [_bn_act(hidden, hidden, k, stride, groups=hidden, act=nn.SiLU),
                   SqueezeExcite(hidden, max(1, c_in // 4), nn.SiLU, nn.Sigmoid),
                   _bn_act(hidden, c_out, 1, act=None)]
        self.block = nn.Sequential(*layers)
        self.use_res = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x) if self.use_res else self.block(x)


class EfficientNet(nn.Module):
    CONFIG = ((8, 8, 3, 1, 1), (8, 12, 3, 2, 6), (12, 12, 3, 1, 6), (12, 16, 5, 2, 6), (16, 24, 3, 2, 6))

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = _bn_act(3, 8, 3, 2, act=nn.SiLU)
        self.blocks = nn.Sequential(*[MBConv(*cfg) for cfg in self.CONFIG])
        self.head = _bn_act(24, 64, 1, act=nn.SiLU)
        self.fc = nn.Linear(64, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def efficientnet() -> Built:
    return EfficientNet(), (torch.randn(1, 3, 32, 32),)


# ------------------------------------------------------------------------------------------ ShuffleNet


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        branch = c_out // 2
        if stride > 1:
            self.branch1 = nn.Sequential(_bn_act(c_in, c_in, 3, stride, groups=c_in, act=None),
                                         _bn_act(c_in, branch, 1))
        c2 = c_in if stride > 1 else branch
        self.branch2 = nn.Sequential(_bn_act(c2, branch, 1),
                                     _bn_act(branch, branch, 3, stride, groups=branch, act=None),
                                     _bn_act(branch, branch, 1))

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            a, b = x.chunk(2, dim=1)
            out = torch.cat((a, self.branch2(b)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = _bn_act(3, 8, 3, 2)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages = []
        c_in = 8
        for c, n in ((16, 2), (32, 2), (64, 1)):
            stages.append(nn.Sequential(*[ShuffleUnit(c_in if i == 0 else c, c, 2 if i == 0 else 1) for i in range(n)]))
            c_in = c
        self.stages = nn.Sequential(*stages)
        self.conv5 = _bn_act(64, 96, 1)
        self.fc = nn.Linear(96, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv5(self.stages(self.maxpool(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


def shufflenet() -> Built:
    return ShuffleNetV2(), (torch.randn(1, 3, 32, 32),)


# ------------------------------------------------------------------------------------------ SqueezeNet


class Fire(nn.Module):
    def __init__(self, c_in: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(c_in, squeeze, 1)
        self.expand1x1 = nn.Conv2d(squeeze, expand, 1)
        self.expand3x3 = nn.Conv2d(squeeze, expand, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        s = F.relu(self.squeeze(x))
        return torch.cat([F.relu(self.expand1x1(s)), F.relu(self.expand3x3(s))], 1)


class SqueezeNet(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(16, 4, 8), Fire(16, 4, 8), nn.MaxPool2d(3, 2, ceil_mode=True), Fire(16, 8, 16), Fire(32, 8, 16),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(32, classes, 1), nn.ReLU(inplace=True),
                                        nn.AdaptiveAvgPool2d(1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


def squeezenet() -> Built:
    return SqueezeNet(), (torch.randn(1, 3, 32, 32),)


# ------------------------------------------------------------------------------------------- DenseNet


class DenseLayer(nn.Module):
    def __init__(self, c_in: int, growth: int, bn_size: int = 2) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, features: list[Tensor]) -> Tensor:
        x = torch.cat(features, 1)
        return self.conv2(F.relu(self.norm2(self.conv1(F.relu(self.norm1(x))))))


class DenseBlock(nn.Module):
    def __init__(self, n: int, c_in: int, growth: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([DenseLayer(c_in + i * growth, growth) for i in range(n)])

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return torch.cat(features, 1)


class DenseNet(nn.Module):
    def __init__(self, growth: int = 4, blocks: tuple[int, ...] = (3, 3, 3), classes: int = 10) -> None:
        super().__init__()
        c = 2 * growth
        self.conv0 = nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.norm0 = nn.BatchNorm2d(c)
        stages: list[nn.Module] = []
        for i, n in enumerate(blocks):
            stages.append(DenseBlock(n, c, growth))
            c += n * growth
            if i != len(blocks) - 1:
                stages += [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2, 2)]
                c //= 2
        self.features = nn.Sequential(*stages)
        self.norm5 = nn.BatchNorm2d(c)
        self.classifier = nn.Linear(c, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(F.relu(self.norm0(self.conv0(x))))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(F.relu(self.norm5(x)), 1), 1))


def densenet() -> Built:
    return DenseNet(), (torch.randn(1, 3, 16, 16),)


# ------------------------------------------------------------------------------------------ Inception


class InceptionModule(nn.Module):
    def __init__(self, c_in: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, pool: int) -> None:
        super().__init__()
        self.branch1 = nn.Sequential(nn.Conv2d(c_in, c1, 1), nn.ReLU())
        self.branch2 = nn.Sequential(nn.Conv2d(c_in, c3r, 1), nn.ReLU(), nn.Conv2d(c3r, c3, 3, padding=1), nn.ReLU())
        self.branch3 = nn.Sequential(nn.Conv2d(c_in, c5r, 1), nn.ReLU(), nn.Conv2d(c5r, c5, 5, padding=2), nn.ReLU())
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(c_in, pool, 1), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class Inception(nn.Module):
    """GoogLeNet v1's stem (conv, pool, LRN, conv, conv, LRN, pool) and two inception modules."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 5, stride=2, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2, 1), nn.LocalResponseNorm(5),
            nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.LocalResponseNorm(5),
        )
        self.inc3a = InceptionModule(16, 8, 8, 12, 2, 4, 4)
        self.inc3b = InceptionModule(28, 12, 8, 16, 4, 8, 8)
        self.dropout = nn.Dropout(0.4)
        self.fc = nn.Linear(44, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.inc3b(self.inc3a(self.stem(x)))
        return self.fc(self.dropout(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))


def inception() -> Built:
    return Inception(), (torch.randn(1, 3, 32, 32),)


# -------------------------------------------------------------------------------------------- UNet


class DoubleConv(nn.Sequential):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(_bn_act(c_in, c_out), _bn_act(c_out, c_out))


class UNet(nn.Module):
    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.inc = DoubleConv(1, c)
        self.down1 = DoubleConv(c, 2 * c)
        self.down2 = DoubleConv(2 * c, 4 * c)
        self.up1 = nn.ConvTranspose2d(4 * c, 2 * c, 2, stride=2)
        self.conv_up1 = DoubleConv(4 * c, 2 * c)
        self.reduce2 = nn.Conv2d(2 * c, c, 1)  # the second level goes up by interpolation
        self.conv_up2 = DoubleConv(2 * c, c)
        self.outc = nn.Conv2d(c, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        x1 = self.inc(x)
        x2 = self.down1(F.max_pool2d(x1, 2))
        x3 = self.down2(F.max_pool2d(x2, 2))
        y = self.conv_up1(torch.cat([x2, self.up1(x3)], 1))
        y = F.interpolate(self.reduce2(y), scale_factor=2, mode="bilinear", align_corners=False)
        y = self.conv_up2(torch.cat([x1, y], 1))
        return self.outc(y)


def unet() -> Built:
    return UNet(), (torch.randn(1, 1, 16, 16),)


# ------------------------------------------------------------------------------------------- ESPCN


class ESPCN(nn.Module):
    def __init__(self, scale: int = 2, c: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, c, 5, padding=2)
        self.conv2 = nn.Conv2d(c, c // 2, 3, padding=1)
        self.conv3 = nn.Conv2d(c // 2, scale * scale, 3, padding=1)
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.tanh(self.conv1(x))
        x = torch.tanh(self.conv2(x))
        return self.shuffle(self.conv3(x))


def espcn() -> Built:
    return ESPCN(), (torch.randn(1, 1, 16, 16),)


# ----------------------------------------------------------------------------------------- YOLO neck


class ConvSiLU(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1) -> None:
        super().__init__(nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False), nn.BatchNorm2d(c_out), nn.SiLU())


class C2f(nn.Module):
    """YOLOv8's CSP bottleneck with two convolutions: split (chunk), bottlenecks, cat of every part."""

    def __init__(self, c_in: int, c_out: int, n: int = 1) -> None:
        super().__init__()
        self.c = c_out // 2
        self.cv1 = ConvSiLU(c_in, 2 * self.c)
        self.cv2 = ConvSiLU((2 + n) * self.c, c_out)
        self.m = nn.ModuleList(nn.Sequential(ConvSiLU(self.c, self.c, 3), ConvSiLU(self.c, self.c, 3))
                               for _ in range(n))

    def forward(self, x: Tensor) -> Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        for m in self.m:
            y.append(y[-1] + m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class YoloNeck(nn.Module):
    """A small backbone (P3, P4 maps), a top-down path (nearest upsample, cat) and two heads."""

    def __init__(self, c: int = 8, outputs: int = 6) -> None:
        super().__init__()
        self.stem = ConvSiLU(3, c, 3, 2)
        self.p3 = nn.Sequential(ConvSiLU(c, 2 * c, 3, 2), C2f(2 * c, 2 * c))
        self.p4 = nn.Sequential(ConvSiLU(2 * c, 4 * c, 3, 2), C2f(4 * c, 4 * c))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.fuse = C2f(6 * c, 2 * c)
        self.head3 = nn.Conv2d(2 * c, outputs, 1)
        self.head4 = nn.Conv2d(4 * c, outputs, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        p3 = self.p3(self.stem(x))
        p4 = self.p4(p3)
        f3 = self.fuse(torch.cat([self.up(p4), p3], 1))
        return self.head3(f3), self.head4(p4)


def yolo_neck() -> Built:
    return YoloNeck(), (torch.randn(1, 3, 32, 32),)


# --------------------------------------------------------------------------------------- Transformers


class ViT(nn.Module):
    def __init__(self, image: int = 16, patch: int = 4, dim: int = 16, depth: int = 2, heads: int = 2,
                 classes: int = 10) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        n = (image // patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.encoder(x))[:, 0])


def vit() -> Built:
    return ViT(), (torch.randn(1, 3, 16, 16),)


class TextEncoder(nn.Module):
    """Token embedding (float, not a MAC layer), sinusoid positions, post-norm encoder, mean pool."""

    def __init__(self, vocab: int = 50, dim: int = 16, heads: int = 4, depth: int = 2, classes: int = 4,
                 max_len: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        pos = torch.arange(max_len).unsqueeze(1) * torch.exp(torch.arange(0, dim, 2) * (-math.log(1e4) / dim))
        pe = torch.zeros(max_len, 1, dim)
        pe[:, 0, 0::2], pe[:, 0, 1::2] = torch.sin(pos), torch.cos(pos)
        self.register_buffer("pe", pe)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=32, dropout=0.1)  # seq-first, ReLU
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.fc = nn.Linear(dim, classes)

    def forward(self, tokens: Tensor) -> Tensor:  # (seq, batch) int64
        pe = cast(Tensor, self.pe)  # a buffer
        x = self.embed(tokens) * math.sqrt(self.embed.embedding_dim) + pe[: tokens.shape[0]]
        return self.fc(self.encoder(x).mean(dim=0))


def text_encoder() -> Built:
    return TextEncoder(), (torch.randint(0, 50, (12, 1)),)


# ------------------------------------------------------------------------------------------- Audio


class KWS(nn.Module):
    """Keyword spotting on 10 MFCC x 49 frames: conv1d stem, depthwise-separable blocks, mean over time."""

    def __init__(self, mfcc: int = 10, c: int = 16, classes: int = 12) -> None:
        super().__init__()
        self.stem = _bn_act(mfcc, c, 5, 2, dim=1)
        self.blocks = nn.Sequential(*[nn.Sequential(_bn_act(c, c, 3, groups=c, dim=1), _bn_act(c, c, 1, dim=1))
                                      for _ in range(3)])
        self.fc = nn.Linear(c, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.blocks(self.stem(x)).mean(dim=2))


def kws() -> Built:
    return KWS(), (torch.randn(1, 10, 49),)


# ------------------------------------------------------------------------------------------- Registry


def _deterministic(fn: Callable[[], Built], seed: int = 0) -> Built:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, inputs = fn()
    return model.eval(), inputs


_BUILDERS: dict[str, Callable[[], Built]] = {
    "resnet18": resnet18, "resnet50": resnet50, "mobilenet_v2": mobilenet_v2, "mobilenet_v3": mobilenet_v3,
    "efficientnet": efficientnet, "shufflenet": shufflenet, "squeezenet": squeezenet, "densenet": densenet,
    "inception": inception, "unet": unet, "espcn": espcn, "yolo_neck": yolo_neck, "vit": vit,
    "text_encoder": text_encoder, "kws": kws,
}

CORPUS: dict[str, Callable[[], Built]] = {
    name: (lambda fn=fn: _deterministic(fn)) for name, fn in _BUILDERS.items()  # type: ignore[misc]
}


def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Re-initialise ``model`` in place with non-trivial random values, as training leaves them:
    weights scaled 1/sqrt(fan_in), non-zero biases, BatchNorm statistics and affine parameters away from
    (0, 1), random tokens and positions.  Deterministic for ``seed``; the global RNG is not touched."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                is_norm = isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm))
                if is_norm and name == "weight":
                    p.copy_(torch.rand(p.shape, generator=g) + 0.5)
                elif name.endswith("bias"):
                    p.copy_((torch.rand(p.shape, generator=g) - 0.5) * 0.2)
                elif p.dim() >= 2 and not isinstance(module, nn.Embedding):
                    fan_in = p[0].numel() if name != "in_proj_weight" else p.shape[1]
                    p.copy_(torch.randn(p.shape, generator=g) * math.sqrt(1.0 / max(fan_in, 1)))
                else:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                assert module.running_var is not None
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=g) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) + 0.5)
    return model


def build(name: str, *, seed: int = 0, trained: bool = False) -> Built:
    """Corpus model ``name`` with its example inputs; with ``trained``, :func:`trained_like` weights."""
    if name not in CORPUS:
        raise KeyError(f"corpus: no model {name!r}; known: {', '.join(CORPUS)}")
    model, inputs = _deterministic(_BUILDERS[name], seed)
    if trained:
        trained_like(model, seed)
    return model, inputs


QUANTIZABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)


def weight_layers(model: nn.Module) -> int:
    """Ground truth, by walking the modules of the model as built (before any mixq swap): every Conv,
    ConvTranspose and Linear, and 4 per nn.MultiheadAttention (q, k, v and output projections; its
    ``out_proj`` is not counted twice)."""
    inside_mha = {id(m.out_proj) for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    n = 0
    for m in model.modules():
        if isinstance(m, nn.MultiheadAttention):
            n += 4
        elif isinstance(m, QUANTIZABLE) and id(m) not in inside_mha:
            n += 1
    return n


# ------------------------------------------------------------------------------------------ Workloads

BATCH_DIM = {"text_encoder": 1}  # its inputs are (sequence, batch) tokens
VOCAB = 50


def input_batch(name: str, example: Tensor, n: int, gen: torch.Generator) -> Tensor:
    """``n`` random inputs shaped like ``example`` (batch of 1) along the model's batch dimension."""
    dim = BATCH_DIM.get(name, 0)
    shape = list(example.shape)
    shape[dim] = n
    if example.dtype == torch.long:
        return torch.randint(0, VOCAB, shape, generator=gen)
    return torch.randn(shape, generator=gen)


def _flat(out: Tensor | tuple[Tensor, ...]) -> Tensor:
    parts = out if isinstance(out, (tuple, list)) else (out,)
    return torch.cat([p.reshape(-1) for p in parts])


def corpus_workload(name: str, *, trained: bool = True, n_train: int = 16, batch_size: int = 4, seed: int = 0) -> Any:
    """A tiny :class:`search.Workload` around corpus model ``name``: random inputs, the fp32 model's own
    outputs as targets (distillation, MSE), quality = -MSE to the fp32 outputs on held-out inputs."""
    from search import Workload

    model, (example,) = build(name, seed=seed, trained=trained)
    gen = torch.Generator().manual_seed(seed + 1)
    x_train = input_batch(name, example, n_train, gen)
    x_test = input_batch(name, example, 8, gen)
    dim = BATCH_DIM.get(name, 0)
    with torch.no_grad():
        model.eval()
        test_target = _flat(model(x_test))

    def batches(g: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        while True:
            idx = torch.randint(0, n_train, (batch_size,), generator=g)
            x = x_train.index_select(dim, idx)
            with torch.no_grad():
                was = model.training
                model.eval()
                y = _flat(model(x))
                model.train(was)
            yield x, y

    calib_x = x_train.narrow(dim, 0, min(8, n_train))
    with torch.no_grad():
        calib_y = _flat(model(calib_x))

    def evaluate(m: nn.Module) -> float:
        with torch.no_grad():
            return -float(F.mse_loss(_flat(m(x_test)), test_target))

    return Workload(
        name=f"corpus-{name}", model=model, example_inputs=(example,), train_batches=batches,
        calibration_batches=[(calib_x, calib_y)], loss_fn=lambda out, y: F.mse_loss(_flat(out), y),
        evaluate=evaluate, metric="neg_mse", higher_is_better=True, lr=1e-4,
    )

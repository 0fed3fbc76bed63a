"""Conv3d and ConvTranspose1d/3d are layers: discovered with their MACs, fake-quantized, exported."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from search.quant.export_onnx import export_onnx, verify_onnx
from search.quant.formats import parse_format
from search.quant.layers import LayerKind, discover_layers
from search.quant.qat import FakeQuantMixin, QuantizationError, calibrate, quantize_model


class Volume(nn.Module):
    """Conv3d (+BN, folded) -> ConvTranspose3d -> pool to a sequence -> ConvTranspose1d -> Conv1d."""

    def __init__(self) -> None:
        super().__init__()
        self.c3 = nn.Conv3d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm3d(4)
        self.t3 = nn.ConvTranspose3d(4, 3, 2, stride=2)
        self.t1 = nn.ConvTranspose1d(3, 5, 3, stride=2, padding=1, output_padding=1)
        self.c1 = nn.Conv1d(5, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.t3(torch.relu(self.bn(self.c3(x))))  # (N, 3, 2D, 2H, 2W)
        y = y.mean(dim=(3, 4))  # (N, 3, 2D)
        return self.c1(self.t1(y))


def _x(n: int = 1) -> Tensor:
    return torch.randn(n, 2, 3, 4, 4, generator=torch.Generator().manual_seed(0))


def test_kinds_and_macs() -> None:
    graph = discover_layers(Volume(), (_x(),))
    kinds = {la.fqn: la.kind for la in graph.layers}
    assert kinds == {"c3": LayerKind.CONV3D, "t3": LayerKind.CONV_TRANSPOSE3D, "t1": LayerKind.CONV_TRANSPOSE1D,
                     "c1": LayerKind.CONV1D}
    assert graph.by_fqn("c3").macs == (4 * 3 * 4 * 4) * 2 * 27
    assert graph.by_fqn("t3").macs == (4 * 3 * 4 * 4) * 3 * 8  # input elements x C_out x kernel
    assert graph.by_fqn("t1").macs == (3 * 6) * 5 * 3


@pytest.mark.parametrize("fmt", ["int8", "int4", "fp16"])
def test_quantize_forward_backward_and_export(fmt: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Volume()
    x = _x(2)
    graph = discover_layers(model, (x,))
    quantize_model(model, {f: parse_format(fmt) for f in graph.fqns}, (x,))
    assert sum(isinstance(m, FakeQuantMixin) for m in model.modules()) == 4
    calibrate(model, [x])
    model.train()
    model(x).sum().backward()
    assert model.t3.weight.grad is not None and model.t1.weight.grad is not None
    model.eval()
    path = export_onnx(model, (x,), tmp_path / "v.onnx", dynamic_spatial=False)
    with torch.no_grad():
        out = model(x)
    assert verify_onnx(model, (x,), path) <= 1e-5 * max(1.0, float(out.abs().max()))


def test_grouped_conv_transpose_refused_by_name() -> None:
    model = nn.Sequential(nn.ConvTranspose1d(4, 4, 3, groups=2))
    x = torch.randn(1, 4, 5)
    with pytest.raises(QuantizationError, match=r"grouped ConvTranspose1d \(groups=2\).*allowed: groups=1"):
        quantize_model(model, {"0": parse_format("int8")}, (x,))

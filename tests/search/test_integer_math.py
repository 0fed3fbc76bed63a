"""The fake-quant layers against an independent integer reference, and the quantizer arithmetic
against hand-computed literals.

The reference does what an integer accelerator does: integer codes for inputs (unsigned, with a
zero point), weights (signed, per output channel) and the int32 bias, an int64 multiply-accumulate
in numpy, then one multiplication by ``s_in * s_w[c]``.  It shares no code with ``search.quant.qat``
(codes come from numpy's own round-half-even), so a fake-quant layer that rounds, clamps, pads or
scales differently from integer hardware fails here.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from search import parse_format
from search.quant.formats import FP16, INT4
from search.quant.qat import (
    ActivationQuantizer,
    FakeQuantConv2d,
    FakeQuantLinear,
    FakeQuantMixin,
    RangeMethod,
    WeightQuantizer,
    calibrate,
    quantize,
    quantize_model,
)

torch.set_num_threads(1)

U = 2.0**-24  # float32 unit roundoff
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


# ---------------------------------------------------------------------------------------------
# Independent integer reference (numpy only)
# ---------------------------------------------------------------------------------------------


def _act_codes(x: np.ndarray, scale: float, zero_point: int, qmax: int) -> np.ndarray:
    q = np.round(x.astype(np.float32) / np.float32(scale)) + zero_point  # np.round: half to even
    return np.clip(q, 0, qmax).astype(np.int64)


def _weight_codes(w: np.ndarray, qmax: int, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes, per-channel float32 scale shaped to broadcast): symmetric, narrow range."""
    other = tuple(d for d in range(w.ndim) if d != axis)
    amax = np.abs(w).max(axis=other, keepdims=True)
    scale = (np.maximum(amax, np.finfo(np.float32).tiny) / np.float32(qmax)).astype(np.float32)
    return np.clip(np.round(w / scale), -qmax, qmax).astype(np.int64), scale


def _conv2d_int64(x: np.ndarray, w: np.ndarray, stride: int, padding: int) -> np.ndarray:
    """Integer conv: x (N, C, H, W) and w (O, C, kH, kW) int64 -> (N, O, H', W') int64."""
    x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    windows = np.lib.stride_tricks.sliding_window_view(x, w.shape[2:], axis=(2, 3))[:, :, ::stride, ::stride]
    return np.einsum("nchwij,ocij->nohw", windows, w)


def _reference(layer: FakeQuantMixin, x: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(int64 accumulator incl. bias, s_in * s_w[c] in float64, sum of |terms| in float64, K).

    Padding in the integer domain is with code ``zero_point`` (real 0), i.e. 0 after the
    zero-point subtraction, which is why the centred codes are padded with zeros."""
    fmt = layer.layer_format
    s_in, zp = layer.input_quant.qparams()
    xc = _act_codes(x.numpy(), s_in, zp, fmt.activation.activation_range()[1]) - zp
    wq, s_w = _weight_codes(layer.weight.detach().numpy(), fmt.weight.weight_range()[1], axis=0)
    # the engine's scale is the same quantity computed in torch: same float32 bits
    np.testing.assert_array_equal(s_w, layer.weight_quant.scale(layer.weight).numpy())
    s_b = (np.float32(s_in) * s_w.reshape(-1)).astype(np.float32)
    assert layer.bias is not None
    bq = np.clip(np.round(layer.bias.detach().numpy() / s_b), INT32_MIN, INT32_MAX).astype(np.int64)
    if isinstance(layer, nn.Conv2d):
        stride, padding = layer.stride[0], layer.padding[0]
        assert isinstance(padding, int)  # not "same" / "valid"
        acc = _conv2d_int64(xc, wq, stride, padding) + bq[None, :, None, None]
        mag = _conv2d_int64(np.abs(xc), np.abs(wq), stride, padding) + np.abs(bq)[None, :, None, None]
        shape: tuple[int, ...] = (1, -1, 1, 1)
    else:
        acc = xc @ wq.T + bq
        mag = np.abs(xc) @ np.abs(wq).T + np.abs(bq)
        shape = (1, -1)
    unit = (np.float64(s_in) * s_w.reshape(-1).astype(np.float64)).reshape(shape)
    k = wq[0].size
    return acc, unit, mag * unit, np.full(acc.shape, k)


class _One(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


def _fake_quant_layer(
    layer: nn.Module, fmt: str, make_input: Callable[[int], Tensor], seed: int
) -> FakeQuantConv2d | FakeQuantLinear:
    torch.manual_seed(seed)
    model = _One(layer).eval()
    quantize_model(model, {"layer": parse_format(fmt)}, (make_input(2),), quantize_output=False)
    calibrate(model, [make_input(64)])
    fake = model.layer
    assert isinstance(fake, (FakeQuantConv2d, FakeQuantLinear)) and fake.bias is not None
    with torch.no_grad():  # a bias large enough to matter next to the accumulator
        fake.bias.normal_(0.0, 0.3)
    return fake


CASES = [
    # (layer, format, input maker, seed): signed inputs, so zero points are affine
    ("conv_int8", lambda: nn.Conv2d(2, 4, 3, stride=2, padding=1), "int8", lambda n: torch.randn(n, 2, 9, 9), 0),
    ("conv_int4", lambda: nn.Conv2d(3, 5, 3, padding=1), "int4", lambda n: torch.randn(n, 3, 6, 6) + 0.3, 1),
    ("linear_int4", lambda: nn.Linear(48, 6), "int4", lambda n: torch.randn(n, 48) * 0.5 - 0.2, 2),
    ("linear_w4a8", lambda: nn.Linear(24, 7), "w4a8", lambda n: torch.randn(n, 24), 3),
]


@pytest.mark.parametrize(("name", "make_layer", "fmt", "make_input", "seed"), CASES, ids=[c[0] for c in CASES])
def test_fake_quant_layer_equals_integer_accumulation(
    name: str, make_layer: Callable[[], nn.Module], fmt: str, make_input: Callable[[int], Tensor], seed: int
) -> None:
    layer = _fake_quant_layer(make_layer(), fmt, make_input, seed)
    _, zp = layer.input_quant.qparams()
    assert zp > 0, "the case should exercise an affine zero point"
    x = make_input(16) * 1.3  # partly beyond the calibrated range: clamping is exercised too
    with torch.no_grad():
        fake = layer(x).numpy().astype(np.float64)
    acc, unit, magnitude, k = _reference(layer, x)
    ref = acc * unit
    # float32 dot product of K products plus a bias, any summation order: |error| <= (K + 2) u sum|terms|;
    # the dequantized operands each carry one more rounding, hence K + 4
    bound = (k + 4) * U * magnitude
    assert np.all(np.abs(fake - ref) <= bound), f"{name}: max excess {np.max(np.abs(fake - ref) - bound)}"
    # and, where float rounding is below half an accumulator unit, the result *is* the integer
    # accumulator: one flipped input or weight code moves it by at least one unit
    assert np.all(bound / unit < 0.5), "premise: float rounding must stay below half an accumulator unit"
    np.testing.assert_array_equal(np.round(fake / unit).astype(np.int64), acc)
    assert np.abs(acc).max() > 10 * abs(zp), "the accumulators should not be trivially small"


def test_conv_padding_is_real_zero_not_code_zero() -> None:
    """With an affine zero point, padded border pixels are real 0, i.e. code ``zp``.  Guards the
    reference: padding with code 0 instead gives different border outputs, which the fake-quant
    layer does not produce."""
    layer = _fake_quant_layer(nn.Conv2d(1, 1, 3, padding=1), "int8", lambda n: torch.randn(n, 1, 5, 5), 4)
    s_in, zp = layer.input_quant.qparams()
    assert zp > 0
    x = torch.randn(1, 1, 5, 5)
    with torch.no_grad():
        fake = layer(x).numpy()
    acc, unit, _, _ = _reference(layer, x)
    np.testing.assert_array_equal(np.round(fake / unit).astype(np.int64), acc)
    codes = _act_codes(x.numpy(), s_in, zp, 255)
    wq, _ = _weight_codes(layer.weight.detach().numpy(), 127, axis=0)
    padded_with_code_zero = np.pad(codes, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=0) - zp
    bias_codes = acc - _conv2d_int64(codes - zp, wq, 1, 1)
    wrong = _conv2d_int64(padded_with_code_zero, wq, 1, 0) + bias_codes
    assert np.array_equal(wrong[..., 1:-1, 1:-1], acc[..., 1:-1, 1:-1])  # the interior agrees
    assert not np.array_equal(wrong, acc)  # the border does not


# ---------------------------------------------------------------------------------------------
# quantize() against literals
# ---------------------------------------------------------------------------------------------


def test_quantize_int4_weight_ties_round_half_to_even_and_clamp() -> None:
    x = torch.tensor([2.5, 3.5, -2.5, -3.5, 0.5, 1.5, -0.5, 6.5, 7.4, 7.5, 100.0, -100.0])
    got = quantize(x, torch.tensor(1.0), torch.tensor(0.0), *INT4.weight_range())
    assert got.tolist() == [2, 4, -2, -4, 0, 2, 0, 6, 7, 7, 7, -7]


def test_quantize_scale_divides() -> None:
    # x / 0.25 = 0.625 / 0.25 = 2.5 -> 2; 0.875 / 0.25 = 3.5 -> 4 (exact binary fractions)
    got = quantize(torch.tensor([0.625, 0.875, -0.125]), torch.tensor(0.25), torch.tensor(0.0), -7, 7)
    assert got.tolist() == [2, 4, 0]


def test_quantize_uint4_activation_with_zero_point() -> None:
    # round first, then add the zero point, then clamp to [0, 15]: -1.25 / 0.5 = -2.5 -> -2 -> 1,
    # -0.75 / 0.5 = -1.5 -> -2 -> 1, 4.75 / 0.5 = 9.5 -> 10 -> 13, 5.25 / 0.5 = 10.5 -> 10 -> 13
    x = torch.tensor([-1.25, -0.75, 0.0, 1.25, 4.75, 5.25, 6.4, 100.0, -100.0])
    got = quantize(x, torch.tensor(0.5), torch.tensor(3.0), *INT4.activation_range())
    assert got.tolist() == [1, 1, 3, 5, 13, 13, 15, 15, 0]


def test_quantizer_modules_round_the_same_literals() -> None:
    """The forward passes (not only quantize()) round half to even and clamp."""
    w = torch.tensor([[7.0, 2.5, 3.5, -2.5, 0.5, -6.5]])  # max |w| = 7: scale exactly 1
    assert WeightQuantizer(INT4)(w).tolist() == [[7.0, 2.0, 4.0, -2.0, 0.0, -6.0]]
    quant = _frozen_activation_quantizer(0.5, 3.0, RangeMethod.MINMAX).eval()
    x = torch.tensor([-1.25, -0.75, 4.75, 5.25, 6.4, -100.0])
    # codes [1, 1, 13, 13, 15, 0] -> (code - 3) * 0.5
    assert quant(x).tolist() == [-1.0, -1.0, 5.0, 5.0, 6.0, -1.5]


def test_quantize_divides_where_torch_fake_quantize_multiplies_by_the_inverse() -> None:
    """x / s is exactly 2.5 in float32 (-> 2), but x * (1/s) is 2.5000002 (-> 3): the ONNX
    definition divides, torch's built-in fake_quantize kernels multiply."""
    s = torch.tensor(0.3, dtype=torch.float32)
    x = torch.tensor([float.fromhex("0x1.800002p-1")], dtype=torch.float32)
    assert (x / s).item() == 2.5
    assert quantize(x, s, torch.tensor(0.0), 0, 15).item() == 2
    quant = _frozen_activation_quantizer(float(s), 0.0, RangeMethod.MINMAX).eval()
    assert quant(x).item() == (2 * s).item()  # the forward pass divides too
    torch_code = torch.fake_quantize_per_tensor_affine(x, float(s), 0, 0, 15) / s
    assert round(torch_code.item()) == 3


# ---------------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------------


def _grad(t: Tensor) -> Tensor:
    """``t.grad``, set by a backward pass (a test that reset it to None reads it through here)."""
    assert t.grad is not None
    return t.grad


def _frozen_activation_quantizer(scale: float, zero_point: float, method: RangeMethod) -> ActivationQuantizer:
    quant = ActivationQuantizer(INT4, method)
    with torch.no_grad():
        quant.scale.fill_(scale)
        quant.zero_point.fill_(zero_point)
        quant.min_val.fill_(-zero_point * scale)
        quant.max_val.fill_((15 - zero_point) * scale)
    quant.initialized.fill_(True)
    return quant


def test_ste_gradient_is_masked_outside_the_clamp_range() -> None:
    quant = _frozen_activation_quantizer(0.5, 2.0, RangeMethod.MINMAX).eval()
    # unclamped code round(x / 0.5) + 2: -1.25 -> round(-2.5) = -2 -> 0 (in); -1.3 -> -3 -> -1 (out);
    # 0 -> 2 (in); 6.4 -> 13 -> 15 (in); 6.6 -> 13 -> 15 (in); 6.8 -> 14 -> 16 (out); 50 (out)
    x = torch.tensor([-1.25, -1.3, 0.0, 6.4, 6.6, 6.8, 50.0], requires_grad=True)
    quant(x).backward(torch.arange(1.0, 8.0))
    assert x.grad is not None
    assert x.grad.tolist() == [1.0, 0.0, 3.0, 4.0, 5.0, 0.0, 0.0]


def test_weight_ste_gradient_passes_inside_the_range() -> None:
    w = torch.tensor([[0.7, -0.35, 0.1], [0.2, 0.0, -0.05]], requires_grad=True)
    WeightQuantizer(INT4)(w).sum().backward()
    assert w.grad is not None
    # the scale follows max |w| per row, so nothing is clamped and every gradient passes
    assert w.grad.tolist() == [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]


def test_lsq_scale_gradient_matches_the_paper_on_a_tiny_example() -> None:
    """LSQ eq. 3: d x_hat / d s = round(v) - v inside the range, q - zp at the clamps; times the
    gradient scale 1 / sqrt(N * Qp)."""
    quant = _frozen_activation_quantizer(1.0, 0.0, RangeMethod.LSQ).train()
    x = torch.tensor([0.4, 0.6, 20.0])
    x_hat = quant(x)
    assert x_hat.tolist() == [0.0, 1.0, 15.0]
    ((x_hat - x) ** 2).sum().backward()
    # dL/dx_hat = 2 (x_hat - x) = [-0.8, 0.8, -10]; ds = [-0.4, 0.4, 15]
    expected = (-0.8 * -0.4 + 0.8 * 0.4 + -10.0 * 15.0) / math.sqrt(3 * 15)
    assert quant.scale.grad is not None
    assert quant.scale.grad.item() == pytest.approx(expected, rel=1e-6)
    assert quant.scale.grad.item() < 0  # the clipped 20 dominates: descent widens the step

    quant.scale.grad = None
    y = torch.tensor([0.4, 0.6])
    ((quant(y) - y) ** 2).sum().backward()
    # only rounding error: 0.32 + 0.32 > 0, descent narrows the step
    assert _grad(quant.scale).item() == pytest.approx(0.64 / math.sqrt(2 * 15), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# fp16 and the bias scale
# ---------------------------------------------------------------------------------------------


def test_fp16_rounding_literals_and_straight_through_gradient() -> None:
    tiny = 2.0**-24  # smallest fp16 subnormal
    x = torch.tensor(
        [1 + 2**-11, 1 + 3 * 2**-11, 65504.0, 65519.0, 65520.0, 0.5 * tiny, 1.5 * tiny, 2049.0, 2051.0],
        requires_grad=True,
    )
    want = [1.0, 1 + 2**-9, 65504.0, 65504.0, math.inf, 0.0, 2 * tiny, 2048.0, 2052.0]
    for quant in (ActivationQuantizer(FP16), WeightQuantizer(FP16)):
        y = quant(x)
        assert y.dtype == torch.float32
        assert y.tolist() == want
        x.grad = None
        y.sum().backward()
        assert _grad(x).tolist() == [1.0] * len(want)


def test_bias_scale_is_the_float32_product() -> None:
    layer = _fake_quant_layer(nn.Linear(5, 3), "int8", lambda n: torch.randn(n, 5), 5)
    s_in, _ = layer.input_quant.qparams()
    s_w = layer.weight_quant.scale(layer.weight).reshape(-1)
    assert layer.bias is not None
    got = layer.bias_scale()
    assert got.dtype == torch.float32
    np.testing.assert_array_equal(got.numpy(), (np.float32(s_in) * s_w.detach().numpy()).astype(np.float32))
    _, _, bias = layer.quantized_operands(torch.zeros(1, 5))
    assert bias is not None
    b = layer.bias.detach().numpy()
    on_grid = (np.round(b / got.numpy()) * got.numpy()).astype(np.float32)  # int32 codes times the scale
    np.testing.assert_array_equal(bias.detach().numpy(), on_grid)
    assert not np.array_equal(on_grid, b)

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from search.quant.formats import INT4, INT8, LayerFormat, parse_format
from search.quant.layers import discover_layers
from search.quant.qat import (
    OUTPUT_QUANT_ATTR,
    ActivationQuantizer,
    FakeQuantConv1d,
    FakeQuantConv2d,
    FakeQuantConvTranspose2d,
    FakeQuantLinear,
    QuantizationError,
    RangeMethod,
    WeightQuantizer,
    activation_quantizers,
    calibrate,
    dequantize_model,
    fold_batchnorm,
    quantize,
    quantize_model,
)
from tests.search.models import (
    BatchNormNet,
    Conv1dNet,
    ConvThenLinearNet,
    ConvTransposeNet,
    DepthwiseNet,
    NetClass,
    ResidualNet,
    UntraceableBatchNormNet,
    randomize_batchnorm,
)

I8, I4 = parse_format("int8"), parse_format("int4")


def fmt_map(model_cls: NetClass, name: str) -> dict[str, LayerFormat]:
    graph = discover_layers(model_cls(), model_cls.example_inputs())
    return {fqn: parse_format(name) for fqn in graph.fqns}


# -- arithmetic ---------------------------------------------------------------------------------


def test_quantize_rounds_half_to_even_and_saturates() -> None:
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 100.0, -100.0])
    q = quantize(x, torch.tensor(1.0), torch.tensor(0.0), -7, 7)
    assert q.tolist() == [0.0, 2.0, 2.0, -0.0, -2.0, 7.0, -7.0]


def test_weight_quantizer_is_per_channel_narrow_symmetric() -> None:
    torch.manual_seed(0)
    w = torch.randn(5, 3, 3, 3) * torch.arange(1, 6).reshape(5, 1, 1, 1)
    quant = WeightQuantizer(INT4)
    wq = quant(w)
    scale = quant.scale(w)
    assert scale.shape == (5, 1, 1, 1)
    codes = wq / scale
    assert torch.allclose(codes, codes.round(), atol=1e-4)
    assert codes.abs().amax().item() == pytest.approx(7.0, abs=1e-4)
    # every channel's largest |w| is representable exactly (scale = max|w| / 7)
    assert torch.allclose(wq.abs().amax(dim=(1, 2, 3)), w.abs().amax(dim=(1, 2, 3)))
    assert codes.round().unique().numel() <= 15


def test_weight_quantizer_gradient_is_straight_through() -> None:
    w = torch.randn(4, 6, requires_grad=True)
    WeightQuantizer(INT8)(w).sum().backward()
    assert w.grad is not None
    assert torch.equal(w.grad, torch.ones_like(w))


def test_activation_gradient_masked_outside_range() -> None:
    quant = ActivationQuantizer(INT8)
    quant.calibrating = True
    quant(torch.tensor([0.0, 1.0]))
    quant.finish_calibration()
    x = torch.tensor([-1.0, 0.5, 2.0], requires_grad=True)
    quant(x).sum().backward()
    assert x.grad is not None
    assert x.grad.tolist() == [0.0, 1.0, 0.0]


# -- BatchNorm folding -------------------------------------------------------------------------


@pytest.mark.parametrize("model_cls", [BatchNormNet, UntraceableBatchNormNet])
def test_bn_folding_preserves_eval_outputs(model_cls: NetClass) -> None:
    model = randomize_batchnorm(model_cls()).eval()
    x = torch.randn(4, *model_cls.example_inputs()[0].shape[1:], generator=torch.Generator().manual_seed(1))
    before = model(x)
    pairs = fold_batchnorm(model)
    after = model(x)
    assert pairs, "nothing was folded"
    for _, bn_fqn in pairs:
        assert isinstance(model.get_submodule(bn_fqn), nn.Identity)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert torch.allclose(before, after, atol=1e-5, rtol=1e-4)


def test_bn_folding_pairs_and_training_flag() -> None:
    model = randomize_batchnorm(BatchNormNet()).train()
    pairs = fold_batchnorm(model)
    assert sorted(pairs) == [("conv", "bn"), ("fc", "fc_bn"), ("features.0", "features.1")]
    assert model.features[0].bias is not None  # a bias-free conv gains the folded bias
    assert model.conv.training  # the fused layer keeps the model's mode


def test_bn_not_folded_when_conv_output_is_also_used_elsewhere() -> None:
    class TwoUsers(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 1)
            self.bn = nn.BatchNorm2d(2)

        def forward(self, x: Tensor) -> Tensor:
            y = self.conv(x)
            return self.bn(y) + y

    model = TwoUsers()
    assert fold_batchnorm(model) == []
    assert isinstance(model.bn, nn.BatchNorm2d)


# -- module swap -------------------------------------------------------------------------------


def test_quantize_model_swaps_named_layers_only() -> None:
    model = ConvThenLinearNet()
    fc = model.fc
    quantize_model(model, {"conv": I8}, ConvThenLinearNet.example_inputs())
    assert type(model.conv) is FakeQuantConv2d
    assert model.conv.layer_format == I8
    assert model.fc is fc and type(model.fc) is nn.Linear
    assert not hasattr(model, OUTPUT_QUANT_ATTR)  # the last layer (fc) stays fp32


def test_fp32_entry_leaves_layer_alone() -> None:
    model = ConvThenLinearNet()
    conv = model.conv
    quantize_model(model, {"conv": parse_format("fp32"), "fc": I8}, ConvThenLinearNet.example_inputs())
    assert model.conv is conv
    assert type(model.fc) is FakeQuantLinear


@pytest.mark.parametrize(
    ("model_cls", "types"),
    [
        (ConvTransposeNet, {"conv": FakeQuantConv2d, "up": FakeQuantConvTranspose2d}),
        (Conv1dNet, {"conv": FakeQuantConv1d, "fc": FakeQuantLinear}),
        (DepthwiseNet, {"pw": FakeQuantConv2d, "dw": FakeQuantConv2d, "grouped": FakeQuantConv2d}),
        (ResidualNet, {"skip": FakeQuantConv2d, "head": FakeQuantConv2d}),
    ],
)
def test_every_layer_kind_quantizes_and_stays_close_at_int8(
    model_cls: NetClass, types: dict[str, type[nn.Module]]
) -> None:
    torch.manual_seed(0)
    model = model_cls().eval()
    (x,) = model_cls.example_inputs()
    xs = torch.rand(8, *x.shape[1:], generator=torch.Generator().manual_seed(3))
    ref = model(xs)
    quantize_model(model, fmt_map(model_cls, "int8"), (x,))
    for fqn, cls in types.items():
        assert type(model.get_submodule(fqn)) is cls
    calibrate(model, [xs])
    out = model(xs)
    assert out.shape == ref.shape
    err = (out - ref).abs().max() / ref.abs().max()
    assert 0 < err < 0.05


def test_conv_transpose_output_size_argument() -> None:
    model = nn.ConvTranspose2d(2, 3, 3, stride=2)
    x = torch.rand(1, 2, 4, 4)
    ref = model(x, output_size=[10, 10])
    quant = nn.Sequential(model)
    quantize_model(quant, {"0": parse_format("fp16")}, (x,))
    assert quant[0](x, output_size=[10, 10]).shape == ref.shape == (1, 3, 10, 10)


def test_state_dict_keys_of_weights_unchanged() -> None:
    model = ConvThenLinearNet()
    before = model.state_dict()
    quantize_model(model, {"conv": I4, "fc": I8}, ConvThenLinearNet.example_inputs())
    after = model.state_dict()
    assert set(before) <= set(after)
    for key, value in before.items():
        assert torch.equal(after[key], value)
    extra = set(after) - set(before)
    assert extra and all(".input_quant." in k or k.startswith(OUTPUT_QUANT_ATTR) for k in extra)


def test_parameters_are_shared_not_copied() -> None:
    model = ConvThenLinearNet()
    weight = model.conv.weight
    quantize_model(model, {"conv": I8}, ConvThenLinearNet.example_inputs())
    assert model.conv.weight is weight


def test_padding_mode_survives_the_swap() -> None:
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1, padding_mode="reflect"), nn.ReLU(), nn.Conv2d(3, 1, 1))
    x = torch.rand(2, 1, 6, 6)
    ref = model(x)
    quantize_model(model, {"0": parse_format("fp16")}, (x[:1],))
    assert torch.allclose(model(x), ref, atol=1e-2)


def test_already_quantized_is_an_error() -> None:
    model = ConvThenLinearNet()
    quantize_model(model, {"conv": I8}, ConvThenLinearNet.example_inputs())
    with pytest.raises(QuantizationError, match="'conv' is already quantized"):
        quantize_model(model, {"conv": I8}, ConvThenLinearNet.example_inputs())


def test_dequantize_round_trip() -> None:
    torch.manual_seed(0)
    model = ConvThenLinearNet().eval()
    original = copy.deepcopy(model)
    (x,) = ConvThenLinearNet.example_inputs()
    quantize_model(model, {"conv": I4, "fc": I8}, (x,))
    assert not torch.equal(model(x), original(x))
    dequantize_model(model)
    assert type(model.conv) is nn.Conv2d and type(model.fc) is nn.Linear
    assert not hasattr(model, OUTPUT_QUANT_ATTR)
    assert not hasattr(model.conv, "layer_format")
    assert list(model.state_dict()) == list(original.state_dict())
    assert torch.equal(model(x), original(x))
    assert not model._forward_hooks  # the output-quant hook is gone too
    # and it can be quantized again, with one output quantizer hook
    quantize_model(model, {"conv": I8, "fc": I8}, (x,))
    assert type(model.conv) is FakeQuantConv2d
    assert len(model._forward_hooks) == 1


# -- calibration and the output quantizer -------------------------------------------------------


def test_calibration_non_negative_input_is_unsigned_zero_point_0() -> None:
    model = nn.Sequential(nn.Linear(4, 3))
    x = torch.rand(32, 4, generator=torch.Generator().manual_seed(0)) * 3.0
    quantize_model(model, {"0": I8}, (x[:1],), quantize_output=False)
    calibrate(model, [x])
    layer = model[0]
    assert isinstance(layer, FakeQuantLinear)
    q = layer.input_quant
    s, zp = q.qparams()
    assert zp == 0
    assert not q.signed_input
    assert s == pytest.approx(float(x.max()) / 255, rel=1e-6)


def test_calibration_signed_input_is_affine() -> None:
    model = nn.Sequential(nn.Linear(4, 3))
    x = torch.linspace(-1.0, 3.0, 40).reshape(10, 4)
    quantize_model(model, {"0": I8}, (x[:1],), quantize_output=False)
    calibrate(model, [(x[:5], None), (x[5:], None)])  # (inputs, target) pairs, over two batches
    layer = model[0]
    assert isinstance(layer, FakeQuantLinear)
    q = layer.input_quant
    s, zp = q.qparams()
    assert q.signed_input
    assert s == pytest.approx(4.0 / 255, rel=1e-6)
    assert zp == round(1.0 / (4.0 / 255)) == 64
    # the range ends are representable: -1 -> code 0, 3 -> code 255
    codes = quantize(torch.tensor([-1.0, 3.0]), q.scale, q.zero_point, 0, 255)
    assert codes.tolist() == [0.0, 255.0]


def test_calibration_with_no_data_is_an_error() -> None:
    model = nn.Sequential(nn.Linear(4, 3))
    quantize_model(model, {"0": I8}, (torch.zeros(1, 4),))
    with pytest.raises(QuantizationError, match="saw no data"):
        calibrate(model, [])


def test_calibration_observes_float_bias() -> None:
    # while calibrating, the input is not quantized, so neither is the int32 bias (its scale
    # depends on the input scale being calibrated)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    float_first = model[0]
    assert isinstance(float_first, nn.Linear)
    with torch.no_grad():
        float_first.bias.copy_(torch.tensor([0.3, 0.7, 0.45, 0.9]))
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    quantize_model(model, {"0": I4, "2": I8}, (x[:1],))
    calibrate(model, [x])
    first, last = model[0], model[2]
    assert isinstance(first, FakeQuantLinear) and isinstance(last, FakeQuantLinear)
    with torch.no_grad():
        hidden = torch.relu(F.linear(x, first.weight_quant(first.weight), first.bias))
    assert float(last.input_quant.max_val) == pytest.approx(float(hidden.max()), rel=1e-6)


def test_output_quantizer_at_last_layer_activation_format() -> None:
    model = ConvThenLinearNet().eval()
    (x,) = ConvThenLinearNet.example_inputs()
    quantize_model(model, {"conv": I8, "fc": parse_format("w8a4")}, (x,))
    out_quant = getattr(model, OUTPUT_QUANT_ATTR)
    assert out_quant.fmt == INT4
    xs = torch.rand(16, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    calibrate(model, [xs])
    out = model(xs)
    s, zp = out_quant.qparams()
    codes = out / s + zp
    assert torch.allclose(codes, codes.round(), atol=1e-3)
    assert codes.round().min() >= 0 and codes.round().max() <= 15
    assert codes.round().unique().numel() > 2  # really quantized, not collapsed
    names = [n for n, _ in activation_quantizers(model)]
    assert sorted(names) == ["conv.input_quant", "fc.input_quant", OUTPUT_QUANT_ATTR]


def test_no_output_quantizer_when_disabled() -> None:
    model = ConvThenLinearNet()
    quantize_model(model, {"fc": I8}, ConvThenLinearNet.example_inputs(), quantize_output=False)
    assert not hasattr(model, OUTPUT_QUANT_ATTR)


def test_minmax_range_follows_ema_in_training_frozen_in_eval() -> None:
    quant = ActivationQuantizer(INT8)
    quant.calibrating = True
    quant(torch.tensor([0.0, 1.0]))
    quant.finish_calibration()
    quant.train()
    quant(torch.tensor([0.0, 11.0]))
    assert float(quant.max_val) == pytest.approx(1.0 + 0.01 * 10.0)
    quant.eval()
    scale = quant.scale.clone()
    quant(torch.tensor([0.0, 100.0]))
    assert torch.equal(quant.scale, scale)


# -- LSQ ------------------------------------------------------------------------------------------


def test_lsq_scale_is_learned() -> None:
    torch.manual_seed(0)
    model = ConvThenLinearNet()
    (x,) = ConvThenLinearNet.example_inputs()
    quantize_model(model, {"conv": I4, "fc": I4}, (x,), range_method="lsq")
    assert isinstance(model.fc, FakeQuantLinear)
    scale = model.fc.input_quant.scale
    assert isinstance(scale, nn.Parameter)
    assert any(p is scale for p in model.parameters())
    xs = torch.rand(32, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    ys = torch.randint(0, 10, (32,), generator=torch.Generator().manual_seed(0))
    calibrate(model, [xs])
    initial = scale.detach().clone()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(5):
        loss = F.cross_entropy(model(xs), ys)
        opt.zero_grad()
        loss.backward()
        assert scale.grad is not None and scale.grad.abs().item() > 0
        opt.step()
    assert not torch.equal(scale.detach(), initial)


def test_minmax_scale_is_a_buffer_not_a_parameter() -> None:
    model = ConvThenLinearNet()
    quantize_model(model, {"fc": I8}, ConvThenLinearNet.example_inputs(), range_method=RangeMethod.MINMAX)
    assert isinstance(model.fc, FakeQuantLinear)
    assert not isinstance(model.fc.input_quant.scale, nn.Parameter)
    assert "fc.input_quant.scale" in model.state_dict()
    assert all("quant" not in name for name, _ in model.named_parameters())


@pytest.mark.parametrize("name", ["int4", "w4a8", "w8a4", "w8a16", "w16a8", "fp16"])
@pytest.mark.parametrize("model_cls", [ConvTransposeNet, Conv1dNet, DepthwiseNet])
def test_every_format_runs_on_every_kind(model_cls: NetClass, name: str) -> None:
    model = model_cls().eval()
    (x,) = model_cls.example_inputs()
    xs = torch.rand(4, *x.shape[1:], generator=torch.Generator().manual_seed(5))
    ref = model(xs)
    quantize_model(model, fmt_map(model_cls, name), (x,))
    calibrate(model, [xs])
    out = model(xs)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert not torch.equal(out, ref)  # something was rounded
    err = (out - ref).abs().max() / ref.abs().max()
    assert err < (0.6 if "4" in name else 0.05)

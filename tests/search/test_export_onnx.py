"""ONNX QDQ export: the exported graph computes the fake-quant model's numbers in onnxruntime.

Two levels of checking:

* end to end (``verify_onnx``): the model output is itself quantized, so any flipped rounding
  anywhere that reaches the output shows up as at least one output step; we require less than
  1e-5 of a step.
* point by point: every Q/DQ (and fp16 Cast) pair of the graph is fed the tensor onnxruntime
  actually computed upstream, and its output must equal the mixq quantizer's output on that same
  tensor *bit for bit*; weights and biases after DequantizeLinear must equal the fake-quant
  operands bit for bit; each layer's output must match torch at float rounding level.  This
  separates "the QDQ arithmetic is the engine's" (exact) from "Conv/Gemm summed in another order"
  (float rounding), so the exact part is checked on every element, not only where it survives to
  the output.
"""

from __future__ import annotations

import copy
import io
import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import Tensor, nn

from search import Workload, load_workload, parse_format, run_trial
from search.quant.export_onnx import ExportError, StaticShapesWarning, export_onnx, onnxruntime_session, verify_onnx
from search.quant.qat import (
    OUTPUT_QUANT_ATTR,
    FakeQuantLinear,
    FakeQuantMixin,
    activation_quantizers,
    calibrate,
    fake_quant_layers,
    quantize,
    quantize_model,
)

torch.set_num_threads(1)

# below this fraction of an output quantization step the outputs are equal: a single flipped
# rounding anywhere that reaches the output costs a whole step
STEP_FRACTION = 1e-5
# layer outputs (Conv/Gemm in float32, summed in a different order) agree to this, relative to the
# largest magnitude of the tensor
FLOAT_RTOL = 1e-5


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


class MixedNet(nn.Module):
    """conv+BN (folded) -> depthwise -> w4a8 conv -> fp16 1x1 ``fp16conv`` (sees negative inputs) ->
    ConvTranspose (negative inputs: affine zero point; C_in != C_out, so a wrong axis fails) ->
    conv -> mean -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.mid = nn.Conv2d(8, 16, 3, padding=1)
        self.fp16conv = nn.Conv2d(16, 16, 1)
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.tail = nn.Conv2d(8, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(self.dw(x))
        x = self.fp16conv(self.mid(x))  # no ReLU: fp16conv and up see signed inputs
        x = torch.relu(self.tail(self.up(x)))
        return self.fc(x.mean((2, 3)))


MIXED_MAP = {
    "stem": "int8", "dw": "int4", "mid": "w4a8", "fp16conv": "fp16", "up": "int4", "tail": "int4", "fc": "int8",
}


class SeqNet(nn.Module):
    """Conv1d on raw signed data (affine zero point on the first layer), then Linear layers on a
    3-D tensor (exported as MatMul + Add, not Gemm)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 12, 3, padding=1)
        self.proj = nn.Linear(12, 16)
        self.mix = nn.Linear(16, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.conv(x)).transpose(1, 2)  # (N, T, C)
        h = torch.relu(self.proj(h))
        return self.head(torch.relu(self.mix(h)))


SEQ_MAP = {"conv": "int8", "proj": "w8a4", "mix": "w4a16", "head": "int4"}


def _mixed_inputs(gen: torch.Generator, n: int) -> Tensor:
    return torch.randn(n, 3, 8, 8, generator=gen)


def _seq_inputs(gen: torch.Generator, n: int) -> Tensor:
    return torch.randn(n, 4, 10, generator=gen) * 2.0 + 0.5


def _trained(
    model: nn.Module, qmap: dict[str, str], inputs: Callable[[torch.Generator, int], Tensor],
    *, method: str = "minmax", steps: int = 4, seed: int = 0,
) -> nn.Module:
    """quantize_model + calibration + a few Adam QAT steps, like a search trial."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model.eval()
    quantize_model(model, {k: parse_format(v) for k, v in qmap.items()}, (inputs(gen, 2),), range_method=method)
    calibrate(model, [inputs(gen, 32) for _ in range(2)])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        x = inputs(gen, 32)
        loss = (model(x) - 0.3).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path, Tensor]:
    torch.manual_seed(0)
    model = MixedNet()
    assert model.bn.running_mean is not None and model.bn.running_var is not None
    with torch.no_grad():  # non-trivial BN statistics, so folding changes the weights
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.weight.uniform_(0.5, 1.5)
    _trained(model, MIXED_MAP, _mixed_inputs)
    gen = torch.Generator().manual_seed(123)
    path = export_onnx(model, (_mixed_inputs(gen, 2),), tmp_path_factory.mktemp("onnx") / "mixed.onnx")
    return model, path, _mixed_inputs(gen, 256)


@pytest.fixture(scope="module")
def seq(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path, Tensor]:
    model = _trained(SeqNet(), SEQ_MAP, _seq_inputs, method="lsq", seed=1)
    gen = torch.Generator().manual_seed(7)
    path = export_onnx(model, (_seq_inputs(gen, 2),), tmp_path_factory.mktemp("onnx") / "seq.onnx")
    return model, path, _seq_inputs(gen, 256)


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------


def _output_step(model: nn.Module) -> float:
    return getattr(model, OUTPUT_QUANT_ATTR).qparams()[0]


def _assert_valid_qdq_graph(path: Path) -> onnx.ModelProto:
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 21)]
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}, "custom-domain node left in the graph"
    return proto


def _assert_storage_types(proto: onnx.ModelProto, qmap: dict[str, str]) -> None:
    """The graph stores what the map says: INT4 where it says int4, no float copy left behind."""
    inits = {i.name: i for i in proto.graph.initializer}
    signed = {4: TensorProto.INT4, 8: TensorProto.INT8}
    unsigned = {4: TensorProto.UINT4, 8: TensorProto.UINT8}
    for fqn, name in qmap.items():
        fmt = parse_format(name)
        assert f"{fqn}.weight" not in inits, f"{fqn}: the float weight is still in the graph"
        if fmt.weight.is_int:
            codes = inits[f"{fqn}.weight_quantized"]
            assert codes.data_type == signed[fmt.weight.bits], fqn
            assert inits[f"{fqn}.weight_zero_point"].data_type == signed[fmt.weight.bits], fqn
            qmin, qmax = fmt.weight.weight_range()
            values = numpy_helper.to_array(codes).astype(np.int64)
            assert qmin <= values.min() and values.max() <= qmax, fqn
            assert len(np.unique(values)) > 2, f"{fqn}: codes look degenerate"
        else:
            assert inits[f"{fqn}.weight_fp16"].data_type == TensorProto.FLOAT16, fqn
        if fmt.activation.is_int:
            assert inits[f"{fqn}.input_zero_point"].data_type == unsigned[fmt.activation.bits], fqn
        if fmt.weight.is_int and fmt.activation.is_int:
            assert inits[f"{fqn}.bias_quantized"].data_type == TensorProto.INT32, fqn
    n_int4 = sum(parse_format(v).weight.bits == 4 and parse_format(v).weight.is_int for v in qmap.values())
    assert sum(i.data_type == TensorProto.INT4 for i in inits.values()) == 2 * n_int4  # codes + zero points


def _run_with_intermediates(proto: onnx.ModelProto, x: Tensor, names: list[str]) -> dict[str, np.ndarray]:
    proto = copy.deepcopy(proto)
    present = {o.name for o in proto.graph.output}
    wanted = sorted(set(names))
    proto.graph.output.extend(
        helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in wanted if n not in present
    )
    session = onnxruntime_session(proto)
    return dict(zip(wanted, session.run(wanted, {"input_0": x.numpy()}), strict=True))


def _layer_output_name(proto: onnx.ModelProto, weight_name: str) -> str:
    """The tensor a layer produces: the Conv/Gemm consuming the weight, or MatMul (+ Add bias)."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    (node,) = consumers[weight_name]
    while node.op_type == "Transpose":
        (node,) = consumers[node.output[0]]
    if node.op_type == "MatMul":
        after = consumers.get(node.output[0], [])
        if len(after) == 1 and after[0].op_type == "Add":
            node = after[0]
    assert node.op_type in {"Conv", "ConvTranspose", "Gemm", "MatMul", "Add"}, node.op_type
    return node.output[0]


def _check_point_by_point(model: nn.Module, path: Path, x: Tensor) -> tuple[int, int]:
    """Checks every quant point bit for bit (see the module docstring).  Returns (points checked,
    activation elements that sat exactly on a rounding tie x / scale = k + 0.5)."""
    proto = onnx.load(path)
    nodes = {n.name: n for n in proto.graph.node}
    plan: list[tuple[str, FakeQuantMixin | None, dict[str, str]]] = []
    for fqn, fq_layer in fake_quant_layers(model):
        fmt = fq_layer.layer_format
        where: dict[str, str] = {}
        if fmt.activation.is_int:
            where["pre"], where["post"] = nodes[f"{fqn}.input/Q"].input[0], nodes[f"{fqn}.input/DQ"].output[0]
        elif not fmt.activation.is_identity:
            where["pre"] = nodes[f"{fqn}.input/ToHalf"].input[0]
            where["post"] = nodes[f"{fqn}.input/ToFloat"].output[0]
        for part in ("weight", "bias"):
            for suffix in ("DQ", "ToFloat"):
                if f"{fqn}.{part}/{suffix}" in nodes:
                    where[part] = nodes[f"{fqn}.{part}/{suffix}"].output[0]
        assert "pre" in where and "weight" in where, f"{fqn}: quant point missing from the graph"
        where["out"] = _layer_output_name(proto, where["weight"])
        plan.append((fqn, fq_layer, where))
    out = {"pre": nodes[f"{OUTPUT_QUANT_ATTR}/Q"].input[0], "post": nodes[f"{OUTPUT_QUANT_ATTR}/DQ"].output[0]}
    plan.append((OUTPUT_QUANT_ATTR, None, out))
    values = _run_with_intermediates(proto, x, [name for _, _, where in plan for name in where.values()])

    checked = ties = 0
    with torch.no_grad():
        for fqn, layer, where in plan:
            quant = layer.input_quant if layer is not None else getattr(model, OUTPUT_QUANT_ATTR)
            ort_in = torch.from_numpy(values[where["pre"]])
            # the Q/DQ pair vs the mixq quantizer on the very same input, every element
            np.testing.assert_array_equal(values[where["post"]], quant(ort_in).numpy(), err_msg=fqn)
            checked += 1
            if quant.fmt.is_int:
                scale, zp = quant.qparams()
                v = ort_in / torch.tensor(scale, dtype=torch.float32) + zp
                qmin, qmax = quant.fmt.activation_range()
                ties += int(((v - v.floor() == 0.5) & (v > qmin) & (v < qmax)).sum())
            if layer is None:
                continue
            _, wq, bq = layer.quantized_operands(ort_in)
            np.testing.assert_array_equal(values[where["weight"]], wq.numpy(), err_msg=f"{fqn}.weight")
            checked += 1
            if bq is not None and "bias" in where:
                np.testing.assert_array_equal(values[where["bias"]], bq.numpy(), err_msg=f"{fqn}.bias")
                checked += 1
            assert isinstance(layer, nn.Module)  # a fake-quant layer is a module
            want = layer(ort_in).numpy()
            got = values[where["out"]]
            tol = FLOAT_RTOL * max(float(np.abs(want).max()), 1e-30)
            assert float(np.abs(got - want).max()) <= tol, f"{fqn}: layer output differs beyond float rounding"
    return checked, ties


def _output_diff_in_steps(model: nn.Module, path: Path, x: Tensor) -> np.ndarray:
    with torch.no_grad():
        want = model(x).numpy().astype(np.float64)
    got = onnxruntime_session(path).run(None, {"input_0": x.numpy()})[0].astype(np.float64)
    return np.abs(got - want) / _output_step(model)


def _snap_scales_to_powers_of_two(model: nn.Module) -> None:
    """Make every scale a power of two (weights re-expressed on the snapped grid, same codes).
    Then every x_hat * w_hat product and every Conv/Gemm sum is exact in float32 whatever the
    summation order, so torch and onnxruntime must agree bit for bit end to end, and values land
    exactly on rounding ties often, so round-half-to-even is exercised through the whole network."""
    with torch.no_grad():
        for _, layer in fake_quant_layers(model):
            wfmt = layer.weight_quant.fmt
            assert wfmt.is_int and layer.layer_format.activation.is_int, "int layers only"
            scale = layer.weight_quant.scale(layer.weight)
            codes = quantize(layer.weight, scale, torch.zeros(()), *wfmt.weight_range())
            layer.weight.copy_(codes * torch.exp2(torch.round(torch.log2(scale))))
        for _, quant in activation_quantizers(model):
            quant.scale.fill_(2.0 ** round(math.log2(quant.qparams()[0])))


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


def test_mixed_model_matches_onnxruntime(mixed: tuple[nn.Module, Path, Tensor]) -> None:
    model, path, x = mixed
    diff = verify_onnx(model, (x,), path)
    assert diff <= STEP_FRACTION * _output_step(model), diff


def test_mixed_model_every_quant_point_is_bit_exact(mixed: tuple[nn.Module, Path, Tensor]) -> None:
    model, path, x = mixed
    checked, _ = _check_point_by_point(model, path, x)
    assert checked == 3 * len(MIXED_MAP) + 1  # input, weight, bias per layer + output


def test_mixed_model_graph_stores_the_map(mixed: tuple[nn.Module, Path, Tensor]) -> None:
    model, path, _ = mixed
    proto = _assert_valid_qdq_graph(path)
    _assert_storage_types(proto, MIXED_MAP)
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    # the signed inputs really got an affine zero point, and the graph carries it
    for fqn in ("up", "tail"):
        layer = model.get_submodule(fqn)
        assert isinstance(layer, FakeQuantMixin)
        zp = layer.input_quant.qparams()[1]
        assert zp > 0, f"{fqn}: the test model should give this layer signed inputs"
        assert int(inits[f"{fqn}.input_zero_point"].astype(np.int64)) == zp
    # ConvTranspose weights are (C_in, C_out, kH, kW): per-output-channel axis 1
    dq = {n.name: n for n in proto.graph.node}["up.weight/DQ"]
    assert helper.get_attribute_value(dq.attribute[0]) == 1
    assert inits["up.weight_scale"].shape == (8,)
    # int32 bias scale: exactly the float32 values the fake-quant forward used
    for fqn in ("stem", "dw", "up", "fc"):
        layer = model.get_submodule(fqn)
        assert isinstance(layer, FakeQuantMixin)
        np.testing.assert_array_equal(inits[f"{fqn}.bias_scale"], layer.bias_scale().numpy())
    # the fp16 layer is two Casts around its input and a half-precision weight, no QuantizeLinear
    names = {n.name for n in proto.graph.node}
    assert {"fp16conv.input/ToHalf", "fp16conv.input/ToFloat", "fp16conv.weight/ToFloat"} <= names
    assert not any(n.startswith("fp16conv.") and n.endswith("/Q") for n in names)
    assert "mixq.formats" in {p.key for p in proto.metadata_props}


def test_sequence_model_lsq_matmul_path(seq: tuple[nn.Module, Path, Tensor]) -> None:
    model, path, x = seq
    proto = _assert_valid_qdq_graph(path)
    _assert_storage_types(proto, SEQ_MAP)
    assert "MatMul" in {n.op_type for n in proto.graph.node}
    conv = model.get_submodule("conv")
    assert isinstance(conv, FakeQuantMixin)
    assert conv.input_quant.qparams()[1] > 0  # raw signed input: affine
    diff = verify_onnx(model, (x,), path)
    assert diff <= STEP_FRACTION * _output_step(model), diff
    assert _check_point_by_point(model, path, x)[0] >= 3 * len(SEQ_MAP)


def test_exact_ties_round_half_to_even_in_onnxruntime(tmp_path: Path) -> None:
    """Inputs sitting exactly on x/scale = k + 0.5 (and one ulp either side): onnxruntime's
    QuantizeLinear must make the engine's choice on each; weights on exact ties must be stored
    as the engine rounds them.  Multiplying by 1/scale (as torch's own
    fake_quantize kernels do) gets some of these wrong, which this set is checked to expose."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 3))
    quantize_model(model, {"0": parse_format("int4")}, (torch.randn(2, 6),))
    calibrate(model, [torch.randn(16, 6)])
    model.eval()  # frozen ranges: the scale set below stays
    layer = model[0]
    assert isinstance(layer, FakeQuantLinear)
    quant = layer.input_quant
    scale, zp = 0.0371, 3.0
    c = 2.0**-3  # weight rows whose max is 7c: weight scale exactly c, so w / c are exact ties
    tie_row = [7.0, 2.5, -2.5, 3.5, -0.5, 1.5]
    with torch.no_grad():
        quant.scale.fill_(scale)
        quant.zero_point.fill_(zp)
        layer.weight.copy_(torch.tensor([tie_row, [-x for x in tie_row], tie_row[::-1]]) * c)
    s = torch.tensor(scale, dtype=torch.float32)
    k = torch.arange(-4.0, 13.0) + 0.5
    on_tie = (k * s).float()
    on_tie = on_tie[on_tie / s == k]  # keep the ones that are exact ties in float32 division
    x = torch.cat([on_tie, torch.nextafter(on_tie, on_tie + 1), torch.nextafter(on_tie, on_tie - 1)])
    x = x[: (len(x) // 6) * 6].reshape(-1, 6)
    assert len(on_tie) >= 6
    by_reciprocal = torch.round(x * (1.0 / s))
    assert (by_reciprocal != torch.round(x / s)).any(), "the inputs should tell division from 1/scale apart"

    path = export_onnx(model, (x,), tmp_path / "ties.onnx")
    proto = onnx.load(path)
    nodes = {n.name: n for n in proto.graph.node}
    dq_out = nodes["0.input/DQ"].output[0]
    got = _run_with_intermediates(proto, x, [dq_out])[dq_out]
    with torch.no_grad():
        np.testing.assert_array_equal(got, quant(x).numpy())
    codes = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}["0.weight_quantized"]
    np.testing.assert_array_equal(codes[0].astype(np.int64), [7, 2, -2, 4, 0, 2])  # half to even
    np.testing.assert_array_equal(codes[1].astype(np.int64), [-7, -2, 2, -4, 0, -2])
    assert verify_onnx(model, (x,), path) <= STEP_FRACTION * _output_step(model)


def test_fp16_cast_matches_torch_half_rounding(tmp_path: Path) -> None:
    """Cast(FLOAT16) in onnxruntime rounds like torch's .half(): ties to even, subnormals, overflow."""
    model = nn.Sequential(nn.Linear(8, 8))
    quantize_model(model, {"0": parse_format("fp16")}, (torch.randn(1, 8),))
    tiny = 2.0**-24  # smallest fp16 subnormal
    x = torch.tensor([
        [1 + 2**-11, 1 + 3 * 2**-11, 65504.0, 65520.0, -65520.0, 0.5 * tiny, 1.5 * tiny, 1e-9],
        [3.14159265, -2.71828183, 1e4 + 0.7, 2**-14 * 1.0001, 6e-5, -6e-8, 1 - 2**-12, 2049.0],
    ])
    path = export_onnx(model, (x,), tmp_path / "fp16.onnx")
    proto = onnx.load(path)
    nodes = {n.name: n for n in proto.graph.node}
    post = nodes["0.input/ToFloat"].output[0]
    got = _run_with_intermediates(proto, x, [post])[post]
    layer = model[0]
    assert isinstance(layer, FakeQuantLinear)
    with torch.no_grad():
        np.testing.assert_array_equal(got, layer.input_quant(x).numpy())
    assert np.isinf(got[0, 3]) and got[0, 0] == 1.0


def test_export_leaves_the_model_as_it_was(mixed: tuple[nn.Module, Path, Tensor], tmp_path: Path) -> None:
    model, _, x = mixed
    with torch.no_grad():
        before = model(x)
    model.train()
    export_onnx(model, (x[:2],), tmp_path / "again.onnx")
    assert model.training
    assert not any("quantized_operands" in m.__dict__ for m in model.modules())
    assert "forward" not in getattr(model, OUTPUT_QUANT_ATTR).__dict__
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), before)


def test_export_refuses_uncalibrated_and_old_opset(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(2, 4)
    quantize_model(model, {"0": parse_format("int8"), "2": parse_format("int4")}, (x,))
    with pytest.raises(ExportError, match="calibrat"):
        export_onnx(model, (x,), tmp_path / "m.onnx")
    calibrate(model, [torch.randn(8, 4)])
    with pytest.raises(ExportError, match="opset"):
        export_onnx(model, (x,), tmp_path / "m.onnx", opset=19)
    assert verify_onnx(model, (x,), export_onnx(model, (x,), tmp_path / "m.onnx")) <= 1e-6


DIGITS_MAP = {"features.0": "int8", "features.3": "int4", "features.7": "w4a8", "classifier.1": "int4",
              "classifier.3": "int8"}


@pytest.fixture(scope="module")
def digits(mixq_cache_dir: Path) -> tuple[Workload, Tensor]:
    """tests/conftest.py's session fixture ``mixq_cache_dir`` keeps the pretrained weights in a
    temporary MIXQ_CACHE_DIR; asking for it by name documents that this fixture relies on it."""
    from search.workloads.cache import cache_dir
    from search.workloads.digits import digits_arrays

    assert cache_dir() == mixq_cache_dir
    return load_workload("digits", {"pretrain_steps": 50}), digits_arrays()[2]


@pytest.mark.parametrize("method", ["minmax", "lsq"])
def test_digits_trial_exports_faithfully(digits: tuple[Workload, Tensor], tmp_path: Path, method: str) -> None:
    """A search trial as it comes (calibrated scales, 3 QAT steps) on the 597 test images.

    Every quant point is bit-exact.  End to end, a handful of outputs may differ by exactly one
    output step: Conv/Gemm sum in a different order in torch and onnxruntime, and once in a while a
    value sits within float rounding of a rounding boundary and the next quantizer flips (seen on
    this workload: 4 of 5970 outputs, from 2 images, for lsq).  No QDQ export can remove that; the powers-of-two
    test below shows exact agreement when the sums are exact."""
    workload, x_test = digits
    trial = run_trial(workload, DIGITS_MAP, qat_steps=3, seed=0, range_method=method)
    path = export_onnx(trial.model, workload.example_inputs, tmp_path / "digits.onnx")
    proto = _assert_valid_qdq_graph(path)
    _assert_storage_types(proto, DIGITS_MAP)
    checked, _ = _check_point_by_point(trial.model, path, x_test)
    assert checked == 3 * len(DIGITS_MAP) + 1
    steps = _output_diff_in_steps(trial.model, path, x_test)
    off = steps > STEP_FRACTION
    assert off.mean() <= 0.005, f"{int(off.sum())} of {off.size} outputs differ"
    assert np.all(np.abs(steps[off] - 1.0) <= 1e-4), "a differing output is off by more than one step"


def test_digits_with_power_of_two_scales_is_exact_end_to_end(digits: tuple[Workload, Tensor], tmp_path: Path) -> None:
    workload, x_test = digits
    trial = run_trial(workload, DIGITS_MAP, qat_steps=3, seed=0)
    _snap_scales_to_powers_of_two(trial.model)
    path = export_onnx(trial.model, workload.example_inputs, tmp_path / "digits-pow2.onnx")
    _, ties = _check_point_by_point(trial.model, path, x_test)
    assert ties >= 100, f"only {ties} exact ties: the test would not exercise round-half-to-even"
    diff = verify_onnx(trial.model, (x_test,), path)
    assert diff <= STEP_FRACTION * _output_step(trial.model), diff


@pytest.mark.parametrize(("quant_min", "quant_max"), [(0, 15), (-7, 7), (-127, 127)])
def test_torch_onnx_exporter_refuses_mixq_ranges(quant_min: int, quant_max: int) -> None:
    """Why export_onnx goes through markers (and why docs/export-torchao.md says no torch.ao route): torch's
    own exporter only takes 8-bit fake-quant ranges, not 4-bit ones nor narrow-range weights."""

    class FakeQuant(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return torch.fake_quantize_per_tensor_affine(x, 0.1, 0, quant_min, quant_max)

    with warnings.catch_warnings(), pytest.raises(Exception, match="ONNX allows only"):
        warnings.simplefilter("ignore")
        torch.onnx.export(  # the TorchScript exporter writes to file objects too
            FakeQuant(), (torch.randn(2, 3),), io.BytesIO(), dynamo=False, opset_version=17  # type: ignore[arg-type]
        )


# ---------------------------------------------------------------------------------------------
# Dynamic shapes
# ---------------------------------------------------------------------------------------------


class ResidualDenoiser(nn.Module):
    """Fully convolutional, residual output like the denoise workload's DnCNN: any H x W works."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(1, 8, 3, padding=1)
        self.mid = nn.Conv2d(8, 8, 3, padding=1)
        self.tail = nn.Conv2d(8, 1, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x - self.tail(torch.relu(self.mid(torch.relu(self.head(x)))))


DENOISER_MAP = {"head": "int8", "mid": "int4", "tail": "int8"}


def _images(size: int) -> Callable[[torch.Generator, int], Tensor]:
    return lambda gen, n: torch.rand(n, 1, size, size, generator=gen)


def _input_dims(proto: onnx.ModelProto) -> list[int | str]:
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_param or d.dim_value for d in dims]


def test_fully_convolutional_model_runs_at_another_size(tmp_path: Path) -> None:
    model = _trained(ResidualDenoiser(), DENOISER_MAP, _images(16))
    gen = torch.Generator().manual_seed(5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no StaticShapesWarning: the model allows any size
        path = export_onnx(model, (_images(16)(gen, 1),), tmp_path / "denoiser.onnx")
    proto = _assert_valid_qdq_graph(path)
    assert _input_dims(proto) == ["batch", 1, "input_0_dim2", "input_0_dim3"]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["mixq.dynamic_axes"])["input_0"] == ["batch", "input_0_dim2", "input_0_dim3"]
    x40 = _images(40)(gen, 3)  # another size and batch than exported with
    steps = _output_diff_in_steps(model, path, x40)
    assert steps.shape == (3, 1, 40, 40)
    off = steps > STEP_FRACTION
    # as for digits: an output may flip by one step where a float sum sits on a rounding boundary
    assert off.mean() <= 0.005, f"{int(off.sum())} of {off.size} outputs differ"
    assert np.all(np.abs(steps[off] - 1.0) <= 1e-4), "a differing output is off by more than one step"


def test_static_shapes_on_request_and_where_the_model_needs_them(tmp_path: Path) -> None:
    model = _trained(ResidualDenoiser(), DENOISER_MAP, _images(16))
    x = _images(16)(torch.Generator().manual_seed(5), 1)
    proto = onnx.load(export_onnx(model, (x,), tmp_path / "static.onnx", dynamic_spatial=False))
    assert _input_dims(proto) == ["batch", 1, 16, 16]

    flat = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
    _trained(flat, {"0": "int8", "3": "int8"}, _images(8))
    with pytest.warns(StaticShapesWarning, match="spatial axes left static: the model fails on inputs of twice"):
        path = export_onnx(flat, (_images(8)(torch.Generator().manual_seed(1), 1),), tmp_path / "flat.onnx")
    assert _input_dims(onnx.load(path)) == ["batch", 1, 8, 8]
    assert verify_onnx(flat, (_images(8)(torch.Generator().manual_seed(2), 4),), path) < 1e-4

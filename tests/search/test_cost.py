import itertools
import math

import pytest
import torch
from torch import nn

from search.profiles import ProfileError, builtin_profiles, load_profile, parse_profile_text
from search.quant.cost import (
    ActivationBytes,
    BitOps,
    CostModel,
    ProfileLatency,
    WeightBytes,
    cost_model,
    model_cost,
    model_costs,
)
from search.quant.formats import BUILTIN_FORMAT_NAMES, parse_format
from search.quant.layers import LayerInfo, discover_layers
from search.spec import CostObjective
from tests.search.models import Conv1dNet, ConvThenLinearNet, ConvTransposeNet, DepthwiseNet, ResidualNet

ALL_FORMATS = sorted({parse_format(n).name for n in BUILTIN_FORMAT_NAMES})


def _cost_models() -> list[CostModel]:
    models: list[CostModel] = [BitOps(), WeightBytes(), ActivationBytes()]
    models += [ProfileLatency(load_profile(name)) for name in builtin_profiles()]
    return models


COST_MODELS = _cost_models()


def _id(model: CostModel) -> str:
    return f"latency[{model.profile.name}]" if isinstance(model, ProfileLatency) else model.name


def _formats(model: CostModel) -> list[str]:
    return list(model.profile.formats) if isinstance(model, ProfileLatency) else ALL_FORMATS


def _layers() -> list[LayerInfo]:
    layers: list[LayerInfo] = []
    for cls in (ConvThenLinearNet, DepthwiseNet, ConvTransposeNet, Conv1dNet, ResidualNet):
        layers += discover_layers(cls(), cls.example_inputs()).layers
    return layers


LAYERS = _layers()


def test_every_builtin_profile_is_in_the_suite() -> None:
    assert {m.profile.name for m in COST_MODELS if isinstance(m, ProfileLatency)} == set(builtin_profiles())
    assert {"generic", "npu-int4"} <= set(builtin_profiles())


# -- the contract, for every cost model ----------------------------------------------------------


@pytest.mark.parametrize("model", COST_MODELS, ids=_id)
def test_cost_is_finite_and_non_negative(model: CostModel) -> None:
    for layer, name in itertools.product(LAYERS, _formats(model)):
        cost = model.layer_cost(layer, parse_format(name))
        assert math.isfinite(cost) and cost >= 0, (layer.fqn, name, cost)


@pytest.mark.parametrize("model", COST_MODELS, ids=_id)
def test_cost_is_non_decreasing_in_bits(model: CostModel) -> None:
    formats = [parse_format(n) for n in _formats(model)]
    checked = 0
    for layer in LAYERS:
        for a, b in itertools.permutations(formats, 2):
            if a.weight.bits <= b.weight.bits and a.activation.bits <= b.activation.bits:
                assert model.layer_cost(layer, a) <= model.layer_cost(layer, b), (layer.fqn, a.name, b.name)
                checked += 1
    assert checked > 0


@pytest.mark.parametrize("model", COST_MODELS, ids=_id)
def test_int4_le_int8_le_fp16(model: CostModel) -> None:
    ladder = [parse_format(n) for n in ("int4", "int8", "fp16") if n in _formats(model)]
    assert len(ladder) == 3
    for layer in LAYERS:
        costs = [model.layer_cost(layer, f) for f in ladder]
        assert costs == sorted(costs), (layer.fqn, costs)
        assert costs[0] < costs[2]  # and it really distinguishes precisions


# -- literal values -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def linear_layer() -> LayerInfo:
    """Linear 16 -> 8 with a batch-1 input: 128 MACs, 136 parameters, 16 input elements."""
    graph = discover_layers(nn.Sequential(nn.Linear(16, 8)), (torch.zeros(1, 16),))
    layer = graph.first
    assert (layer.macs, layer.num_params, layer.input_numel) == (128, 136, 16)
    return layer


@pytest.mark.parametrize(
    ("model", "fmt", "expected"),
    [
        (BitOps(), "int8", 128 * 8 * 8),
        (BitOps(), "int4", 128 * 4 * 4),
        (BitOps(), "w4a8", 128 * 4 * 8),
        (BitOps(), "w8a16", 128 * 8 * 16),
        (BitOps(), "fp32", 128 * 32 * 32),
        (WeightBytes(), "int8", 136.0),
        (WeightBytes(), "int4", 68.0),
        (WeightBytes(), "fp16", 272.0),
        (WeightBytes(), "w4a16", 68.0),
        (ActivationBytes(), "int8", 16.0),
        (ActivationBytes(), "int4", 8.0),
        (ActivationBytes(), "w4a16", 32.0),
        (ProfileLatency(load_profile("generic")), "int8", 128 / (1.0e6 * 2.0)),
        (ProfileLatency(load_profile("generic")), "fp32", 128 / (1.0e6 * 0.5)),
        (ProfileLatency(load_profile("npu-int4")), "int4", 128 / (4.0e5 * 8.0)),
        (ProfileLatency(load_profile("npu-int4")), "fp16", 128 / 4.0e5),
    ],
)
def test_literal_costs(linear_layer: LayerInfo, model: CostModel, fmt: str, expected: float) -> None:
    assert model.layer_cost(linear_layer, parse_format(fmt)) == pytest.approx(expected, rel=1e-12)


PROFILE_WITH_TABLE = """
name: measured
peak_macs_per_ms: 1.0e6
formats: {int4: {throughput: 4.0}, int8: {throughput: 2.0}, fp16: {throughput: 1.0}}
latency_table:
  "0": {int8: 0.5, W8A8: 0.5, fp16: 0.25}
"""


def test_latency_table_overrides_throughput_model(linear_layer: LayerInfo) -> None:
    model = ProfileLatency(parse_profile_text(PROFILE_WITH_TABLE))
    assert model.layer_cost(linear_layer, parse_format("int8")) == 0.5
    assert model.layer_cost(linear_layer, parse_format("fp16")) == 0.25  # measured wins, even if slower
    # no entry for int4: the throughput model
    assert model.layer_cost(linear_layer, parse_format("int4")) == pytest.approx(128 / 4.0e6)


def test_latency_table_format_names_are_normalised(linear_layer: LayerInfo) -> None:
    text = PROFILE_WITH_TABLE.replace("{int8: 0.5, W8A8: 0.5, fp16: 0.25}", "{W8A8: 0.75}")
    model = ProfileLatency(parse_profile_text(text))
    assert model.layer_cost(linear_layer, parse_format("int8")) == 0.75


def test_latency_for_unsupported_format_names_it(linear_layer: LayerInfo) -> None:
    model = ProfileLatency(load_profile("npu-int4"))
    with pytest.raises(ProfileError, match=r"format: 'fp32' is not supported by profile 'npu-int4'; allowed: int4"):
        model.layer_cost(linear_layer, parse_format("fp32"))


# -- whole models -------------------------------------------------------------------------------


def test_model_cost_sums_layers() -> None:
    graph = discover_layers(ConvThenLinearNet(), ConvThenLinearNet.example_inputs())
    # conv 1296 MACs, fc 1440 MACs
    assert model_cost(BitOps(), graph, {"conv": "int8", "fc": "int4"}) == 1296 * 64 + 1440 * 16
    assert model_cost(BitOps(), graph, {"conv": parse_format("int8"), "fc": "w4a8"}) == 1296 * 64 + 1440 * 32


def test_model_costs_by_objective_name() -> None:
    graph = discover_layers(ConvThenLinearNet(), ConvThenLinearNet.example_inputs())
    costs = model_costs(
        (CostObjective.BITOPS, CostObjective.WEIGHT_BYTES),
        load_profile("generic"),
        graph,
        {"conv": "int8", "fc": "int8"},
    )
    assert costs == {"bitops": (1296 + 1440) * 64, "weight_bytes": (40 + 1450) * 1.0}


@pytest.mark.parametrize(
    ("objective", "cls"),
    [
        ("bitops", BitOps),
        ("weight_bytes", WeightBytes),
        ("activation_bytes", ActivationBytes),
        ("latency_ms", ProfileLatency),
    ],
)
def test_cost_model_factory(objective: str, cls: type[CostModel]) -> None:
    model = cost_model(objective, load_profile("generic"))
    assert isinstance(model, cls)
    assert model.name == objective


def test_cost_model_unknown_objective() -> None:
    with pytest.raises(ValueError, match="flops"):
        cost_model("flops", load_profile("generic"))

import pytest
import torch
from torch import nn

from search.quant.formats import parse_format
from search.quant.layers import LayerDiscoveryError, LayerGraph, LayerKind, discover_layers, layer_kind
from search.quant.qat import QuantizationError, quantize_model
from tests.search.models import (
    Conv1dNet,
    ConvThenLinearNet,
    ConvTransposeNet,
    DepthwiseNet,
    NetClass,
    ResidualNet,
    SharedLayerNet,
    UnusedLayerNet,
)


def graph_of(model_cls: NetClass) -> LayerGraph:
    return discover_layers(model_cls(), model_cls.example_inputs())


def test_execution_order_not_definition_order() -> None:
    model = ConvThenLinearNet()
    defined = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert defined == ["fc", "conv"]
    graph = discover_layers(model, ConvThenLinearNet.example_inputs())
    assert graph.fqns == ("conv", "fc")
    assert graph.first.fqn == "conv" and graph.last.fqn == "fc"
    assert [layer.index for layer in graph.layers] == [0, 1]
    assert graph.unused == ()


def test_residual_branches_in_call_order() -> None:
    graph = graph_of(ResidualNet)
    assert graph.fqns == ("stem", "branch_a", "branch_b", "skip", "head")
    assert graph.first.fqn == "stem" and graph.last.fqn == "head"
    assert graph.by_fqn("skip").input_shape == (1, 4, 5, 5)
    with pytest.raises(KeyError):
        graph.by_fqn("nope")


def test_shared_layer_is_an_error_naming_it() -> None:
    with pytest.raises(LayerDiscoveryError, match=r"'block' runs 2 times"):
        graph_of(SharedLayerNet)


def test_unused_layer_is_listed_not_a_layer() -> None:
    graph = graph_of(UnusedLayerNet)
    assert graph.fqns == ("first", "last")
    assert graph.unused == ("spare",)


def test_quantize_map_naming_unused_layer_is_rejected() -> None:
    model = UnusedLayerNet()
    with pytest.raises(QuantizationError) as err:
        quantize_model(model, {"spare": parse_format("int8")}, UnusedLayerNet.example_inputs())
    msg = str(err.value)
    assert "'spare'" in msg and "never runs" in msg
    assert "first, last" in msg  # lists the known layers
    assert type(model.spare) is nn.Linear


def test_quantize_map_naming_unknown_layer_is_rejected() -> None:
    with pytest.raises(QuantizationError, match=r"layers: 'nope' is not a quantizable layer"):
        quantize_model(UnusedLayerNet(), {"nope": parse_format("int8")}, UnusedLayerNet.example_inputs())


def test_no_quantizable_layer_is_an_error() -> None:
    with pytest.raises(LayerDiscoveryError, match="no quantizable layer"):
        discover_layers(nn.Sequential(nn.ReLU()), (torch.zeros(1, 3),))


@pytest.mark.parametrize(
    ("model_cls", "expected"),
    [
        (ConvThenLinearNet, {"conv": 1296, "fc": 1440}),
        (DepthwiseNet, {"pw": 2048, "dw": 4608, "grouped": 18432, "dw_mult": 9216}),
        (ConvTransposeNet, {"conv": 1800, "up": 2700}),
        (Conv1dNet, {"conv": 1080, "fc": 288}),
    ],
)
def test_macs_match_hand_computed(model_cls: NetClass, expected: dict[str, int]) -> None:
    graph = graph_of(model_cls)
    assert {layer.fqn: layer.macs for layer in graph.layers} == expected


def test_macs_scale_with_batch() -> None:
    model = ConvTransposeNet()
    graph = discover_layers(model, (torch.rand(3, 2, 5, 5),))
    assert {layer.fqn: layer.macs for layer in graph.layers} == {"conv": 3 * 1800, "up": 3 * 2700}


def test_linear_macs_per_token() -> None:
    # a Linear on a (batch, tokens, features) input: every output element costs in_features MACs
    graph = discover_layers(nn.Linear(16, 8), (torch.zeros(2, 5, 16),))
    assert graph.first.macs == 2 * 5 * 8 * 16


@pytest.mark.parametrize(
    ("model_cls", "expected"),
    [
        (ConvThenLinearNet, {"conv": LayerKind.CONV2D, "fc": LayerKind.LINEAR}),
        (
            DepthwiseNet,
            {
                "pw": LayerKind.CONV2D,
                "dw": LayerKind.CONV2D_DEPTHWISE,
                "grouped": LayerKind.CONV2D_GROUPED,
                "dw_mult": LayerKind.CONV2D_DEPTHWISE,  # groups == in_channels, multiplier 2
            },
        ),
        (ConvTransposeNet, {"conv": LayerKind.CONV2D, "up": LayerKind.CONV_TRANSPOSE2D}),
        (Conv1dNet, {"conv": LayerKind.CONV1D, "fc": LayerKind.LINEAR}),
    ],
)
def test_kinds(model_cls: NetClass, expected: dict[str, LayerKind]) -> None:
    assert {layer.fqn: layer.kind for layer in graph_of(model_cls).layers} == expected


def test_kind_of_unsupported_module() -> None:
    with pytest.raises(LayerDiscoveryError, match="layer kind: ReLU is not quantizable; supported: Conv1d"):
        layer_kind(nn.ReLU())


def test_shapes_and_params() -> None:
    graph = graph_of(ConvTransposeNet)
    up = graph.by_fqn("up")
    assert up.input_shape == (1, 4, 5, 5)
    assert up.output_shape == (1, 3, 11, 11)
    assert up.input_numel == 100 and up.output_numel == 363
    assert up.num_params == 4 * 3 * 9 + 3


def test_discovery_restores_training_flag_and_does_not_record_grad() -> None:
    model = ConvThenLinearNet().train()
    discover_layers(model, ConvThenLinearNet.example_inputs())
    assert model.training and model.conv.training
    model = model.eval()  # the same model (eval returns it); rebinding drops mypy's narrowing of .training
    discover_layers(model, ConvThenLinearNet.example_inputs())
    assert not model.training
    assert not model.conv._forward_hooks  # hooks removed


def test_tuple_and_bare_tensor_inputs_agree() -> None:
    model = Conv1dNet()
    (x,) = Conv1dNet.example_inputs()
    assert discover_layers(model, x) == discover_layers(model, (x,))


def test_graph_json_round_trip_and_malformed_rows() -> None:
    graph = discover_layers(ResidualNet(), ResidualNet.example_inputs())
    assert LayerGraph.from_dicts(graph.as_dicts()) == graph
    rows = graph.as_dicts()
    with pytest.raises(LayerDiscoveryError, match=r"layers\[1\]: malformed"):
        LayerGraph.from_dicts([rows[0], {**rows[1], "kind": "lstm"}])
    with pytest.raises(LayerDiscoveryError, match="each fqn may appear once"):
        LayerGraph.from_dicts([rows[0], rows[0]])
    with pytest.raises(LayerDiscoveryError, match="a non-empty list"):
        LayerGraph.from_dicts({"fqn": "x"})

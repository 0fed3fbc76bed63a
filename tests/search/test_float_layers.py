"""Nothing left out silently: compute mixq cannot quantize is listed with its reason and MACs, in the
graph, the qconfig file, the search result and the CLI lines, and counted in the cost at float precision."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from search.cli import float_layer_lines
from search.profiles import load_profile
from search.quant.attention import prepare_model
from search.quant.cost import float_costs, float_format, model_costs
from search.quant.formats import parse_format
from search.quant.layers import FloatKind, discover_layers
from search.quant.qconfig import SCHEMA_VERSION, build_qconfig, load_qconfig
from search.spec import CostObjective


class Custom(nn.Module):
    """A parameter applied with F.linear in the model's own forward, an embedding, an activation product."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.w = nn.Parameter(torch.randn(4, 8))
        self.norm = nn.LayerNorm(4)  # affine: not a MAC layer, not listed
        self.fc = nn.Linear(4, 2)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens)  # (B, T, 8)
        y = self.norm(F.linear(x, self.w))  # (B, T, 4): 4*8 MACs per token
        a = y @ y.transpose(1, 2)  # (B, T, T): activation x activation, 4 MACs each
        return self.fc((a @ y).mean(1))


def _tokens() -> Tensor:
    return torch.randint(0, 10, (1, 5), generator=torch.Generator().manual_seed(0))


def test_custom_parameter_embedding_and_matmul_are_listed_with_macs() -> None:
    graph = discover_layers(Custom(), (_tokens(),))
    assert graph.fqns == ("fc",)
    by_kind = {f.kind: f for f in graph.float_layers}
    assert set(by_kind) == {FloatKind.EMBEDDING, FloatKind.FUNCTIONAL_WEIGHT, FloatKind.MATMUL}
    fw = by_kind[FloatKind.FUNCTIONAL_WEIGHT]
    assert fw.fqn == "" and fw.macs == 5 * 4 * 8 and fw.num_params == 32
    assert "parameter(s) w" in fw.reason and "Linear" in fw.reason
    assert by_kind[FloatKind.MATMUL].macs == 5 * 5 * 4 + 5 * 4 * 5  # y y^T, then a y
    emb = by_kind[FloatKind.EMBEDDING]
    assert emb.fqn == "embed" and emb.macs == 0 and emb.num_params == 80 and "lookup table" in emb.reason


def test_meta_device_sees_the_same() -> None:
    with torch.device("meta"):
        graph = discover_layers(Custom(), (torch.zeros(1, 5, dtype=torch.long),))
    assert {f.kind: f.macs for f in graph.float_layers}[FloatKind.FUNCTIONAL_WEIGHT] == 5 * 4 * 8


def _encoder() -> nn.Module:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True)
    return nn.Sequential(nn.TransformerEncoder(layer, 1, enable_nested_tensor=False), nn.Linear(16, 3))


def test_unswapped_attention_is_listed_swapped_attention_matmuls_are_float() -> None:
    x = torch.randn(1, 6, 16)
    model = _encoder()
    raw = discover_layers(model, (x,))
    (mha,) = raw.float_layers
    assert mha.kind is FloatKind.MULTIHEAD_ATTENTION and "prepare_model" in mha.reason
    e, length = 16, 6
    assert mha.macs == 4 * length * e * e + 2 * length * length * e
    prepare_model(model)
    graph = discover_layers(model, (x,))
    (att,) = graph.float_layers
    assert att.kind is FloatKind.ATTENTION_MATMUL and att.fqn == "0.layers.0.self_attn"
    assert att.macs == 2 * length * length * e and att.num_params == 0
    # the projections are layers now: the MACs moved from float into searchable layers
    assert sum(la.macs for la in graph.layers) - sum(la.macs for la in raw.layers) == 4 * length * e * e


def test_costs_count_float_compute_at_float_precision() -> None:
    x = torch.randn(1, 6, 16)
    model = _encoder()
    prepare_model(model)
    graph = discover_layers(model, (x,))
    generic, npu = load_profile("generic"), load_profile("npu-int4")
    assert float_format(generic).name == "fp32" and float_format(npu).name == "fp16"
    objectives = (CostObjective.BITOPS, CostObjective.WEIGHT_BYTES)
    fixed = float_costs(objectives, generic, graph)
    att = graph.float_layers[0].macs
    assert fixed["bitops"] == att * 32 * 32 and fixed["weight_bytes"] == 0
    int8 = {f: parse_format("int8") for f in graph.fqns}
    costs = model_costs(objectives, generic, graph, int8)
    layer_bitops = sum(la.macs * 64 for la in graph.layers)
    assert costs["bitops"] == layer_bitops + att * 1024
    assert float_costs((CostObjective.BITOPS,), npu, graph)["bitops"] == att * 16 * 16


def test_qconfig_lists_float_layers_and_reads_version_1() -> None:
    graph = discover_layers(Custom(), (_tokens(),))
    cfg = build_qconfig(None, graph, {"fc": parse_format("int8")})
    assert cfg.schema_version == SCHEMA_VERSION == 2
    data = cfg.model_dump(mode="json")
    kinds = sorted(f["kind"] for f in data["float_layers"])
    assert kinds == ["embedding", "functional_weight", "matmul"]
    assert all({"fqn", "kind", "reason", "macs", "num_params"} <= set(f) for f in data["float_layers"])
    again = load_qconfig(data)
    assert [f.kind for f in again.float_layers] == [f.kind for f in cfg.float_layers]
    old = dict(data, schema_version=1)
    del old["float_layers"]
    assert load_qconfig(old).float_layers == []


def test_cli_lines_name_each_float_part() -> None:
    graph = discover_layers(Custom(), (_tokens(),))
    lines = float_layer_lines(graph)
    assert lines[0].startswith("3 part(s) of the model stay float")
    assert any("(model) [functional_weight] 160 MACs" in line for line in lines)
    assert any(line.strip().startswith("embed [embedding]") for line in lines)
    assert float_layer_lines(discover_layers(nn.Sequential(nn.Linear(2, 2)), (torch.zeros(1, 2),))) == []

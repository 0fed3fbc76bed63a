"""nn.MultiheadAttention swapped for Linears: same numbers, every projection a layer, fused paths not taken."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from search.quant.attention import LinearMultiheadAttention, QuantizationError, prepare_model
from search.quant.export_onnx import export_onnx, verify_onnx
from search.quant.formats import parse_format
from search.quant.layers import discover_layers
from search.quant.qat import FakeQuantLinear, calibrate, quantize_model
from search.quant.qconfig import apply_qconfig, build_qconfig

TOL = 2e-6


def _mha(batch_first: bool, **kw: object) -> nn.MultiheadAttention:
    torch.manual_seed(0)
    m = nn.MultiheadAttention(16, 4, batch_first=batch_first, **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m.eval()


def _inputs(batch_first: bool, n: int = 2, length: int = 5, e: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    shape = (n, length, e) if batch_first else (length, n, e)
    return torch.randn(shape, generator=g)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("masks", ["none", "causal", "causal_hint", "padding", "both", "bool_attn"])
def test_same_outputs_as_torch(batch_first: bool, need_weights: bool, masks: str) -> None:
    ref = _mha(batch_first)
    twin = LinearMultiheadAttention.from_float(ref).eval()
    x = _inputs(batch_first)
    length = 5
    kw: dict[str, object] = {"need_weights": need_weights}
    if masks in ("causal", "both", "causal_hint"):
        kw["attn_mask"] = nn.Transformer.generate_square_subsequent_mask(length)
    if masks == "causal_hint":
        kw["is_causal"] = True
    if masks == "bool_attn":
        kw["attn_mask"] = torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)
    if masks in ("padding", "both"):
        pad = torch.zeros(2, length, dtype=torch.bool)
        pad[1, -2:] = True
        kw["key_padding_mask"] = pad
    with torch.no_grad():
        want, want_w = ref(x, x, x, **kw)
        got, got_w = twin(x, x, x, **kw)
    assert (got - want).abs().max().item() < TOL
    if need_weights:
        assert got_w is not None and want_w is not None
        assert (got_w - want_w).abs().max().item() < TOL
    else:
        assert got_w is None and want_w is None


def test_cross_attention_kdim_vdim_and_unbatched() -> None:
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(8, 2, kdim=6, vdim=4).eval()
    twin = LinearMultiheadAttention.from_float(ref).eval()
    q, k, v = torch.randn(3, 2, 8), torch.randn(7, 2, 6), torch.randn(7, 2, 4)
    with torch.no_grad():
        assert (twin(q, k, v)[0] - ref(q, k, v)[0]).abs().max() < TOL
        assert (twin(q[:, 0], k[:, 0], v[:, 0])[0] - ref(q[:, 0], k[:, 0], v[:, 0])[0]).abs().max() < TOL
    assert twin.k_proj.in_features == 6 and twin.v_proj.in_features == 4


def test_twice_differentiable() -> None:
    """The Hessian proxy differentiates twice; torch's fused CPU attention kernel cannot."""
    twin = LinearMultiheadAttention.from_float(_mha(True)).train()
    x = _inputs(True).requires_grad_(True)
    out = twin(x, x, x, need_weights=False)[0].pow(2).sum()
    (g,) = torch.autograd.grad(out, twin.q_proj.weight, create_graph=True)
    g.sum().backward()
    assert twin.q_proj.weight.grad is not None


def test_unsupported_options_are_refused_by_name() -> None:
    wrapper = nn.Sequential(nn.MultiheadAttention(8, 2, add_bias_kv=True))
    with pytest.raises(QuantizationError, match=r"0: nn.MultiheadAttention with add_bias_kv=True"):
        prepare_model(wrapper)
    with pytest.raises(QuantizationError, match="add_zero_attn"):
        prepare_model(nn.Sequential(nn.MultiheadAttention(8, 2, add_zero_attn=True)))


class _Encoder(nn.Module):
    def __init__(self, norm_first: bool = False) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0, batch_first=True,
                                           norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.encoder(x, src_key_padding_mask=pad))


def test_encoder_fast_path_gives_way_and_numbers_agree() -> None:
    """In eval mode under no_grad the stock TransformerEncoderLayer takes the fused
    torch._transformer_encoder_layer_fwd; the swapped one must not (it would read packed weights)
    and must give the same outputs."""
    torch.manual_seed(0)
    ref = _Encoder().eval()
    model = _Encoder().eval()
    model.load_state_dict(ref.state_dict())
    swapped = prepare_model(model)
    assert swapped == ["encoder.layers.0.self_attn", "encoder.layers.1.self_attn"]
    assert prepare_model(model) == []  # idempotent
    x = torch.randn(2, 5, 16)
    pad = torch.zeros(2, 5, dtype=torch.bool)
    pad[1, -2:] = True
    calls: list[str] = []
    real = torch._transformer_encoder_layer_fwd

    def spy(*args: object, **kw: object) -> torch.Tensor:
        calls.append("fused")
        return real(*args, **kw)  # type: ignore[arg-type]

    torch._transformer_encoder_layer_fwd = spy
    try:
        with torch.no_grad():
            want = ref(x)
            assert calls, "the stock encoder should take its fused path here (test premise)"
            calls.clear()
            got = model(x)
            assert not calls
            assert (got - want).abs().max() < 1e-5
            # padding: the stock encoder goes through nested tensors (zeros at padded positions)
            want_p, got_p = ref(x, pad), model(x, pad)
    finally:
        torch._transformer_encoder_layer_fwd = real
    assert (got_p[0] - want_p[0]).abs().max() < 1e-5
    assert (got_p[1, :3] - want_p[1, :3]).abs().max() < 1e-5
    # training mode (no fast path anywhere): identical with and without padding
    ref.train(), model.train()
    assert (model(x, pad) - ref(x, pad)).abs().max() < 1e-5


def test_projections_are_layers_and_quantize() -> None:
    torch.manual_seed(0)
    model = _Encoder()
    x = torch.randn(1, 5, 16)
    before = discover_layers(model, (x,))
    assert not any("proj" in f for f in before.fqns)  # nn.MultiheadAttention hides them
    prepare_model(model)
    graph = discover_layers(model, (x,))
    for i in range(2):
        for p in ("q_proj", "k_proj", "v_proj", "out_proj"):
            assert f"encoder.layers.{i}.self_attn.{p}" in graph.fqns
    assert len(graph.layers) == 2 * 6 + 1
    qmap = {f: parse_format("int8") for f in graph.fqns}
    quantize_model(model, qmap, (x,), graph=graph)
    assert isinstance(model.get_submodule("encoder.layers.0.self_attn.q_proj"), FakeQuantLinear)
    model.train()
    model(torch.randn(2, 5, 16)).sum().backward()
    assert model.get_submodule("encoder.layers.0.self_attn.k_proj").weight.grad is not None


def test_apply_qconfig_to_a_fresh_unswapped_model_and_export(tmp_path: Path) -> None:
    """The user's flow: the file from a search, applied to a fresh copy of their own (stock) model."""
    torch.manual_seed(0)
    searched = _Encoder()
    prepare_model(searched)
    x = torch.randn(1, 5, 16)
    graph = discover_layers(searched, (x,))
    cfg = build_qconfig(None, graph, {f: parse_format("int8") for f in graph.fqns})
    fresh = _Encoder().eval()
    apply_qconfig(fresh, cfg.model_dump(mode="json"), (x,))
    assert isinstance(fresh.get_submodule("encoder.layers.1.self_attn.v_proj"), FakeQuantLinear)
    calibrate(fresh, [torch.randn(4, 5, 16)])
    path = export_onnx(fresh, (x,), tmp_path / "enc.onnx", dynamic_spatial=False)
    with torch.no_grad():
        scale = float(fresh(x).abs().max())
    assert verify_onnx(fresh, (x,), path) <= 0.02 * scale

"""``nn.MultiheadAttention`` made of ``nn.Linear``s, so its projections are searchable layers.

``nn.MultiheadAttention`` applies its projections functionally (``in_proj_weight``, ``out_proj.weight``
go straight into ``F.multi_head_attention_forward``), so no module call ever sees them: layer discovery
would find none of them and the fake-quant swap could not reach them.  :func:`prepare_model` swaps each
one, in place, for a :class:`LinearMultiheadAttention`, as torch.ao's quantizable
``MultiheadAttention`` does: ``q_proj``, ``k_proj``, ``v_proj`` (split from ``in_proj_weight``, or the
separate ``q/k/v_proj_weight`` when ``kdim``/``vdim`` differ) and ``out_proj``, each an ``nn.Linear``
sharing nothing with the original but holding its values.  The forward pass is
``F.multi_head_attention_forward``'s, step for step, with the four projections called as modules and
the attention as explicit matmuls (where torch calls ``scaled_dot_product_attention`` too); the outputs
agree with the original to float rounding (``tests/search/test_attention.py``).

What the swap changes and what it refuses:

* The attention matmuls (``Q K^T`` and ``A V``, activation x activation) stay float; layer discovery
  lists them as float compute with their MACs (:attr:`search.quant.layers.LayerGraph.float_layers`).
* ``_qkv_same_embed_dim`` is False and ``in_proj_weight``/``in_proj_bias`` are None (the projections
  are no longer packed): ``nn.TransformerEncoderLayer``'s fused inference path
  (``torch._transformer_encoder_layer_fwd``, which would read the packed weights and bypass the Linears)
  is then not taken, and a ``nn.TransformerEncoder`` holding swapped layers has its nested-tensor path
  turned off (``use_nested_tensor = False``).  One visible difference follows: with a
  ``src_key_padding_mask`` in eval mode the stock encoder returns zeros at padded positions (nested
  tensors), the swapped one the computed values there (as the stock encoder does in training mode);
  the unpadded positions agree.
* ``add_bias_kv`` and ``add_zero_attn`` are refused with a :class:`QuantizationError` naming the module.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from search.errors import QuantizationError as QuantizationError


class LinearMultiheadAttention(nn.Module):
    """A drop-in for ``nn.MultiheadAttention`` (same forward signature and outputs) whose projections
    are ``nn.Linear`` modules ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``."""

    # read by nn.TransformerEncoderLayer / nn.TransformerEncoder before they choose a fused path
    _qkv_same_embed_dim = False
    in_proj_weight: Tensor | None = None
    in_proj_bias: Tensor | None = None

    def __init__(
        self, embed_dim: int, num_heads: int, *, kdim: int | None = None, vdim: int | None = None, bias: bool = True,
        dropout: float = 0.0, batch_first: bool = False,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise QuantizationError(f"num_heads: embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.batch_first = batch_first
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(self.kdim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(self.vdim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    @classmethod
    def from_float(cls, mha: nn.MultiheadAttention, fqn: str = "") -> LinearMultiheadAttention:
        """The Linear-made twin of ``mha`` with the same weights (copied), device, dtype and mode."""
        where = fqn or type(mha).__name__
        if mha.bias_k is not None or mha.bias_v is not None:
            raise QuantizationError(f"{where}: nn.MultiheadAttention with add_bias_kv=True is not supported")
        if mha.add_zero_attn:
            raise QuantizationError(f"{where}: nn.MultiheadAttention with add_zero_attn=True is not supported")
        bias = mha.in_proj_bias is not None
        with torch.device("meta"):  # every parameter is replaced below: no init, no draw from the global RNG
            new = cls(mha.embed_dim, mha.num_heads, kdim=mha.kdim, vdim=mha.vdim, bias=bias, dropout=mha.dropout,
                      batch_first=mha.batch_first)
        e = mha.embed_dim
        with torch.no_grad():
            if mha._qkv_same_embed_dim:
                w = cast(Tensor, mha.in_proj_weight)
                weights = (w[:e], w[e:2 * e], w[2 * e:])
            else:
                weights = (cast(Tensor, mha.q_proj_weight), cast(Tensor, mha.k_proj_weight),
                           cast(Tensor, mha.v_proj_weight))
            for lin, wt in zip((new.q_proj, new.k_proj, new.v_proj), weights, strict=True):
                lin.weight = nn.Parameter(wt.detach().clone(), requires_grad=wt.requires_grad)
            if bias:
                b = cast(Tensor, mha.in_proj_bias)
                for lin, bt in zip((new.q_proj, new.k_proj, new.v_proj), (b[:e], b[e:2 * e], b[2 * e:]), strict=True):
                    lin.bias = nn.Parameter(bt.detach().clone(), requires_grad=b.requires_grad)
            new.out_proj.weight = nn.Parameter(mha.out_proj.weight.detach().clone())
            if mha.out_proj.bias is not None:
                new.out_proj.bias = nn.Parameter(mha.out_proj.bias.detach().clone())
        new.train(mha.training)
        return new

    def forward(
        self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
        need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        # the steps and their order are F.multi_head_attention_forward's (torch 2.x), projections aside
        is_batched = query.dim() == 3
        if self.batch_first and is_batched:
            query, key, value = (t.transpose(1, 0) for t in (query, key, value))
        if not is_batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        tgt_len, bsz, embed_dim = query.shape
        if embed_dim != self.embed_dim:
            raise ValueError(f"query: expected embedding dimension {self.embed_dim}, got {embed_dim}")
        key_padding_mask = F._canonical_mask(
            mask=key_padding_mask, mask_name="key_padding_mask", other_type=F._none_or_dtype(attn_mask),
            other_name="attn_mask", target_type=query.dtype,
        )
        if is_causal and attn_mask is None:
            raise RuntimeError("attn_mask: needed with the is_causal hint (as nn.MultiheadAttention)")
        if is_causal and key_padding_mask is None and not need_weights:
            attn_mask = None
        else:
            attn_mask = F._canonical_mask(
                mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="", target_type=query.dtype,
                check_other=False,
            )
            if key_padding_mask is not None:
                is_causal = False

        h, hd = self.num_heads, self.head_dim
        q = self.q_proj(query)
        k = self.k_proj(key)
        v = self.v_proj(value)
        if attn_mask is not None and attn_mask.dim() == 2:
            attn_mask = attn_mask.unsqueeze(0)
        q = q.view(tgt_len, bsz * h, hd).transpose(0, 1)
        k = k.view(k.shape[0], bsz * h, hd).transpose(0, 1)
        v = v.view(v.shape[0], bsz * h, hd).transpose(0, 1)
        src_len = k.size(1)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.view(bsz, 1, 1, src_len).expand(-1, h, -1, -1).reshape(
                bsz * h, 1, src_len)
            attn_mask = key_padding_mask if attn_mask is None else attn_mask + key_padding_mask
        dropout_p = self.dropout if self.training else 0.0

        if is_causal and attn_mask is None:  # the hint without a mask (need_weights=False): build it
            causal = torch.ones(tgt_len, src_len, dtype=torch.bool, device=q.device).tril()
            attn_mask = torch.zeros(1, tgt_len, src_len, dtype=q.dtype, device=q.device).masked_fill(
                ~causal, float("-inf"))
        # explicit matmuls, also where torch calls scaled_dot_product_attention (need_weights=False): the
        # same numbers to float rounding, differentiable twice (the Hessian proxy; the fused CPU kernel's
        # backward is not), and plain MatMul/Softmax in an exported graph
        q_scaled = q * math.sqrt(1.0 / float(hd))
        if attn_mask is not None:
            weights = torch.baddbmm(attn_mask, q_scaled, k.transpose(-2, -1))
        else:
            weights = torch.bmm(q_scaled, k.transpose(-2, -1))
        weights = F.softmax(weights, dim=-1)
        if dropout_p > 0.0:
            weights = F.dropout(weights, p=dropout_p)
        out = torch.bmm(weights, v)
        out = out.transpose(0, 1).reshape(tgt_len * bsz, embed_dim)
        out = self.out_proj(out).view(tgt_len, bsz, embed_dim)
        attn_weights: Tensor | None = None
        if need_weights:
            attn_weights = weights.view(bsz, h, tgt_len, src_len)
            if average_attn_weights:
                attn_weights = attn_weights.mean(dim=1)
        if not is_batched:
            out = out.squeeze(1)
            if attn_weights is not None:
                attn_weights = attn_weights.squeeze(0)
        if self.batch_first and is_batched:
            out = out.transpose(1, 0)
        return out, attn_weights

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}"


def _set_child(root: nn.Module, fqn: str, module: nn.Module) -> None:
    parent_name, _, child = fqn.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def prepare_model(model: nn.Module) -> list[str]:
    """Swap every ``nn.MultiheadAttention`` in ``model`` for a :class:`LinearMultiheadAttention`, in
    place (idempotent); returns the swapped modules' fqns.  A root that is itself an
    ``nn.MultiheadAttention`` cannot be swapped in place and is refused."""
    if isinstance(model, nn.MultiheadAttention):
        raise QuantizationError(
            "model: the root module is an nn.MultiheadAttention; wrap it in a module so it can be swapped")
    swapped = []
    for fqn, module in list(model.named_modules()):
        if type(module) is nn.MultiheadAttention or isinstance(module, nn.MultiheadAttention):
            _set_child(model, fqn, LinearMultiheadAttention.from_float(module, fqn))
            swapped.append(fqn)
    if swapped:
        for module in model.modules():
            if isinstance(module, nn.TransformerEncoder):
                module.use_nested_tensor = False  # its fused path reads the packed in_proj weights
    return swapped

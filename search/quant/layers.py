"""Layer discovery: the quantizable layers of a model, in the order they execute.

"First" and "last" mean first and last *executed*, which is what decides what sees the raw input
data and what produces the output.  Definition order in ``__init__`` says nothing about that, so we
run the model once on its example inputs with forward hooks.

Rules (documented, never silent):

* A module called more than once in one forward pass (a shared layer) is an error: it would need two
  activation quantizers but has one set of weights, and its position is ambiguous.
* A quantizable module that never runs on the example inputs is not a layer of the search; it is
  listed in :attr:`LayerGraph.unused` and a qconfig map that names it is rejected.
* Residual branches are fine: order is the order of the calls.
* Nothing that multiplies is left out silently: float compute the search cannot quantize is listed in
  :attr:`LayerGraph.float_layers` with the reason and its MACs, and the cost models count it at the
  float precision (:mod:`search.quant.cost`).  Found by watching the forward pass's matmul and conv
  kernels (a ``TorchDispatchMode``), attributed to the innermost module running them, skipping what
  runs inside a quantizable layer:

  ========================= =====================================================================
  ``functional_weight``     a module's own forward applies a parameter with a matmul/conv
                            (``F.linear(x, self.w)``, ``x @ self.w``): mixq quantizes module layers only
  ``attention_matmul``      activation x activation inside attention (``Q K^T``, ``A V``)
  ``matmul``                another activation x activation product
  ``embedding``             an ``nn.Embedding``/``nn.EmbeddingBag`` lookup table (no MACs; float weights)
  ``multihead_attention``   an ``nn.MultiheadAttention`` not yet swapped for Linears
                            (:func:`search.quant.attention.prepare_model` does it; every workload is)
  ========================= =====================================================================

  Norm and affine parameters (BatchNorm, LayerNorm, GroupNorm weights and biases, PReLU slopes, a
  learned scale or position embedding added elementwise) are not MAC layers: they are not listed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from search.errors import LayerDiscoveryError as LayerDiscoveryError


class LayerKind(StrEnum):
    CONV1D = "conv1d"
    CONV2D = "conv2d"
    CONV2D_DEPTHWISE = "conv2d_depthwise"
    CONV2D_GROUPED = "conv2d_grouped"
    CONV_TRANSPOSE2D = "conv_transpose2d"
    LINEAR = "linear"
    CONV3D = "conv3d"
    CONV_TRANSPOSE1D = "conv_transpose1d"
    CONV_TRANSPOSE3D = "conv_transpose3d"


QUANTIZABLE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear,
)



@dataclass(frozen=True)
class LayerInfo:
    fqn: str
    kind: LayerKind
    index: int  # position in execution order, 0-based
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    num_params: int
    macs: int  # multiply-accumulates for one forward pass of the example inputs

    @property
    def input_numel(self) -> int:
        n = 1
        for d in self.input_shape:
            n *= d
        return n

    @property
    def output_numel(self) -> int:
        n = 1
        for d in self.output_shape:
            n *= d
        return n

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (:meth:`LayerGraph.from_dicts` reads it back)."""
        return {
            "fqn": self.fqn, "kind": self.kind.value, "index": self.index, "input_shape": list(self.input_shape),
            "output_shape": list(self.output_shape), "num_params": self.num_params, "macs": self.macs,
        }


class FloatKind(StrEnum):
    FUNCTIONAL_WEIGHT = "functional_weight"
    ATTENTION_MATMUL = "attention_matmul"
    MATMUL = "matmul"
    EMBEDDING = "embedding"
    MULTIHEAD_ATTENTION = "multihead_attention"


@dataclass(frozen=True)
class FloatLayer:
    """Compute that stays float: what it is, why, and what it costs (one forward of the example inputs)."""

    fqn: str  # the module running it ("" for the root model's own forward)
    kind: FloatKind
    reason: str
    macs: int
    num_params: int  # the float weights it reads (counted in weight_bytes)
    input_shape: tuple[int, ...] = ()

    @property
    def input_numel(self) -> int:
        return math.prod(self.input_shape) if self.input_shape else 0

    def as_dict(self) -> dict[str, Any]:
        return {"fqn": self.fqn, "kind": self.kind.value, "reason": self.reason, "macs": self.macs,
                "num_params": self.num_params}


@dataclass(frozen=True)
class LayerGraph:
    layers: tuple[LayerInfo, ...]
    unused: tuple[str, ...] = field(default=())
    float_layers: tuple[FloatLayer, ...] = field(default=())
    # the model returns one tensor (not a tuple, list or dict): only then is its output quantized
    output_is_tensor: bool = True

    @property
    def first(self) -> LayerInfo:
        return self.layers[0]

    @property
    def last(self) -> LayerInfo:
        return self.layers[-1]

    @property
    def fqns(self) -> tuple[str, ...]:
        return tuple(layer.fqn for layer in self.layers)

    def as_dicts(self) -> list[dict[str, Any]]:
        """The layers' JSON form, execution order (the unused modules are not kept)."""
        return [layer.as_dict() for layer in self.layers]

    @classmethod
    def from_dicts(cls, rows: Any) -> LayerGraph:
        """The graph :meth:`as_dicts` wrote (stored JSON, so checked: a :class:`LayerDiscoveryError` names
        what is malformed)."""
        if not isinstance(rows, list) or not rows:
            raise LayerDiscoveryError("layers: a non-empty list of layers")
        layers = []
        for i, row in enumerate(rows):
            try:
                layers.append(LayerInfo(
                    fqn=str(row["fqn"]), kind=LayerKind(row["kind"]), index=i,
                    input_shape=tuple(int(d) for d in row["input_shape"]),
                    output_shape=tuple(int(d) for d in row["output_shape"]),
                    num_params=int(row["num_params"]), macs=int(row["macs"]),
                ))
            except (KeyError, TypeError, ValueError) as exc:
                raise LayerDiscoveryError(f"layers[{i}]: malformed ({type(exc).__name__}: {exc})") from None
        if len({layer.fqn for layer in layers}) != len(layers):
            raise LayerDiscoveryError("layers: each fqn may appear once")
        return cls(layers=tuple(layers))

    def by_fqn(self, fqn: str) -> LayerInfo:
        for layer in self.layers:
            if layer.fqn == fqn:
                return layer
        raise KeyError(fqn)


def layer_kind(module: nn.Module) -> LayerKind:
    if isinstance(module, nn.ConvTranspose1d):
        return LayerKind.CONV_TRANSPOSE1D
    if isinstance(module, nn.ConvTranspose2d):
        return LayerKind.CONV_TRANSPOSE2D
    if isinstance(module, nn.ConvTranspose3d):
        return LayerKind.CONV_TRANSPOSE3D
    if isinstance(module, nn.Conv3d):
        return LayerKind.CONV3D
    if isinstance(module, nn.Conv2d):
        if module.groups == 1:
            return LayerKind.CONV2D
        # depthwise (PyTorch's definition): groups == in_channels, out_channels = K * in_channels
        if module.groups == module.in_channels and module.out_channels % module.in_channels == 0:
            return LayerKind.CONV2D_DEPTHWISE
        return LayerKind.CONV2D_GROUPED
    if isinstance(module, nn.Conv1d):
        return LayerKind.CONV1D
    if isinstance(module, nn.Linear):
        return LayerKind.LINEAR
    raise LayerDiscoveryError(
        f"layer kind: {type(module).__name__} is not quantizable; supported: "
        + ", ".join(t.__name__ for t in QUANTIZABLE_TYPES)
    )


def _macs(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    if isinstance(module, nn.Linear):
        # every output element needs in_features MACs
        return out.numel() * module.in_features
    k = 1
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        # each input element is scattered into out_channels/groups * prod(kernel) outputs
        for s in module.kernel_size:
            k *= s
        return inp.numel() * (module.out_channels // module.groups) * k
    assert isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
    for s in module.kernel_size:
        k *= s
    return out.numel() * (module.in_channels // module.groups) * k


def _as_tuple(example_inputs: Any) -> tuple[Any, ...]:
    return example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)


_MATMUL_OPS = {"mm", "addmm", "bmm", "baddbmm", "mv", "addmv", "dot", "vdot", "convolution", "_convolution"}


def _op_macs(name: str, args: tuple[Any, ...], out: Any) -> tuple[int, list[Tensor]]:
    """MACs of one aten kernel call and its two multiplied operands; (0, []) for anything else."""
    def shape(t: Any) -> tuple[int, ...]:
        return tuple(t.shape) if isinstance(t, Tensor) else ()

    if name in ("mm", "bmm"):
        a, b = args[0], args[1]
    elif name in ("addmm", "baddbmm", "addmv"):
        a, b = args[1], args[2]
    elif name in ("mv", "dot", "vdot"):
        a, b = args[0], args[1]
    elif name in ("convolution", "_convolution"):
        x, w, transposed = args[0], args[1], bool(args[6])
        k = math.prod(shape(w)[2:])
        if transposed:  # weight (C_in, C_out/groups, k...): each input element scattered
            return x.numel() * shape(w)[1] * k, [x, w]
        return out.numel() * shape(w)[1] * k, [x, w]
    elif name.startswith("_scaled_dot_product"):  # q (..., L, E), k (..., S, E), v (..., S, Ev)
        q, k_, v = args[0], args[1], args[2]
        batch = math.prod(shape(q)[:-2])
        length, e, src = shape(q)[-2], shape(q)[-1], shape(k_)[-2]
        return batch * length * src * (e + shape(v)[-1]), [q, k_]
    else:
        return 0, []
    # mm/bmm/mv/dot: out elements x the contracted size
    contracted = shape(a)[-1] if shape(a) else 1
    return out.numel() * contracted, [a, b]


class _FloatCompute(TorchDispatchMode):
    """Records the MACs of matmul/conv kernels that run outside a quantizable layer, per innermost module."""

    def __init__(self, stack: list[str], inside_layer: list[int], params: dict[int, str],
                 param_ptrs: dict[int, str]) -> None:
        super().__init__()
        self.stack = stack
        self.inside_layer = inside_layer
        self.params = params  # id(parameter) -> its fqn
        self.param_ptrs = param_ptrs  # data_ptr -> fqn (real devices; meta tensors have none)
        # (module fqn, "weight" | "matmul") -> [macs, parameter fqns, first input shape, ops]
        self.sites: dict[tuple[str, str], list[Any]] = {}

    def _param_of(self, t: Any) -> str | None:
        if not isinstance(t, Tensor):
            return None
        base = t._base if t._base is not None else t
        if id(base) in self.params:
            return self.params[id(base)]
        if t.device.type != "meta":
            ptr = t.untyped_storage().data_ptr()
            return self.param_ptrs.get(ptr) if ptr else None
        return None

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if self.inside_layer[0] or not self.stack:
            return out
        name = func.overloadpacket.__name__
        if name not in _MATMUL_OPS and not name.startswith("_scaled_dot_product"):
            return out
        primary = out[0] if isinstance(out, (tuple, list)) else out
        macs, operands = _op_macs(name, args, primary)
        if not macs:
            return out
        owners = [p for p in (self._param_of(t) for t in operands) if p is not None]
        key = (self.stack[-1], "weight" if owners else "matmul")
        site = self.sites.setdefault(key, [0, set(), tuple(operands[0].shape), set()])
        site[0] += macs
        site[1].update(owners)
        site[3].add(name)
        return out


def _mha_macs(module: nn.MultiheadAttention, args: tuple[Any, ...]) -> int:
    q, k = args[0], args[1]
    batch_first = module.batch_first and q.dim() == 3
    length = q.shape[1] if batch_first else q.shape[0]
    src = k.shape[1] if batch_first else k.shape[0]
    n = (q.shape[0] if batch_first else q.shape[1]) if q.dim() == 3 else 1
    e = module.embed_dim
    return n * (length * e * e + src * module.kdim * e + src * module.vdim * e + length * e * e + 2 * length * src * e)


def _float_layers(model: nn.Module, sites: dict[tuple[str, str], list[Any]], embeddings: dict[str, tuple[int, ...]],
                  mha: dict[str, tuple[int, tuple[int, ...]]]) -> tuple[FloatLayer, ...]:
    from search.quant.attention import LinearMultiheadAttention

    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    found: list[FloatLayer] = []
    for fqn, shape in embeddings.items():
        m = modules[fqn]
        found.append(FloatLayer(
            fqn=fqn, kind=FloatKind.EMBEDDING, macs=0, num_params=sum(p.numel() for p in m.parameters()),
            input_shape=shape,
            reason=f"{type(m).__name__}: a lookup table, no multiply-accumulate; its weights stay float"))
    for fqn, (macs, shape) in mha.items():
        m = modules[fqn]
        found.append(FloatLayer(
            fqn=fqn, kind=FloatKind.MULTIHEAD_ATTENTION, macs=macs,
            num_params=sum(p.numel() for p in m.parameters()), input_shape=shape,
            reason="nn.MultiheadAttention applies its projections functionally; search.prepare_model swaps it "
                   "for Linears (a Workload's model is swapped when it is built)"))
    for (fqn, what), (macs, owners, shape, ops) in sites.items():
        m = modules[fqn]
        where = f"{type(m).__name__}.forward" if fqn else f"the model's own forward ({type(m).__name__})"
        if what == "weight":
            names = sorted(owners)
            found.append(FloatLayer(
                fqn=fqn, kind=FloatKind.FUNCTIONAL_WEIGHT, macs=macs,
                num_params=sum(params[n].numel() for n in names if n in params), input_shape=shape,
                reason=f"{where} applies parameter(s) {', '.join(names)} itself ({', '.join(sorted(ops))}); "
                       "mixq quantizes only " + ", ".join(t.__name__ for t in QUANTIZABLE_TYPES) + " modules"))
        else:
            attention = isinstance(m, LinearMultiheadAttention) or any(
                op.startswith("_scaled_dot_product") for op in ops)
            found.append(FloatLayer(
                fqn=fqn, kind=FloatKind.ATTENTION_MATMUL if attention else FloatKind.MATMUL, macs=macs, num_params=0,
                input_shape=shape,
                reason=("attention matmuls Q·K^T and A·V (activation x activation): not quantized, float"
                        if attention else
                        f"activation x activation matmul in {where} ({', '.join(sorted(ops))}): not quantized, float")))
    return tuple(found)


def discover_layers(model: nn.Module, example_inputs: Any) -> LayerGraph:
    """List the quantizable layers of ``model`` in execution order.

    ``example_inputs`` is a tensor or a tuple of positional inputs.  The model is run once under
    ``torch.no_grad()`` in eval mode; its training flag is restored afterwards.
    """
    calls: list[tuple[str, nn.Module, tuple[int, ...], tuple[int, ...], int]] = []
    seen: dict[str, int] = {}
    candidates = [(fqn, m) for fqn, m in model.named_modules() if isinstance(m, QUANTIZABLE_TYPES)]
    candidate_ids = {id(m) for _, m in candidates}
    handles = []
    stack: list[str] = []
    inside_layer = [0]  # depth of quantizable layers (and unswapped nn.MultiheadAttention) on the stack
    embeddings: dict[str, tuple[int, ...]] = {}
    mha: dict[str, tuple[int, tuple[int, ...]]] = {}

    def hook_for(fqn: str) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:  # a forward hook
        def hook(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            seen[fqn] = seen.get(fqn, 0) + 1
            inp = args[0]
            calls.append((fqn, module, tuple(inp.shape), tuple(out.shape), _macs(module, inp, out)))

        return hook

    def enter(fqn: str, opaque: bool) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def pre_hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            stack.append(fqn)
            inside_layer[0] += opaque

        return pre_hook

    def leave(fqn: str, opaque: bool) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
        def post_hook(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            stack.pop()
            inside_layer[0] -= opaque
            if isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and isinstance(args[0], Tensor):
                embeddings.setdefault(fqn, tuple(args[0].shape))
            if isinstance(module, nn.MultiheadAttention) and args and isinstance(args[0], Tensor):
                prev = mha.get(fqn, (0, ()))
                mha[fqn] = (prev[0] + _mha_macs(module, args), tuple(args[0].shape))

        return post_hook

    for fqn, module in model.named_modules():
        opaque = id(module) in candidate_ids or isinstance(module, nn.MultiheadAttention)
        handles.append(module.register_forward_pre_hook(enter(fqn, opaque)))
        if id(module) in candidate_ids:
            handles.append(module.register_forward_hook(hook_for(fqn)))
        handles.append(module.register_forward_hook(leave(fqn, opaque)))
    params = {id(p): n for n, p in model.named_parameters()}
    param_ptrs = {p.untyped_storage().data_ptr(): n for n, p in model.named_parameters() if p.device.type != "meta"}
    recorder = _FloatCompute(stack, inside_layer, params, param_ptrs)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), recorder:
            output = model(*_as_tuple(example_inputs))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    shared = sorted(fqn for fqn, n in seen.items() if n > 1)
    if shared:
        raise LayerDiscoveryError(
            f"layer {shared[0]!r} runs {seen[shared[0]]} times in one forward pass; shared layers "
            "are not supported (give each call its own module)"
        )
    if not calls:
        raise LayerDiscoveryError(
            "model: no quantizable layer ran on the example inputs; supported: "
            + ", ".join(t.__name__ for t in QUANTIZABLE_TYPES)
        )
    layers = tuple(
        LayerInfo(
            fqn=fqn,
            kind=layer_kind(module),
            index=i,
            input_shape=in_shape,
            output_shape=out_shape,
            num_params=sum(p.numel() for p in module.parameters(recurse=False)),
            macs=macs,
        )
        for i, (fqn, module, in_shape, out_shape, macs) in enumerate(calls)
    )
    unused = tuple(fqn for fqn, _ in candidates if fqn not in seen)
    return LayerGraph(layers=layers, unused=unused,
                      float_layers=_float_layers(model, recorder.sites, embeddings, mha),
                      output_is_tensor=isinstance(output, Tensor))

"""Batched QAT: K precision maps trained in one pass, each map's numbers those of training it alone.

The maps are folded into the batch dimension.  The batch is fed replicated K times, shape
``(K*N, ...)``; every Conv/ConvTranspose/Linear (quantized or not: every map trains its own weights) is
swapped for a :class:`BatchedLayer` that holds the K maps' stacked weights, ``(K, ...)``, and their
quantizer state as tensors with one row per map (scale, zero point, min/max, integer limits).  The layer
views its input as ``(K, N, ...)``, fake-quantizes each map's rows with that map's numbers, computes the K
convolutions as one grouped convolution (input ``(N, K*C, ...)``, ``groups = K*g``) or the K linears as
one ``baddbmm``, and hands back ``(K*N, ...)``.  What runs between layers (activations, adds, channel
concatenation, pooling, reshapes that keep the batch dimension) acts per sample, so the user's forward
runs unchanged.  The loss is the sum over maps of ``loss_fn`` on each map's N rows (its gradient for each
map is that map's own), and Adam is elementwise, so stacked parameters receive each map's own update.

Exactness.  The fake-quant arithmetic is :mod:`search.quant.qat`'s, op for op (``x / scale``, round
half-to-even, ``+ zp``, clamp, ``- zp``, ``* scale``; activation qparams computed in float64 from the
float32 min/max and stored as float32; the LSQ scale gradient with its ``1/sqrt(numel * (qmax - qmin))``
factor).  A grouped convolution or a batched matmul need not sum in the order a single one does, so each
layer shape is probed once per process (random data, forward and all three gradients compared bit for
bit against K single calls); a shape whose batched kernel differs runs as K single calls (still one
pass, exact by construction).

Where batching could not be exact the caller (:func:`search.train.run_trials`) trains one map at a time
and says why: :func:`unsupported_reason` names a BatchNorm left unfolded (its training statistics would
mix the maps), a Dropout with ``p > 0``, a trainable parameter outside a conv/linear; a forward that mixes
or fixes the batch dimension is caught by :func:`check_forward` (the batched forward on the replicated
example inputs against each map's own model) or raises :class:`BatchingError` when it runs.

After training, :func:`write_back` copies each map's weights and quantizer state into its ordinary
one-map fake-quant model, so evaluation, export and saving use the existing code.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from search.quant.qat import (
    INT32_RANGE,
    OUTPUT_QUANT_ATTR,
    ActivationQuantizer,
    FakeQuantMixin,
    RangeMethod,
    _quantize_output_hook,
)

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_TRANSPOSES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
BATCHABLE = (*_CONVS, *_CONV_TRANSPOSES, nn.Linear)
_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)

INT, FP16, IDENTITY = "int", "fp16", "identity"


class BatchingError(RuntimeError):
    """The model cannot run batched (a forward that mixes or fixes the batch dimension, an output kind
    that cannot be split per map); the caller falls back to one map at a time."""


# ---------------------------------------------------------------------------------------------
# Arithmetic with per-map tensors (one row per map)
# ---------------------------------------------------------------------------------------------


def _clamp(r: Tensor, qmin: Tensor | float, qmax: Tensor | float) -> Tensor:
    """``clamp(r, qmin, qmax)`` into a new tensor; per-map bounds as two binary ops (torch's clamp with
    two broadcast tensor bounds takes a slow path), the same values."""
    if isinstance(qmin, Tensor) or isinstance(qmax, Tensor):
        return r.clamp_min(qmin).clamp_max_(qmax)
    return r.clamp(qmin, qmax)


class _FakeQuantSTEBatched(torch.autograd.Function):
    """:class:`search.quant.qat._FakeQuantSTE` with per-map ``scale``, ``zero_point``, ``qmin``,
    ``qmax`` (shape ``(K, 1)`` against ``x`` of shape ``(K, M)``): the same float ops in the same order.
    With ``mixed`` = (is_int, other) the rows of maps that are not integer take ``other`` (their float or
    fp16-rounded values) and an identity gradient."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: Tensor, zero_point: Tensor, qmin: Tensor | float,
                qmax: Tensor | float, is_int: Tensor | None, other: Tensor | None) -> Tensor:
        r = torch.div(x, scale).round_()
        r.add_(zero_point)  # + 0.0 where the map's zero point is 0: the same value
        q = _clamp(r, qmin, qmax)
        inside = q == r
        q.sub_(zero_point)
        q.mul_(scale)
        if is_int is not None:
            assert other is not None
            inside.logical_or_(~is_int)
            q = torch.where(is_int, q, other)
        ctx.save_for_backward(inside)
        return q

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None, None, None


class _StraightThrough(torch.autograd.Function):
    """``values`` forward, the gradient of ``x`` unchanged backward: every weight and bias fake quant
    of the one-map path (``_RoundSTE``, fp16 rounding, none) has the identity gradient."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, values: Tensor) -> Tensor:
        return values

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        return grad, None


class _FakeQuantLSQBatched(torch.autograd.Function):
    """:class:`search.quant.qat._FakeQuantLSQ` per map: ``x`` (K, M), the rest (K, 1); the scale's
    gradient is each map's own sum times its ``1/sqrt(M * (qmax - qmin))``.  ``is_int``/``other`` as in
    :class:`_FakeQuantSTEBatched` (the other maps' scales get a zero gradient)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: Tensor, zero_point: Tensor, qmin: Tensor | float,
                qmax: Tensor | float, grad_factor: Tensor, is_int: Tensor | None, other: Tensor | None) -> Tensor:
        v = x / scale
        unclamped = torch.round(v) + zero_point
        q = _clamp(unclamped, qmin, qmax)
        ctx.save_for_backward(v, unclamped, q, zero_point, grad_factor, is_int)
        ctx.bounds = (qmin, qmax)
        out = (q - zero_point) * scale
        if is_int is not None:
            assert other is not None
            out = torch.where(is_int, out, other)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        v, unclamped, q, zero_point, grad_factor, is_int = ctx.saved_tensors
        qmin, qmax = ctx.bounds
        inside = (unclamped >= qmin) & (unclamped <= qmax)
        ds = torch.where(inside, q - zero_point - v, q - zero_point)
        grad_scale = (grad * ds).sum(dim=1, keepdim=True) * grad_factor
        if is_int is not None:
            grad_scale = torch.where(is_int, grad_scale, 0.0)
            inside.logical_or_(~is_int)
        return grad * inside, grad_scale, None, None, None, None, None, None


def _tensor_kind(fmt: Any) -> str:
    if fmt.is_identity:
        return IDENTITY
    return INT if fmt.is_int else FP16


def _masks(kinds: Sequence[str], shape: tuple[int, ...], device: torch.device) -> tuple[Tensor | None, Tensor | None]:
    """(is_int, is_fp16) per map, shaped ``shape`` to broadcast; None where no map is of that kind."""
    def mask(kind: str) -> Tensor | None:
        if kind not in kinds:
            return None
        return torch.tensor([k == kind for k in kinds], device=device).reshape(shape)
    return mask(INT), mask(FP16)


def _float_rows(x: Tensor, kinds: Sequence[str], is_fp16: Tensor | None) -> Tensor:
    """The values of the maps that are not integer: fp16-rounded rows (``round_fp16``'s values) or ``x``."""
    if is_fp16 is None:
        return x
    x16 = x.to(torch.float16).to(x.dtype)
    return x16 if all(k != IDENTITY for k in kinds if k != INT) else torch.where(is_fp16, x16, x)


# ---------------------------------------------------------------------------------------------
# Activation quantizer
# ---------------------------------------------------------------------------------------------


class BatchedActivationQuantizer(nn.Module):
    """K :class:`ActivationQuantizer`\\ s (``None``: that map leaves the tensor alone) as one module over
    ``(K*N, ...)`` inputs.  State has one row per map; the rows of maps that are not integer evolve
    unused (their outputs are the float or fp16 values; they are never written back)."""

    min_val: Tensor
    max_val: Tensor
    zero_point: Tensor
    scale: Tensor
    qmin: Tensor
    qmax: Tensor
    qmin64: Tensor
    qmax64: Tensor
    span64: Tensor

    def __init__(self, quantizers: Sequence[ActivationQuantizer | None], method: RangeMethod) -> None:
        super().__init__()
        self.K = len(quantizers)
        self.method = method
        self.kinds = [IDENTITY if q is None else _tensor_kind(q.fmt) for q in quantizers]
        self.int_maps = [k for k, kind in enumerate(self.kinds) if kind == INT]
        ref = next((q for q in quantizers if q is not None), None)
        device = ref.min_val.device if ref is not None else torch.device("cpu")

        def col(values: list[float], dtype: torch.dtype = torch.float32) -> Tensor:
            return torch.tensor(values, dtype=dtype, device=device).reshape(self.K, 1)

        def state(name: str, default: float) -> list[float]:
            return [float(getattr(q, name).detach().reshape(())) if q is not None and kind == INT else default
                    for q, kind in zip(quantizers, self.kinds, strict=True)]

        int_ranges = [q.fmt.activation_range() for q, kind in zip(quantizers, self.kinds, strict=True)
                      if q is not None and kind == INT]
        dummy = int_ranges[0] if int_ranges else (0, 1)  # other maps' rows: the first integer map's range
        ranges = [q.fmt.activation_range() if q is not None and kind == INT else dummy
                  for q, kind in zip(quantizers, self.kinds, strict=True)]
        self.register_buffer("min_val", col(state("min_val", 0.0)).reshape(self.K))
        self.register_buffer("max_val", col(state("max_val", 0.0)).reshape(self.K))
        self.register_buffer("zero_point", col(state("zero_point", 0.0)))
        scales = col(state("scale", 1.0))
        if method is RangeMethod.LSQ:
            self.scale = nn.Parameter(scales)
        else:
            self.register_buffer("scale", scales)
        self.register_buffer("qmin", col([float(lo) for lo, _ in ranges]))
        self.register_buffer("qmax", col([float(hi) for _, hi in ranges]))
        self.register_buffer("qmin64", self.qmin.reshape(self.K).double())
        self.register_buffer("qmax64", self.qmax.reshape(self.K).double())
        self.register_buffer("span64", self.qmax64 - self.qmin64)
        # clamp bounds: numbers where every map shares them (a faster clamp), else (K, 1) tensors
        self._bounds: tuple[Tensor | float, Tensor | float] = (
            (float(ranges[0][0]), float(ranges[0][1])) if len(set(ranges)) == 1 else (self.qmin, self.qmax))
        self.is_int, self.is_fp16 = _masks(self.kinds, (self.K, 1), device)
        self._all_int = len(self.int_maps) == self.K
        spans = [hi - lo for lo, hi in ranges]
        self._spans = spans
        self._grad_factor: dict[int, Tensor] = {}

    @property
    def any_int(self) -> bool:
        return bool(self.int_maps)

    # -- state -------------------------------------------------------------------------------
    def _observe_ema(self, x2: Tensor) -> None:
        """EMA of each map's batch range (momentum :attr:`ActivationQuantizer.EMA_MOMENTUM`)."""
        momentum = ActivationQuantizer.EMA_MOMENTUM
        rows = x2.detach()
        self.min_val.lerp_(rows.amin(dim=1), momentum)  # aminmax(dim=1) is 20x slower on a CPU; the same values
        self.max_val.lerp_(rows.amax(dim=1), momentum)
        self._refresh_qparams()

    def _refresh_qparams(self) -> None:
        """:meth:`ActivationQuantizer._refresh_qparams` for every map at once, in float64."""
        lo = torch.clamp(self.min_val.double(), max=0.0)
        hi = torch.clamp(self.max_val.double(), min=0.0)
        unsigned = lo >= 0.0
        scale = torch.where(unsigned, torch.clamp(hi, min=1e-8), torch.clamp(hi - lo, min=1e-8)) / self.span64
        zp = torch.round(self.qmin64 - lo / scale).clamp_min_(self.qmin64).clamp_max_(self.qmax64)
        zp.masked_fill_(unsigned, 0.0)
        with torch.no_grad():
            self.scale.copy_(scale.reshape(self.K, 1))
            self.zero_point.copy_(zp.reshape(self.K, 1))

    def input_scale(self) -> Tensor:
        """(K, 1) scale each map's forward uses (the int32 bias scale's ``s_input``), detached."""
        if self.method is RangeMethod.LSQ:
            return self.scale.detach().abs() + 1e-12
        return self.scale

    # -- forward ------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        K = self.K
        if x.shape[0] % K:
            raise BatchingError(f"a layer input has {x.shape[0]} rows, not a multiple of the {K} maps")
        if not self.any_int and self.is_fp16 is None:
            return x
        x2 = x.reshape(K, -1)
        if not self.any_int:
            return _float_rows_ste(x2, self.kinds, self.is_fp16).reshape(x.shape)
        if self.training and self.method is RangeMethod.MINMAX:
            self._observe_ema(x2)
        is_int = None if self._all_int else self.is_int
        other = None if self._all_int else _float_rows(x2.detach(), self.kinds, self.is_fp16)
        qmin, qmax = self._bounds
        if self.method is RangeMethod.LSQ:
            scale = self.scale.abs() + 1e-12 if self.training else self.scale.detach().abs() + 1e-12
            factor = self._lsq_factor(x2.shape[1])
            out = _FakeQuantLSQBatched.apply(x2, scale, self.zero_point, qmin, qmax, factor, is_int, other)
        else:
            out = _FakeQuantSTEBatched.apply(x2, self.scale, self.zero_point, qmin, qmax, is_int, other)
        return cast(Tensor, out).reshape(x.shape)

    def _lsq_factor(self, numel: int) -> Tensor:
        if numel not in self._grad_factor:
            # the one-map factor is a Python float multiplied into a float32 tensor: rounded to float32
            self._grad_factor[numel] = torch.tensor([[1.0 / math.sqrt(numel * max(int(s), 1))] for s in self._spans],
                                                    dtype=torch.float32, device=self.scale.device)
        return self._grad_factor[numel]

    def write_back(self, k: int, quant: ActivationQuantizer) -> None:
        if self.kinds[k] != INT:
            return
        with torch.no_grad():
            quant.min_val.copy_(self.min_val[k])
            quant.max_val.copy_(self.max_val[k])
            quant.zero_point.copy_(self.zero_point[k, 0])
            quant.scale.copy_(self.scale[k].detach().reshape(quant.scale.shape))


def _float_rows_ste(x2: Tensor, kinds: Sequence[str], is_fp16: Tensor | None) -> Tensor:
    with torch.no_grad():
        values = _float_rows(x2, kinds, is_fp16)
    return cast(Tensor, _StraightThrough.apply(x2, values))


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------

_CHOICE: dict[tuple[Any, ...], bool] = {}  # per layer shape and thread count: run it as one batched call?


def _timed(fn: Callable[[], Any], device: torch.device, reps: int = 3) -> float:
    best = math.inf
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def _probe(key: tuple[Any, ...], K: int, x_shape: tuple[int, ...], w_shape: tuple[int, ...], bias: int,
           batched: Callable[[Tensor, Tensor, Tensor | None], Tensor],
           single: Callable[[Tensor, Tensor, Tensor | None], Tensor], device: torch.device) -> bool:
    """Whether to compute a layer of these shapes as one batched call: only if it gives, bit for bit,
    the K ``single`` results (forward and the gradients of input, weight and bias) on random data of
    the layer's shapes, and is faster than K single calls (timed here: both give the same numbers, so
    the choice changes only the speed).  Random data from a private generator: the global RNG, which
    a workload's batches may draw on, is left alone.  Decided once per process for each shape."""
    full = (*key, torch.get_num_threads(), device.type)
    if full in _CHOICE:
        return _CHOICE[full]
    gen = torch.Generator().manual_seed(1234)

    def rand(*shape: int) -> Tensor:
        return torch.randn(shape, generator=gen).to(device)

    n = x_shape[0]
    x, w = rand(K * n, *x_shape[1:]), rand(K, *w_shape)
    b = rand(K, bias) if bias else None
    operands = (x, w) + ((b,) if b is not None else ())
    with torch.enable_grad():
        leaves = [t.clone().requires_grad_() for t in operands]

        def run_batched() -> tuple[Tensor, tuple[Tensor, ...]]:
            out = batched(leaves[0], leaves[1], leaves[2] if b is not None else None)
            return out, torch.autograd.grad(out, leaves, g)

        def run_single() -> list[tuple[Tensor, tuple[Tensor, ...]]]:
            results = []
            for k in range(K):
                ref = [t[k * n:(k + 1) * n] if i == 0 else t[k] for i, t in enumerate(operands)]
                ref = [t.clone().requires_grad_() for t in ref]
                o = single(ref[0], ref[1], ref[2] if b is not None else None)
                results.append((o, torch.autograd.grad(o, ref, g[k * n:(k + 1) * n])))
            return results

        g = torch.randn(batched(x, w, b).shape, generator=gen).to(device)
        out, grads = run_batched()
        exact = True
        for k, (o, rg) in enumerate(run_single()):
            got = [grads[0][k * n:(k + 1) * n]] + [gr[k] for gr in grads[1:]]
            if not torch.equal(o, out[k * n:(k + 1) * n]) or not all(
                    torch.equal(a, c) for a, c in zip(got, rg, strict=True)):
                exact = False
                break
        choice = exact and _timed(run_batched, device) < _timed(run_single, device)
    _CHOICE[full] = choice
    return choice


class BatchedLayer(nn.Module):
    """K maps' versions of one Conv/ConvTranspose/Linear (fake-quant or plain) over ``(K*N, ...)``."""

    wqmax: Tensor

    def __init__(self, modules: Sequence[nn.Module], method: RangeMethod) -> None:
        super().__init__()
        first = modules[0]
        self.K = len(modules)
        self.is_linear = isinstance(first, nn.Linear)
        self.transposed = isinstance(first, _CONV_TRANSPOSES)
        self.__dict__["template"] = first  # the conv attributes (not a submodule: its parameters are not ours)
        weights = [cast(Tensor, m.weight) for m in modules]
        self.weight = nn.Parameter(torch.stack([w.detach() for w in weights]), requires_grad=weights[0].requires_grad)
        biases = [cast(Tensor | None, m.bias) for m in modules]
        if biases[0] is not None:
            self.bias: nn.Parameter | None = nn.Parameter(torch.stack([cast(Tensor, b).detach() for b in biases]),
                                                          requires_grad=biases[0].requires_grad)
        else:
            self.bias = None
        fmts = [m.layer_format if isinstance(m, FakeQuantMixin) else None for m in modules]
        self.input_quant = BatchedActivationQuantizer(
            [m.input_quant if isinstance(m, FakeQuantMixin) else None for m in modules], method)
        self.out_axis = 1 if self.transposed else 0
        wkinds = [IDENTITY if f is None else _tensor_kind(f.weight) for f in fmts]
        bias_modes = []
        for f, wk in zip(fmts, wkinds, strict=True):
            if f is None or wk == IDENTITY:
                bias_modes.append(IDENTITY)
            elif wk == FP16:
                bias_modes.append(FP16)
            else:
                bias_modes.append(INT if f.activation.is_int else IDENTITY)
        dev = self.weight.device
        wshape = (self.K,) + (1,) * (self.weight.dim() - 1)
        self.wkinds = wkinds
        self.w_int, self.w_fp16 = _masks(wkinds, wshape, dev)
        self.b_int, self.b_fp16 = _masks(bias_modes, (self.K, 1), dev)
        self.bias_modes = bias_modes
        int_wmax = [float(f.weight.weight_range()[1]) for f, wk in zip(fmts, wkinds, strict=True)
                    if f is not None and wk == INT]
        dummy = int_wmax[0] if int_wmax else 1.0  # other maps' rows: the first integer map's limit
        wmax = [float(f.weight.weight_range()[1]) if f is not None and wk == INT else dummy
                for f, wk in zip(fmts, wkinds, strict=True)]
        self.register_buffer("wqmax", torch.tensor(wmax, device=dev).reshape(wshape))
        self._wbound: Tensor | float = wmax[0] if len(set(wmax)) == 1 else self.wqmax

    # -- operands -----------------------------------------------------------------------------
    def _weight_bias(self) -> tuple[Tensor, Tensor | None]:
        """Each map's fake-quant weight and bias, as its one-map layer computes them (values per map
        kind; the gradient is the identity for every kind, as in the one-map path)."""
        w, b = self.weight, self.bias
        if self.w_int is None and self.w_fp16 is None:
            return w, b
        with torch.no_grad():
            wv = w.detach()
            bv = None if b is None else b.detach()
            w_float = _float_rows(wv, self.wkinds, self.w_fp16)
            b_vals: Tensor | None
            b_float = None if bv is None else _float_rows(bv, self.bias_modes, self.b_fp16)
            if self.w_int is not None:
                dims = [d for d in range(1, wv.dim()) if d != 1 + self.out_axis]
                amax = wv.abs().amax(dim=dims, keepdim=True)
                s_w = torch.clamp(amax, min=torch.finfo(torch.float32).tiny) / self.wqmax
                bound = self._wbound
                w_int = _clamp(torch.div(wv, s_w).round_(), -bound, bound).mul_(s_w)
                w_vals = w_int if self.w_fp16 is None and all(k == INT for k in self.wkinds) else torch.where(
                    self.w_int, w_int, w_float)
                if bv is not None and self.b_int is not None:
                    bias_scale = s_w.reshape(self.K, -1) * self.input_quant.input_scale()
                    lo, hi = (float(v) for v in INT32_RANGE)
                    b_int = torch.div(bv, bias_scale).round_().clamp_(lo, hi).mul_(bias_scale)
                    assert b_float is not None
                    all_int = all(m == INT for m in self.bias_modes)
                    b_vals = b_int if all_int else torch.where(self.b_int, b_int, b_float)
                else:
                    b_vals = b_float
            else:
                w_vals, b_vals = w_float, b_float
        wq = cast(Tensor, _StraightThrough.apply(w, w_vals))
        bq = None if b is None or b_vals is None else cast(Tensor, _StraightThrough.apply(b, b_vals))
        return wq, bq

    # -- compute ------------------------------------------------------------------------------
    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        if output_size is not None:
            raise BatchingError("a ConvTranspose called with output_size")
        xq = self.input_quant(x)
        wq, bq = self._weight_bias()
        n = x.shape[0] // self.K
        if self.is_linear:
            return self._linear(xq, wq, bq, n)
        return self._conv(xq, wq, bq, n)

    def _linear(self, x: Tensor, w: Tensor, b: Tensor | None, n: int) -> Tensor:
        K = self.K

        def batched(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
            x3 = x.reshape(K, -1, x.shape[-1])
            wt = w.transpose(1, 2)
            y = torch.bmm(x3, wt) if b is None else torch.baddbmm(b.unsqueeze(1), x3, wt)
            return y.reshape(*x.shape[:-1], w.shape[1])

        def single(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
            return F.linear(x, w, b)

        per_map = (n, *x.shape[1:])
        key = ("linear", K, per_map, tuple(w.shape[1:]), b is not None)
        if _probe(key, K, per_map, tuple(w.shape[1:]), 0 if b is None else b.shape[1], batched, single, x.device):
            return batched(x, w, b)
        return torch.cat([single(xk, w[k], None if b is None else b[k]) for k, xk in enumerate(x.split(n))])

    def _conv(self, x: Tensor, w: Tensor, b: Tensor | None, n: int) -> Tensor:
        K = self.K
        conv = cast(nn.modules.conv._ConvNd, self.template)
        dims = len(conv.kernel_size)
        padding: Any = conv.padding
        if conv.padding_mode != "zeros":
            x = F.pad(x, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
            padding = 0
        if self.transposed:
            fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[dims - 1]
            output_padding = conv.output_padding

            def single(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
                return fn(x, w, b, conv.stride, padding, output_padding, conv.groups, conv.dilation)
        else:
            cfn = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]

            def single(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
                return cfn(x, w, b, conv.stride, padding, conv.dilation, conv.groups)

        def batched(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
            spatial = x.shape[2:]
            m = x.shape[0] // K
            xin = x.reshape(K, m, x.shape[1], *spatial).transpose(0, 1).reshape(m, K * x.shape[1], *spatial)
            wk = w.reshape(K * w.shape[1], *w.shape[2:])
            bk = None if b is None else b.reshape(-1)
            if self.transposed:
                y = fn(xin, wk, bk, conv.stride, padding, output_padding, K * conv.groups, conv.dilation)
            else:
                y = cfn(xin, wk, bk, conv.stride, padding, conv.dilation, K * conv.groups)
            c_out = y.shape[1] // K
            return y.reshape(m, K, c_out, *y.shape[2:]).transpose(0, 1).reshape(K * m, c_out, *y.shape[2:])

        per_map = (n, *x.shape[1:])
        key = ("conv", type(conv).__name__, K, per_map, tuple(w.shape[1:]), b is not None, conv.stride, str(padding),
               conv.dilation, conv.groups, getattr(conv, "output_padding", None))
        if _probe(key, K, per_map, tuple(w.shape[1:]), 0 if b is None else b.shape[1], batched, single, x.device):
            return batched(x, w, b)
        return torch.cat([single(xk, w[k], None if b is None else b[k]) for k, xk in enumerate(x.split(n))])

    def write_back(self, k: int, module: nn.Module) -> None:
        with torch.no_grad():
            cast(Tensor, module.weight).copy_(self.weight[k])
            if self.bias is not None:
                cast(Tensor, module.bias).copy_(self.bias[k])
        if isinstance(module, FakeQuantMixin):
            self.input_quant.write_back(k, module.input_quant)


# ---------------------------------------------------------------------------------------------
# Whole model
# ---------------------------------------------------------------------------------------------


def unsupported_reason(model: nn.Module) -> str:
    """Why ``model`` (a one-map fake-quant model, BatchNorm already folded) cannot train batched, or ''."""
    owners: dict[int, str] = {}
    for fqn, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            return (f"{fqn!r} is a {type(module).__name__} left unfolded (it does not follow a conv/linear): in "
                    "training mode its batch statistics would mix the maps")
        if isinstance(module, _DROPOUTS) and module.p > 0:
            return f"{fqn!r} is a {type(module).__name__} with p={module.p}: its random masks differ per map"
        if isinstance(module, (*BATCHABLE, ActivationQuantizer)):
            for p in module.parameters(recurse=False):
                owners[id(p)] = fqn
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in owners:
            return (f"parameter {name!r} belongs to a layer kind the batched engine does not stack (only "
                    "Conv, ConvTranspose and Linear weights are)")
    return ""


class BatchedModel(nn.Module):
    """The K maps as one module: ``forward(x)`` takes the (N, ...) batch, replicates it K times and
    returns the (K*N, ...) output; :meth:`split` gives each map's rows."""

    def __init__(self, models: Sequence[nn.Module], method: RangeMethod) -> None:
        super().__init__()
        self.K = len(models)
        self.method = method
        net = copy.deepcopy(models[0])
        self.layers: dict[str, BatchedLayer] = {}
        per_map = [dict(m.named_modules()) for m in models]
        for fqn, module in list(net.named_modules()):
            if isinstance(module, BATCHABLE):
                layer = BatchedLayer([mods[fqn] for mods in per_map], method)
                _set(net, fqn, layer)
                self.layers[fqn] = layer
        outs = [getattr(m, OUTPUT_QUANT_ATTR, None) for m in models]
        self.output_quant: BatchedActivationQuantizer | None = None
        if any(o is not None for o in outs):
            self.output_quant = BatchedActivationQuantizer(cast(list[ActivationQuantizer | None], outs), method)
            had = hasattr(net, OUTPUT_QUANT_ATTR)
            if had:
                delattr(net, OUTPUT_QUANT_ATTR)
            net.add_module(OUTPUT_QUANT_ATTR, self.output_quant)
            if not had and not isinstance(net, nn.Sequential):
                net.register_forward_hook(_quantize_output_hook)
        self.net = net

    def forward(self, x: Tensor) -> Any:
        return self.net(x.repeat(self.K, *([1] * (x.dim() - 1))))

    def split(self, out: Any, n: int) -> list[Any]:
        """Map k's rows of a batched output: a tensor, or a tuple/list of tensors."""
        if isinstance(out, Tensor):
            if out.dim() == 0 or out.shape[0] != self.K * n:
                raise BatchingError(f"the model's output has shape {tuple(out.shape)}, not {self.K * n} rows")
            return list(out.split(n))
        if isinstance(out, (tuple, list)) and all(isinstance(o, Tensor) for o in out):
            parts = [self.split(o, n) for o in out]
            return [type(out)(p[k] for p in parts) for k in range(self.K)]
        raise BatchingError(f"the model returns a {type(out).__name__}; batching splits tensors or tuples of them")

    def write_back(self, models: Sequence[nn.Module]) -> None:
        """Each map's trained weights and quantizer state into its own one-map model."""
        for k, model in enumerate(models):
            mods = dict(model.named_modules())
            for fqn, layer in self.layers.items():
                layer.write_back(k, mods[fqn])
            out = getattr(model, OUTPUT_QUANT_ATTR, None)
            if self.output_quant is not None and isinstance(out, ActivationQuantizer):
                self.output_quant.write_back(k, out)


def _set(root: nn.Module, fqn: str, module: nn.Module) -> None:
    parent_name, _, child = fqn.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def _max_rel_diff(a: Any, b: Any) -> float:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        if a.shape != b.shape:
            return math.inf
        scale = float(b.abs().max()) if b.numel() else 0.0
        return float((a - b).abs().max()) / max(scale, 1e-12) if b.numel() else 0.0
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b):
        return max((_max_rel_diff(x, y) for x, y in zip(a, b, strict=True)), default=0.0)
    return math.inf


def check_forward(batched: BatchedModel, models: Sequence[nn.Module], example: Tensor, tol: float = 1e-5) -> str:
    """'' if the batched forward (eval mode) on ``example`` replicated K times gives each map's own
    model's output within ``tol`` (max |difference| over max |value|), else the reason it does not."""
    batched.eval()
    for m in models:
        m.eval()
    try:
        with torch.no_grad():
            parts = batched.split(batched(example), example.shape[0])
            for k, model in enumerate(models):
                diff = _max_rel_diff(parts[k], model(example))
                if not diff <= tol:
                    return (f"the batched forward differs from map {k}'s own (max relative difference {diff:.3g} > "
                            f"{tol:g}): the model's forward mixes or fixes the batch dimension")
    except BatchingError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - any failure of the batched forward means: train one at a time
        return f"the batched forward fails ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    return ""


class _Replicate(nn.Module):
    """What the training loop trains: the batched model, remembering the batch size it was fed."""

    def __init__(self, batched: BatchedModel) -> None:
        super().__init__()
        self.batched = batched
        self.rows = 0

    def forward(self, x: Tensor) -> Any:
        self.rows = x.shape[0]
        return self.batched(x)


def train_batched(
    batched: BatchedModel,
    batches: Any,
    loss_fn: Callable[[Any, Tensor], Tensor],
    *,
    steps: int,
    lr: float,
    device: torch.device,
    recipe: Any,
) -> list[list[float]]:
    """``steps`` QAT steps of all K maps on the same batches (the loop of
    :func:`search.workloads.training.train_steps`, the loss the sum of each map's own); returns each
    map's losses.  Raises :class:`BatchingError` if the model cannot run batched on these batches."""
    from search.workloads.training import train_steps

    runner = _Replicate(batched)
    per_step: list[Tensor] = []

    def loss(out: Any, target: Tensor) -> Tensor:
        parts = batched.split(out, runner.rows)
        losses = torch.stack([loss_fn(part, target).reshape(()) for part in parts])
        per_step.append(losses.detach())
        return losses.sum()  # d(sum)/d(loss_k) = 1: each map's gradient is its own

    train_steps(runner, batches, loss, steps=steps, lr=lr, device=device, recipe=recipe)
    if not per_step:
        return [[] for _ in range(batched.K)]
    return cast(list[list[float]], torch.stack(per_step).T.tolist())

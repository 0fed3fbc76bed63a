"""The fake-quant engine: module swap, quantizers, BatchNorm folding, calibration.

This module is the one home of the quantization arithmetic.  The arithmetic is the ONNX
``QuantizeLinear``/``DequantizeLinear`` definition, so the fake-quant model and an exported QDQ graph
compute the same numbers::

    q = saturate(round_half_even(x / scale) + zero_point)      # QuantizeLinear
    x_hat = (q - zero_point) * scale                           # DequantizeLinear

(division, not multiplication by ``1/scale``: torch's built-in ``fake_quantize_*`` kernels multiply
by the inverse and so disagree with ONNX on ties.)  Gradients use the straight-through estimator,
masked outside the clamp range; the LSQ variant also learns the activation step size
(Esser et al., "Learned Step Size Quantization", ICLR 2020, eq. 3 and the 1/sqrt(N*Qp) gradient
scale).

Bias of an integer layer is quantized to int32 with scale ``s_input * s_weight[c]`` and zero
point 0, as integer accelerators add it to the int32 accumulator.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from enum import StrEnum
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from search.errors import QuantizationError as QuantizationError
from search.quant.attention import prepare_model
from search.quant.formats import FP32, LayerFormat, TensorFormat
from search.quant.layers import LayerGraph, discover_layers

INT32_RANGE = (-(2**31), 2**31 - 1)


class RangeMethod(StrEnum):
    MINMAX = "minmax"  # running min/max (EMA during QAT)
    LSQ = "lsq"  # learned step size, initialised from calibration



# ---------------------------------------------------------------------------------------------
# Arithmetic
# ---------------------------------------------------------------------------------------------


def quantize(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> Tensor:
    """Integer codes (as float tensor) of ``x``: ``clamp(round(x / scale) + zero_point)``."""
    return torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)


class _FakeQuantSTE(torch.autograd.Function):
    """Fake quant with the straight-through gradient, zero outside the clamp range.

    Written as few in-place ops on one temporary (dispatch overhead dominates on small layers):
    the same float operations in the same order as :func:`quantize` then ``(q - zero_point) * scale``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: Tensor, zero_point: Tensor | float, qmin: int, qmax: int) -> Tensor:
        zp = float(zero_point)
        r = torch.div(x, scale).round_()
        if zp:
            r.add_(zp)
        q = r.clamp(qmin, qmax)
        ctx.save_for_backward(q == r)  # inside the range
        if zp:
            q.sub_(zp)
        return q.mul_(scale)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None


class _RoundSTE(torch.autograd.Function):
    """Symmetric fake quant (zero point 0) with an identity gradient, for weights (max-|w| scales:
    the clamp never binds) and int32 biases (it binds only for dead channels)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: Tensor, qmin: int, qmax: int) -> Tensor:
        return torch.div(x, scale).round_().clamp_(qmin, qmax).mul_(scale)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        return grad, None, None, None


class _FakeQuantLSQ(torch.autograd.Function):
    """Per-tensor fake quant whose scale receives the LSQ gradient."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> Tensor:
        v = x / scale
        unclamped = torch.round(v) + zero_point
        q = torch.clamp(unclamped, qmin, qmax)
        ctx.save_for_backward(v, unclamped, q, zero_point)
        ctx.bounds = (qmin, qmax)
        return (q - zero_point) * scale

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        v, unclamped, q, zero_point = ctx.saved_tensors
        qmin, qmax = ctx.bounds
        inside = (unclamped >= qmin) & (unclamped <= qmax)
        # d x_hat / d s: (round(v) - v) inside the range, (q - zp) at the clamps
        ds = torch.where(inside, q - zero_point - v, q - zero_point)
        grad_scale = 1.0 / math.sqrt(v.numel() * max(qmax - qmin, 1))
        return grad * inside, (grad * ds).sum().reshape(1) * grad_scale, None, None, None


class _RoundFP16STE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.to(torch.float16).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad


def round_fp16(x: Tensor) -> Tensor:
    return _RoundFP16STE.apply(x)


# ---------------------------------------------------------------------------------------------
# Quantizers
# ---------------------------------------------------------------------------------------------


class WeightQuantizer(nn.Module):
    """Per-output-channel symmetric weight fake quant; the scale follows the weights (max |w|)."""

    def __init__(self, fmt: TensorFormat, out_channel_axis: int = 0) -> None:
        super().__init__()
        self.fmt = fmt
        self.axis = out_channel_axis

    def scale(self, weight: Tensor) -> Tensor:
        """Per-channel scale, shaped to broadcast against ``weight``."""
        qmax = self.fmt.weight_range()[1]
        dims = [d for d in range(weight.dim()) if d != self.axis]
        amax = weight.detach().abs().amax(dim=dims, keepdim=True)
        return torch.clamp(amax, min=torch.finfo(torch.float32).tiny) / qmax

    def forward(self, weight: Tensor) -> Tensor:
        if self.fmt.is_identity:
            return weight
        if not self.fmt.is_int:
            return round_fp16(weight)
        return self.fake_quant(weight, self.scale(weight))

    def fake_quant(self, weight: Tensor, scale: Tensor) -> Tensor:
        qmin, qmax = self.fmt.weight_range()
        return _RoundSTE.apply(weight, scale, qmin, qmax)

    def extra_repr(self) -> str:
        return f"{self.fmt.name}, per_channel(axis={self.axis}), symmetric"


class ActivationQuantizer(nn.Module):
    """Per-tensor activation fake quant with calibrated or learned range.

    States: not yet initialised (observes, passes through); calibrating (observes min/max,
    passes through); trained/evaluated (quantizes).  In training mode a ``minmax`` quantizer keeps
    an exponential moving average of the batch range (momentum 0.01, as torch.ao's
    MovingAverageMinMaxObserver); in eval mode the range is frozen.
    """

    EMA_MOMENTUM = 0.01

    # registered buffers (and ``scale``, a parameter under LSQ), declared for the type checker
    min_val: Tensor
    max_val: Tensor
    zero_point: Tensor
    scale: Tensor
    initialized: Tensor

    def __init__(self, fmt: TensorFormat, method: RangeMethod = RangeMethod.MINMAX) -> None:
        super().__init__()
        self.fmt = fmt
        self.method = RangeMethod(method)
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))
        self.register_buffer("zero_point", torch.zeros(()))
        # scale is a parameter only for LSQ; a buffer otherwise (so it is saved either way)
        if self.method is RangeMethod.LSQ:
            self.scale = nn.Parameter(torch.ones(1))
        else:
            self.register_buffer("scale", torch.ones(1))
        self.register_buffer("initialized", torch.tensor(False))
        self.calibrating = False
        self._ready = False  # mirror of ``initialized`` (a buffer read costs a tensor op per step)

    # -- range estimation -------------------------------------------------------------------
    def _observe(self, x: Tensor, momentum: float | None) -> None:
        lo, hi = torch.aminmax(x.detach())
        if momentum is None or not self.is_ready():
            self.min_val.copy_(torch.minimum(self.min_val, lo))
            self.max_val.copy_(torch.maximum(self.max_val, hi))
        else:
            self.min_val.lerp_(lo, momentum)
            self.max_val.lerp_(hi, momentum)

    def _refresh_qparams(self) -> None:
        qmin, qmax = self.fmt.activation_range()
        lo = min(float(self.min_val), 0.0)
        hi = max(float(self.max_val), 0.0)
        if lo >= 0.0:  # non-negative input: unsigned, zero point 0
            scale = max(hi, 1e-8) / (qmax - qmin)
            zero_point = 0.0
        else:  # affine
            scale = max(hi - lo, 1e-8) / (qmax - qmin)
            zero_point = float(min(max(round(qmin - lo / scale), qmin), qmax))
        with torch.no_grad():
            self.scale.fill_(scale)
            self.zero_point.fill_(zero_point)
        if not self._ready:
            self.initialized.fill_(True)
            self._ready = True

    def is_ready(self) -> bool:
        if not self._ready and bool(self.initialized):  # e.g. loaded from a state dict
            self._ready = True
        return self._ready

    @property
    def signed_input(self) -> bool:
        return float(self.min_val) < 0.0

    def finish_calibration(self) -> None:
        if not torch.isfinite(self.min_val):
            raise QuantizationError("calibration: an activation quantizer saw no data")
        self._refresh_qparams()
        self.calibrating = False

    # -- forward ------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        if self.fmt.is_identity:
            return x
        if not self.fmt.is_int:
            return round_fp16(x)
        if self.calibrating:
            self._observe(x, momentum=None)
            return x
        if not self.is_ready():
            self._observe(x, momentum=None)
            self._refresh_qparams()
        elif self.training and self.method is RangeMethod.MINMAX:
            self._observe(x, momentum=self.EMA_MOMENTUM)
            self._refresh_qparams()
        qmin, qmax = self.fmt.activation_range()
        if self.method is RangeMethod.LSQ:
            scale = self.scale.abs() + 1e-12 if self.training else self.scale.detach().abs() + 1e-12
            return _FakeQuantLSQ.apply(x, scale, self.zero_point, qmin, qmax)
        return _FakeQuantSTE.apply(x, self.scale, self.zero_point, qmin, qmax)

    def qparams(self) -> tuple[float, int]:
        """(scale, zero_point) a device would use, as the forward pass uses them."""
        scale = self.scale.detach().abs() + 1e-12 if self.method is RangeMethod.LSQ else self.scale
        return float(scale.reshape(())), int(self.zero_point)

    def extra_repr(self) -> str:
        return f"{self.fmt.name}, per_tensor, {self.method}"


# ---------------------------------------------------------------------------------------------
# Module swap
# ---------------------------------------------------------------------------------------------


class FakeQuantMixin:
    """Adds input/weight/bias fake quant to a Conv/Linear subclass.  Parameters are shared with
    the module it was made from, so state-dict keys stay the user's own."""

    layer_format: LayerFormat
    input_quant: ActivationQuantizer
    weight_quant: WeightQuantizer
    weight: Tensor
    bias: Tensor | None

    def _init_quant(self, fmt: LayerFormat, method: RangeMethod, out_axis: int) -> None:
        self.layer_format = fmt
        self.input_quant = ActivationQuantizer(fmt.activation, method)
        self.weight_quant = WeightQuantizer(fmt.weight, out_axis)

    def quantized_operands(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        xq = self.input_quant(x)
        fmt = self.layer_format
        bias = self.bias
        if not fmt.weight.is_int:
            wq = self.weight_quant(self.weight)
            if bias is not None and not fmt.weight.is_identity:
                bias = round_fp16(bias)
            return xq, wq, bias
        s_w = self.weight_quant.scale(self.weight)  # (C_out, 1, ...) computed once for weight and bias
        wq = self.weight_quant.fake_quant(self.weight, s_w)
        # while calibrating the input is not quantized and has no scale yet, so the bias stays float
        if bias is not None and fmt.activation.is_int and not self.input_quant.calibrating:
            bias = _RoundSTE.apply(bias, self._bias_scale(s_w), *INT32_RANGE)
        return xq, wq, bias

    def _bias_scale(self, s_w: Tensor) -> Tensor:
        s_in, _ = self.input_quant.qparams()
        return s_w.reshape(-1) * s_in  # float32 product, as the exported DequantizeLinear scale

    def bias_scale(self) -> Tensor:
        """int32 bias scale per output channel: s_input * s_weight[c], shape (C_out,)."""
        return self._bias_scale(self.weight_quant.scale(self.weight)).detach()


class FakeQuantConv1d(FakeQuantMixin, nn.Conv1d):
    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(*self.quantized_operands(x))


class FakeQuantConv2d(FakeQuantMixin, nn.Conv2d):
    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(*self.quantized_operands(x))


# nn.Linear types ``bias`` as a Parameter although it may be None; the mixin says so
class FakeQuantLinear(FakeQuantMixin, nn.Linear):  # type: ignore[misc]
    def forward(self, x: Tensor) -> Tensor:
        return F.linear(*self.quantized_operands(x))


class FakeQuantConv3d(FakeQuantMixin, nn.Conv3d):
    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(*self.quantized_operands(x))


class _FakeQuantConvTransposeNd(FakeQuantMixin):
    """The forward of nn.ConvTranspose{1,2,3}d with quantized operands."""

    _spatial_dims: int
    _functional: Any

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        conv = cast(nn.modules.conv._ConvTransposeNd, self)
        padding = cast(tuple[int, ...], conv.padding)  # transposed convs take no "same"/"valid" padding
        output_padding = conv._output_padding(
            x, output_size, list(conv.stride), list(padding), list(conv.kernel_size), self._spatial_dims,
            list(conv.dilation),
        )
        xq, wq, bias = self.quantized_operands(x)
        return cast(Tensor, type(self)._functional(
            xq, wq, bias, conv.stride, padding, output_padding, conv.groups, conv.dilation
        ))


class FakeQuantConvTranspose1d(_FakeQuantConvTransposeNd, nn.ConvTranspose1d):
    _spatial_dims = 1
    _functional = staticmethod(F.conv_transpose1d)


class FakeQuantConvTranspose2d(_FakeQuantConvTransposeNd, nn.ConvTranspose2d):
    _spatial_dims = 2
    _functional = staticmethod(F.conv_transpose2d)


class FakeQuantConvTranspose3d(_FakeQuantConvTransposeNd, nn.ConvTranspose3d):
    _spatial_dims = 3
    _functional = staticmethod(F.conv_transpose3d)


_SWAP: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv1d: FakeQuantConv1d,
    nn.Conv2d: FakeQuantConv2d,
    nn.Conv3d: FakeQuantConv3d,
    nn.Linear: FakeQuantLinear,
    nn.ConvTranspose1d: FakeQuantConvTranspose1d,
    nn.ConvTranspose2d: FakeQuantConvTranspose2d,
    nn.ConvTranspose3d: FakeQuantConvTranspose3d,
}

_CONV_TRANSPOSE = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _out_channel_axis(module: nn.Module) -> int:
    # ConvTranspose weights are (C_in, C_out/groups, k...); per-output-channel scales along dim 1
    # only hold for groups == 1.
    if isinstance(module, _CONV_TRANSPOSE):
        if module.groups != 1:
            raise QuantizationError(
                f"layer kind: grouped {type(module).__name__} (groups={module.groups}) is not supported; "
                "allowed: groups=1")
        return 1
    return 0


def _copy_attributes(src: nn.Module, dst: nn.Module) -> None:
    """Copy ``src``'s plain attributes onto a freshly ``nn.Module.__init__``-ed ``dst``, including
    private ones the layer's forward needs (e.g. Conv's ``_reversed_padding_repeated_twice`` for
    non-zero padding modes), but not nn.Module's own bookkeeping (hooks, registries)."""
    fresh = set(dst.__dict__)
    dst.__dict__.update({k: v for k, v in src.__dict__.items() if not k.startswith("_") or k not in fresh})


def to_fake_quant(module: nn.Module, fmt: LayerFormat, method: RangeMethod) -> nn.Module:
    """A fake-quant copy of ``module`` sharing its parameters (module swap, as torchao's
    ``FakeQuantizedLinear.from_linear``)."""
    cls = _SWAP.get(type(module))
    if cls is None:
        raise QuantizationError(f"layer kind: {type(module).__name__} cannot be quantized")
    new = cls.__new__(cls)
    nn.Module.__init__(new)
    _copy_attributes(module, new)
    new._parameters = module._parameters
    new._buffers = module._buffers
    new.training = module.training
    cast(FakeQuantMixin, new)._init_quant(fmt, method, _out_channel_axis(module))
    new.to(cast(Tensor, module.weight).device)
    return new


def to_float(module: nn.Module) -> nn.Module:
    """The plain float module back, with the (trained) parameters."""
    for plain, quant in _SWAP.items():
        if type(module) is quant:
            new = plain.__new__(plain)
            nn.Module.__init__(new)
            _copy_attributes(module, new)
            for attr in ("layer_format",):
                new.__dict__.pop(attr, None)
            new._parameters = module._parameters
            new._buffers = module._buffers
            new.training = module.training
            return new
    return module


def _set_submodule(root: nn.Module, fqn: str, module: nn.Module) -> None:
    parent_name, _, child = fqn.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


# ---------------------------------------------------------------------------------------------
# BatchNorm folding
# ---------------------------------------------------------------------------------------------


def _conv_bn_pairs_fx(model: nn.Module) -> list[tuple[str, str]] | None:
    try:
        traced = torch.fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - untraceable models fall back to Sequential adjacency
        return None
    modules = dict(model.named_modules())
    pairs = []
    for node in traced.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.modules.batchnorm._BatchNorm):
            continue
        src = node.args[0]
        if (
            isinstance(src, torch.fx.Node)
            and src.op == "call_module"
            and isinstance(modules.get(src.target), (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))
            and len(src.users) == 1
        ):
            pairs.append((str(src.target), str(node.target)))
    return pairs


def _conv_bn_pairs_sequential(model: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (a_name, a), (b_name, b) in itertools.pairwise(children):
            if isinstance(a, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and isinstance(
                    b, nn.modules.batchnorm._BatchNorm):
                prefix = f"{name}." if name else ""
                pairs.append((prefix + a_name, prefix + b_name))
    return pairs


def fold_batchnorm(model: nn.Module) -> list[tuple[str, str]]:
    """Fold every BatchNorm that directly follows a conv/linear into it (in place, eval
    statistics), replacing the BatchNorm with ``nn.Identity``.  QAT then trains the folded
    weights, so the trained weights are the deployed weights.  Returns the folded (layer, bn) fqns.
    """
    pairs = _conv_bn_pairs_fx(model)
    if pairs is None:
        pairs = _conv_bn_pairs_sequential(model)
    for layer_fqn, bn_fqn in pairs:
        layer = model.get_submodule(layer_fqn)
        bn = cast(nn.modules.batchnorm._BatchNorm, model.get_submodule(bn_fqn))  # the pair finders match BN only
        fused: nn.Module
        if isinstance(layer, nn.Linear):
            fused = torch.nn.utils.fusion.fuse_linear_bn_eval(layer.eval(), bn.eval())
        else:
            fused = torch.nn.utils.fusion.fuse_conv_bn_eval(cast(nn.modules.conv._ConvNd, layer).eval(), bn.eval())
        fused.train(model.training)
        _set_submodule(model, layer_fqn, fused)
        _set_submodule(model, bn_fqn, nn.Identity())
    return pairs


# ---------------------------------------------------------------------------------------------
# Whole-model API
# ---------------------------------------------------------------------------------------------

OUTPUT_QUANT_ATTR = "mixq_output_quant"  # the "mixq_" prefix is mixq's: the ONNX importer never gives it a node


def _quantize_output_hook(module: nn.Module, args: Any, output: Any) -> Any:
    quant = getattr(module, OUTPUT_QUANT_ATTR, None)
    if quant is None or not isinstance(output, Tensor):
        return output
    return quant(output)


def quantize_model(
    model: nn.Module,
    qmap: Mapping[str, LayerFormat],
    example_inputs: Any,
    *,
    range_method: RangeMethod | str = RangeMethod.MINMAX,
    fold_bn: bool = True,
    quantize_output: bool = True,
    graph: LayerGraph | None = None,
) -> nn.Module:
    """Swap every layer named in ``qmap`` for its fake-quant version, in place.

    Layers not named stay fp32.  With ``quantize_output`` the model's output tensor is quantized
    at the activation format of the last executed layer (it feeds video or another device); a model
    that returns several tensors keeps its outputs float.
    Returns ``model``.
    """
    method = RangeMethod(range_method)
    prepare_model(model)  # nn.MultiheadAttention -> Linears (a no-op when the workload already did it)
    if fold_bn:
        fold_batchnorm(model)
    graph = graph or discover_layers(model, example_inputs)
    known = set(graph.fqns)
    unknown = sorted(set(qmap) - known)
    if unknown:
        unused = f" ({unknown[0]!r} never runs on the example inputs)" if unknown[0] in graph.unused else ""
        raise QuantizationError(
            f"layers: {unknown[0]!r} is not a quantizable layer of this model{unused}; "
            f"known layers: {', '.join(graph.fqns[:12])}{' ...' if len(graph.fqns) > 12 else ''}"
        )
    for fqn, fmt in qmap.items():
        module = model.get_submodule(fqn)
        if isinstance(module, FakeQuantMixin):
            raise QuantizationError(f"layers: {fqn!r} is already quantized")
        if fmt.is_identity:
            continue
        _set_submodule(model, fqn, to_fake_quant(module, fmt, method))
    last_fmt = qmap.get(graph.last.fqn, LayerFormat(FP32, FP32)).activation
    # a model returning several tensors (detection heads, ...) keeps them float: one quantizer cannot
    # serve outputs of different ranges
    if quantize_output and graph.output_is_tensor and not last_fmt.is_identity:
        existing = getattr(model, OUTPUT_QUANT_ATTR, None)
        if existing is not None and not isinstance(existing, ActivationQuantizer):
            # the model's own attribute would be silently replaced (and its layer with it)
            raise QuantizationError(
                f"model: has its own attribute {OUTPUT_QUANT_ATTR!r} ({type(existing).__name__}); mixq reserves "
                "names beginning with 'mixq_' for its quantizers: rename it"
            )
        model.add_module(OUTPUT_QUANT_ATTR, ActivationQuantizer(last_fmt, method))
        # an nn.Sequential runs every child, so the new child already is its last step; any other
        # root gets a forward hook (a hook on a Sequential would quantize the output twice)
        if not isinstance(model, nn.Sequential):
            model.register_forward_hook(_quantize_output_hook)
    return model


def activation_quantizers(model: nn.Module) -> Iterator[tuple[str, ActivationQuantizer]]:
    for fqn, module in model.named_modules():
        if isinstance(module, ActivationQuantizer):
            yield fqn, module


def fake_quant_layers(model: nn.Module) -> Iterator[tuple[str, FakeQuantMixin]]:
    for fqn, module in model.named_modules():
        if isinstance(module, FakeQuantMixin):
            yield fqn, module


@contextmanager
def calibrating(model: nn.Module) -> Iterator[None]:
    """Observe activation ranges (no quantization) inside the block, then fix the qparams."""
    quantizers = [q for _, q in activation_quantizers(model) if q.fmt.is_int]
    for q in quantizers:
        q.calibrating = True
    try:
        yield
    finally:
        for q in quantizers:
            q.calibrating = False
    for q in quantizers:
        q.finish_calibration()


def calibrate(model: nn.Module, batches: Iterable[Any]) -> None:
    """Run ``batches`` (inputs, or (inputs, target) pairs) through the model to set the ranges."""
    was_training = model.training
    model.eval()
    with torch.no_grad(), calibrating(model):
        for batch in batches:
            inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(inputs)
    model.train(was_training)


def dequantize_model(model: nn.Module) -> nn.Module:
    """Swap fake-quant layers back to plain float layers (trained weights kept), in place."""
    for fqn, module in list(fake_quant_layers(model)):
        _set_submodule(model, fqn, to_float(module))  # type: ignore[arg-type]
    if hasattr(model, OUTPUT_QUANT_ATTR):
        delattr(model, OUTPUT_QUANT_ATTR)
    for key, hook in list(model._forward_hooks.items()):
        if hook is _quantize_output_hook:  # else quantize_model would add a second one
            del model._forward_hooks[key]
    return model


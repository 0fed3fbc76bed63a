"""ONNX export of a mixq fake-quant model as a standard QDQ graph, and a check against onnxruntime.

Every fake-quant point of the model becomes real ``QuantizeLinear``/``DequantizeLinear`` (opset 21):

==================== ===========================================================================
fake-quant point     in the graph
==================== ===========================================================================
int weight           INT4/INT8 initializer ``<fqn>.weight_quantized`` holding the integer codes,
                     per-channel ``<fqn>.weight_scale`` (float32, one per output channel) and
                     ``<fqn>.weight_zero_point`` (zeros), ``DequantizeLinear(axis=<out axis>)``
int input activation ``QuantizeLinear`` -> ``DequantizeLinear`` with ``<fqn>.input_scale`` and a
                     UINT4/UINT8 ``<fqn>.input_zero_point`` as calibrated
int32 bias           INT32 initializer ``<fqn>.bias_quantized`` and ``DequantizeLinear(axis=0)``
                     with scale ``s_in * s_w[c]`` (the float32 values of
                     :meth:`~search.quant.qat.FakeQuantMixin.bias_scale`)
fp16 weight/bias     FLOAT16 initializer -> ``Cast(to=FLOAT)``
fp16 activation      ``Cast(to=FLOAT16)`` -> ``Cast(to=FLOAT)``
model output         ``QuantizeLinear`` -> ``DequantizeLinear`` (``mixq_output_quant.scale`` ...)
==================== ===========================================================================

Why the numbers agree: the fake-quant engine (:mod:`search.quant.qat`) computes ``round_half_even(x /
scale)`` with a true division and then clamps, which is the ONNX definition and what
onnxruntime's CPU kernels do (checked in ``tests/search/test_export_onnx.py``).  Weight and bias
codes are computed here with the engine's own :func:`search.quant.qat.quantize`, so the initializers
hold exactly the codes the fake-quant forward pass used, and ``DequantizeLinear`` multiplies them by
the same float32 scales.  What can differ is only the float summation order inside Conv/Gemm
(torch vs onnxruntime), i.e. float rounding level; where a sum lands within that distance of a
rounding boundary, the next quantizer can pick the neighbouring code, and the difference can reach
the output as one step (rare: on the digits workload 0 to 4 of 5970 outputs, depending on the
trial; none when all scales are powers of two and the sums are exact).  :func:`verify_onnx` runs
onnxruntime with graph optimizations off (``ORT_DISABLE_ALL``), the QDQ definition; with the default
options (``ORT_ENABLE_ALL``, what deployment scripts use) its QDQ fusions run 8-bit Conv/Gemm as
integer kernels that requantize in their own way, so outputs can differ by a few output steps more
(``verify_onnx(..., optimized=True)`` measures it).  The graph loads with the defaults: a 4-bit activation fed
by ``MaxPool`` (``ReduceMax``/``ReduceMin``, also through reshapes) gets a one-input ``Max``
in front of its ``QuantizeLinear`` (:func:`_keep_4bit_off_pools`).

How: torch's exporters refuse 4-bit fake-quant ranges, so the model is exported with the
TorchScript exporter (``dynamo=False``) while every quantizer is temporarily replaced by a marker
(an ``autograd.Function`` whose ``symbolic`` emits a ``mixq::Marker`` node naming the quant point);
the marker nodes are then rewritten with the ``onnx`` package into the standard nodes above.  The
result passes ``onnx.checker.check_model(full_check=True)`` and has no custom-domain node.

The model's metadata (``metadata_props``) carries ``mixq.formats``: a JSON object fqn -> layer format
name for every fake-quant layer.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import Tensor, nn

from search.errors import ExportError as ExportError
from search.quant.formats import TensorFormat
from search.quant.qat import (
    INT32_RANGE,
    OUTPUT_QUANT_ATTR,
    ActivationQuantizer,
    FakeQuantMixin,
    WeightQuantizer,
    quantize,
)

MARKER_DOMAIN = "mixq"
DEFAULT_OPSET = 21
MIN_OPSET_INT4 = 21  # INT4/UINT4 tensors and their Q/DQ appeared in opset 21
MIN_OPSET = 13  # per-axis DequantizeLinear



# ---------------------------------------------------------------------------------------------
# Quantization points
# ---------------------------------------------------------------------------------------------


@dataclass
class _Point:
    """One fake-quant point and the tensors the rewritten graph needs for it."""

    key: str  # tensor-name prefix in the graph, e.g. "features.0.input"
    kind: str  # "act_int" | "act_fp16" | "const_int" | "const_fp16"
    initializers: list[TensorProto] = field(default_factory=list)
    axis: int | None = None  # per-channel axis of a constant


def _int_dtype(bits: int, signed: bool) -> tuple[Any, int]:
    if bits == 4:
        return (ml_dtypes.int4, TensorProto.INT4) if signed else (ml_dtypes.uint4, TensorProto.UINT4)
    if bits == 8:
        return (np.int8, TensorProto.INT8) if signed else (np.uint8, TensorProto.UINT8)
    raise ExportError(f"format: no ONNX integer type for {bits}-bit tensors")


def _tensor(array: np.ndarray, name: str) -> TensorProto:
    # np.array(copy, order="C") keeps 0-d arrays 0-d (ascontiguousarray would make them 1-d, and a
    # per-tensor scale must be a scalar)
    return numpy_helper.from_array(np.array(array, order="C"), name)


def _activation_point(key: str, quant: ActivationQuantizer, where: str) -> _Point | None:
    fmt: TensorFormat = quant.fmt
    if fmt.is_identity:
        return None
    if not fmt.is_int:
        return _Point(key, "act_fp16")
    if not bool(quant.initialized):
        raise ExportError(
            f"{where}: the activation quantizer was never calibrated; run search.calibrate (or a "
            "forward pass) before export"
        )
    scale, zero_point = quant.qparams()
    qmin, qmax = fmt.activation_range()
    if not qmin <= zero_point <= qmax:
        raise ExportError(f"{where}: zero point {zero_point} outside [{qmin}, {qmax}]")
    np_dtype, _ = _int_dtype(fmt.bits, signed=False)
    return _Point(
        key, "act_int",
        initializers=[
            # qparams() returns the float32 scale as a Python float: the round trip is exact
            _tensor(np.array(scale, dtype=np.float32), f"{key}_scale"),
            _tensor(np.array(zero_point).astype(np_dtype), f"{key}_zero_point"),
        ],
    )


def _weight_point(key: str, layer: FakeQuantMixin) -> _Point | None:
    quant: WeightQuantizer = layer.weight_quant
    weight = layer.weight.detach()
    fmt = quant.fmt
    if fmt.is_identity:
        return None
    if not fmt.is_int:
        return _Point(key, "const_fp16", [_tensor(weight.to(torch.float16).cpu().numpy(), f"{key}_fp16")])
    qmin, qmax = fmt.weight_range()
    scale = quant.scale(weight)  # shaped to broadcast against the weight, as the forward pass uses it
    # the engine's own quantize(): the codes are exactly those the fake-quant forward rounded to
    codes = quantize(weight, scale, weight.new_zeros(()), qmin, qmax)
    np_dtype, _ = _int_dtype(fmt.bits, signed=True)
    channels = scale.numel()
    return _Point(
        key, "const_int", axis=quant.axis,
        initializers=[
            _tensor(codes.cpu().numpy().astype(np.int8).astype(np_dtype), f"{key}_quantized"),
            _tensor(scale.reshape(-1).cpu().numpy().astype(np.float32), f"{key}_scale"),
            _tensor(np.zeros(channels, dtype=np_dtype), f"{key}_zero_point"),
        ],
    )


def _bias_point(key: str, layer: FakeQuantMixin) -> _Point | None:
    """Mirrors the bias branch of :meth:`FakeQuantMixin.quantized_operands`."""
    bias = layer.bias
    fmt = layer.layer_format
    if bias is None:
        return None
    bias = bias.detach()
    if fmt.weight.is_int and fmt.activation.is_int:
        scale = layer.bias_scale()
        codes = quantize(bias, scale, bias.new_zeros(()), *INT32_RANGE)
        return _Point(
            key, "const_int", axis=0,
            initializers=[
                # clip in int64: the engine clamps in float32, where 2**31 - 1 rounds up to 2**31 (only
                # reachable when s_in * s_w[c] underflows, e.g. a channel whose weights are all 0)
                _tensor(np.clip(codes.cpu().double().numpy(), *INT32_RANGE).astype(np.int32), f"{key}_quantized"),
                _tensor(scale.cpu().numpy().astype(np.float32), f"{key}_scale"),
                _tensor(np.zeros(scale.numel(), dtype=np.int32), f"{key}_zero_point"),
            ],
        )
    if not fmt.weight.is_identity and not fmt.weight.is_int:
        return _Point(key, "const_fp16", [_tensor(bias.to(torch.float16).cpu().numpy(), f"{key}_fp16")])
    return None


# ---------------------------------------------------------------------------------------------
# Export with markers
# ---------------------------------------------------------------------------------------------


class _Marker(torch.autograd.Function):
    """Identity in torch; a ``mixq::Marker`` node naming its quant point in the exported graph."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, key: str) -> Tensor:
        return x.clone()

    @staticmethod
    def symbolic(g: Any, x: Any, key: str) -> Any:
        return g.op(f"{MARKER_DOMAIN}::Marker", x, key_s=key).setType(x.type())


def _mark(x: Tensor, point: _Point | None) -> Tensor:
    return x if point is None else _Marker.apply(x, point.key)


def _marked_operands(
    layer: FakeQuantMixin, points: dict[str, _Point | None], fqn: str
) -> Callable[[Tensor], tuple[Tensor, Tensor, Tensor | None]]:
    def quantized_operands(x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        bias = layer.bias
        return (
            _mark(x, points[f"{fqn}.input"]),
            _mark(layer.weight, points[f"{fqn}.weight"]),
            None if bias is None else _mark(bias, points[f"{fqn}.bias"]),
        )

    return quantized_operands


def _collect_points(model: nn.Module) -> tuple[dict[str, _Point | None], dict[str, str]]:
    points: dict[str, _Point | None] = {}
    formats: dict[str, str] = {}
    covered: set[int] = set()
    for fqn, module in model.named_modules():
        if not isinstance(module, FakeQuantMixin):
            continue
        formats[fqn] = module.layer_format.name
        points[f"{fqn}.input"] = _activation_point(f"{fqn}.input", module.input_quant, f"layers.{fqn}.input")
        points[f"{fqn}.weight"] = _weight_point(f"{fqn}.weight", module)
        points[f"{fqn}.bias"] = _bias_point(f"{fqn}.bias", module)
        covered.update({id(module.input_quant), id(module.weight_quant)})
    out_quant = getattr(model, OUTPUT_QUANT_ATTR, None)
    if isinstance(out_quant, ActivationQuantizer):
        points[OUTPUT_QUANT_ATTR] = _activation_point(OUTPUT_QUANT_ATTR, out_quant, "output")
        covered.add(id(out_quant))
    stray = [fqn for fqn, m in model.named_modules() if isinstance(m, (ActivationQuantizer, WeightQuantizer))
             and id(m) not in covered]
    if stray:
        raise ExportError(f"model: quantizer {stray[0]!r} is not part of a mixq layer or the model output")
    return points, formats


@contextmanager
def _markers_installed(model: nn.Module, points: dict[str, _Point | None]) -> Iterator[None]:
    """Replace every quantizer by a marker for the duration of the export (instance attributes,
    removed afterwards, so the model is left exactly as it was)."""
    patched: list[tuple[object, str]] = []
    try:
        for fqn, module in model.named_modules():
            if isinstance(module, FakeQuantMixin):
                module.quantized_operands = _marked_operands(module, points, fqn)  # type: ignore[method-assign,assignment]
                patched.append((module, "quantized_operands"))
        out_quant = getattr(model, OUTPUT_QUANT_ATTR, None)
        if isinstance(out_quant, ActivationQuantizer):
            point = points[OUTPUT_QUANT_ATTR]
            out_quant.forward = lambda x: _mark(x, point)  # type: ignore[method-assign]
            patched.append((out_quant, "forward"))
        yield
    finally:
        for module, attr in patched:
            module.__dict__.pop(attr, None)


def _as_tuple(example_inputs: Any) -> tuple[Any, ...]:
    return example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)


def _spatial_dims(t: Tensor) -> list[int]:
    """Dimensions after (batch, channels): the spatial/time axes of a conv-style input."""
    return list(range(2, t.dim())) if t.dim() >= 3 else []


def _probe_inputs(inputs: tuple[Any, ...]) -> tuple[Any, ...]:
    """The example inputs tiled to twice their spatial size (same values, so the same ranges)."""
    return tuple(
        t.repeat(1, 1, *[2] * (t.dim() - 2)) if isinstance(t, Tensor) and _spatial_dims(t) else t for t in inputs
    )


@dataclass(frozen=True)
class _Axes:
    """``dynamic_axes`` for the TorchScript exporter: graph tensor name -> {dim: symbolic name}."""

    by_name: dict[str, dict[int, str]]

    def describe(self) -> dict[str, list[str]]:
        return {name: [axes[d] for d in sorted(axes)] for name, axes in self.by_name.items() if axes}


def _dynamic_axes(
    inputs: tuple[Any, ...], outputs: list[Tensor], probe_outputs: list[Tensor] | None, dynamic_batch: bool
) -> _Axes:
    """Batch (dim 0) where asked; with ``probe_outputs`` also every input's spatial dims and each
    output dim that changed with them."""
    tensors = [t for t in inputs if isinstance(t, Tensor)]
    axes: dict[str, dict[int, str]] = {}
    for i, t in enumerate(tensors):
        dims = {0: "batch"} if dynamic_batch else {}
        if probe_outputs is not None:
            dims |= {d: f"input_{i}_dim{d}" for d in _spatial_dims(t)}
        axes[f"input_{i}"] = dims
    for i, out in enumerate(outputs):
        dims = {0: "batch"} if dynamic_batch and out.dim() else {}
        if probe_outputs is not None:
            dims |= {d: f"output_{i}_dim{d}" for d in range(1, out.dim()) if out.shape[d] != probe_outputs[i].shape[d]}
        axes[f"output_{i}"] = dims
    return _Axes(axes)


def _torch_export(model: nn.Module, inputs: tuple[Any, ...], opset: int, axes: _Axes) -> onnx.ModelProto:
    buffer = io.BytesIO()
    in_names = [f"input_{i}" for i, t in enumerate(t for t in inputs if isinstance(t, Tensor))]
    out_names = [f"output_{i}" for i in range(len(_flatten(model(*inputs))))]
    with warnings.catch_warnings():
        # the TorchScript exporter is deprecated but is the one that accepts custom symbolics
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, inputs, buffer,  # type: ignore[arg-type]  # the TorchScript exporter writes to file objects too
            dynamo=False, opset_version=opset,
            input_names=in_names, output_names=out_names, dynamic_axes=axes.by_name or None,
            custom_opsets={MARKER_DOMAIN: 1}, do_constant_folding=True,
        )
    return onnx.load_from_string(buffer.getvalue())


# ---------------------------------------------------------------------------------------------
# Graph rewrite
# ---------------------------------------------------------------------------------------------


def _replacement(point: _Point, src: str, dst: str, name: str) -> list[onnx.NodeProto]:
    """Standard nodes for one marker: initializers are named after ``point.key``, nodes and
    intermediate tensors after ``name`` (the same, unless the point occurs more than once)."""
    key = point.key
    if point.kind == "act_int":
        q = f"{name}_q"
        return [
            helper.make_node("QuantizeLinear", [src, f"{key}_scale", f"{key}_zero_point"], [q], name=f"{name}/Q"),
            helper.make_node("DequantizeLinear", [q, f"{key}_scale", f"{key}_zero_point"], [dst], name=f"{name}/DQ"),
        ]
    if point.kind == "act_fp16":
        half = f"{name}_fp16"
        return [
            helper.make_node("Cast", [src], [half], to=TensorProto.FLOAT16, name=f"{name}/ToHalf"),
            helper.make_node("Cast", [half], [dst], to=TensorProto.FLOAT, name=f"{name}/ToFloat"),
        ]
    if point.kind == "const_int":
        return [helper.make_node(
            "DequantizeLinear", [f"{key}_quantized", f"{key}_scale", f"{key}_zero_point"], [dst],
            axis=point.axis, name=f"{name}/DQ",
        )]
    if point.kind == "const_fp16":
        return [helper.make_node("Cast", [f"{key}_fp16"], [dst], to=TensorProto.FLOAT, name=f"{name}/ToFloat")]
    raise AssertionError(point.kind)


# onnxruntime's QDQ propagation carries a Q backward across these (and its DropQDQ rule then runs the op on
# the integer tensor): MaxPool, ReduceMax and ReduceMin have no 4-bit types; the others pass a 4-bit tensor
# through (they have 4-bit types) and on to what produced their input.  Flatten is not among them
# (onnxruntime 1.32 leaves MaxPool -> Flatten -> Q(uint4) alone: tested)
_NO_4BIT = frozenset({"MaxPool", "ReduceMax", "ReduceMin"})
_PASS_THROUGH = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze"})


def _keep_4bit_off_pools(nodes: list[onnx.NodeProto], points: dict[str, _Point | None]) -> list[onnx.NodeProto]:
    """Put a one-input ``Max`` (an identity) in front of a 4-bit activation's ``QuantizeLinear`` fed by a
    ``MaxPool`` (``ReduceMax``, ``ReduceMin``), directly or through reshapes and transposes.

    With default session options (``ORT_ENABLE_ALL``), onnxruntime rewrites ``MaxPool -> Q(uint4) -> DQ``
    into ``Q -> MaxPool -> DQ`` (exact for 8 bits, max commutes with a monotone quantizer), and the graph
    then fails to load: ``Type 'tensor(uint4)' of input parameter ... of operator (MaxPool) ... is
    invalid``.  The identity ``Max`` stops the propagation (onnxruntime 1.32 neither eliminates it nor
    propagates across it; Identity, Cast and ``Add 0`` are eliminated first), so the pool runs in float
    on the dequantized values, which is what the fake-quant model computes.  8-bit points are left to
    onnxruntime's fusions."""
    producer = {out: node for node in nodes for out in node.output}

    def reaches_a_pool(tensor: str) -> bool:
        source = producer.get(tensor)
        while source is not None and source.op_type in _PASS_THROUGH and source.input:
            source = producer.get(source.input[0])
        return source is not None and source.op_type in _NO_4BIT

    four_bit = {f"{k}_zero_point" for k, p in points.items() if p is not None and p.kind == "act_int"
                and any(i.name == f"{k}_zero_point" and i.data_type == TensorProto.UINT4 for i in p.initializers)}
    out: list[onnx.NodeProto] = []
    for node in nodes:
        if (node.op_type == "QuantizeLinear" and len(node.input) > 2 and node.input[2] in four_bit
                and reaches_a_pool(node.input[0])):
            kept = f"{node.name}_float"
            out.append(helper.make_node("Max", [node.input[0]], [kept], name=f"{node.name}/KeepFloat"))
            node.input[0] = kept
        out.append(node)
    return out


def _rewrite(proto: onnx.ModelProto, points: dict[str, _Point | None], opset: int) -> onnx.ModelProto:
    graph = proto.graph
    new_nodes: list[onnx.NodeProto] = []
    count: dict[str, int] = {}
    for node in graph.node:
        if node.domain != MARKER_DOMAIN:
            new_nodes.append(node)
            continue
        key = helper.get_attribute_value(node.attribute[0]).decode()
        point = points.get(key)
        n = count.get(key, 0)
        # a layer's quantizers run once per forward (layers.py rejects shared layers).  The output
        # quantizer of an nn.Sequential root is also a child of the Sequential, so it runs as its
        # last step and again in the output hook: the graph then repeats what the model does.
        if point is None or (n and key != OUTPUT_QUANT_ATTR):
            raise ExportError(f"export: unexpected marker {key!r} (a quant point ran twice or never registered)")
        count[key] = n + 1
        new_nodes.extend(_replacement(point, node.input[0], node.output[0], key if n == 0 else f"{key}_{n}"))
        if n == 0:
            graph.initializer.extend(point.initializers)
    # the output quantizer only acts on a single-tensor output (see qat._quantize_output_hook)
    seen = set(count)
    missing = sorted(k for k, p in points.items() if p is not None and k not in seen and k != OUTPUT_QUANT_ATTR)
    if missing:
        raise ExportError(f"export: quant point {missing[0]!r} did not run on the example inputs")
    del graph.node[:]
    graph.node.extend(_keep_4bit_off_pools(new_nodes, points))
    # the exporter's shape annotations of intermediate tensors hold the example's sizes (a marker
    # copies its input's traced type); onnxruntime would enforce them on dynamic axes, so drop them
    del graph.value_info[:]

    # float weights now only feed nothing: drop the initializers no node reads any more
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    keep = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)

    del proto.opset_import[:]
    proto.opset_import.extend([helper.make_opsetid("", opset)])
    proto.ir_version = max(proto.ir_version, 10)  # IR 10 is the first with INT4/UINT4
    return proto


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


class StaticShapesWarning(UserWarning):
    """Dynamic spatial axes were asked for but the model does not allow them; exported static."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def export_onnx(
    model: nn.Module, example_inputs: Any, path: str | Path, *, opset: int = DEFAULT_OPSET, dynamic_batch: bool = True,
    dynamic_spatial: bool = True,
) -> Path:
    """Write ``model`` (a calibrated/trained mixq fake-quant model) to ``path`` as a QDQ ONNX graph.

    ``example_inputs`` is a tensor or a tuple of positional inputs; the graph's inputs are named
    ``input_0, input_1, ...`` and its outputs ``output_0, ...``; with ``dynamic_batch`` dimension 0
    of each is left free.  With ``dynamic_spatial`` the dimensions after (batch, channels) of every
    input of rank >= 3 are left free too, if the model allows it: the model must run in torch on the
    example inputs tiled to twice their size, and the exported graph in onnxruntime, with the same
    output shapes; otherwise the graph is static in them and a :class:`StaticShapesWarning` says
    why.  The metadata key ``mixq.dynamic_axes`` lists the free axes.  The model is exported in eval
    mode and left as it was.
    """
    inputs = _as_tuple(example_inputs)
    points, formats = _collect_points(model)
    uses_4bit = any(
        init.data_type in (TensorProto.INT4, TensorProto.UINT4)
        for p in points.values() if p is not None for init in p.initializers
    )
    if opset < MIN_OPSET or (uses_4bit and opset < MIN_OPSET_INT4):
        need = MIN_OPSET_INT4 if uses_4bit else MIN_OPSET
        raise ExportError(f"opset: this model needs opset >= {need}" + (" (4-bit tensors)" if uses_4bit else ""))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outputs = _flatten(model(*inputs))
            probe = _probe_inputs(inputs) if dynamic_spatial else inputs
            probe_outputs: list[Tensor] | None = None
            reason = None
            if probe is not inputs and any(p is not t for p, t in zip(probe, inputs, strict=True)):
                try:
                    probe_outputs = _flatten(model(*probe))
                except Exception as exc:  # noqa: BLE001 - any failure at another size means "static"
                    reason = f"the model fails on inputs of twice the example size ({_first_line(exc)})"
                reason = reason or _batch_changed(outputs, probe_outputs)
                if reason is not None:
                    probe_outputs = None
            proto = _export_rewritten(model, inputs, points, formats, opset,
                                      _dynamic_axes(inputs, outputs, probe_outputs, dynamic_batch))
            if probe_outputs is not None:
                reason = _onnxruntime_mismatch(proto, probe, probe_outputs)
                if reason is not None:
                    proto = _export_rewritten(model, inputs, points, formats, opset,
                                              _dynamic_axes(inputs, outputs, None, dynamic_batch))
    finally:
        model.train(was_training)
    if reason is not None:
        warnings.warn(f"export: spatial axes left static: {reason}", StaticShapesWarning, stacklevel=2)
    path = Path(path)
    onnx.save(proto, path)
    return path


def _export_rewritten(
    model: nn.Module, inputs: tuple[Any, ...], points: dict[str, _Point | None], formats: dict[str, str], opset: int,
    axes: _Axes,
) -> onnx.ModelProto:
    with _markers_installed(model, points):
        proto = _torch_export(model, inputs, opset, axes)
    proto = _rewrite(proto, points, opset)
    helper.set_model_props(proto, {"mixq.formats": json.dumps(formats, sort_keys=True),
                                   "mixq.dynamic_axes": json.dumps(axes.describe(), sort_keys=True)})
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _batch_changed(outputs: list[Tensor], probe_outputs: list[Tensor] | None) -> str | None:
    """Why the model is not shape-polymorphic along its spatial axes although it runs at the probe size: an
    output's batch dimension changed with them (a Flatten/Reshape to a fixed width folds the extra pixels
    into more rows: a Conv -> Flatten -> Linear model at twice the size returns 4 rows per sample)."""
    for i, (want, have) in enumerate(zip(outputs, probe_outputs or [], strict=False)):
        if want.dim() and (have.dim() != want.dim() or have.shape[0] != want.shape[0]):
            return (f"output_{i} has {tuple(have.shape)[:1]} rows at twice the example size, "
                    f"{tuple(want.shape)[:1]} at the example size: the model is not shape-polymorphic there")
    return None


def _onnxruntime_mismatch(proto: onnx.ModelProto, probe: tuple[Any, ...], probe_outputs: list[Tensor]) -> str | None:
    """Why the graph does not run at the probe size like the model does, or None if it does."""
    session = onnxruntime_session(proto)
    tensors = [t for t in probe if isinstance(t, Tensor)]
    names = {i.name for i in session.get_inputs()}
    feed = {f"input_{i}": t.detach().cpu().numpy() for i, t in enumerate(tensors) if f"input_{i}" in names}
    try:
        got = session.run(None, feed)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own error types; any of them means "static"
        return f"the exported graph fails in onnxruntime at twice the example size ({_first_line(exc)})"
    for i, (want, have) in enumerate(zip(probe_outputs, got, strict=True)):
        if tuple(want.shape) != tuple(have.shape):
            return f"output_{i} has shape {tuple(have.shape)} in onnxruntime, {tuple(want.shape)} in torch"
    return None


def onnxruntime_session(
    model: str | Path | bytes | onnx.ModelProto, *, num_threads: int = 1, optimized: bool = False
) -> Any:
    """A CPU onnxruntime session (for a path, serialized bytes or a ModelProto) with graph
    optimizations off: they fuse QDQ into integer kernels that requantize differently from the
    QDQ definition.  ``optimized``: onnxruntime's default level (``ORT_ENABLE_ALL``), as a deployment
    script opens the file."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _flatten(output: Any) -> list[Tensor]:
    if isinstance(output, Tensor):
        return [output]
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in _flatten(item)]
    if isinstance(output, dict):
        return [t for item in output.values() for t in _flatten(item)]
    raise ExportError(f"model output: cannot compare a {type(output).__name__}")


def verify_onnx(model: nn.Module, example_inputs: Any, path: str | Path, *, what: str = "model",
                optimized: bool = False) -> float:
    """Max abs difference between ``model`` (the fake-quant model, or the fp32 original it was made from:
    ``what`` names it in errors) and onnxruntime on ``example_inputs``; an :class:`ExportError` when the
    graph's outputs differ from the model's in number or shape.  ``optimized``: with onnxruntime's default
    graph optimizations, as a deployment opens it (see :func:`onnxruntime_session`)."""
    inputs = _as_tuple(example_inputs)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = _flatten(model(*inputs))
    finally:
        model.train(was_training)
    session = onnxruntime_session(path, optimized=optimized)
    tensors = [t for t in inputs if isinstance(t, Tensor)]
    feed = {f"input_{i}": t.detach().cpu().numpy() for i, t in enumerate(tensors)}
    names = {i.name for i in session.get_inputs()}
    got = session.run(None, {k: v for k, v in feed.items() if k in names})
    if len(got) != len(expected):
        raise ExportError(f"verify: the graph has {len(got)} outputs, the {what} {len(expected)}")
    diff = 0.0
    for want, have in zip(expected, got, strict=True):
        want_np = want.detach().cpu().float().numpy()
        if want_np.shape != have.shape:
            raise ExportError(f"verify: output shape {have.shape} != the {what}'s {want_np.shape}")
        if want_np.size:
            diff = max(diff, float(np.max(np.abs(want_np.astype(np.float64) - have.astype(np.float64)))))
    return diff


__all__ = ["ExportError", "StaticShapesWarning", "export_onnx", "onnxruntime_session", "verify_onnx"]

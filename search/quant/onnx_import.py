"""An fp32 ONNX model as a torch module, without generating code: :class:`OnnxModule` holds real
``nn.Conv*`` / ``nn.Linear`` / ``nn.BatchNorm*`` submodules (so layer discovery and the module-swap QAT
find them) and its ``forward`` walks a validated list of steps.

Why not ``onnx2torch`` or an FX graph: both write Python source from the file's names; here names from
the file are never part of any source.  Tensor names are only dictionary keys; a layer's module name is
its ONNX node name with every character outside ``[A-Za-z0-9_]`` replaced by ``_`` when that gives a
strict identifier that is still free, else a generated ``<op>_<n>``; :attr:`OnnxModule.onnx_names` maps
each module name back to the node name in the file.  Protobuf parsing runs no code, external data
(a file path in the model) is refused, and only the operators in :data:`OPERATORS` are accepted, each with
the attributes listed there (any other attribute, or a value the importer does not implement, is refused
naming the node, the operator and the attribute).  Shapes are static: every graph input's dimensions are
fixed, so every value's shape is known while the module is built.

Constant folding (:mod:`search.quant.onnx.fold`): a node whose operands are constants, or a ``Shape`` /
``Size`` of any value, is computed in numpy by one fixed function per operator and becomes a constant
before the module is built; so ``Identity`` of a shared initializer is that initializer, and the
``Shape -> Gather -> Unsqueeze -> Concat`` chains of exported models give Reshape its constant target.
Operands that must be constants (Reshape's shape, Resize's scales, Pad's pads, Slice's starts...) are
constants after folding or the node is refused.  Tensor sizes the file chooses (Expand, Tile,
ConstantOfShape, Range, Resize, Pad, broadcasting) are counted before they are allocated.

Opsets 7 to 12 are converted to opset :data:`TARGET_OPSET` with ``onnx.version_converter`` (C++ on the
protobuf, no code from the file) before anything else.  The model is run once on zeros of the declared
input shapes while it is built, so a bad node fails here, naming it.

Every Conv / ConvTranspose / Gemm / MatMul whose weight is a constant is a layer (``nn.Conv*`` /
``nn.Linear``); a MatMul or Gemm of two computed values (attention's ``Q K^T`` and ``A V``) runs in float
and is listed in :attr:`OnnxModule.float_matmuls`.

The batch is axis 0 of the graph input (or its one symbolic axis whose name has ``batch``), and may be
symbolic (``dynamic_axes``; the model is then built with batch 1).  While the module is built, each step also
runs at the batch + 1 (the shadow build, :func:`load_onnx_model`): shape arithmetic (``Shape -> Gather -> Mul ->
Concat``) is folded at both batches, and a Reshape or Expand whose target follows the batch computes it from the
batch at each forward; a Reshape of a static file whose constant target keeps the batch at axis 0 follows it
too.  A model exported with a fixed batch may have that batch written into constants by the exporter: it then
runs at that batch only, :attr:`OnnxModule.fixed_batch` names the node where the batch stops following, and the
forward refuses another batch with that reason (export with a symbolic batch then).
"""

from __future__ import annotations

import keyword
import math
import re
from collections import ChainMap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import Tensor, nn

from search.errors import OnnxImportError as OnnxImportError
from search.quant.onnx.fold import (
    FOLDERS,
    fold,
    reduce_axes,
    reshape_target,
    slice_spec,
    sliced_shape,
    split_sizes,
    squeeze_axes,
    unsqueeze_axes,
)
from search.quant.onnx.node import MAX_ELEMENTS as MAX_ELEMENTS
from search.quant.onnx.node import NUMPY_TYPES, TORCH_TYPES, Node, broadcast_shape, type_name

MIN_OPSET = 13  # older files are converted (from CONVERTIBLE_OPSET on)
CONVERTIBLE_OPSET = 7
TARGET_OPSET = 17
MAX_NODES = 10_000
_IDENTIFIER_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_INPUT_TYPES = (TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32)  # int: token ids (Gather, Embedding)
_BUILD_ERRORS = (TypeError, ValueError, IndexError, KeyError, OverflowError, ZeroDivisionError, AssertionError,
                 RuntimeError)

Result = Tensor | tuple[Tensor, ...]
Runner = Callable[[nn.Module | None, list[Tensor | None]], Result]


@dataclass(frozen=True)
class _Step:
    node_name: str  # as in the file; only ever shown in messages
    inputs: tuple[str, ...]  # value names ("" for an omitted optional input)
    outputs: tuple[str, ...]  # "" for an output that is not used
    module_name: str | None  # looked up at each forward, so a module swap (QAT) takes effect
    run: Runner


class OnnxModule(nn.Module):
    """Executes the steps of an imported ONNX graph; see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.onnx_names: dict[str, str] = {}  # module name -> ONNX node name
        self.float_matmuls: list[str] = []  # ONNX node names of MatMul/Gemm that are not layers: run in float
        self.input_shapes: list[tuple[int, ...]] = []
        self.input_dtypes: list[torch.dtype] = []
        self.batch_axis = 0  # of the graph input: its symbolic axis if it has one, else 0
        # None: the graph runs at any batch (checked while it was built); else why it runs at its own only
        self.fixed_batch: str | None = None
        # an integer input indexes tables (Gather: an embedding): the ids it takes are 0..index_limit-1
        self.index_limit: int | None = None
        self._input_names: list[str] = []
        self._output_names: list[str] = []
        self._steps: list[_Step] = []
        self._constants: dict[str, str] = {}  # value name -> buffer name

    def example_inputs(self) -> tuple[Tensor, ...]:
        dtypes = self.input_dtypes or [torch.float32] * len(self.input_shapes)
        return tuple(torch.zeros(shape, dtype=dtype) for shape, dtype in zip(self.input_shapes, dtypes, strict=True))

    @property
    def batch_size(self) -> int:
        """The batch the model was built with (its only batch when :attr:`fixed_batch` says why)."""
        return self.input_shapes[0][self.batch_axis]

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
        # FX traces the module (BatchNorm folding): a Proxy has no batch to check
        if (self.fixed_batch is not None and not isinstance(cast(object, x), torch.fx.Proxy)
                and x.dim() > self.batch_axis and x.size(self.batch_axis) != self.batch_size):
            raise OnnxImportError(
                f"this ONNX model runs at batch {self.batch_size} only, not {x.size(self.batch_axis)} "
                f"(axis {self.batch_axis} of its input): {self.fixed_batch}")
        env: dict[str, Tensor] = {value: getattr(self, buffer) for value, buffer in self._constants.items()}
        env[self._input_names[0]] = x
        for step in self._steps:
            module = self.get_submodule(step.module_name) if step.module_name is not None else None
            result = step.run(module, [env[name] if name else None for name in step.inputs])
            if len(step.outputs) == 1:
                env[step.outputs[0]] = result  # type: ignore[assignment]
            else:
                for name, value in zip(step.outputs, result, strict=True):
                    if name:
                        env[name] = value
        outputs = tuple(env[name] for name in self._output_names)
        return outputs[0] if len(outputs) == 1 else outputs


# ---------------------------------------------------------------------------------------------
# Parsing and validation
# ---------------------------------------------------------------------------------------------


def _parse(data: bytes) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError or RuntimeError on garbage
        raise OnnxImportError(f"file: not an ONNX model ({type(exc).__name__})") from None
    if not model.HasField("graph") or not model.graph.node:
        raise OnnxImportError("file: not an ONNX model (no graph)")
    return model


MAX_IF_DEPTH = 4  # If nodes inside the branches of If nodes: a static condition's branch is inlined (_inline_if)


def _graphs(graph: onnx.GraphProto, depth: int = 0) -> list[onnx.GraphProto]:
    """``graph`` and the branches of its If nodes, recursively (the only subgraphs the importer builds)."""
    out = [graph]
    for node in graph.node:
        if node.op_type == "If" and node.domain in ("", "ai.onnx"):
            if depth >= MAX_IF_DEPTH:
                raise OnnxImportError(f"file: node {node.name[:200]!r} (If): If nested more than {MAX_IF_DEPTH} deep")
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    out += _graphs(attr.g, depth + 1)
    return out


def _check_file(model: onnx.ModelProto) -> None:
    graphs = _graphs(model.graph)
    tensors = [t for graph in graphs for t in graph.initializer] + [
        attr.t for graph in graphs for node in graph.node for attr in node.attribute
        if attr.type == onnx.AttributeProto.TENSOR
    ]
    for tensor in tensors:
        if tensor.data_location == TensorProto.EXTERNAL or tensor.external_data:
            raise OnnxImportError(
                f"file: tensor {tensor.name!r} refers to external data; embed all weights in the file"
            )
    if any(graph.sparse_initializer for graph in graphs) or model.functions:
        raise OnnxImportError("file: sparse initializers and model-local functions are not supported")
    n_nodes = sum(len(graph.node) for graph in graphs)
    if n_nodes > MAX_NODES:
        raise OnnxImportError(f"file: the graph has {n_nodes} nodes; at most {MAX_NODES}")


def _opset(model: onnx.ModelProto) -> int:
    return {entry.domain or "ai.onnx": entry.version for entry in model.opset_import}.get("ai.onnx", 0)


def _upgrade(model: onnx.ModelProto) -> onnx.ModelProto:
    """Opsets CONVERTIBLE_OPSET..MIN_OPSET-1 converted to TARGET_OPSET (onnx.version_converter: C++ on the
    protobuf); older ones refused."""
    opset = _opset(model)
    if opset >= MIN_OPSET:
        return model
    if opset < CONVERTIBLE_OPSET:
        raise OnnxImportError(f"file: opset {opset or 'none'}; opset >= {CONVERTIBLE_OPSET} is required (older files "
                              f"are converted to opset {TARGET_OPSET}; export with torch.onnx.export(..., "
                              "opset_version=17))")
    if any(node.domain not in ("", "ai.onnx") for node in model.graph.node):
        raise OnnxImportError(f"file: opset {opset} with operators of other domains cannot be converted")
    try:
        onnx.checker.check_model(model)
        converted = onnx.version_converter.convert_version(model, TARGET_OPSET)
    except Exception as exc:  # noqa: BLE001 - checker and converter errors alike
        raise OnnxImportError(
            f"file: opset {opset} could not be converted to opset {TARGET_OPSET}: {exc}"[:500]) from None
    return converted


def _check_model(model: onnx.ModelProto) -> None:
    graph = model.graph
    if _opset(model) < MIN_OPSET:
        raise OnnxImportError(f"file: opset {_opset(model) or 'none'}; opset >= {MIN_OPSET} is required "
                              f"(torch.onnx.export(..., opset_version=17))")
    first_node: dict[str, str] = {}  # each unsupported operator, with the first node that uses it
    for node in (node for g in _graphs(graph) for node in g.node):
        if node.domain not in ("", "ai.onnx") or node.op_type not in OPERATORS:
            op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
            first_node.setdefault(op, node.name)
    if first_node:
        named = [f"{op} (node {first_node[op][:200]!r})" for op in sorted(first_node)[:10]]
        raise OnnxImportError(f"file: unsupported ONNX operator(s): {', '.join(named)}; supported: "
                              f"{', '.join(sorted(OPERATORS))}")
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # noqa: BLE001 - checker and shape-inference errors alike
        raise OnnxImportError(f"file: not a valid ONNX model: {exc}"[:500]) from None


def _static_shape(value: onnx.ValueInfoProto) -> tuple[tuple[int, ...], int, torch.dtype]:
    """(shape, batch axis, dtype) of a graph input: the batch axis is its one symbolic axis (built with size 1),
    else axis 0."""
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type" or value.type.tensor_type.elem_type not in _INPUT_TYPES:
        raise OnnxImportError(f"file: graph input {value.name!r} must be a float32 tensor, or an int64 or int32 "
                              "one (token ids)")
    dtype = TORCH_TYPES[value.type.tensor_type.elem_type]
    dims = value.type.tensor_type.shape.dim
    shape = tuple(d.dim_value if d.HasField("dim_value") else 0 for d in dims)
    symbolic = [i for i, d in enumerate(shape) if d == 0]
    # the batch: a symbolic axis 0, or one symbolic axis named for it (a sequence-first model's axis 1)
    batch_axis = symbolic[0] if len(symbolic) == 1 and (
        symbolic[0] == 0 or "batch" in dims[symbolic[0]].dim_param.lower()) else 0
    if symbolic == [batch_axis]:  # a symbolic batch (dynamic_axes={name: {0: "batch"}}): built with batch 1
        shape = tuple(1 if i == batch_axis else d for i, d in enumerate(shape))
    if not shape or any(d <= 0 for d in shape):
        raise OnnxImportError(f"file: graph input {value.name!r} needs a static shape with every dimension > 0 "
                              "but the batch (axis 0, or an axis whose name has 'batch'; export with fixed input "
                              "sizes), got "
                              f"{[d.dim_param or d.dim_value for d in dims]}")
    if math.prod(shape) > MAX_ELEMENTS:
        raise OnnxImportError(
            f"file: graph input {value.name!r} has {math.prod(shape)} elements; at most {MAX_ELEMENTS}")
    return shape, batch_axis, dtype


def _array(tensor: TensorProto) -> np.ndarray:
    if tensor.data_type not in NUMPY_TYPES:
        raise OnnxImportError(f"file: tensor {tensor.name!r} has type {type_name(tensor.data_type)}; supported: "
                              f"{', '.join(type_name(t) for t in NUMPY_TYPES)}")
    return np.array(numpy_helper.to_array(tensor), copy=True)


def _module_name(node_name: str, op_type: str, index: int, taken: set[str]) -> str:
    """A strict identifier for the node's module, never one of nn.Module's or OnnxModule's own attributes (of
    the class or set on an instance: ``training``, ``onnx_names``, ...) nor in mixq's ``mixq_`` namespace
    (``search.quant.qat.OUTPUT_QUANT_ATTR``); such a node gets the generated ``<op>_<n>``."""
    candidate = re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9_]", "_", node_name)).strip("_")
    ok = (
        _IDENTIFIER_RE.fullmatch(candidate) is not None and not keyword.iskeyword(candidate)
        and candidate not in taken and not hasattr(OnnxModule, candidate) and candidate not in vars(OnnxModule())
        and not candidate.startswith(("const_", "mixq_"))
    )
    if ok:
        return candidate
    n = index
    while f"{op_type.lower()}_{n}" in taken:
        n += 1
    return f"{op_type.lower()}_{n}"


# ---------------------------------------------------------------------------------------------
# Helpers for the operators
# ---------------------------------------------------------------------------------------------


def _pads(node: Node, in_shape: tuple[int, ...], kernel: Sequence[int], strides: Sequence[int],
          dilations: Sequence[int]) -> list[int]:
    """ONNX pads (begins then ends) of a conv/pool node, auto_pad resolved on the static input shape."""
    rank = len(kernel)
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER") and node.attr("ceil_mode", 0):
        raise node.refuse("auto_pad", "SAME with ceil_mode")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for d, k, s, dil in zip(in_shape[2:], kernel, strides, dilations, strict=True):
            total = max((math.ceil(d / s) - 1) * s + (k - 1) * dil + 1 - d, 0)
            small, large = total // 2, total - total // 2
            begins.append(small if auto_pad == "SAME_UPPER" else large)
            ends.append(large if auto_pad == "SAME_UPPER" else small)
        return begins + ends
    if auto_pad == "VALID":
        return [0] * (2 * rank)
    if auto_pad != "NOTSET":
        raise node.refuse("auto_pad")
    pads = [int(p) for p in node.attr("pads", [0] * (2 * rank))]
    if len(pads) != 2 * rank or any(p < 0 for p in pads):
        raise node.refuse("pads", f"{2 * rank} non-negative values")
    node.guard([*in_shape[:2], *(d + b + e for d, b, e in zip(in_shape[2:], pads[:rank], pads[rank:], strict=True))],
               "attribute pads")
    return pads


def _torch_pad(begins: Sequence[int], ends: Sequence[int]) -> list[int]:
    """F.pad's list (last axis first) of per-axis pads."""
    out: list[int] = []
    for b, e in zip(reversed(begins), reversed(ends), strict=True):
        out += [int(b), int(e)]
    return out


def _ints(node: Node, name: str, default: Sequence[int], rank: int) -> list[int]:
    values = [int(v) for v in node.attr(name, list(default))]
    if len(values) != rank or any(v <= 0 for v in values):
        raise node.refuse(name, f"{rank} positive values")
    return values


def _weight(node: Node, i: int, what: str) -> Tensor:
    value = node.constant(i, what)
    assert value is not None
    if value.dtype != np.float32:
        raise node.fail(f"{what} must be float32")
    return torch.from_numpy(value)


def _batch_follows(node: Node, shape: Sequence[int], in_shape: Sequence[int]) -> list[int]:
    """``shape`` with -1 for axis 0 where it is the input's batch axis, so the step follows the batch."""
    out = list(shape)
    if out and in_shape and len(out) == len(in_shape) and out[0] == in_shape[0] and node.is_batch(0):
        out[0] = -1
    return out


# ---------------------------------------------------------------------------------------------
# Layers (a module with the node's constant weights)
# ---------------------------------------------------------------------------------------------

_CONV_TYPES: dict[tuple[bool, int], type[nn.Module]] = {
    (False, 1): nn.Conv1d, (False, 2): nn.Conv2d, (False, 3): nn.Conv3d,
    (True, 1): nn.ConvTranspose1d, (True, 2): nn.ConvTranspose2d, (True, 3): nn.ConvTranspose3d,
}


def _conv(node: Node) -> tuple[nn.Module, Runner]:
    weight = _weight(node, 1, "W")
    bias = _weight(node, 2, "B") if node.input(2) else None
    rank = weight.dim() - 2
    transposed = node.op == "ConvTranspose"
    if rank not in (1, 2, 3) or node.rank(0) != rank + 2:
        raise node.fail(f"a {rank}-d kernel on an input of rank {node.rank(0)}; 1-d to 3-d convolutions are supported")
    kernel = tuple(int(k) for k in weight.shape[2:])
    if "kernel_shape" in node.attrs and list(node.attr("kernel_shape")) != list(kernel):
        raise node.refuse("kernel_shape", f"the weight's kernel is {list(kernel)}")
    groups = int(node.attr("group", 1))
    strides = _ints(node, "strides", [1] * rank, rank)
    dilations = _ints(node, "dilations", [1] * rank, rank)
    in_shape = node.shape(0)
    channels_in = int(weight.shape[0]) if transposed else int(weight.shape[1]) * groups
    if groups <= 0 or in_shape[1] != channels_in or (int(weight.shape[0]) % groups):
        raise node.fail(
            f"weight {list(weight.shape)} with group={groups} does not fit an input of {in_shape[1]} channels")
    layer: nn.Module
    if transposed:
        out_pad = [int(p) for p in node.attr("output_padding", [0] * rank)]
        if len(out_pad) != rank or any(
                not 0 <= p < max(s, d) for p, s, d in zip(out_pad, strides, dilations, strict=True)):
            raise node.refuse("output_padding", "smaller than the stride or the dilation")
        auto_pad = node.attr("auto_pad", "NOTSET")
        if "output_shape" in node.attrs or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            # ONNX's rule: the total padding that gives output_shape (SAME: input * stride), split per auto_pad
            same = [d * s for d, s in zip(in_shape[2:], strides, strict=True)]
            wanted = [int(o) for o in node.attr("output_shape", same)]
            wanted = wanted[-rank:]
            if len(wanted) != rank:
                raise node.refuse("output_shape", f"{rank} spatial sizes")
            totals = [s * (d - 1) + p + (k - 1) * dil + 1 - o for s, d, p, k, dil, o
                      in zip(strides, in_shape[2:], out_pad, kernel, dilations, wanted, strict=True)]
            if any(t < 0 for t in totals):
                raise node.refuse("output_shape", "larger than the convolution's full output; give output_padding")
            upper = auto_pad == "SAME_UPPER"
            pads = [t // 2 if upper else t - t // 2 for t in totals] + [t - t // 2 if upper else t // 2 for t in totals]
        else:
            pads = _pads(node, in_shape, kernel, strides, dilations)
        symmetric = pads[:rank] == pads[rank:]
        node.guard([in_shape[0], int(weight.shape[1]) * groups,
                    *((d - 1) * s + dil * (k - 1) + p + 1
                      for d, s, dil, k, p in zip(in_shape[2:], strides, dilations, kernel, out_pad, strict=True))],
                   "attributes strides and dilations")
        layer = _CONV_TYPES[True, rank](
            channels_in, int(weight.shape[1]) * groups, kernel, stride=strides,
            padding=pads[:rank] if symmetric else [0] * rank, output_padding=out_pad, dilation=dilations,
            groups=groups, bias=bias is not None,
        )
        crop = None if symmetric else (pads[:rank], pads[rank:])
    else:
        pads = _pads(node, in_shape, kernel, strides, dilations)
        symmetric = pads[:rank] == pads[rank:]
        layer = _CONV_TYPES[False, rank](
            channels_in, int(weight.shape[0]), kernel, stride=strides,
            padding=pads[:rank] if symmetric else [0] * rank, dilation=dilations, groups=groups, bias=bias is not None,
        )
        crop = None
    with torch.no_grad():
        layer.weight.copy_(weight)  # type: ignore[operator]
        if bias is not None:
            layer.bias.copy_(bias)  # type: ignore[operator]
    if symmetric:
        return layer, _call_module
    if not transposed:
        torch_pads = _torch_pad(pads[:rank], pads[rank:])
        return layer, lambda m, a: m(F.pad(a[0], torch_pads))
    assert crop is not None
    begins, ends = crop
    full = [(d - 1) * s + dil * (k - 1) + p + 1
            for d, s, dil, k, p in zip(in_shape[2:], strides, dilations, kernel, out_pad, strict=True)]
    if any(f - b - e <= 0 for f, b, e in zip(full, begins, ends, strict=True)):
        raise node.refuse("pads", f"they crop the whole output {full}")

    def cropped(m: nn.Module | None, a: list[Tensor | None]) -> Tensor:
        assert m is not None
        y = m(a[0])
        for axis, (f, b, e) in enumerate(zip(full, begins, ends, strict=True), start=2):
            y = y.narrow(axis, b, f - b - e)
        return y
    return layer, cropped


def _call_module(module: nn.Module | None, args: list[Tensor | None]) -> Tensor:
    assert module is not None and args[0] is not None
    return module(args[0])


def _gemm_layer(node: Node) -> tuple[nn.Module, Runner]:
    b = _weight(node, 1, "B")
    if b.dim() != 2:
        raise node.fail("B must be a 2-d constant")
    weight = (b if node.attr("transB", 0) else b.T) * float(node.attr("alpha", 1.0))  # (out, in)
    c = _weight(node, 2, "C") * float(node.attr("beta", 1.0)) if node.input(2) else None
    vector = c is not None and (c.numel() == 1 or tuple(c.shape) in ((weight.shape[0],), (1, weight.shape[0])))
    layer = nn.Linear(int(weight.shape[1]), int(weight.shape[0]), bias=vector)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if vector:
            assert c is not None
            layer.bias.copy_(torch.broadcast_to(c.reshape(-1), (weight.shape[0],)))
    extra = c if c is not None and not vector else None  # a matrix C: added after the layer
    if extra is not None:
        rows = node.shape(0)[1 if node.attr("transA", 0) else 0]
        broadcast_shape(node, [(rows, int(weight.shape[0])), tuple(extra.shape)])
    trans_a = bool(node.attr("transA", 0))

    def run(m: nn.Module | None, a: list[Tensor | None]) -> Tensor:
        assert m is not None
        y = m(_a0(a).T if trans_a else _a0(a))
        return y + extra if extra is not None else y
    return layer, run


def _matmul_layer(node: Node) -> tuple[nn.Module, Runner]:
    b = _weight(node, 1, "B")  # (in, out)
    layer = nn.Linear(int(b.shape[0]), int(b.shape[1]), bias=False)
    with torch.no_grad():
        layer.weight.copy_(b.T)
    return layer, _call_module


def _batchnorm(node: Node) -> tuple[nn.Module, Runner]:
    if node.attr("training_mode", 0) or len(node.outputs) != 1:
        raise node.fail("training-mode BatchNormalization is not supported; export the model in eval mode")
    scale, shift, mean, var = (_weight(node, i, w) for i, w in enumerate(("scale", "B", "input_mean", "input_var"), 1))
    rank = node.rank(0)
    if rank not in (2, 3, 4, 5):
        raise node.fail(f"inputs of rank {rank} are not supported (2 to 5)")
    bn_type = {4: nn.BatchNorm2d, 5: nn.BatchNorm3d}.get(rank, nn.BatchNorm1d)
    # ONNX keeps `momentum` of the running value, torch the weight of the new batch
    layer = bn_type(int(scale.shape[0]), eps=float(node.attr("epsilon", 1e-5)),
                    momentum=1.0 - float(node.attr("momentum", 0.9)))
    with torch.no_grad():
        layer.weight.copy_(scale)
        layer.bias.copy_(shift)
        assert layer.running_mean is not None and layer.running_var is not None  # track_running_stats
        layer.running_mean.copy_(mean)
        layer.running_var.copy_(var)
    return layer, _call_module


def _layer_builder(node: Node, constants: dict[str, np.ndarray]) -> Callable[[Node], tuple[nn.Module, Runner]] | None:
    """The layer a node becomes, if it is one: Conv/ConvTranspose/BatchNormalization always, Gemm and MatMul
    when their weight (input 1) is a constant 2-d float tensor."""
    if node.op in ("Conv", "ConvTranspose"):
        return _conv
    if node.op == "BatchNormalization":
        return _batchnorm
    weight = constants.get(node.input(1))
    if node.op in ("Gemm", "MatMul") and weight is not None and weight.ndim == 2 and weight.dtype == np.float32:
        if node.op == "MatMul" and node.rank(0) < 1:
            return None
        if node.op == "Gemm" and not node.is_constant(0) and (node.input(2) == "" or node.is_constant(2)):
            return _gemm_layer
        if node.op == "MatMul" and not node.is_constant(0):
            return _matmul_layer
    return None


# ---------------------------------------------------------------------------------------------
# Functions (torch ops, build-time constants captured)
# ---------------------------------------------------------------------------------------------

_UNARY: dict[str, Callable[[Tensor], Tensor]] = {
    "Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Erf": torch.erf, "Sqrt": torch.sqrt,
    "Exp": torch.exp, "Log": torch.log, "Abs": torch.abs, "Neg": torch.neg, "Reciprocal": torch.reciprocal,
    "Floor": torch.floor, "Ceil": torch.ceil, "Sign": torch.sign, "Sin": torch.sin, "Cos": torch.cos,
    "Not": torch.logical_not, "HardSwish": F.hardswish, "Softplus": F.softplus, "Softsign": F.softsign,
    "Mish": F.mish, "Round": torch.round,
}
_BINARY: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Equal": torch.eq, "Less": torch.lt,
    "Greater": torch.gt, "LessOrEqual": torch.le, "GreaterOrEqual": torch.ge, "And": torch.logical_and,
    "Or": torch.logical_or, "Xor": torch.logical_xor,
}
_INT_TYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _a0(a: list[Tensor | None]) -> Tensor:
    x = a[0]
    assert x is not None
    return x


def _arg(a: list[Tensor | None], i: int) -> Tensor:
    x = a[i]
    assert x is not None
    return x


def _elementwise(node: Node) -> Runner:
    op = node.op
    if op in _UNARY:
        fn = _UNARY[op]
        return lambda _m, a: fn(_a0(a))
    if op in _BINARY:
        broadcast_shape(node, [node.shape(0), node.shape(1)])
        fn2 = _BINARY[op]
        return lambda _m, a: fn2(a[0], a[1])  # type: ignore[arg-type]
    defaults = {"LeakyRelu": 0.01, "HardSigmoid": 0.2, "Selu": 1.67326319217681884765625}
    alpha = float(node.attr("alpha", defaults.get(op, 1.0)))
    if op == "LeakyRelu":
        return lambda _m, a: F.leaky_relu(_a0(a), alpha)
    if op == "Elu":
        return lambda _m, a: F.elu(_a0(a), alpha)
    if op == "Celu":
        return lambda _m, a: F.celu(_a0(a), alpha)
    if op == "ThresholdedRelu":
        return lambda _m, a: torch.where(_a0(a) > alpha, _a0(a), torch.zeros_like(_a0(a)))
    if op == "Selu":
        gamma = float(node.attr("gamma", 1.05070102214813232421875))
        return lambda _m, a: gamma * torch.where(_a0(a) > 0, _a0(a), alpha * (torch.exp(_a0(a)) - 1))
    if op == "HardSigmoid":
        beta = float(node.attr("beta", 0.5))
        return lambda _m, a: torch.clamp(_a0(a) * alpha + beta, 0.0, 1.0)
    if op == "Gelu":
        approximate = node.attr("approximate", "none")
        if approximate not in ("none", "tanh"):
            raise node.refuse("approximate", "none or tanh")
        return lambda _m, a: F.gelu(_a0(a), approximate=approximate)
    if op == "PRelu":
        broadcast_shape(node, [node.shape(0), node.shape(1)])
        return lambda _m, a: torch.where(_a0(a) >= 0, _a0(a), _a0(a) * _arg(a, 1))
    raise AssertionError(op)


def _arithmetic(node: Node) -> Runner:
    """Div, Pow, Mod: ONNX's integer semantics (truncating division, the divisor's sign for Mod)."""
    broadcast_shape(node, [node.shape(0), node.shape(1)])
    op = node.op
    ints = node.dtype(0) in _INT_TYPES and node.dtype(1) in _INT_TYPES
    out_type = node.dtype(0)
    if op == "Div":
        if ints:
            return lambda _m, a: torch.div(a[0], a[1], rounding_mode="trunc")  # type: ignore[arg-type]
        return lambda _m, a: torch.div(a[0], a[1])  # type: ignore[arg-type]
    if op == "Pow":
        return lambda _m, a: torch.pow(a[0], a[1]).to(out_type)  # type: ignore[arg-type]
    fmod = int(node.attr("fmod", 0))
    if fmod not in (0, 1) or (not fmod and out_type.is_floating_point):
        raise node.refuse("fmod", "float inputs need fmod=1")
    if fmod:
        return lambda _m, a: torch.fmod(a[0], a[1])  # type: ignore[arg-type]
    return lambda _m, a: torch.remainder(a[0], a[1])  # type: ignore[arg-type]


def _variadic(node: Node) -> Runner:
    present = [i for i in range(node.n_inputs) if node.input(i)]
    broadcast_shape(node, [node.shape(i) for i in present])
    fns: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
        "Sum": torch.add, "Mean": torch.add, "Max": torch.maximum, "Min": torch.minimum,
    }
    fn = fns[node.op]
    n = len(present)
    mean = node.op == "Mean"

    def run(_m: nn.Module | None, a: list[Tensor | None]) -> Tensor:
        values = [v for v in a if v is not None]
        out = values[0]
        for v in values[1:]:
            out = fn(out, v)
        return out / n if mean else out
    return run


def _where(node: Node) -> Runner:
    broadcast_shape(node, [node.shape(0), node.shape(1), node.shape(2)])
    return lambda _m, a: torch.where(a[0], a[1], a[2])  # type: ignore[arg-type]


def _matmul(node: Node) -> Runner:
    """A MatMul (or a Gemm) of two computed values: runs in float, listed in OnnxModule.float_matmuls."""
    a_shape, b_shape = node.shape(0), node.shape(1)
    if not a_shape or not b_shape:
        raise node.fail("MatMul of a scalar")
    batch_a = a_shape[:-2] if len(a_shape) > 1 else ()
    batch_b = b_shape[:-2] if len(b_shape) > 1 else ()
    rows, cols = (a_shape[-2] if len(a_shape) > 1 else 1), (b_shape[-1] if len(b_shape) > 1 else 1)
    broadcast_shape(node, [(*batch_a, rows, cols), (*batch_b, 1, 1)])
    if node.op == "MatMul":
        return lambda _m, a: torch.matmul(a[0], a[1])  # type: ignore[arg-type]
    trans_a, trans_b = bool(node.attr("transA", 0)), bool(node.attr("transB", 0))
    alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))

    def gemm(_m: nn.Module | None, a: list[Tensor | None]) -> Tensor:
        x, w = _a0(a), a[1]
        assert w is not None
        y = torch.matmul(x.T if trans_a else x, w.T if trans_b else w) * alpha
        return y + beta * a[2] if a[2] is not None else y
    return gemm


def _pool(node: Node) -> Runner:
    kernel = [int(k) for k in node.attr("kernel_shape")]
    rank = len(kernel)
    if rank not in (1, 2, 3) or node.rank(0) != rank + 2:
        raise node.refuse("kernel_shape", "1-d to 3-d pooling of (N, C, ...) inputs")
    if len(node.outputs) != 1:
        raise node.fail("the Indices output of MaxPool is not supported")
    strides = _ints(node, "strides", [1] * rank, rank)
    dilations = _ints(node, "dilations", [1] * rank, rank)
    pads = _pads(node, node.shape(0), kernel, strides, dilations)
    ceil_mode = bool(node.attr("ceil_mode", 0))
    symmetric = pads[:rank] == pads[rank:] and all(2 * p <= k for p, k in zip(pads[:rank], kernel, strict=True))
    if node.op == "MaxPool":
        if node.attr("storage_order", 0):
            raise node.refuse("storage_order", "only with the Indices output")
        max_pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[rank - 1]
        if symmetric:
            return lambda _m, a: max_pool(a[0], kernel, strides, pads[:rank], dilations, ceil_mode=ceil_mode)  # type: ignore[arg-type]
        torch_pads = _torch_pad(pads[:rank], pads[rank:])
        return lambda _m, a: max_pool(F.pad(a[0], torch_pads, value=-math.inf), kernel, strides, 0,  # type: ignore[arg-type]
                                      dilations, ceil_mode=ceil_mode)
    if dilations != [1] * rank:
        raise node.refuse("dilations", "AveragePool without dilation")
    include_pad = bool(node.attr("count_include_pad", 0))
    avg_pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[rank - 1]
    if symmetric and not (ceil_mode and include_pad):
        return lambda _m, a: avg_pool(a[0], kernel, strides, pads[:rank], ceil_mode, include_pad)  # type: ignore[arg-type]
    torch_pads = _torch_pad(pads[:rank], pads[rank:])
    if not include_pad:  # the mean of the valid elements: pooled zero-padded input over pooled zero-padded ones
        ones = F.pad(torch.ones((1, 1, *node.shape(0)[2:])), torch_pads)
        count = avg_pool(ones, kernel, strides, 0, ceil_mode, True)
        return lambda _m, a: avg_pool(F.pad(_a0(a), torch_pads), kernel, strides, 0, ceil_mode, True) / count
    if ceil_mode:
        raise node.refuse("ceil_mode", "with count_include_pad=1 and asymmetric pads in AveragePool")
    return lambda _m, a: avg_pool(F.pad(a[0], torch_pads), kernel, strides, 0, ceil_mode, True)  # type: ignore[arg-type]


def _global_pool(node: Node) -> Runner:
    dims = tuple(range(2, node.rank(0)))
    if node.op == "GlobalMaxPool":
        return lambda _m, a: torch.amax(_a0(a), dims, keepdim=True)
    return lambda _m, a: torch.mean(_a0(a), dims, keepdim=True)


def _reshape(node: Node) -> Runner:
    in_shape = node.shape(0)
    target = node.ints(1, "shape")
    assert target is not None
    resolved = list(reshape_target(node, in_shape, target))
    if resolved and in_shape and target[0] == in_shape[0] and node.is_batch(0):  # a batch the exporter wrote in
        rest = resolved[1:]
        return lambda _m, a: torch.reshape(_a0(a), (-1, *rest))
    copy = not node.attr("allowzero", 0)
    if -1 in target or (copy and 0 in target):  # as ONNX does: -1 and copied axes are worked out at each forward
        return lambda _m, a: torch.reshape(
            _a0(a), [_a0(a).shape[i] if copy and t == 0 else t for i, t in enumerate(target)])
    return lambda _m, a: torch.reshape(_a0(a), resolved)


def _flatten(node: Node) -> Runner:
    shape = node.shape(0)
    axis = int(node.attr("axis", 1))
    axis = node.axis(axis + len(shape) if axis < 0 else axis, len(shape) + 1)
    if axis == 0:
        return lambda _m, a: torch.reshape(_a0(a), (1, -1))
    if axis == len(shape):
        return lambda _m, a: torch.reshape(_a0(a), (-1, 1))
    return lambda _m, a: torch.flatten(torch.flatten(_a0(a), axis), 0, axis - 1)


def _transpose(node: Node) -> Runner:
    rank = node.rank(0)
    perm = [int(p) for p in node.attr("perm", list(reversed(range(rank))))]
    if sorted(perm) != list(range(rank)):
        raise node.refuse("perm", f"not a permutation of the {rank} axes")
    return lambda _m, a: _a0(a).permute(perm)


def _squeeze(node: Node) -> Runner:
    axes = squeeze_axes(node, node.shape(0))
    if not axes:
        return lambda _m, a: _a0(a)
    return lambda _m, a: torch.squeeze(_a0(a), axes)


def _unsqueeze(node: Node) -> Runner:
    axes = unsqueeze_axes(node, node.rank(0))

    def run(_m: nn.Module | None, a: list[Tensor | None]) -> Tensor:
        x = _a0(a)
        for axis in axes:
            x = torch.unsqueeze(x, axis)
        return x
    return run


def _concat(node: Node) -> Runner:
    present = [i for i in range(node.n_inputs) if node.input(i)]
    rank = node.rank(present[0])
    axis = node.axis(int(node.attr("axis")), rank)
    shapes = [node.shape(i) for i in present]
    if any(len(s) != rank or s[:axis] + s[axis + 1:] != shapes[0][:axis] + shapes[0][axis + 1:] for s in shapes):
        raise node.fail(f"inputs of shapes {[list(s) for s in shapes]} cannot be concatenated on axis {axis}")
    return lambda _m, a: torch.cat([v for v in a if v is not None], axis)


def _split(node: Node) -> Runner:
    shape = node.shape(0)
    axis = node.axis(int(node.attr("axis", 0)), len(shape))
    sizes = split_sizes(node, shape[axis])
    starts = [sum(sizes[:k]) for k in range(len(sizes))]
    return lambda _m, a: tuple(_a0(a).narrow(axis, s, n) for s, n in zip(starts, sizes, strict=True))


def _slice(node: Node) -> Runner:
    shape = node.shape(0)
    spec = slice_spec(node, shape, [])
    node.guard(sliced_shape(shape, spec), "the slice")

    def run(_m: nn.Module | None, a: list[Tensor | None]) -> Tensor:
        x = _a0(a)
        for axis, lo, hi, step in spec:
            if step > 0:
                x = x[(slice(None),) * axis + (slice(lo, hi, step),)]
            else:  # torch slices forward only: flip the axis, then index dim-1-i for i in range(lo, hi, step)
                dim = shape[axis]
                x = torch.flip(x, (axis,))[(slice(None),) * axis + (slice(dim - 1 - lo, dim - 1 - hi, -step),)]
        return x
    return run


def _gather(node: Node) -> Runner:
    shape, idx_shape = node.shape(0), node.shape(1)
    axis = node.axis(int(node.attr("axis", 0)), len(shape))
    if node.dtype(1) not in (torch.int64, torch.int32):
        raise node.fail("indices must be int32 or int64")
    dim = shape[axis]
    if node.is_constant(1):
        idx = node.constant(1, "indices")
        assert idx is not None
        if np.any(idx < -dim) or np.any(idx >= dim):
            raise node.fail(f"indices out of range for an axis of {dim}")
    node.guard(shape[:axis] + idx_shape + shape[axis + 1:], "input 1 (indices)", allowed=node.largest_input())

    def run(_m: nn.Module | None, a: list[Tensor | None]) -> Tensor:
        x, i = _a0(a), a[1]
        assert i is not None
        y = torch.index_select(x, axis, torch.where(i < 0, i + dim, i).reshape(-1))
        return y.squeeze(axis) if not idx_shape else y.unflatten(axis, i.shape)  # computed indices follow the batch
    return run


def _cast(node: Node) -> Runner:
    if node.op == "CastLike":
        dtype = node.dtype(1)
    else:
        to = int(node.attr("to"))
        if to not in TORCH_TYPES:
            raise node.refuse("to", f"{type_name(to)}; supported: {', '.join(type_name(t) for t in TORCH_TYPES)}")
        dtype = TORCH_TYPES[to]
    if node.attr("round_mode", "up") != "up":
        raise node.refuse("round_mode")
    return lambda _m, a: _a0(a).to(dtype)


def _expand(node: Node) -> Runner:
    shape = node.ints(1, "shape")
    assert shape is not None
    in_shape = node.shape(0)
    out = broadcast_shape(node, [in_shape, tuple(shape)], "input 1 (shape)")
    target = _batch_follows(node, out, in_shape)
    return lambda _m, a: _a0(a).expand(target)


BatchRun = Callable[[Tensor, list[Any]], Tensor]  # an input and a target whose entries may follow the batch


def _batch_reshape(node: Node) -> BatchRun:
    """A Reshape whose target follows the batch (computed from it by the file's shape arithmetic): the target
    is given at each forward (:func:`_batch_operand`)."""
    at_build = node.ints(1, "shape")
    assert at_build is not None
    copied = {i for i, t in enumerate(at_build) if t == 0 and not node.attr("allowzero", 0)}  # ONNX: 0 copies the axis
    return lambda x, target: torch.reshape(x, [x.size(i) if i in copied else t for i, t in enumerate(target)])


def _batch_expand(node: Node) -> BatchRun:
    """An Expand whose target follows the batch (a class token expanded to ``x.shape[0]``): as _batch_reshape;
    an axis where the target is 1 keeps the input's size (ONNX broadcasts both ways)."""
    in_shape, target = node.shape(0), node.ints(1, "shape")
    assert target is not None
    broadcast_shape(node, [in_shape, tuple(target)], "input 1 (shape)")
    rank = max(len(in_shape), len(target))
    padded_in = (1,) * (rank - len(in_shape)) + tuple(in_shape)
    lead = rank - len(target)
    keep = [k < lead or (target[k - lead] == 1 and padded_in[k] != 1) for k in range(rank)]

    def run(x: Tensor, shape: list[Any]) -> Tensor:
        full = [-1] * lead + list(shape)
        return x.reshape(padded_in).expand([-1 if k else t for k, t in zip(keep, full, strict=True)])
    return run


_BATCH_OPERAND = {"Reshape": _batch_reshape, "Expand": _batch_expand}  # input 1 may follow the batch


def _tile(node: Node) -> Runner:
    reps = node.ints(1, "repeats")
    in_shape = node.shape(0)
    assert reps is not None
    if len(reps) != len(in_shape) or any(r < 0 for r in reps):
        raise node.fail(f"input 1 (repeats) {reps} for an input of rank {len(in_shape)}")
    node.guard([d * r for d, r in zip(in_shape, reps, strict=True)], "input 1 (repeats)")
    return lambda _m, a: _a0(a).repeat(reps)


def _softmax(node: Node) -> Runner:
    axis = node.axis(int(node.attr("axis", -1)), node.rank(0))
    if node.op == "LogSoftmax":
        return lambda _m, a: torch.log_softmax(_a0(a), axis)
    return lambda _m, a: torch.softmax(_a0(a), axis)


def _reduce(node: Node) -> Runner:
    rank = node.rank(0)
    axes = reduce_axes(node, rank)
    keep = bool(node.attr("keepdims", 1))
    if axes is None:
        return lambda _m, a: _a0(a)
    if any(node.shape(0)[ax] == 0 for ax in axes) and node.op in ("ReduceMax", "ReduceMin"):
        raise node.fail("reducing an empty axis")
    op = node.op
    if op == "ReduceMean":
        return lambda _m, a: torch.mean(_a0(a), axes, keepdim=keep)
    if op == "ReduceSum":
        return lambda _m, a: torch.sum(_a0(a), axes, keepdim=keep)
    if op == "ReduceMax":
        return lambda _m, a: torch.amax(_a0(a), axes, keepdim=keep)
    if op == "ReduceMin":
        return lambda _m, a: torch.amin(_a0(a), axes, keepdim=keep)
    if op == "ReduceSumSquare":
        return lambda _m, a: torch.sum(_a0(a) * _a0(a), axes, keepdim=keep)
    if op == "ReduceL2":
        return lambda _m, a: torch.sqrt(torch.sum(_a0(a) * _a0(a), axes, keepdim=keep))
    if op == "ReduceL1":
        return lambda _m, a: torch.sum(torch.abs(_a0(a)), axes, keepdim=keep)
    if op == "ReduceLogSumExp":
        return lambda _m, a: torch.logsumexp(_a0(a), axes, keepdim=keep)

    def prod(_m: nn.Module | None, a: list[Tensor | None]) -> Tensor:
        x = _a0(a)
        for axis in reversed(axes):
            x = torch.prod(x, axis, keepdim=keep)
        return x
    return prod


def _arg_reduce(node: Node) -> Runner:
    axis = node.axis(int(node.attr("axis", 0)), node.rank(0))
    keep = bool(node.attr("keepdims", 1))
    if node.attr("select_last_index", 0):
        raise node.refuse("select_last_index")
    fn = torch.argmax if node.op == "ArgMax" else torch.argmin
    return lambda _m, a: fn(_a0(a), axis, keepdim=keep)


def _layer_norm(node: Node) -> Runner:
    shape = node.shape(0)
    axis = node.axis(int(node.attr("axis", -1)), len(shape))
    eps = float(node.attr("epsilon", 1e-5))
    normalized = tuple(shape[axis:])
    dims = tuple(range(axis, len(shape)))
    for i in (1, 2):
        if node.input(i):
            broadcast_shape(node, [normalized, node.shape(i)])
    n_outputs = len(node.outputs)
    fused = node.shape(1) == normalized and (not node.input(2) or node.shape(2) == normalized)

    def run(_m: nn.Module | None, a: list[Tensor | None]) -> Result:
        x = _a0(a)
        if fused:
            y = F.layer_norm(x, normalized, a[1], a[2], eps)
        else:
            y = F.layer_norm(x, normalized, None, None, eps) * _arg(a, 1)
            y = y + a[2] if a[2] is not None else y
        if n_outputs == 1:
            return y
        mean = torch.mean(x, dims, keepdim=True)
        inv_std = torch.rsqrt(torch.mean((x - mean) * (x - mean), dims, keepdim=True) + eps)
        return (y, mean, inv_std)[:n_outputs]
    return run


def _instance_norm(node: Node) -> Runner:
    eps = float(node.attr("epsilon", 1e-5))
    if node.rank(0) < 3:
        raise node.fail("inputs of rank >= 3 (N, C, ...) are supported")
    return lambda _m, a: F.instance_norm(_a0(a), weight=a[1], bias=a[2], eps=eps)


def _lrn(node: Node) -> Runner:
    size = int(node.attr("size"))
    if size <= 0 or size % 2 == 0:
        raise node.refuse("size", "odd sizes only")
    alpha, beta, bias = float(node.attr("alpha", 1e-4)), float(node.attr("beta", 0.75)), float(node.attr("bias", 1.0))
    if node.rank(0) < 3:
        raise node.fail("inputs of rank >= 3 (N, C, ...) are supported")
    shape = node.shape(0)
    node.guard([shape[0], shape[1] + size, *shape[2:]], "attribute size")  # torch pads the channels by size
    return lambda _m, a: F.local_response_norm(_a0(a), size, alpha, beta, bias)


def _resize(node: Node) -> Runner:
    shape = node.shape(0)
    rank = len(shape)
    if node.input(1) and not node.is_constant(1):
        raise node.fail("input 1 (roi) must be a constant")
    if node.attr("antialias", 0):
        raise node.refuse("antialias", "antialias=0 only")
    if node.attr("exclude_outside", 0):
        raise node.refuse("exclude_outside", "exclude_outside=0 only")
    if node.attr("axes") is not None:
        raise node.refuse("axes", "give scales or sizes for every axis")
    if node.attr("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise node.refuse("keep_aspect_ratio_policy", "stretch only")
    sizes = node.ints(3, "sizes")
    scales_array = node.constant(2, "scales", required=False) if node.input(2) else None
    scales: list[float] | None = None
    if sizes is None:
        if scales_array is None or scales_array.size == 0:
            raise node.fail("give scales or sizes")
        scales = [float(s) for s in scales_array.reshape(-1)]
        if len(scales) != rank or any(not s > 0 for s in scales):
            raise node.fail(f"scales {scales} for an input of rank {rank}")
        out = [math.floor(d * s) for d, s in zip(shape, scales, strict=True)]
    else:
        out = sizes
    if (len(out) != rank or rank not in (3, 4, 5) or list(out[:2]) != list(shape[:2])
            or (scales and scales[:2] != [1.0, 1.0])):
        raise node.fail("only spatial resizing of (N, C, W), (N, C, H, W) or (N, C, D, H, W) inputs is supported")
    node.guard(out, "input 2 (scales) or 3 (sizes)")
    spatial, factors = out[2:], (scales[2:] if scales else None)
    mode = node.attr("mode", "nearest")
    transform = node.attr("coordinate_transformation_mode", "half_pixel")
    nearest_mode = node.attr("nearest_mode", "round_prefer_floor")
    interp: str | None = None
    corners: bool | None = None
    ratios = [o / d for o, d in zip(spatial, shape[2:], strict=True)]
    whole = all(o % d == 0 for o, d in zip(spatial, shape[2:], strict=True)) and (
        factors is None or all(f == r for f, r in zip(factors, ratios, strict=True)))
    rounding = nearest_mode in ("round_prefer_floor", "round_prefer_ceil")
    if mode == "nearest" and (
            (transform == "asymmetric" and nearest_mode == "floor")
            # whole upscaling: round(x/s) of asymmetric is floor(x/s) for s <= 2, half_pixel's round((x+0.5)/s-0.5)
            # is floor(x/s) for every s (the Resize that onnx.version_converter writes for an Upsample)
            or (transform == "asymmetric" and nearest_mode == "round_prefer_floor" and whole
                and all(r <= 2 for r in ratios))
            or (transform in ("half_pixel", "pytorch_half_pixel") and rounding and whole)):
        interp = "nearest"
    elif (mode == "nearest" and transform in ("half_pixel", "pytorch_half_pixel")
          and nearest_mode == "round_prefer_ceil"):
        interp = "nearest-exact"
    elif mode == "linear" and transform in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        interp = ("linear", "bilinear", "trilinear")[rank - 3]
        corners = transform == "align_corners"
        if transform == "pytorch_half_pixel" and any(s == 1 for s in spatial):
            raise node.refuse("coordinate_transformation_mode", "pytorch_half_pixel to an axis of length 1")
    elif mode == "cubic" and rank == 4 and transform in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        if float(node.attr("cubic_coeff_a", -0.75)) != -0.75:
            raise node.refuse("cubic_coeff_a", "-0.75 (torch's bicubic) only")
        interp, corners = "bicubic", transform == "align_corners"
        if transform == "pytorch_half_pixel" and any(s == 1 for s in spatial):
            raise node.refuse("coordinate_transformation_mode", "pytorch_half_pixel to an axis of length 1")
    if interp is None:
        attribute = "mode" if mode not in ("nearest", "linear", "cubic") else (
            "nearest_mode" if mode == "nearest" and transform in ("asymmetric", "half_pixel", "pytorch_half_pixel")
            else "coordinate_transformation_mode")
        raise node.refuse(attribute, "supported: mode=nearest with asymmetric+floor or half_pixel+round_prefer_ceil, "
                                     "mode=linear or cubic (2-d) with half_pixel, pytorch_half_pixel or align_corners")
    mode_name: str = interp
    if corners and scales and any(d * s != o for d, s, o in zip(shape[2:], scales[2:], spatial, strict=True)):
        raise node.refuse("coordinate_transformation_mode", "align_corners with scales that do not give whole sizes")
    if factors is not None and not corners:
        return lambda _m, a: F.interpolate(_a0(a), scale_factor=factors, mode=mode_name, align_corners=corners,
                                           recompute_scale_factor=False)
    return lambda _m, a: F.interpolate(_a0(a), size=spatial, mode=mode_name, align_corners=corners)


def _depth_to_space(node: Node) -> Runner:
    block = int(node.attr("blocksize"))
    if node.rank(0) != 4 or block <= 0:
        raise node.fail("(N, C, H, W) inputs and a positive blocksize are supported")
    _, channels, height, width = node.shape(0)
    mode = node.attr("mode", "DCR")
    if mode not in ("DCR", "CRD"):
        raise node.refuse("mode", "DCR or CRD")
    if node.op == "SpaceToDepth":
        if height % block or width % block:
            raise node.refuse("blocksize", f"does not divide {height}x{width}")
        perm = (0, 3, 5, 1, 2, 4) if mode == "DCR" else (0, 1, 3, 5, 2, 4)

        def s2d(_m: nn.Module | None, a: list[Tensor | None]) -> Tensor:
            x = torch.reshape(_a0(a), (-1, channels, height // block, block, width // block, block))
            return torch.reshape(x.permute(perm), (-1, channels * block * block, height // block, width // block))
        return s2d
    if channels % (block * block):
        raise node.refuse("blocksize", f"{channels} channels are not a multiple of blocksize^2")
    if mode == "CRD":
        return lambda _m, a: F.pixel_shuffle(_a0(a), block)
    if mode != "DCR":
        raise node.refuse("mode", "DCR or CRD")
    depth = channels // (block * block)

    def dcr(_m: nn.Module | None, a: list[Tensor | None]) -> Tensor:
        x = torch.reshape(_a0(a), (-1, block, block, depth, height, width))
        return torch.reshape(x.permute(0, 3, 4, 1, 5, 2), (-1, depth, height * block, width * block))
    return dcr


def _pad(node: Node) -> Runner:
    shape = node.shape(0)
    rank = len(shape)
    pads = node.ints(1, "pads")
    assert pads is not None
    axes = [node.axis(a, rank, "axes entry") for a in (node.ints(3, "axes") or list(range(rank)))]
    if len(pads) != 2 * len(axes):
        raise node.fail(f"pads {pads} for {len(axes)} axes")
    begin, end = [0] * rank, [0] * rank
    for k, axis in enumerate(axes):
        begin[axis], end[axis] = pads[k], pads[k + len(axes)]
    node.guard([d + b + e for d, b, e in zip(shape, begin, end, strict=True)], "input 1 (pads)")
    torch_pads = _torch_pad(begin, end)
    while len(torch_pads) > 2 and torch_pads[-2:] == [0, 0]:  # reflect/edge in torch pad inner axes only
        del torch_pads[-2:]
    value_array = node.constant(2, "constant_value", required=False)
    value = float(value_array.reshape(-1)[0]) if value_array is not None and value_array.size else 0.0
    modes = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}
    mode = node.attr("mode", "constant")
    if mode not in modes:
        raise node.refuse("mode", ", ".join(modes))
    if mode == "constant":
        return lambda _m, a: F.pad(_a0(a), torch_pads, "constant", value)
    inner = len(torch_pads) // 2
    if inner > 3 or inner > rank - 1 or any(p < 0 for p in torch_pads):
        raise node.refuse("mode", f"{mode} pads at most the last 3 axes of a batched input, by non-negative amounts")
    if mode == "reflect" and any(p >= shape[rank - 1 - k // 2] for k, p in enumerate(torch_pads)):
        raise node.refuse("mode", "reflect pads smaller than the axis")
    # torch's reflect/replicate/circular pad (N, C, *spatial) or (C, *spatial) inputs
    lead = rank - inner
    if lead in (1, 2):
        torch_mode = modes[mode]
        return lambda _m, a: F.pad(_a0(a), torch_pads, torch_mode)
    flat = list(shape[lead - 1:])
    torch_mode = modes[mode]
    out_shape = _batch_follows(node, [d + b + e for d, b, e in zip(shape, begin, end, strict=True)], shape)
    return lambda _m, a: torch.reshape(F.pad(torch.reshape(_a0(a), [-1, *flat]), torch_pads, torch_mode), out_shape)


def _clip(node: Node) -> Runner:
    bounds: list[float | None] = []
    for i, what in ((1, "min"), (2, "max")):
        value = node.constant(i, what, required=False)
        bounds.append(float(value.reshape(-1)[0]) if value is not None else None)
    lo, hi = bounds
    if lo is None and hi is None:
        return lambda _m, a: _a0(a)
    if node.dtype(0) in _INT_TYPES:
        lo_i, hi_i = (int(b) if b is not None else None for b in bounds)
        return lambda _m, a: torch.clamp(_a0(a), lo_i, hi_i)
    return lambda _m, a: torch.clamp(_a0(a), lo, hi)


def _dropout(node: Node) -> Runner:
    mode = node.constant(2, "training_mode", required=False)
    if mode is not None and bool(mode.reshape(-1)[0]):
        raise node.fail("training_mode=true is not supported; export the model in eval mode")
    if len(node.outputs) == 1:
        return lambda _m, a: _a0(a)
    return lambda _m, a: (_a0(a), torch.ones_like(_a0(a), dtype=torch.bool))


def _identity(node: Node) -> Runner:
    return lambda _m, a: _a0(a)


def _needs_constants(node: Node) -> Runner:
    raise node.fail("its inputs must be constants (computed from initializers and static shapes only)")


# ---------------------------------------------------------------------------------------------
# The operator table: what docs/onnx-operators.md lists (tests/search/test_onnx_operator_doc.py)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Operator:
    attributes: tuple[str, ...]
    build: Callable[[Node], Runner] | None  # None: a layer or Constant (handled by the build loop)
    note: str = ""


def _ops(names: str, attributes: tuple[str, ...], build: Callable[[Node], Runner] | None,
         note: str = "") -> dict[str, Operator]:
    return {name: Operator(attributes, build, note) for name in names.split()}


_POOL = ("auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "strides")
_REDUCE = ("axes", "keepdims", "noop_with_empty_axes")
OPERATORS: dict[str, Operator] = {
    **_ops("Conv", ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"), None,
           "layer (nn.Conv1d/2d/3d); constant weight; asymmetric pads padded first"),
    **_ops("ConvTranspose", ("auto_pad", "dilations", "group", "kernel_shape", "output_padding", "pads", "strides",
                             "output_shape"), None,
           "layer (nn.ConvTranspose1d/2d/3d); constant weight; asymmetric pads cropped after"),
    **_ops("Gemm", ("alpha", "beta", "transA", "transB"), None,
           "layer (nn.Linear) with a constant 2-d B and C; else float, listed in float_matmuls"),
    **_ops("MatMul", (), None,
           "layer (nn.Linear) with a constant 2-d B; else float (attention), listed in float_matmuls"),
    **_ops("BatchNormalization", ("epsilon", "momentum", "training_mode"), None,
           "module (nn.BatchNorm1d/2d/3d); inference mode only"),
    **_ops("Constant", ("value", "value_float", "value_floats", "value_int", "value_ints"), None),
    **_ops("Relu Sigmoid Tanh Erf Sqrt Exp Log Abs Neg Reciprocal Floor Ceil Sign Sin Cos Not HardSwish Softplus "
           "Softsign Mish Round Add Sub Mul Equal Less Greater LessOrEqual GreaterOrEqual And Or Xor PRelu", (),
           _elementwise),
    **_ops("LeakyRelu Elu Celu ThresholdedRelu", ("alpha",), _elementwise),
    **_ops("Selu", ("alpha", "gamma"), _elementwise),
    **_ops("HardSigmoid", ("alpha", "beta"), _elementwise),
    **_ops("Gelu", ("approximate",), _elementwise),
    **_ops("Div Pow", (), _arithmetic, "integer Div truncates"),
    **_ops("Mod", ("fmod",), _arithmetic),
    **_ops("Sum Mean Max Min", (), _variadic),
    **_ops("Where", (), _where),
    **_ops("MaxPool", (*_POOL, "storage_order"), _pool, "1-d to 3-d; no Indices output"),
    **_ops("AveragePool", (*_POOL, "count_include_pad"), _pool, "1-d to 3-d; no dilation"),
    **_ops("GlobalAveragePool GlobalMaxPool", (), _global_pool),
    **_ops("Reshape", ("allowzero",), _reshape, "constant shape"),
    **_ops("Flatten", ("axis",), _flatten),
    **_ops("Transpose", ("perm",), _transpose),
    **_ops("Squeeze", ("axes",), _squeeze),
    **_ops("Unsqueeze", ("axes",), _unsqueeze),
    **_ops("Concat", ("axis",), _concat),
    **_ops("Split", ("axis", "split", "num_outputs"), _split, "constant split"),
    **_ops("Slice", (), _slice, "constant starts, ends, axes, steps"),
    **_ops("Gather", ("axis",), _gather),
    **_ops("Cast", ("to", "saturate", "round_mode"), _cast),
    **_ops("CastLike", ("saturate", "round_mode"), _cast),
    **_ops("Expand", (), _expand, "constant shape"),
    **_ops("Tile", (), _tile, "constant repeats"),
    **_ops("Shape", ("start", "end"), _needs_constants, "always folded (static shapes)"),
    **_ops("Size", (), _needs_constants, "always folded (static shapes)"),
    **_ops("ConstantOfShape", ("value",), _needs_constants, "folded; constant shape"),
    **_ops("Range", (), _needs_constants, "folded; constant inputs"),
    **_ops("Softmax LogSoftmax", ("axis",), _softmax),
    **_ops("ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd ReduceSumSquare ReduceL1 ReduceL2 ReduceLogSumExp",
           _REDUCE, _reduce, "constant axes"),
    **_ops("ArgMax ArgMin", ("axis", "keepdims", "select_last_index"), _arg_reduce),
    **_ops("LayerNormalization", ("axis", "epsilon", "stash_type"), _layer_norm),
    **_ops("InstanceNormalization", ("epsilon",), _instance_norm),
    **_ops("LRN", ("alpha", "beta", "bias", "size"), _lrn, "odd size"),
    **_ops("Resize", ("antialias", "axes", "coordinate_transformation_mode", "cubic_coeff_a", "exclude_outside",
                      "extrapolation_value", "keep_aspect_ratio_policy", "mode", "nearest_mode"), _resize,
           "nearest (asymmetric+floor, half_pixel+round_prefer_ceil), linear (half_pixel, align_corners), "
           "cubic (a=-0.75)"),
    **_ops("DepthToSpace", ("blocksize", "mode"), _depth_to_space),
    **_ops("SpaceToDepth", ("blocksize", "mode"), _depth_to_space),
    **_ops("Pad", ("mode",), _pad, "constant, reflect, edge, wrap; constant pads"),
    **_ops("Clip", (), _clip, "constant min and max"),
    **_ops("Dropout", ("seed",), _dropout, "inference: identity (the mask is all true)"),
    **_ops("Identity", (), _identity),
    **_ops("If", ("else_branch", "then_branch"), None,
           "a constant condition only (e.g. torch's LocalResponseNorm rank test, on a folded Shape): the taken "
           f"branch is inlined; nested at most {MAX_IF_DEPTH} deep"),
}
SUPPORTED_OPS = frozenset(OPERATORS)
FOLDED_OPS = frozenset(FOLDERS)


def _constant_node(node: Node) -> np.ndarray:
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in node.attrs:
            value = node.attrs[key]
            if isinstance(value, TensorProto):
                return _array(value)
            return np.array(value, dtype=np.float32 if "float" in key else np.int64)
    raise node.fail("only value, value_float(s) and value_int(s) constants are supported")


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def _foldable(node: Node, constants: Mapping[str, np.ndarray]) -> bool:
    if node.op not in FOLDERS:
        return False
    if node.op in ("Shape", "Size"):
        return True
    return all(not name or name in constants for name in node.proto.input)


def _differs(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape != b.shape or not np.array_equal(a, b)


def _results(out: Result, n: int) -> tuple[Tensor, ...] | None:
    results = (out,) if n == 1 else out
    if not isinstance(results, tuple) or len(results) != n:
        return None
    tensors = tuple(t for t in results if isinstance(t, Tensor))
    return tensors if len(tensors) == n else None


_EXPORT_HINT = ("export with a symbolic batch (torch.onnx.export(..., dynamic_axes={'x': {0: 'batch'}}), or "
                "dynamo=True with dynamic_shapes) so that the file computes its shapes from the input")


def load_onnx_model(data: bytes) -> OnnxModule:
    """An fp32 ONNX model (serialized bytes) as an :class:`OnnxModule`; raises OnnxImportError.

    The batch: the graph is built at the input's batch ``b`` (1 for a symbolic batch) and, step by step, run a
    second time at batch ``b + 1`` (the *shadow* build): a shape computed from ``Shape`` differs there where it
    follows the batch, and a Reshape or Expand whose target follows it computes that target from the batch at
    each forward (``target(B) = target(b) + (B - b) * (target(b + 1) - target(b))``).  A step that does not run
    at ``b + 1`` (a Reshape whose constant target holds the batch, a class token of the example's batch), or
    any other value computed from the batch size, stops the shadow build: the model then runs at batch ``b``
    only, and :attr:`OnnxModule.fixed_batch` says why (the forward refuses any other batch with that reason).
    A model that runs at both is checked once more at ``b + 2`` against itself at ``b`` (sample by sample)."""
    model = _parse(data)
    _check_file(model)
    model = _upgrade(model)
    _check_model(model)
    graph = model.graph
    constants = {init.name: _array(init) for init in graph.initializer}
    module = OnnxModule()
    inputs = [v for v in graph.input if v.name not in constants]
    if len(inputs) != 1:
        raise OnnxImportError(f"file: the model takes {len(inputs)} inputs; one input tensor (the batch) is supported")
    in_shape, batch_axis, in_dtype = _static_shape(inputs[0])
    input_name = inputs[0].name
    module.input_shapes, module.input_dtypes, module.batch_axis = [in_shape], [in_dtype], batch_axis
    module._input_names = [input_name]
    b0 = in_shape[batch_axis]
    b1 = b0 + 1
    # a static file's Reshape/Expand that keeps the batch at axis 0 is taken to follow it (Node.is_batch): the
    # exporter wrote the example's batch there; a symbolic-batch file says itself what follows the batch
    symbolic = not inputs[0].type.tensor_type.shape.dim[batch_axis].HasField("dim_value")
    guess = None if symbolic else b0
    shadow_shape = tuple(b1 if i == batch_axis else d for i, d in enumerate(in_shape))
    env: dict[str, Tensor] = {input_name: torch.zeros(in_shape, dtype=in_dtype)}
    shapes = {name: tuple(t.shape) for name, t in env.items()}
    dtypes = {name: t.dtype for name, t in env.items()}
    taken: set[str] = set()
    # the shadow build (see above): values at batch b1 while every step still runs there; None once one does not
    shadow: dict[str, Tensor] | None = {input_name: torch.zeros(shadow_shape, dtype=in_dtype)}
    shadow_shapes = {input_name: shadow_shape}
    shadow_constants: dict[str, np.ndarray] = {}  # the constants that follow the batch: their value at b1
    shadow_view = ChainMap(shadow_constants, constants)
    batch_axes: dict[str, int] = {input_name: batch_axis}  # the axis of each computed value that follows the batch
    ids = {input_name} if not in_dtype.is_floating_point else set()  # the integer input, and its casts and reshapes
    if math.prod(shadow_shape) > MAX_ELEMENTS:
        shadow, module.fixed_batch = None, f"the input at batch {b1} would have more than {MAX_ELEMENTS} elements"

    def give_up(why: str) -> None:
        nonlocal shadow
        if shadow is not None:
            module.fixed_batch = f"{why[:400]}; {_EXPORT_HINT}"
        shadow = None

    def operand(node: Node, name: str) -> None:
        if name and name not in env and name in constants:
            buffer = f"const_{len(module._constants)}"
            module.register_buffer(buffer, torch.from_numpy(constants[name]))
            module._constants[name] = buffer
            env[name] = getattr(module, buffer)
        elif name and name not in env:
            raise node.fail(f"input {name!r} is not produced by any earlier node")

    def fold_node(node: Node) -> bool:
        """Folds ``node`` if it folds (its outputs become constants, at both batches); False: build it as a
        step (a Reshape or Expand of constants to a target that follows the batch)."""
        proto = node.proto
        args = [constants.get(name) if name else None for name in proto.input]
        outputs = fold(node, args)
        if shadow is not None and (node.op in ("Shape", "Size") or any(n in shadow_constants for n in proto.input)):
            shadow_node = Node(proto, shadow_view, shadow_shapes, dtypes)
            try:
                shadow_outputs = fold(shadow_node, [shadow_view.get(name) if name else None for name in proto.input])
            except OnnxImportError as exc:
                give_up(f"{node.label} cannot be computed at batch {b1}: {exc}")
            else:
                changed = [(name, o, so) for name, o, so in zip(proto.output, outputs, shadow_outputs, strict=False)
                           if name and _differs(o, so)]
                if all(o.ndim <= 1 and o.shape == so.shape and o.dtype.kind in "iu" for _, o, so in changed):
                    for name, _, so in changed:  # shape arithmetic that follows the batch
                        shadow_constants[name] = so
                elif node.op in _BATCH_OPERAND and proto.input[0] not in shadow_constants:
                    return False
                else:
                    give_up(f"{node.label} computes, from the batch size, a tensor whose size or values follow it")
        for name, value in zip(proto.output, outputs, strict=False):
            if name:
                constants[name] = value
        return True

    def build_node(index: int, proto: onnx.NodeProto) -> None:
        node = Node(proto, constants, shapes, dtypes, *((batch_axes, guess) if shadow is not None else ()))
        node.check_attributes(OPERATORS[proto.op_type].attributes)
        if proto.op_type == "Constant":
            constants[proto.output[0]] = _constant_node(node)
            return
        for name in proto.input:
            if name and name not in env and name not in constants:
                raise node.fail(f"input {name!r} is not produced by any earlier node")
        if proto.op_type == "If":
            inline_if(index, node)
            return
        if proto.op_type == "Dropout":
            _dropout(node)  # training_mode=true is refused even where the node folds
        if _foldable(node, constants) and fold_node(node):
            return
        module_name: str | None = None
        layer_builder = _layer_builder(node, constants)
        follows = [i for i, name in enumerate(proto.input) if name in shadow_constants] if shadow is not None else []
        if follows and not (proto.op_type in _BATCH_OPERAND and follows == [1]):
            give_up(f"{node.label}: input {follows[0]} ({proto.input[follows[0]]!r}) is computed from the batch "
                    "size, which this operator needs as a constant")
            follows = []
        if layer_builder is not None:
            layer, run = layer_builder(node)
            module_name = _module_name(proto.name, proto.op_type, index, taken)
            taken.add(module_name)
            module.add_module(module_name, layer.eval())  # the build run must not update BatchNorm statistics
            module.onnx_names[module_name] = proto.name
            operands: Sequence[str] = proto.input[:1]
        else:
            if proto.op_type in ("Conv", "ConvTranspose", "BatchNormalization"):
                raise AssertionError(proto.op_type)
            if proto.op_type in ("MatMul", "Gemm"):
                run = _matmul(node)
                module.float_matmuls.append(proto.name)
            elif follows:
                run = _batch_operand(_BATCH_OPERAND[proto.op_type](node), constants[proto.input[1]],
                                     shadow_constants[proto.input[1]], b0, batch_axis)
            else:
                build = OPERATORS[proto.op_type].build
                assert build is not None
                run = build(node)
            operands = [*proto.input, input_name] if follows else proto.input  # the graph input gives the batch
        for name in operands:
            operand(node, name)
        step = _Step(proto.name, tuple(operands), tuple(proto.output), module_name, run)
        submodule = module.get_submodule(module_name) if module_name else None
        try:
            out = run(submodule, [env[name] if name else None for name in step.inputs])
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise node.fail(f"does not run on the declared input shapes: {exc}"[:400]) from None
        results = _results(out, len(step.outputs))
        if results is None:
            raise node.fail(f"gives outputs that are not its {len(step.outputs)} tensor(s)")
        for name, tensor in zip(step.outputs, results, strict=True):
            if name:
                env[name], shapes[name], dtypes[name] = tensor, tuple(tensor.shape), tensor.dtype
        module._steps.append(step)
        if shadow is not None:
            shadow_run(node, step, submodule, results)
        if proto.op_type in _ID_VIEWS and proto.input[0] in ids:
            ids.add(proto.output[0])
        if proto.op_type == "Gather" and proto.input[1] in ids:  # a table looked up by the input's ids
            size = node.shape(0)[node.axis(int(node.attr("axis", 0)), node.rank(0))]
            module.index_limit = min(size, module.index_limit or size)

    def shadow_run(node: Node, step: _Step, submodule: nn.Module | None, results: tuple[Tensor, ...]) -> None:
        assert shadow is not None
        try:
            out = step.run(submodule, [(shadow[name] if name in shadow else env[name]) if name else None
                                       for name in step.inputs])
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            give_up(f"{node.label} does not run at batch {b1}: {exc}")
            return
        shadow_results = _results(out, len(step.outputs))
        assert shadow_results is not None
        for name, tensor, at_b1 in zip(step.outputs, results, shadow_results, strict=True):
            if not name:
                continue
            axes = [k for k in range(tensor.dim()) if tensor.shape[k] != at_b1.shape[k]]
            if tensor.dim() != at_b1.dim() or len(axes) > 1:
                give_up(f"{node.label}: its output has shape {list(at_b1.shape)} at batch {b1} and "
                        f"{list(tensor.shape)} at batch {b0}")
                return
            shadow[name], shadow_shapes[name] = at_b1, tuple(at_b1.shape)
            if axes:
                batch_axes[name] = axes[0]

    def inline_if(index: int, node: Node) -> None:
        """An If on a constant condition is the branch it takes: its nodes are built in its place, and each
        of its outputs is the If's (a constant stays one; a computed value goes through an Identity)."""
        proto = node.proto
        cond = constants.get(proto.input[0]) if proto.input and proto.input[0] else None
        if cond is None or cond.size != 1:
            raise node.fail("input 0 (cond) must be a single constant (a static condition): control flow on "
                            "computed values is not supported")
        if shadow is not None and proto.input[0] in shadow_constants:
            give_up(f"{node.label}: its condition is computed from the batch size")
        taken = "then_branch" if bool(cond.reshape(-1)[0]) else "else_branch"
        branch = next((a.g for a in proto.attribute if a.name == taken), None)
        if branch is None or len(branch.output) != len(proto.output):
            raise node.fail(f"{taken} must give the node's {len(proto.output)} output(s)")
        for init in branch.initializer:
            constants[init.name] = _array(init)
        for sub in branch.node:
            build_node(index, sub)
        for name, value in zip(proto.output, branch.output, strict=True):
            if not name:
                continue
            if value.name in constants:
                constants[name] = constants[value.name]
                if value.name in shadow_constants:
                    shadow_constants[name] = shadow_constants[value.name]
            else:
                build_node(index, helper.make_node("Identity", [value.name], [name], name=proto.name))

    with torch.no_grad():
        for index, proto in enumerate(graph.node):
            try:
                build_node(index, proto)
            except OnnxImportError:
                raise
            except _BUILD_ERRORS as exc:  # a malformed node that no check above names: still named here
                label = f"node {proto.name or '(unnamed)'!r} ({proto.op_type})"
                raise OnnxImportError(f"file: {label}: invalid attributes or inputs "
                                      f"({type(exc).__name__}: {exc})"[:400]) from None
    missing = [o.name for o in graph.output if o.name not in env and o.name not in constants]
    if missing:
        raise OnnxImportError(f"file: graph output {missing[0]!r} is not computed by any node")
    for o in graph.output:
        if o.name in shadow_constants:
            give_up(f"graph output {o.name!r} is a constant computed from the batch size")
        if o.name not in env:
            operand(Node(onnx.NodeProto(), constants, shapes, dtypes), o.name)
    module._output_names = [o.name for o in graph.output]
    module.eval()
    if module.fixed_batch is None:
        _check_other_batch(module, {o.name: batch_axes.get(o.name) for o in graph.output})
    return module


_ID_VIEWS = ("Cast", "Identity", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Transpose")


def _batch_operand(run: BatchRun, at_b0: np.ndarray, at_b1: np.ndarray, b0: int, batch_axis: int) -> Runner:
    """``run`` with its input 1 (a shape that follows the batch) computed from the batch of the graph input,
    passed as the last operand: ``at_b0 + (batch - b0) * (at_b1 - at_b0)``."""
    base = [int(v) for v in at_b0.reshape(-1)]
    slope = [int(v1) - int(v0) for v0, v1 in zip(at_b0.reshape(-1), at_b1.reshape(-1), strict=True)]

    def with_batch(_m: nn.Module | None, a: list[Tensor | None]) -> Result:
        grow = _arg(a, len(a) - 1).size(batch_axis) - b0
        return run(_a0(a), [v + k * grow if k else v for v, k in zip(base, slope, strict=True)])
    return with_batch


def _check_other_batch(module: OnnxModule, output_axes: dict[str, int | None]) -> None:
    """The built model at batch b + 2 against itself at b, sample by sample where an output's batch axis is
    the batch; sets ``fixed_batch`` if it differs or does not run."""
    b0, axis = module.batch_size, module.batch_axis
    b2 = b0 + 2
    shape = list(module.input_shapes[0])
    shape[axis] = b2
    if math.prod(shape) > MAX_ELEMENTS:
        return
    gen = torch.Generator().manual_seed(0)
    dtype = module.input_dtypes[0]
    x = torch.randn(shape, generator=gen) if dtype.is_floating_point else torch.zeros(shape, dtype=dtype)
    with torch.no_grad():
        try:
            wide, narrow = module(x), module(x.narrow(axis, 0, b0))
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            module.fixed_batch = f"it does not run at batch {b2}: {exc}"[:400] + f"; {_EXPORT_HINT}"
            return
    wides = wide if isinstance(wide, tuple) else (wide,)
    narrows = narrow if isinstance(narrow, tuple) else (narrow,)
    for name, w, at_b0 in zip(module._output_names, wides, narrows, strict=True):
        k = output_axes.get(name)
        if k is None or w.shape[k] != b2:
            continue
        head, n = w.narrow(k, 0, b0).double(), at_b0.double()
        scale = max(float(n.abs().max()) if n.numel() else 0.0, 1e-6)
        if head.shape != n.shape or (n.numel() and float((head - n).abs().max()) > 1e-4 * scale):
            module.fixed_batch = (f"its output {name!r} at batch {b2} does not hold, sample by sample, its output at "
                                  f"batch {b0}; {_EXPORT_HINT}")
            return


def operators_markdown() -> str:
    """docs/onnx-operators.md: the operator table above as Markdown (tests/search/test_onnx_operator_doc.py
    fails when the file drifts; regenerate with ``python -m search.quant.onnx_import > docs/onnx-operators.md``)."""
    lines = [
        "# ONNX operators the importer accepts",
        "",
        "Generated from `search.quant.onnx_import.OPERATORS` by `python -m search.quant.onnx_import > "
        "docs/onnx-operators.md`; `tests/search/test_onnx_operator_doc.py` fails when this file drifts.",
        "",
        "Domain `ai.onnx` only, opset >= 13; files at opsets 7-12 are converted to opset "
        f"{TARGET_OPSET} with `onnx.version_converter` first. An attribute not listed for its operator, or a value "
        "the importer does not implement, is refused naming the node, the operator and the attribute. "
        "*Folded*: with constant operands (for `Shape`/`Size`: always, shapes are static) the node is computed "
        "in numpy while the model is imported and becomes a constant. Tensors whose size the file chooses "
        f"(Expand, Tile, ConstantOfShape, Range, Resize, Pad, broadcasting) are refused above {MAX_ELEMENTS} "
        "elements before they are allocated. Every operator is checked against the ONNX backend node tests "
        "(`tests/search/test_onnx_node_conformance.py`).",
        "",
        "| Operator | Attributes | Folded | Notes |",
        "|---|---|---|---|",
    ]
    for name in sorted(OPERATORS):
        op = OPERATORS[name]
        attributes = ", ".join(f"`{a}`" for a in op.attributes) or "-"
        lines.append(f"| {name} | {attributes} | {'yes' if name in FOLDERS else ''} | {op.note} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(operators_markdown(), end="")

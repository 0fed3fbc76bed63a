"""An fp32 ONNX model as a torch module, without generating code: :class:`OnnxModule` holds real
``nn.Conv*`` / ``nn.Linear`` / ``nn.BatchNorm*`` submodules (so layer discovery and the module-swap QAT
find them) and its ``forward`` walks a validated list of steps.

Why not ``onnx2torch`` or an FX graph: both write Python source from the file's names; here names from
the file are never part of any source.  Tensor names are only dictionary keys; a layer's module name is
its ONNX node name with every character outside ``[A-Za-z0-9_]`` replaced by ``_`` when that gives a
strict identifier that is still free, else a generated ``<op>_<n>``; :attr:`OnnxModule.onnx_names` maps
each module name back to the node name in the file.  Protobuf parsing runs no code, external data
(a file path in the model) is refused, and only the operators in :data:`SUPPORTED_OPS` are accepted,
with static integer shapes: every graph input's dimensions are fixed, and shape-like operands
(Reshape's shape, Resize's scales, Pad's pads, Clip's bounds) are constants.  The model is run once on
zeros of the declared input shapes while it is built, so a bad node fails here, naming it.

Axis 0 of each graph input is the batch: a Reshape whose target keeps the declared batch size follows
the batch it is given, so a model exported with batch 1 trains with any batch.
"""

from __future__ import annotations

import keyword
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import Tensor, nn

from search.errors import OnnxImportError as OnnxImportError

MIN_OPSET = 13
MAX_NODES = 10_000
SUPPORTED_OPS = frozenset({
    "Add", "AveragePool", "BatchNormalization", "Clip", "Concat", "Constant", "Conv", "ConvTranspose",
    "DepthToSpace", "Div", "Dropout", "Flatten", "Gemm", "GlobalAveragePool", "Identity", "LeakyRelu",
    "MatMul", "MaxPool", "Mul", "Pad", "PRelu", "Relu", "Reshape", "Resize", "Sigmoid", "Softmax", "Sub",
    "Transpose",
})
_IDENTIFIER_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_FLOAT_TYPES = (TensorProto.FLOAT,)
_CONSTANT_TYPES = (TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32)



Runner = Callable[[nn.Module | None, list[Tensor | None]], Tensor]


@dataclass(frozen=True)
class _Step:
    node_name: str  # as in the file; only ever shown in messages
    inputs: tuple[str, ...]  # value names ("" for an omitted optional input)
    output: str
    module_name: str | None  # looked up at each forward, so a module swap (QAT) takes effect
    run: Runner


class OnnxModule(nn.Module):
    """Executes the steps of an imported ONNX graph; see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.onnx_names: dict[str, str] = {}  # module name -> ONNX node name
        self.input_shapes: list[tuple[int, ...]] = []
        self._input_names: list[str] = []
        self._output_names: list[str] = []
        self._steps: list[_Step] = []
        self._constants: dict[str, str] = {}  # value name -> buffer name

    def example_inputs(self) -> tuple[Tensor, ...]:
        return tuple(torch.zeros(shape) for shape in self.input_shapes)

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
        env: dict[str, Tensor] = {value: getattr(self, buffer) for value, buffer in self._constants.items()}
        env[self._input_names[0]] = x
        for step in self._steps:
            module = self.get_submodule(step.module_name) if step.module_name is not None else None
            env[step.output] = step.run(module, [env[name] if name else None for name in step.inputs])
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


def _check_model(model: onnx.ModelProto) -> None:
    graph = model.graph
    tensors = list(graph.initializer) + [
        attr.t for node in graph.node for attr in node.attribute if attr.type == onnx.AttributeProto.TENSOR
    ]
    for tensor in tensors:
        if tensor.data_location == TensorProto.EXTERNAL or tensor.external_data:
            raise OnnxImportError(
                f"file: tensor {tensor.name!r} refers to external data; embed all weights in the file"
            )
    if graph.sparse_initializer or model.functions:
        raise OnnxImportError("file: sparse initializers and model-local functions are not supported")
    if len(graph.node) > MAX_NODES:
        raise OnnxImportError(f"file: the graph has {len(graph.node)} nodes; at most {MAX_NODES}")
    opsets = {entry.domain or "ai.onnx": entry.version for entry in model.opset_import}
    if opsets.get("ai.onnx", 0) < MIN_OPSET:
        raise OnnxImportError(f"file: opset {opsets.get('ai.onnx', 'none')}; opset >= {MIN_OPSET} is required "
                              f"(torch.onnx.export(..., opset_version=17))")
    unsupported = sorted({
        node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        for node in graph.node
        if node.domain not in ("", "ai.onnx") or node.op_type not in SUPPORTED_OPS
    })
    if unsupported:
        raise OnnxImportError(f"file: unsupported ONNX operator(s): {', '.join(unsupported[:10])}; supported: "
                              f"{', '.join(sorted(SUPPORTED_OPS))}")
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # noqa: BLE001 - checker and shape-inference errors alike
        raise OnnxImportError(f"file: not a valid ONNX model: {exc}"[:500]) from None


def _static_shape(value: onnx.ValueInfoProto) -> tuple[int, ...]:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type" or value.type.tensor_type.elem_type not in _FLOAT_TYPES:
        raise OnnxImportError(f"file: graph input {value.name!r} must be a float32 tensor")
    dims = value.type.tensor_type.shape.dim
    shape = tuple(d.dim_value if d.HasField("dim_value") else 0 for d in dims)
    if not shape or any(d <= 0 for d in shape):
        raise OnnxImportError(f"file: graph input {value.name!r} needs a static shape with every dimension > 0 "
                              f"(export with fixed input sizes), got {[d.dim_param or d.dim_value for d in dims]}")
    return shape


def _array(tensor: TensorProto) -> np.ndarray:
    if tensor.data_type not in _CONSTANT_TYPES:
        raise OnnxImportError(f"file: tensor {tensor.name!r} has type "
                              f"{TensorProto.DataType.Name(tensor.data_type)}; float32, int64 and int32 only")
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
# Operators
# ---------------------------------------------------------------------------------------------


class _Node:
    """One ONNX node during the build: attributes, constant operands and the static shapes of its inputs."""

    def __init__(self, node: onnx.NodeProto, constants: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]):
        self.proto = node
        self.label = f"node {node.name or '(unnamed)'!r} ({node.op_type})"
        self.attrs: dict[str, Any] = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        self._constants = constants
        self._shapes = shapes

    def fail(self, what: str) -> OnnxImportError:
        return OnnxImportError(f"file: {self.label}: {what}")

    def attr(self, name: str, default: Any = None) -> Any:
        value = self.attrs.get(name, default)
        return value.decode() if isinstance(value, bytes) else value

    def input(self, i: int) -> str:
        return self.proto.input[i] if i < len(self.proto.input) else ""

    def shape(self, i: int) -> tuple[int, ...]:
        return self._shapes[self.input(i)]

    def constant(self, i: int, what: str, *, required: bool = True) -> np.ndarray | None:
        name = self.input(i)
        if not name:
            if required:
                raise self.fail(f"input {i} ({what}) is required")
            return None
        if name not in self._constants:
            raise self.fail(f"input {i} ({what}) must be a constant (initializer); computed values are not supported")
        return self._constants[name]

    def ints(self, i: int, what: str) -> list[int] | None:
        value = self.constant(i, what, required=False)
        return None if value is None else [int(v) for v in value.reshape(-1)]


def _symmetric_pads(node: _Node, rank: int) -> list[int]:
    if node.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise node.fail(f"auto_pad={node.attr('auto_pad')!r} is not supported; export with explicit pads")
    pads = list(node.attr("pads", [0] * (2 * rank)))
    if pads[:rank] != pads[rank:]:
        raise node.fail(f"asymmetric pads {pads} are not supported")
    return pads[:rank]


def _weight(node: _Node, i: int, what: str) -> Tensor:
    value = node.constant(i, what)
    assert value is not None
    if value.dtype != np.float32:
        raise node.fail(f"{what} must be float32")
    return torch.from_numpy(value)


def _call_module(module: nn.Module | None, args: list[Tensor | None]) -> Tensor:
    assert module is not None and args[0] is not None
    return module(args[0])


def _conv(node: _Node) -> tuple[nn.Module, Runner]:
    weight = _weight(node, 1, "W")
    bias = _weight(node, 2, "B") if node.input(2) else None
    rank = weight.dim() - 2
    transposed = node.proto.op_type == "ConvTranspose"
    if rank not in (1, 2) or (transposed and rank != 2):
        raise node.fail(f"{rank}-d kernels are not supported; Conv takes 1-d or 2-d, ConvTranspose 2-d")
    kernel = tuple(int(k) for k in weight.shape[2:])
    groups = int(node.attr("group", 1))
    common: dict[str, Any] = {
        "stride": tuple(node.attr("strides", [1] * rank)), "padding": tuple(_symmetric_pads(node, rank)),
        "dilation": tuple(node.attr("dilations", [1] * rank)), "groups": groups, "bias": bias is not None,
    }
    layer: nn.Module
    if transposed:
        if "output_shape" in node.attrs:
            raise node.fail("output_shape is not supported; give pads and output_padding")
        layer = nn.ConvTranspose2d(int(weight.shape[0]), int(weight.shape[1]) * groups, kernel,  # type: ignore[arg-type]
                                   output_padding=tuple(node.attr("output_padding", [0] * rank)), **common)
    else:
        conv = nn.Conv1d if rank == 1 else nn.Conv2d
        layer = conv(int(weight.shape[1]) * groups, int(weight.shape[0]), kernel, **common)  # type: ignore[arg-type]
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None and layer.bias is not None:
            layer.bias.copy_(bias)
    return layer, _call_module


def _gemm(node: _Node) -> tuple[nn.Module, Runner]:
    if node.attr("transA", 0):
        raise node.fail("transA=1 is not supported")
    b = _weight(node, 1, "B")
    if b.dim() != 2:
        raise node.fail("B must be a 2-d constant")
    weight = (b if node.attr("transB", 0) else b.T) * float(node.attr("alpha", 1.0))  # (out, in)
    layer = nn.Linear(int(weight.shape[1]), int(weight.shape[0]), bias=bool(node.input(2)))
    with torch.no_grad():
        layer.weight.copy_(weight)
        if node.input(2):
            beta = float(node.attr("beta", 1.0))
            layer.bias.copy_(torch.broadcast_to(_weight(node, 2, "C") * beta, (weight.shape[0],)))
    return layer, _call_module


def _matmul_linear(node: _Node) -> tuple[nn.Module, Runner]:
    b = _weight(node, 1, "B")  # (in, out)
    layer = nn.Linear(int(b.shape[0]), int(b.shape[1]), bias=False)
    with torch.no_grad():
        layer.weight.copy_(b.T)
    return layer, _call_module


def _batchnorm(node: _Node) -> tuple[nn.Module, Runner]:
    if node.attr("training_mode", 0) or len(node.proto.output) != 1:
        raise node.fail("training-mode BatchNormalization is not supported; export the model in eval mode")
    scale, shift, mean, var = (_weight(node, i, w) for i, w in enumerate(("scale", "B", "input_mean", "input_var"), 1))
    rank = len(node.shape(0))
    if rank not in (2, 3, 4):
        raise node.fail(f"inputs of rank {rank} are not supported (2, 3 or 4)")
    bn_type = nn.BatchNorm2d if rank == 4 else nn.BatchNorm1d
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


def _pool(node: _Node) -> Runner:
    kernel = [int(k) for k in node.attr("kernel_shape")]
    rank = len(kernel)
    if rank not in (1, 2) or len(node.proto.output) != 1:
        raise node.fail("only 1-d/2-d pooling with a single output is supported")
    stride, padding = list(node.attr("strides", [1] * rank)), _symmetric_pads(node, rank)
    ceil_mode = bool(node.attr("ceil_mode", 0))
    if node.proto.op_type == "MaxPool":
        dilation = list(node.attr("dilations", [1] * rank))
        max_pool = F.max_pool1d if rank == 1 else F.max_pool2d
        return lambda _m, a: max_pool(a[0], kernel, stride, padding, dilation, ceil_mode=ceil_mode)  # type: ignore[arg-type]
    include_pad = bool(node.attr("count_include_pad", 0))
    avg_pool = F.avg_pool1d if rank == 1 else F.avg_pool2d
    return lambda _m, a: avg_pool(a[0], kernel, stride, padding, ceil_mode, include_pad)  # type: ignore[arg-type]


def _reshape(node: _Node) -> Runner:
    in_shape = node.shape(0)
    target = node.ints(1, "shape")
    assert target is not None
    if not node.attr("allowzero", 0):
        target = [in_shape[i] if t == 0 else t for i, t in enumerate(target)]
    resolved = list(torch.empty(in_shape, device="meta").reshape(target).shape)
    if resolved and resolved[0] == in_shape[0]:
        rest = resolved[1:]
        return lambda _m, a: torch.reshape(a[0], (-1, *rest))  # type: ignore[arg-type]
    return lambda _m, a: torch.reshape(a[0], resolved)  # type: ignore[arg-type]


def _flatten(node: _Node) -> Runner:
    shape = node.shape(0)
    axis = int(node.attr("axis", 1))
    axis = axis + len(shape) if axis < 0 else axis
    if axis == 0:
        return lambda _m, a: torch.reshape(a[0], (1, -1))  # type: ignore[arg-type]
    inner = math.prod(shape[axis:])
    return lambda _m, a: torch.reshape(a[0], (-1, inner))  # type: ignore[arg-type]


def _resize(node: _Node) -> Runner:
    shape = node.shape(0)
    sizes = node.ints(3, "sizes")
    if sizes is None:
        scales = node.constant(2, "scales")
        assert scales is not None
        sizes = [math.floor(d * float(s)) for d, s in zip(shape, scales.reshape(-1), strict=True)]
    if len(sizes) != len(shape) or sizes[:2] != list(shape[:2]) or len(shape) not in (3, 4):
        raise node.fail("only spatial resizing of (N, C, W) or (N, C, H, W) inputs is supported")
    mode = node.attr("mode", "nearest")
    transform = node.attr("coordinate_transformation_mode", "half_pixel")
    spatial = sizes[2:]
    if mode == "nearest" and transform == "asymmetric" and node.attr("nearest_mode", "round_prefer_floor") == "floor":
        return lambda _m, a: F.interpolate(a[0], size=spatial, mode="nearest")  # type: ignore[arg-type]
    if mode == "linear" and transform in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        interp = "linear" if len(shape) == 3 else "bilinear"
        corners = transform == "align_corners"
        return lambda _m, a: F.interpolate(a[0], size=spatial, mode=interp, align_corners=corners)  # type: ignore[arg-type]
    raise node.fail(f"mode={mode!r} with coordinate_transformation_mode={transform!r} is not supported "
                    "(nearest+asymmetric+floor, or linear+half_pixel/align_corners)")


def _depth_to_space(node: _Node) -> Runner:
    block = int(node.attr("blocksize"))
    _, channels, height, width = node.shape(0)
    if node.attr("mode", "DCR") == "CRD":
        return lambda _m, a: F.pixel_shuffle(a[0], block)  # type: ignore[arg-type]
    depth = channels // (block * block)

    def dcr(_m: nn.Module | None, a: list[Tensor | None]) -> Tensor:
        x = torch.reshape(a[0], (-1, block, block, depth, height, width))  # type: ignore[arg-type]
        return torch.reshape(x.permute(0, 3, 4, 1, 5, 2), (-1, depth, height * block, width * block))
    return dcr


def _pad(node: _Node) -> Runner:
    rank = len(node.shape(0))
    pads = node.ints(1, "pads")
    assert pads is not None
    axes = node.ints(3, "axes") or list(range(rank))
    begin, end = [0] * rank, [0] * rank
    for k, axis in enumerate(axes):
        begin[axis % rank], end[axis % rank] = pads[k], pads[k + len(axes)]
    torch_pads: list[int] = []
    for axis in reversed(range(rank)):  # F.pad lists the last axis first
        torch_pads += [begin[axis], end[axis]]
    while len(torch_pads) > 2 and torch_pads[-2:] == [0, 0]:  # reflect/edge in torch pad inner axes only
        del torch_pads[-2:]
    value_array = node.constant(2, "constant_value", required=False)
    value = float(value_array.reshape(-1)[0]) if value_array is not None and value_array.size else 0.0
    modes = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}
    mode = node.attr("mode", "constant")
    if mode not in modes:
        raise node.fail(f"mode={mode!r} is not supported ({', '.join(modes)})")
    if mode == "constant":
        return lambda _m, a: F.pad(a[0], torch_pads, "constant", value)  # type: ignore[arg-type]
    return lambda _m, a: F.pad(a[0], torch_pads, modes[mode])  # type: ignore[arg-type]


def _clip(node: _Node) -> Runner:
    low, high = (node.constant(i, w, required=False) for i, w in ((1, "min"), (2, "max")))
    lo = float(low.reshape(-1)[0]) if low is not None else None
    hi = float(high.reshape(-1)[0]) if high is not None else None
    return lambda _m, a: torch.clamp(a[0], lo, hi)  # type: ignore[arg-type]


def _transpose(node: _Node) -> Runner:
    rank = len(node.shape(0))
    perm = [int(p) for p in node.attr("perm", list(reversed(range(rank))))]
    return lambda _m, a: a[0].permute(perm)  # type: ignore[union-attr]


def _function(node: _Node) -> Runner:
    """Operators without a module or build-time constants."""
    op = node.proto.op_type
    if op == "Dropout" and len(node.proto.output) != 1:
        raise node.fail("only the first output of Dropout is supported")
    if op in ("Identity", "Dropout"):
        return lambda _m, a: a[0]  # type: ignore[return-value]
    if op == "Relu":
        return lambda _m, a: torch.relu(a[0])  # type: ignore[arg-type]
    if op == "Sigmoid":
        return lambda _m, a: torch.sigmoid(a[0])  # type: ignore[arg-type]
    if op == "LeakyRelu":
        slope = float(node.attr("alpha", 0.01))
        return lambda _m, a: F.leaky_relu(a[0], slope)  # type: ignore[arg-type]
    if op == "PRelu":
        return lambda _m, a: torch.where(a[0] >= 0, a[0], a[0] * a[1])  # type: ignore[operator, arg-type]
    if op == "Softmax":
        axis = int(node.attr("axis", -1))
        return lambda _m, a: torch.softmax(a[0], axis)  # type: ignore[arg-type]
    if op == "Concat":
        axis = int(node.attr("axis"))
        return lambda _m, a: torch.cat(a, axis)  # type: ignore[arg-type]
    if op == "GlobalAveragePool":
        dims = tuple(range(2, len(node.shape(0))))
        return lambda _m, a: torch.mean(a[0], dims, keepdim=True)  # type: ignore[arg-type]
    binary = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div, "MatMul": torch.matmul}
    if op in binary:
        fn = binary[op]
        return lambda _m, a: fn(a[0], a[1])  # type: ignore[operator]
    builders: dict[str, Callable[[_Node], Runner]] = {
        "MaxPool": _pool, "AveragePool": _pool, "Reshape": _reshape, "Flatten": _flatten, "Resize": _resize,
        "DepthToSpace": _depth_to_space, "Pad": _pad, "Clip": _clip, "Transpose": _transpose,
    }
    return builders[op](node)


def _constant_node(node: _Node) -> np.ndarray:
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


def load_onnx_model(data: bytes) -> OnnxModule:
    """An fp32 ONNX model (serialized bytes) as an :class:`OnnxModule`; raises OnnxImportError."""
    model = _parse(data)
    _check_model(model)
    graph = model.graph
    constants = {init.name: _array(init) for init in graph.initializer}
    module = OnnxModule()
    inputs = [v for v in graph.input if v.name not in constants]
    if len(inputs) != 1:
        raise OnnxImportError(f"file: the model takes {len(inputs)} inputs; one input tensor (the batch) is supported")
    module.input_shapes = [_static_shape(v) for v in inputs]
    module._input_names = [v.name for v in inputs]
    env: dict[str, Tensor] = {v.name: torch.zeros(s) for v, s in zip(inputs, module.input_shapes, strict=True)}
    shapes = {name: tuple(t.shape) for name, t in env.items()}
    taken: set[str] = set()
    layer_builders: dict[str, Callable[[_Node], tuple[nn.Module, Runner]]] = {
        "Conv": _conv, "ConvTranspose": _conv, "Gemm": _gemm, "BatchNormalization": _batchnorm,
    }
    with torch.no_grad():
        for index, proto in enumerate(graph.node):
            node = _Node(proto, constants, shapes)
            if proto.op_type == "Constant":
                constants[proto.output[0]] = _constant_node(node)
                continue
            if len(proto.output) != 1 and proto.op_type not in ("Dropout",):
                raise node.fail("nodes with several outputs are not supported")
            module_name: str | None = None
            if proto.op_type in layer_builders or (proto.op_type == "MatMul" and proto.input[1] in constants
                                                   and constants[proto.input[1]].ndim == 2):
                layer, run = (layer_builders.get(proto.op_type, _matmul_linear))(node)
                module_name = _module_name(proto.name, proto.op_type, index, taken)
                taken.add(module_name)
                module.add_module(module_name, layer.eval())  # the build run must not update BatchNorm statistics
                module.onnx_names[module_name] = proto.name
                operands: Sequence[str] = proto.input[:1]
            else:
                run = _function(node)
                operands = proto.input
            for name in operands:
                if name and name not in env and name in constants:
                    buffer = f"const_{len(module._constants)}"
                    module.register_buffer(buffer, torch.from_numpy(constants[name]))
                    module._constants[name] = buffer
                    env[name] = getattr(module, buffer)
                elif name and name not in env:
                    raise node.fail(f"input {name!r} is not produced by any earlier node")
            step = _Step(proto.name, tuple(operands), proto.output[0], module_name, run)
            try:
                out = run(module.get_submodule(module_name) if module_name else None,
                          [env[name] if name else None for name in step.inputs])
            except (RuntimeError, ValueError, TypeError, IndexError) as exc:
                raise node.fail(f"does not run on the declared input shapes: {exc}"[:400]) from None
            env[step.output], shapes[step.output] = out, tuple(out.shape)
            module._steps.append(step)
    missing = [o.name for o in graph.output if o.name not in env]
    if missing:
        raise OnnxImportError(f"file: graph output {missing[0]!r} is not computed by any node")
    module._output_names = [o.name for o in graph.output]
    return module.eval()

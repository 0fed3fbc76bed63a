"""Constant folding in numpy, before the module is built: a node whose operands are all constants (or, for
``Shape`` and ``Size``, whose operand has a static shape, which every value has here) is computed once, per
operator, by the plain numpy code below, and its outputs become constants.  This is how the shape-only
subgraphs of exported models (``Shape -> Gather -> Unsqueeze -> Concat -> Reshape``, ``Identity`` of a shared
initializer, a weight behind a ``Transpose`` or ``Cast``) reach the operators that need constants.

Nothing from the file is run: no reference evaluator, no code from names, one fixed function per operator.
Every output whose size the file chooses (``Expand``, ``Tile``, ``ConstantOfShape``, ``Range``, broadcasting,
``Gather``) is counted before it is allocated (:data:`.node.MAX_ELEMENTS`)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from onnx import numpy_helper

from search.quant.onnx.node import NUMPY_TYPES, Node, broadcast_shape, type_name

Args = list[np.ndarray | None]


def slice_bounds(dim: int, start: int, end: int, step: int) -> tuple[int, int]:
    """ONNX Slice's clamping of (start, end) on an axis of length ``dim`` (the result is ``range(start, end,
    step)``; for a negative step ``end`` may be -1, before the first element)."""
    if start < 0:
        start += dim
    if end < 0:
        end += dim
    if step > 0:
        return min(max(start, 0), dim), min(max(end, 0), dim)
    return min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)


def slice_spec(node: Node, shape: tuple[int, ...], args: Args) -> list[tuple[int, int, int, int]]:
    """(axis, start, end, step) per sliced axis, from the constant operands of Slice (opset >= 10)."""
    starts, ends = (node.ints(i, w) for i, w in ((1, "starts"), (2, "ends")))
    if starts is None or ends is None:
        raise node.fail("starts and ends are required")
    rank = len(shape)
    axes = node.ints(3, "axes") or list(range(len(starts)))
    steps = node.ints(4, "steps") or [1] * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise node.fail("starts, ends, axes and steps differ in length")
    spec = []
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        if step == 0:
            raise node.fail("a step of 0")
        a = node.axis(axis, rank, "axes entry")
        lo, hi = slice_bounds(shape[a], start, end, step)
        spec.append((a, lo, hi, step))
    if len({a for a, *_ in spec}) != len(spec):
        raise node.fail("axes repeat")
    return spec


def sliced_shape(shape: tuple[int, ...], spec: list[tuple[int, int, int, int]]) -> tuple[int, ...]:
    out = list(shape)
    for axis, lo, hi, step in spec:
        out[axis] = len(range(lo, hi, step))
    return tuple(out)


def reduce_axes(node: Node, rank: int) -> tuple[int, ...] | None:
    """The axes of a Reduce* node (attribute before opset 18, input 1 after); None: the input unchanged."""
    axes = node.attr("axes")
    if axes is None and node.input(1):
        axes = node.ints(1, "axes")
    if not axes:
        return None if node.attr("noop_with_empty_axes", 0) else tuple(range(rank))
    return tuple(sorted({node.axis(int(a), rank, "axes entry") for a in axes}))


def unsqueeze_axes(node: Node, rank: int) -> list[int]:
    axes = node.attr("axes")
    if axes is None:
        axes = node.ints(1, "axes")
    if not axes:
        raise node.fail("axes are required")
    out_rank = rank + len(axes)
    normalized = sorted(node.axis(int(a), out_rank, "axes entry") for a in axes)
    if len(set(normalized)) != len(normalized):
        raise node.fail("axes repeat")
    return normalized


def squeeze_axes(node: Node, shape: tuple[int, ...]) -> tuple[int, ...]:
    axes = node.attr("axes")
    if axes is None and node.input(1):
        axes = node.ints(1, "axes")
    if axes is None:
        return tuple(i for i, d in enumerate(shape) if d == 1)
    normalized = tuple(sorted({node.axis(int(a), len(shape), "axes entry") for a in axes}))
    if any(shape[a] != 1 for a in normalized):
        raise node.fail(f"cannot squeeze axes {list(normalized)} of shape {list(shape)}")
    return normalized


def reshape_target(node: Node, in_shape: tuple[int, ...], target: list[int]) -> tuple[int, ...]:
    if not node.attr("allowzero", 0):
        target = [in_shape[i] if t == 0 and i < len(in_shape) else t for i, t in enumerate(target)]
    count = math.prod(in_shape)
    if target.count(-1) > 1 or any(t < -1 for t in target):
        raise node.fail(f"shape {target} is not a valid Reshape target")
    if -1 in target:
        known = math.prod(t for t in target if t != -1)
        if known == 0 or count % known:
            raise node.fail(f"cannot reshape {list(in_shape)} to {target}")
        target = [count // known if t == -1 else t for t in target]
    if math.prod(target) != count:
        raise node.fail(f"cannot reshape {list(in_shape)} to {target}")
    return tuple(target)


def split_sizes(node: Node, dim: int) -> list[int]:
    sizes = node.attr("split")
    if sizes is None and node.input(1):
        sizes = node.ints(1, "split")
    n = len(node.outputs)
    if sizes is None:
        parts = int(node.attr("num_outputs", n))
        if parts != n or parts <= 0:
            raise node.fail(f"num_outputs={parts} but the node has {n} outputs")
        chunk = -(-dim // parts)
        sizes = [min(chunk, max(dim - k * chunk, 0)) for k in range(parts)]
    sizes = [int(s) for s in sizes]
    if len(sizes) != n or sum(sizes) != dim or any(s < 0 for s in sizes):
        raise node.fail(f"split {sizes} does not divide an axis of {dim} into {n} outputs")
    return sizes


def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.any(b == 0):
        raise ValueError("integer division by zero")
    q = np.abs(a) // np.abs(b)
    return (np.sign(a) * np.sign(b) * q).astype(np.result_type(a, b))


def _binary(node: Node, args: Args) -> list[np.ndarray]:
    a, b = args[0], args[1]
    assert a is not None and b is not None
    broadcast_shape(node, [a.shape, b.shape])
    op = node.op
    with np.errstate(all="ignore"):
        if op == "Add":
            return [a + b]
        if op == "Sub":
            return [a - b]
        if op == "Mul":
            return [a * b]
        if op == "Div":
            if a.dtype.kind in "iu" and b.dtype.kind in "iu":
                return [_int_div(a, b)]
            return [(a / b).astype(a.dtype)]
        if op == "Pow":
            return [np.power(a, b).astype(a.dtype)]
        if op == "Mod":
            if int(node.attr("fmod", 0)):
                return [np.fmod(a, b)]
            if a.dtype.kind == "f":
                raise node.refuse("fmod", "float inputs need fmod=1")
            if np.any(b == 0):
                raise node.fail("integer modulo by zero")
            return [np.mod(a, b)]
    compare: dict[str, Callable[[Any, Any], np.ndarray]] = {
        "Equal": np.equal, "Less": np.less, "Greater": np.greater, "LessOrEqual": np.less_equal,
        "GreaterOrEqual": np.greater_equal, "And": np.logical_and, "Or": np.logical_or, "Xor": np.logical_xor,
    }
    return [np.asarray(compare[op](a, b))]


def _unary(node: Node, args: Args) -> list[np.ndarray]:
    x = args[0]
    assert x is not None
    fns: dict[str, Callable[[Any], Any]] = {
        "Neg": np.negative, "Abs": np.abs, "Sqrt": np.sqrt, "Floor": np.floor, "Ceil": np.ceil, "Sign": np.sign,
        "Exp": np.exp, "Log": np.log, "Reciprocal": np.reciprocal, "Not": np.logical_not,
        "Relu": lambda v: np.maximum(v, 0),
    }
    with np.errstate(all="ignore"):
        return [np.asarray(fns[node.op](x)).astype(x.dtype if node.op != "Not" else np.bool_)]


def _variadic(node: Node, args: Args) -> list[np.ndarray]:
    arrays = [a for a in args if a is not None]
    broadcast_shape(node, [a.shape for a in arrays])
    fn: Callable[[Any, Any], Any] = {"Max": np.maximum, "Min": np.minimum, "Sum": np.add, "Mean": np.add}[node.op]
    out = arrays[0]
    for a in arrays[1:]:
        out = fn(out, a)
    if node.op == "Mean":
        out = (out / len(arrays)).astype(arrays[0].dtype)
    return [np.asarray(out)]


def _cast(node: Node, args: Args) -> list[np.ndarray]:
    x = args[0]
    assert x is not None
    if node.op == "CastLike":
        target = args[1]
        assert target is not None
        return [x.astype(target.dtype)]
    to = int(node.attr("to"))
    if to not in NUMPY_TYPES:
        raise node.refuse("to", f"{type_name(to)}; supported: {', '.join(type_name(t) for t in NUMPY_TYPES)}")
    with np.errstate(all="ignore"):
        return [x.astype(NUMPY_TYPES[to])]


def _shape(node: Node, args: Args) -> list[np.ndarray]:
    shape = node.shape(0)
    if node.op == "Size":
        return [np.array(math.prod(shape), np.int64)]
    rank = len(shape)
    start, end = int(node.attr("start", 0)), int(node.attr("end", rank))
    lo, hi = slice_bounds(rank, start, end, 1)
    return [np.array(shape[lo:hi], np.int64)]


def _constant_of_shape(node: Node, args: Args) -> list[np.ndarray]:
    shape = args[0]
    assert shape is not None
    dims = node.guard(shape.reshape(-1), "input 0 (shape)")
    value = node.attr("value")
    fill = numpy_helper.to_array(value).reshape(-1) if value is not None else np.zeros(1, np.float32)
    if fill.size != 1 or fill.dtype not in NUMPY_TYPES.values():
        raise node.refuse("value", "a one-element tensor of a numeric type")
    return [np.full(dims, fill[0], fill.dtype)]


def _range(node: Node, args: Args) -> list[np.ndarray]:
    start, limit, delta = (a.reshape(()) if a is not None else None for a in args[:3])
    assert start is not None and limit is not None and delta is not None
    if delta == 0:
        raise node.fail("input 2 (delta) is 0")
    count = max(math.ceil((float(limit) - float(start)) / float(delta)), 0)
    node.guard((count,), "inputs start, limit, delta")
    return [(start + np.arange(count) * delta).astype(start.dtype)]


def _expand(node: Node, args: Args) -> list[np.ndarray]:
    x, shape = args[0], args[1]
    assert x is not None and shape is not None
    out = broadcast_shape(node, [x.shape, tuple(int(d) for d in shape.reshape(-1))], "input 1 (shape)")
    return [np.array(np.broadcast_to(x, out))]


def _tile(node: Node, args: Args) -> list[np.ndarray]:
    x, repeats = args[0], args[1]
    assert x is not None and repeats is not None
    reps = [int(r) for r in repeats.reshape(-1)]
    if len(reps) != x.ndim:
        raise node.fail(f"input 1 (repeats) has {len(reps)} entries for an input of rank {x.ndim}")
    node.guard([d * r for d, r in zip(x.shape, reps, strict=True)], "input 1 (repeats)")
    return [np.tile(x, reps)]


def _gather(node: Node, args: Args) -> list[np.ndarray]:
    x, idx = args[0], args[1]
    assert x is not None and idx is not None
    axis = node.axis(int(node.attr("axis", 0)), x.ndim)
    node.guard(x.shape[:axis] + idx.shape + x.shape[axis + 1:], "input 1 (indices)", allowed=node.largest_input())
    if np.any(idx < -x.shape[axis]) or np.any(idx >= x.shape[axis]):
        raise node.fail(f"indices out of range for an axis of {x.shape[axis]}")
    return [np.take(x, idx.astype(np.int64), axis=axis)]


def _slice(node: Node, args: Args) -> list[np.ndarray]:
    x = args[0]
    assert x is not None
    index: list[slice] = [slice(None)] * x.ndim
    for axis, lo, hi, step in slice_spec(node, x.shape, args):
        index[axis] = slice(lo, hi if hi >= 0 else None, step)
    return [np.array(x[tuple(index)])]


def _reduce(node: Node, args: Args) -> list[np.ndarray]:
    x = args[0]
    assert x is not None
    axes = reduce_axes(node, x.ndim)
    if axes is None:
        return [x.copy()]
    keep = bool(node.attr("keepdims", 1))
    fns: dict[str, Callable[..., Any]] = {"ReduceSum": np.sum, "ReduceProd": np.prod, "ReduceMax": np.max,
                                          "ReduceMin": np.min, "ReduceMean": np.mean}
    if x.size == 0 and node.op in ("ReduceMax", "ReduceMin"):
        raise node.fail("reducing an empty tensor")
    return [np.asarray(fns[node.op](x, axis=axes, keepdims=keep)).astype(x.dtype)]


def _where(node: Node, args: Args) -> list[np.ndarray]:
    c, a, b = args[0], args[1], args[2]
    assert c is not None and a is not None and b is not None
    broadcast_shape(node, [c.shape, a.shape, b.shape])
    return [np.where(c, a, b)]


def _layout(node: Node, args: Args) -> list[np.ndarray]:
    x = args[0]
    assert x is not None
    op = node.op
    if op == "Reshape":
        target = node.ints(1, "shape")
        assert target is not None
        return [x.reshape(reshape_target(node, x.shape, target))]
    if op == "Transpose":
        perm = [int(p) for p in node.attr("perm", list(reversed(range(x.ndim))))]
        if sorted(perm) != list(range(x.ndim)):
            raise node.refuse("perm", f"not a permutation of the {x.ndim} axes")
        return [np.ascontiguousarray(np.transpose(x, perm))]
    if op == "Flatten":
        axis = int(node.attr("axis", 1))
        axis = node.axis(axis + x.ndim if axis < 0 else axis, x.ndim + 1)
        return [x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))]
    if op == "Squeeze":
        return [np.squeeze(x, axis=squeeze_axes(node, x.shape))]
    if op == "Unsqueeze":
        out = x
        for a in unsqueeze_axes(node, x.ndim):
            out = np.expand_dims(out, a)
        return [out]
    if op == "Concat":
        arrays = [a for a in args if a is not None]
        axis = node.axis(int(node.attr("axis")), arrays[0].ndim)
        return [np.concatenate(arrays, axis=axis)]
    if op == "Split":
        axis = node.axis(int(node.attr("axis", 0)), x.ndim)
        bounds = np.cumsum([0, *split_sizes(node, x.shape[axis])])
        return [np.array(np.take(x, np.arange(lo, hi), axis=axis)) for lo, hi in itertools.pairwise(bounds)]
    if op in ("Identity", "Dropout"):
        return [x.copy(), np.ones(x.shape, np.bool_)][:len(node.outputs)]
    raise AssertionError(op)


FOLDERS: dict[str, Callable[[Node, Args], list[np.ndarray]]] = {
    **dict.fromkeys(("Add", "Sub", "Mul", "Div", "Pow", "Mod", "Equal", "Less", "Greater", "LessOrEqual",
                     "GreaterOrEqual", "And", "Or", "Xor"), _binary),
    **dict.fromkeys(("Neg", "Abs", "Sqrt", "Floor", "Ceil", "Sign", "Exp", "Log", "Reciprocal", "Not", "Relu"), _unary),
    **dict.fromkeys(("Max", "Min", "Sum", "Mean"), _variadic),
    **dict.fromkeys(("Cast", "CastLike"), _cast),
    **dict.fromkeys(("Shape", "Size"), _shape),
    **dict.fromkeys(("ReduceSum", "ReduceProd", "ReduceMax", "ReduceMin", "ReduceMean"), _reduce),
    **dict.fromkeys(("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Concat", "Split", "Identity",
                     "Dropout"), _layout),
    "ConstantOfShape": _constant_of_shape, "Range": _range, "Expand": _expand, "Tile": _tile, "Gather": _gather,
    "Slice": _slice, "Where": _where,
}
"""The operators folded when their operands are constants (``Shape``/``Size`` whenever the shape is known)."""


def fold(node: Node, args: Args) -> list[np.ndarray]:
    """The outputs of ``node`` on constant ``args`` (``FOLDERS[node.op]``); raises OnnxImportError."""
    try:
        outputs = [np.asarray(out) for out in FOLDERS[node.op](node, args)]  # numpy gives scalars for 0-d results
    except (ValueError, TypeError, IndexError, OverflowError) as exc:
        raise node.fail(f"cannot be computed on its constant inputs: {exc}"[:400]) from None
    for out in outputs:
        if out.dtype not in NUMPY_TYPES.values():
            raise node.fail(f"gives a constant of type {out.dtype}")
    return outputs

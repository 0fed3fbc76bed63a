"""One ONNX node while a model is imported: its attributes, its constant operands, the static shapes and
dtypes of its inputs, and the errors that name it (``node 'name' (Op): ...``)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from search.errors import OnnxImportError

# Every tensor the importer makes at build time (a folded constant, a broadcast, an Expand/Tile/Resize/Pad
# output on the declared shapes) is counted before it is allocated: a file that asks for more is refused.
# A tensor may also be as large as the largest of its operands (a transposed weight from the file).
MAX_ELEMENTS = 1 << 27

NUMPY_TYPES: dict[int, np.dtype[Any]] = {
    TensorProto.FLOAT: np.dtype(np.float32), TensorProto.DOUBLE: np.dtype(np.float64),
    TensorProto.FLOAT16: np.dtype(np.float16), TensorProto.INT64: np.dtype(np.int64),
    TensorProto.INT32: np.dtype(np.int32), TensorProto.INT16: np.dtype(np.int16), TensorProto.INT8: np.dtype(np.int8),
    TensorProto.UINT8: np.dtype(np.uint8), TensorProto.BOOL: np.dtype(np.bool_),
}
TORCH_TYPES: dict[int, torch.dtype] = {
    TensorProto.FLOAT: torch.float32, TensorProto.DOUBLE: torch.float64, TensorProto.FLOAT16: torch.float16,
    TensorProto.INT64: torch.int64, TensorProto.INT32: torch.int32, TensorProto.INT16: torch.int16,
    TensorProto.INT8: torch.int8, TensorProto.UINT8: torch.uint8, TensorProto.BOOL: torch.bool,
}
TORCH_OF_NUMPY: dict[np.dtype[Any], torch.dtype] = {NUMPY_TYPES[k]: v for k, v in TORCH_TYPES.items()}


def type_name(data_type: int) -> str:
    try:
        return TensorProto.DataType.Name(data_type)
    except ValueError:
        return str(data_type)


class Node:
    """An ONNX node during the build; see the module docstring."""

    def __init__(self, node: onnx.NodeProto, constants: Mapping[str, np.ndarray],
                 shapes: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, torch.dtype],
                 batch_axes: Mapping[str, int] | None = None, batch: int | None = None):
        self.proto = node
        self.op = node.op_type
        self.label = f"node {node.name or '(unnamed)'!r} ({node.op_type})"
        self.attrs: dict[str, Any] = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        self._constants = constants
        self._shapes = shapes
        self._dtypes = dtypes
        self._batch_axes = batch_axes
        self.batch = batch  # the build batch, where the batch is tracked and a static file's batch is guessed

    def fail(self, what: str) -> OnnxImportError:
        return OnnxImportError(f"file: {self.label}: {what}")

    def refuse(self, name: str, why: str = "") -> OnnxImportError:
        """The attribute ``name`` has a value the importer does not implement."""
        value = self.attr(name, "(default)")
        shown = value if not isinstance(value, list) or len(value) <= 8 else f"{value[:8]}..."
        return self.fail(f"attribute {name}={shown!r} is not supported" + (f" ({why})" if why else ""))

    def attr(self, name: str, default: Any = None) -> Any:
        value = self.attrs.get(name, default)
        return value.decode() if isinstance(value, bytes) else value

    def input(self, i: int) -> str:
        return self.proto.input[i] if i < len(self.proto.input) else ""

    @property
    def n_inputs(self) -> int:
        return len(self.proto.input)

    @property
    def outputs(self) -> list[str]:
        return list(self.proto.output)

    def wants(self, i: int) -> bool:
        """Whether output ``i`` is used (present and named)."""
        return i < len(self.proto.output) and bool(self.proto.output[i])

    def is_constant(self, i: int) -> bool:
        return self.input(i) in self._constants

    def shape(self, i: int) -> tuple[int, ...]:
        name = self.input(i)
        if name in self._constants:
            return tuple(self._constants[name].shape)
        return self._shapes[name]

    def batch_axis(self, i: int) -> int | None:
        """The axis of input ``i`` whose size follows the batch; None where no axis does, or where the batch is
        not tracked (the model runs at its build batch only)."""
        return None if self._batch_axes is None else self._batch_axes.get(self.input(i))

    def is_batch(self, i: int) -> bool:
        """Whether axis 0 of input ``i`` is the batch itself (not a multiple of it), while it is tracked and the
        batch is guessed (``batch`` is set for a file with a static batch only)."""
        return self.batch_axis(i) == 0 and self.batch is not None and self.shape(i)[0] == self.batch

    def rank(self, i: int) -> int:
        return len(self.shape(i))

    def dtype(self, i: int) -> torch.dtype:
        name = self.input(i)
        if name in self._constants:
            return TORCH_OF_NUMPY[self._constants[name].dtype]
        return self._dtypes[name]

    def constant(self, i: int, what: str, *, required: bool = True) -> np.ndarray | None:
        name = self.input(i)
        if not name:
            if required:
                raise self.fail(f"input {i} ({what}) is required")
            return None
        if name not in self._constants:
            raise self.fail(f"input {i} ({what}) must be a constant (an initializer, or computed from constants "
                            "and static shapes only); values computed from the model input are not supported")
        return self._constants[name]

    def ints(self, i: int, what: str) -> list[int] | None:
        value = self.constant(i, what, required=False)
        return None if value is None else [int(v) for v in value.reshape(-1)]

    def axis(self, axis: int, rank: int, what: str = "axis") -> int:
        if not -rank <= axis < max(rank, 1):
            raise self.fail(f"{what} {axis} is out of range for rank {rank}")
        return axis % rank if rank else 0

    def guard(self, shape: Iterable[int], what: str, *, allowed: int = 0) -> tuple[int, ...]:
        """``shape`` as a tuple, refused before anything of that size is allocated."""
        dims = tuple(int(d) for d in shape)
        if any(d < 0 for d in dims):
            raise self.fail(f"{what} gives a negative dimension {list(dims)}")
        count = math.prod(dims)
        if count > max(MAX_ELEMENTS, allowed):
            raise self.fail(f"{what} asks for a tensor of {count} elements {list(dims)[:8]}; at most {MAX_ELEMENTS}")
        return dims

    def largest_input(self) -> int:
        return max((math.prod(self.shape(i)) for i in range(self.n_inputs) if self.input(i)), default=0)

    def check_attributes(self, allowed: Iterable[str]) -> None:
        unknown = sorted(set(self.attrs) - set(allowed))
        if unknown:
            supported = ", ".join(sorted(allowed)) or "none"
            raise self.fail(f"attribute {unknown[0]} is not supported (supported: {supported})")


def broadcast_shape(node: Node, shapes: list[tuple[int, ...]],
                    what: str = "broadcasting the inputs") -> tuple[int, ...]:
    try:
        out = tuple(int(d) for d in np.broadcast_shapes(*shapes))
    except ValueError:
        raise node.fail(f"input shapes {[list(s) for s in shapes]} do not broadcast") from None
    return node.guard(out, what, allowed=node.largest_input())

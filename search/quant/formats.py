"""Precision formats: what one tensor is rounded to, and what one layer runs in.

A :class:`TensorFormat` describes a single tensor's number format (``int4``, ``int8``, ``fp16``,
``fp32``).  A :class:`LayerFormat` pairs a weight format with an input-activation format; it is
what the search assigns per layer.  Names follow the usual shorthand:

====== ======================================================
name   meaning
====== ======================================================
int8   weights int8 per-output-channel symmetric, inputs 8-bit
int4   weights int4 per-output-channel symmetric, inputs 4-bit
w4a8   weights int4, inputs 8-bit (any ``w<bits>a<bits>`` works)
fp16   weights and inputs rounded to IEEE half precision
fp32   left alone
====== ======================================================

Integer ranges (a device's integer math; the ONNX export uses the same numbers):

* weights: signed, symmetric, *narrow* range ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` (int4: -7..7,
  int8: -127..127), zero point 0, one scale per output channel.
* activations: per tensor; unsigned ``[0, 2^b - 1]`` with zero point 0 when the tensor is
  non-negative (after ReLU, or 8-bit image data), otherwise unsigned affine ``[0, 2^b - 1]`` with a
  zero point.  The signedness is decided at calibration from the observed minimum.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


class NumberKind(StrEnum):
    INT = "int"
    FLOAT = "float"


@dataclass(frozen=True)
class TensorFormat:
    """One tensor's number format. ``bits`` is 4 or 8 for integers, 16 or 32 for floats."""

    kind: NumberKind
    bits: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", NumberKind(self.kind))  # "int" -> NumberKind.INT (is-checks below)
        allowed = {NumberKind.INT: (4, 8), NumberKind.FLOAT: (16, 32)}[self.kind]
        if self.bits not in allowed:
            raise ValueError(f"bits: {self.kind} formats take bits in {allowed}, got {self.bits}")

    @property
    def name(self) -> str:
        return f"{'int' if self.kind is NumberKind.INT else 'fp'}{self.bits}"

    @property
    def is_int(self) -> bool:
        return self.kind is NumberKind.INT

    @property
    def is_identity(self) -> bool:
        return self.kind is NumberKind.FLOAT and self.bits == 32

    def weight_range(self) -> tuple[int, int]:
        """Signed narrow range used for weights, e.g. (-7, 7) for int4."""
        self._require_int()
        qmax = 2 ** (self.bits - 1) - 1
        return -qmax, qmax

    def activation_range(self) -> tuple[int, int]:
        """Unsigned range used for activations, e.g. (0, 15) for int4."""
        self._require_int()
        return 0, 2**self.bits - 1

    def _require_int(self) -> None:
        if not self.is_int:
            raise ValueError(f"{self.name} is a float format and has no integer range")


INT4 = TensorFormat(NumberKind.INT, 4)
INT8 = TensorFormat(NumberKind.INT, 8)
FP16 = TensorFormat(NumberKind.FLOAT, 16)
FP32 = TensorFormat(NumberKind.FLOAT, 32)

_TENSOR_FORMATS = {f.name: f for f in (INT4, INT8, FP16, FP32)}
_BITS_TO_TENSOR = {4: INT4, 8: INT8, 16: FP16, 32: FP32}
_SPLIT = re.compile(r"^w(4|8|16|32)a(4|8|16|32)$")


@dataclass(frozen=True)
class LayerFormat:
    """What one layer runs in: its weight format and its input-activation format."""

    weight: TensorFormat
    activation: TensorFormat

    @property
    def name(self) -> str:
        if self.weight == self.activation:
            return self.weight.name
        return f"w{self.weight.bits}a{self.activation.bits}"

    @property
    def is_identity(self) -> bool:
        return self.weight.is_identity and self.activation.is_identity

    def __str__(self) -> str:
        return self.name


BUILTIN_FORMAT_NAMES = ("int4", "int8", "fp16", "fp32", "w4a8", "w8a4", "w4a16", "w8a16")


def parse_format(name: str) -> LayerFormat:
    """Parse ``int4``/``int8``/``fp16``/``fp32`` or a split name ``w<bits>a<bits>``.

    >>> parse_format("w4a8").name
    'w4a8'
    """
    if not isinstance(name, str):  # a ValueError, not a TypeError: pydantic reports it against the field
        raise ValueError(f"format: expected a format name (str), got {type(name).__name__}")  # noqa: TRY004 - see above
    key = name.strip().lower()
    if key in _TENSOR_FORMATS:
        tensor = _TENSOR_FORMATS[key]
        return LayerFormat(tensor, tensor)
    match = _SPLIT.match(key)
    if match:
        return LayerFormat(_BITS_TO_TENSOR[int(match[1])], _BITS_TO_TENSOR[int(match[2])])
    raise ValueError(
        f"format: unknown format {name!r}; allowed: int4, int8, fp16, fp32 or w<bits>a<bits> "
        "with bits in 4, 8, 16, 32 (e.g. w4a8)"
    )


FormatMap = Mapping[str, LayerFormat | str]  # fqn -> format, parsed or by name


def as_formats(assignment: FormatMap) -> dict[str, LayerFormat]:
    """fqn -> :class:`LayerFormat`, parsing only the names (a map parsed once passes through)."""
    return {fqn: fmt if isinstance(fmt, LayerFormat) else parse_format(fmt) for fqn, fmt in assignment.items()}


def format_bits(fmt: LayerFormat) -> tuple[int, int]:
    """(weight bits, activation bits) as a device stores them; fp32 counts as 32."""
    return fmt.weight.bits, fmt.activation.bits


def summarize_assignment(assignment: Mapping[str, str]) -> str:
    """``int8x2-int4x4``: how many layers take each format, in order of first appearance (execution
    order for a search's assignment).  The one spelling for file names, the API and the dashboard."""
    counts = Counter(assignment.values())
    return "-".join(f"{fmt}x{n}" for fmt, n in counts.items()) or "empty"


TRIAL_FILE_SUFFIXES = {"qconfig": ".json", "weights": ".pt", "onnx": ".onnx"}


def trial_filename(number: int, assignment: Mapping[str, str], kind: str) -> str:
    """``trial0003-int8x2-int4x4.json`` (``.pt`` for weights, ``.onnx`` for the ONNX model): the one
    name of a trial's files, in ``mixq search``'s output folder and in the service's downloads alike.
    Only ``[A-Za-z0-9_.-]``, so it is safe in a path and a Content-Disposition header."""
    summary = "".join(c for c in summarize_assignment(assignment) if c.isascii() and (c.isalnum() or c in "-_"))
    return f"trial{number:04d}-{summary[:80] or 'empty'}{TRIAL_FILE_SUFFIXES[kind]}"

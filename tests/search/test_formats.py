import pytest

from search.quant.formats import (
    BUILTIN_FORMAT_NAMES,
    FP16,
    FP32,
    INT4,
    INT8,
    NumberKind,
    TensorFormat,
    format_bits,
    parse_format,
)


@pytest.mark.parametrize(
    ("name", "weight", "activation", "canonical"),
    [
        ("int4", "int4", "int4", "int4"),
        ("int8", "int8", "int8", "int8"),
        ("fp16", "fp16", "fp16", "fp16"),
        ("fp32", "fp32", "fp32", "fp32"),
        ("w4a8", "int4", "int8", "w4a8"),
        ("w8a16", "int8", "fp16", "w8a16"),
        ("w8a4", "int8", "int4", "w8a4"),
        ("w8a8", "int8", "int8", "int8"),  # a split name with equal halves is the plain name
        ("w16a16", "fp16", "fp16", "fp16"),
        (" INT8 ", "int8", "int8", "int8"),
        ("W4A8", "int4", "int8", "w4a8"),
    ],
)
def test_parse_names(name: str, weight: str, activation: str, canonical: str) -> None:
    fmt = parse_format(name)
    assert fmt.weight.name == weight
    assert fmt.activation.name == activation
    assert fmt.name == canonical
    assert str(fmt) == canonical


@pytest.mark.parametrize("name", BUILTIN_FORMAT_NAMES)
def test_builtin_names_round_trip(name: str) -> None:
    assert parse_format(parse_format(name).name) == parse_format(name)


def test_bits() -> None:
    assert format_bits(parse_format("w4a8")) == (4, 8)
    assert format_bits(parse_format("fp32")) == (32, 32)
    assert parse_format("int4").weight is INT4
    assert parse_format("w8a16").activation is FP16


def test_integer_ranges() -> None:
    assert INT4.weight_range() == (-7, 7)
    assert INT4.activation_range() == (0, 15)
    assert INT8.weight_range() == (-127, 127)
    assert INT8.activation_range() == (0, 255)


@pytest.mark.parametrize("fmt", [FP16, FP32])
def test_float_formats_have_no_integer_range(fmt: TensorFormat) -> None:
    with pytest.raises(ValueError, match=f"{fmt.name} is a float format"):
        fmt.weight_range()
    with pytest.raises(ValueError, match="float format"):
        fmt.activation_range()


def test_identity_and_int_flags() -> None:
    assert parse_format("fp32").is_identity
    assert not parse_format("fp16").is_identity
    assert not parse_format("w32a8").is_identity  # only one half is fp32
    assert INT4.is_int and INT8.is_int and not FP16.is_int and not FP32.is_int


@pytest.mark.parametrize("bad", ["int3", "int16", "w4", "w4a5", "a8w4", "bf16", "", "w4a8x"])
def test_unknown_format_names_field_and_allowed_values(bad: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_format(bad)
    msg = str(err.value)
    assert msg.startswith("format:")
    assert repr(bad) in msg
    for allowed in ("int4", "int8", "fp16", "fp32", "w<bits>a<bits>"):
        assert allowed in msg


def test_non_string_name_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="format: expected a format name"):
        parse_format(8)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "bits", "allowed"), [(NumberKind.INT, 5, "(4, 8)"), (NumberKind.FLOAT, 8, "(16, 32)")]
)
def test_bad_bits_names_field_and_allowed_values(kind: NumberKind, bits: int, allowed: str) -> None:
    with pytest.raises(ValueError) as err:
        TensorFormat(kind, bits)
    assert str(err.value).startswith("bits:")
    assert allowed in str(err.value)
    assert str(bits) in str(err.value)


def test_kind_given_as_string_behaves_like_the_enum() -> None:
    fmt = TensorFormat("int", 4)  # type: ignore[arg-type]
    assert fmt == INT4
    assert fmt.is_int
    assert fmt.name == "int4"
    assert fmt.weight_range() == (-7, 7)

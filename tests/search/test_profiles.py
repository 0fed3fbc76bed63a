import json
from pathlib import Path

import pytest

from search.profiles import ProfileError, builtin_profiles, load_profile, parse_profile_text, profile_to_json
from search.quant.layers import LayerKind

VALID = """
name: tiny-npu
peak_macs_per_ms: 1000
formats:
  int8: {throughput: 2.0}
  fp16: {throughput: 1.0}
"""


def test_builtins_load() -> None:
    names = builtin_profiles()
    assert {"generic", "npu-int4"} <= set(names)
    for name in names:
        profile = load_profile(name)
        assert profile.name == name
        assert profile.peak_macs_per_ms > 0
        assert all(spec.throughput > 0 for spec in profile.formats.values())


def test_generic_allows_every_format_on_every_kind() -> None:
    profile = load_profile("generic")
    for kind in LayerKind:
        assert profile.allowed_formats(kind) == list(profile.formats)
    assert {"int4", "int8", "fp16"} <= set(profile.formats)


def test_npu_int4_forbids_int4_for_depthwise() -> None:
    profile = load_profile("npu-int4")
    assert "int4" not in profile.allowed_formats(LayerKind.CONV2D_DEPTHWISE)
    assert profile.allowed_formats(LayerKind.CONV2D_DEPTHWISE) == ["int8", "fp16"]
    assert "int4" not in profile.allowed_formats(LayerKind.CONV_TRANSPOSE2D)
    assert "int4" in profile.allowed_formats(LayerKind.CONV2D)
    assert "fp32" not in profile.formats
    assert profile.throughput("int4") == 2 * profile.throughput("int8")


def test_load_from_file_and_format_names_are_normalised(tmp_path: Path) -> None:
    path = tmp_path / "dev.yaml"
    path.write_text(VALID.replace("int8:", "W8A8:"))
    profile = load_profile(path)
    assert list(profile.formats) == ["int8", "fp16"]
    assert load_profile(str(path)) == profile
    # JSON is YAML
    json_path = tmp_path / "dev.json"
    json_path.write_text(profile_to_json(profile))
    assert load_profile(json_path) == profile
    assert json.loads(profile_to_json(profile))["name"] == "tiny-npu"


def test_unknown_profile_lists_builtins() -> None:
    with pytest.raises(ProfileError, match=r"'nope' is neither a built-in profile \(generic, npu-int4"):
        load_profile("nope")


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("name: [unclosed", "not valid YAML/JSON"),
        ("- just\n- a list\n", "the top level must be a mapping"),
        ("", "the top level must be a mapping"),
        (VALID.replace("int8:", "int3:"), "formats: Value error, format: unknown format 'int3'"),
        (
            VALID.replace("throughput: 2.0", "throughput: -2.0"),
            "formats.int8.throughput: Input should be greater than 0",
        ),
        (VALID.replace("throughput: 2.0", "throughput: 0"), "formats.int8.throughput: Input should be greater than 0"),
        (
            VALID.replace("throughput: 2.0", "throughput: fast"),
            "formats.int8.throughput: Input should be a valid number",
        ),
        (VALID.replace("throughput: 2.0", "throughput: .nan"), "formats.int8.throughput"),
        (
            VALID.replace("peak_macs_per_ms: 1000", "peak_macs_per_ms: -1"),
            "peak_macs_per_ms: Input should be greater than 0",
        ),
        (VALID.replace("peak_macs_per_ms: 1000", "peak_macs_per_ms: .inf"), "peak_macs_per_ms"),
        (VALID.replace("name: tiny-npu", "name: tiny npu!"), "name: String should match pattern"),
        (VALID + "colour: red\n", "colour: Extra inputs are not permitted"),
        (VALID.replace("{throughput: 2.0}", "{throughput: 2.0, speed: 1}"), "formats.int8.speed: Extra inputs"),
        (VALID + "formats_typo: {}\n", "formats_typo"),
        (
            VALID.replace("formats:\n  int8: {throughput: 2.0}\n  fp16: {throughput: 1.0}\n", "formats: {}\n"),
            "formats:",
        ),
        (VALID + "layer_kinds:\n  conv4d: {formats: [int8]}\n", "layer_kinds.conv4d"),
        (
            VALID + "layer_kinds:\n  linear: {formats: [int4]}\n",
            "layer_kinds.linear.formats: 'int4' is not in the profile's formats",
        ),
        (VALID + "layer_kinds:\n  linear: {formats: []}\n", "layer_kinds.linear.formats"),
        (VALID + "latency_table:\n  fc: {int8: -1.0}\n", "latency_table.fc.int8: must be a number >= 0"),
        (VALID + "latency_table:\n  fc: {int8: .nan}\n", "latency_table.fc.int8: must be a number >= 0"),
        (VALID + "latency_table:\n  fc: {int3: 1.0}\n", "latency_table.fc.int3: format: unknown format 'int3'"),
    ],
)
def test_bad_profiles_name_the_field(text: str, field: str) -> None:
    with pytest.raises(ProfileError) as err:
        parse_profile_text(text, origin="dev.yaml")
    msg = str(err.value)
    assert msg.startswith("dev.yaml: ")
    assert field in msg


def test_missing_required_field_is_named() -> None:
    with pytest.raises(ProfileError, match="peak_macs_per_ms: Field required"):
        parse_profile_text("name: x\nformats: {int8: {throughput: 1}}\n")


def test_throughput_of_unsupported_format_lists_allowed() -> None:
    with pytest.raises(
        ProfileError, match=r"format: 'int4' is not supported by profile 'tiny-npu'; allowed: int8, fp16"
    ):
        parse_profile_text(VALID).throughput("int4")


def test_yaml_is_parsed_safely() -> None:
    with pytest.raises(ProfileError, match="not valid YAML"):
        parse_profile_text("name: !!python/object/apply:os.system ['true']\n")

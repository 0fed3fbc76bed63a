import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from search import Workload
from search.quant.formats import parse_format
from search.quant.layers import LayerGraph, discover_layers
from search.quant.qat import (
    OUTPUT_QUANT_ATTR,
    ActivationQuantizer,
    FakeQuantConv2d,
    FakeQuantLinear,
    FakeQuantMixin,
    calibrate,
    quantize_model,
)
from search.quant.qconfig import (
    SCHEMA_PATH,
    SCHEMA_VERSION,
    QConfigError,
    QConfigFile,
    QualityReport,
    apply_qconfig,
    build_qconfig,
    json_schema,
    load_qconfig,
    model_fingerprint,
    save_qconfig,
)
from search.train import run_trial
from tests.search.models import ConvTransposeNet
from tests.search.user_workload import make_workload


@pytest.fixture(scope="module")
def tiny() -> Workload:
    return make_workload()


@pytest.fixture(scope="module")
def graph(tiny: Workload) -> LayerGraph:
    return discover_layers(tiny.model, tiny.example_inputs)


@pytest.fixture
def base(graph: LayerGraph) -> dict[str, Any]:
    """A valid qconfig as a JSON-ready dict (no scales)."""
    return build_qconfig(None, graph, {"conv": "int8", "fc": "int4"}).model_dump(mode="json")


def quantizer_key(key: str) -> bool:
    return ".input_quant." in key or key.startswith(OUTPUT_QUANT_ATTR + ".")


def eval_inputs() -> torch.Tensor:
    return torch.rand(64, 1, 4, 4, generator=torch.Generator().manual_seed(99))


@pytest.mark.parametrize(
    ("range_method", "assignment"),
    [("minmax", {"conv": "int8", "fc": "int4"}), ("lsq", {"conv": "w4a8", "fc": "int8"})],
)
def test_trained_trial_round_trips_through_the_file(
    tmp_path: Path, tiny: Workload, graph: LayerGraph, range_method: str, assignment: dict[str, str]
) -> None:
    run = run_trial(tiny, assignment, qat_steps=5, seed=0, range_method=range_method)
    cfg = build_qconfig(
        run.model,
        graph,
        assignment,
        pin_reasons={"conv": "first layer"},
        range_method=range_method,
        quality=QualityReport(metric="accuracy", value=run.quality),
        costs={"bitops": 123.0},
        workload="tiny",
    )
    path = save_qconfig(cfg, tmp_path / "qconfig.json")
    loaded = load_qconfig(path)
    assert loaded == cfg

    # one call on a fresh copy of the fp32 model, then the trained weights (not the quantizers)
    fresh = copy.deepcopy(tiny.model)
    apply_qconfig(fresh, path, tiny.example_inputs)
    weights = {k: v for k, v in run.model.state_dict().items() if not quantizer_key(k)}
    result = fresh.load_state_dict(weights, strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys and all(quantizer_key(k) for k in result.missing_keys)
    fresh.eval()
    x = eval_inputs()
    with torch.no_grad():
        assert torch.equal(fresh(x), run.model(x))


def test_file_contents_from_a_trained_trial(tiny: Workload, graph: LayerGraph) -> None:
    assignment = {"conv": "int8", "fc": "w8a4"}
    run = run_trial(tiny, assignment, qat_steps=2, seed=0)
    cfg = build_qconfig(run.model, graph, assignment, pin_reasons={"fc": "last layer"}, profile="npu-int4")
    assert list(cfg.layers) == ["conv", "fc"]
    conv, fc = cfg.layers["conv"], cfg.layers["fc"]
    assert (conv.kind, conv.index, conv.format) == ("conv2d", 0, "int8")
    assert (fc.kind, fc.index, fc.format) == ("linear", 1, "w8a4")
    assert conv.weight.quant_min == -127 and conv.weight.quant_max == 127
    assert conv.weight.axis == 0 and conv.weight.granularity == "per_channel" and conv.weight.symmetric
    assert conv.weight.scale is not None
    assert len(conv.weight.scale) == 8 and conv.weight.zero_point == [0] * 8
    assert conv.activation.signed is False and (conv.activation.quant_min, conv.activation.quant_max) == (0, 255)
    assert conv.activation.zero_point == [0]  # the input images are non-negative
    assert fc.activation.format == "int4" and fc.activation.quant_max == 15
    assert isinstance(run.model.fc, FakeQuantLinear)
    assert fc.activation.scale == [run.model.fc.input_quant.qparams()[0]]
    assert not conv.pinned and fc.pinned and fc.pin_reason == "last layer"
    assert cfg.output is not None and cfg.output.format == "int4"
    assert cfg.output.scale == [getattr(run.model, OUTPUT_QUANT_ATTR).qparams()[0]]
    assert cfg.profile == "npu-int4" and cfg.schema_version == SCHEMA_VERSION
    assert cfg.provenance.model_fingerprint == model_fingerprint(graph)
    assert cfg.provenance.model_fingerprint.startswith("sha256:")
    assert cfg.provenance.torch_version == torch.__version__
    assert cfg.provenance.torch_threads == torch.get_num_threads()  # the summation order the quality depends on


def test_no_output_entry_when_last_layer_is_fp32(graph: LayerGraph) -> None:
    assert build_qconfig(None, graph, {"conv": "int8", "fc": "fp32"}).output is None


def test_apply_without_scales_leaves_ranges_to_calibration(tiny: Workload, base: dict[str, Any]) -> None:
    model = copy.deepcopy(tiny.model)
    apply_qconfig(model, base, tiny.example_inputs)
    assert type(model.conv) is FakeQuantConv2d and type(model.fc) is FakeQuantLinear
    assert model.fc.layer_format.name == "int4"
    quantizers = [m for m in model.modules() if isinstance(m, ActivationQuantizer)]
    assert len(quantizers) == 3
    assert not any(bool(q.initialized) for q in quantizers)  # nothing observed yet
    # calibrating gives exactly the range of the calibration data
    x = eval_inputs()
    calibrate(model, [x])
    assert float(model.conv.input_quant.max_val) == float(x.max())


def test_minimal_v1_file_without_optional_fields_loads(tiny: Workload) -> None:
    v1: dict[str, Any] = {
        "schema_version": 1,
        "layers": {
            "conv": {
                "kind": "conv2d",
                "index": 0,
                "format": "int8",
                "weight": {"format": "int8"},
                "activation": {"format": "int8"},
            },
            "fc": {
                "kind": "linear",
                "index": 1,
                "format": "fp16",
                "weight": {"format": "fp16"},
                "activation": {"format": "fp16"},
            },
        },
        "provenance": {"mixq_version": "0.1.0", "model_fingerprint": "sha256:0"},
    }
    cfg = load_qconfig(json.dumps(v1))
    assert cfg.range_method == "minmax" and cfg.profile == "generic"
    assert cfg.output is None and cfg.quality is None and cfg.costs == {}
    assert cfg.layers["conv"].pinned is False
    # schema 2's fields are optional: a version-1 file says nothing about them
    assert cfg.feasible is None and cfg.on_front is None
    assert cfg.provenance.qat_steps is None and cfg.provenance.seed is None and cfg.provenance.spec is None
    v2 = {**v1, "schema_version": 2, "feasible": True, "on_front": False,
          "provenance": {**v1["provenance"], "qat_steps": 30, "seed": 2, "spec": {"workload": "digits"}, "job_id": 7}}
    cfg2 = load_qconfig(v2)
    assert (cfg2.feasible, cfg2.on_front, cfg2.provenance.qat_steps, cfg2.provenance.seed) == (True, False, 30, 2)
    assert load_qconfig(cfg2.model_dump_json()) == cfg2
    assert cfg.provenance.torch_threads is None  # not recorded: unknown, not this process's count
    model = copy.deepcopy(tiny.model)
    apply_qconfig(model, cfg, tiny.example_inputs)
    assert type(model.conv) is FakeQuantConv2d
    assert isinstance(model.fc, FakeQuantMixin)
    assert model.fc.layer_format.name == "fp16"
    assert not hasattr(model, OUTPUT_QUANT_ATTR) or getattr(model, OUTPUT_QUANT_ATTR).fmt.name == "fp16"


def test_load_from_text_path_and_dict_agree(tmp_path: Path, base: dict[str, Any]) -> None:
    path = tmp_path / "q.json"
    path.write_text(json.dumps(base))
    assert load_qconfig(path) == load_qconfig(str(path)) == load_qconfig(json.dumps(base)) == load_qconfig(base)


def test_committed_json_schema_is_current() -> None:
    assert SCHEMA_PATH.name == "qconfig.schema.json"
    committed = json.loads(Path(SCHEMA_PATH).read_text())
    assert committed == json_schema(), "regenerate with: python -m search.quant.qconfig"
    assert committed["$id"].endswith(f"qconfig-v{SCHEMA_VERSION}.json")


# -- errors ---------------------------------------------------------------------------------------


def test_newer_schema_version_is_refused(base: dict[str, Any]) -> None:
    base["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(QConfigError, match=rf"schema_version: this file is version {SCHEMA_VERSION + 1}.*upgrade mixq"):
        load_qconfig(base)


@pytest.mark.parametrize("version", ["1", None, 1.0, True, 0, -3])
def test_bad_schema_version(base: dict[str, Any], version: object) -> None:
    base["schema_version"] = version
    with pytest.raises(QConfigError, match=r"^schema_version: "):
        load_qconfig(base)


@pytest.mark.parametrize("text", ['{"schema_version": 1,', "{'single': 'quotes'}", "{} trailing"])
def test_malformed_json(text: str) -> None:
    with pytest.raises(QConfigError, match="qconfig: not valid JSON"):
        load_qconfig(text)


def test_top_level_must_be_an_object(tmp_path: Path) -> None:
    path = tmp_path / "list.json"
    path.write_text("[1, 2]")
    with pytest.raises(QConfigError, match="top level must be a JSON object"):
        load_qconfig(path)


def test_missing_file_is_a_qconfig_error(tmp_path: Path) -> None:
    with pytest.raises(QConfigError, match="qconfig: cannot read"):
        load_qconfig(tmp_path / "nope.json")


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d["layers"]["conv"]["activation"].update(scale=[float("nan")]), "layers.conv.activation.scale.0"),
        (lambda d: d.update(quality={"metric": "accuracy", "value": float("inf")}), "quality.value"),
        (lambda d: d["costs"].update(bitops=float("-inf")), "costs.bitops"),
    ],
)
def test_nan_and_infinity_are_refused_naming_the_field(
    base: dict[str, Any], edit: Callable[[dict[str, Any]], object], field: str
) -> None:
    edit(base)
    text = json.dumps(base)  # Python writes NaN / Infinity / -Infinity
    assert "NaN" in text or "Infinity" in text
    with pytest.raises(QConfigError, match=rf"^{field}: NaN and Infinity are not allowed"):
        load_qconfig(text)
    with pytest.raises(QConfigError, match=rf"^{field}: "):
        load_qconfig(base)


def test_huge_number_overflowing_to_infinity_is_refused(base: dict[str, Any]) -> None:
    text = json.dumps(base).replace('"costs": {}', '"costs": {"bitops": 1e999}')
    with pytest.raises(QConfigError, match=r"^costs.bitops: NaN and Infinity"):
        load_qconfig(text)


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d.update(surprise=1), "surprise"),
        (lambda d: d["layers"]["conv"].update(bits=4), "layers.conv.bits"),
        (lambda d: d["layers"]["fc"]["weight"].update(dtype="int4"), "layers.fc.weight.dtype"),
    ],
)
def test_unknown_field_is_named(base: dict[str, Any], edit: Callable[[dict[str, Any]], object], field: str) -> None:
    edit(base)
    with pytest.raises(QConfigError, match=rf"^{field}: Extra inputs are not permitted"):
        load_qconfig(base)


@pytest.mark.parametrize(
    ("edit", "field", "detail"),
    [
        (lambda d: d["layers"]["conv"].update(format="int3"), "layers.conv.format", "unknown format 'int3'"),
        (lambda d: d["layers"]["conv"]["weight"].update(format="int5"), "layers.conv.weight.format", "'int4'"),
        (lambda d: d["layers"]["conv"].update(kind="conv4d"), "layers.conv.kind", "conv2d_depthwise"),
        (lambda d: d["layers"]["conv"].update(index=-1), "layers.conv.index", "greater than or equal to 0"),
        (lambda d: d["layers"]["conv"]["activation"].update(scale=[0.0]), "layers.conv.activation.scale", "> 0"),
        (lambda d: d.update(range_method="ema"), "range_method", "'minmax' or 'lsq'"),
        (lambda d: d.pop("provenance"), "provenance", "Field required"),
        # the tensors' formats must agree with the layer's format
        (lambda d: d["layers"]["conv"].update(format="int4"), "layers.conv", "weight.format: 'int8' does not match"),
        (lambda d: d["layers"]["fc"]["activation"].update(format="int8"), "layers.fc", "activation.format: 'int8'"),
    ],
)
def test_invalid_values_are_named(
    base: dict[str, Any], edit: Callable[[dict[str, Any]], object], field: str, detail: str
) -> None:
    edit(base)
    with pytest.raises(QConfigError) as err:
        load_qconfig(base)
    assert str(err.value).startswith(f"{field}: ")
    assert detail in str(err.value)


def test_missing_layer_is_named_and_model_untouched(tiny: Workload, base: dict[str, Any]) -> None:
    del base["layers"]["fc"]
    model = copy.deepcopy(tiny.model)
    with pytest.raises(QConfigError, match=r"^layers: the file has no entry for layer 'fc'"):
        apply_qconfig(model, base, tiny.example_inputs)
    assert type(model.conv) is torch.nn.Conv2d  # nothing swapped before the error
    assert isinstance(model.bn, torch.nn.BatchNorm2d)


def test_extra_layer_is_named(tiny: Workload, base: dict[str, Any]) -> None:
    base["layers"]["ghost"] = copy.deepcopy(base["layers"]["fc"])
    model = copy.deepcopy(tiny.model)
    with pytest.raises(QConfigError, match=r"^layers.ghost: not a quantizable layer of this model"):
        apply_qconfig(model, base, tiny.example_inputs)
    assert type(model.conv) is torch.nn.Conv2d


def test_zero_point_out_of_range_is_named(tiny: Workload, base: dict[str, Any]) -> None:
    base["layers"]["conv"]["activation"].update(scale=[0.01], zero_point=[300])
    with pytest.raises(QConfigError, match=r"^layers.conv.activation.zero_point: must be in \[0, 255\], got 300"):
        apply_qconfig(copy.deepcopy(tiny.model), base, tiny.example_inputs)


def test_output_with_two_scales_is_named(tiny: Workload, base: dict[str, Any]) -> None:
    base["output"].update(scale=[0.1, 0.2], zero_point=[0, 0])
    with pytest.raises(QConfigError, match=r"^output.scale: per-tensor activations take one scale"):
        apply_qconfig(copy.deepcopy(tiny.model), base, tiny.example_inputs)


def test_qconfig_file_model_is_strict() -> None:
    with pytest.raises(Exception, match="layers"):
        QConfigFile.model_validate({"provenance": {"mixq_version": "x", "model_fingerprint": "y"}})


def test_conv_transpose_weight_scales_are_per_output_channel_on_axis_1() -> None:
    model = ConvTransposeNet()
    (x,) = ConvTransposeNet.example_inputs()
    graph = discover_layers(model, (x,))
    assignment = {"conv": "int8", "up": "int4"}
    quantize_model(model, {k: parse_format(v) for k, v in assignment.items()}, (x,))
    calibrate(model, [x])
    up = build_qconfig(model, graph, assignment).layers["up"]
    assert up.kind == "conv_transpose2d"
    assert up.weight.scale is not None
    assert up.weight.axis == 1 and len(up.weight.scale) == 3  # ConvTranspose2d(4, 3, ...) weight is (4, 3, 3, 3)

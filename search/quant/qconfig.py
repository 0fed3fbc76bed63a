"""The qconfig JSON: a versioned, validated per-layer precision map keyed by fqn.

A file says, for every quantizable layer (execution order), the weight and input-activation
format with its integer range and, when exported from a trained trial, the scales and zero points
the trial learned; which layers were pinned and why; the target profile; the metric and cost the
trial achieved; and provenance.  ``apply_qconfig(model, path, example_inputs)`` applies it to a
fresh copy of the user's model in one call.

Versioning: ``schema_version`` is an integer.  Fields added later are optional with defaults, so
older files keep loading; a file from a newer major version is refused with a message saying so.
Version 2 added ``float_layers``: the compute that stays float (attention matmuls, parameters a module
applies itself, embeddings), each with its reason and MACs; a version-1 file reads as having none listed.
The JSON Schema is published at ``search/quant/qconfig.schema.json`` (regenerate with
``python -m search.quant.qconfig``).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from torch import nn

from search.errors import QConfigError as QConfigError
from search.quant.attention import prepare_model
from search.quant.formats import FormatMap, LayerFormat, TensorFormat, as_formats, parse_format
from search.quant.layers import FloatKind, LayerGraph, LayerKind, discover_layers
from search.quant.qat import OUTPUT_QUANT_ATTR, ActivationQuantizer, FakeQuantMixin, RangeMethod, quantize_model

# 2: float_layers; provenance.qat_steps/seed/spec/job_id/maps_per_pass/batched, feasible, on_front (all
# optional: version-1 files load as before)
SCHEMA_VERSION = 2
SCHEMA_PATH = Path(__file__).with_name("qconfig.schema.json")



class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TensorQConfig(_Strict):
    format: Literal["int4", "int8", "fp16", "fp32"]
    signed: bool | None = Field(default=None, description="integer formats: signed codes")
    granularity: Literal["per_channel", "per_tensor"] | None = None
    axis: int | None = Field(default=None, description="per-channel axis of the weight tensor")
    symmetric: bool | None = None
    quant_min: int | None = None
    quant_max: int | None = None
    scale: list[float] | None = Field(default=None, description="calibrated/learned scales (float32)")
    zero_point: list[int] | None = None

    @field_validator("scale")
    @classmethod
    def _finite_positive(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and not all(v > 0 and v != float("inf") for v in value):
            raise ValueError("scale: every scale must be a finite number > 0")
        return value


class LayerQConfig(_Strict):
    kind: LayerKind
    index: int = Field(ge=0, description="position in execution order")
    format: str = Field(description="layer format name, e.g. int8, int4, w4a8, fp16")
    weight: TensorQConfig
    activation: TensorQConfig
    pinned: bool = False
    pin_reason: str | None = None

    @field_validator("format")
    @classmethod
    def _known(cls, value: str) -> str:
        return parse_format(value).name

    @model_validator(mode="after")
    def _tensor_formats_agree(self) -> LayerQConfig:
        fmt = parse_format(self.format)
        for part, expected in (("weight", fmt.weight.name), ("activation", fmt.activation.name)):
            got = getattr(self, part).format
            if got != expected:
                raise ValueError(
                    f"{part}.format: {got!r} does not match the layer format {self.format!r} ({expected!r})"
                )
        return self


class FloatLayerQConfig(_Strict):
    """Compute the search could not quantize: it runs at float precision and is counted in ``costs``."""

    fqn: str = Field(description="the module running it; empty for the model's own forward")
    kind: FloatKind
    reason: str
    macs: int = Field(ge=0, description="multiply-accumulates for one forward pass of the example inputs")
    num_params: int = Field(default=0, ge=0, description="float weights it reads")


class QualityReport(_Strict):
    metric: str
    value: float
    std: float | None = Field(default=None, description="spread over the evaluations; null with one run")
    n_evaluations: int = 1
    fp32_value: float | None = None
    higher_is_better: bool = True


class Provenance(_Strict):
    mixq_version: str
    model_fingerprint: str
    workload: str | None = None
    study_name: str | None = None
    trial_number: int | None = None
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())
    # what the trial's quality depends on beyond the map: the float summation order of a CPU run
    # follows torch's version and thread count (a rerun with other threads differs in the last digits)
    torch_version: str | None = None
    torch_threads: int | None = None
    # schema 2: how the weights behind the scales were trained (QAT steps of that run, its seed) and the
    # search request (the service: the job spec as submitted, and the job id)
    qat_steps: int | None = Field(default=None, ge=0)
    seed: int | None = None
    spec: dict[str, Any] | None = None
    job_id: int | None = Field(default=None, ge=1)
    # how the search's engine trained it (search.train.run_trials): the maps of its QAT pass (1: alone,
    # spec.maps_per_pass asks for more) and whether they ran as one batched computation; the numbers
    # are those of training the map alone either way
    maps_per_pass: int | None = Field(default=None, ge=1)
    batched: bool | None = None


class QConfigFile(_Strict):
    schema_version: int = Field(default=SCHEMA_VERSION, ge=1)
    range_method: RangeMethod = RangeMethod.MINMAX
    profile: str = "generic"
    layers: dict[str, LayerQConfig]
    output: TensorQConfig | None = Field(default=None, description="quantization of the model output")
    float_layers: list[FloatLayerQConfig] = Field(
        default_factory=list, description="compute left float, with the reason (schema version 2; none in version 1)")
    quality: QualityReport | None = None
    costs: dict[str, float] = Field(default_factory=dict)
    provenance: Provenance
    # schema 2: where the point stands in its search (None: not known, e.g. a file written before)
    feasible: bool | None = Field(default=None, description="meets the search's quality-drop limit")
    on_front: bool | None = Field(default=None, description="on the search's Pareto front (final once it ended)")

    def assignment(self) -> dict[str, LayerFormat]:
        return {fqn: parse_format(layer.format) for fqn, layer in self.layers.items()}


# ---------------------------------------------------------------------------------------------


def model_fingerprint(graph: LayerGraph) -> str:
    """sha256 of the layer structure (fqn, kind, shapes) in execution order: identifies the
    architecture, not the weights."""
    text = json.dumps(
        [[lay.fqn, lay.kind, lay.input_shape[1:], lay.output_shape[1:], lay.num_params] for lay in graph.layers]
    )
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _tensor_format(fmt: TensorFormat) -> Literal["int4", "int8", "fp16", "fp32"]:
    return fmt.name  # type: ignore[return-value]


def _weight_qconfig(fmt: TensorFormat, layer: FakeQuantMixin | None) -> TensorQConfig:
    if not fmt.is_int:
        return TensorQConfig(format=_tensor_format(fmt))
    qmin, qmax = fmt.weight_range()
    scale = None
    if layer is not None:
        scale = [float(s) for s in layer.weight_quant.scale(layer.weight).reshape(-1)]
    axis = layer.weight_quant.axis if layer is not None else 0
    return TensorQConfig(
        format=_tensor_format(fmt), signed=True, granularity="per_channel", axis=axis, symmetric=True,
        quant_min=qmin, quant_max=qmax, scale=scale, zero_point=[0] * len(scale) if scale else None,
    )


def _activation_qconfig(fmt: TensorFormat, quant: ActivationQuantizer | None) -> TensorQConfig:
    if not fmt.is_int:
        return TensorQConfig(format=_tensor_format(fmt))
    qmin, qmax = fmt.activation_range()
    scale = zero_point = None
    symmetric = None
    if quant is not None and bool(quant.initialized):
        s, zp = quant.qparams()
        scale, zero_point, symmetric = [s], [zp], zp == 0
    return TensorQConfig(
        format=_tensor_format(fmt), signed=False, granularity="per_tensor", symmetric=symmetric,
        quant_min=qmin, quant_max=qmax, scale=scale, zero_point=zero_point,
    )


def build_qconfig(
    model: nn.Module | None,
    graph: LayerGraph,
    assignment: FormatMap,
    *,
    pin_reasons: Mapping[str, str] | None = None,
    profile: str = "generic",
    range_method: RangeMethod | str = RangeMethod.MINMAX,
    quality: QualityReport | None = None,
    costs: Mapping[str, float] | None = None,
    workload: str | None = None,
    study_name: str | None = None,
    trial_number: int | None = None,
    qat_steps: int | None = None,
    seed: int | None = None,
    spec: Mapping[str, Any] | None = None,
    maps_per_pass: int | None = None,
    batched: bool | None = None,
) -> QConfigFile:
    """Describe ``assignment`` (fqn -> format).  With a trained fake-quant ``model`` the
    file carries its scales and zero points."""
    formats = as_formats(assignment)
    pinned = pin_reasons or {}  # fqn -> why
    layers: dict[str, LayerQConfig] = {}
    for info in graph.layers:
        fmt = formats[info.fqn]
        module = model.get_submodule(info.fqn) if model is not None else None
        qlayer = module if isinstance(module, FakeQuantMixin) else None
        layers[info.fqn] = LayerQConfig(
            kind=info.kind, index=info.index, format=fmt.name,
            weight=_weight_qconfig(fmt.weight, qlayer),
            activation=_activation_qconfig(fmt.activation, qlayer.input_quant if qlayer else None),
            pinned=info.fqn in pinned, pin_reason=pinned.get(info.fqn),
        )
    last_act = formats[graph.last.fqn].activation
    out_quant = getattr(model, OUTPUT_QUANT_ATTR, None) if model is not None else None
    return QConfigFile(
        range_method=RangeMethod(range_method), profile=profile, layers=layers,
        output=None if last_act.is_identity or not graph.output_is_tensor else _activation_qconfig(last_act, out_quant),
        float_layers=[FloatLayerQConfig(**f.as_dict()) for f in graph.float_layers],
        quality=quality, costs=dict(costs or {}),
        provenance=Provenance(
            mixq_version=version("mixq"), model_fingerprint=model_fingerprint(graph), workload=workload,
            study_name=study_name, trial_number=trial_number,
            torch_version=torch.__version__, torch_threads=torch.get_num_threads(),
            qat_steps=qat_steps, seed=seed, spec=None if spec is None else dict(spec),
            maps_per_pass=maps_per_pass, batched=batched,
        ),
    )


def _format_validation_error(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(file)"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{loc}: {first['msg']}{more}"


def load_qconfig(source: str | Path | Mapping[str, Any]) -> QConfigFile:
    """Read and validate a qconfig file (path, JSON text, or parsed dict)."""
    if isinstance(source, Mapping):
        data: Any = dict(source)
    else:
        try:
            is_path = isinstance(source, Path) or not str(source).lstrip().startswith("{")
            text = Path(source).read_text() if is_path else str(source)
        except OSError as exc:
            raise QConfigError(f"qconfig: cannot read {str(source)!r}: {exc.strerror or exc}") from None
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, ValueError) as exc:
            raise QConfigError(f"qconfig: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise QConfigError("qconfig: the top level must be a JSON object")
    where = _non_finite(data)
    if where is not None:
        raise QConfigError(f"{where}: NaN and Infinity are not allowed (they are not JSON numbers)")
    version = data.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise QConfigError(f"schema_version: must be an integer, got {version!r}")
    if version > SCHEMA_VERSION:
        raise QConfigError(
            f"schema_version: this file is version {version}; this mixq reads versions 1..{SCHEMA_VERSION} "
            "(upgrade mixq to read it)"
        )
    try:
        return QConfigFile.model_validate(data)
    except ValidationError as err:
        raise QConfigError(_format_validation_error(err)) from None


def _non_finite(data: Any, path: tuple[str, ...] = ()) -> str | None:
    """Dotted path of the first NaN/Infinity in parsed JSON, or None."""
    if isinstance(data, float) and not math.isfinite(data):
        return ".".join(path) or "(file)"
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        where = _non_finite(value, (*path, str(key)))
        if where is not None:
            return where
    return None


def apply_qconfig(
    model: nn.Module,
    qconfig: QConfigFile | str | Path | Mapping[str, Any],
    example_inputs: Any,
    *,
    load_scales: bool = True,
) -> nn.Module:
    """Make ``model`` (a fresh copy of the user's fp32 model) a fake-quant model as the file says,
    in place, ready for the user's own QAT loop or for :func:`search.quant.export_onnx`.

    With ``load_scales`` the activation ranges come from the file (no calibration needed); weight
    scales always follow the weights.
    """
    cfg = qconfig if isinstance(qconfig, QConfigFile) else load_qconfig(qconfig)
    prepare_model(model)  # nn.MultiheadAttention -> Linears, as the search saw the model
    # discover on the float model, before the swap: a forward pass through the fake-quant model
    # would initialise its activation ranges from the example inputs
    graph = discover_layers(model, example_inputs)
    missing = [fqn for fqn in graph.fqns if fqn not in cfg.layers]
    if missing:
        raise QConfigError(f"layers: the file has no entry for layer {missing[0]!r} of this model")
    extra = [fqn for fqn in cfg.layers if fqn not in graph.fqns]
    if extra:
        unused = " (it never runs on the example inputs)" if extra[0] in graph.unused else ""
        raise QConfigError(f"layers.{extra[0]}: not a quantizable layer of this model{unused}")
    model = quantize_model(model, cfg.assignment(), example_inputs, range_method=cfg.range_method, graph=graph)
    if load_scales:
        for fqn, layer_cfg in cfg.layers.items():
            module = model.get_submodule(fqn)
            if isinstance(module, FakeQuantMixin):
                _load_activation(module.input_quant, layer_cfg.activation, f"layers.{fqn}.activation")
        out_quant = getattr(model, OUTPUT_QUANT_ATTR, None)
        if out_quant is not None and cfg.output is not None:
            _load_activation(out_quant, cfg.output, "output")
    return model


def _load_activation(quant: ActivationQuantizer, cfg: TensorQConfig, where: str) -> None:
    if cfg.scale is None or cfg.zero_point is None:
        return
    if len(cfg.scale) != 1 or len(cfg.zero_point) != 1:
        raise QConfigError(f"{where}.scale: per-tensor activations take one scale")
    qmin, qmax = quant.fmt.activation_range()
    zp = cfg.zero_point[0]
    if not qmin <= zp <= qmax:
        raise QConfigError(f"{where}.zero_point: must be in [{qmin}, {qmax}], got {zp}")
    with torch.no_grad():
        quant.scale.fill_(cfg.scale[0])
        quant.zero_point.fill_(zp)
        # keep the observed range consistent with the loaded qparams (EMA continues from here)
        quant.min_val.fill_((qmin - zp) * cfg.scale[0])
        quant.max_val.fill_((qmax - zp) * cfg.scale[0])
    quant.initialized.fill_(True)


def save_qconfig(cfg: QConfigFile, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(cfg.model_dump_json(indent=2) + "\n")
    return path


def json_schema() -> dict[str, Any]:
    schema = QConfigFile.model_json_schema()
    schema["$id"] = f"https://mixq.dev/schemas/qconfig-v{SCHEMA_VERSION}.json"
    schema["title"] = "mixq qconfig"
    return schema


if __name__ == "__main__":
    SCHEMA_PATH.write_text(json.dumps(json_schema(), indent=2) + "\n")
    print(f"wrote {SCHEMA_PATH}")

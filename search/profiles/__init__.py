"""Target profiles: what a device supports and how fast.

A profile (YAML or JSON) lists the formats the device runs with their relative MAC throughput
(fp16 = 1.0), the peak fp16 MAC rate, per-layer-kind restrictions, and optionally a measured latency
table (milliseconds per layer fqn and format) that overrides the throughput model, and optionally
layer groups that must share a format (a model-specific profile's: they name layers).  The search space
comes from the profile: a layer may only take formats its kind allows.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from search.errors import ProfileError as ProfileError
from search.quant.formats import parse_format
from search.quant.layers import LayerKind
from search.spec import LayerGroup, first_error_text

BUILTIN_DIR = Path(__file__).parent



class FormatSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    throughput: float = Field(gt=0, allow_inf_nan=False, description="MACs per cycle relative to fp16 (= 1.0)")


class LayerKindSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    formats: list[str] = Field(min_length=1)


class TargetProfile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    peak_macs_per_ms: float = Field(gt=0, allow_inf_nan=False, description="fp16 MACs per millisecond")
    formats: dict[str, FormatSpec] = Field(min_length=1)
    layer_kinds: dict[LayerKind, LayerKindSpec] = Field(default_factory=dict)
    latency_table: dict[str, dict[str, float]] = Field(default_factory=dict, description="ms per fqn and format")
    layer_groups: list[LayerGroup] = Field(
        default_factory=list, max_length=100,
        description="layers that must share a format (e.g. both inputs of a residual add): lists of fqn globs, "
        "kind:<kind>, @first or @last",
    )

    @field_validator("formats")
    @classmethod
    def _format_names(cls, value: dict[str, FormatSpec]) -> dict[str, FormatSpec]:
        return {parse_format(k).name: v for k, v in value.items()}

    @field_validator("latency_table")
    @classmethod
    def _latency_entries(cls, value: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        # format names normalised as in ``formats`` (lookups use the canonical name: W8A8 -> int8)
        table: dict[str, dict[str, float]] = {}
        for fqn, row in value.items():
            table[fqn] = {}
            for name, ms in row.items():
                try:
                    canonical = parse_format(name).name
                except ValueError as exc:
                    raise ValueError(f"latency_table.{fqn}.{name}: {exc}") from None
                if not (math.isfinite(ms) and ms >= 0):
                    raise ValueError(f"latency_table.{fqn}.{name}: must be a number >= 0")
                table[fqn][canonical] = ms
        return table

    @model_validator(mode="after")
    def _kinds_use_known_formats(self) -> TargetProfile:
        for kind, spec in self.layer_kinds.items():
            for name in spec.formats:
                if parse_format(name).name not in self.formats:
                    raise ValueError(
                        f"layer_kinds.{kind}.formats: {name!r} is not in the profile's formats "
                        f"({', '.join(self.formats)})"
                    )
        return self

    def allowed_formats(self, kind: LayerKind) -> list[str]:
        spec = self.layer_kinds.get(kind)
        return [parse_format(n).name for n in spec.formats] if spec else list(self.formats)

    def throughput(self, fmt_name: str) -> float:
        try:
            return self.formats[fmt_name].throughput
        except KeyError:
            raise ProfileError(
                f"format: {fmt_name!r} is not supported by profile {self.name!r}; allowed: {', '.join(self.formats)}"
            ) from None


def builtin_profiles() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def parse_profile(data: Any, origin: str = "profile") -> TargetProfile:
    if not isinstance(data, dict):
        raise ProfileError(f"{origin}: the top level must be a mapping")
    try:
        return TargetProfile.model_validate(data)
    except ValidationError as err:
        raise ProfileError(f"{origin}: {first_error_text(err, '(file)')}") from None


def parse_profile_text(text: str, origin: str = "profile") -> TargetProfile:
    """Parse YAML or JSON text (JSON is YAML) with the safe loader."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ProfileError(f"{origin}: not valid YAML/JSON: {exc}") from None
    return parse_profile(data, origin)


def load_profile(name_or_path: str | Path) -> TargetProfile:
    """A built-in profile by name (``generic``, ``npu-int4``) or a YAML/JSON file."""
    text_name = str(name_or_path)
    builtin = BUILTIN_DIR / f"{text_name}.yaml"
    if "/" not in text_name and builtin.exists():
        return parse_profile_text(builtin.read_text(), text_name)
    path = Path(name_or_path)
    if not path.is_file():
        raise ProfileError(
            f"profile: {text_name!r} is neither a built-in profile ({', '.join(builtin_profiles())}) nor a file"
        )
    return parse_profile_text(path.read_text(), str(path))


def profile_to_json(profile: TargetProfile) -> str:
    return json.dumps(profile.model_dump(mode="json"), indent=2)

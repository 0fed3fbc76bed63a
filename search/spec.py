"""What a search is asked to do (:class:`SearchSpec`) and what it reports (:class:`TrialOutcome`,
:class:`SearchResult`).  These are the search library's words; the service keeps its own DB rows and
API schemas and converts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from search.formats import parse_format
from search.layers import LayerInfo


class SearchError(ValueError):
    """The search cannot start (bad spec, unreachable storage...); the message names the field."""


class CostObjective(StrEnum):
    BITOPS = "bitops"  # MACs x weight bits x activation bits
    WEIGHT_BYTES = "weight_bytes"
    ACTIVATION_BYTES = "activation_bytes"
    LATENCY_MS = "latency_ms"  # from the target profile


class SamplerName(StrEnum):
    TPE = "tpe"
    NSGA2 = "nsga2"
    RANDOM = "random"


class Pin(BaseModel):
    """Fix the layers matched by ``match`` to ``format`` (``None`` unpins them).

    ``match`` is an fqn glob (``features.*``), ``kind:<layer kind>`` (``kind:linear``), ``@first``
    or ``@last`` (first/last executed layer)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    match: str = Field(min_length=1, max_length=200)
    format: str | None = None

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str | None) -> str | None:
        if value is not None:
            parse_format(value)
        return value


class SearchSpec(BaseModel):
    """A search request, validated at construction; errors name the field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workload: str = Field(min_length=1, max_length=200, description="built-in name or 'pkg.module:factory'")
    workload_options: dict[str, Any] = Field(default_factory=dict)
    profile: str = Field(default="generic", description="built-in profile name or a path to a YAML/JSON file")
    formats: tuple[str, ...] = Field(default=("int4", "int8", "fp16"), min_length=1)
    pin_first_last: str | None = Field(
        default="int8", description="format for the first and last executed layer; null: free"
    )
    pins: tuple[Pin, ...] = ()
    cost_objectives: tuple[CostObjective, ...] = Field(default=(CostObjective.BITOPS,), min_length=1, max_length=2)
    max_quality_drop: float | None = Field(
        default=None, ge=0, description="feasible only if fp32 metric - metric <= this"
    )
    n_trials: int = Field(default=24, ge=1, le=100_000)
    timeout_s: float | None = Field(default=None, gt=0)
    qat_steps: int = Field(default=200, ge=0, le=1_000_000)
    seed: int = Field(default=0, ge=0)
    sampler: SamplerName = SamplerName.TPE
    seed_with_baselines: bool = True
    seed_with_sensitivity: bool = True
    reevaluate_front: int = Field(default=2, ge=0, le=10, description="extra seeds per front point before reporting")
    storage: str | None = Field(default=None, description="Optuna storage URL; null: in memory")
    study_name: str = Field(default="mixq", min_length=1, max_length=200)
    max_retries: int = Field(default=2, ge=0, le=10, description="retries of a trial whose process died")
    heartbeat_interval_s: int = Field(default=5, ge=1, le=600, description="RDB storage: trial heartbeat period")
    grace_period_s: int = Field(default=20, ge=2, le=3600, description="RDB storage: a trial silent this long is stale")
    weights_dir: str | None = Field(default=None, description="save each trained trial's state dict here (trial-N.pt)")
    device: str = Field(default="cpu", pattern=r"^(cpu|cuda(:\d+)?|auto)$")

    @field_validator("formats")
    @classmethod
    def _known_formats(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        names = tuple(parse_format(v).name for v in value)
        if len(set(names)) != len(names):
            raise ValueError("formats: each format may appear once")
        return names

    @field_validator("pin_first_last")
    @classmethod
    def _known_pin(cls, value: str | None) -> str | None:
        return None if value is None else parse_format(value).name

    @model_validator(mode="after")
    def _budget(self) -> SearchSpec:
        if self.timeout_s is None and self.n_trials < 1:
            raise ValueError("n_trials: must be >= 1")
        return self


@dataclass(frozen=True)
class TrialOutcome:
    """One evaluated assignment."""

    number: int
    assignment: Mapping[str, str]  # fqn -> format name, every layer, execution order
    quality: float  # the workload's metric (mean over evaluations)
    quality_std: float  # spread over evaluations (0 with one evaluation)
    n_evaluations: int
    costs: Mapping[str, float]  # cost objective name -> value
    feasible: bool
    duration_s: float
    source: str  # "baseline", "sensitivity", "sampler", "retry"
    cached: bool = False
    qconfig: dict[str, Any] | None = None  # the qconfig JSON of the trained trial


@dataclass
class SearchProgress:
    finished: int
    total: int
    best_quality: float | None
    message: str = ""


@dataclass(frozen=True)
class SearchLayer:
    """One layer as the search saw it: what it is, what it could take, and what each choice costs."""

    info: LayerInfo
    choices: tuple[str, ...]  # format names the search could give it; () when pinned
    pinned: str | None  # the format it was pinned to, or None when free
    costs_by_format: Mapping[str, Mapping[str, float]]  # format name -> cost objective -> value

    @property
    def fqn(self) -> str:
        return self.info.fqn

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (the CLI's result file, the service's job row)."""
        return {
            "fqn": self.info.fqn, "kind": str(self.info.kind), "index": self.info.index, "macs": self.info.macs,
            "num_params": self.info.num_params, "choices": list(self.choices), "pinned": self.pinned,
            "costs_by_format": {f: dict(c) for f, c in self.costs_by_format.items()},
        }


@dataclass
class SearchResult:
    workload: str
    metric_name: str
    higher_is_better: bool
    fp32_quality: float
    layers: list[SearchLayer]  # execution order
    pinned: dict[str, str]  # fqn -> reason
    trials: list[TrialOutcome] = field(default_factory=list)
    front: list[TrialOutcome] = field(default_factory=list)
    study_name: str = ""

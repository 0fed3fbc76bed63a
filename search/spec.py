"""What a search is asked to do (:class:`SearchRequest`, run as a :class:`SearchSpec`) and what it
reports (:class:`TrialOutcome`, :class:`SearchResult`).  These are the search library's words; the
service extends the request for its job body, keeps its own DB rows and API schemas, and converts."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from search.formats import parse_format


class CostObjective(StrEnum):
    BITOPS = "bitops"  # MACs x weight bits x activation bits
    WEIGHT_BYTES = "weight_bytes"
    ACTIVATION_BYTES = "activation_bytes"
    LATENCY_MS = "latency_ms"  # from the target profile


class SamplerName(StrEnum):
    TPE = "tpe"
    NSGA2 = "nsga2"
    RANDOM = "random"


MAX_JSON_DEPTH = 8
INT32_MAX = 2**31 - 1  # seeds and counts fit a PostgreSQL INTEGER where a service stores them


def check_json_value(value: Any, where: str, depth: int = 0) -> None:
    """Reject what JSON cannot carry faithfully from an untyped field (pydantic's ``allow_inf_nan=False``
    covers the typed ones): NaN/inf, NUL characters, integers past 2**53, deep nesting."""
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"{where}: nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: must be a finite number, got {value}")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**53:
        raise ValueError(f"{where}: integer out of range (|x| <= 2**53)")
    if isinstance(value, str) and "\x00" in value:
        raise ValueError(f"{where}: must not contain NUL characters")
    if isinstance(value, dict):
        for key, item in value.items():
            check_json_value(key, f"{where}.<key>", depth + 1)
            check_json_value(item, f"{where}.{key}", depth + 1)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            check_json_value(item, f"{where}[{i}]", depth + 1)


def first_error_text(err: ValidationError, where: str = "(input)") -> str:
    """``loc.path: message`` of a validation error's first entry, for a one-line error (CLI, files)."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or where
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{loc}: {first['msg']}{more}"


_NO_NUL = r"^[^\x00]*$"  # strings end up in JSON columns and file names


class Pin(BaseModel):
    """Fix the layers matched by ``match`` to ``format`` (``None`` unpins them).

    ``match`` is an fqn glob (``features.*``), ``kind:<layer kind>`` (``kind:linear``), ``@first``
    or ``@last`` (first/last executed layer)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    match: str = Field(min_length=1, max_length=200, pattern=_NO_NUL)
    format: str | None = Field(default=None, max_length=32)

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str | None) -> str | None:
        if value is not None:
            parse_format(value)
        return value


class SearchRequest(BaseModel):
    """What a user asks a search to do, validated at construction; errors name the field.

    The CLI builds a :class:`SearchSpec` (this plus how to run it); a service extends this with its own
    fields (priority, uploads) and stores it as JSON: every bound here holds for untrusted input."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    workload: str = Field(min_length=1, max_length=200, pattern=_NO_NUL,
                          description="built-in name or 'pkg.module:factory'")
    workload_options: dict[str, Any] = Field(default_factory=dict)
    profile: str = Field(default="generic", min_length=1, max_length=1000, pattern=_NO_NUL,
                         description="built-in profile name or a path to a YAML/JSON file")
    formats: tuple[str, ...] = Field(default=("int4", "int8", "fp16"), min_length=1, max_length=16)
    pin_first_last: str | None = Field(
        default="int8", max_length=32, description="format for the first and last executed layer; null: free"
    )
    pins: tuple[Pin, ...] = Field(default=(), max_length=100)
    cost_objectives: tuple[CostObjective, ...] = Field(default=(CostObjective.BITOPS,), min_length=1, max_length=2)
    max_quality_drop: float | None = Field(
        default=None, ge=0, le=1e9, description="feasible only if fp32 metric - metric <= this"
    )
    n_trials: int = Field(default=24, ge=1, le=100_000)
    timeout_s: float | None = Field(default=None, gt=0, le=1e8)
    qat_steps: int = Field(default=200, ge=0, le=1_000_000)
    seed: int = Field(default=0, ge=0, le=INT32_MAX)
    sampler: SamplerName = SamplerName.TPE
    # search tuning knobs (defaults suit real searches; tests turn them down)
    seed_with_baselines: bool = True
    seed_with_sensitivity: bool = True
    reevaluate_front: int = Field(default=2, ge=0, le=10, description="extra seeds per front point before reporting")

    @field_validator("workload_options")
    @classmethod
    def _json_safe_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_json_value(value, "workload_options")
        return value

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


class SearchSpec(SearchRequest):
    """A search request plus how to run it (storage, study, device)."""

    storage: str | None = Field(default=None, description="Optuna storage URL; null: in memory")
    study_name: str = Field(default="mixq", min_length=1, max_length=200)
    max_retries: int = Field(default=2, ge=0, le=10, description="retries of a trial whose process died")
    heartbeat_interval_s: int = Field(default=5, ge=1, le=600, description="RDB storage: trial heartbeat period")
    grace_period_s: int = Field(default=20, ge=2, le=3600, description="RDB storage: a trial silent this long is stale")
    weights_dir: str | None = Field(default=None, description="save each trained trial's state dict here (trial-N.pt)")
    device: str = Field(default="cpu", pattern=r"^(cpu|cuda(:\d+)?|auto)$")

    @classmethod
    def of(cls, request: SearchRequest, **run: Any) -> SearchSpec:
        """``request``'s fields (a subclass's own fields dropped) plus the run-time ones in ``run``."""
        return cls(**request.model_dump(include=set(SearchRequest.model_fields)), **run)


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


class SearchPhase(StrEnum):
    """What a search is doing; each phase can take a large share of the wall time."""

    FP32 = "fp32"  # measuring the fp32 reference
    SEEDING = "seeding"  # baselines, the sensitivity sweep, the greedy front (enqueued trials)
    SAMPLING = "sampling"  # trials the sampler suggests
    REEVALUATING = "reevaluating"  # extra seeds for the front points, after the trial budget
    PROMOTING = "promoting"  # multi-fidelity: longer QAT for the promising trials
    DONE = "done"


@dataclass
class SearchProgress:
    finished: int  # trials trained (study-wide, cached repeats excluded)
    total: int  # the trial budget
    best_quality: float | None
    message: str = ""
    phase: SearchPhase = SearchPhase.SAMPLING
    elapsed_s: float = 0.0  # since this process started the search
    eta_s: float | None = None  # estimated time left, all phases; None until a rate is known


@dataclass
class SearchResult:
    workload: str
    metric_name: str
    higher_is_better: bool
    fp32_quality: float
    layers: list[dict[str, Any]]  # LayerInfo as dicts, execution order
    pinned: dict[str, str]  # fqn -> reason
    trials: list[TrialOutcome] = field(default_factory=list)
    front: list[TrialOutcome] = field(default_factory=list)
    study_name: str = ""

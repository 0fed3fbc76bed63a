"""API schemas (request and response bodies).  Distinct from DB rows (``service.models``) and from the
search library's ``SearchSpec``/``TrialOutcome``; ``service.routes`` converts between them."""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from search import BUILTIN_WORKLOADS, CostObjective, SamplerName, check_workload_options

INT32_MAX = 2**31 - 1  # every integer we store fits a PostgreSQL INTEGER
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"  # upload/profile names: no paths, no spaces
NAME_RE = re.compile(NAME_PATTERN)
MAX_JSON_DEPTH = 8


def check_json_value(value: Any, where: str, depth: int = 0) -> None:
    """Reject what a JSON column cannot hold faithfully: NaN/inf, NUL characters, deep nesting."""
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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class PinIn(_Strict):
    match: str = Field(min_length=1, max_length=200)
    format: str | None = Field(default=None, max_length=32)


class JobCreate(_Strict):
    """A search job.  Unknown fields are rejected (422 naming the field)."""

    workload: str = Field(min_length=1, max_length=200, description="built-in name, allow-listed entry point, or a label when `model` is set")
    workload_options: dict[str, Any] = Field(default_factory=dict)
    profile: str = Field(default="generic", min_length=1, max_length=100)
    formats: list[str] = Field(default=["int4", "int8", "fp16"], min_length=1, max_length=16)
    pin_first_last: str | None = Field(default="int8", max_length=32)
    pins: list[PinIn] = Field(default_factory=list, max_length=100)
    cost_objectives: list[CostObjective] = Field(default=[CostObjective.BITOPS], min_length=1, max_length=2)
    max_quality_drop: float | None = Field(default=None, ge=0, le=1e9)
    n_trials: int = Field(default=24, ge=1, le=100_000)
    timeout_s: float | None = Field(default=None, gt=0, le=1e8)
    qat_steps: int = Field(default=200, ge=0, le=1_000_000)
    seed: int = Field(default=0, ge=0, le=INT32_MAX)
    sampler: SamplerName = SamplerName.TPE
    priority: int = Field(default=0, ge=-1000, le=1000)
    model: str | None = Field(default=None, pattern=NAME_PATTERN, description="name of an uploaded .pt2")
    dataset: str | None = Field(default=None, pattern=NAME_PATTERN, description="name of an uploaded .npz")
    # search tuning knobs (defaults suit real searches; tests turn them down)
    seed_with_baselines: bool = True
    seed_with_sensitivity: bool = True
    reevaluate_front: int = Field(default=2, ge=0, le=10)

    @field_validator("workload_options")
    @classmethod
    def _json_safe_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_json_value(value, "workload_options")
        return value

    @model_validator(mode="after")
    def _json_safe_strings(self) -> JobCreate:
        for name in ("workload", "profile", "pin_first_last", "formats", "pins"):
            check_json_value(_plain(getattr(self, name)), name)
        if self.model is None and self.workload in BUILTIN_WORKLOADS:
            # caught at submission, not as a failed job later; entry points are not imported here
            check_workload_options(self.workload, self.workload_options)
        return self


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


class Progress(BaseModel):
    finished: int
    total: int
    fraction: float


class Counts(BaseModel):
    complete: int
    failed: int
    running: int
    infeasible: int


class Best(BaseModel):
    quality: float
    trial_number: int


class JobOut(BaseModel):
    id: int
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    spec: dict[str, Any]
    progress: Progress
    counts: Counts
    best: Best | None
    metric: str | None
    higher_is_better: bool | None
    fp32_quality: float | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None


class JobPage(BaseModel):
    items: list[JobOut]
    total: int
    limit: int
    offset: int


class TrialOut(BaseModel):
    number: int
    state: Literal["complete", "failed", "running"]
    assignment: dict[str, str]
    quality: float | None
    quality_std: float | None
    n_evaluations: int
    costs: dict[str, float]
    feasible: bool
    duration_s: float
    source: str
    on_front: bool


class TrialPage(BaseModel):
    items: list[TrialOut]
    total: int
    limit: int
    offset: int


class LayerOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    fqn: str
    kind: str | None = None
    index: int | None = None
    pinned: bool = False
    pin_reason: str | None = None


class ParetoOut(BaseModel):
    job_id: int
    metric: str | None
    higher_is_better: bool | None
    fp32_quality: float | None
    cost_objectives: list[str]
    layers: list[LayerOut]
    points: list[TrialOut]
    trials: list[TrialOut]


class UploadOut(BaseModel):
    name: str
    kind: Literal["model", "dataset"]
    size_bytes: int
    sha256: str
    info: dict[str, Any]
    created_at: datetime


class ProfileOut(BaseModel):
    name: str
    profile: dict[str, Any]
    created_at: datetime


class Meta(BaseModel):
    workloads: list[str]
    profiles: list[str]
    formats: list[str]
    cost_objectives: list[str]
    samplers: list[str]
    defaults: dict[str, Any]


class Health(BaseModel):
    status: str

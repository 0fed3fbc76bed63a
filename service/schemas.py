"""API schemas (request and response bodies).  Distinct from DB rows (``service.models``) and from the
search library's ``SearchSpec``/``TrialOutcome``; ``service.routes`` converts between them."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, computed_field, model_validator

from search import BUILTIN_WORKLOADS, SearchRequest, check_workload_options, summarize_assignment

INT32_MAX = 2**31 - 1  # every integer we store fits a PostgreSQL INTEGER
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"  # upload/profile names: no paths, no spaces
NAME_RE = re.compile(NAME_PATTERN)


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC)  # rows hold naive UTC (service.models)


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]


class JobCreate(SearchRequest):
    """A search job: the search request plus what only the service has.  Unknown fields are rejected
    (422 naming the field).  Stored as its JSON in ``Job.spec`` and read back with :func:`job_spec`."""

    priority: int = Field(default=0, ge=-1000, le=1000, description="Higher runs first among queued jobs.")
    model: str | None = Field(default=None, pattern=NAME_PATTERN,
                              description="Name of an uploaded ONNX model (with a dataset instead of a workload).")
    dataset: str | None = Field(default=None, pattern=NAME_PATTERN, description="Name of an uploaded .npz dataset.")

    @model_validator(mode="after")
    def _builtin_workload_options(self) -> JobCreate:
        if self.model is None and self.workload in BUILTIN_WORKLOADS:
            # caught at submission, not as a failed job later; entry points are not imported here
            check_workload_options(self.workload, self.workload_options)
        return self


def job_spec(stored: dict[str, Any]) -> JobCreate:
    """A job's stored spec (``Job.spec``, JSON), typed."""
    return JobCreate.model_validate(stored)


class Progress(BaseModel):
    finished: int
    total: int
    fraction: float
    phase: str | None = Field(default=None, description="fp32, seeding, sampling, reevaluating, promoting, done")
    message: str = ""
    elapsed_s: float | None = Field(default=None, description="the search's wall time at its last report")
    eta_s: float | None = Field(default=None, description="estimated time left at the last report")
    reported_at: UtcDatetime | None = None


class Counts(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    complete: int
    failed: int = Field(description="trials that failed: their own error, or their worker died mid-trial")
    retried: int = Field(description="failed trials whose parameters were queued again (their worker died)")
    running: int
    infeasible: int


class FidelityPointOut(BaseModel):
    number: int = Field(description="trial number")
    short_quality: float = Field(description="quality at the first rung (short_qat_steps)")
    long_quality: float = Field(description="quality at the highest rung it reached (mean over its runs there)")
    long_qat_steps: int


class FidelityOut(BaseModel):
    """Does the short first rung rank the front as the longest runs do?  Only a search with several
    ``fidelity_rungs`` has one."""

    short_qat_steps: int
    points: list[FidelityPointOut] = Field(description="the front points trained at a higher rung")
    kendall_tau: float | None = Field(description="rank agreement of short and long qualities; None under 2 points")
    warning: str | None = Field(default=None, description="set when kendall_tau < 0.8")


class Best(BaseModel):
    quality: float
    trial_number: int


class CheapestOut(BaseModel):
    trial_number: int
    quality: float
    cost: float = Field(description="its first cost objective (cost_objective)")
    cost_objective: str


class FrontSummaryOut(BaseModel):
    """The jobs list's summary of a job's front."""

    size: int | None = Field(description="points on the front (the live front while the job runs); null: none yet")
    final: bool = Field(description="the search's own front (re-evaluated, merged within noise): the job ended")
    cheapest: CheapestOut | None = Field(
        description="the cheapest trial within the quality-drop limit (max_quality_drop; any trial without one): "
        "least first cost, then best quality")


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    spec: dict[str, Any]
    progress: Progress
    counts: Counts
    best: Best | None
    metric: str | None
    higher_is_better: bool | None
    fp32_quality: float | None
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    error: str | None
    fidelity: FidelityOut | None = Field(description="the search's fidelity check, once it ends; null for one rung")
    front: FrontSummaryOut | None = Field(default=None, description="front size and cheapest feasible point")


class JobPage(BaseModel):
    items: list[JobOut]
    total: int
    limit: int
    offset: int


class TrialOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
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
    error: str | None = Field(default=None, description="why a failed trial failed")
    retried: bool = Field(default=False, description="a failed trial whose parameters were queued again")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def assignment_summary(self) -> str:
        """``int8x2-int4x4`` (formats by layer count), as in the CLI's and the API's file names."""
        return summarize_assignment(self.assignment)


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
    proxy_score: float | None = Field(
        default=None, description="the Fisher proxy's int4 score (loss units, higher = more sensitive) where it "
        "ordered the search instead of a one-layer QAT sweep; set when the job ends")


class ArtefactsOut(BaseModel):
    """What a front point of a succeeded job can be downloaded as, beside its qconfig."""

    onnx: bool = Field(description="GET .../pareto/{number}/model.onnx answers the QDQ ONNX model")
    weights: bool = Field(description="GET .../pareto/{number}/weights answers the trained weights")
    fingerprint: str | None = Field(default=None, description="the weights' fingerprint (mixq checkpoint)")
    max_abs_diff_default: float | None = Field(
        default=None, description="onnxruntime (default session options) vs the fake-quant model, on the "
        "workload's example inputs, when the worker checked the export",
    )
    error: str | None = Field(default=None, description="why a file could not be made")


class FloatLayerOut(BaseModel):
    """Compute of the model that stays float: not searched, counted in every trial's costs at float precision."""

    fqn: str = Field(description="the module that runs it ('' for the model's own forward)")
    kind: str = Field(description="attention_matmul, embedding, functional_weight, matmul or multihead_attention")
    reason: str = Field(description="why it stays float")
    macs: int = Field(description="its multiply-accumulates in one forward of the example inputs")
    num_params: int = Field(default=0, description="the float weights it reads")


FLOAT_LAYER_MARK = "stays_float"  # a float layer's row in the job's stored layer list (Job.layers)


def split_layers(rows: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(layers, float layers) of a job's stored layer list: the worker stores the float layers after the layers,
    each marked with ``FLOAT_LAYER_MARK``."""
    marked = [row for row in rows if isinstance(row, dict) and row.get(FLOAT_LAYER_MARK)]
    layers = [row for row in rows if isinstance(row, dict) and not row.get(FLOAT_LAYER_MARK)]
    return layers, [{k: v for k, v in row.items() if k != FLOAT_LAYER_MARK} for row in marked]


class ParetoOut(BaseModel):
    job_id: int
    metric: str | None
    higher_is_better: bool | None
    fp32_quality: float | None
    cost_objectives: list[str]
    layers: list[LayerOut]
    float_layers: list[FloatLayerOut] = Field(
        default_factory=list, description="compute that stays float (attention matmuls Q K^T and A V, embeddings, "
        "weights applied functionally): listed with the reason and its MACs, never searched, and counted in every "
        "trial's costs at float precision",
    )
    points: list[TrialOut]
    trials: list[TrialOut]
    artefacts: dict[str, ArtefactsOut] = Field(
        default_factory=dict, description="trial number -> its downloads (front points of a succeeded job)"
    )


class UploadOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    name: str
    kind: Literal["model", "dataset"]
    size_bytes: int
    sha256: str
    info: dict[str, Any]
    created_at: UtcDatetime


class ProfileOut(BaseModel):
    name: str
    profile: dict[str, Any]
    created_at: UtcDatetime


class Meta(BaseModel):
    workloads: list[str]
    profiles: list[str]
    formats: list[str]
    cost_objectives: list[str]
    samplers: list[str]
    defaults: dict[str, Any]
    help: dict[str, str] = Field(description="each request field's description (the dashboard's hints)")
    profile_formats: dict[str, list[str]] = Field(
        default_factory=dict, description="per profile, the formats a job that names none searches")


class Health(BaseModel):
    status: str

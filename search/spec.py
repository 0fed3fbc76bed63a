"""What a search is asked to do (:class:`SearchRequest`, run as a :class:`SearchSpec`) and what it
reports (:class:`TrialOutcome`, :class:`SearchResult`).  These are the search library's words; the
service extends the request for its job body, keeps its own DB rows and API schemas, and converts."""

from __future__ import annotations

import itertools
import math
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

from search.errors import SearchError as SearchError
from search.quant.formats import parse_format


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
# From this many free layers on, a one-rung search's short trials mis-ranked maps of equal cost and
# retraining the better half 3x longer (rungs [1, 3], eta 2) matched or beat every baseline at equal
# wall time (denoise-deep, 15 free layers: bench/results/baselines/denoise-deep.md, denoise-deep_seed1.md); at 4 free
# layers (denoise) it was not better (multifidelity_denoise_eta2.md).
AUTO_FIDELITY_FREE_LAYERS = 10
AUTO_RUNGS = (1, 3)
AUTO_ETA = 2
DEFAULT_ETA = 3
INT32_MAX = 2**31 - 1  # seeds and counts fit a PostgreSQL INTEGER where a service stores them
MAX_MAPS_PER_PASS = 64  # the most maps one QAT pass may train together (SearchRequest.maps_per_pass)


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


def field_help(model: type[BaseModel], name: str) -> str:
    """A request field's description, the one text the CLI's help, the API's schema and the dashboard's
    hints show."""
    description = model.model_fields[name].description
    if not description:
        raise KeyError(f"{model.__name__}.{name} has no description")
    return description


def first_error_text(err: ValidationError, where: str = "(input)") -> str:
    """``loc.path: message`` of a validation error's first entry, for a one-line error (CLI, files)."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or where
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{loc}: {first['msg']}{more}"


_NO_NUL = r"^[^\x00]*$"  # strings end up in JSON columns and file names
LayerPattern = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=_NO_NUL)]
LayerGroup = Annotated[tuple[LayerPattern, ...], Field(min_length=1, max_length=100)]


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
        """The canonical name (``INT8`` -> ``int8``), as ``formats`` stores them: the profile's
        formats and the qconfig files use that spelling."""
        return None if value is None else parse_format(value).name


class SearchRequest(BaseModel):
    """What a user asks a search to do, validated at construction; errors name the field.

    The CLI builds a :class:`SearchSpec` (this plus how to run it); a service extends this with its own
    fields (priority, uploads) and stores it as JSON: every bound here holds for untrusted input."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    workload: str = Field(min_length=1, max_length=200, pattern=_NO_NUL,
                          description="The model, data and metric to search: a built-in name (digits, denoise) or "
                                      "an allow-listed package.module:factory.")
    workload_options: dict[str, Any] = Field(
        default_factory=dict, description="Passed to the workload's factory, e.g. pretraining steps of the fp32 model.")
    profile: str = Field(default="generic", min_length=1, max_length=1000, pattern=_NO_NUL,
                         description="The target hardware: which formats it runs and what each costs (a built-in "
                                     "profile, generic or npu-int4, or a YAML/JSON file).")
    formats: tuple[str, ...] = Field(
        default=(), max_length=16,
        description="Precisions a layer may take. intN: N-bit weights and activations; wXaY: X-bit weights, Y-bit "
                    "activations (w4a8: int4 weights, int8 activations); fp16/fp32: floating point. None given: "
                    "every format the profile runs except fp32, split ones such as w4a8 too.",
    )
    pin_first_last: str | None = Field(
        default="int8", max_length=32,
        description="The first and last executed layers are the most sensitive; they are fixed to this format "
                    "(null or 'free': searched like the others).",
    )
    pins: tuple[Pin, ...] = Field(
        default=(), max_length=100,
        description="Fix layers to a format by fqn glob (features.*), kind:<kind> or @first/@last; format 'free' "
                    "unpins.")
    groups: tuple[LayerGroup, ...] = Field(
        default=(), max_length=100,
        description="layers that must share a format: lists of fqn globs, kind:<kind>, @first or @last",
    )
    cost_objectives: tuple[CostObjective, ...] = Field(
        default=(CostObjective.BITOPS,), min_length=1, max_length=2,
        description="What the front trades quality against. bitops: MACs x weight bits x activation bits; "
                    "weight_bytes / activation_bytes: memory; latency_ms: the profile's latency model.")
    max_quality_drop: float | None = Field(
        default=None, ge=0, le=1e9,
        description="In the workload metric's own units (accuracy: 0.01 = one point; PSNR: dB): trials that lose "
                    "more than this vs fp32 are infeasible.",
    )
    n_trials: int = Field(default=24, ge=1, le=100_000,
                          description="Trained maps (each a short QAT run) for the whole study; seeds count, cached "
                                      "repeats do not.")
    timeout_s: float | None = Field(default=None, gt=0, le=1e8,
                                    description="Wall-clock limit in seconds; none: no limit.")
    qat_steps: int = Field(default=200, ge=0, le=1_000_000,
                           description="Optimizer steps of quantization-aware training per trial.")
    seed: int = Field(default=0, ge=0, le=INT32_MAX, description="Random seed of the sampler and of each QAT run.")
    sampler: SamplerName = Field(
        default=SamplerName.TPE, description="How new maps are proposed after the seeds (tpe, nsga2, random).")
    # search tuning knobs (defaults suit real searches; tests turn them down)
    seed_with_baselines: bool = True
    seed_with_sensitivity: bool = True
    check_front_neighbours: bool = Field(
        default=True, description="spend the last half of the trial budget on the front's untried one-layer "
                                  "neighbours that could dominate it (cheaper by one format, or swapped at equal cost)")
    reevaluate_front: int = Field(default=2, ge=0, le=10,
                                  description="Extra seeds per front point, where neighbours are within noise, "
                                              "before the front is reported.")
    # multi-fidelity (search/study/multifidelity.py); null: chosen by resolve_fidelity when the search starts
    fidelity_rungs: tuple[int, ...] | None = Field(
        default=None, min_length=1, max_length=6,
        description="QAT length of each rung as a multiple of the QAT steps, e.g. 1,3,9: starts at 1, increasing, "
                    "at most 6 rungs. 1,3: the best maps are trained again 3x longer and the result says whether the "
                    "short runs rank them as the long ones do; 1: one rung, no check. None: automatic (1,3 with "
                    f"promotion eta 2 for a model with {AUTO_FIDELITY_FREE_LAYERS} or more free layers under a time "
                    "or QAT-step budget, else 1).",
    )
    promotion_eta: int | None = Field(
        default=None, ge=2, le=10,
        description="The top 1/eta of a rung's maps move up to the next rung (2 to 10). None: 3 (2 with automatic "
                    "rungs).",
    )
    budget_qat_steps: int | None = Field(
        default=None, ge=1, le=10**12,
        description="Total QAT steps over every rung and re-evaluation; none: n_trials maps at the first rung.",
    )
    min_gain: float | None = Field(
        default=None, ge=0, le=1e9,
        description="A front point must beat a cheaper one by more than this (metric units) and their spread.",
    )
    maps_per_pass: int | None = Field(
        default=None, ge=1, le=MAX_MAPS_PER_PASS,
        description=f"Maps trained together in one QAT pass (1 to {MAX_MAPS_PER_PASS}): the sampler proposes that many "
                    "at once and they train on the same batches, each map's numbers those of training it alone, so "
                    "only the speed changes. 1: one map at a time. None: automatic from the model's size and the "
                    "device (8 for a small model on a CPU, 1 for a large one or where memory is short).",
    )

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

    @field_validator("fidelity_rungs")
    @classmethod
    def _increasing_rungs(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is None:
            return None
        if value[0] != 1 or any(b <= a for a, b in itertools.pairwise(value)) or value[-1] > 1000:
            raise ValueError(
                f"fidelity_rungs: must start at 1 and increase, at most 1000, e.g. [1, 3, 9]; got {list(value)}"
            )
        return value

    @model_validator(mode="after")
    def _budget_needs_steps(self) -> SearchRequest:
        if self.budget_qat_steps is not None and self.qat_steps < 1:
            raise ValueError("budget_qat_steps: a budget in QAT steps needs qat_steps >= 1")
        return self

    @field_validator("pin_first_last")
    @classmethod
    def _known_pin(cls, value: str | None) -> str | None:
        return None if value is None else parse_format(value).name


class SearchSpec(SearchRequest):
    """A search request plus how to run it (storage, study, device)."""

    storage: str | None = Field(
        default=None, description="Optuna storage URL (sqlite:///f.db, postgresql+psycopg://...); an existing "
                                  "study of that name resumes; none: in memory.")
    study_name: str = Field(default="mixq", min_length=1, max_length=200,
                            description="The study's name in the storage.")
    max_retries: int = Field(default=2, ge=0, le=10, description="retries of a trial whose process died")
    max_consecutive_failures: int = Field(
        default=3, ge=1, le=1000,
        description="stop the search after this many trials in a row failed with an error of their own (NaN loss...)",
    )
    heartbeat_interval_s: int = Field(default=5, ge=1, le=600, description="RDB storage: trial heartbeat period")
    grace_period_s: int = Field(default=20, ge=2, le=3600, description="RDB storage: a trial silent this long is stale")
    weights_dir: str | None = Field(
        default=None, description="save each trained trial's state dict here (trialNNNN-<map>.pt)"
    )
    device: str = Field(default="cpu", pattern=r"^(cpu|cuda(:\d+)?|auto)$",
                        description="cpu, cuda, cuda:N or auto.")
    torch_threads: int | None = Field(
        default=None, ge=1, le=1024,
        description="torch's intra-op threads for every trial of this search, fixed so that its numbers do not "
                    "depend on the machine's load (a trial's float sums follow the thread count); none: the "
                    "process's count when the search starts (recorded in the result).")

    @classmethod
    def of(cls, request: SearchRequest, **run: Any) -> SearchSpec:
        """``request``'s fields (a subclass's own fields dropped) plus the run-time ones in ``run``."""
        return cls(**request.model_dump(include=set(SearchRequest.model_fields)), **run)

    def request_json(self) -> dict[str, Any]:
        """The request's fields as JSON (what the qconfig's provenance records): the run-time ones (storage
        URL, folders, study name) left out, so no database credentials travel in a qconfig file."""
        return self.model_dump(mode="json", include=set(SearchRequest.model_fields))

    @property
    def rungs(self) -> tuple[int, ...]:
        """The resolved ``fidelity_rungs`` (see :meth:`resolve_fidelity`)."""
        if self.fidelity_rungs is None:
            raise RuntimeError("fidelity_rungs is not resolved yet: SearchSpec.resolve_fidelity")
        return self.fidelity_rungs

    @property
    def eta(self) -> int:
        """The resolved ``promotion_eta``."""
        if self.promotion_eta is None:
            raise RuntimeError("promotion_eta is not resolved yet: SearchSpec.resolve_fidelity")
        return self.promotion_eta

    def resolve_fidelity(self, free_layers: int) -> SearchSpec:
        """This spec with ``fidelity_rungs`` and ``promotion_eta`` filled in where null: rungs [1, 3] with
        eta 2 for a search over >= AUTO_FIDELITY_FREE_LAYERS free layers whose budget is compute
        (``timeout_s`` or ``budget_qat_steps``: promotions then replace screening, at equal cost), else
        one rung; eta 3 where rungs were given.  With only ``n_trials`` the rungs stay one: promotions would
        add compute the request did not ask for."""
        rungs, eta = self.fidelity_rungs, self.promotion_eta
        if rungs is None:
            bounded = self.timeout_s is not None or self.budget_qat_steps is not None
            deep = free_layers >= AUTO_FIDELITY_FREE_LAYERS and bounded
            rungs = AUTO_RUNGS if deep else (1,)
            eta = eta if eta is not None else (AUTO_ETA if deep else DEFAULT_ETA)
        return self.model_copy(update={"fidelity_rungs": rungs,
                                       "promotion_eta": eta if eta is not None else DEFAULT_ETA})

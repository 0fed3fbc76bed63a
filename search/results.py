"""What a search returns: the evaluated trials, the failures, the front, the layers as the search saw
them, progress while it runs, and the fidelity check of a multi-fidelity search.  The request is in
``search.spec``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, cast

from pydantic import TypeAdapter

from search.quant.layers import FloatLayer, LayerInfo
from search.spec import DEFAULT_ETA


def json_safe(value: Any) -> Any:
    """``value`` as JSON can hold it: every NaN or infinite float becomes null (JSON has no NaN, and
    PostgreSQL's JSON columns refuse it), tuples become lists.  The one finite-or-null encoder."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _dump(value: Any, **kwargs: Any) -> dict[str, Any]:
    """A result dataclass's JSON form, produced by pydantic from its declared fields."""
    data = TypeAdapter(type(value)).dump_python(value, mode="json", **kwargs)
    return cast(dict[str, Any], json_safe(data))


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
    # "baseline", "cheapest", "sensitivity", "proxy", "program", "greedy", "sampler", "neighbour", "resample",
    # "retry"
    source: str
    cached: bool = False
    qconfig: dict[str, Any] | None = None  # the qconfig JSON of the trained trial (at its highest rung)
    rung: int = 0  # the highest fidelity rung it reached; ``quality`` is measured there
    qat_steps: int = 0  # QAT steps of one run at that rung
    short_quality: float | None = None  # its first-rung quality, where it reached a higher rung

    def spread_text(self) -> str:
        """Its spread as a table shows it: ``0.0123 (3 runs)``; one run has no spread (``- (1 run)``)."""
        if self.n_evaluations < 2:
            return "- (1 run)"
        return f"{self.quality_std:.4f} ({self.n_evaluations} runs)"

    def to_json(self, *, qconfig: bool = True) -> dict[str, Any]:
        """The JSON form (``summary.json``, the service's trial rows); non-finite numbers are null, and so
        is the spread of a map measured once (there is none)."""
        data = _dump(self, exclude=None if qconfig else {"qconfig"})
        if self.n_evaluations < 2:
            data["quality_std"] = None
        return data


@dataclass(frozen=True)
class TrialFailure:
    """A trial that failed: by its own error (a NaN loss, the workload's code raising), reported by the
    process that ran it; or because that process died mid-trial (killed, out of memory), reported by
    the process that found its heartbeat stale."""

    number: int
    assignment: Mapping[str, str]  # fqn -> format name, execution order; layers it never got a format for are absent
    error: str  # "NonFiniteLossError: loss: nan at QAT step 3 ...", or why the trial was declared dead
    retried: bool  # its parameters were queued again (a dead process's trial, within ``max_retries``)


@dataclass(frozen=True)
class FidelityPoint:
    number: int
    short_quality: float  # at the first rung
    long_quality: float  # at its highest rung (mean over its evaluations there)
    long_qat_steps: int


@dataclass(frozen=True)
class FidelityCheck:
    """Does the short first rung rank the front as the longest rung reached does?"""

    short_qat_steps: int
    points: list[FidelityPoint]  # the front points measured at a higher rung
    kendall_tau: float | None  # None with fewer than 2 such points
    warning: str | None = None  # set when tau < 0.8

    def to_json(self) -> dict[str, Any]:
        """The JSON form (``summary.json``, ``Job.fidelity``); a point without finite qualities is left out."""
        data = _dump(self)
        data["points"] = [p for p in data["points"] if p["short_quality"] is not None and p["long_quality"] is not None]
        return data


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
    qat_steps_used: int = 0  # every rung and re-evaluation, all processes of the study
    qat_steps_budget: int | None = None
    phase: SearchPhase = SearchPhase.SAMPLING
    elapsed_s: float = 0.0  # since this process started the search
    eta_s: float | None = None  # estimated time left, all phases; None until a rate is known

    def to_json(self) -> dict[str, Any]:
        return _dump(self)


@dataclass(frozen=True)
class SearchLayer:
    """One layer as the search saw it: what it is, what it could take, and what each choice costs."""

    info: LayerInfo
    choices: tuple[str, ...]  # format names the search could give it; () when pinned
    pinned_format: str | None  # the format it was pinned to, or None when free
    costs_by_format: Mapping[str, Mapping[str, float]]  # format name -> cost objective -> value
    pin_reason: str | None = None  # why it was pinned ("first executed layer", a user pin...)
    # the Fisher proxy's score (int4, loss units; higher = more sensitive) where that ordered the search
    # instead of a one-layer QAT sweep; None otherwise
    proxy_score: float | None = None

    @property
    def fqn(self) -> str:
        return self.info.fqn

    @property
    def pinned(self) -> bool:
        return self.pinned_format is not None

    def to_json(self) -> dict[str, Any]:
        """The JSON form (the CLI's ``summary.json``, the service's job row): ``pinned`` is a bool, the
        format and the reason have their own keys."""
        return cast(dict[str, Any], json_safe({
            "fqn": self.info.fqn, "kind": str(self.info.kind), "index": self.info.index, "macs": self.info.macs,
            "num_params": self.info.num_params, "choices": list(self.choices), "pinned": self.pinned,
            "pinned_format": self.pinned_format, "pin_reason": self.pin_reason,
            "costs_by_format": {f: dict(c) for f, c in self.costs_by_format.items()},
            "proxy_score": self.proxy_score,
        }))


@dataclass
class SearchResult:
    workload: str
    metric_name: str
    higher_is_better: bool
    fp32_quality: float
    layers: list[SearchLayer]  # execution order
    pin_reasons: dict[str, str]  # fqn -> why it was pinned
    trials: list[TrialOutcome] = field(default_factory=list)
    front: list[TrialOutcome] = field(default_factory=list)
    study_name: str = ""
    fidelity: FidelityCheck | None = None  # None for a one-rung search
    qat_steps_used: int = 0
    stop_reason: str = ""  # why the search stopped: budget, space exhausted, metric at its best, stopped
    merged_within_noise: list[int] = field(default_factory=list)  # trial numbers left off the front as noise
    fidelity_rungs: tuple[int, ...] = (1,)  # what the search ran (automatic ones resolved)
    promotion_eta: int = DEFAULT_ETA
    repeats_skipped: int = 0  # sampler proposals of a map already trained: served from the cache, no trial used
    neighbour_checks: int = 0  # trials that tried a front point's one-layer neighbour (seeds.front_neighbours)
    neighbours_untried: int = 0  # neighbours of the reported points that could dominate them, left untried
    torch_threads: int = 0  # torch's intra-op threads every trial ran with (fixed for the search)
    # compute the search could not quantize (attention matmuls, parameters applied functionally, embeddings):
    # float, with the reason, and in every map's cost at the float precision
    float_layers: list[FloatLayer] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The JSON form (the CLI's ``summary.json``): no qconfig bodies (they are files of their own)."""
        return {
            "workload": self.workload, "metric": self.metric_name, "higher_is_better": self.higher_is_better,
            "fp32_quality": json_safe(self.fp32_quality), "study_name": self.study_name,
            "layers": [layer.to_json() for layer in self.layers], "pin_reasons": dict(self.pin_reasons),
            "float_layers": [f.as_dict() for f in self.float_layers],
            "front": [o.to_json(qconfig=False) for o in self.front],
            "trials": [o.to_json(qconfig=False) for o in self.trials],
            "qat_steps_used": self.qat_steps_used, "stop_reason": self.stop_reason,
            "merged_within_noise": list(self.merged_within_noise),
            "repeats_skipped": self.repeats_skipped, "neighbour_checks": self.neighbour_checks,
            "neighbours_untried": self.neighbours_untried,
            "fidelity_rungs": list(self.fidelity_rungs), "promotion_eta": self.promotion_eta,
            "torch_threads": self.torch_threads,
            "fidelity": None if self.fidelity is None else self.fidelity.to_json(),
        }

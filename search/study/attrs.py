"""Every attribute the search keeps in an Optuna study, in one place.

A study shared by several processes is the search's only state, so what each key means, and the
type of its value, is written here once: a trial's attributes are read with :meth:`TrialAttrs.of`
and written with :func:`set_trial_attr`; the study-wide keys are :class:`StudyKey`; the records of
longer runs and re-evaluations are the typed dicts :class:`RungRecord` and :class:`ReevalRecord`
(``search.study.ledger`` reads them).  The SQL in ``search.study.storage`` takes its key from
:attr:`TrialKey.BUDGET_SLOT`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NotRequired, TypedDict

import optuna
from optuna.trial import FrozenTrial


class Source(StrEnum):
    """Why a trial was run (``TrialOutcome.source``)."""

    BASELINE = "baseline"  # a uniform map per format
    CHEAPEST = "cheapest"  # the cheapest allowed map
    SENSITIVITY = "sensitivity"  # the one-layer sweep
    PROXY = "proxy"  # the Fisher-ordered greedy path (where a sweep does not fit)
    PROGRAM = "program"  # the proxy programs' maps
    GREEDY = "greedy"  # the greedy front over the sweep
    SAMPLER = "sampler"  # the Optuna sampler's suggestion
    NEIGHBOUR = "neighbour"  # a front point's one-layer neighbour
    RESAMPLE = "resample"  # an untried map next to a sampler repeat
    RETRY = "retry"  # a dead process's trial, queued again


# queued trials that are the search's own follow-ups of sampled or reported maps (not seeds, not retries)
FOLLOW_UPS = frozenset({Source.NEIGHBOUR, Source.RESAMPLE})


class TrialKey(StrEnum):
    """The user attributes of one trial."""

    SOURCE = "source"  # Source
    CACHED = "cached"  # bool: a repeat served from the cache (no trial used, no QAT run)
    QAT_STEPS = "qat_steps"  # int: its first-rung QAT steps, counted against a budget in steps
    DURATION_S = "duration_s"  # float: wall time of its QAT run
    QCONFIG = "qconfig"  # str: the qconfig JSON of the trained map
    FAIL_REASON = "fail_reason"  # str: the error that failed it
    WORKER = "worker"  # str: "host:pid" of the process whose heartbeat thread runs it
    DUPLICATE_OF = "duplicate_of"  # int: the twin trial that trains the same map (this one was pruned)
    REPEAT_OF = "repeat_of"  # int: the trained trial whose result a cached repeat reuses (optuna-dashboard shows it)
    CLAIMED = "claimed"  # bool: it holds the claim on its map (no twin trains it)
    BUDGET_SLOT = "mixq:budget_slot"  # int: the budget slot it holds (written by SQL in search.study.storage)
    INTERRUPTED = "mixq:interrupted"  # bool: its process was interrupted (Ctrl-C) while it trained
    REQUEUE_OF = "mixq:requeue_of"  # int: the interrupted trial whose map this queued trial trains again


class StudyKey(StrEnum):
    """The user attributes of the study (shared by every process)."""

    FP32 = "mixq:fp32_quality"  # float: the pretrained model's metric
    GREEDY = "mixq:greedy_enqueued"  # bool: the greedy path was queued
    DOMINATED = "mixq:dominated"  # {fqn: {format: cheaper format}}: formats that cost more for no gain
    SENSITIVITY = "mixq:sensitivity"  # "sweep" (one-layer QAT trials) or "proxy" (Fisher-ordered greedy path)
    PROXY_SCORES = "mixq:proxy_scores"  # {fqn: float}: the Fisher scores (int4) that ordered the greedy path
    NOISE = "mixq:noise_probe"  # int: the all-int8 trial given a second seed for the seed spread (-1: none)
    RUNG = "mixq:rung:"  # + "<rung>:<trial number>" -> RungRecord
    REEVAL = "mixq:reeval:"  # + trial number -> ReevalRecord


class RungRecord(TypedDict):
    """A trial trained longer at a higher rung; ``quality`` None while it runs (its steps count as spent)."""

    qat_steps: int
    worker: str
    quality: float | None
    qconfig: str | None
    fail_reason: NotRequired[str]  # the run failed (quality stays None; it is not retried)


class ReevalRecord(TypedDict):
    """Extra-seed runs of a front point at ``rung``; ``qualities`` None while they run."""

    rung: int
    qat_steps: int
    qualities: list[float] | None


def rung_key(rung: int, number: int) -> str:
    return f"{StudyKey.RUNG}{rung}:{number}"


def reeval_key(number: int) -> str:
    return f"{StudyKey.REEVAL}{number}"


def _source(value: Any) -> Source:
    try:
        return Source(value)
    except ValueError:  # a study written by a newer mixq: report it as the sampler's
        return Source.SAMPLER


@dataclass(frozen=True)
class TrialAttrs:
    """One trial's user attributes, typed (absent keys take these defaults)."""

    source: Source = Source.SAMPLER
    cached: bool = False
    qat_steps: int | None = None
    duration_s: float = 0.0
    qconfig: str | None = None
    fail_reason: str | None = None
    worker: str | None = None
    duplicate_of: int | None = None
    claimed: bool = False

    @classmethod
    def of(cls, trial: FrozenTrial | optuna.Trial) -> TrialAttrs:
        attrs = trial.user_attrs
        steps = attrs.get(TrialKey.QAT_STEPS)
        qconfig = attrs.get(TrialKey.QCONFIG)
        duplicate = attrs.get(TrialKey.DUPLICATE_OF)
        return cls(
            source=_source(attrs.get(TrialKey.SOURCE, Source.SAMPLER)),
            cached=bool(attrs.get(TrialKey.CACHED, False)),
            qat_steps=None if steps is None else int(steps),
            duration_s=float(attrs.get(TrialKey.DURATION_S, 0.0)),
            qconfig=qconfig if isinstance(qconfig, str) else None,
            fail_reason=attrs.get(TrialKey.FAIL_REASON),
            worker=attrs.get(TrialKey.WORKER),
            duplicate_of=None if duplicate is None else int(duplicate),
            claimed=bool(attrs.get(TrialKey.CLAIMED, False)),
        )


def set_trial_attr(trial: optuna.Trial, key: TrialKey, value: Any) -> None:
    """Write one trial attribute (the key is typed; the value is what :class:`TrialAttrs` reads)."""
    trial.set_user_attr(str(key), value)


def is_cached(trial: FrozenTrial) -> bool:
    """A repeat served from the cache: it used no trial of the budget and trained nothing."""
    return bool(trial.user_attrs.get(TrialKey.CACHED, False))

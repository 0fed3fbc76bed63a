"""Job state transitions and the translation of a stored job into the search library's ``SearchSpec``.

    queued ──> running ──> succeeded
       │          ├──────> failed
       │          └──────> cancelled
       ├─────────────────> cancelled
       └─────────────────> failed      (the job cannot even start: bad upload, unknown profile)

Every transition is a compare-and-set in the database (``store.transition``): the row moves only if it is
still in one of the allowed source states, so a cancel racing a completion has exactly one winner.
"""

from __future__ import annotations

from typing import Any

from search import Pin, SearchSpec
from service.models import JobStatus

TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
ACTIVE = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.RUNNING: frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


def sources_of(target: JobStatus) -> frozenset[JobStatus]:
    """The states from which ``target`` may be entered."""
    return frozenset(src for src, targets in TRANSITIONS.items() if target in targets)


def study_name(job_id: int) -> str:
    return f"mixq-job-{job_id}"


# JobCreate fields that are the service's business, not the search's
_SERVICE_ONLY = ("priority", "model", "dataset")


def search_spec(job_spec: dict[str, Any], job_id: int, storage_url: str, profile: str | None = None) -> SearchSpec:
    """The ``SearchSpec`` for a stored job spec; ``profile`` overrides the name with a file path for
    uploaded profiles.  Raises pydantic's ValidationError (naming the field) for a bad spec."""
    fields = {k: v for k, v in job_spec.items() if k not in _SERVICE_ONLY}
    fields["pins"] = tuple(Pin(**p) for p in fields.get("pins", ()))
    if profile is not None:
        fields["profile"] = profile
    return SearchSpec(**fields, storage=storage_url, study_name=study_name(job_id))

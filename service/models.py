"""Database rows (SQLAlchemy 2 typed ORM) and the job state machine.  These are the service's storage
words; API schemas live in ``service.schemas`` and search results in ``search.spec``.  Times are naive UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite INTEGER PRIMARY KEY must be exactly INTEGER to alias rowid; BigInteger elsewhere.
Id = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class JobStatus(StrEnum):
    """A job's state and its transitions::

        queued ──> running ──> succeeded
           │          ├──────> failed
           │          └──────> cancelled
           ├─────────────────> cancelled
           └─────────────────> failed      (the job cannot even start: bad upload, unknown profile)

    Every transition is a compare-and-set in the database (``store.transition``): the row moves only if it
    is still in one of the allowed source states, so a cancel racing a completion has exactly one winner.
    """

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})

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


class TrialState(StrEnum):
    COMPLETE = "complete"
    FAILED = "failed"
    RUNNING = "running"


class TokenRole(StrEnum):
    """What a token may do beyond its owner's own jobs: an operator may also raise job priority."""

    USER = "user"
    OPERATOR = "operator"


class UploadKind(StrEnum):
    MODEL = "model"
    DATASET = "dataset"


class ApiToken(Base):
    __tablename__ = "mixq_tokens"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    owner: Mapped[str] = mapped_column(String(100), index=True)
    name: Mapped[str] = mapped_column(String(100), default="")
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime, default=None)  # None: never
    role: Mapped[str] = mapped_column(String(16), default=TokenRole.USER, server_default=TokenRole.USER.value)


class Job(Base):
    __tablename__ = "mixq_jobs"
    # AUTOINCREMENT: a deleted job's id (and so its Optuna study name) is never handed out again
    __table_args__ = (
        UniqueConstraint("owner", "idempotency_key", name="uq_mixq_jobs_owner_idempotency_key"),
        Index("ix_mixq_jobs_status_priority", "status", "priority", "id"),
        Index("ix_mixq_jobs_owner_id", "owner", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    owner: Mapped[str] = mapped_column(String(100))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # the validated JobCreate's JSON (schemas.job_spec reads it)
    n_trials: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    error: Mapped[str | None] = mapped_column(Text)
    # filled by the first worker that knows them
    metric: Mapped[str | None] = mapped_column(String(100))
    higher_is_better: Mapped[bool | None] = mapped_column(Boolean)
    fp32_quality: Mapped[float | None] = mapped_column(Float)
    layers: Mapped[list[Any] | None] = mapped_column(JSON)
    pinned: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    front_final: Mapped[bool] = mapped_column(Boolean, default=False)  # on_front comes from the search result
    best_quality: Mapped[float | None] = mapped_column(Float)  # best feasible trial so far
    best_trial: Mapped[int | None] = mapped_column(Integer)
    # the search's last progress report (phase, message, elapsed_s, eta_s, reported_at), for the live page
    search_progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # the search's fidelity check (short_qat_steps, points, kendall_tau, warning); NULL for a one-rung search
    fidelity: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class Trial(Base):
    __tablename__ = "mixq_trials"
    __table_args__ = (
        UniqueConstraint("job_id", "number", name="uq_mixq_trials_job_number"),
        Index("ix_mixq_trials_job_quality", "job_id", "quality"),
        Index("ix_mixq_trials_job_cost", "job_id", "primary_cost"),
        # the counts of GET /v1/jobs read this index alone (no row lookups for 10,000 trials)
        Index("ix_mixq_trials_job_counts", "job_id", "state", "feasible", "retried"),
        # the live front's numbers, read by /pareto and /trials
        Index("ix_mixq_trials_job_live_front", "job_id", "live_front", "number"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("mixq_jobs.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default=TrialState.COMPLETE)
    assignment: Mapped[dict[str, Any]] = mapped_column(JSON)
    quality: Mapped[float | None] = mapped_column(Float)
    quality_std: Mapped[float | None] = mapped_column(Float)
    n_evaluations: Mapped[int] = mapped_column(Integer, default=1)
    costs: Mapped[dict[str, Any]] = mapped_column(JSON)
    primary_cost: Mapped[float | None] = mapped_column(Float)  # costs[first cost objective], for sorting
    feasible: Mapped[bool] = mapped_column(Boolean, default=True)
    duration_s: Mapped[float] = mapped_column(Float, default=0.0)
    source: Mapped[str] = mapped_column(String(32), default="")
    on_front: Mapped[bool] = mapped_column(Boolean, default=False)  # on the search's final front (front_final)
    # on the live front over the job's stored trials, kept by store.record_trial as each trial is recorded
    live_front: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    qconfig: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    worker_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    error: Mapped[str | None] = mapped_column(Text)  # why a failed trial failed
    retried: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())  # params queued again


class WorkerRow(Base):
    """A live (or dead) worker process; ``heartbeat_at`` says which."""

    __tablename__ = "mixq_workers"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("mixq_jobs.id", ondelete="SET NULL"), index=True)


class Upload(Base):
    __tablename__ = "mixq_uploads"
    __table_args__ = (UniqueConstraint("owner", "kind", "name", name="uq_mixq_uploads_owner_kind_name"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    owner: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(100))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    info: Mapped[dict[str, Any]] = mapped_column(JSON)  # what validation learnt (arrays, shapes, layers)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class UploadBlob(Base):
    """Upload bytes live in the database so that workers on other machines can read them."""

    __tablename__ = "mixq_upload_blobs"

    upload_id: Mapped[int] = mapped_column(ForeignKey("mixq_uploads.id", ondelete="CASCADE"), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class ProfileRow(Base):
    __tablename__ = "mixq_profiles"
    __table_args__ = (UniqueConstraint("owner", "name", name="uq_mixq_profiles_owner_name"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    owner: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(100))
    text: Mapped[str] = mapped_column(Text)  # canonical JSON of the validated profile
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ArtefactKind(StrEnum):
    """What the worker stores for each front point when a job ends."""

    WEIGHTS = "weights"  # the trained weights: a mixq checkpoint (search.quant.checkpoint), torch.load-able
    ONNX = "onnx"  # the QDQ ONNX model (search.quant.export_onnx), checked in onnxruntime


class TrialArtefact(Base):
    """A front point's trained weights or exported ONNX model.  Bytes live in the database (as uploads do),
    so the API serves them whichever machine's worker made them; ``data`` is NULL and ``error`` says why
    where the artefact could not be made."""

    __tablename__ = "mixq_trial_artefacts"
    __table_args__ = (UniqueConstraint("job_id", "number", "kind", name="uq_mixq_trial_artefacts_job_number_kind"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("mixq_jobs.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str | None] = mapped_column(String(64))
    fingerprint: Mapped[str | None] = mapped_column(String(100))  # the weights' (checkpoint.weights_fingerprint)
    # onnx: max_abs_diff (onnxruntime, QDQ definition) and max_abs_diff_default (default session options),
    # opset, dynamic_axes
    info: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    data: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

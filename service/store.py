"""Every database query of the service.  Functions take a ``Session`` opened by ``Database.session``
(which owns commit/rollback) and return rows or plain values."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from search import (
    TargetProfile,
    builtin_profiles,
    load_profile,
    objective_vector,
    pareto_numbers,
    parse_profile_text,
)
from service.models import (
    ApiToken,
    ArtefactKind,
    Job,
    JobStatus,
    ProfileRow,
    TokenRole,
    Trial,
    TrialArtefact,
    TrialState,
    Upload,
    UploadBlob,
    WorkerRow,
    sources_of,
    utcnow,
)

# ---------------------------------------------------------------------------------------------
# Per-owner serialization
# ---------------------------------------------------------------------------------------------

_OWNER_LOCK_SPACE = 0x6D69_786F  # "mixo": first key of the owner's advisory lock (the search's budget lock is "mixq")


def lock_owner(session: Session, owner: str) -> None:
    """Serialize ``owner``'s check-then-write transactions (quota and limit checks, then the insert) until
    this transaction ends: call it first in the transaction, then read, check and write.

    PostgreSQL: a transaction-scoped advisory lock keyed on the owner (other owners do not wait; a row lock
    would need a row per owner).  SQLite has one writer at a time: the transaction takes the write lock up
    front (``BEGIN IMMEDIATE``, as ``search.study.storage`` does for Optuna's claims) instead of at its first write,
    so no other writer can slip in between the read and the insert; others wait up to the busy timeout."""
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:space, hashtext(:owner))"),
                     {"space": _OWNER_LOCK_SPACE, "owner": owner})
        return
    dbapi = conn.connection.dbapi_connection
    if getattr(dbapi, "in_transaction", False):
        # the driver opened a transaction at an earlier write: the lock would come too late
        raise RuntimeError("lock_owner: must be the first write of its transaction")
    conn.exec_driver_sql("BEGIN IMMEDIATE")


# ---------------------------------------------------------------------------------------------
# Tokens
# ---------------------------------------------------------------------------------------------


def add_token(
    session: Session, owner: str, name: str, token_sha256: str, expires_at: datetime | None = None,
    role: TokenRole = TokenRole.USER,
) -> ApiToken:
    row = ApiToken(owner=owner, name=name, token_sha256=token_sha256, expires_at=expires_at, role=role)
    session.add(row)
    session.flush()
    return row


def owner_of_token(session: Session, token_sha256: str) -> str | None:
    """The owner of a token that is neither revoked nor expired."""
    found = caller_of_token(session, token_sha256)
    return None if found is None else found[0]


def caller_of_token(session: Session, token_sha256: str) -> tuple[str, TokenRole] | None:
    """(owner, role) of a token that is neither revoked nor expired."""
    row = session.execute(
        select(ApiToken.owner, ApiToken.role).where(
            ApiToken.token_sha256 == token_sha256, ApiToken.revoked.is_(False),
            (ApiToken.expires_at.is_(None)) | (ApiToken.expires_at > utcnow()),
        )
    ).first()
    return None if row is None else (row[0], TokenRole(row[1]))


def list_tokens(session: Session, owner: str | None = None) -> Sequence[ApiToken]:
    query = select(ApiToken).order_by(ApiToken.id)
    if owner is not None:
        query = query.where(ApiToken.owner == owner)
    return session.scalars(query).all()


def revoke_token(session: Session, token_id: int) -> ApiToken | None:
    row = session.get(ApiToken, token_id)
    if row is not None:
        row.revoked = True
    return row


# ---------------------------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------------------------


def add_job(
    session: Session, owner: str, spec: dict[str, Any], n_trials: int, priority: int, idempotency_key: str | None
) -> Job:
    """Insert a queued job; a repeated (owner, idempotency_key) raises IntegrityError at flush."""
    job = Job(owner=owner, spec=spec, n_trials=n_trials, priority=priority, idempotency_key=idempotency_key)
    session.add(job)
    session.flush()
    return job


def job_by_idempotency_key(session: Session, owner: str, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.owner == owner, Job.idempotency_key == key))


def get_job(session: Session, job_id: int, owner: str | None = None) -> Job | None:
    """The job, or None if missing or (with ``owner``) someone else's."""
    stmt = select(Job).where(Job.id == job_id)
    if owner is not None:
        stmt = stmt.where(Job.owner == owner)
    return session.scalar(stmt)


def list_jobs(
    session: Session, owner: str, status: JobStatus | None, limit: int, offset: int
) -> tuple[Sequence[Job], int]:
    where = [Job.owner == owner] + ([Job.status == status] if status else [])
    total = session.scalar(select(func.count()).select_from(Job).where(*where)) or 0
    rows = session.scalars(select(Job).where(*where).order_by(Job.id.desc()).limit(limit).offset(offset)).all()
    return rows, total


def active_job_count(session: Session, owner: str) -> int:
    """The owner's queued and running jobs."""
    return session.scalar(
        select(func.count()).select_from(Job).where(
            Job.owner == owner, Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING])
        )
    ) or 0


def delete_job(session: Session, job_id: int) -> None:
    session.execute(update(WorkerRow).where(WorkerRow.job_id == job_id).values(job_id=None))
    session.execute(delete(TrialArtefact).where(TrialArtefact.job_id == job_id))
    session.execute(delete(Trial).where(Trial.job_id == job_id))
    session.execute(delete(Job).where(Job.id == job_id))


def job_status(session: Session, job_id: int) -> JobStatus | None:
    value = session.scalar(select(Job.status).where(Job.id == job_id))
    return None if value is None else JobStatus(value)


def transition(session: Session, job_id: int, target: JobStatus, error: str | None = None) -> bool:
    """Compare-and-set ``status`` to ``target`` if the job is in an allowed source state."""
    now = utcnow()
    values: dict[str, Any] = {"status": target, "updated_at": now}
    if target == JobStatus.RUNNING:
        values["started_at"] = now
    elif target != JobStatus.QUEUED:
        values["finished_at"] = now
    if error is not None:
        values["error"] = error[:4000]
    result = session.execute(
        update(Job).where(Job.id == job_id, Job.status.in_(sources_of(target))).values(**values)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def claim_queued_job(session: Session) -> int | None:
    """Move the best queued job to running; return its id, or None.  Never hands one job to two callers.

    PostgreSQL: SELECT ... FOR UPDATE SKIP LOCKED, so concurrent claimers take different rows.
    SQLite (which has no row locks; SQLAlchemy drops SKIP LOCKED there): one UPDATE whose WHERE re-checks
    ``status = 'queued'``, executed under SQLite's database write lock; the rowcount tells who won.
    """
    order = (Job.priority.desc(), Job.id)
    now = utcnow()
    if session.get_bind().dialect.name == "postgresql":
        job_id = session.scalar(
            select(Job.id).where(Job.status == JobStatus.QUEUED).order_by(*order).limit(1)
            .with_for_update(skip_locked=True)
        )
        if job_id is None:
            return None
        session.execute(
            update(Job).where(Job.id == job_id).values(status=JobStatus.RUNNING, started_at=now, updated_at=now)
        )
        return job_id
    candidate = select(Job.id).where(Job.status == JobStatus.QUEUED).order_by(*order).limit(1).scalar_subquery()
    claimed = session.execute(
        update(Job)
        .where(Job.id == candidate, Job.status == JobStatus.QUEUED)
        .values(status=JobStatus.RUNNING, started_at=now, updated_at=now)
        .returning(Job.id)
    ).scalar()
    return claimed


def running_job_to_join(session: Session, stale_before: datetime) -> int | None:
    """A running job that needs a worker, fewest live workers first."""
    live = (
        select(WorkerRow.job_id, func.count().label("n"))
        .where(WorkerRow.heartbeat_at >= stale_before, WorkerRow.job_id.is_not(None))
        .group_by(WorkerRow.job_id)
        .subquery()
    )
    done = (
        select(Trial.job_id, func.count().label("n"))
        .where(Trial.state == TrialState.COMPLETE)
        .group_by(Trial.job_id)
        .subquery()
    )
    stmt = (
        select(Job.id)
        .outerjoin(live, live.c.job_id == Job.id)
        .outerjoin(done, done.c.job_id == Job.id)
        .where(
            Job.status == JobStatus.RUNNING,
            # budget left, or used up with nobody left to report the result (its worker died at the end)
            or_(func.coalesce(done.c.n, 0) < Job.n_trials, func.coalesce(live.c.n, 0) == 0),
            # joiners wait for the claimer's first trial (its study and Optuna's tables exist by then), unless
            # the claimer has been silent too long
            or_(func.coalesce(done.c.n, 0) > 0, Job.started_at < stale_before),
        )
        .order_by(func.coalesce(live.c.n, 0), Job.priority.desc(), Job.id)
        .limit(1)
    )
    return session.scalar(stmt)


def other_live_workers(session: Session, job_id: int, worker_id: str, stale_before: datetime) -> int:
    return session.scalar(
        select(func.count()).select_from(WorkerRow).where(
            WorkerRow.job_id == job_id, WorkerRow.id != worker_id, WorkerRow.heartbeat_at >= stale_before
        )
    ) or 0


def set_job_info(
    session: Session, job_id: int, metric: str, higher_is_better: bool, fp32_quality: float | None,
    layers: list[dict[str, Any]] | None = None, pinned: dict[str, str] | None = None,
) -> None:
    before = session.scalar(select(Job.higher_is_better).where(Job.id == job_id))
    values: dict[str, Any] = {"metric": metric, "higher_is_better": higher_is_better, "updated_at": utcnow()}
    if fp32_quality is not None:
        values["fp32_quality"] = fp32_quality
    if layers is not None:
        values["layers"] = layers
    if pinned is not None:
        values["pinned"] = pinned
    session.execute(update(Job).where(Job.id == job_id).values(**values))
    if (before is not False) != (higher_is_better is not False):  # the live front's direction of quality
        rebuild_live_front(session, job_id)


def set_search_progress(session: Session, job_id: int, progress: dict[str, Any]) -> None:
    """The search's latest progress report; ``updated_at`` stays (it versions the job's trials and front)."""
    session.execute(update(Job).where(Job.id == job_id).values(search_progress=progress))


def set_job_fidelity(session: Session, job_id: int, fidelity: dict[str, Any]) -> None:
    """The search's fidelity check, at its end (``updated_at`` stays, as for the progress report)."""
    session.execute(update(Job).where(Job.id == job_id).values(fidelity=fidelity))


def touch_job(session: Session, job_id: int) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(updated_at=utcnow()))


def job_counts_by_status(session: Session) -> dict[str, int]:
    rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    return {status: n for status, n in rows}


# ---------------------------------------------------------------------------------------------
# Trials
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialRecord:
    """A finished trial as the worker stores it."""

    number: int
    assignment: dict[str, str]
    quality: float | None
    quality_std: float | None
    n_evaluations: int
    costs: dict[str, float]
    primary_cost: float | None
    feasible: bool
    duration_s: float
    source: str
    qconfig: dict[str, Any] | None
    state: TrialState = TrialState.COMPLETE


def _insert_for(session: Session) -> Any:
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def record_trial(
    session: Session, job_id: int, record: TrialRecord, worker_id: str | None, higher_is_better: bool | None
) -> bool:
    """Insert or update the trial (retries and re-evaluations report the same number again); keep the
    job's best-so-far and its live front (:func:`_keep_live_front`).  False if the job no longer exists.

    The job row is written first: its lock (PostgreSQL's row lock, SQLite's database write lock) orders
    concurrent recorders of one job, so each sees the front as the one before it left it."""
    if not session.execute(update(Job).where(Job.id == job_id).values(updated_at=utcnow())).rowcount:  # type: ignore[attr-defined]
        return False
    prior = session.execute(
        select(Trial.state, Trial.feasible, Trial.quality, Trial.costs, Trial.live_front)
        .where(Trial.job_id == job_id, Trial.number == record.number)
    ).first()
    values = {
        "job_id": job_id, "number": record.number, "state": record.state, "assignment": record.assignment,
        "quality": record.quality, "quality_std": record.quality_std, "n_evaluations": record.n_evaluations,
        "costs": record.costs, "primary_cost": record.primary_cost, "feasible": record.feasible,
        "duration_s": record.duration_s, "source": record.source, "qconfig": record.qconfig, "worker_id": worker_id,
    }
    stmt = _insert_for(session)(Trial).values(**values)
    updates = {k: stmt.excluded[k] for k in values if k not in ("job_id", "number")}
    # a later report (the final result) may lack the qconfig and the worker that ran the trial
    updates["qconfig"] = func.coalesce(stmt.excluded.qconfig, Trial.qconfig)
    updates["worker_id"] = func.coalesce(stmt.excluded.worker_id, Trial.worker_id)
    session.execute(stmt.on_conflict_do_update(index_elements=["job_id", "number"], set_=updates))
    if record.state == TrialState.COMPLETE and record.feasible and record.quality is not None:
        higher = higher_is_better is not False
        better = Job.best_quality < record.quality if higher else Job.best_quality > record.quality
        session.execute(
            update(Job)
            .where(Job.id == job_id, or_(Job.best_quality.is_(None), better))
            .values(best_quality=record.quality, best_trial=record.number)
        )
    _keep_live_front(session, job_id, record, prior)
    return True


# ---------------------------------------------------------------------------------------------
# The live front (mixq_trials.live_front)
# ---------------------------------------------------------------------------------------------
#
# The non-dominated complete, feasible trials with a quality, in (quality, *cost objectives) of the job,
# the lowest number of identical vectors: ``search.pareto_numbers`` over the stored trials, which is what
# /pareto and /trials report while the search has not given its own front.  Kept as trials are recorded
# (one query of the current front, a few rows) rather than rebuilt from every row per request.


def _objectives_of(session: Session, job_id: int) -> tuple[list[str], bool]:
    row = session.execute(select(Job.spec, Job.higher_is_better).where(Job.id == job_id)).one()
    return [str(c) for c in (row[0] or {}).get("cost_objectives", ["bitops"])], row[1] is not False


def _front_vector(
    state: str, feasible: bool, quality: float | None, costs: dict[str, Any] | None, objectives: list[str], hib: bool
) -> tuple[float, ...] | None:
    """The trial's objective vector, or None where it cannot be on the front."""
    if state != TrialState.COMPLETE or not feasible or quality is None:
        return None
    return objective_vector(quality, [float((costs or {}).get(c, 0.0)) for c in objectives], hib)


def _keep_live_front(session: Session, job_id: int, record: TrialRecord, prior: Any) -> None:
    objectives, hib = _objectives_of(session, job_id)
    new = _front_vector(record.state, record.feasible, record.quality, record.costs, objectives, hib)
    if prior is not None:
        old = _front_vector(prior.state, prior.feasible, prior.quality, prior.costs, objectives, hib)
        if old == new:
            return  # the same point reported again (the final report of every trial): nothing moves
        if prior.live_front:  # a front point moved: what it dominated may come back
            rebuild_live_front(session, job_id)
            return
    # a point off the front left nothing that depended on it: the front changes only by the new point
    if new is None:
        return
    front = session.execute(
        select(Trial.number, Trial.quality, Trial.costs)
        .where(Trial.job_id == job_id, Trial.live_front.is_(True), Trial.number != record.number)
    ).all()
    points = [(n, objective_vector(q, [float((c or {}).get(o, 0.0)) for o in objectives], hib)) for n, q, c in front]
    # the front of (front + the new point) is the front of (all trials + the new point): a trial off the
    # front stays dominated by, or a repeat of, a point that is still there or that the new one beats
    kept = pareto_numbers([*points, (record.number, new)])
    leaving = [n for n, _ in points if n not in kept]
    if leaving:
        session.execute(update(Trial).where(Trial.job_id == job_id, Trial.number.in_(leaving)).values(live_front=False))
    if record.number in kept:
        session.execute(
            update(Trial).where(Trial.job_id == job_id, Trial.number == record.number).values(live_front=True)
        )


def rebuild_live_front(session: Session, job_id: int) -> None:
    """Recompute the job's live front from all its trials (a front point's quality changed, or the
    job's direction of quality)."""
    objectives, hib = _objectives_of(session, job_id)
    rows = session.execute(
        select(Trial.number, Trial.state, Trial.feasible, Trial.quality, Trial.costs).where(Trial.job_id == job_id)
    ).all()
    points = [(n, v) for n, state, feasible, quality, costs in rows
              if (v := _front_vector(state, feasible, quality, costs, objectives, hib)) is not None]
    front = sorted(pareto_numbers(points))
    session.execute(update(Trial).where(Trial.job_id == job_id, Trial.live_front.is_(True),
                                        Trial.number.not_in(front)).values(live_front=False))
    for start in range(0, len(front), 500):
        session.execute(update(Trial).where(Trial.job_id == job_id, Trial.live_front.is_(False),
                                            Trial.number.in_(front[start:start + 500])).values(live_front=True))


def live_front_numbers(session: Session, job_id: int) -> set[int]:
    return set(session.scalars(select(Trial.number).where(Trial.job_id == job_id, Trial.live_front.is_(True))))


def record_failed_trial(
    session: Session, job_id: int, number: int, assignment: dict[str, str], error: str, retried: bool
) -> bool:
    """Insert a failed trial once: a repeated report of (job, number) changes nothing.  False if the
    job no longer exists or the trial is already recorded.  The job row is written first, as in
    :func:`record_trial` (one lock order: job, then trial), and moves ``updated_at``: cached pages of the
    job's trials are stale (``pareto_view.TrialPages``)."""
    if not session.execute(update(Job).where(Job.id == job_id).values(updated_at=utcnow())).rowcount:  # type: ignore[attr-defined]
        return False
    stmt = _insert_for(session)(Trial).values(
        job_id=job_id, number=number, state=TrialState.FAILED, assignment=assignment, quality=None,
        quality_std=None, n_evaluations=0, costs={}, primary_cost=None, feasible=False, duration_s=0.0,
        source="", on_front=False, qconfig=None, worker_id=None, created_at=utcnow(), error=error[:4000],
        retried=retried,
    )
    result = session.execute(stmt.on_conflict_do_nothing(index_elements=["job_id", "number"]))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def mark_front(session: Session, job_id: int, numbers: Sequence[int]) -> None:
    """The search's own front is final: flag exactly these trials."""
    session.execute(update(Trial).where(Trial.job_id == job_id).values(on_front=Trial.number.in_(list(numbers))))
    # re-evaluated front points now hold their mean: best-so-far follows the final numbers
    higher = session.scalar(select(Job.higher_is_better).where(Job.id == job_id)) is not False
    best = session.scalars(
        select(Trial)
        .where(Trial.job_id == job_id, Trial.state == TrialState.COMPLETE, Trial.feasible.is_(True),
               Trial.quality.is_not(None))
        .order_by(Trial.quality.desc() if higher else Trial.quality, Trial.number)
        .limit(1)
    ).first()
    values: dict[str, object] = {"front_final": True, "updated_at": utcnow()}
    if best is not None:
        values.update(best_quality=best.quality, best_trial=best.number)
    session.execute(update(Job).where(Job.id == job_id).values(**values))


_TRIAL_ORDER = {
    "number": (Trial.number,),
    "-number": (Trial.number.desc(),),
    # failed trials have no quality or cost: last in either direction, on SQLite and PostgreSQL alike
    "quality": (Trial.quality.asc().nulls_last(), Trial.number),
    "-quality": (Trial.quality.desc().nulls_last(), Trial.number),
    "cost": (Trial.primary_cost.asc().nulls_last(), Trial.number),
    "-cost": (Trial.primary_cost.desc().nulls_last(), Trial.number),
}


# what a Trial of the API shows (service.schemas.TrialOut) and the two front flags: not the qconfig, which a
# trained trial carries (kilobytes each) and only its download reads
TRIAL_OUT_COLUMNS = (
    Trial.id, Trial.number, Trial.state, Trial.assignment, Trial.quality, Trial.quality_std, Trial.n_evaluations,
    Trial.costs, Trial.feasible, Trial.duration_s, Trial.source, Trial.on_front, Trial.live_front, Trial.error,
    Trial.retried,
)


def list_trials(session: Session, job_id: int, sort: str, limit: int, offset: int) -> tuple[Sequence[Any], int]:
    """One page of the job's trials in ``sort`` order (rows of :data:`TRIAL_OUT_COLUMNS`) and their total.
    The page's ids are picked first from the job's sort key and number alone, then only those rows are
    read: sorting 10,000 whole rows for 200 of them was most of the time."""
    total = session.scalar(select(func.count()).select_from(Trial).where(Trial.job_id == job_id)) or 0
    ids = list(session.scalars(
        select(Trial.id).where(Trial.job_id == job_id).order_by(*_TRIAL_ORDER[sort]).limit(limit).offset(offset)
    ))
    if not ids:
        return [], total
    by_id = {row.id: row for row in session.execute(select(*TRIAL_OUT_COLUMNS).where(Trial.id.in_(ids)))}
    return [by_id[i] for i in ids if i in by_id], total


def complete_trials(session: Session, job_id: int) -> Sequence[Any]:
    """The job's complete trials by number (rows of :data:`TRIAL_OUT_COLUMNS`)."""
    return session.execute(
        select(*TRIAL_OUT_COLUMNS).where(Trial.job_id == job_id, Trial.state == TrialState.COMPLETE)
        .order_by(Trial.number)
    ).all()


def get_trial(session: Session, job_id: int, number: int) -> Trial | None:
    return session.scalar(select(Trial).where(Trial.job_id == job_id, Trial.number == number))


def trial_numbers_after(session: Session, job_id: int, after_id: int) -> Sequence[Any]:
    """Trials inserted after row ``after_id`` (rows of :data:`TRIAL_OUT_COLUMNS`), by row id."""
    return session.execute(
        select(*TRIAL_OUT_COLUMNS).where(Trial.job_id == job_id, Trial.id > after_id).order_by(Trial.id)
    ).all()


@dataclass(frozen=True)
class TrialCounts:
    complete: int = 0
    failed: int = 0
    retried: int = 0  # failed trials whose parameters were queued again (their process died mid-trial)
    infeasible: int = 0
    running: int = 0  # live workers on the job, each runs one trial at a time


def trial_counts(session: Session, job_ids: Sequence[int], stale_before: datetime) -> dict[int, TrialCounts]:
    if not job_ids:
        return {}
    acc: dict[int, dict[str, int]] = {
        j: {"complete": 0, "failed": 0, "retried": 0, "infeasible": 0, "running": 0} for j in job_ids
    }
    rows = session.execute(
        select(Trial.job_id, Trial.state, Trial.feasible, Trial.retried, func.count())
        .where(Trial.job_id.in_(job_ids))
        .group_by(Trial.job_id, Trial.state, Trial.feasible, Trial.retried)
    ).all()
    for job_id, state, feasible, retried, n in rows:
        if state == TrialState.COMPLETE:
            acc[job_id]["complete"] += n
            if not feasible:
                acc[job_id]["infeasible"] += n
        elif state == TrialState.FAILED:
            acc[job_id]["failed"] += n
            if retried:
                acc[job_id]["retried"] += n
    live = session.execute(
        select(WorkerRow.job_id, func.count())
        .where(WorkerRow.job_id.in_(job_ids), WorkerRow.heartbeat_at >= stale_before)
        .group_by(WorkerRow.job_id)
    ).all()
    for live_job_id, n in live:
        if live_job_id is not None:
            acc[live_job_id]["running"] = n
    return {j: TrialCounts(**c) for j, c in acc.items()}


@dataclass(frozen=True)
class Cheapest:
    """A job's cheapest feasible trial (within the quality-drop limit): least first cost, then best quality."""

    number: int
    quality: float
    cost: float


def front_summaries(session: Session, jobs: Sequence[Job]) -> dict[int, tuple[int | None, Cheapest | None]]:
    """Per job: the size of its final front (None while the front is not final) and its cheapest feasible
    trial.  Two grouped queries for the whole page of jobs (the ``ix_mixq_trials_job_cost`` index)."""
    ids = [j.id for j in jobs]
    if not ids:
        return {}
    final = [j.id for j in jobs if j.front_final]
    sizes: dict[int, int] = dict.fromkeys(final, 0)
    if final:
        sizes.update({job_id: n for job_id, n in session.execute(
            select(Trial.job_id, func.count()).where(Trial.job_id.in_(final), Trial.on_front.is_(True))
            .group_by(Trial.job_id)).all()})
    feasible = (Trial.job_id.in_(ids), Trial.state == TrialState.COMPLETE, Trial.feasible.is_(True),
                Trial.quality.is_not(None), Trial.primary_cost.is_not(None))
    least = (select(Trial.job_id, func.min(Trial.primary_cost).label("cost")).where(*feasible)
             .group_by(Trial.job_id).subquery())
    rows = session.execute(
        select(Trial.job_id, Trial.number, Trial.quality, Trial.primary_cost)
        .join(least, (least.c.job_id == Trial.job_id) & (least.c.cost == Trial.primary_cost)).where(*feasible)
    ).all()
    higher = {j.id: j.higher_is_better is not False for j in jobs}
    cheapest: dict[int, Cheapest] = {}
    for job_id, number, quality, cost in rows:
        if quality is None or cost is None:  # excluded by the query; for the type checker
            continue
        best = cheapest.get(job_id)
        sign = 1.0 if higher[job_id] else -1.0
        if best is None or (sign * quality, -number) > (sign * best.quality, -best.number):
            cheapest[job_id] = Cheapest(number, quality, cost)
    return {j: (sizes.get(j), cheapest.get(j)) for j in ids}


# ---------------------------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------------------------


def register_worker(session: Session, worker_id: str, hostname: str, pid: int) -> None:
    session.add(WorkerRow(id=worker_id, hostname=hostname, pid=pid))


def heartbeat(session: Session, worker_id: str, job_id: int | None) -> None:
    session.execute(update(WorkerRow).where(WorkerRow.id == worker_id).values(heartbeat_at=utcnow(), job_id=job_id))


def unregister_worker(session: Session, worker_id: str) -> None:
    session.execute(delete(WorkerRow).where(WorkerRow.id == worker_id))


# ---------------------------------------------------------------------------------------------
# Uploads and profiles
# ---------------------------------------------------------------------------------------------


def add_upload(
    session: Session, owner: str, kind: str, name: str, data: bytes, sha256: str, info: dict[str, Any]
) -> Upload:
    """Insert; a repeated (owner, kind, name) raises IntegrityError at flush."""
    row = Upload(owner=owner, kind=kind, name=name, size_bytes=len(data), sha256=sha256, info=info)
    session.add(row)
    session.flush()
    session.add(UploadBlob(upload_id=row.id, data=data))
    session.flush()
    return row


def upload_bytes_of_owner(session: Session, owner: str) -> int:
    """What the owner's uploads hold, in bytes."""
    return int(session.scalar(select(func.coalesce(func.sum(Upload.size_bytes), 0)).where(Upload.owner == owner)) or 0)


def get_upload(session: Session, owner: str, kind: str, name: str) -> Upload | None:
    return session.scalar(select(Upload).where(Upload.owner == owner, Upload.kind == kind, Upload.name == name))


def upload_bytes(session: Session, upload_id: int) -> bytes:
    return session.scalar(select(UploadBlob.data).where(UploadBlob.upload_id == upload_id)) or b""


def add_profile(session: Session, owner: str, name: str, text: str) -> ProfileRow:
    row = ProfileRow(owner=owner, name=name, text=text)
    session.add(row)
    session.flush()
    return row


def get_profile(session: Session, owner: str, name: str) -> ProfileRow | None:
    return session.scalar(select(ProfileRow).where(ProfileRow.owner == owner, ProfileRow.name == name))


def target_profile(session: Session, owner: str, name: str) -> TargetProfile | None:
    """A built-in profile, or the owner's uploaded one (stored as its validated JSON); None if neither."""
    if name in builtin_profiles():
        return load_profile(name)
    row = get_profile(session, owner, name)
    return None if row is None else parse_profile_text(row.text, f"profile {name!r}")


def profile_names(session: Session, owner: str) -> list[str]:
    return list(session.scalars(select(ProfileRow.name).where(ProfileRow.owner == owner).order_by(ProfileRow.name)))


# ---------------------------------------------------------------------------------------------
# Front points' artefacts (trained weights, ONNX)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArtefactRecord:
    """What the worker made for one front point: bytes, or the reason there are none."""

    number: int
    kind: ArtefactKind
    data: bytes | None
    fingerprint: str | None = None
    info: dict[str, Any] | None = None
    error: str | None = None


def put_artefact(session: Session, job_id: int, record: ArtefactRecord, *, keep_stored_file: bool = False) -> None:
    """Insert or replace (job, number, kind); with ``keep_stored_file`` a record without bytes (an error)
    leaves a stored file in place."""
    import hashlib

    if keep_stored_file and record.data is None:
        existing = get_artefact(session, job_id, record.number, record.kind)
        if existing is not None and existing.error is None:
            return
    session.execute(delete(TrialArtefact).where(
        TrialArtefact.job_id == job_id, TrialArtefact.number == record.number, TrialArtefact.kind == record.kind
    ))
    data = record.data
    session.add(TrialArtefact(
        job_id=job_id, number=record.number, kind=record.kind, data=data,
        size_bytes=0 if data is None else len(data),
        sha256=None if data is None else hashlib.sha256(data).hexdigest(),
        fingerprint=record.fingerprint, info=dict(record.info or {}),
        error=None if record.error is None else record.error[:4000],
    ))
    session.flush()


def get_artefact(session: Session, job_id: int, number: int, kind: ArtefactKind) -> TrialArtefact | None:
    """The row without its bytes (``artefact_bytes`` reads them)."""
    return session.scalar(select(TrialArtefact).where(
        TrialArtefact.job_id == job_id, TrialArtefact.number == number, TrialArtefact.kind == kind
    ))


def artefact_bytes(session: Session, artefact_id: int) -> bytes:
    return session.scalar(select(TrialArtefact.data).where(TrialArtefact.id == artefact_id)) or b""


def artefacts_of_job(session: Session, job_id: int) -> dict[tuple[int, str], TrialArtefact]:
    """(number, kind) -> row (bytes not loaded), for the front table."""
    rows = session.scalars(select(TrialArtefact).where(TrialArtefact.job_id == job_id)).all()
    return {(r.number, r.kind): r for r in rows}


def exported_points(session: Session, job_id: int) -> dict[int, int]:
    """Trial number -> the QAT steps of the weights its stored ONNX model was exported from."""
    rows = session.execute(select(TrialArtefact.number, TrialArtefact.info).where(
        TrialArtefact.job_id == job_id, TrialArtefact.kind == ArtefactKind.ONNX, TrialArtefact.error.is_(None)
    )).all()
    return {number: int((info or {}).get("qat_steps", -1)) for number, info in rows}

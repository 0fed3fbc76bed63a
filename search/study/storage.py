"""Optuna RDB storage set up for several processes: heartbeats, retries, and SQLite locking.

Optuna's RDB storage pops a queued (WAITING) trial with a SELECT ... FOR UPDATE, then an UPDATE.
SQLAlchemy drops FOR UPDATE on SQLite, and Python's sqlite3 driver opens no transaction before a
SELECT, so two processes can both pop the same queued trial (we saw it: one of them then fails
with "Cannot tell a COMPLETE trial").  On SQLite we therefore start every transaction with
``BEGIN IMMEDIATE`` (SQLAlchemy's documented pysqlite recipe, "Serializable isolation /
Savepoints / Transactional DDL"), which takes the write lock up front and serializes them.

This is the only module of ``search`` that touches SQLAlchemy, and only to configure the engine
Optuna creates (see the import-linter contract in pyproject.toml).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import optuna
import tenacity
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial

from search.errors import StorageError as StorageError
from search.study.attrs import TrialKey


def _serialize_sqlite_transactions(storage: RDBStorage) -> None:
    from sqlalchemy import event

    engine = storage.engine

    @event.listens_for(engine, "connect")
    def _no_implicit_transactions(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections made before the listeners existed are dropped


# (study, the stale trial as it was when failed, whether its parameters were queued again)
OnStaleTrial = Callable[[optuna.Study, FrozenTrial, bool], None]


class RetryStaleTrial:
    """The storage's callback for a trial whose heartbeat went stale: Optuna's retry (its parameters
    queued again, at most ``max_retry`` times in a chain), then ``on_stale(study, trial, retried)``.

    Optuna calls it in the one process that moved the trial to FAIL (the others lose that update),
    so each dead trial is reported once, wherever it is noticed."""

    def __init__(self, max_retry: int, on_stale: OnStaleTrial | None = None) -> None:
        self.retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        self.on_stale = on_stale

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.retry(study, trial)
        if self.on_stale is not None:
            # a retry's history ends with the trial it retries (Optuna's retry_history system attr)
            retried = any(t.system_attrs.get("retry_history", [])[-1:] == [trial.number]
                          for t in study.get_trials(deepcopy=False))
            self.on_stale(study, trial, retried)


# PostgreSQL's SQLSTATEs for losing a race to create the same row, table, or type (unique_violation,
# duplicate_table, duplicate_object); SQLite's error names for a lock held by another writer and a duplicate row
_PG_RACES = frozenset({"23505", "42P07", "42710"})
_SQLITE_RACES = frozenset({"SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"})


def is_schema_race(exc: BaseException) -> bool:
    """Did ``exc`` come from another process creating the same schema at the same moment (the next attempt
    finds it made)?  Read from the driver's error codes, anywhere in the exception's chain, not its text;
    SQLite reports "table ... already exists" with its generic SQLITE_ERROR only, so that one case reads
    the message."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        driver = getattr(current, "orig", None) or current
        if getattr(driver, "sqlstate", None) in _PG_RACES:  # psycopg 3
            return True
        name = getattr(driver, "sqlite_errorname", None)  # sqlite3 (Python 3.11+)
        if name in _SQLITE_RACES or (name == "SQLITE_ERROR" and "already exists" in str(driver)):
            return True
        current = current.__cause__ or current.__context__
    return False


def open_storage(
    url: str | None, max_retries: int, heartbeat_interval_s: int = 5, grace_period_s: int = 20,
    on_stale: OnStaleTrial | None = None,
) -> RDBStorage | None:
    """An RDB storage with heartbeats and stale-trial retry (:class:`RetryStaleTrial`), or None (in
    memory) for ``url=None``.  Fails fast with :class:`StorageError` if the database cannot be reached."""
    if url is None:
        return None
    is_sqlite = url.startswith("sqlite")
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if is_sqlite:
        engine_kwargs["connect_args"] = {"timeout": 60}  # seconds to wait for the write lock

    def open_once() -> RDBStorage:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval_s,
                grace_period=grace_period_s,
                heartbeat_stale_trial_callback=RetryStaleTrial(max_retries, on_stale),
            )
        if is_sqlite:
            _serialize_sqlite_transactions(storage)
        return storage

    # two processes creating the schema of a fresh database at once: one loses the race on Optuna's
    # version row or on CREATE TABLE (SQLite: "already exists", PostgreSQL: DuplicateTable); the next
    # attempt finds the tables made.  Any other driver error means "cannot open it": no retry.
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_schema_race), stop=tenacity.stop_after_attempt(5),
        wait=tenacity.wait_incrementing(start=0.3, increment=0.3), reraise=True,
    )
    try:
        return retrying(open_once)
    except Exception as exc:  # noqa: BLE001 - any driver error means "cannot open it"
        raise StorageError(f"storage: cannot open {url!r}: {type(exc).__name__}: {exc}") from None


def fail_trials_without_heartbeat(study: optuna.Study, storage: RDBStorage, grace_period_s: float) -> None:
    """Optuna's ``fail_stale_trials`` skips RUNNING trials that never recorded a heartbeat (a process
    killed, or its database connection dropped, between ``ask`` and the first beat): they would stay
    RUNNING forever and hold the budget.  The objective stamps :attr:`TrialKey.WORKER` right after the
    first beat, so a RUNNING trial without it, older than the grace period, died in that gap: fail it
    and hand it to the storage's stale-trial callback (retry and report), as Optuna does."""
    from datetime import datetime, timedelta

    from optuna.trial import TrialState

    now = datetime.now()
    grace = timedelta(seconds=grace_period_s)
    callback = storage.get_heartbeat_stale_trial_callback()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if TrialKey.WORKER in t.user_attrs or t.datetime_start is None or now - t.datetime_start <= grace:
            continue
        try:
            if storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL) and callback is not None:
                callback(study, t)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue


BUDGET_SLOT_ATTR = str(TrialKey.BUDGET_SLOT)  # user attr of a trial that holds one of the study's budget slots
_BUDGET_LOCK_SPACE = 0x6D69_7871  # "mixq": first key of the PostgreSQL advisory lock (study_id is the second)

# One statement: mark the trial as a slot holder only if fewer than :n_trials trials hold a slot
# that still counts (running, or complete and trained: a repeat served from the cache gives its
# slot back, as does a failed or pruned trial).  Optuna stores states by enum name and attrs as JSON.
_CLAIM_SLOT_SQL = f"""
INSERT INTO trial_user_attributes (trial_id, key, value_json)
SELECT :trial_id, '{BUDGET_SLOT_ATTR}', 'true'
WHERE (
    SELECT count(*) FROM trials t
    JOIN trial_user_attributes s ON s.trial_id = t.trial_id AND s.key = '{BUDGET_SLOT_ATTR}'
    WHERE t.study_id = :study_id AND (
        t.state = 'RUNNING' OR (t.state = 'COMPLETE' AND NOT EXISTS (
            SELECT 1 FROM trial_user_attributes c
            WHERE c.trial_id = t.trial_id AND c.key = '{TrialKey.CACHED}' AND c.value_json = 'true'
        ))
    )
) < :n_trials
"""


def claim_budget_slot(storage: RDBStorage, study_name: str, trial_number: int, n_trials: int) -> bool:
    """Take one of the study's ``n_trials`` budget slots for a RUNNING trial; False when all are
    taken.  Atomic across processes: a check of "done + running < budget" followed by Optuna's
    ``ask`` is not (two processes both see 15 of 16 and both start a trial).

    The count and the mark are one transaction that holds the study's write lock: on SQLite the
    ``BEGIN IMMEDIATE`` every transaction starts with (above), on PostgreSQL a transaction-scoped
    advisory lock on the study (a row lock on ``studies`` would also block Optuna's own inserts,
    whose foreign-key checks lock that row in KEY SHARE mode).
    """
    from sqlalchemy import text

    study_id = storage.get_study_id_from_name(study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial_number)
    params = {"trial_id": trial_id, "study_id": study_id, "n_trials": n_trials,
              "lock_space": _BUDGET_LOCK_SPACE}
    with storage.engine.begin() as conn:
        if conn.dialect.name != "sqlite":
            conn.execute(text("SELECT pg_advisory_xact_lock(:lock_space, :study_id)"), params)
        # a retry inherits its failed original's user attrs, this mark included: it is not a claim
        conn.execute(
            text(f"DELETE FROM trial_user_attributes WHERE trial_id = :trial_id AND key = '{BUDGET_SLOT_ATTR}'"),
            params,
        )
        claimed = conn.execute(text(_CLAIM_SLOT_SQL), params).rowcount
    return bool(claimed)

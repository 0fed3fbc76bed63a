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

import time
import warnings
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from search.spec import SearchError


class StorageError(SearchError):
    """The storage URL cannot be opened (the database is unreachable, or refuses us).  Callers that
    retry on a lost database catch this type rather than reading the message."""


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


def open_storage(
    url: str | None, max_retries: int, heartbeat_interval_s: int = 5, grace_period_s: int = 20
) -> RDBStorage | None:
    """An RDB storage with heartbeats and stale-trial retry, or None (in memory) for ``url=None``.
    Fails fast with :class:`StorageError` if the database cannot be reached."""
    if url is None:
        return None
    is_sqlite = url.startswith("sqlite")
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if is_sqlite:
        engine_kwargs["connect_args"] = {"timeout": 60}  # seconds to wait for the write lock
    last_error: Exception | None = None
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_interval_s,
                    grace_period=grace_period_s,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retries),
                )
            if is_sqlite:
                _serialize_sqlite_transactions(storage)
            return storage
        except Exception as exc:  # noqa: BLE001 - any driver error means "cannot open it"
            # two processes creating the schema of a fresh database at once: one loses the race on
            # Optuna's version row or on CREATE TABLE (SQLite: "already exists", PostgreSQL:
            # DuplicateTable); the next attempt finds the tables made
            last_error = exc
            races = ("IntegrityError", "UNIQUE", "duplicate", "Duplicate", "already exists", "locked")
            if not any(s in f"{type(exc).__name__} {exc}" for s in races):
                break
            time.sleep(0.3 * (attempt + 1))
    raise StorageError(f"storage: cannot open {url!r}: {type(last_error).__name__}: {last_error}")

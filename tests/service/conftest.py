"""Fixtures for the service tests: each test gets a fresh database, SQLite and PostgreSQL alike.

PostgreSQL: the server at 127.0.0.1:5432 (trust auth, user postgres).  One database is created and
migrated per run (and dropped at the end); after each test its tables are truncated.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import torch
from fastapi.testclient import TestClient

from service.db import Database, upgrade
from service.main import create_app
from service.settings import Settings

# Starlette's TestClient sends ``Host: testserver``; the server serves only the hosts it is told to
os.environ.setdefault("MIXQ_ALLOWED_HOSTS", "testserver")

PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
PG_ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test"


def pg_admin(sql: str) -> None:
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=3) as conn:
        conn.execute(sql)


def _pg_available() -> bool:
    try:
        pg_admin("SELECT 1")
    except psycopg.Error:
        return False
    return True


PG_AVAILABLE = _pg_available()


@pytest.fixture(scope="session", autouse=True)
def _fast_torch(tmp_path_factory: pytest.TempPathFactory) -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("MIXQ_CACHE_DIR", str(tmp_path_factory.mktemp("mixq-cache")))


@pytest.fixture(scope="session")
def pg_session_db() -> Iterator[str]:
    """One migrated database for the run; tests empty it afterwards (cheaper than a database each)."""
    if not PG_AVAILABLE:
        pytest.skip("PostgreSQL at 127.0.0.1:5432 is not reachable")
    name = f"mixq_test_{uuid.uuid4().hex[:10]}"
    pg_admin(f"CREATE DATABASE {name}")
    upgrade(f"{PG_SERVER}/{name}")
    yield name
    pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def pg_empty(name: str) -> None:
    """Drop every connection to ``name`` and truncate all its tables (mixq's and Optuna's) but the
    migration version tables."""
    pg_admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()")
    with psycopg.connect(f"host=127.0.0.1 port=5432 user=postgres dbname={name}", autocommit=True) as conn:
        tables = [row[0] for row in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename NOT IN ('mixq_alembic_version', 'alembic_version')"
        )]
        if tables:
            conn.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")


@pytest.fixture
def pg_url(pg_session_db: str) -> Iterator[str]:
    yield f"{PG_SERVER}/{pg_session_db}"
    pg_empty(pg_session_db)


@pytest.fixture
def fresh_pg_url() -> Iterator[str]:
    """An empty, unmigrated database of its own (migration tests)."""
    if not PG_AVAILABLE:
        pytest.skip("PostgreSQL at 127.0.0.1:5432 is not reachable")
    name = f"mixq_mig_{uuid.uuid4().hex[:10]}"
    pg_admin(f"CREATE DATABASE {name}")
    yield f"{PG_SERVER}/{name}"
    pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "mixq.db"
    upgrade(f"sqlite:///{path}")  # NullPool: the connection is closed (and the WAL checkpointed) after
    return path


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    path = tmp_path / "mixq.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture(params=[pytest.param("sqlite", id="sqlite"),
                        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """A migrated, empty database of each kind."""
    return request.getfixturevalue("pg_url" if request.param == "postgres" else "sqlite_url")


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=db_url, data_dir=tmp_path, heartbeat_interval_s=0.2, stale_after_s=2.0, poll_interval_s=0.1,
        events_poll_s=0.05,
    )


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = Database(settings.resolved_database_url)
    yield database
    database.dispose()


@pytest.fixture
def client(settings: Settings, db: Database) -> Iterator[TestClient]:
    with TestClient(create_app(settings, db)) as test_client:
        yield test_client


FAST_JOB = {
    "workload": "digits", "workload_options": {"pretrain_steps": 30}, "n_trials": 3, "qat_steps": 5,
    "seed_with_sensitivity": False, "reevaluate_front": 0,
}

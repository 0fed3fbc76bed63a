"""Alembic: upgrade/downgrade on SQLite and PostgreSQL, its own version table next to Optuna's, and the
migrations matching the models."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import optuna
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from service.db import VERSION_TABLE, downgrade, upgrade
from service.models import Base


@pytest.fixture(params=[pytest.param("sqlite", id="sqlite"),
                        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres)])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fresh.db'}"
    return str(request.getfixturevalue("fresh_pg_url"))


def tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(empty_url: str) -> None:
    ours = set(Base.metadata.tables)
    upgrade(empty_url)
    assert ours | {VERSION_TABLE} <= tables(empty_url)
    assert "alembic_version" not in tables(empty_url)
    downgrade(empty_url, "base")
    assert not (ours & tables(empty_url))
    upgrade(empty_url)
    assert ours <= tables(empty_url)


def test_coexists_with_optunas_tables(empty_url: str) -> None:
    optuna.create_study(storage=empty_url, study_name="before")  # Optuna first: its own alembic_version
    upgrade(empty_url)
    optuna.create_study(storage=empty_url, study_name="after")
    assert {"alembic_version", VERSION_TABLE, "studies", "mixq_jobs"} <= tables(empty_url)
    downgrade(empty_url, "base")
    assert "studies" in tables(empty_url) and "mixq_jobs" not in tables(empty_url)
    assert {s.study_name for s in optuna.get_all_study_summaries(empty_url)} == {"before", "after"}


def test_migrations_match_the_models(empty_url: str) -> None:
    upgrade(empty_url)
    engine = create_engine(empty_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            diffs = [d for d in compare_metadata(context, Base.metadata) if "mixq_" in repr(d)]
    finally:
        engine.dispose()
    assert diffs == []


_JOB_0004 = """INSERT INTO mixq_jobs (id, owner, status, priority, spec, n_trials, created_at, updated_at, front_final)
VALUES (1, 'local', 'succeeded', 0, '{"workload": "digits"}', 3, :now, :now, :no)"""
_TRIAL_0004 = """INSERT INTO mixq_trials (id, job_id, number, state, assignment, n_evaluations, costs, feasible,
duration_s, source, on_front, created_at) VALUES (1, 1, 0, 'complete', '{"fc": "int8"}', 1, '{}', :yes, 0.5,
'baseline', :no, :now)"""


def test_0005_keeps_the_rows_of_0004(empty_url: str) -> None:
    """Revision 0005 (a failed trial's error and retry, the job's fidelity check) on a database that
    holds a job and a trial: they read back as not retried, no error, no fidelity check; down again
    keeps them."""
    upgrade(empty_url, "0004")
    engine = create_engine(empty_url)
    try:
        with engine.begin() as conn:
            values = {"now": datetime(2025, 1, 1), "yes": True, "no": False}
            conn.execute(text(_JOB_0004), values)
            conn.execute(text(_TRIAL_0004), values)
        upgrade(empty_url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT error, retried FROM mixq_trials")).all() == [(None, False)]
            assert conn.execute(text("SELECT fidelity FROM mixq_jobs")).all() == [(None,)]
        downgrade(empty_url, "0004")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT number, source FROM mixq_trials")).all() == [(0, "baseline")]
            assert "retried" not in {c["name"] for c in inspect(conn).get_columns("mixq_trials")}
            assert "fidelity" not in {c["name"] for c in inspect(conn).get_columns("mixq_jobs")}
    finally:
        engine.dispose()


def test_cli_finds_migrations_from_any_directory(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    env = {**os.environ, "MIXQ_DATABASE_URL": url, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-m", "service.cli", "db", "upgrade"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "mixq_jobs" in tables(url)


# Run in a child process that SIGKILLs itself right after the migration created ``mixq_tokens`` (the
# third of its tables): what a Ctrl-C'd container or an OOM kill leaves behind.
_KILLED_UPGRADE = """
import os, signal, sys
from sqlalchemy import Engine, event
from service.db import upgrade

@event.listens_for(Engine, "after_cursor_execute")
def _die(conn, cursor, statement, parameters, context, executemany):
    if statement.lstrip().upper().startswith("CREATE TABLE MIXQ_TOKENS"):
        os.kill(os.getpid(), signal.SIGKILL)

upgrade(sys.argv[1])
"""


def test_upgrade_killed_midway_leaves_no_half_schema(empty_url: str, tmp_path: Path) -> None:
    killed = subprocess.run([sys.executable, "-c", _KILLED_UPGRADE, empty_url], cwd=Path(__file__).parents[2],
                            capture_output=True, text=True, timeout=120, check=False)
    assert killed.returncode == -9, killed.stderr  # it really died mid-upgrade
    assert not (tables(empty_url) & set(Base.metadata.tables))
    upgrade(empty_url)  # the next start migrates from scratch
    assert set(Base.metadata.tables) <= tables(empty_url)


REPO_ROOT = Path(__file__).resolve().parents[2]
UNREACHABLE = [
    pytest.param(["serve", "--workers", "0"], "postgresql+psycopg://mixq:s3cret-pw@127.0.0.1:1/mixq", id="serve-postgres"),
    pytest.param(["serve", "--workers", "0"], "sqlite:///{tmp}/a-file/mixq.db", id="serve-sqlite"),
    pytest.param(["db", "upgrade"], "postgresql+psycopg://mixq:s3cret-pw@127.0.0.1:1/mixq", id="db-upgrade-postgres"),
]


@pytest.mark.parametrize(("command", "url"), UNREACHABLE)
def test_unreachable_database_is_one_line_and_exit_2(tmp_path: Path, command: list[str], url: str) -> None:
    (tmp_path / "a-file").write_text("a file where the database's folder should be")
    url = url.format(tmp=tmp_path)
    # this checkout's code, from a directory outside it
    env = {**os.environ, "MIXQ_DATABASE_URL": url, "MIXQ_PORT": "1", "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "-m", "service.cli", *command], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: database "), done.stderr
    assert "s3cret-pw" not in done.stderr + done.stdout
    assert ("mixq:***@127.0.0.1:1" in lines[0] and "Connection refused" in lines[0]) or "mixq.db" in lines[0]

"""Engines, the one transaction scope, and migrations.

``session_scope`` owns commit/rollback; nothing else in the service commits or rolls back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_S = 30  # workers, the API and Optuna share one file; writers wait rather than fail
VERSION_TABLE = "mixq_alembic_version"  # Optuna's storage keeps its own alembic_version in the same DB


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # short connect timeout: /readyz must answer 503 quickly while the DB is away
    kwargs["connect_args"] = {"connect_timeout": 3}
    return create_engine(url, pool_size=5, max_overflow=10, pool_recycle=1800, **kwargs)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers don't block the writer
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
    cur.close()


class Database:
    """An engine plus its session factory."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()


def _migrations_dir() -> Path:
    """The copy the wheel ships as ``service/migrations`` (``pip install .``, the Docker image), else
    ``alembic/`` at the root of the checkout (editable install: it is the source of that copy).  The
    packaged copy comes first: beside an installed package, ``../alembic`` is the alembic library."""
    packaged = files("service").joinpath("migrations")
    if packaged.joinpath("env.py").is_file():
        return Path(str(packaged))  # a wheel installs into a folder; alembic reads its scripts from disk
    checkout = Path(__file__).resolve().parent.parent / "alembic"
    if (checkout / "env.py").is_file() and (checkout / "versions").is_dir():
        return checkout
    raise FileNotFoundError(f"migrations: neither service/migrations/env.py nor {checkout}/env.py exists")


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    from alembic import command

    command.downgrade(alembic_config(url), revision)

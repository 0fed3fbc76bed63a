"""Alembic environment for mixq's own tables.  The version table is ``mixq_alembic_version`` so it never
collides with the ``alembic_version`` that Optuna's RDB storage keeps in the same database."""

from __future__ import annotations

from logging.config import fileConfig
from typing import Any

from sqlalchemy import Connection, Engine, engine_from_config, event, pool

from alembic import context
from service.db import VERSION_TABLE
from service.models import Base
from service.settings import Settings

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name)

if not config.get_main_option("sqlalchemy.url"):
    config.set_main_option("sqlalchemy.url", Settings().resolved_database_url.replace("%", "%%"))

target_metadata = Base.metadata


def include_object(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    # autogenerate must never propose dropping Optuna's tables
    return not (type_ == "table" and reflected and name is not None and not name.startswith("mixq_"))


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        version_table=VERSION_TABLE,
        include_object=include_object,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _transactional_sqlite_ddl(engine: Engine) -> None:
    """Make pysqlite run DDL inside the migration's transaction.  By default it commits before every
    CREATE/ALTER, so a migration killed half-way left some tables behind and no version row, and every
    later start failed with "table mixq_jobs already exists".  With the driver's own transaction
    handling off and an explicit BEGIN, a killed upgrade leaves the database as it was.  IMMEDIATE
    takes the write lock at once: two `mixq serve` starting together migrate one after the other."""

    @event.listens_for(engine, "connect")
    def _driver_autocommit(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is None:
        connectable = engine_from_config(
            config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.", poolclass=pool.NullPool
        )
        if connectable.dialect.name == "sqlite":
            _transactional_sqlite_ddl(connectable)
    with connectable.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            version_table=VERSION_TABLE,
            include_object=include_object,
            render_as_batch=True,
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

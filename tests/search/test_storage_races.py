"""Losing a schema-creation race is read from the drivers' error codes (search.study.storage.is_schema_race)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from search.study.storage import is_schema_race

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _error(engine: sa.Engine, *statements: str) -> Exception:
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(sa.text(statement))
    except Exception as exc:  # noqa: BLE001 - the error is what the test looks at
        return exc
    raise AssertionError("no error")


@pytest.mark.parametrize("url", ["sqlite://", PG])
def test_a_duplicate_table_or_row_is_a_race_and_other_errors_are_not(url: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS mixq_race_probe"))
        conn.execute(sa.text("CREATE TABLE mixq_race_probe (a INT PRIMARY KEY)"))
    try:
        assert is_schema_race(_error(engine, "CREATE TABLE mixq_race_probe (a INT)"))
        assert is_schema_race(_error(engine, "INSERT INTO mixq_race_probe VALUES (1)",
                                     "INSERT INTO mixq_race_probe VALUES (1)"))
        assert not is_schema_race(_error(engine, "SELECT * FROM no_such_table"))
        assert not is_schema_race(_error(engine, "SELEC 1"))
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE mixq_race_probe"))
    # the text of an error is not a code: a message that merely says so is not a race
    assert not is_schema_race(ValueError("UNIQUE constraint: database is locked, table already exists"))


def test_opening_the_storage_retries_a_schema_race_and_nothing_else(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lost schema race is retried (the next attempt finds the tables); any other error is a
    StorageError at once, naming the URL."""
    import search.study.storage as storage

    engine = sa.create_engine("sqlite://")
    race = _error(engine, "CREATE TABLE t (a INT)", "CREATE TABLE t (a INT)")
    other = _error(engine, "SELEC 1")
    calls: list[int] = []

    def flaky(errors: list[Exception]) -> type:
        class FakeStorage:
            def __init__(self, *args: object, **kwargs: object) -> None:
                calls.append(1)
                if errors:
                    raise errors.pop(0)

        return FakeStorage

    monkeypatch.setattr(storage, "RDBStorage", flaky([race, race]))
    opened = storage.open_storage("postgresql+psycopg://nobody@127.0.0.1:1/none", max_retries=0)
    assert opened is not None and len(calls) == 3

    calls.clear()
    monkeypatch.setattr(storage, "RDBStorage", flaky([other, other]))
    with pytest.raises(storage.StorageError, match=r"cannot open 'postgresql\+psycopg://nobody@127.0.0.1:1/none'"):
        storage.open_storage("postgresql+psycopg://nobody@127.0.0.1:1/none", max_retries=0)
    assert len(calls) == 1  # not retried

    calls.clear()
    monkeypatch.setattr(storage, "RDBStorage", flaky([race] * 9))
    with pytest.raises(storage.StorageError, match="already exists"):
        storage.open_storage("postgresql+psycopg://nobody@127.0.0.1:1/none", max_retries=0)
    assert len(calls) == 5  # five attempts, then the race's own error

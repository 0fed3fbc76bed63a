"""The live front stored with the trials (``mixq_trials.live_front``, issue 21's Load section): kept by
``store.record_trial`` as trials are recorded, it must equal the front rebuilt from all rows, whatever the
order, repeats, re-evaluations and concurrency; ``/trials`` and ``/pareto`` report it; migration 0007 fills
it for the jobs already stored.  SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import json
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import FAST_JOB
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, inspect, select, text

from service import store
from service.db import Database, downgrade, upgrade
from service.models import Trial
from service.pareto_view import ParetoViews
from service.store import TrialRecord

SPEC = {**FAST_JOB, "cost_objectives": ["bitops", "size"]}


def naive_front(rows: list[tuple[int, float, float, float]], higher_is_better: bool = True) -> set[int]:
    """(number, quality, bitops, size) of the eligible trials -> numbers on the front, by the definition:
    no other point at least as good everywhere and better somewhere; of identical points the lowest number."""
    sign = -1.0 if higher_is_better else 1.0
    vecs = {n: (sign * q, b, s) for n, q, b, s in rows}
    front = set()
    for n, v in vecs.items():
        dominated = any(all(x <= y for x, y in zip(w, v, strict=True)) and w != v for w in vecs.values())
        repeated = any(w == v and m < n for m, w in vecs.items())
        if not dominated and not repeated:
            front.add(n)
    return front


def eligible_rows(db: Database, job_id: int) -> list[tuple[int, float, float, float]]:
    with db.session() as session:
        rows = session.execute(select(Trial.number, Trial.quality, Trial.costs).where(
            Trial.job_id == job_id, Trial.state == "complete", Trial.feasible.is_(True), Trial.quality.is_not(None)
        )).all()
    return [(n, q, float(c.get("bitops", 0.0)), float(c.get("size", 0.0))) for n, q, c in rows]


def stored_front(db: Database, job_id: int) -> set[int]:
    with db.session() as session:
        return store.live_front_numbers(session, job_id)


def random_record(number: int, rng: random.Random) -> TrialRecord:
    # few distinct values: ties and repeated points are common
    bitops, size = float(rng.choice([1, 2, 3, 4, 5])), float(rng.choice([10, 20, 30]))
    quality = rng.choice([0.5, 0.6, 0.7, 0.8, 0.9, None])
    return TrialRecord(
        number=number, assignment={"fc": "int8"}, quality=quality, quality_std=0.0, n_evaluations=1,
        costs={"bitops": bitops, "size": size}, primary_cost=bitops, feasible=rng.random() > 0.15 and quality is not None,
        duration_s=1.0, source="sampler", qconfig=None,
    )


def new_job(db: Database, spec: dict[str, Any] = SPEC) -> int:
    with db.session() as session:
        job_id = store.add_job(session, "local", spec, 1000, 0, None).id
    with db.session() as session:
        store.claim_queued_job(session)
        store.set_job_info(session, job_id, "accuracy", True, 0.95)
    return job_id


def test_the_stored_front_equals_the_front_of_all_rows_after_random_records(db: Database) -> None:
    rng = random.Random(0)
    job_id = new_job(db)
    numbers = list(range(120))
    rng.shuffle(numbers)  # workers finish out of order
    recorded: list[int] = []
    for step in range(200):
        with db.session() as session:
            roll = rng.random()
            if roll < 0.6 or not recorded:  # a new trial
                if not numbers:
                    continue
                number = numbers.pop()
                store.record_trial(session, job_id, random_record(number, rng), "w", True)
                recorded.append(number)
            elif roll < 0.7:  # a failed one
                if numbers:
                    store.record_failed_trial(session, job_id, numbers.pop(), {"fc": "int4"}, "boom", False)
            elif roll < 0.85:  # a trial reported again unchanged (the final report of every trial)
                number = rng.choice(recorded)
                trial = store.get_trial(session, job_id, number)
                assert trial is not None
                store.record_trial(session, job_id, TrialRecord(
                    number=number, assignment=trial.assignment, quality=trial.quality, quality_std=0.0,
                    n_evaluations=1, costs=trial.costs, primary_cost=trial.primary_cost, feasible=trial.feasible,
                    duration_s=1.0, source="sampler", qconfig=None), None, True)
            else:  # re-evaluated: a new quality for a recorded trial, on the front or off it
                front = sorted(store.live_front_numbers(session, job_id))
                number = rng.choice(front) if front and rng.random() < 0.6 else rng.choice(recorded)
                store.record_trial(session, job_id, random_record(number, rng), None, True)
        assert stored_front(db, job_id) == naive_front(eligible_rows(db, job_id)), f"step {step}"
    assert len(stored_front(db, job_id)) > 2  # the front is not trivially small


def test_concurrent_recorders_keep_the_front(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two recorders of one job start together, each with one trial, the one dominating the other; each
    pauses between writing its trial and reading the front, so without the job's lock both would read an
    empty front and both trials would stay on it.  Then four recorders of random trials at once: the stored
    front is the front of all rows."""
    objectives_of = store._objectives_of

    def slow_objectives_of(session: Any, job: int) -> Any:
        time.sleep(0.02)
        return objectives_of(session, job)

    monkeypatch.setattr(store, "_objectives_of", slow_objectives_of)
    errors: list[BaseException] = []

    def run_together(job_id: int, records: list[TrialRecord]) -> None:
        barrier = threading.Barrier(len(records))

        def one(record: TrialRecord) -> None:
            try:
                barrier.wait(timeout=30)
                with db.session() as session:
                    store.record_trial(session, job_id, record, "w", True)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(r,)) for r in records]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)

    base = TrialRecord(number=0, assignment={"fc": "int8"}, quality=0.9, quality_std=0.0, n_evaluations=1,
                       costs={"bitops": 1.0, "size": 10.0}, primary_cost=1.0, feasible=True, duration_s=1.0,
                       source="sampler", qconfig=None)
    for round_ in range(6):
        job_id = new_job(db)
        better = dataclasses.replace(base, number=1 + round_ % 2)
        worse = dataclasses.replace(base, number=2 - round_ % 2, quality=0.5, costs={"bitops": 2.0, "size": 10.0})
        run_together(job_id, [better, worse])
        assert not errors, errors
        assert stored_front(db, job_id) == {better.number}, f"round {round_}"

    job_id = new_job(db)
    rng = random.Random(1)
    for i in range(10):
        run_together(job_id, [random_record(seed * 1000 + i, rng) for seed in range(4)])
    assert not errors, errors
    rows = eligible_rows(db, job_id)
    assert len(rows) > 20
    assert stored_front(db, job_id) == naive_front(rows)


def test_a_change_of_direction_rebuilds_the_front(db: Database) -> None:
    rng = random.Random(3)
    job_id = new_job(db)
    with db.session() as session:
        for number in range(40):
            store.record_trial(session, job_id, random_record(number, rng), "w", True)
    with db.session() as session:
        store.set_job_info(session, job_id, "mse", False, 0.1)  # a lower quality is better now
    assert stored_front(db, job_id) == naive_front(eligible_rows(db, job_id), higher_is_better=False)
    assert naive_front(eligible_rows(db, job_id), False) != naive_front(eligible_rows(db, job_id), True)


def test_trials_and_pareto_report_the_stored_front(client: TestClient, db: Database) -> None:
    rng = random.Random(5)
    job_id = new_job(db)
    views = ParetoViews()
    for batch in range(4):
        with db.session() as session:
            for number in range(batch * 15, batch * 15 + 15):
                store.record_trial(session, job_id, random_record(number, rng), "w", True)
        expected = naive_front(eligible_rows(db, job_id))
        trials = client.get(f"/v1/jobs/{job_id}/trials", params={"limit": 200}).json()["items"]
        assert {t["number"] for t in trials if t["on_front"]} == expected
        pareto = client.get(f"/v1/jobs/{job_id}/pareto").json()
        assert {p["number"] for p in pareto["points"]} == expected
        assert {t["number"] for t in pareto["trials"] if t["on_front"]} == expected
        with db.session() as session:  # a view kept across versions equals a fresh one
            job = store.get_job(session, job_id)
            assert job is not None
            assert views.response(session, job) == ParetoViews().response(session, job)


SORTS = ["number", "-number", "quality", "-quality", "cost", "-cost"]


def _expected_order(rows: list[dict[str, Any]], sort: str) -> list[int]:
    key = {"number": None, "quality": "quality", "cost": "primary_cost"}[sort.lstrip("-")]
    if key is None:
        return sorted((r["number"] for r in rows), reverse=sort.startswith("-"))
    present = [r for r in rows if r[key] is not None]
    missing = sorted(r["number"] for r in rows if r[key] is None)  # last either way, by number
    sign = -1 if sort.startswith("-") else 1
    return [r["number"] for r in sorted(present, key=lambda r: (sign * r[key], r["number"]))] + missing


@pytest.mark.parametrize("sort", SORTS)
def test_pages_in_every_sort_are_the_sorted_rows(client: TestClient, db: Database, sort: str) -> None:
    rng = random.Random(7)
    job_id = new_job(db)
    with db.session() as session:
        for number in rng.sample(range(200), 70):
            if rng.random() < 0.2:
                store.record_failed_trial(session, job_id, number, {"fc": "int4"}, "boom", False)
            else:
                store.record_trial(session, job_id, random_record(number, rng), "w", True)
    full = client.get(f"/v1/jobs/{job_id}/trials", params={"limit": 200, "sort": sort}).json()
    rows = [{"number": t["number"], "quality": t["quality"],
             "primary_cost": t["costs"].get("bitops") if t["state"] == "complete" else None} for t in full["items"]]
    assert full["total"] == 70 and [r["number"] for r in rows] == _expected_order(rows, sort)
    paged: list[dict[str, Any]] = []
    for offset in range(0, 80, 16):
        page = client.get(f"/v1/jobs/{job_id}/trials", params={"limit": 16, "offset": offset, "sort": sort}).json()
        assert page["total"] == 70 and page["offset"] == offset
        paged += page["items"]
    assert paged == full["items"]  # pages tile the full listing, every field alike


_JOB_0006 = """INSERT INTO mixq_jobs (id, owner, status, priority, spec, n_trials, created_at, updated_at, front_final,
higher_is_better) VALUES (1, 'local', 'running', 0, :spec, 50, :now, :now, :no, :yes)"""
_TRIAL_0006 = """INSERT INTO mixq_trials (job_id, number, state, assignment, quality, n_evaluations, costs, feasible,
duration_s, source, on_front, created_at, retried) VALUES (1, :number, :state, '{"fc": "int8"}', :quality, 1, :costs,
:feasible, 0.5, 'sampler', :no, :now, :no)"""


def test_0007_fills_the_live_front_of_stored_jobs_and_goes_down_again(tmp_path: Path, request: pytest.FixtureRequest,
                                                                     db_url: str) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}" if db_url.startswith("sqlite") else request.getfixturevalue("fresh_pg_url")
    from datetime import datetime

    upgrade(url, "0006")
    rng = random.Random(11)
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            now = datetime(2026, 1, 1)
            conn.execute(text(_JOB_0006), {"spec": json.dumps(SPEC), "now": now, "no": False, "yes": True})
            for number in range(50):
                r = random_record(number, rng)
                conn.execute(text(_TRIAL_0006), {
                    "number": number, "state": "complete" if number % 9 else "failed", "quality": r.quality,
                    "costs": json.dumps(r.costs), "feasible": r.feasible, "no": False, "now": now})
        upgrade(url)
        db = Database(url)
        try:
            expected = naive_front([row for row in eligible_rows(db, 1)])
            assert expected and stored_front(db, 1) == expected
        finally:
            db.dispose()
        downgrade(url, "0006")
        with engine.connect() as conn:
            assert "live_front" not in {c["name"] for c in inspect(conn).get_columns("mixq_trials")}
            assert conn.execute(text("SELECT count(*) FROM mixq_trials")).scalar() == 50
            indexes = {i["name"] for i in inspect(conn).get_indexes("mixq_trials")}
            assert not indexes & {"ix_mixq_trials_job_counts", "ix_mixq_trials_job_live_front"}
    finally:
        engine.dispose()


def test_cached_trial_pages_follow_every_write(client: TestClient, db: Database) -> None:
    """``/trials`` pages are cached per job version: each kind of write of the job's trials shows at once."""
    rng = random.Random(9)
    job_id = new_job(db)

    def page() -> dict[str, Any]:
        r = client.get(f"/v1/jobs/{job_id}/trials", params={"limit": 200, "sort": "-quality"})
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        again = client.get(f"/v1/jobs/{job_id}/trials", params={"limit": 200, "sort": "-quality"})
        assert again.content == r.content  # the cached bytes
        body: dict[str, Any] = r.json()
        return body

    with db.session() as session:
        for number in range(10):
            store.record_trial(session, job_id, random_record(number, rng), "w", True)
    assert page()["total"] == 10
    with db.session() as session:
        store.record_trial(session, job_id, dataclasses.replace(random_record(10, rng), quality=5.0, feasible=True), "w",
                           True)
    first = page()
    assert first["total"] == 11 and first["items"][0]["number"] == 10 and first["items"][0]["on_front"]
    with db.session() as session:
        store.record_failed_trial(session, job_id, 11, {"fc": "int4"}, "boom", False)
    assert page()["total"] == 12
    with db.session() as session:  # re-evaluated: trial 10 falls to the bottom and off the front
        store.record_trial(session, job_id, dataclasses.replace(random_record(10, rng), quality=0.01, feasible=True),
                           None, True)
    items = page()["items"]
    assert items[0]["number"] != 10 and not next(t for t in items if t["number"] == 10)["on_front"]
    with db.session() as session:  # the search's own front replaces the live one
        store.mark_front(session, job_id, [3])
    assert {t["number"] for t in page()["items"] if t["on_front"]} == {3}

"""The incrementally maintained /pareto response equals a rebuild from the database."""

from __future__ import annotations

import json
import random

from conftest import FAST_JOB

from service import store
from service.db import Database
from service.pareto_view import ParetoViews
from service.schemas import ParetoOut
from service.store import TrialRecord


def record(number: int, rng: random.Random) -> TrialRecord:
    cost = float(rng.randint(1, 50))
    quality = rng.random()
    return TrialRecord(number=number, assignment={"fc": "int8"}, quality=quality, quality_std=0.0, n_evaluations=1,
                       costs={"bitops": cost}, primary_cost=cost, feasible=rng.random() > 0.1, duration_s=1.0,
                       source="sampler", qconfig=None)


def test_incremental_equals_rebuild(db: Database) -> None:
    rng = random.Random(0)
    with db.session() as session:
        job_id = store.add_job(session, "local", FAST_JOB, 100, 0, None).id
        store.claim_queued_job(session)
        store.set_job_info(session, job_id, "accuracy", True, 0.9)
    live = ParetoViews()
    numbers = list(range(60))
    rng.shuffle(numbers)  # workers finish trials out of order
    for batch in range(0, 60, 7):
        with db.session() as session:
            for number in numbers[batch:batch + 7]:
                store.record_trial(session, job_id, record(number, rng), "w", True)
        with db.session() as session:
            job = store.get_job(session, job_id)
            assert job is not None
            incremental = live.response(session, job)
            rebuilt = ParetoViews().response(session, job)
        assert incremental == rebuilt
        body = ParetoOut.model_validate(json.loads(incremental))
        assert [t.number for t in body.trials] == sorted(numbers[:batch + 7])
        assert body.points and all(p.feasible for p in body.points)
    with db.session() as session:  # the search's own front replaces the live one
        store.mark_front(session, job_id, [numbers[0]])
        job = store.get_job(session, job_id)
        assert job is not None
        final = ParetoOut.model_validate(json.loads(live.response(session, job)))
    assert [p.number for p in final.points] == [numbers[0]]

"""the live Pareto front stored with the trials (mixq_trials.live_front), and indexes for the read paths

Revision ID: 0007
Revises: 0006

``live_front`` is kept by ``service.store.record_trial`` as each trial is recorded, so ``/pareto`` and
``/trials`` read the front instead of recomputing it from every row.  Existing jobs get theirs here,
computed as the service computed it per request before (``search.pareto_numbers`` over the complete,
feasible trials with a quality, in the job's cost objectives).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('mixq_trials', sa.Column('live_front', sa.Boolean(), server_default=sa.false(), nullable=False))
    op.create_index('ix_mixq_trials_job_counts', 'mixq_trials', ['job_id', 'state', 'feasible', 'retried'])
    op.create_index('ix_mixq_trials_job_live_front', 'mixq_trials', ['job_id', 'live_front', 'number'])
    _backfill_live_front(op.get_bind())


def _backfill_live_front(conn: Any) -> None:
    from search import objective_vector, pareto_numbers

    jobs = sa.table('mixq_jobs', sa.column('id'), sa.column('spec', sa.JSON()), sa.column('higher_is_better'))
    trials = sa.table('mixq_trials', sa.column('job_id'), sa.column('number'), sa.column('state'),
                      sa.column('feasible'), sa.column('quality'), sa.column('costs', sa.JSON()),
                      sa.column('live_front'))
    for job_id, spec, hib in conn.execute(sa.select(jobs.c.id, jobs.c.spec, jobs.c.higher_is_better)).all():
        objectives = [str(c) for c in (spec or {}).get('cost_objectives', ['bitops'])]
        rows = conn.execute(sa.select(trials.c.number, trials.c.quality, trials.c.costs).where(
            trials.c.job_id == job_id, trials.c.state == 'complete', trials.c.feasible.is_(True),
            trials.c.quality.is_not(None),
        )).all()
        front = pareto_numbers([
            (n, objective_vector(q, [float((costs or {}).get(c, 0.0)) for c in objectives], hib is not False))
            for n, q, costs in rows
        ])
        for start in range(0, len(front), 500):
            chunk = sorted(front)[start:start + 500]
            conn.execute(sa.update(trials).where(trials.c.job_id == job_id, trials.c.number.in_(chunk))
                         .values(live_front=True))


def downgrade() -> None:
    op.drop_index('ix_mixq_trials_job_live_front', table_name='mixq_trials')
    op.drop_index('ix_mixq_trials_job_counts', table_name='mixq_trials')
    with op.batch_alter_table('mixq_trials') as batch:
        batch.drop_column('live_front')

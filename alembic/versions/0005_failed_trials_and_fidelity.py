"""failed trials keep their error and whether they were retried; the job keeps the search's fidelity check

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('mixq_jobs', sa.Column('fidelity', sa.JSON(), nullable=True))
    op.add_column('mixq_trials', sa.Column('error', sa.Text(), nullable=True))
    # existing rows: no trial was recorded as failed before this revision, so none was retried
    op.add_column('mixq_trials', sa.Column('retried', sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('mixq_trials') as batch:
        batch.drop_column('retried')
        batch.drop_column('error')
    with op.batch_alter_table('mixq_jobs') as batch:
        batch.drop_column('fidelity')

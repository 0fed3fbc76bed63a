"""the search's live progress on the job (phase, estimate of the time left)

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('mixq_jobs', sa.Column('search_progress', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('mixq_jobs') as batch:
        batch.drop_column('search_progress')

"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-26 20:19:55.073501
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('mixq_jobs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('owner', sa.String(length=100), nullable=False),
    sa.Column('idempotency_key', sa.String(length=200), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('n_trials', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=True),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('metric', sa.String(length=100), nullable=True),
    sa.Column('higher_is_better', sa.Boolean(), nullable=True),
    sa.Column('fp32_quality', sa.Float(), nullable=True),
    sa.Column('layers', sa.JSON(), nullable=True),
    sa.Column('pinned', sa.JSON(), nullable=True),
    sa.Column('front_final', sa.Boolean(), nullable=False),
    sa.Column('best_quality', sa.Float(), nullable=True),
    sa.Column('best_trial', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('owner', 'idempotency_key', name='uq_mixq_jobs_owner_idempotency_key'),
    sqlite_autoincrement=True
    )
    with op.batch_alter_table('mixq_jobs', schema=None) as batch_op:
        batch_op.create_index('ix_mixq_jobs_owner_id', ['owner', 'id'], unique=False)
        batch_op.create_index('ix_mixq_jobs_status_priority', ['status', 'priority', 'id'], unique=False)

    op.create_table('mixq_profiles',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('owner', sa.String(length=100), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('owner', 'name', name='uq_mixq_profiles_owner_name')
    )
    op.create_table('mixq_tokens',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('owner', sa.String(length=100), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('token_sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('revoked', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_sha256')
    )
    with op.batch_alter_table('mixq_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_mixq_tokens_owner'), ['owner'], unique=False)

    op.create_table('mixq_uploads',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('owner', sa.String(length=100), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('info', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('owner', 'kind', 'name', name='uq_mixq_uploads_owner_kind_name')
    )
    op.create_table('mixq_trials',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('job_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('assignment', sa.JSON(), nullable=False),
    sa.Column('quality', sa.Float(), nullable=True),
    sa.Column('quality_std', sa.Float(), nullable=True),
    sa.Column('n_evaluations', sa.Integer(), nullable=False),
    sa.Column('costs', sa.JSON(), nullable=False),
    sa.Column('primary_cost', sa.Float(), nullable=True),
    sa.Column('feasible', sa.Boolean(), nullable=False),
    sa.Column('duration_s', sa.Float(), nullable=False),
    sa.Column('source', sa.String(length=32), nullable=False),
    sa.Column('on_front', sa.Boolean(), nullable=False),
    sa.Column('qconfig', sa.JSON(), nullable=True),
    sa.Column('worker_id', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['mixq_jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('job_id', 'number', name='uq_mixq_trials_job_number')
    )
    with op.batch_alter_table('mixq_trials', schema=None) as batch_op:
        batch_op.create_index('ix_mixq_trials_job_cost', ['job_id', 'primary_cost'], unique=False)
        batch_op.create_index('ix_mixq_trials_job_quality', ['job_id', 'quality'], unique=False)

    op.create_table('mixq_upload_blobs',
    sa.Column('upload_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['upload_id'], ['mixq_uploads.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('upload_id')
    )
    op.create_table('mixq_workers',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('hostname', sa.String(length=255), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('heartbeat_at', sa.DateTime(), nullable=False),
    sa.Column('job_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['mixq_jobs.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('mixq_workers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_mixq_workers_job_id'), ['job_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('mixq_workers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_mixq_workers_job_id'))

    op.drop_table('mixq_workers')
    op.drop_table('mixq_upload_blobs')
    with op.batch_alter_table('mixq_trials', schema=None) as batch_op:
        batch_op.drop_index('ix_mixq_trials_job_quality')
        batch_op.drop_index('ix_mixq_trials_job_cost')

    op.drop_table('mixq_trials')
    op.drop_table('mixq_uploads')
    with op.batch_alter_table('mixq_tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_mixq_tokens_owner'))

    op.drop_table('mixq_tokens')
    op.drop_table('mixq_profiles')
    with op.batch_alter_table('mixq_jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_mixq_jobs_status_priority')
        batch_op.drop_index('ix_mixq_jobs_owner_id')

    op.drop_table('mixq_jobs')

"""Incremental AD sync: per-directory USN watermark; sync mode and the reason for it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""
from alembic import op
import sqlalchemy as sa

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('directory_watermarks',
    sa.Column('directory', sa.String(length=64), nullable=False),
    sa.Column('dc_host', sa.Text(), nullable=False),
    sa.Column('invocation_id', sa.String(length=36), nullable=False),
    sa.Column('highest_usn', sa.BigInteger(), nullable=False),
    sa.Column('base_dn', sa.Text(), nullable=False),
    sa.Column('bind_dn', sa.Text(), nullable=False),
    sa.Column('synced_at', sa.DateTime(), nullable=False),
    sa.Column('full_sync_at', sa.DateTime(), nullable=False),
    sa.Column('tombstone_lifetime_days', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('directory', name=op.f('pk_directory_watermarks')))
    with op.batch_alter_table('sync_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('mode', sa.String(length=16), server_default='full', nullable=False))
        batch_op.add_column(sa.Column('reason', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('sync_runs', schema=None) as batch_op:
        batch_op.drop_column('reason')
        batch_op.drop_column('mode')
    op.drop_table('directory_watermarks')

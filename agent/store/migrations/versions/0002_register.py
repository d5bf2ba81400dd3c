"""The licence register: products, purchases, assignments (with released history) and the audit trail.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""
from alembic import op
import sqlalchemy as sa



revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('register_products',
    sa.Column('key', sa.String(length=100), nullable=False),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('key'))
    op.create_table('register_purchases',
    sa.Column('id', sa.String(length=200), nullable=False),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id'))
    op.create_table('register_assignments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('purchase_id', sa.String(length=200), nullable=False),
    sa.Column('principal', sa.Text(), nullable=False),
    sa.Column('principal_key', sa.Text(), nullable=False),
    sa.Column('directory', sa.String(length=64), nullable=True),
    sa.Column('assigned_on', sa.Date(), nullable=True),
    sa.Column('released_on', sa.Date(), nullable=True),
    sa.Column('release_reason', sa.String(length=32), nullable=True),
    sa.Column('moved_to', sa.Integer(), nullable=True),
    sa.Column('notes', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['purchase_id'], ['register_purchases.id']),
    sa.PrimaryKeyConstraint('id'))
    op.create_index('ix_register_assignments_active', 'register_assignments', ['purchase_id', 'released_on'])
    op.create_index('ix_register_assignments_purchase_id', 'register_assignments', ['purchase_id'])
    op.create_index('ix_register_assignments_principal_key', 'register_assignments', ['principal_key'])
    op.create_table('register_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('purchase_id', sa.String(length=200), nullable=True),
    sa.Column('principal_key', sa.Text(), nullable=True),
    sa.Column('to_principal_key', sa.Text(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('details', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('id'))
    op.create_index('ix_register_events_at', 'register_events', ['at'])
    op.create_index('ix_register_events_purchase_id', 'register_events', ['purchase_id'])
    op.create_index('ix_register_events_principal_key', 'register_events', ['principal_key'])
    op.create_index('ix_register_events_to_principal_key', 'register_events', ['to_principal_key'])


def downgrade() -> None:
    op.drop_table('register_events')
    op.drop_table('register_assignments')
    op.drop_table('register_purchases')
    op.drop_table('register_products')

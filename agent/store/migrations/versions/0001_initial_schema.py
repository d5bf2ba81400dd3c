"""Initial schema: principals, memberships, principal events, sync runs, runs and their findings.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""
from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('principals',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('directory', sa.String(length=64), nullable=False),
    sa.Column('guid', sa.String(length=36), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('name_key', sa.Text(), nullable=False),
    sa.Column('dn', sa.Text(), nullable=False),
    sa.Column('sid', sa.String(length=200), nullable=True),
    sa.Column('display_name', sa.Text(), nullable=True),
    sa.Column('mail', sa.Text(), nullable=True),
    sa.Column('user_account_control', sa.BigInteger(), nullable=True),
    sa.Column('account_expires', sa.DateTime(), nullable=True),
    sa.Column('last_logon', sa.DateTime(), nullable=True),
    sa.Column('pwd_last_set', sa.DateTime(), nullable=True),
    sa.Column('when_created', sa.DateTime(), nullable=True),
    sa.Column('primary_group_id', sa.BigInteger(), nullable=True),
    sa.Column('dns_host_name', sa.Text(), nullable=True),
    sa.Column('operating_system', sa.Text(), nullable=True),
    sa.Column('operating_system_version', sa.Text(), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('state_since', sa.DateTime(), nullable=False),
    sa.Column('first_seen', sa.DateTime(), nullable=False),
    sa.Column('last_seen', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_principals')),
    sa.UniqueConstraint('directory', 'guid', name=op.f('uq_principals_directory'))
    )
    with op.batch_alter_table('principals', schema=None) as batch_op:
        batch_op.create_index('ix_principals_directory_name', ['directory', 'kind', 'name_key'], unique=False)

    op.create_table('runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('compliant', sa.Boolean(), nullable=False),
    sa.Column('findings', sa.Integer(), nullable=False),
    sa.Column('errors', sa.Integer(), nullable=False),
    sa.Column('warnings', sa.Integer(), nullable=False),
    sa.Column('shortfall', sa.Integer(), nullable=False),
    sa.Column('report', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_runs'))
    )
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_runs_created_at'), ['created_at'], unique=False)

    op.create_table('sync_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('directory', sa.String(length=64), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('source', sa.Text(), nullable=True),
    sa.Column('users', sa.Integer(), nullable=False),
    sa.Column('groups', sa.Integer(), nullable=False),
    sa.Column('computers', sa.Integer(), nullable=False),
    sa.Column('tombstones', sa.Integer(), nullable=False),
    sa.Column('changes', sa.Integer(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sync_runs'))
    )
    with op.batch_alter_table('sync_runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sync_runs_directory'), ['directory'], unique=False)

    op.create_table('memberships',
    sa.Column('group_id', sa.Integer(), nullable=False),
    sa.Column('member_id', sa.Integer(), nullable=False),
    sa.Column('via_primary', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['group_id'], ['principals.id'], name=op.f('fk_memberships_group_id_principals'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['member_id'], ['principals.id'], name=op.f('fk_memberships_member_id_principals'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('group_id', 'member_id', name=op.f('pk_memberships'))
    )
    with op.batch_alter_table('memberships', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_memberships_member_id'), ['member_id'], unique=False)

    op.create_table('principal_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sync_id', sa.Integer(), nullable=False),
    sa.Column('principal_id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.Column('event', sa.String(length=16), nullable=False),
    sa.Column('old', sa.Text(), nullable=True),
    sa.Column('new', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['principal_id'], ['principals.id'], name=op.f('fk_principal_events_principal_id_principals'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['sync_id'], ['sync_runs.id'], name=op.f('fk_principal_events_sync_id_sync_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_principal_events'))
    )
    with op.batch_alter_table('principal_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_principal_events_principal_id'), ['principal_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_principal_events_sync_id'), ['sync_id'], unique=False)

    op.create_table('run_findings',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('key', sa.Text(), nullable=False),
    sa.Column('kind', sa.String(length=64), nullable=False),
    sa.Column('severity', sa.String(length=16), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_run_findings_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'key', name=op.f('pk_run_findings'))
    )


def downgrade() -> None:
    op.drop_table('run_findings')
    with op.batch_alter_table('principal_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_principal_events_sync_id'))
        batch_op.drop_index(batch_op.f('ix_principal_events_principal_id'))

    op.drop_table('principal_events')
    with op.batch_alter_table('memberships', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_memberships_member_id'))

    op.drop_table('memberships')
    with op.batch_alter_table('sync_runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sync_runs_directory'))

    op.drop_table('sync_runs')
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_runs_created_at'))

    op.drop_table('runs')
    with op.batch_alter_table('principals', schema=None) as batch_op:
        batch_op.drop_index('ix_principals_directory_name')

    op.drop_table('principals')

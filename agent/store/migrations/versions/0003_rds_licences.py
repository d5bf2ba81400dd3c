"""Per-user RDS CALs recorded on users (msTSExpireDate, msTSLicenseVersion, msTSManagingLS 1-4).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""
from alembic import op
import sqlalchemy as sa

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('principals', schema=None) as batch_op:
        batch_op.add_column(sa.Column('rds_licenses', sa.Text(), server_default='[]', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('principals', schema=None) as batch_op:
        batch_op.drop_column('rds_licenses')

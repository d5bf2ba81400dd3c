"""Principals keep what an incremental read needs without re-reading the directory: a group's
gidNumber (generic LDAP: users' primary posixGroup) and the DN's comparison key, indexed, so
member DNs of a changed group resolve by lookup instead of by loading every principal.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24
"""
from alembic import op
import sqlalchemy as sa

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('principals', schema=None) as batch_op:
        batch_op.add_column(sa.Column('gid_number', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('dn_key', sa.Text(), nullable=True))
        batch_op.create_index('ix_principals_directory_dn_key', ['directory', 'dn_key'], unique=False)
    # Fill dn_key for the principals already stored (the sync writes it from now on).
    from agent.directory.decode import dn_key

    connection = op.get_bind()
    principals = sa.table('principals', sa.column('id', sa.Integer), sa.column('dn', sa.Text),
                          sa.column('dn_key', sa.Text))
    rows = connection.execute(sa.select(principals.c.id, principals.c.dn)).all()
    update = principals.update().where(principals.c.id == sa.bindparam('pid')).values(dn_key=sa.bindparam('key'))
    for start in range(0, len(rows), 5000):
        connection.execute(update, [{'pid': pid, 'key': dn_key(dn)} for pid, dn in rows[start:start + 5000]])


def downgrade() -> None:
    with op.batch_alter_table('principals', schema=None) as batch_op:
        batch_op.drop_index('ix_principals_directory_dn_key')
        batch_op.drop_column('dn_key')
        batch_op.drop_column('gid_number')

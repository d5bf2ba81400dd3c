"""Stored reports become their JSON text, gzip'd (runs.report_gz), instead of a JSON column:
~30 times smaller (a 100,000-user report is ~90 MB as JSON, ~4 MB gzip'd), and `report --format
json` copies it out without parsing it.  Existing runs are converted one at a time.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25
"""
import json

from alembic import op
import sqlalchemy as sa

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def _convert_each_run(source: sa.Column, target: sa.Column, convert) -> None:
    """runs.<target> = convert(runs.<source>), one run at a time (a report can be ~90 MB)."""
    connection = op.get_bind()
    runs = sa.table('runs', sa.column('id', sa.Integer), source, target)
    for (run_id,) in connection.execute(sa.select(runs.c.id).order_by(runs.c.id)).all():
        value = connection.execute(sa.select(source).where(runs.c.id == run_id)).scalar_one()
        connection.execute(runs.update().where(runs.c.id == run_id).values({target.name: convert(value)}))


def _as_dict(value):
    # SQLite hands back the JSON column's text; psycopg parses a json column itself.
    return json.loads(value) if isinstance(value, (str, bytes)) else value


def upgrade() -> None:
    from agent.reports.json_report import gzip_report

    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('report_gz', sa.LargeBinary(), nullable=True))
    _convert_each_run(sa.column('report', sa.Text), sa.column('report_gz', sa.LargeBinary),
                      lambda value: gzip_report(_as_dict(value) or {}))
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.alter_column('report_gz', existing_type=sa.LargeBinary(), nullable=False)
        batch_op.drop_column('report')


def downgrade() -> None:
    from agent.reports.json_report import report_from_gzip

    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('report', sa.JSON(), nullable=True))
    _convert_each_run(sa.column('report_gz', sa.LargeBinary), sa.column('report', sa.JSON),
                      report_from_gzip)
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.alter_column('report', existing_type=sa.JSON(), nullable=False)
        batch_op.drop_column('report_gz')

"""The state database: principals, memberships, syncs, runs (SQLAlchemy + Alembic)."""

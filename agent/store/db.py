"""Opening the state database: engine, automatic migrations, sessions."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import structlog
from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from agent.errors import StoreError

MIGRATIONS = Path(__file__).parent / "migrations"
log = structlog.get_logger("agent.store")


# The newest migration's revision (tests/test_store.py checks it against the migrations): a store
# already there is opened without importing Alembic, which every start would otherwise pay for
# (~7 MB and ~80 ms: its DDL modules for every database and Mako).
HEAD_REVISION = "0007"


def alembic_config():
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


class Store:
    """The state database.  ``Store(url)`` connects and brings the schema to the newest version."""

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = make_url(url)
        self.engine = _create_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        if migrate:
            self.migrate()

    def migrate(self) -> None:
        try:
            with self.engine.connect() as conn:
                at_head = _at_head(conn)
                conn.rollback()
                if at_head:
                    return
                from alembic import command
                from alembic.runtime.migration import MigrationContext
                from alembic.script import ScriptDirectory

                cfg = alembic_config()
                current = MigrationContext.configure(conn).get_current_revision()
                head = ScriptDirectory.from_config(cfg).get_current_head()
                conn.rollback()
                if current == head:
                    return
                sqlite = conn.dialect.name == "sqlite"
                if sqlite:
                    # A batch migration rebuilds a table (create, copy, drop, rename); with foreign
                    # keys enforced, dropping the old table would cascade-delete the rows that refer
                    # to it (run_findings when runs is rebuilt).  The pragma only takes effect
                    # outside a transaction.
                    _pragma(conn, "foreign_keys=OFF")
                    # The driver opens transactions only before data changes, so DDL would commit
                    # one statement at a time and a migration failing half way (a full disk while
                    # 0007 converts the reports) would leave a schema no start could migrate.  With
                    # its implicit transactions off, the BEGIN below covers the whole migration.
                    driver = conn.connection.dbapi_connection
                    driver.isolation_level = None
                try:
                    with conn.begin():
                        if sqlite:
                            conn.exec_driver_sql("BEGIN")
                        cfg.attributes["connection"] = conn
                        command.upgrade(cfg, "head")
                        if sqlite and conn.exec_driver_sql("PRAGMA foreign_key_check").first() is not None:
                            raise StoreError(f"migrating {self.safe_url} left rows that refer to missing rows",
                                             hint="restore the database from its backup and report this as a bug")
                finally:
                    if sqlite:
                        driver.isolation_level = ""  # the driver's default again, for the pool
                        _pragma(conn, "foreign_keys=ON")
                log.info("store.migrated", from_revision=current, to_revision=head)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot prepare the database {self.safe_url}: {_reason(exc)}") from None

    @property
    def safe_url(self) -> str:
        return self.url.render_as_string(hide_password=True)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back on any error."""
        session = self._sessions()
        try:
            with session.begin():
                yield session
        except SQLAlchemyError as exc:
            hint = None
            if getattr(exc, "connection_invalidated", False):
                # The server went away mid-transaction (restarted, failed over, connection killed).
                hint = ("the connection to the database was lost in the middle of a transaction; the database "
                        "rolled it back, so none of it was kept: run again once the database is up (the "
                        "service retries by itself)")
            raise StoreError(f"database error on {self.safe_url}: {_reason(exc)}", hint=hint) from None
        finally:
            session.close()

    def close(self) -> None:
        self.engine.dispose()


def _at_head(conn) -> bool:
    """The store's schema is HEAD_REVISION's (anything else, a branch or no version at all, is
    for Alembic to read and migrate)."""
    if not inspect(conn).has_table("alembic_version"):
        return False
    return [row[0] for row in conn.exec_driver_sql("SELECT version_num FROM alembic_version")] == [HEAD_REVISION]


def _pragma(conn, setting: str) -> None:
    conn.exec_driver_sql(f"PRAGMA {setting}")
    conn.commit()  # ends SQLAlchemy's transaction; pysqlite sent no BEGIN for a pragma


def _json_text(value) -> str:
    """JSON columns (stored reports: ~90 MB for 100,000 users) written by orjson, ~7x faster."""
    return orjson.dumps(value).decode()


def _create_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            _prepare_sqlite_file(Path(database))
        engine = create_engine(url, connect_args={"timeout": 30}, json_serializer=_json_text)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # pragma: no cover - trivial
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            # Write-ahead log: readers (`report`, `status`, an admin's sqlite3 shell) go on reading
            # the last committed state while a sync writes, instead of waiting out its whole
            # transaction (a complete read of 100,000 entries is written as it streams: ~15 s).
            # Persistent in the file; the -wal and -shm files get the database file's permissions.
            # The log is cut back to 64 MB after each checkpoint (a first sync writes ~100 MB).
            try:
                cursor.execute("PRAGMA journal_mode=WAL")
            except sqlite3.OperationalError:
                pass  # a read-only file (a copy, a read-only mount): read it in the mode it has
            cursor.execute(f"PRAGMA journal_size_limit={64 * 1024 * 1024}")
            cursor.close()

        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        # Plain postgresql:// means psycopg2 to SQLAlchemy; we ship psycopg 3.
        parsed = parsed.set(drivername="postgresql+psycopg")
    try:
        return create_engine(parsed, pool_pre_ping=True, json_serializer=_json_text)
    except (SQLAlchemyError, ImportError) as exc:
        raise StoreError(f"cannot use database {parsed.render_as_string(hide_password=True)}: {exc}") from None


def _prepare_sqlite_file(path: Path) -> None:
    """The state holds names of every employee: create it private (dir 0700, file 0600)."""
    try:
        if not path.parent.exists():
            path.parent.mkdir(parents=True, mode=0o700)
        if not path.exists():
            fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
    except OSError as exc:
        raise StoreError(f"cannot create the database file {path}: {exc.strerror}") from None


def _reason(exc: SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    return str(orig or exc).strip().splitlines()[0]

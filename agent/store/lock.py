"""One agent per store at a time.

Two agents syncing and reconciling the same store would interleave runs and make drift
meaningless, so a cycle holds an exclusive lock on its store:

* SQLite: an advisory file lock (flock on POSIX, msvcrt on Windows) on ``<database>.lock``;
* PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock``) on a key derived from the
  database name, held on a dedicated connection for the cycle.

Several agents (one per forest) can share one PostgreSQL server by each using its own database.
The lock is never waited for: a second agent says who holds it and exits (exit code 4).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from agent.errors import StoreError
from agent.store.db import Store

log = structlog.get_logger("agent.store.lock")


def _advisory_key(store: Store) -> int:
    digest = hashlib.sha256(f"cal-agent:{store.url.database}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def store_lock(store: Store) -> Iterator[None]:
    if store.url.get_backend_name() == "sqlite":
        database = store.url.database
        if not database or database == ":memory:":
            yield
            return
        with _file_lock(Path(database + ".lock")):
            yield
        return
    if store.url.get_backend_name() == "postgresql":
        key = _advisory_key(store)
        with store.engine.connect() as conn:
            got = conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar()
            if not got:
                holder = conn.execute(text(
                    "SELECT a.pid, a.client_addr, a.application_name FROM pg_locks l "
                    "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
                    "AND l.objid::bigint = (:key & 4294967295) AND l.granted LIMIT 1"), {"key": key}).first()
                who = f" (PostgreSQL backend pid {holder.pid}, client {holder.client_addr})" if holder else ""
                raise StoreError(f"another cal-agent is working on {store.safe_url}{who}",
                                 hint="only one agent may sync and reconcile a store at a time; give each agent "
                                 "its own database")
            conn.commit()
            try:
                yield
            finally:
                try:
                    conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                    conn.commit()
                except SQLAlchemyError as exc:
                    # The lock's connection broke (PostgreSQL restarted or ended it during the cycle):
                    # the server released the session's lock with it.  Not an error of its own, and it
                    # must not hide the cycle's: the connection is dropped instead of going back to the pool.
                    conn.invalidate()
                    log.warning("store.lock_connection_lost", database=store.safe_url,
                                error=str(getattr(exc, "orig", None) or exc).strip().splitlines()[0])
        return
    yield


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            _lock(fd)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() if hasattr(os, "pread") else ""
            raise StoreError(f"another cal-agent is working on {path.with_suffix('')}"
                             + (f" (pid {holder})" if holder else ""),
                             hint="only one agent may sync and reconcile a store at a time") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            _unlock(fd)
    finally:
        os.close(fd)


if os.name == "nt":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _lock(fd: int) -> None:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)

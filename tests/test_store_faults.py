"""Store and disk faults: PostgreSQL down or restarted (between cycles, or in the middle of a
cycle's transaction), SQLite locked by another process, a full disk under the reports.  A clear
error, nothing corrupted, and the next cycle recovers (issue 7)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import uuid

import psycopg
import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from tests.test_register import Site


@pytest.fixture
def pg_site(tmp_path, postgres_server):
    url = postgres_server.create_database(f"faults_{uuid.uuid4().hex[:12]}")
    site = Site(tmp_path, url)
    site.run("run", "--once")
    return site


def test_postgresql_down_is_a_clear_error_and_the_next_cycle_recovers(pg_site, postgres_server):
    before = json.loads(pg_site.run("report").stdout)
    postgres_server.stop()
    try:
        down = pg_site.run("run", "--once", expect=4)
        assert "database" in down.stderr.lower() and "Traceback" not in down.stderr
    finally:
        assert postgres_server._pg_ctl_start(), postgres_server.log_tail()
        postgres_server._started = True
    pg_site.run("run", "--once")
    after = json.loads(pg_site.run("report").stdout)
    assert after["run"]["id"] == before["run"]["id"] + 1  # the failed cycle left no half run
    assert after["findings"] == before["findings"] and after["drift"]["new"] == []


def test_postgresql_restarted_between_cycles_is_not_noticed(pg_site, postgres_server):
    postgres_server.restart()  # the agent's pooled connections are now dead
    pg_site.run("run", "--once")
    assert json.loads(pg_site.run("report").stdout)["run"]["id"] == 2


@contextlib.contextmanager
def postgresql_restarted_before(server, statement: str):
    """While active: just before the agent (in this process) sends the first SQL statement that
    starts with `statement`, PostgreSQL is restarted (`pg_ctl restart -m fast`, which ends every
    session and rolls back its open transaction); then the agent carries on with that statement.
    Yields a list that gets the state of the agent's backend (pg_stat_activity) when the restart began."""
    seen: list[str] = []

    def restart(conn, cursor, sql, parameters, context, executemany) -> None:
        if seen or not sql.startswith(statement):
            return
        backend = conn.connection.dbapi_connection.info.backend_pid
        with psycopg.connect(host=server.host, port=server.port, user=server.user, dbname="postgres",
                             autocommit=True) as admin:
            seen.append(admin.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", (backend,)).fetchone()[0])
        server.restart()

    event.listen(Engine, "before_cursor_execute", restart)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", restart)


@pytest.mark.parametrize("statement", [
    pytest.param("UPDATE principals", id="sync"),  # the sync's transaction: principals read, being updated
    pytest.param("INSERT INTO run_findings", id="reconcile"),  # the run written, its finding keys next, then its report
])
def test_postgresql_restarted_mid_transaction_is_a_clear_error_and_the_next_cycle_recovers(pg_site, postgres_server,
                                                                                           statement):
    before = json.loads(pg_site.run("report").stdout)
    with postgresql_restarted_before(postgres_server, statement) as restarted_in:
        failed = pg_site.run("run", "--once", expect=4)
    assert restarted_in == ["idle in transaction"]  # the restart did land inside the cycle's open transaction
    # psycopg reports the fast shutdown either way, depending on whether the backend's FATAL
    # message arrived before the socket closed.
    assert "database error on" in failed.stderr
    assert ("server closed the connection unexpectedly" in failed.stderr
            or "terminating connection due to administrator command" in failed.stderr)
    assert "in the middle of a transaction; the database rolled it back" in failed.stderr
    assert "run again once the database is up" in failed.stderr and "Traceback" not in failed.stderr
    # No half-written run: the failed cycle left no run behind, the latest report is the one before.
    assert [r["run"] for r in json.loads(pg_site.run("runs", "--format", "json").stdout)] == [before["run"]["id"]]
    assert json.loads(pg_site.run("report").stdout) == before
    pg_site.run("run", "--once")
    after = json.loads(pg_site.run("report").stdout)
    assert after["run"]["previous_id"] == before["run"]["id"]
    assert after["directories"][0]["last_sync"]["status"] == "ok"
    assert after["findings"] == before["findings"] and after["products"] == before["products"]
    assert after["drift"] == {"new": [], "resolved": [], "principals": []}


def test_sqlite_locked_by_another_process_is_a_clear_error_then_recovers(tmp_path):
    site = Site(tmp_path, f"sqlite:///{tmp_path}/state.db")
    site.run("run", "--once")
    other = sqlite3.connect(tmp_path / "state.db", timeout=0)
    other.execute("BEGIN EXCLUSIVE")  # e.g. a backup tool or an admin's sqlite3 shell
    try:
        locked = site.run("sync", expect=4)
        assert "database is locked" in locked.stderr and "Traceback" not in locked.stderr
    finally:
        other.rollback()
        other.close()
    site.run("run", "--once")


@pytest.fixture
def tiny_disk(tmp_path):
    """An 8 KiB tmpfs: the reports do not fit."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k,mode=0700", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs for the disk-full test (needs root): {done.stderr}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_under_the_reports_is_a_clear_error_and_keeps_the_last_report(tmp_path, tiny_disk):
    import yaml

    site = Site(tmp_path, f"sqlite:///{tmp_path}/state.db")
    config = yaml.safe_load(site.config.read_text())
    config["reports"]["directory"] = str(tiny_disk)
    site.config.write_text(yaml.safe_dump(config))
    (tiny_disk / "latest.json").write_text('{"previous": "report"}')
    full = site.run("run", "--once", expect=4)
    assert "cannot write reports" in full.stderr and "No space left on device" in full.stderr
    assert (tiny_disk / "latest.json").read_text() == '{"previous": "report"}'  # atomic: never half written
    assert not [p for p in tiny_disk.iterdir() if p.name.endswith(".tmp")]  # no leftovers
    config["reports"]["directory"] = str(tmp_path / "reports")
    site.config.write_text(yaml.safe_dump(config))
    site.run("run", "--once")
    assert json.loads((tmp_path / "reports" / "latest.json").read_text())["run"]["id"] == 2

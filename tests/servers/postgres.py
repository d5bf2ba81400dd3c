"""A throwaway PostgreSQL cluster for integration tests.

`PostgresServer.start()` runs initdb in a temp directory and starts the
server with pg_ctl on a free port, listening on 127.0.0.1 only (plus a Unix
socket inside the temp dir), with trust authentication for the `postgres`
role.  PostgreSQL refuses to run as root, so when the tests run as root the
cluster belongs to the `postgres` system user and every server command is run
through `runuser -u postgres`.

Durability is switched off (fsync, synchronous_commit, full_page_writes):
the data is thrown away, and it makes DDL-heavy tests much faster.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .common import (
    ServerStartError,
    ServerUnavailable,
    find_program,
    free_port,
    keep_workdirs,
    tail,
)

PREFERRED_MAJOR = 15
_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def find_bindir() -> Path | None:
    """The PostgreSQL server binaries: $CAL_AGENT_PG_BINDIR, else Debian's
    /usr/lib/postgresql/15/bin, else the newest other major installed there."""
    override = os.environ.get("CAL_AGENT_PG_BINDIR")
    if override:
        return Path(override) if (Path(override) / "initdb").exists() else None
    root = Path("/usr/lib/postgresql")
    preferred = root / str(PREFERRED_MAJOR) / "bin"
    if (preferred / "initdb").exists():
        return preferred
    majors = sorted(
        (p for p in root.glob("*/bin") if (p / "initdb").exists() and p.parent.name.isdigit()),
        key=lambda p: int(p.parent.name),
        reverse=True,
    )
    return majors[0] if majors else None


class PostgresServer:
    """A running throwaway PostgreSQL cluster (trust auth on 127.0.0.1)."""

    host = "127.0.0.1"
    user = "postgres"

    def __init__(self, workdir: Path | str | None = None, *, start_timeout: float = 60.0) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="cal-agent-pg-"))
        self.data_dir = self.workdir / "data"
        self.socket_dir = self.workdir / "socket"
        self.log_file = self.workdir / "postgres.log"
        self.start_timeout = start_timeout
        self.port: int | None = None
        self.bindir: Path | None = None
        self.startup_seconds: float | None = None
        self._run_as: str | None = None  # system user that owns the cluster, if not us
        self._started = False

    # ------------------------------------------------------------------ life cycle

    @staticmethod
    def missing_software() -> str | None:
        """A reason string if PostgreSQL cannot run here, else None."""
        if find_bindir() is None:
            return (
                "PostgreSQL server binaries not found (looked in "
                f"/usr/lib/postgresql/{PREFERRED_MAJOR}/bin); install the Debian package postgresql"
            )
        if os.geteuid() == 0:
            if not find_program("runuser"):
                return "running as root but `runuser` is missing (needed to run PostgreSQL as postgres)"
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                return "running as root but there is no `postgres` system user to own the cluster"
        try:
            import psycopg  # noqa: F401
        except ImportError:
            return "the Python package 'psycopg' (psycopg 3) is not installed"
        return None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    def _command(self, *args: str) -> list[str]:
        if self._run_as:
            return [find_program("runuser") or "runuser", "-u", self._run_as, "--", *args]
        return list(args)

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self._command(*args),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.workdir,  # runuser keeps the cwd; make sure postgres can enter it
        )

    def start(self) -> PostgresServer:
        reason = self.missing_software()
        if reason:
            raise ServerUnavailable(reason)
        began = time.monotonic()
        self.bindir = find_bindir()
        assert self.bindir is not None
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            self._run_as = "postgres"
            entry = pwd.getpwnam("postgres")
            for path in (self.workdir, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self.workdir.chmod(0o700)
        result = self._run(
            str(self.bindir / "initdb"),
            "-D", str(self.data_dir),
            "--auth=trust",
            "-U", self.user,
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",  # nothing here needs to survive a power cut
        )
        if result.returncode != 0:
            raise ServerStartError(f"initdb failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}")
        # free_port() can race with another process grabbing the port before
        # postgres binds it; a couple of retries makes that harmless.
        for attempt in range(3):
            self.port = free_port(self.host)
            if self._pg_ctl_start():
                break
            if "could not bind" not in tail(self.log_file, 20) or attempt == 2:
                raise ServerStartError(
                    f"PostgreSQL did not start on {self.host}:{self.port}; "
                    f"log {self.log_file} tail:\n{tail(self.log_file)}"
                )
        self._started = True
        self.startup_seconds = time.monotonic() - began
        return self

    def _server_options(self) -> str:
        return " ".join(
            [
                f"-p {self.port}",
                f"-k {self.socket_dir}",
                f"-c listen_addresses={self.host}",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c max_connections=200",  # many per-test engines may be open at once
            ]
        )

    def _pg_ctl(self, action: str, *extra: str) -> subprocess.CompletedProcess[str]:
        assert self.bindir is not None
        return self._run(
            str(self.bindir / "pg_ctl"),
            action,
            "-D", str(self.data_dir),
            "-l", str(self.log_file),
            *extra,
            timeout=self.start_timeout + 30,
        )

    def _pg_ctl_start(self) -> bool:
        result = self._pg_ctl("start", "-w", "-t", str(int(self.start_timeout)), "-o", self._server_options())
        return result.returncode == 0

    def stop(self) -> None:
        """Stop the server (fast shutdown: running sessions are disconnected)."""
        if not self._started:
            return
        result = self._pg_ctl("stop", "-m", "fast", "-w")
        if result.returncode != 0 and self._postmaster_pid():
            # Last resort: the postmaster is still there and not stopping.
            self._pg_ctl("stop", "-m", "immediate", "-w")
        self._started = False

    def restart(self) -> None:
        """Restart on the same port; open connections are broken, data is kept."""
        if not self._started:
            raise ServerStartError("PostgreSQL is not running; call start() first")
        result = self._pg_ctl(
            "restart", "-m", "fast", "-w", "-t", str(int(self.start_timeout)), "-o", self._server_options()
        )
        if result.returncode != 0:
            raise ServerStartError(
                f"pg_ctl restart failed ({result.stderr.strip()}); log tail:\n{tail(self.log_file)}"
            )

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    @property
    def running(self) -> bool:
        if not self._started or self.bindir is None:
            return False
        return self._pg_ctl("status").returncode == 0

    def cleanup(self) -> None:
        """Stop the server and remove its temp directory (unless asked to keep it)."""
        self.stop()
        if self._own_workdir and not keep_workdirs():
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = 60) -> str:
        return tail(self.log_file, lines)

    # ------------------------------------------------------------------ databases

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL (psycopg 3 driver) for a database of this cluster."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create an empty database and return its SQLAlchemy URL."""
        import psycopg
        from psycopg import sql

        if not _DB_NAME.match(name):
            raise ValueError(f"database name must match {_DB_NAME.pattern}: {name!r}")
        # CREATE DATABASE cannot run inside a transaction block.
        with psycopg.connect(
            host=self.host, port=self.port, user=self.user, dbname="postgres", autocommit=True, connect_timeout=10
        ) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

"""Pieces shared by the throwaway test servers (Samba AD DC, PostgreSQL)."""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import socket
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path


class ServerUnavailable(RuntimeError):
    """The server cannot run here because software (or privilege) is missing.

    Fixtures turn this into a skip locally and into a failure when CI=true.
    """


class ServerStartError(RuntimeError):
    """The software is there but the server did not come up (or misbehaved)."""


def random_password(length: int = 24) -> str:
    """A random password that satisfies AD complexity rules.

    It always contains upper case, lower case, a digit and a symbol, and is
    long enough for any default policy.  Characters that need quoting in a
    shell or an LDAP filter are avoided so the value is easy to paste when
    debugging.
    """
    alphabet = string.ascii_letters + string.digits
    body = "".join(secrets.choice(alphabet) for _ in range(max(length - 4, 8)))
    return body + secrets.choice(string.ascii_uppercase) + secrets.choice(
        string.ascii_lowercase
    ) + secrets.choice(string.digits) + secrets.choice("-_.!")


def find_program(name: str, extra_dirs: tuple[str, ...] = ("/usr/sbin", "/sbin")) -> str | None:
    """Locate an executable on PATH or in the sbin directories.

    Non-root shells often lack /usr/sbin on PATH, where Debian puts `samba`.
    """
    found = shutil.which(name)
    if found:
        return found
    for directory in extra_dirs:
        candidate = Path(directory, name)
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def port_is_listening(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def describe_listener(port: int) -> str:
    """Best-effort description of which process listens on a TCP port."""
    ss = find_program("ss")
    if not ss:
        return "unknown process (the `ss` tool is not installed)"
    try:
        out = subprocess.run(
            [ss, "-Hltnp", f"sport = :{port}"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown process"
    return out or "unknown process"


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a currently unused TCP port on host."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def tail(path: Path, lines: int = 60) -> str:
    """The last lines of a log file, or a note that it does not exist."""
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return f"<{path} does not exist>"
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def keep_workdirs() -> bool:
    """Set CAL_AGENT_KEEP_TEST_SERVERS=1 to keep server temp dirs for debugging."""
    return os.environ.get("CAL_AGENT_KEEP_TEST_SERVERS", "") not in ("", "0", "false")


class MachineLock:
    """An exclusive lock shared by every process on this machine (flock on a
    file in /tmp).  The kernel drops it when the holder exits, however it
    exits, so a crashed test run never leaves it stuck.
    """

    def __init__(self, name: str) -> None:
        self.path = Path(tempfile.gettempdir()) / f"{name}.lock"
        self._handle = None

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def acquire(self, timeout: float) -> bool:
        """Wait up to timeout seconds for the lock; True once held."""
        handle = open(self.path, "a+")  # noqa: SIM115 - kept open while held
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.close()
                    return False
                time.sleep(0.5)
        handle.truncate(0)
        handle.write(f"pid {os.getpid()}: {' '.join(sys.argv)[:200]}\n")
        handle.flush()
        self._handle = handle
        return True

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def unbind_quietly(conn) -> None:
    """Close an admin LDAP connection of a test server that may already be gone."""
    if conn is None:
        return
    try:
        conn.unbind()
    except Exception:  # noqa: BLE001 - the server may already be gone
        pass


def end_process(process, timeout: float, *, stdin_first: bool = False) -> None:
    """Stop a server process: EOF on stdin (for servers that exit on it), SIGTERM, then SIGKILL."""
    if process is None or process.poll() is not None:
        return
    if stdin_first and process.stdin:
        try:
            process.stdin.close()
            process.wait(timeout=timeout / 2)
            return
        except subprocess.TimeoutExpired:
            pass
    process.terminate()
    try:
        process.wait(timeout=timeout / 2 if stdin_first else timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)

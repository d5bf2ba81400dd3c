"""The systemd notify protocol (sd_notify(3)), spoken directly: a datagram to $NOTIFY_SOCKET.

No dependency: the protocol is one sendto().  Outside systemd (no NOTIFY_SOCKET) every call is a
no-op, so the daemon runs the same under a terminal, Windows or another supervisor.
"""

from __future__ import annotations

import os
import socket

import structlog

log = structlog.get_logger("agent.service")


class SystemdNotifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or ""
        if address.startswith("@"):  # abstract namespace
            address = "\0" + address[1:]
        self.address = address or None
        self.watchdog_seconds: float | None = None
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        if usec and usec.isdigit() and (not pid or pid == str(os.getpid())):
            self.watchdog_seconds = int(usec) / 1_000_000

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, **fields: str | int) -> bool:
        """notify(READY=1, STATUS="...") -> True when the message was sent."""
        if not self.address:
            return False
        message = "\n".join(f"{key}={str(value).replace(chr(10), ' ')}" for key, value in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message.encode(), self.address)
            return True
        except OSError as exc:
            log.warning("systemd.notify_failed", error=str(exc))
            return False

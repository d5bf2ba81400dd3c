"""Logging, configured once: human-readable on a terminal, JSON lines otherwise (service mode).

Logs go to stderr; command output (tables, reports) goes to stdout so both can be piped apart.
Secrets never reach a log: they are pydantic SecretStr values and no code logs them; the LDAP
search log line is a reproducible ``ldapsearch`` command that prompts for the password (-W).

The Windows service has no stderr: ``log_file=`` sends JSON lines to a rotating file instead
(``%ProgramData%\\cal-agent\\logs\\cal-agent.log``, 10 MB x 5; docs/windows.md).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import threading
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

LOG_FILE_MAX_BYTES = 10 * 1024 * 1024  # log_file= rotates at this size ...
LOG_FILE_BACKUPS = 5  # ... and keeps this many old files (cal-agent.log.1 ... .5)


def configure_logging(level: str = "info", fmt: str = "auto", stream=None, *, log_file: Path | None = None,
                      extra_processors: Sequence = ()) -> None:
    """``log_file``: JSON lines to that rotating file instead of ``stream`` (the Windows service).
    ``extra_processors``: extra structlog processors run before rendering (the Windows Event Log)."""
    if log_file is not None:
        stream, fmt = _RotatingStream(Path(log_file)), "json"
        # The stdlib loggers (ldap3, SQLAlchemy) go to the same file, as JSON lines too.
        handler = logging.StreamHandler(stream)
        handler.setFormatter(_JsonRecordFormatter())
        logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    stream = stream or sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and hasattr(stream, "isatty") and stream.isatty())
    processors: list = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        *extra_processors,
    ]
    if use_console:
        processors.append(structlog.dev.ConsoleRenderer(colors=stream.isatty()))
    else:
        processors += [structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer(sort_keys=False)]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    # ldap3 and SQLAlchemy use stdlib logging; keep them quiet unless debugging.
    logging.basicConfig(level=logging.WARNING, stream=stream)


class _RotatingStream:
    """A text stream whose whole lines go to a RotatingFileHandler (rotation needs a handler, and
    structlog's PrintLogger and logging.StreamHandler need a stream)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=LOG_FILE_MAX_BYTES, backupCount=LOG_FILE_BACKUPS, encoding="utf-8", delay=True)
        self.handler.setFormatter(logging.Formatter("%(message)s"))
        self._pending = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            *lines, self._pending = (self._pending + text).split("\n")
            for line in lines:
                if line:
                    self.handler.handle(logging.makeLogRecord({"msg": line, "levelno": logging.INFO,
                                                               "levelname": "INFO"}))
        return len(text)

    def flush(self) -> None:
        self.handler.flush()

    def isatty(self) -> bool:
        return False


class _JsonRecordFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event = {"event": record.getMessage(), "level": record.levelname.lower(), "logger": record.name,
                 "timestamp": datetime.fromtimestamp(record.created, timezone.utc).isoformat().replace("+00:00", "Z")}
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return json.dumps(event)

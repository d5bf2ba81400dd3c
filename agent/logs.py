"""Logging, configured once: human-readable on a terminal, JSON lines otherwise (service mode).

Logs go to stderr; command output (tables, reports) goes to stdout so both can be piped apart.
Secrets never reach a log: they are pydantic SecretStr values and no code logs them; the LDAP
search log line is a reproducible ``ldapsearch`` command that prompts for the password (-W).
"""

from __future__ import annotations

import logging
import sys

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(level: str = "info", fmt: str = "auto", stream=None) -> None:
    stream = stream or sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and hasattr(stream, "isatty") and stream.isatty())
    processors: list = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
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

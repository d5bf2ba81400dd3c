"""Where cal-agent keeps its files, per operating system.

* Linux (and any POSIX system): ``/etc/cal-agent/config.yaml``; state and reports under
  ``/var/lib/cal-agent`` (the systemd unit's StateDirectory); logs go to the journal.
* Windows: everything under ``%ProgramData%\\cal-agent`` (a folder only SYSTEM and Administrators
  can open, see packaging/windows/install.ps1): ``config.yaml``, ``state.db``, ``reports\\`` and
  ``logs\\cal-agent.log``.

``$CAL_AGENT_CONFIG`` (or ``--config``) overrides the configuration file on every system.  Nothing
here imports the rest of the agent, so ``agent.config`` can use it for its defaults.
"""

from __future__ import annotations

import ntpath
import os
import posixpath
from pathlib import Path

APP = "cal-agent"
CONFIG_ENV = "CAL_AGENT_CONFIG"

LINUX_CONFIG_PATH = "/etc/cal-agent/config.yaml"
LINUX_DATABASE_URL = "sqlite:////var/lib/cal-agent/state.db"
LINUX_REPORTS_DIR = "/var/lib/cal-agent/reports"

_WINDOWS_PROGRAM_DATA = "C:\\ProgramData"

# The concrete class of this system (PosixPath or WindowsPath), fixed at import: ``Path(...)`` picks
# its class from ``os.name`` at each call, which a test that pretends to be Windows changes.
_SystemPath = type(Path())


def is_windows() -> bool:
    return os.name == "nt"


def _join(*parts: str) -> str:
    return (ntpath if is_windows() else posixpath).join(*parts)


def program_data() -> str:
    """%ProgramData% (normally C:\\ProgramData)."""
    return os.environ.get("ProgramData") or os.environ.get("PROGRAMDATA") or _WINDOWS_PROGRAM_DATA


def windows_data_dir() -> Path:
    """%ProgramData%\\cal-agent: configuration, state database, reports and logs on Windows."""
    return _SystemPath(_join(program_data(), APP))


def windows_config_path() -> Path:
    return _SystemPath(_join(program_data(), APP, "config.yaml"))


def windows_database_url() -> str:
    # SQLAlchemy takes forward slashes on Windows too: sqlite:///C:/ProgramData/cal-agent/state.db
    return "sqlite:///" + _join(program_data(), APP, "state.db").replace("\\", "/")


def windows_reports_dir() -> Path:
    return _SystemPath(_join(program_data(), APP, "reports"))


def windows_log_dir() -> Path:
    return _SystemPath(_join(program_data(), APP, "logs"))


def windows_log_file() -> Path:
    """The Windows service's JSON log (rotated: cal-agent.log.1 ... .5)."""
    return _SystemPath(_join(program_data(), APP, "logs", "cal-agent.log"))


def platform_config_path() -> Path:
    """The default configuration file of this system, ignoring $CAL_AGENT_CONFIG."""
    return windows_config_path() if is_windows() else _SystemPath(LINUX_CONFIG_PATH)


def default_config_path() -> Path:
    """$CAL_AGENT_CONFIG when set, else this system's default configuration file."""
    value = os.environ.get(CONFIG_ENV)
    return _SystemPath(value) if value else platform_config_path()


def default_database_url() -> str:
    return windows_database_url() if is_windows() else LINUX_DATABASE_URL


def default_reports_dir() -> str:
    return str(windows_reports_dir()) if is_windows() else LINUX_REPORTS_DIR


__all__ = [
    "APP", "default_config_path", "default_database_url", "default_reports_dir", "is_windows",
    "platform_config_path", "program_data", "windows_config_path", "windows_data_dir", "windows_database_url",
    "windows_log_dir", "windows_log_file", "windows_reports_dir",
]

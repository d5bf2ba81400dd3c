"""The one user-facing error type, and the exit codes admins script against.

Every expected failure (bad config, unreachable DC, database down, not compliant) is a
``CalAgentError`` subclass carrying its exit code; ``agent.cli`` turns it into a message on stderr
and that exit code, never a traceback.  The codes are a public contract: extend, never renumber.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_NOT_COMPLIANT = 1  # `reconcile --check`: the estate is not compliant
EXIT_CONFIG = 2  # bad configuration, inventory or command-line usage; nothing was changed
EXIT_DIRECTORY = 3  # a directory could not be read completely; nothing was changed
EXIT_STORE = 4  # the state database failed; nothing was changed
EXIT_NO_DATA = 5  # asked for a report or reconcile before any successful sync/run
EXIT_ALERT = 6  # `alert --test` / `alert --flush`: a message could not be delivered (queued ones stay queued)


class CalAgentError(Exception):
    """An expected failure with a message written for the admin who must fix it."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class ConfigError(CalAgentError):
    """One or more configuration problems, each named by its key path."""

    exit_code = EXIT_CONFIG
    what = "configuration"

    def __init__(self, problems: list[str] | str, *, source: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        head = f"invalid {self.what}{f' in {source}' if source else ''}"
        if len(self.problems) == 1:
            message = f"{head}: {self.problems[0]}"
        else:
            message = f"{head} ({len(self.problems)} problems):\n" + "\n".join(
                f"  - {p}" for p in self.problems
            )
        super().__init__(message)


class InventoryError(ConfigError):
    """The inventory file is malformed; each problem names its entry (``purchases[3].quantity``)."""

    what = "inventory"


class RegisterError(CalAgentError):
    """A register command cannot be carried out as asked (unknown purchase, seat not held...);
    nothing was changed."""

    exit_code = EXIT_CONFIG


class DirectoryError(CalAgentError):
    """A directory read failed or was incomplete; the store was left unchanged."""

    exit_code = EXIT_DIRECTORY


class StoreError(CalAgentError):
    exit_code = EXIT_STORE


class NoDataError(CalAgentError):
    exit_code = EXIT_NO_DATA


class AlertError(CalAgentError):
    """An alert channel (SMTP server, webhook) refused or could not be reached.  The message names
    the server's answer, never a password or the webhook URL."""

    exit_code = EXIT_ALERT

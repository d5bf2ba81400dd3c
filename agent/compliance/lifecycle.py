"""When is a principal active?  The lifecycle rule, pure and in one place.

Precedence: deleted > disabled > expired > inactive > active.
- disabled: userAccountControl bit 0x2 (ACCOUNTDISABLE);
- expired: accountExpires set (not 0 / never) and in the past;
- inactive: the newest of lastLogonTimestamp, pwdLastSet and whenCreated is older than
  ``inactive_after_days``.  lastLogonTimestamp lags real logons by up to ~14 days, so windows much
  shorter than that would flag people who work every day; config enforces nothing below 1 day
  but docs advise >= 30.
Groups are never inactive or expired: only deletion ends them.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from agent.directory.records import DirectoryEntry, EntryKind
from agent.store.models import PrincipalState

DEPARTED_STATES = frozenset(
    {PrincipalState.DISABLED, PrincipalState.EXPIRED, PrincipalState.INACTIVE, PrincipalState.DELETED,
     PrincipalState.MISSING}
)


def last_activity(entry: DirectoryEntry) -> datetime | None:
    moments = [m for m in (entry.last_logon, entry.pwd_last_set, entry.when_created) if m is not None]
    return max(moments) if moments else None


def principal_state(entry: DirectoryEntry, *, at: datetime, inactive_after_days: int) -> tuple[PrincipalState, datetime | None]:
    """The state of ``entry`` judged at ``at``, and when that state began if the data says so
    (None: the caller uses the time it first observed the state)."""
    if entry.deleted:
        return PrincipalState.DELETED, None
    if entry.kind is EntryKind.GROUP:
        return PrincipalState.ACTIVE, None
    if entry.disabled:
        return PrincipalState.DISABLED, None
    if entry.account_expires is not None and entry.account_expires <= at:
        return PrincipalState.EXPIRED, entry.account_expires
    newest = last_activity(entry)
    window = timedelta(days=inactive_after_days)
    if newest is not None and newest + window < at:
        return PrincipalState.INACTIVE, newest + window
    return PrincipalState.ACTIVE, None

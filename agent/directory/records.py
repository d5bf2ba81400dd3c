"""Plain records produced by every directory reader (AD over LDAP, LDIF exports).

Readers decode wire formats (binary GUID/SID, FILETIME, UAC bits) into these records so that the
store and the compliance engine never see LDAP types.  Records are immutable: the same entry read
twice compares equal, which is what makes a no-change sync a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class EntryKind(StrEnum):
    USER = "user"
    GROUP = "group"
    COMPUTER = "computer"


# userAccountControl bits we act on (MS-ADTS 2.2.16).
UAC_ACCOUNTDISABLE = 0x0002
UAC_WORKSTATION_TRUST_ACCOUNT = 0x1000
UAC_SERVER_TRUST_ACCOUNT = 0x2000


@dataclass(frozen=True, slots=True)
class RdsLicense:
    """A per-user RDS CAL an RD licence server recorded on a user object (R27): msTSExpireDate,
    msTSLicenseVersion, msTSManagingLS, or their 2-4 variants for a 2nd-4th CAL."""

    version: str | None  # product version of the CAL ("2012"); None when absent or not understood
    expires: datetime | None  # msTSExpireDate*
    license_server: str | None  # msTSManagingLS*: the licence server's product ID, as written


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    """One user, group or computer as read from a directory.

    ``guid`` (objectGUID as a canonical lower-case UUID string) is the identity key: it survives
    renames and moves, unlike DN or sAMAccountName.
    """

    guid: str
    kind: EntryKind
    dn: str
    name: str  # sAMAccountName; computers without the trailing "$"
    sid: str | None = None
    display_name: str | None = None
    mail: str | None = None
    user_account_control: int | None = None
    account_expires: datetime | None = None  # None = never expires
    last_logon: datetime | None = None  # lastLogonTimestamp (replicated, lags up to ~14 days)
    pwd_last_set: datetime | None = None
    when_created: datetime | None = None
    primary_group_id: int | None = None  # AD: primaryGroupID (a RID); generic LDAP: the user's gidNumber
    gid_number: int | None = None  # generic LDAP groups: a posixGroup's gidNumber (primary group of users)
    members: tuple[str, ...] = ()  # member DNs, groups only
    dns_host_name: str | None = None
    operating_system: str | None = None
    operating_system_version: str | None = None
    rds_licenses: tuple[RdsLicense, ...] = ()  # per-user RDS CALs, users only
    deleted: bool = False  # read from a tombstone (Show Deleted control)
    extra: tuple[tuple[str, str], ...] = field(default=())  # reserved for profile-specific values

    @property
    def disabled(self) -> bool:
        return bool((self.user_account_control or 0) & UAC_ACCOUNTDISABLE)

    @property
    def domain_sid(self) -> str | None:
        """The domain part of the objectSid (everything before the final RID)."""
        if not self.sid or self.sid.count("-") < 4:
            return None
        return self.sid.rsplit("-", 1)[0]


@dataclass(frozen=True, slots=True)
class ReadStats:
    """What a complete read saw; recorded with the sync so an admin can compare runs."""

    users: int = 0
    groups: int = 0
    computers: int = 0
    tombstones: int = 0
    searches: int = 0
    pages: int = 0

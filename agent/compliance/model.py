"""Plain, frozen data the compliance engine works on and returns.  No I/O here."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import InitVar, dataclass, field
from datetime import datetime
from typing import Any

from agent.directory.decode import dn_key

PrincipalKey = tuple[str, str]  # (directory, objectGUID)

ERROR = "error"
WARNING = "warning"

# Finding kinds: a public contract (the JSON report's "kind").  Extend, never rename.
UNLICENSED_USER = "unlicensed_user"
UNLICENSED_DEVICE = "unlicensed_device"
SHORTFALL = "shortfall"
OVER_ASSIGNED = "over_assigned"
STALE_ASSIGNMENT = "stale_assignment"
ORPHAN_ASSIGNMENT = "orphan_assignment"
TYPE_MISMATCH = "type_mismatch"
UNKNOWN_GROUP = "unknown_group"
VERSION_MISMATCH = "version_mismatch"
MISSING_BASE_CAL = "missing_base_cal"
EXPIRING = "expiring"
EXPIRED = "expired"
MISSING_EVIDENCE = "missing_evidence"
PREMATURE_REASSIGNMENT = "premature_reassignment"
OWNER_DEPARTED = "owner_departed"
RDS_OVER_ISSUED = "rds_over_issued"

SEVERITY = {
    UNLICENSED_USER: ERROR,
    UNLICENSED_DEVICE: ERROR,
    SHORTFALL: ERROR,
    OVER_ASSIGNED: ERROR,
    TYPE_MISMATCH: ERROR,
    UNKNOWN_GROUP: ERROR,  # a selector that matches nothing would otherwise look "compliant"
    MISSING_BASE_CAL: ERROR,  # R12-R15: the access is not licensed without the base
    RDS_OVER_ISSUED: ERROR,  # R25: per-user RDS CALs are not enforced, so over-issue is a breach
    STALE_ASSIGNMENT: WARNING,
    ORPHAN_ASSIGNMENT: WARNING,
    VERSION_MISMATCH: WARNING,  # the principal's unlicensed_* finding is the error
    EXPIRING: WARNING,
    EXPIRED: WARNING,  # an expired purchase is no longer owned: shortfall/unlicensed carry the error
    MISSING_EVIDENCE: WARNING,
    PREMATURE_REASSIGNMENT: WARNING,
    OWNER_DEPARTED: WARNING,
}


@dataclass(frozen=True, slots=True)
class RdsPerUserCal:
    """A per-user RDS CAL an RD licence server recorded on the user object (msTSExpireDate,
    msTSLicenseVersion, msTSManagingLS, and their 2-4 variants; R27)."""

    version: str | None  # product version year ("2022"), None when the server wrote no version
    expires: datetime | None
    license_server: str | None = None


@dataclass(frozen=True, slots=True)
class Principal:
    """A principal as the rules see it (read from the store)."""

    directory: str
    guid: str
    kind: str  # user | group | computer
    name: str
    dn: str
    state: str
    display_name: str | None = None
    state_since: datetime | None = None
    rds_cals: tuple[RdsPerUserCal, ...] = ()
    key_of_dn: InitVar[str | None] = None  # decode.dn_key(dn), as the store keeps it; worked out if not given
    # That key, held only when it is not simply dn.lower(): it is for nearly every DN, and a copy
    # each was 11 MB at 100,000 principals.  Read it as ``dn_key``.
    _other_dn_key: str | None = field(init=False, default=None, compare=False, repr=False)
    # (directory, guid), made once: the rules look principals up by it several times each.
    key: PrincipalKey = field(init=False, compare=False, repr=False)

    def __post_init__(self, key_of_dn: str | None) -> None:
        object.__setattr__(self, "key", (self.directory, self.guid))
        known = key_of_dn if key_of_dn is not None else dn_key(self.dn)
        if known != self.dn.lower():
            object.__setattr__(self, "_other_dn_key", known)

    @property
    def dn_key(self) -> str:
        """The DN's comparison key (``decode.dn_key``)."""
        other = self._other_dn_key
        return self.dn.lower() if other is None else other


class MemberPairs(Sequence):
    """(group, member) pairs held as two tuples of keys, a pair made only when read: the pairs of
    123,000 memberships were 8 MB at 100,000 users, the two tuples 2 MB.  Reads as, and equals,
    the tuple of those pairs."""

    __slots__ = ("_groups", "_members")

    def __init__(self, groups: Sequence[PrincipalKey], members: Sequence[PrincipalKey]) -> None:
        if len(groups) != len(members):
            raise ValueError("as many groups as members")
        self._groups, self._members = tuple(groups), tuple(members)

    def __len__(self) -> int:
        return len(self._groups)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return tuple(zip(self._groups[index], self._members[index]))
        return self._groups[index], self._members[index]

    def __iter__(self) -> Iterator[tuple[PrincipalKey, PrincipalKey]]:
        return zip(self._groups, self._members)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (MemberPairs, tuple)):
            return tuple(self) == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"MemberPairs({len(self)} pairs)"


@dataclass(frozen=True)
class DirectoryView:
    """Every known principal and the direct memberships between them."""

    principals: tuple[Principal, ...]
    # (group, member) pairs: a tuple of them, or MemberPairs
    memberships: Sequence[tuple[PrincipalKey, PrincipalKey]] = ()
    directories: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PrincipalRef:
    """A principal as a finding names it when no ``Principal`` was read (a name in the inventory
    that the directory does not have).  Findings about read principals hold the ``Principal``
    itself, which has these same fields."""

    kind: str
    name: str
    directory: str | None
    dn: str | None = None
    display_name: str | None = None
    state: str | None = None
    guid: str | None = None


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str
    message: str
    product: str | None = None
    version: str | None = None
    cal_type: str | None = None
    principal: PrincipalRef | Principal | None = None
    purchase: str | None = None
    reason: str | None = None
    since: datetime | None = None
    details: tuple[tuple[str, Any], ...] = field(default=())

    @property
    def key(self) -> str:
        """Identity across runs, for drift: what the finding is about, not its wording or counts.
        Made when asked for, not kept: 70,000 of them were 8 MB at 100,000 users, and sorting,
        drift, the stored keys and the report each ask once."""
        who = ""
        if self.principal is not None:
            who = f"{self.principal.directory or ''}/{self.principal.guid or self.principal.name.lower()}"
        return "|".join([self.kind, who, self.product or "", self.version or "", self.cal_type or "",
                         self.purchase or "", self.reason or ""])

    @property
    def severity(self) -> str:
        return SEVERITY.get(self.kind, WARNING)


@dataclass(frozen=True, slots=True)
class ProductLine:
    product: str
    product_name: str
    version: str
    cal_type: str
    required: int
    owned: int
    assigned: int  # seats handed out from the purchases counted here, stale ones included
    licensed: int  # required principals that hold a covering seat

    @property
    def free(self) -> int:
        return max(0, self.owned - self.assigned)

    @property
    def shortfall(self) -> int:
        return max(0, self.required - self.owned)


@dataclass(frozen=True, slots=True)
class PrincipalLicences:
    """The per-user licence view: what a principal holds and what it needs."""

    principal: PrincipalRef | Principal
    holds: tuple[tuple[str, str, str, str], ...]  # (purchase, product, version, cal_type)
    needs: tuple[tuple[str, str, str, bool], ...]  # (product, version, cal_type, licensed)


@dataclass(frozen=True)
class Reconciliation:
    products: tuple[ProductLine, ...]
    findings: tuple[Finding, ...]
    licences: tuple[PrincipalLicences, ...] = ()

    @property
    def compliant(self) -> bool:
        return not any(f.severity == ERROR for f in self.findings)

    @property
    def shortfall(self) -> int:
        return sum(line.shortfall for line in self.products)

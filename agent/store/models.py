"""SQLAlchemy models of the state database.

The schema is owned by Alembic migrations (``agent/store/migrations``); a test checks that the
migrations produce exactly these models.  Times are stored as naive UTC and returned aware.
"""

from __future__ import annotations

from datetime import date, datetime, timezone
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes on every backend (SQLite has no time zones)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use aware UTC datetimes")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc)


class PrincipalState(StrEnum):
    ACTIVE = "active"
    DISABLED = "disabled"
    EXPIRED = "expired"
    INACTIVE = "inactive"
    DELETED = "deleted"
    MISSING = "missing"  # gone from a complete read without a tombstone


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class SyncRun(Base):
    """One read of one directory.  Failed reads are recorded too: they changed nothing."""

    __tablename__ = "sync_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    directory: Mapped[str] = mapped_column(String(64), index=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16))  # running | ok | failed
    source: Mapped[str | None] = mapped_column(Text)
    users: Mapped[int] = mapped_column(Integer, default=0)
    groups: Mapped[int] = mapped_column(Integer, default=0)
    computers: Mapped[int] = mapped_column(Integer, default=0)
    tombstones: Mapped[int] = mapped_column(Integer, default=0)
    changes: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    # full: a complete read (may mark principals missing); incremental: only what changed since the
    # directory's watermark (docs/directory.md "Incremental sync").  ``reason``: why this mode.
    mode: Mapped[str] = mapped_column(String(16), default="full", server_default="full")
    reason: Mapped[str | None] = mapped_column(Text)


class DirectoryWatermark(Base):
    """Where the next incremental sync of an AD directory starts: the DC that was read (its
    dnsHostName and invocationId) and its highestCommittedUSN read before the last successful
    sync's search.  Written in the same transaction as that sync."""

    __tablename__ = "directory_watermarks"

    directory: Mapped[str] = mapped_column(String(64), primary_key=True)
    dc_host: Mapped[str] = mapped_column(Text)
    invocation_id: Mapped[str] = mapped_column(String(36))
    highest_usn: Mapped[int] = mapped_column(BigInteger)
    base_dn: Mapped[str] = mapped_column(Text)
    bind_dn: Mapped[str] = mapped_column(Text)  # another account may see other objects
    synced_at: Mapped[datetime] = mapped_column(UTCDateTime)  # the last successful sync (full or incremental)
    full_sync_at: Mapped[datetime] = mapped_column(UTCDateTime)  # the last successful full sync
    tombstone_lifetime_days: Mapped[int] = mapped_column(Integer)


class Principal(Base):
    """A user, group or computer, keyed by (directory, objectGUID)."""

    __tablename__ = "principals"
    __table_args__ = (
        UniqueConstraint("directory", "guid"),
        Index("ix_principals_directory_name", "directory", "kind", "name_key"),
        Index("ix_principals_directory_dn_key", "directory", "dn_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    directory: Mapped[str] = mapped_column(String(64))
    guid: Mapped[str] = mapped_column(String(36))
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(Text)
    name_key: Mapped[str] = mapped_column(Text)  # lower-cased name for case-insensitive lookups
    dn: Mapped[str] = mapped_column(Text)
    dn_key: Mapped[str | None] = mapped_column(Text)  # decode.dn_key(dn): member DNs resolve by lookup
    sid: Mapped[str | None] = mapped_column(String(200))
    display_name: Mapped[str | None] = mapped_column(Text)
    mail: Mapped[str | None] = mapped_column(Text)
    user_account_control: Mapped[int | None] = mapped_column(BigInteger)
    account_expires: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_logon: Mapped[datetime | None] = mapped_column(UTCDateTime)
    pwd_last_set: Mapped[datetime | None] = mapped_column(UTCDateTime)
    when_created: Mapped[datetime | None] = mapped_column(UTCDateTime)
    primary_group_id: Mapped[int | None] = mapped_column(BigInteger)
    gid_number: Mapped[int | None] = mapped_column(BigInteger)  # generic LDAP groups: a posixGroup's gidNumber
    dns_host_name: Mapped[str | None] = mapped_column(Text)
    operating_system: Mapped[str | None] = mapped_column(Text)
    operating_system_version: Mapped[str | None] = mapped_column(Text)
    # Per-user RDS CALs recorded on the user (msTS*, R27) as canonical JSON, written by sync.py:
    # [{"version": "2012", "expires": "2026-01-18T11:55:55+00:00", "license_server": "..."}]
    rds_licenses: Mapped[str] = mapped_column(Text, default="[]", server_default="[]")
    state: Mapped[str] = mapped_column(String(16))
    state_since: Mapped[datetime] = mapped_column(UTCDateTime)
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime)


class Membership(Base):
    """Direct membership, resolved to principals; ``via_primary`` marks primaryGroupID links."""

    __tablename__ = "memberships"

    group_id: Mapped[int] = mapped_column(ForeignKey("principals.id", ondelete="CASCADE"), primary_key=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("principals.id", ondelete="CASCADE"), primary_key=True,
                                           index=True)
    via_primary: Mapped[bool] = mapped_column(Boolean, default=False)


class PrincipalEvent(Base):
    """What a sync changed: joined, state (active→disabled…), moved, renamed."""

    __tablename__ = "principal_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sync_id: Mapped[int] = mapped_column(ForeignKey("sync_runs.id", ondelete="CASCADE"), index=True)
    principal_id: Mapped[int] = mapped_column(ForeignKey("principals.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    event: Mapped[str] = mapped_column(String(16))
    old: Mapped[str | None] = mapped_column(Text)
    new: Mapped[str | None] = mapped_column(Text)


class Run(Base):
    """One reconcile: its findings and the full JSON report it produced (``report_gz``: the
    report's JSON text as `report --format json` prints it, gzip'd; agent/reports/json_report.py)."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    compliant: Mapped[bool] = mapped_column(Boolean)
    findings: Mapped[int] = mapped_column(Integer)
    errors: Mapped[int] = mapped_column(Integer)
    warnings: Mapped[int] = mapped_column(Integer)
    shortfall: Mapped[int] = mapped_column(Integer)
    report_gz: Mapped[bytes] = mapped_column(LargeBinary)


class RunFinding(Base):
    """Finding keys per run: drift is the set difference with the previous run."""

    __tablename__ = "run_findings"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16))


# ---------------------------------------------------------------------------------------------
# The licence register, once imported (`cal-agent inventory import`): the database is then the
# one source of truth for purchases and assignments, and every change leaves a RegisterEvent.


class RegisterProduct(Base):
    """A product added to the built-in catalog by the register (``products:``)."""

    __tablename__ = "register_products"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)  # the ProductEntry fields


class RegisterPurchase(Base):
    """A purchase; ``data`` holds every inventory field (id, product, version, ... as in YAML)."""

    __tablename__ = "register_purchases"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)


class RegisterAssignment(Base):
    """A seat of a purchase held by a principal from ``assigned_on`` until ``released_on``.
    Released rows are kept: they are the history the 90-day reassignment rule (R06) needs."""

    __tablename__ = "register_assignments"
    __table_args__ = (Index("ix_register_assignments_active", "purchase_id", "released_on"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    purchase_id: Mapped[str] = mapped_column(ForeignKey("register_purchases.id"), index=True)
    principal: Mapped[str] = mapped_column(Text)
    principal_key: Mapped[str] = mapped_column(Text, index=True)  # lower-cased, without "$"
    directory: Mapped[str | None] = mapped_column(String(64))
    assigned_on: Mapped[date | None] = mapped_column(Date)
    released_on: Mapped[date | None] = mapped_column(Date)
    release_reason: Mapped[str | None] = mapped_column(String(32))  # departed | hardware_failure | ...
    moved_to: Mapped[int | None] = mapped_column(Integer)  # the assignment this seat moved to
    notes: Mapped[str | None] = mapped_column(Text)


class RegisterEvent(Base):
    """The audit trail: who changed the register, when, why.  Never updated or deleted."""

    __tablename__ = "register_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(32))  # import | add_purchase | update_purchase | assign | release | transfer
    purchase_id: Mapped[str | None] = mapped_column(String(200), index=True)
    principal_key: Mapped[str | None] = mapped_column(Text, index=True)
    to_principal_key: Mapped[str | None] = mapped_column(Text, index=True)
    reason: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)


# ---------------------------------------------------------------------------------------------
# Alerts (agent/alerts): every message is stored here before it is sent, and stays until it is.


class OutboxMessage(Base):
    """One alert message for one channel.  ``body`` is exactly what is sent: the RFC 5322 message
    (its Message-ID fixed at creation, so a retry is the same message) or the webhook's JSON."""

    __tablename__ = "alert_outbox"
    __table_args__ = (Index("ix_alert_outbox_status_id", "status", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    run_id: Mapped[int | None] = mapped_column(Integer)  # no foreign key: run retention must not drop alerts
    channel: Mapped[str] = mapped_column(String(16))  # email | webhook
    kind: Mapped[str] = mapped_column(String(16))  # change | always | digest
    subject: Mapped[str] = mapped_column(Text)
    message_id: Mapped[str | None] = mapped_column(String(255))
    sender: Mapped[str | None] = mapped_column(Text)  # envelope sender (email)
    recipients: Mapped[list[str] | None] = mapped_column(JSON)  # envelope recipients (email)
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))  # pending | sending | sent
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)


class AlertState(Base):
    """What alerting remembers between cycles (one row, ``name`` "alerts"): the last run whose
    alerts were queued (changes are measured from it) and when the last digest was queued."""

    __tablename__ = "alert_state"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    last_run_id: Mapped[int | None] = mapped_column(Integer)
    last_digest_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

"""Apply a directory read to the store, in one transaction.

A complete read is applied as it streams, 5,000 entries at a time, inside one transaction: if the
directory fails half way, that transaction rolls back, the store keeps its previous state and the
sync is recorded as failed.  An incremental read is read whole first (whether a complete read must
follow is known only at its end).  Only a complete read may turn principals that were not seen
into ``missing``.

An AD directory is read incrementally when its watermark (``DirectoryWatermark``: the DC, its
invocationId and the highestCommittedUSN read before the last successful read) can be trusted:
only objects and tombstones with a higher ``uSNChanged`` are read and applied; everything else
keeps its stored values (``choose_mode`` says when a complete read is made instead, and why).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Container, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from itertools import chain, islice
from operator import itemgetter

import structlog
from sqlalchemy import and_, bindparam, delete, func, or_, select

from agent.compliance.lifecycle import principal_state
from agent.directory import decode
from agent.directory.records import DirectoryEntry, EntryKind, RdsLicense
from agent.errors import CalAgentError, DirectoryError
from agent.store.db import Store
from agent.store.models import (
    DirectoryWatermark,
    Membership,
    Principal,
    PrincipalEvent,
    PrincipalState,
    SyncRun,
    UTCDateTime,
)

log = structlog.get_logger("agent.sync")

# Attributes copied from the directory record onto the stored principal.
_COPIED = (
    "kind",
    "name",
    "dn",
    "sid",
    "display_name",
    "mail",
    "user_account_control",
    "account_expires",
    "last_logon",
    "pwd_last_set",
    "when_created",
    "primary_group_id",
    "gid_number",
    "dns_host_name",
    "operating_system",
    "operating_system_version",
)


@dataclass
class SyncOutcome:
    directory: str
    sync_id: int
    status: str
    users: int = 0
    groups: int = 0
    computers: int = 0
    tombstones: int = 0
    events: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    mode: str = "full"  # full | incremental
    reason: str | None = None  # why this mode (a full sync's cause, or the USN an incremental read from)
    read: int = 0  # entries read from the directory (an incremental read: only the changed ones)

    @property
    def changes(self) -> int:
        return sum(self.events.values())


_DEPARTED = {PrincipalState.DISABLED.value, PrincipalState.EXPIRED.value, PrincipalState.INACTIVE.value,
             PrincipalState.DELETED.value, PrincipalState.MISSING.value}
DEPARTURE_FLOOR = 10  # small directories: this many departures always pass


def departure_limit(active: int, configured: int | None) -> int:
    """How many active principals one sync may turn departed before it is held: the configured
    `max_departures`, else 10 % of the active users and computers or 500, whichever is lower
    (never below DEPARTURE_FLOOR, so a 20-person office can still lose two people)."""
    if configured is not None:
        return configured
    return max(DEPARTURE_FLOOR, min(500, math.ceil(active * 0.10)))


class DeparturesHeld(DirectoryError):
    """A sync would mark too many principals departed: held, nothing changed (accidental-departure guard)."""


@dataclass
class ModeChoice:
    usn: int | None = None  # incremental from this USN (uSNChanged >= usn); None: a full read
    reason: str | None = None


def choose_mode(watermark: DirectoryWatermark | None, dc, *, now: datetime, base_dn: str, bind_dn: str,
                full_sync_every: int | None, read_deleted: bool = True) -> ModeChoice:
    """Incremental from the watermark, or a full read and why (docs/directory.md "Incremental sync")."""
    if watermark is None:
        return ModeChoice(None, "no watermark yet (first sync of this directory)")
    if not read_deleted:
        return ModeChoice(None, "read_deleted: false: only a complete read sees deletions")
    if decode.dn_key(watermark.base_dn) != decode.dn_key(base_dn):
        return ModeChoice(None, f"base_dn changed (was {watermark.base_dn})")
    if watermark.bind_dn.lower() != bind_dn.lower():
        return ModeChoice(None, f"bind_dn changed (was {watermark.bind_dn}): another account may see other objects")
    if dc.host != watermark.dc_host:
        return ModeChoice(None, f"a different DC: {dc.host} (the watermark is {watermark.dc_host}'s; USNs are per DC)")
    if dc.invocation_id is None:
        return ModeChoice(None, f"the invocationId of {dc.host} cannot be read, so a restore cannot be detected")
    if dc.invocation_id != watermark.invocation_id:
        return ModeChoice(None, f"invocationId of {dc.host} changed from {watermark.invocation_id} to "
                                f"{dc.invocation_id} (DC restored from a backup or rebuilt)")
    lifetime = min(dc.tombstone_lifetime_days, watermark.tombstone_lifetime_days)
    if now - watermark.synced_at >= timedelta(days=lifetime):
        return ModeChoice(None, f"the watermark ({watermark.synced_at.isoformat()}) is older than the tombstone "
                                f"lifetime ({lifetime} days): deletions may have left no trace")
    if watermark.highest_usn > dc.highest_usn:
        return ModeChoice(None, f"the stored {dc.position} {watermark.highest_usn} is above {dc.host}'s "
                                f"{dc.highest_usn} ({dc.ahead_means})")
    if full_sync_every is not None and now - watermark.full_sync_at >= timedelta(seconds=full_sync_every):
        return ModeChoice(None, f"full_sync_every elapsed (last full sync {watermark.full_sync_at.isoformat()})")
    return ModeChoice(watermark.highest_usn + 1, f"changes since USN {watermark.highest_usn} on {dc.host}")


def run_sync(store: Store, directory: str, reader, *, inactive_after_days: int,
             judge_at: datetime | None = None, now: datetime | None = None, max_departures: int | None = None,
             accept_departures: bool = False, progress: Callable[[int], None] | None = None,
             incremental: bool = False, full_sync_every: int | None = None, force_full: bool = False) -> SyncOutcome:
    """Read ``reader`` (completely, or only what changed) and apply it.  Raises the reader's error
    after recording it.  ``incremental``: allow an incremental read when the reader supports it and
    the watermark can be trusted; ``force_full``: a complete read whatever the watermark says."""
    now = now or datetime.now(timezone.utc)
    judge_at = judge_at or now
    tracks_usn = bool(getattr(reader, "supports_incremental", False))
    with store.session() as session:
        sync = SyncRun(directory=directory, started_at=now, status="running", source=reader.describe(), mode="full")
        session.add(sync)
        session.flush()
        sync_id = sync.id
        watermark = session.get(DirectoryWatermark, directory) if tracks_usn else None
        if watermark is not None:
            session.expunge(watermark)
    log.info("sync.started", directory=directory, source=reader.describe())
    choice = ModeChoice()
    with _recorded(store, directory, sync_id, choice):
        if not tracks_usn:
            choice.reason = None
        elif force_full:
            choice.reason = "full sync requested (--full)"
        elif not incremental:
            choice.reason = "incremental: false"

        def since(dc) -> int | None:
            if tracks_usn and incremental and not force_full:
                decided = choose_mode(watermark, dc, now=now, base_dn=reader.config.base_dn,
                                      bind_dn=reader.config.bind_dn, full_sync_every=full_sync_every,
                                      read_deleted=getattr(reader.config, "read_deleted", True))
                choice.usn, choice.reason = decided.usn, decided.reason
            return choice.usn

        if hasattr(reader, "stored_uids"):
            reader.stored_uids = lambda: _stored_uids(store, directory)
        for attempt in (1, 2):
            try:
                read = _Read(reader.read(since=since) if tracks_usn else reader.read(), progress)
                # The reader decides the mode (calls ``since``) before its first entry.
                head = list(islice(read, 1))
                mode = "incremental" if choice.usn is not None else "full"
                if mode == "incremental":
                    entries: Iterable[DirectoryEntry] = head + list(read)  # all read before anything is applied
            except CalAgentError as exc:
                _failed(store, directory, sync_id, exc, choice)
                raise
            if mode == "incremental" and attempt == 1:
                left = _left_scope(store, directory, getattr(reader, "out_of_scope", set()))
                force = None
                if left:
                    # A complete read would no longer return them (-> missing): only a full read may say so.
                    force = (f"{len(left)} principal(s) moved out of base_dn or out of the directory's filters since "
                             f"the last sync (e.g. {sorted(left)[0]})")
                elif getattr(reader, "tombstones_unreadable", False):
                    # Without tombstones a deletion shows only as absence from a complete read.
                    force = "the bind account cannot list CN=Deleted Objects, so only a complete read sees deletions"
                if force:
                    choice.usn, choice.reason = None, force

                    def since(dc, force=force):  # noqa: F811  (the second attempt is a full read)
                        choice.usn, choice.reason = None, force
                        return None
                    continue
            break
        if mode == "full":
            # A complete read is applied as it streams, in the one transaction of apply_entries: a read
            # failing half way rolls back what was written of it, as a failed apply would.
            entries = chain(head, read)

        def new_watermark() -> dict | None:  # known once the read is over (a generic LDAP read's newest stamp)
            dc = getattr(reader, "dc", None) if tracks_usn else None
            if dc is None or dc.invocation_id is None:
                return None
            return dict(dc_host=dc.host, invocation_id=dc.invocation_id, highest_usn=dc.highest_usn,
                        base_dn=reader.config.base_dn, bind_dn=reader.config.bind_dn, synced_at=now,
                        full_sync_at=now if mode == "full" else watermark.full_sync_at,
                        tombstone_lifetime_days=dc.tombstone_lifetime_days)
        log.info("sync.mode", directory=directory, mode=mode, reason=choice.reason)
        try:
            outcome = apply_entries(store, directory, sync_id, entries, inactive_after_days=inactive_after_days,
                                    judge_at=judge_at, now=now, max_departures=max_departures,
                                    accept_departures=accept_departures, incremental=mode == "incremental",
                                    reason=choice.reason, watermark=new_watermark)
        except DeparturesHeld as exc:
            _finish(store, sync_id, status="held", error=str(exc), mode=mode, reason=choice.reason)
            log.error("sync.held", directory=directory, error=str(exc))
            raise
        except CalAgentError as exc:
            if exc is not read.error:
                raise
            _failed(store, directory, sync_id, exc, choice)
            raise
        finally:
            read.close()  # a store error half way: the directory connection is let go of now
        log.info("sync.finished", directory=directory, mode=mode, reason=choice.reason, read=outcome.read,
                 users=outcome.users, groups=outcome.groups,
                 computers=outcome.computers, tombstones=outcome.tombstones, changes=outcome.changes,
                 **{f"events_{k}": v for k, v in outcome.events.items()})
        return outcome


class _Read:
    """A directory read as it streams: each GUID once, and the read's own error kept (to tell it
    from the store's).  Of two entries with one GUID the first live one wins, and a live object
    wins over a tombstone (restored from the bin): tombstones wait for the end of the read."""

    def __init__(self, stream: Iterable[DirectoryEntry], progress: Callable[[int], None] | None) -> None:
        self._stream = stream
        self._entries = self._unique(stream, progress)
        self.error: CalAgentError | None = None

    def close(self) -> None:
        self._entries.close()
        getattr(self._stream, "close", lambda: None)()  # the reader's generator: its finally unbinds

    def __iter__(self) -> Iterator[DirectoryEntry]:
        return self

    def __next__(self) -> DirectoryEntry:
        try:
            return next(self._entries)
        except CalAgentError as exc:
            self.error = exc
            raise

    @staticmethod
    def _unique(stream: Iterable[DirectoryEntry], progress) -> Iterator[DirectoryEntry]:
        live: set[str] = set()
        tombstones: dict[str, DirectoryEntry] = {}
        for count, entry in enumerate(stream, start=1):
            if progress is not None and count % 1000 == 0:
                progress(count)
            if entry.deleted:
                tombstones.setdefault(entry.guid, entry)
            elif entry.guid not in live:
                live.add(entry.guid)
                yield entry
        for guid, entry in tombstones.items():
            if guid not in live:
                yield entry


@contextmanager
def _recorded(store: Store, directory: str, sync_id: int, choice: ModeChoice) -> Iterator[None]:
    """An unexpected error (a bug, a value no decoder foresaw) fails this directory's sync like a
    failed read: the run is recorded as failed instead of staying "running" for good, the store is
    as it was (apply_entries rolled back), and the other directories of the cycle still sync."""
    try:
        yield
    except CalAgentError:
        raise  # recorded where it was raised
    except Exception as exc:  # noqa: BLE001 - turned into the directory's failure, traceback logged
        log.exception("sync.crashed", directory=directory)
        error = DirectoryError(f"{directory}: the sync stopped on an unexpected error ({type(exc).__name__}: {exc}); "
                               "the read was discarded, nothing was changed",
                               hint="this is a bug in cal-agent: please report it with the log's traceback")
        _failed(store, directory, sync_id, error, choice)
        raise error from exc


def _failed(store: Store, directory: str, sync_id: int, exc: CalAgentError, choice: ModeChoice) -> None:
    _finish(store, sync_id, status="failed", error=str(exc), mode="incremental" if choice.usn else "full",
            reason=choice.reason)
    log.error("sync.failed", directory=directory, error=str(exc))


def _stored_uids(store: Store, directory: str) -> dict[str, str]:
    """Stored, live users' DNs by lower-cased name (uid, for generic LDAP's memberUid)."""
    c = _PRINCIPALS.c
    with store.session() as session:
        rows = session.execute(select(c.name_key, c.dn).where(
            c.directory == directory, c.kind == EntryKind.USER.value, c.state.not_in(_GONE)))
        return {name: dn for name, dn in rows}


def _left_scope(store: Store, directory: str, guids: set[str]) -> set[str]:
    """Stored, not yet departed principals among objects that changed outside base_dn."""
    if not guids:
        return set()
    with store.session() as session:
        rows = session.execute(select(Principal.guid, Principal.name).where(
            Principal.directory == directory, Principal.guid.in_(sorted(guids)),
            Principal.state.not_in([PrincipalState.MISSING.value, PrincipalState.DELETED.value]))).all()
    return {row.name for row in rows}


def _finish(store: Store, sync_id: int, *, status: str, error: str | None = None, **counts: int) -> None:
    with store.session() as session:
        sync = session.get(SyncRun, sync_id)
        sync.status = status
        sync.finished_at = datetime.now(timezone.utc)
        sync.error = error
        for key, value in counts.items():
            setattr(sync, key, value)


def apply_entries(store: Store, directory: str, sync_id: int, entries: Iterable[DirectoryEntry], *,
                  inactive_after_days: int, judge_at: datetime, now: datetime, max_departures: int | None = None,
                  accept_departures: bool = True, incremental: bool = False, reason: str | None = None,
                  watermark: Callable[[], dict | None] | None = None) -> SyncOutcome:
    """Apply ``entries``: a complete read, or (``incremental``) only the entries that changed, the
    other stored principals keeping their values (their state is judged again, as a complete read
    would, since expiry and inactivity come with time).  ``watermark``: stored in the same transaction.

    One transaction: a failure, or departures held by the guard, leaves the store as it was.
    Written with SQLAlchemy Core (executemany), not row by row through the ORM: a complete read of
    125,000 entries is ~375,000 rows (docs/performance.md).  Entries are applied 5,000 at a time:
    their stored rows are loaded, compared and written, and only what later steps need of each
    principal is kept (id, kind, state, DN key), so a complete re-read does not hold every stored
    principal as a row besides its entry.  Only columns whose values changed are updated, and
    ``last_seen`` by one statement per batch."""
    if incremental:
        entries = list(entries)  # small; its memberships step needs them all
    outcome = SyncOutcome(directory=directory, sync_id=sync_id, status="ok",
                          mode="incremental" if incremental else "full", reason=reason)
    events: list[tuple[str, str, str | None, str | None]] = []  # (guid, event, old, new)
    principals: dict[str, dict] = {}  # guid -> {id, kind, state, dn_key} of every principal read or re-judged
    links = _LinkInputs()  # a complete read: what its memberships step needs of each entry, not the entry
    with store.session() as session:
        conn = session.connection()
        # The departure guard's base: after an incremental read, the active principals before
        # anything is written; after a complete read, those stored that it leaves active or
        # turns departed (so a directory recovering from a bad read is judged against everyone).
        active_before = _count_active(conn, directory) if incremental else 0
        inserted: set[str] = set()
        stream = iter(entries)
        while batch := list(islice(stream, _BATCH)):
            outcome.read += len(batch)
            rows = _load_principals(conn, directory, guids=[e.guid for e in batch])
            inserts: list[dict] = []
            updates: dict[str, dict] = {}  # guid -> changed columns of a stored principal
            for entry in batch:
                _count_read(outcome, entry)
                if not incremental:
                    links.add(entry)
                state, since = principal_state(entry, at=judge_at, inactive_after_days=inactive_after_days)
                row = rows.get(entry.guid)
                if row is None:
                    row = {"id": None, "directory": directory, "guid": entry.guid, **_entry_values(entry),
                           "state": state.value, "state_since": since or judge_at, "first_seen": now, "last_seen": now}
                    inserts.append(row)
                    inserted.add(entry.guid)
                    rows[entry.guid] = row
                    events.append((entry.guid, "joined" if not entry.deleted else "deleted", None, state.value))
                    continue
                changed = _compare(row, entry, state.value, since or judge_at, now, events)
                if changed:
                    updates.setdefault(entry.guid, {}).update(changed)  # a GUID read twice keeps both
                    row.update(changed)
            stored_ids = [row["id"] for row in rows.values() if row["id"] is not None]
            _write_principals(conn, rows, inserts, updates)
            _touch(conn, stored_ids, now)
            for entry in batch:  # keyed by the entry's GUID string, the one the memberships step keeps too
                principals[entry.guid] = _kept(rows[entry.guid])
            del rows, inserts, updates, batch  # not held through the steps below
        later: dict[str, dict] = {}  # state changes of principals not read
        if incremental:
            # Unchanged in the directory, but expiry and inactivity come with time: judge the
            # stored values as a complete read would judge the same values (only the principals
            # whose dates make a change possible are loaded).
            # `principals` holds every GUID read so far: those are judged already.
            for guid, row in _time_candidates(conn, directory, judge_at, inactive_after_days, principals).items():
                state, since = principal_state(_stored_entry(row), at=judge_at,
                                               inactive_after_days=inactive_after_days)
                if row["state"] != state.value:
                    events.append((guid, "state", row["state"], state.value))
                    later[guid] = {"state": state.value, "state_since": since or judge_at}
                    row.update(later[guid])
                principals[guid] = _kept(row)
        else:
            # Only reached after a complete read: the objects it did not return are gone and left
            # no tombstone we could read (tombstone lifetime passed, or the bind account cannot
            # list them).
            c = _PRINCIPALS.c
            for pid, guid, kind, state in conn.execute(select(c.id, c.guid, c.kind, c.state)
                                                       .where(c.directory == directory, c.state.not_in(_GONE))):
                if guid in principals:  # read (a GUID is stored once per directory)
                    continue
                events.append((guid, "state", state, PrincipalState.MISSING.value))
                later[guid] = {"state": PrincipalState.MISSING.value, "state_since": now}
                principals[guid] = _Kept(pid, kind, PrincipalState.MISSING.value, None)
        departures = {guid: new for guid, kind, old, new in events
                      if kind == "state" and old == PrincipalState.ACTIVE.value and new in _DEPARTED
                      and principals[guid].kind != EntryKind.GROUP.value}
        if not incremental:
            active_before = sum(1 for guid, p in principals.items()
                                if guid not in inserted and p.kind != EntryKind.GROUP.value
                                and (p.state == PrincipalState.ACTIVE.value or guid in departures))
        limit = departure_limit(active_before, max_departures)
        if departures and len(departures) > limit and not accept_departures:
            by_state: dict[str, int] = {}
            for new in departures.values():
                by_state[new] = by_state.get(new, 0) + 1
            detail = ", ".join(f"{n} {state}" for state, n in sorted(by_state.items()))
            # Raising inside the session rolls everything back: the store keeps the previous state.
            raise DeparturesHeld(
                f"directory {directory}: this sync would mark {len(departures)} of {active_before} active principals "
                f"departed ({detail}), more than the limit of {limit}; nothing was changed",
                hint="if a DC, filter or base_dn problem caused this, fix it; if the departures are real, run "
                "`cal-agent sync --accept-departures` once (or raise directories[].max_departures)")
        _update_principals(conn, {principals[guid].id: changed for guid, changed in later.items()})
        if incremental:
            _sync_memberships_incremental(conn, directory, entries, principals)
        else:
            _sync_memberships(conn, directory, links, principals)
        event_rows = []
        for guid, kind, old, new in events:
            event_rows.append({"sync_id": sync_id, "principal_id": principals[guid].id, "at": now, "event": kind,
                               "old": old, "new": new})
            key = kind if kind != "state" else f"became_{new}"
            outcome.events[key] = outcome.events.get(key, 0) + 1
        insert_rows(conn, PrincipalEvent.__table__, event_rows)
        sync = session.get(SyncRun, sync_id)
        sync.status = "ok"
        sync.finished_at = datetime.now(timezone.utc)
        if incremental:
            # What the directory holds now (as a complete read would count it), not what changed.
            counts = _count_live(conn, directory)
            outcome.users, outcome.groups, outcome.computers = (
                counts.get(kind.value, 0) for kind in (EntryKind.USER, EntryKind.GROUP, EntryKind.COMPUTER))
        sync.users, sync.groups, sync.computers = outcome.users, outcome.groups, outcome.computers
        sync.tombstones, sync.changes = outcome.tombstones, len(events)
        sync.mode, sync.reason = outcome.mode, reason
        new_watermark = watermark() if watermark is not None else None
        if new_watermark is not None:
            stored = session.get(DirectoryWatermark, directory)
            if stored is None:
                session.add(DirectoryWatermark(directory=directory, **new_watermark))
            else:
                for key, value in new_watermark.items():
                    setattr(stored, key, value)
    return outcome


def _count_read(outcome: SyncOutcome, entry: DirectoryEntry) -> None:
    if entry.deleted:
        outcome.tombstones += 1
    elif entry.kind is EntryKind.USER:
        outcome.users += 1
    elif entry.kind is EntryKind.GROUP:
        outcome.groups += 1
    else:
        outcome.computers += 1


def _compare(row: dict, entry: DirectoryEntry, state: str, state_since: datetime, now: datetime,
             events: list[tuple[str, str, str | None, str | None]]) -> dict:
    """The columns of a stored principal that ``entry`` changes, with its lifecycle events."""
    changed: dict = {}
    if entry.deleted:
        # Tombstones keep few attributes and a mangled DN: keep the last live values.
        if row["state"] != PrincipalState.DELETED:
            events.append((entry.guid, "state", row["state"], PrincipalState.DELETED.value))
            changed["state"], changed["state_since"] = PrincipalState.DELETED.value, now
        return changed
    values = _entry_values(entry)
    if _stored_dn_key(row) != values["dn_key"]:
        events.append((entry.guid, "moved", row["dn"], entry.dn))
    if row["name"] != entry.name:
        events.append((entry.guid, "renamed", row["name"], entry.name))
    if row["rds_licenses"] != values["rds_licenses"]:
        # A change, not a lifecycle event: a licence server issued, renewed or dropped a per-user
        # RDS CAL.  The state is decided as before.
        events.append((entry.guid, "rds_licenses", row["rds_licenses"], values["rds_licenses"]))
    for name, value in values.items():
        if row[name] != value:
            changed[name] = value
    if row["state"] != state:
        events.append((entry.guid, "state", row["state"], state))
        changed["state"], changed["state_since"] = state, state_since
    return changed


@dataclass(slots=True)
class _Kept:
    """What the steps after a batch need of a principal (125,000 of these through a complete
    read: a dict each was ~20 MB more)."""

    id: int
    kind: str
    state: str
    dn_key: str | None


def _kept(row: dict) -> _Kept:
    # Kinds and states as one string each (sys.intern), not two new ones per stored row read back
    # (~13 MB at 100,000 principals).
    return _Kept(row["id"], sys.intern(row["kind"]), sys.intern(row["state"]), _stored_dn_key(row))


def _stored_dn_key(row: dict) -> str:
    """A stored principal's DN key (rows written before the column existed have none)."""
    return row["dn_key"] or decode.dn_key(row["dn"])


def _touch(conn, ids: list[int], now: datetime) -> None:
    """last_seen: every principal the read returned (one statement per batch, not a row each)."""
    for start in range(0, len(ids), _BATCH):
        conn.execute(_PRINCIPALS.update().where(_PRINCIPALS.c.id.in_(ids[start:start + _BATCH]))
                     .values(last_seen=now))


_GONE = (PrincipalState.MISSING.value, PrincipalState.DELETED.value)
_PRINCIPALS = Principal.__table__
_MEMBERSHIPS = Membership.__table__
# The stored columns a sync reads back to compare with a directory entry.
_LOADED = ("id", "guid", *_COPIED, "name_key", "dn_key", "rds_licenses", "state", "state_since")
_BATCH = 5000  # rows per executemany (and ids per IN list: below every backend's parameter limit)


def _executemany(conn, statement, rows: list[dict]) -> None:
    for start in range(0, len(rows), _BATCH):
        conn.execute(statement, rows[start:start + _BATCH])


def insert_rows(conn, table, rows: list[dict], columns: list[str] | None = None) -> None:
    """Insert ``rows`` (dicts with the same keys; ``columns``: only these of them).  On SQLite,
    straight through the driver with each value converted by its column type once per distinct
    value: SQLAlchemy's per-row parameter processing was two thirds of writing a first sync's
    375,000 rows (docs/performance.md).  Elsewhere (PostgreSQL: insertmanyvalues batches) through
    SQLAlchemy Core.  A batch at a time, so the rows are never all copied at once."""
    if not rows:
        return
    columns = columns or list(rows[0])
    if conn.dialect.name != "sqlite":
        for start in range(0, len(rows), _BATCH):
            conn.execute(table.insert(), [{name: row[name] for name in columns} for row in rows[start:start + _BATCH]])
        return
    # Times become SQLAlchemy's SQLite text form, as every other write stores them (the driver's
    # adapter would drop ".000000", and SQL comparisons are textual); other columns by the dialect's
    # own processors.  Only the columns that have one are converted, each distinct value once; the
    # others go as they are, the row's values taken in one call.
    processed = []
    for index, name in enumerate(columns):
        column_type = table.c[name].type
        if isinstance(column_type, UTCDateTime):
            process = sqlite_time_text
        else:
            process = column_type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
        if process is not None:
            processed.append((index, process, {}))  # {}: value -> stored form
    values_of = itemgetter(*columns) if len(columns) > 1 else (lambda row, name=columns[0]: (row[name],))
    statement = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"
    for start in range(0, len(rows), _BATCH):
        params = []
        for row in rows[start:start + _BATCH]:
            values = values_of(row)
            if processed:
                values = list(values)
                for index, process, seen in processed:
                    value = values[index]
                    if value is not None:
                        stored = seen.get(value)
                        if stored is None:
                            stored = seen[value] = process(value)
                        values[index] = stored
                values = tuple(values)
            params.append(values)
        conn.exec_driver_sql(statement, params)


def sqlite_time_text(value: datetime) -> str:
    """A time as UTCDateTime stores it on SQLite (naive UTC in SQLAlchemy's text form,
    ``2026-11-25 04:56:39.000000``), by C calls instead of SQLAlchemy's Python formatting: a first
    sync converts ~250,000 distinct times.  Tested against the dialect's own processor."""
    return _UTC_TIME.process_bind_param(value, None).isoformat(" ", "microseconds")


_UTC_TIME = UTCDateTime()  # its process_bind_param: naive times refused, aware ones as naive UTC


def _entry_values(entry: DirectoryEntry) -> dict:
    """The stored columns that come from a directory entry."""
    values = {name: getattr(entry, name) for name in _COPIED}
    values["kind"] = entry.kind.value
    values["name_key"] = entry.name.lower()
    values["dn_key"] = decode.dn_key(entry.dn)
    values["rds_licenses"] = rds_licenses_json(entry.rds_licenses) if entry.rds_licenses else "[]"
    return values


def _load_principals(conn, directory: str, *, guids: list[str] | None = None,
                     where=None) -> dict[str, dict]:
    """Stored principals of ``directory`` (all, those with ``guids``, or matching ``where``) as plain dicts."""
    columns = [_PRINCIPALS.c[name] for name in _LOADED]
    base = select(*columns).where(_PRINCIPALS.c.directory == directory)
    if where is not None:
        base = base.where(where)
    if guids is None:
        return {row["guid"]: dict(row) for row in conn.execute(base).mappings()}
    out: dict[str, dict] = {}
    for start in range(0, len(guids), _BATCH):
        chunk = guids[start:start + _BATCH]
        for row in conn.execute(base.where(_PRINCIPALS.c.guid.in_(chunk))).mappings():
            out[row["guid"]] = dict(row)
    return out


def _time_candidates(conn, directory: str, judge_at: datetime, inactive_after_days: int,
                     read: Container[str]) -> dict[str, dict]:
    """Stored users and computers, not read this time, whose state time alone, or a changed
    `inactive_after_days`, changes (lifecycle.principal_state; time only moves forward):

    - active ones whose expiry has passed, or none of whose activity dates is recent;
    - inactive ones whose expiry has passed (expired comes first), or with a recent activity date
      (a longer window makes them active again).

    Expired and disabled ones stay so with time (a clock set back, which could make an expired one
    active again, is caught by the next complete read).  Only these rows are loaded: a sync after
    a few changes would otherwise load every inactive and expired principal each time."""
    c = _PRINCIPALS.c
    cutoff = judge_at - timedelta(days=inactive_after_days)
    dates = (c.last_logon, c.pwd_last_set, c.when_created)
    stale = and_(*[or_(column.is_(None), column < cutoff) for column in dates])
    recent = or_(*[column >= cutoff for column in dates])
    expires = c.account_expires <= judge_at
    where = and_(c.kind != EntryKind.GROUP.value,
                 or_(and_(c.state == PrincipalState.ACTIVE.value, or_(expires, stale)),
                     and_(c.state == PrincipalState.INACTIVE.value, or_(expires, recent))))
    rows = _load_principals(conn, directory, where=where)
    return {guid: row for guid, row in rows.items() if guid not in read}


def _count_active(conn, directory: str) -> int:
    c = _PRINCIPALS.c
    return conn.execute(select(func.count()).where(c.directory == directory, c.kind != EntryKind.GROUP.value,
                                                   c.state == PrincipalState.ACTIVE.value)).scalar_one()


def _count_live(conn, directory: str) -> dict[str, int]:
    c = _PRINCIPALS.c
    rows = conn.execute(select(c.kind, func.count()).where(c.directory == directory, c.state.not_in(_GONE))
                        .group_by(c.kind))
    return {kind: count for kind, count in rows}


def _write_principals(conn, rows: dict[str, dict], inserts: list[dict], updates: dict[str, dict]) -> None:
    """Insert the new principals (learning their ids) and update the changed columns of the others."""
    if inserts:
        _insert_principals(conn, rows, inserts)
    _update_principals(conn, {rows[guid]["id"]: changed for guid, changed in updates.items()})


def _update_principals(conn, updates: dict[int, dict]) -> None:
    """The changed columns of stored principals, by id: one executemany per set of columns."""
    by_columns: dict[tuple[str, ...], list[dict]] = {}
    for pid, changed in updates.items():
        if changed:
            by_columns.setdefault(tuple(sorted(changed)), []).append({"_id": pid, **changed})
    for columns, params in by_columns.items():
        statement = (_PRINCIPALS.update().where(_PRINCIPALS.c.id == bindparam("_id"))
                     .values({name: bindparam(name) for name in columns}))
        _executemany(conn, statement, params)


def _insert_principals(conn, rows: dict[str, dict], inserts: list[dict]) -> None:
    highest = select(func.max(_PRINCIPALS.c.id))
    before = (conn.execute(highest).scalar() or 0) if conn.dialect.name == "sqlite" else None
    insert_rows(conn, _PRINCIPALS, inserts, [name for name in inserts[0] if name != "id"])
    if before is not None and conn.execute(highest).scalar() == before + len(inserts):
        # SQLite gives a new row the largest id plus one (https://sqlite.org/autoinc.html) and
        # nothing else writes in this transaction: the new ids follow on, in insert order.
        for pid, row in enumerate(inserts, start=before + 1):
            row["id"] = pid
        return
    directory = inserts[0]["directory"]
    new = [row["guid"] for row in inserts]
    for start in range(0, len(new), _BATCH):
        for guid, pid in conn.execute(select(_PRINCIPALS.c.guid, _PRINCIPALS.c.id)
                                      .where(_PRINCIPALS.c.directory == directory,
                                             _PRINCIPALS.c.guid.in_(new[start:start + _BATCH]))):
            rows[guid]["id"] = pid


def _stored_entry(row: dict) -> DirectoryEntry:
    """A stored principal as the record a read of its unchanged object would give (for judging)."""
    return DirectoryEntry(guid=row["guid"], kind=EntryKind(row["kind"]), dn=row["dn"], name=row["name"],
                          sid=row["sid"], user_account_control=row["user_account_control"],
                          account_expires=row["account_expires"], last_logon=row["last_logon"],
                          pwd_last_set=row["pwd_last_set"], when_created=row["when_created"],
                          primary_group_id=row["primary_group_id"])


def rds_licenses_json(licenses: Iterable[RdsLicense]) -> str:
    """The stored form of a user's per-user RDS CALs: canonical JSON (UTC ISO times, sorted keys),
    so the same values always give the same text and an unchanged user is not rewritten."""
    return json.dumps([
        {"version": lic.version,
         "expires": lic.expires.astimezone(timezone.utc).isoformat() if lic.expires else None,
         "license_server": lic.license_server}
        for lic in licenses
    ], sort_keys=True, separators=(",", ":"))


def rds_licenses_from_json(text: str | None) -> tuple[RdsLicense, ...]:
    """The inverse of ``rds_licenses_json``."""
    if text is None or text == "[]":
        return ()  # nearly every principal: not worth a JSON parse each
    return tuple(
        RdsLicense(version=item.get("version"),
                   expires=datetime.fromisoformat(item["expires"]) if item.get("expires") else None,
                   license_server=item.get("license_server"))
        for item in json.loads(text or "[]")
    )


class _LinkInputs:
    """What a complete read's memberships step needs of its live entries, kept as they stream by
    instead of the entries themselves: group members, SIDs and gidNumbers, primary groups."""

    def __init__(self) -> None:
        self.live: list[str] = []  # GUIDs in read order: their DN keys resolve member DNs
        self.members: list[tuple[str, tuple[str, ...]]] = []  # (group GUID, member DNs)
        self.group_sids: list[tuple[str, str]] = []  # (group GUID, objectSid)
        self.group_gids: list[tuple[str, int]] = []  # (group GUID, gidNumber)
        # The primary groups (GUID, kind, primary group id, domain SID), as four lists instead of a
        # tuple each, the ids and domain SIDs one object per distinct value: nearly every user has
        # one, the same few (~10 MB of tuples, ints and SID strings at 100,000 users).
        self._primary_guids: list[str] = []
        self._primary_kinds: list[EntryKind] = []
        self._primary_ids: list[int] = []
        self._primary_domains: list[str | None] = []
        self._same: dict = {}

    def add(self, entry: DirectoryEntry) -> None:
        if entry.deleted:
            return
        self.live.append(entry.guid)
        if entry.kind is EntryKind.GROUP:
            if entry.members:
                self.members.append((entry.guid, entry.members))
            if entry.sid:
                self.group_sids.append((entry.guid, entry.sid))
            if entry.gid_number is not None:
                self.group_gids.append((entry.guid, entry.gid_number))
        if entry.primary_group_id is not None:
            same = self._same
            self._primary_guids.append(entry.guid)
            self._primary_kinds.append(entry.kind)
            self._primary_ids.append(same.setdefault(entry.primary_group_id, entry.primary_group_id))
            domain = entry.domain_sid
            self._primary_domains.append(same.setdefault(domain, domain))

    def primaries(self) -> Iterator[tuple[str, EntryKind, int, str | None]]:
        """(GUID, kind, primary group id, domain SID) of each live entry that has a primary group."""
        return zip(self._primary_guids, self._primary_kinds, self._primary_ids, self._primary_domains)


def _sync_memberships(conn, directory: str, links: _LinkInputs, rows: dict[str, _Kept]) -> None:
    """Store direct memberships resolved to principal ids, changing only what differs."""
    by_dn = {rows[guid].dn_key: rows[guid].id for guid in links.live}  # keys computed when the rows were
    group_by_sid = {sid: rows[guid].id for guid, sid in links.group_sids}
    group_by_gid: dict[int, int] = {}
    for guid, gid_number in links.group_gids:
        # Two posixGroups with one gidNumber: the oldest principal, as incremental syncs choose.
        group_id = rows[guid].id
        group_by_gid[gid_number] = min(group_id, group_by_gid.get(gid_number, group_id))
    wanted, unresolved = _wanted_links(links, rows, by_dn, group_by_sid, group_by_gid)
    _apply_memberships(conn, _load_memberships(conn, directory), wanted, lambda key, via_primary: key not in wanted)
    if unresolved:
        log.debug("sync.unresolved_members", directory=directory, count=unresolved)


def _wanted_links(links: _LinkInputs, rows: dict[str, _Kept], by_dn: dict[str, int], group_by_sid: dict[str, int],
                  group_by_gid: dict[int, int]) -> tuple[dict[tuple[int, int], bool], int]:
    """The direct memberships ``links`` ask for, as {(group id, member id): via primary group},
    and how many member DNs resolved to no principal."""
    wanted: dict[tuple[int, int], bool] = {}
    unresolved = 0
    for guid, members in links.members:
        group_id = rows[guid].id
        for member_dn in members:
            member_id = by_dn.get(decode.dn_key(member_dn))
            if member_id is None:
                unresolved += 1  # outside base_dn, a foreign security principal, or a contact
                continue
            wanted.setdefault((group_id, member_id), False)
    for guid, kind, primary_group_id, domain_sid in links.primaries():
        if domain_sid:
            # The primary group is not listed in the group's `member` (MS-ADA3 primaryGroupID).
            group_id = group_by_sid.get(f"{domain_sid}-{primary_group_id}")
            if group_id is not None:
                wanted[(group_id, rows[guid].id)] = True
        elif kind is EntryKind.USER and group_by_gid:
            # Generic LDAP: a user's gidNumber names its primary posixGroup, which need not list
            # the user in memberUid (like AD's primaryGroupID).
            group_id = group_by_gid.get(primary_group_id)
            if group_id is not None:
                wanted[(group_id, rows[guid].id)] = True
    return wanted, unresolved


def _load_memberships(conn, directory: str, ids: set[int] | None = None) -> dict[tuple[int, int], bool]:
    """Stored memberships of the directory's groups (or only those touching ``ids``)."""
    m, p = _MEMBERSHIPS.c, _PRINCIPALS.c
    base = select(m.group_id, m.member_id, m.via_primary)
    if ids is None:
        stmt = base.join(_PRINCIPALS, p.id == m.group_id).where(p.directory == directory)
        return {(g, mem): bool(v) for g, mem, v in conn.execute(stmt)}
    out: dict[tuple[int, int], bool] = {}
    ordered = sorted(ids)
    for start in range(0, len(ordered), _BATCH // 2):
        chunk = ordered[start:start + _BATCH // 2]
        stmt = base.where(or_(m.group_id.in_(chunk), m.member_id.in_(chunk)))
        out.update({(g, mem): bool(v) for g, mem, v in conn.execute(stmt)})
    return out


def _apply_memberships(conn, current: dict[tuple[int, int], bool], wanted: dict[tuple[int, int], bool],
                       drop: Callable[[tuple[int, int], bool], bool]) -> None:
    """Delete the current links ``drop`` says go, correct ``via_primary``, insert the missing ones."""
    m = _MEMBERSHIPS.c
    deletes, flips = [], []
    for key, via_primary in current.items():
        if drop(key, via_primary):
            deletes.append({"g": key[0], "m": key[1]})
        elif key in wanted and wanted[key] != via_primary:
            flips.append({"g": key[0], "m": key[1], "v": wanted[key]})
    where = and_(m.group_id == bindparam("g"), m.member_id == bindparam("m"))
    _executemany(conn, _MEMBERSHIPS.delete().where(where), deletes)
    _executemany(conn, _MEMBERSHIPS.update().where(where).values(via_primary=bindparam("v")), flips)
    insert_rows(conn, _MEMBERSHIPS, [{"group_id": g, "member_id": mem, "via_primary": v}
                                               for (g, mem), v in wanted.items() if (g, mem) not in current])


def _sync_memberships_incremental(conn, directory: str, entries: list[DirectoryEntry], rows: dict[str, _Kept]) -> None:
    """Memberships after an incremental read: a changed group's direct members are replaced by its
    `member` values (read in full); a changed principal's primary-group link is recomputed; links
    of deleted principals go.  Member DNs resolve against every stored principal (as updated)."""
    gone = {rows[e.guid].id for e in entries if e.deleted}
    changed_groups = {rows[e.guid].id for e in entries if not e.deleted and e.kind is EntryKind.GROUP}
    changed = {rows[e.guid].id for e in entries if not e.deleted}
    # Only the member DNs of the changed groups are looked up (indexed dn_key), and the groups by
    # SID only when a changed principal has a primary group: not every stored principal.
    p = _PRINCIPALS.c
    live = and_(p.directory == directory, p.state.not_in(_GONE))
    links = _LinkInputs()
    for entry in entries:
        links.add(entry)
    member_keys = sorted({decode.dn_key(dn) for _guid, members in links.members for dn in members})
    by_dn: dict[str, int] = {}
    for start in range(0, len(member_keys), _BATCH):
        stmt = (select(p.dn_key, p.id).where(live, p.dn_key.in_(member_keys[start:start + _BATCH]))
                .order_by(p.id))  # two live rows with one DN (deleted and re-created): the newer wins
        by_dn.update({key: pid for key, pid in conn.execute(stmt)})
    group_by_sid: dict[str, int] = {}
    if any(domain_sid for _guid, _kind, _primary, domain_sid in links.primaries()):
        stmt = select(p.sid, p.id).where(live, p.kind == EntryKind.GROUP.value, p.sid.is_not(None))
        group_by_sid = {sid: pid for sid, pid in conn.execute(stmt)}
    # posixGroup primary links are recomputed from the stored gidNumbers below, not from this read.
    wanted, _unresolved = _wanted_links(links, rows, by_dn, group_by_sid, {})
    _primary_ad_members(conn, live, [e for e in entries if not e.deleted and e.kind is EntryKind.GROUP and e.sid],
                        rows, wanted)
    # A changed posixGroup's primary members are recomputed from the stored gidNumbers, and so is
    # the primary group of every user it held that way (its gidNumber may have moved away); AD
    # groups' primary links come from their members' primaryGroupID and stay.
    posix_groups = {rows[e.guid].id for e in entries
                    if not e.deleted and e.kind is EntryKind.GROUP and not e.sid}
    relinked: set[int] = set()
    ordered = sorted(posix_groups)
    for start in range(0, len(ordered), _BATCH):
        m = _MEMBERSHIPS.c
        relinked.update(conn.scalars(select(m.member_id).where(m.group_id.in_(ordered[start:start + _BATCH]),
                                                               m.via_primary.is_(True))))
    _primary_posix_groups(conn, directory, entries, rows, wanted, relinked)
    # Only links touching these principals are loaded, so only those may be added (a link between
    # two others is already stored, or is a complete read's to make).
    touched = gone | changed | relinked
    wanted = {key: v for key, v in wanted.items() if key[0] in touched or key[1] in touched}

    def drop(key: tuple[int, int], via_primary: bool) -> bool:
        group_id, member_id = key
        if group_id in gone or member_id in gone:
            return True
        if key in wanted:
            return False
        return ((via_primary and (member_id in changed or member_id in relinked or group_id in posix_groups))
                or (not via_primary and group_id in changed_groups))

    current = _load_memberships(conn, directory, touched)
    flips_back = {key: False for key, via_primary in current.items()
                  if key in wanted and via_primary and not wanted[key] and key[1] not in changed}
    # A primary-group link stays primary unless its member changed (no longer the primary group,
    # still listed in `member`): only then does via_primary turn off.
    wanted_now = {**wanted, **{key: True for key in flips_back}}
    _apply_memberships(conn, current, wanted_now, drop)


def _primary_ad_members(conn, live, groups: list[DirectoryEntry], rows: dict[str, _Kept],
                        wanted: dict[tuple[int, int], bool]) -> None:
    """AD, incremental: the stored principals whose primaryGroupID names a changed group get their
    primary link to it (a complete read makes it from each member's primaryGroupID).  A group moved
    into base_dn, or re-created, has unchanged primary members whose own uSNChanged did not move."""
    by_sid = {entry.sid: rows[entry.guid].id for entry in groups}
    rids = sorted({int(rid) for sid in by_sid for rid in [sid.rpartition("-")[2]] if rid.isdigit()})
    p = _PRINCIPALS.c
    for start in range(0, len(rids), _BATCH):  # one query for them all: a scan, not one per group
        stmt = select(p.id, p.sid, p.primary_group_id).where(
            live, p.kind != EntryKind.GROUP.value, p.primary_group_id.in_(rids[start:start + _BATCH]),
            p.sid.is_not(None))
        for member_id, sid, rid in conn.execute(stmt):
            group_id = by_sid.get(f"{sid.rpartition('-')[0]}-{rid}")
            if group_id is not None:
                wanted[(group_id, member_id)] = True


def _primary_posix_groups(conn, directory: str, entries: list[DirectoryEntry], rows: dict[str, _Kept],
                          wanted: dict[tuple[int, int], bool], relinked: set[int]) -> None:
    """Generic LDAP, incremental: a changed user's gidNumber links it to the posixGroup with that
    gidNumber, a changed posixGroup gets its primary members back, and the ``relinked`` users
    their primary group again, from the stored values."""
    users = [e for e in entries if not e.deleted and e.kind is EntryKind.USER and e.primary_group_id is not None
             and not e.domain_sid]
    groups = [e for e in entries if not e.deleted and e.kind is EntryKind.GROUP and e.gid_number is not None]
    if not users and not groups and not relinked:
        return
    p = _PRINCIPALS.c
    live = and_(p.directory == directory, p.state.not_in(_GONE))
    group_by_gid: dict[int, int] = {}
    for pid, gid in conn.execute(select(p.id, p.gid_number).where(live, p.kind == EntryKind.GROUP.value,
                                                                   p.gid_number.is_not(None)).order_by(p.id)):
        group_by_gid.setdefault(gid, pid)
    for entry in users:
        group_id = group_by_gid.get(entry.primary_group_id)
        if group_id is not None:
            wanted[(group_id, rows[entry.guid].id)] = True
    ids = sorted(relinked)
    for start in range(0, len(ids), _BATCH):
        stmt = select(p.id, p.primary_group_id).where(live, p.id.in_(ids[start:start + _BATCH]),
                                                      p.primary_group_id.is_not(None))
        for pid, gid in conn.execute(stmt):
            group_id = group_by_gid.get(gid)
            if group_id is not None:
                wanted[(group_id, pid)] = True
    gids = sorted({e.gid_number for e in groups})
    for start in range(0, len(gids), _BATCH):
        stmt = select(p.id, p.primary_group_id).where(live, p.kind == EntryKind.USER.value,
                                                      p.primary_group_id.in_(gids[start:start + _BATCH]))
        for pid, gid in conn.execute(stmt):
            group_id = group_by_gid.get(gid)
            if group_id is not None:
                wanted[(group_id, pid)] = True


def forget_directory(store: Store, directory: str) -> None:
    """Remove everything known about a directory (used when it is dropped from the config)."""
    with store.session() as session:
        session.execute(delete(Principal).where(Principal.directory == directory))

"""The store on SQLite and a real PostgreSQL: migrations, lifecycle states, safety of failed reads."""

from __future__ import annotations

import sqlite3
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, select

from agent.directory import decode
from agent.directory.records import DirectoryEntry, EntryKind, RdsLicense
from agent.engine import load_view
from agent.errors import DirectoryError
from agent.store.db import Store
from agent.store.models import Base, Membership, Principal, PrincipalEvent, SyncRun
from agent.store.sync import run_sync

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)
DOMAIN = "S-1-5-21-100-200-300"


class ListReader:
    """A directory read from a list of records; ``fail_after`` simulates a DC dying mid-read."""

    def __init__(self, entries, fail_after: int | None = None):
        self.entries = list(entries)
        self.fail_after = fail_after

    def describe(self):
        return "test list"

    def read(self):
        for i, entry in enumerate(self.entries):
            if self.fail_after is not None and i >= self.fail_after:
                raise DirectoryError("connection to dc1 lost during the read")
            yield entry


def user(name, ou="Staff", rid=1000, **kw) -> DirectoryEntry:
    defaults = dict(guid=str(uuid.uuid5(uuid.NAMESPACE_DNS, name)), kind=EntryKind.USER,
                    dn=f"CN={name},OU={ou},DC=corp,DC=example,DC=com", name=name, sid=f"{DOMAIN}-{rid}",
                    user_account_control=512, primary_group_id=513, when_created=NOW - timedelta(days=400),
                    last_logon=NOW - timedelta(days=3))
    defaults.update(kw)
    return DirectoryEntry(**defaults)


def group(name, rid, members=(), **kw) -> DirectoryEntry:
    return DirectoryEntry(guid=str(uuid.uuid5(uuid.NAMESPACE_DNS, "g-" + name)), kind=EntryKind.GROUP,
                          dn=f"CN={name},OU=Groups,DC=corp,DC=example,DC=com", name=name, sid=f"{DOMAIN}-{rid}",
                          members=tuple(m.dn for m in members), **kw)


def estate():
    alice = user("alice", rid=1101)
    bob = user("bob", rid=1102, user_account_control=514)
    carol = user("carol", rid=1103, account_expires=NOW - timedelta(days=10))
    dave = user("dave", rid=1104, last_logon=NOW - timedelta(days=200), pwd_last_set=NOW - timedelta(days=300))
    erin = user("erin", rid=1105, primary_group_id=1201)
    staff = group("staff", 1200, [alice, bob])
    primary = group("contractors-primary", 1201)
    domain_users = group("Domain Users", 513)
    return [alice, bob, carol, dave, erin, staff, primary, domain_users]


def sync(store, entries, **kw):
    return run_sync(store, "corp", ListReader(entries, **kw), inactive_after_days=90, now=NOW)


@pytest.fixture
def store(database_url):
    s = Store(database_url)
    yield s
    s.close()


def _states(store):
    with store.session() as session:
        return {p.name: p.state for p in session.scalars(select(Principal))}


def _count(store, model):
    with store.session() as session:
        return session.scalar(select(func.count()).select_from(model))


def test_migrations_produce_exactly_the_models(store):
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []


def test_the_head_revision_a_store_is_opened_at_without_alembic_is_the_newest_migration(tmp_path):
    # Store() skips importing Alembic when the schema is at HEAD_REVISION: a constant that must
    # follow the migrations, or a store one migration behind would be opened unmigrated.
    from alembic.script import ScriptDirectory

    from agent.store.db import HEAD_REVISION, alembic_config

    assert HEAD_REVISION == ScriptDirectory.from_config(alembic_config()).get_current_head()
    from alembic import command

    url = f"sqlite:///{tmp_path / 'state.db'}"
    Store(url)  # migrated from nothing
    config = alembic_config()
    config.set_main_option("sqlalchemy.url", url)
    command.downgrade(config, "-1")
    with sqlite3.connect(tmp_path / "state.db") as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() != [(HEAD_REVISION,)]
    Store(url)  # one behind: migrated again
    with sqlite3.connect(tmp_path / "state.db") as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(HEAD_REVISION,)]


def test_lifecycle_states_from_a_complete_read(store):
    outcome = sync(store, estate())
    assert (outcome.users, outcome.groups, outcome.status) == (5, 3, "ok")
    assert _states(store) == {"alice": "active", "bob": "disabled", "carol": "expired", "dave": "inactive",
                              "erin": "active", "staff": "active", "contractors-primary": "active",
                              "Domain Users": "active"}
    with store.session() as session:
        dave = session.scalars(select(Principal).where(Principal.name == "dave")).one()
        # Inactive since the newest activity (the logon 200 days ago) plus the 90-day window.
        assert dave.state_since == NOW - timedelta(days=110)


def test_primary_group_membership_is_stored(store):
    sync(store, estate())
    with store.session() as session:
        rows = session.execute(
            select(Principal.name, Membership.via_primary)
            .join(Membership, Membership.member_id == Principal.id)
        ).all()
    pairs = sorted(rows)
    # erin via primaryGroupID 1201; everybody else via 513 (Domain Users); alice and bob via member.
    assert ("erin", True) in pairs and pairs.count(("alice", True)) == 1 and pairs.count(("alice", False)) == 1


def test_second_sync_with_no_change_changes_nothing(store):
    sync(store, estate())
    counts = (_count(store, Principal), _count(store, Membership), _count(store, PrincipalEvent))
    outcome = sync(store, estate())
    assert outcome.changes == 0
    assert (_count(store, Principal), _count(store, Membership), _count(store, PrincipalEvent)) == counts


def test_failed_read_changes_nothing_and_is_recorded(store):
    sync(store, estate())
    before = _states(store)
    with pytest.raises(DirectoryError):
        sync(store, estate()[:2], fail_after=1)
    assert _states(store) == before  # nobody became missing
    with store.session() as session:
        last = session.scalars(select(SyncRun).order_by(SyncRun.id.desc())).first()
        assert last.status == "failed" and "connection to dc1 lost" in last.error


def test_an_unexpected_error_mid_read_fails_the_sync_as_a_read_error_and_changes_nothing(store):
    # A bug or a value no decoder foresaw (an OverflowError, a KeyError...) must not leave the run
    # "running" for good nor escape as a traceback that stops the other directories' syncs.
    class Crashing(ListReader):
        def read(self):
            yield from self.entries[:3]
            raise OverflowError("date value out of range")

    sync(store, estate())
    before = (_states(store), _count(store, Membership), _count(store, PrincipalEvent))
    with pytest.raises(DirectoryError, match="unexpected error.*OverflowError: date value out of range"):
        run_sync(store, "corp", Crashing(estate()[:5]), inactive_after_days=90, now=NOW)
    assert (_states(store), _count(store, Membership), _count(store, PrincipalEvent)) == before
    with store.session() as session:
        last = session.scalars(select(SyncRun).order_by(SyncRun.id.desc())).first()
        assert last.status == "failed" and "OverflowError" in last.error and last.finished_at is not None


def test_a_read_failing_after_batches_were_written_changes_nothing(store):
    # A complete read is written 5,000 entries at a time as it streams, all in one transaction:
    # a DC lost after 12,000 entries must leave the store exactly as it was.
    sync(store, estate())
    before = (_states(store), _count(store, Membership), _count(store, PrincipalEvent))
    newcomers = [user(f"n{i:05d}", rid=20_000 + i) for i in range(13_000)]
    with pytest.raises(DirectoryError):
        sync(store, [*estate(), *newcomers], fail_after=12_000)
    assert (_states(store), _count(store, Membership), _count(store, PrincipalEvent)) == before
    with store.session() as session:
        last = session.scalars(select(SyncRun).order_by(SyncRun.id.desc())).first()
        assert last.status == "failed" and "connection to dc1 lost" in last.error


def test_readers_see_the_last_committed_state_while_a_complete_read_is_being_written(tmp_path):
    # A complete read is written as it streams; on SQLite the write-ahead log lets `report`,
    # `status` or an admin's sqlite3 shell read meanwhile instead of waiting for the whole sync.
    store = Store(f"sqlite:///{tmp_path}/state.db")
    sync(store, estate())
    seen = []

    class ReadWhileWriting(ListReader):
        def read(self):
            for i, entry in enumerate(self.entries):
                if i == 11_000:  # two batches of 5,000 written, far more than SQLite's page cache
                    other = sqlite3.connect(tmp_path / "state.db", timeout=0)
                    try:
                        seen.append(other.execute("SELECT count(*) FROM principals").fetchone()[0])
                    finally:
                        other.close()
                yield entry

    newcomers = [user(f"n{i:05d}", rid=20_000 + i) for i in range(12_000)]
    run_sync(store, "corp", ReadWhileWriting([*estate(), *newcomers]), inactive_after_days=90, now=NOW)
    assert seen == [len(estate())] and _count(store, Principal) == len(estate()) + 12_000
    store.close()


@pytest.mark.parametrize("tombstone_first", [True, False])
def test_a_live_object_wins_over_its_tombstone_in_one_complete_read(store, tombstone_first):
    # Restored from the recycle bin while the read ran: the tombstone and the live object share
    # the GUID, whichever comes first in the read.
    entries = estate()
    sync(store, entries)
    alice = entries[0]
    tomb = DirectoryEntry(guid=alice.guid, kind=EntryKind.USER, name="alice", deleted=True,
                          dn=f"CN=alice\\0ADEL:{alice.guid},CN=Deleted Objects,DC=corp,DC=example,DC=com")
    outcome = sync(store, [tomb, *entries] if tombstone_first else [*entries, tomb])
    assert _states(store)["alice"] == "active" and outcome.changes == 0 and outcome.tombstones == 0


def test_missing_only_after_a_complete_read_and_back_when_seen_again(store):
    entries = estate()
    sync(store, entries)
    outcome = sync(store, [e for e in entries if e.name != "alice"])
    assert _states(store)["alice"] == "missing" and outcome.events == {"became_missing": 1}
    sync(store, entries)
    assert _states(store)["alice"] == "active"


def test_tombstone_marks_deleted_and_keeps_last_live_values(store):
    entries = estate()
    sync(store, entries)
    alice = entries[0]
    tomb = DirectoryEntry(guid=alice.guid, kind=EntryKind.USER, name="alice", deleted=True,
                          dn=f"CN=alice\\0ADEL:{alice.guid},CN=Deleted Objects,DC=corp,DC=example,DC=com")
    sync(store, [tomb, *entries[1:]])
    with store.session() as session:
        row = session.scalars(select(Principal).where(Principal.guid == alice.guid)).one()
        assert row.state == "deleted" and row.dn == alice.dn


def test_rename_and_move_keep_identity(store):
    entries = estate()
    sync(store, entries)
    moved = DirectoryEntry(**{**{f: getattr(entries[0], f) for f in entries[0].__slots__},
                              "name": "alice.smith", "dn": "CN=alice.smith,OU=Sales,DC=corp,DC=example,DC=com"})
    outcome = sync(store, [moved, *entries[1:]])
    assert outcome.events == {"moved": 1, "renamed": 1}
    assert _count(store, Principal) == len(entries)


def test_dn_comparison_ignores_case_so_no_false_moves(store):
    entries = estate()
    sync(store, entries)
    upper = [DirectoryEntry(**{**{f: getattr(e, f) for f in e.__slots__}, "dn": e.dn.upper()}) for e in entries]
    assert sync(store, upper).changes == 0
    assert decode.dn_key(upper[0].dn) == decode.dn_key(entries[0].dn)


RDS_2012 = RdsLicense(version="2012", expires=NOW + timedelta(days=40), license_server="00252-20000-35572-AT477")
RDS_UNKNOWN = RdsLicense(version=None, expires=NOW + timedelta(days=55), license_server=None)


def test_rds_cals_survive_a_sync_and_an_identical_sync_changes_nothing(store):
    entries = estate()
    entries[0] = DirectoryEntry(**{**{f: getattr(entries[0], f) for f in entries[0].__slots__},
                                   "rds_licenses": (RDS_2012, RDS_UNKNOWN)})
    sync(store, entries)
    counts = (_count(store, Principal), _count(store, PrincipalEvent))
    assert sync(store, entries).changes == 0
    assert (_count(store, Principal), _count(store, PrincipalEvent)) == counts
    view = load_view(store, ["corp"])
    cals = {p.name: p.rds_cals for p in view.principals}
    assert [(c.version, c.expires, c.license_server) for c in cals["alice"]] == [
        ("2012", NOW + timedelta(days=40), "00252-20000-35572-AT477"), (None, NOW + timedelta(days=55), None)]
    assert cals["bob"] == () and cals["staff"] == ()


def test_a_renewed_rds_cal_is_a_change_but_not_a_lifecycle_event(store):
    entries = estate()
    entries[0] = DirectoryEntry(**{**{f: getattr(entries[0], f) for f in entries[0].__slots__},
                                   "rds_licenses": (RDS_2012,)})
    sync(store, entries)
    renewed = RdsLicense(version="2012", expires=NOW + timedelta(days=60), license_server=RDS_2012.license_server)
    entries[0] = DirectoryEntry(**{**{f: getattr(entries[0], f) for f in entries[0].__slots__},
                                   "rds_licenses": (renewed,)})
    outcome = sync(store, entries)
    assert outcome.events == {"rds_licenses": 1} and outcome.changes == 1
    assert _states(store)["alice"] == "active"
    with store.session() as session:
        event = session.scalars(select(PrincipalEvent).order_by(PrincipalEvent.id.desc())).first()
        assert event.event == "rds_licenses" and event.old != event.new
        assert session.scalars(select(SyncRun).order_by(SyncRun.id.desc())).first().changes == 1
    (cal,) = {p.name: p for p in load_view(store, ["corp"]).principals}["alice"].rds_cals
    assert cal.expires == NOW + timedelta(days=60)
    # and when the licence server's record goes, so does the CAL
    entries[0] = DirectoryEntry(**{**{f: getattr(entries[0], f) for f in entries[0].__slots__}, "rds_licenses": ()})
    assert sync(store, entries).events == {"rds_licenses": 1}
    assert {p.name: p for p in load_view(store, ["corp"]).principals}["alice"].rds_cals == ()


def test_progress_is_reported_every_thousand_entries(store):
    entries = [user(f"u{i:05d}", rid=10_000 + i) for i in range(2500)]
    seen = []
    run_sync(store, "corp", ListReader(entries), inactive_after_days=90, progress=seen.append)
    assert seen == [1000, 2000]


def test_upgrading_a_0005_store_fills_the_dn_keys_incremental_reads_look_up(tmp_path):
    # Principals stored before migration 0006 get their DN comparison key, or an incremental read
    # could not resolve a changed group's members to them.
    from alembic import command

    from agent.store.db import alembic_config

    url = f"sqlite:///{tmp_path / 'old.db'}"
    config = alembic_config()
    config.set_main_option("sqlalchemy.url", url)
    command.upgrade(config, "0005")
    with sqlite3.connect(tmp_path / "old.db") as db:
        db.execute("INSERT INTO principals (directory, guid, kind, name, name_key, dn, state, state_since, "
                   "first_seen, last_seen, rds_licenses) VALUES ('corp', 'g1', 'user', 'jsmith', 'jsmith', "
                   "'CN=John Smith, OU=Staff,DC=corp,DC=example', 'active', '2024-01-01 00:00:00.000000', "
                   "'2024-01-01 00:00:00.000000', '2024-01-01 00:00:00.000000', '[]')")
    Store(url)
    with sqlite3.connect(tmp_path / "old.db") as db:
        assert db.execute("SELECT dn_key FROM principals").fetchall() == [("cn=john smith,ou=staff,dc=corp,dc=example",)]


def test_state_and_reports_are_private_and_a_repeated_cycle_adds_no_rows(tmp_path):
    # Issue 7: state and reports name every employee (files 0600, folders 0700), and a cycle with
    # nothing changed writes no principal, membership or event row and reports no drift.
    import stat

    from tests.test_register import Site

    site = Site(tmp_path, f"sqlite:///{tmp_path / 'state' / 'cal.db'}")
    site.run("run", "--once")
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "state" / "cal.db").stat().st_mode) == 0o600
    reports = tmp_path / "reports"
    assert stat.S_IMODE(reports.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in reports.iterdir()} == {0o600}
    # The write-ahead log and its index exist while the store is open: they hold the same data.
    store = Store(f"sqlite:///{tmp_path / 'state' / 'cal.db'}")
    with store.session() as session:
        session.execute(select(func.count()).select_from(Principal))
        logs = sorted(p.name for p in (tmp_path / "state").iterdir() if p.name.startswith("cal.db-"))
        assert logs == ["cal.db-shm", "cal.db-wal"]
        assert {stat.S_IMODE((tmp_path / "state" / name).stat().st_mode) for name in logs} == {0o600}
    store.close()

    def rows() -> tuple[int, ...]:
        with sqlite3.connect(tmp_path / "state" / "cal.db") as db:
            return tuple(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                         for table in ("principals", "memberships", "principal_events"))

    before = rows()
    site.run("run", "--once")
    assert rows() == before
    drift = site.run("report", "--format", "json").stdout
    assert '"new": []' in drift and '"resolved": []' in drift


def _incremental(store, entries, *, inactive_after_days=90):
    """Apply ``entries`` as an incremental read would (only they changed)."""
    from agent.store.sync import apply_entries

    with store.session() as session:
        run = SyncRun(directory="corp", started_at=NOW, status="running", source="test", mode="incremental")
        session.add(run)
        session.flush()
        sync_id = run.id
    return apply_entries(store, "corp", sync_id, entries, inactive_after_days=inactive_after_days, judge_at=NOW,
                         now=NOW, incremental=True)


def _links(store):
    with store.session() as session:
        names = {p.id: p.name for p in session.scalars(select(Principal))}
        return sorted((names[m.group_id], names[m.member_id], m.via_primary)
                      for m in session.scalars(select(Membership)))


def posix_user(name, gid, **kw):
    return user(name, sid=None, primary_group_id=gid, **kw)


def posix_group(name, gid, **kw):
    return DirectoryEntry(guid=str(uuid.uuid5(uuid.NAMESPACE_DNS, "pg-" + name)), kind=EntryKind.GROUP,
                          dn=f"cn={name},ou=Groups,dc=corp", name=name, gid_number=gid, **kw)


def test_an_incremental_sync_reactivates_what_a_longer_inactivity_window_makes_active(store):
    sync(store, estate())
    assert _states(store)["dave"] == "inactive"  # 200 days without logon, window 90
    _incremental(store, [], inactive_after_days=365)
    assert _states(store)["dave"] == "active"  # as a complete read with the new window would say


def test_incremental_posix_primary_groups_match_a_complete_read(store, tmp_path):
    bob, staff, alias = posix_user("bob", 100), posix_group("staff", 100), posix_group("staff-alias", 100)
    sync(store, [bob, staff, alias])
    assert _links(store) == [("staff", "bob", True)]  # two groups share gid 100: the older one
    # The alias group changes: no duplicate link, no failure.
    _incremental(store, [posix_group("staff-alias", 100, display_name="changed")])
    assert _links(store) == [("staff", "bob", True)]
    # staff moves to gid 200: bob (gid 100) now belongs to the alias as his primary group.
    moved = posix_group("staff", 200)
    _incremental(store, [moved])
    assert _links(store) == [("staff-alias", "bob", True)]
    fresh = Store(f"sqlite:///{tmp_path / 'fresh.db'}")
    try:  # a complete read of the same directory into an empty store gives the same links
        sync(fresh, [bob, moved, alias])
        assert _links(fresh) == _links(store)
    finally:
        fresh.close()


@pytest.mark.parametrize("first_window,window,days_later", [(90, 365, 30), (365, 30, 0), (90, 90, 120)])
def test_time_alone_changes_states_in_an_incremental_sync_as_a_complete_read_would(tmp_path, first_window, window,
                                                                                 days_later):
    # An incremental sync reads only changed entries; expiry and inactivity come with time (and a
    # changed inactive_after_days), so it re-judges the stored principals whose state time can
    # change.  Whatever it skips must be exactly those a complete read leaves as they were.
    import random

    from agent.compliance.lifecycle import principal_state
    from agent.store.sync import apply_entries

    rnd = random.Random(first_window + window + days_later)

    def moment(low, high):
        return None if rnd.random() < 0.15 else NOW + timedelta(days=rnd.randint(low, high))

    people = [user(f"u{i}", rid=2000 + i, user_account_control=rnd.choice([512, 512, 512, 514]),
                   account_expires=moment(-30, 150) if rnd.random() < 0.5 else None,
                   last_logon=moment(-420, 0), pwd_last_set=moment(-420, 0), when_created=moment(-800, 0))
              for i in range(300)]
    later = NOW + timedelta(days=days_later)
    transitions = {(principal_state(p, at=NOW, inactive_after_days=first_window)[0].value,
                    principal_state(p, at=later, inactive_after_days=window)[0].value) for p in people}
    stores = [Store(f"sqlite:///{tmp_path / name}.db") for name in ("incremental", "complete")]
    try:
        run_sync(stores[0], "corp", ListReader(people), inactive_after_days=first_window, now=NOW)
        with stores[0].session() as session:
            run = SyncRun(directory="corp", started_at=later, status="running", source="test", mode="incremental")
            session.add(run)
            session.flush()
            sync_id = run.id
        apply_entries(stores[0], "corp", sync_id, [], inactive_after_days=window, judge_at=later, now=later,
                      incremental=True)
        run_sync(stores[1], "corp", ListReader(people), inactive_after_days=window, now=later)
        assert _states(stores[0]) == _states(stores[1])
    finally:
        for s in stores:
            s.close()
    # the data exercises the changes time can make (so the comparison above means something)
    wanted = {(90, 365, 30): {("inactive", "active"), ("inactive", "expired"), ("active", "expired")},
              (365, 30, 0): {("active", "inactive"), ("inactive", "inactive")},
              (90, 90, 120): {("active", "inactive"), ("active", "expired"), ("inactive", "expired")},
              }[(first_window, window, days_later)]
    assert wanted <= transitions


_OFFSETS = st.sampled_from([timezone.utc, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=11)),
                            timezone(timedelta(hours=23, minutes=59))])


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.datetimes(timezones=_OFFSETS), st.datetimes()))
def test_the_bulk_insert_writes_times_as_sqlalchemy_would(value):
    # The bulk insert formats times itself (C calls, not SQLAlchemy's Python formatting): the text
    # must be exactly what SQLAlchemy writes and reads on SQLite, naive times refused the same way.
    from sqlalchemy.dialects import sqlite

    from agent.store.models import UTCDateTime
    from agent.store.sync import sqlite_time_text

    dialect = sqlite.dialect()
    expected_process = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    try:
        expected = expected_process(value)
    except (ValueError, OverflowError) as exc:
        with pytest.raises(type(exc)):
            sqlite_time_text(value)
        return
    assert sqlite_time_text(value) == expected


def test_times_written_by_the_bulk_insert_compare_equal_in_sql(store):
    # A first sync inserts through the driver; its times must have the same stored form as any
    # other write, or SQL comparisons (the incremental sync's candidates) are off at whole seconds.
    created = datetime(2025, 3, 4, 5, 6, 7, tzinfo=timezone.utc)  # whole seconds, as whenCreated is
    sync(store, [user("zed", when_created=created)])
    with store.session() as session:
        assert session.scalar(select(func.count()).where(Principal.when_created == created)) == 1
        assert session.scalar(select(func.count()).where(Principal.when_created >= created)) == 1


def test_a_guid_read_twice_in_one_read_keeps_both_changes(store):
    # A reader should not return one object twice, but if it does, the second copy must not
    # undo the first one's changes in the store (both are applied, in order).
    sync(store, estate())
    renamed = {"dn": "CN=alice2,OU=Moved,DC=corp,DC=example,DC=com", "name": "alice2"}
    moved = DirectoryEntry(**{**{f: getattr(user("alice", rid=1101), f) for f in DirectoryEntry.__slots__}, **renamed})
    disabled = DirectoryEntry(**{**{f: getattr(moved, f) for f in DirectoryEntry.__slots__},
                                 "user_account_control": 514})
    _incremental(store, [moved, disabled])
    with store.session() as session:
        alice = session.scalars(select(Principal).where(Principal.guid == moved.guid)).one()
        assert (alice.name, alice.dn, alice.state) == ("alice2", moved.dn, "disabled")


def test_a_group_read_twice_in_one_incremental_read_keeps_the_members_of_both(store):
    sync(store, estate())
    carol, dave = user("carol", rid=1103), user("dave", rid=1104)
    _incremental(store, [group("staff", 1200, [carol]), group("staff", 1200, [dave])])
    assert [(g, m) for g, m, _primary in _links(store) if g == "staff"] == [("staff", "carol"), ("staff", "dave")]


def test_a_directory_recovering_from_a_bad_read_is_not_held_by_the_departure_guard(store):
    # A read that returned only 50 of 300 users was accepted (--accept-departures): 250 are
    # missing.  The next complete read returns everyone, 12 of them now disabled: judged against
    # the 300 it leaves active or departs (limit 30), not the 50 active before it (limit 10).
    people = [user(f"p{i:03d}", rid=3000 + i) for i in range(300)]
    run_sync(store, "corp", ListReader(people), inactive_after_days=90, now=NOW)
    run_sync(store, "corp", ListReader(people[:50]), inactive_after_days=90, now=NOW, accept_departures=True)
    assert list(_states(store).values()).count("missing") == 250
    back = [user(f"p{i:03d}", rid=3000 + i, user_account_control=514 if i < 12 else 512) for i in range(300)]
    outcome = run_sync(store, "corp", ListReader(back), inactive_after_days=90, now=NOW)
    assert outcome.status == "ok" and list(_states(store).values()).count("disabled") == 12

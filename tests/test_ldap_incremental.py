"""Incremental reads of a generic LDAP directory (entryCSN) against the real OpenLDAP slapd.

The company is test_ldap_end_to_end's ``Corp`` in its own OU.  Its entries were all written seconds
before the first sync, inside the clock margin of the watermark (docs/directory.md), so the test
moves the stored watermark to "now" after the first sync: as if the directory had been quiet for
a while, which is what makes a later read small.  The incremental result is compared with a
complete read into a fresh store.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import pytest
import yaml
from sqlalchemy import update

from agent import engine
from agent.config import parse_config
from agent.store.db import Store
from agent.store.models import DirectoryWatermark
from tests.test_ad_incremental import events, snapshot
from tests.test_ldap_end_to_end import Corp

pytestmark = pytest.mark.openldap


@pytest.fixture(scope="module")
def corp(openldap, tmp_path_factory):
    return Corp(openldap, tmp_path_factory.mktemp("ldapinc"))


def sync(corp: Corp, database: str = "state.db", *, full: bool = False):
    data = json.loads(json.dumps(corp.config_data))
    data["database"]["url"] = f"sqlite:///{database}"
    config = parse_config(data, base_dir=corp.tmp)
    store = Store(config.database.url)
    outcomes, failures = engine.sync_directories(config, store, full=full)
    assert not failures, failures[0].error
    return outcomes[0], store


def quiet_since_now(store: Store) -> None:
    now_us = int((datetime.now(timezone.utc) - datetime(1970, 1, 1, tzinfo=timezone.utc)).total_seconds() * 1e6)
    with store.session() as session:
        session.execute(update(DirectoryWatermark).values(highest_usn=now_us))
    time.sleep(0.05)


def test_incremental_reads_only_changes_and_equals_a_complete_read(corp):
    ldap, t, n, dn = corp.ldap, corp.tag, corp.n, corp.dn
    first, store = sync(corp)
    assert first.mode == "full" and "no watermark" in first.reason
    assert (first.users, first.groups, first.computers) == (8, 6, 2)

    # Entries written within the clock margin are read again; nothing changes in the store.
    again, _ = sync(corp)
    assert again.mode == "incremental" and again.changes == 0

    quiet_since_now(store)
    quiet, _ = sync(corp)
    assert (quiet.mode, quiet.read, quiet.changes) == ("incremental", 0, 0)
    assert (quiet.users, quiet.groups, quiet.computers) == (8, 6, 2)  # the directory's totals

    n["henry"] = f"henry-{t}"
    staff_gid = int(ldap.get(f"cn=staff-{t},{corp.groups}", "gidNumber")["gidNumber"][0])
    henry = corp.add_user("henry", corp.people, gid_number=staff_gid, uid_number=staff_gid + 500)  # a joiner
    ldap.modify(dn["alice"], {"displayName": "Alice Renamed"})                       # modified
    ldap.modify(dn["bob"], {"pwdAccountLockedTime": "000001010000Z"})                # locked -> disabled
    ldap.modify(f"cn=GG-Apps-{t},{corp.groups}", {"member": [dn["bob"], dn["grace"]]})  # member added
    ldap.modify(f"cn=staff-{t},{corp.groups}",                                       # memberUid removed
                {"memberUid": [n[k] for k in ("alice", "grace", "dave", "erin", "frank", "svcbak")]})
    ldap.modify(dn["carol"], {"gidNumber": str(staff_gid)})                          # primary group moved
    erin2 = ldap.rename(dn["erin"], f"uid=erin2-{t}")                                # renamed (uid is the RDN)
    inc, _ = sync(corp)
    assert inc.mode == "incremental" and inc.reason.startswith("changes since")
    assert inc.read == 7, inc.read  # henry, alice, bob, carol, erin2 and two groups
    got = events(store, inc.sync_id)
    assert ("joined", n["henry"], "active") in got
    assert ("state", n["bob"], "disabled") in got
    assert ("renamed", f"erin2-{t}", f"erin2-{t}") in got
    assert (inc.users, inc.groups, inc.computers) == (9, 6, 2)

    # The same store as a complete read gives from scratch (memberships, primary groups included).
    full, fresh = sync(corp, "fresh.db")
    assert full.mode == "full"
    assert snapshot(store) == snapshot(fresh)
    assert any(v[1] == n["alice"] and v[4] == "Alice Renamed" for v in snapshot(store)["live"].values())

    # A deletion leaves nothing an incremental read can see; the next complete read marks it missing.
    ldap.delete(henry)
    quiet_since_now(store)
    blind, _ = sync(corp)
    assert (blind.mode, blind.read, blind.changes) == ("incremental", 0, 0)
    complete, _ = sync(corp, full=True)
    assert complete.mode == "full" and "--full" in complete.reason
    assert ("state", n["henry"], "missing") in events(store, complete.sync_id)
    _again, fresh2 = sync(corp, "fresh2.db")
    assert snapshot(store)["members"] == snapshot(fresh2)["members"]
    live = {v[1]: (v[2], v[3]) for v in snapshot(store)["live"].values()}
    assert live[n["henry"]][1] == "missing"
    assert live[f"erin2-{t}"] == (erin2.lower(), "expired")  # her shadowExpire came along


def test_incremental_false_always_reads_everything(corp):
    data = corp.config_data["directories"][0]
    data["incremental"] = False
    try:
        outcome, _ = sync(corp, "nonincremental.db")
        again, _ = sync(corp, "nonincremental.db")
        assert (outcome.mode, again.mode) == ("full", "full")
        assert again.read == outcome.read > 10
    finally:
        data.pop("incremental")


def test_a_watermark_in_the_future_makes_a_full_read(corp):
    # An entry stamped ahead (a restored backup, a server with a fast clock) must not carry the
    # watermark past changes still to come: a stored watermark beyond now + margin is distrusted.
    _first, store = sync(corp, "future.db")
    with store.session() as session:
        session.execute(update(DirectoryWatermark).values(highest_usn=int(time.time() * 1e6) + 3600 * 10**6))
    outcome, _ = sync(corp, "future.db")
    assert outcome.mode == "full" and "in the future" in outcome.reason, outcome.reason
    again, _ = sync(corp, "future.db")
    assert again.mode == "incremental"  # the full read set a sane watermark


def test_a_principal_leaving_the_user_filter_makes_a_full_read(corp):
    # An incremental read asks for changed entries *matching the filters*: one that stopped
    # matching is found by a second, identity-only search of everything changed, and a full read
    # (the only kind that may say "missing") follows.
    directory = corp.config_data["directories"][0]
    directory["attributes"] = {"user_filter": "(&(objectClass=inetOrgPerson)(!(employeeType=left)))"}
    try:
        _first, store = sync(corp, "filter.db")
        quiet_since_now(store)
        corp.ldap.modify(corp.dn["grace"], {"employeeType": "left"})
        outcome, _ = sync(corp, "filter.db")
        assert outcome.mode == "full" and "out of the directory's filters" in outcome.reason, outcome.reason
        assert ("state", corp.n["grace"], "missing") in events(store, outcome.sync_id)
    finally:
        directory.pop("attributes")
        corp.ldap.modify(corp.dn["grace"], {"employeeType": None})

"""End to end against a real OpenLDAP slapd (`type: ldap`), as an admin would use it: config file,
read-only bind account over LDAPS with certificate verification, `cal-agent` commands, JSON report.
Mirrors tests/test_ad_end_to_end.py."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from agent.config import parse_config, resolve_password
from agent.directory.ldap import LdapReader
from tests.test_ad_end_to_end import cal_agent, findings_by_kind

pytestmark = pytest.mark.openldap




class Corp:
    """A small company in a fresh OU of the shared slapd, with unique names."""

    def __init__(self, ldap, tmp: Path) -> None:
        self.ldap = ldap
        self.tag = t = uuid.uuid4().hex[:4]
        gid = 10000 + int(t, 16) % 50000  # unique gidNumbers per module
        self.root = ldap.add_ou(f"e2e-{t}")
        self.people = ldap.add_ou("People", self.root)
        self.contractors = ldap.add_ou("Contractors", self.root)
        self.devices = ldap.add_ou("Devices", self.root)
        self.groups = ldap.add_ou("Groups", self.root)
        self.n = {k: f"{k}-{t}" for k in ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "svcbak")}
        self.dn: dict[str, str] = {}
        expired_day = (datetime.now(timezone.utc) - timedelta(days=5) - datetime(1970, 1, 1, tzinfo=timezone.utc)).days
        for number, key in enumerate(("alice", "bob", "grace", "dave", "erin", "frank", "svcbak", "carol")):
            extra = {}
            if key == "dave":
                extra["pwdAccountLockedTime"] = "000001010000Z"  # ppolicy: locked by an administrator
            if key == "erin":
                extra["shadowExpire"] = str(expired_day)
            self.add_user(key, self.contractors if key == "carol" else self.people,
                          gid_number=gid + 1 if key == "carol" else gid, uid_number=gid + 100 + number, **extra)
        # Nested groupOfNames: GG-Staff (groupOfUniqueNames) > GG-Eng > GG-Apps > bob; alice directly,
        # with the optional unique-identifier suffix uniqueMember allows.
        apps = self.group_of_names(f"GG-Apps-{t}", [self.dn["bob"]])
        eng = self.group_of_names(f"GG-Eng-{t}", [apps])
        self.staff_group = ldap.add(f"cn=GG-Staff-{t},{self.groups}", ["groupOfUniqueNames"], {
            "cn": f"GG-Staff-{t}", "uniqueMember": [self.dn["alice"] + "#'0101'B", eng]})
        self.group_of_names(f"svc-accounts-{t}", [self.dn["svcbak"]])
        # posixGroup with memberUid: every staff member (the "Domain Users" of this directory).
        ldap.add(f"cn=staff-{t},{self.groups}", ["posixGroup"], {
            "cn": f"staff-{t}", "gidNumber": str(gid),
            "memberUid": [self.n[k] for k in ("alice", "bob", "grace", "dave", "erin", "frank", "svcbak")]})
        # carol is in GG-Primary only through her gidNumber (its memberUid is empty).
        ldap.add(f"cn=GG-Primary-{t},{self.groups}", ["posixGroup"], {"cn": f"GG-Primary-{t}",
                                                                     "gidNumber": str(gid + 1)})
        ldap.add(f"cn=KIOSK1-{t.upper()},{self.devices}", ["device"], {"cn": f"KIOSK1-{t.upper()}",
                                                                        "description": "Kiosk"})
        ldap.add(f"cn=KIOSK2-{t.upper()},{self.devices}", ["device"], {"cn": f"KIOSK2-{t.upper()}"})

        self.tmp = tmp
        secret = tmp / "bind-password"
        secret.write_text(ldap.reader_password + "\n")
        secret.chmod(0o600)
        self.inventory = tmp / "inventory.yaml"
        self.inventory.write_text(yaml.safe_dump({
            "purchases": [
                {"id": "PO-WS", "product": "windows-server", "version": "2022", "cal_type": "user", "quantity": 2,
                 "purchased_on": "2024-01-17", "invoice": "INV-1"},
                {"id": "PO-KIOSK", "product": "windows-server", "version": "2022", "cal_type": "device",
                 "quantity": 1, "purchased_on": "2024-01-17", "invoice": "INV-2"},
            ],
            "assignments": [
                {"purchase": "PO-WS", "principal": self.n["alice"], "assigned_on": "2024-02-01"},
                {"purchase": "PO-WS", "principal": self.n["dave"], "assigned_on": "2024-02-01"},
                {"purchase": "PO-WS", "principal": self.n["frank"], "assigned_on": "2024-02-01"},
                {"purchase": "PO-WS", "principal": f"ghost-{t}", "assigned_on": "2024-02-01"},
                {"purchase": "PO-KIOSK", "principal": f"KIOSK1-{t.upper()}", "assigned_on": "2024-02-01"},
            ],
        }))
        self.config = tmp / "config.yaml"
        self.config_data = {
            "database": {"url": "sqlite:///state.db"},
            "directories": [{
                "name": "corp", "type": "ldap", "url": ldap.url, "base_dn": self.root,
                "bind_dn": ldap.reader_dn, "password_file": "bind-password",
                "tls": {"ca_file": str(ldap.ca_file)}, "inactive_after_days": 90, "page_size": 5,
            }],
            "inventory": "inventory.yaml",
            "requirements": [
                {"name": "staff-windows", "product": "windows-server", "version": "2022", "cal_type": "user",
                 "users": {"ou": self.people, "group": f"staff-{t}", "exclude": [f"svc-accounts-{t}"]}},
                {"name": "kiosks", "product": "windows-server", "version": "2022", "cal_type": "device",
                 "computers": {"ou": self.devices}},
                {"name": "remote", "product": "rds", "version": "2022", "cal_type": "user",
                 "users": {"group": f"GG-Primary-{t}"}},
                {"name": "nested", "product": "exchange-standard", "version": "2019", "cal_type": "user",
                 "users": {"group": self.staff_group}},  # by DN
            ],
            "reports": {"directory": "reports"},
        }
        self.write_config()

    def add_user(self, key: str, ou: str, *, gid_number: int, uid_number: int, **extra: str) -> str:
        uid = self.n[key]
        dn = self.ldap.add(f"uid={uid},{ou}", ["inetOrgPerson", "posixAccount", "shadowAccount"], {
            "uid": uid, "cn": key.title(), "sn": key.title(), "displayName": f"{key.title()} {self.tag}",
            "mail": f"{uid}@example.com", "uidNumber": str(uid_number), "gidNumber": str(gid_number),
            "homeDirectory": f"/home/{uid}"})
        if extra:
            self.ldap.modify(dn, extra)
        self.dn[key] = dn
        return dn

    def group_of_names(self, cn: str, members: list[str]) -> str:
        return self.ldap.add(f"cn={cn},{self.groups}", ["groupOfNames"], {"cn": cn, "member": members})

    def write_config(self, **directory_overrides) -> None:
        data = json.loads(json.dumps(self.config_data))
        data["directories"][0].update(directory_overrides)
        self.config.write_text(yaml.safe_dump(data))


@pytest.fixture(scope="module")
def corp(openldap, tmp_path_factory):
    return Corp(openldap, tmp_path_factory.mktemp("ldapcorp"))


def test_full_cycle_gives_the_findings_an_auditor_would_raise(corp):
    t, n = corp.tag, corp.n
    run = cal_agent(corp.config, "run", "--once")
    assert run.returncode == 0, run.stderr
    # frank leaves after the first sync: LDAP keeps nothing, so a complete read calls him missing
    # (an incremental read cannot see a deletion: docs/directory.md).
    corp.ldap.delete(corp.dn["frank"])
    cal_agent(corp.config, "sync", "--full", check=True)
    reconcile = cal_agent(corp.config, "reconcile", "--check")
    assert reconcile.returncode == 1, reconcile.stdout + reconcile.stderr
    report = json.loads(cal_agent(corp.config, "report", "--format", "json", check=True).stdout)
    assert report["compliant"] is False
    got = findings_by_kind(report)
    assert got["unlicensed_user"] == sorted([
        ("windows-server", "user", n["bob"], None),        # posixGroup memberUid + OU
        ("windows-server", "user", n["grace"], None),
        ("rds", "user", n["carol"], None),                 # member only through her gidNumber
        ("exchange-standard", "user", n["alice"], None),   # uniqueMember (with #'0101'B) of GG-Staff
        ("exchange-standard", "user", n["bob"], None),     # member of GG-Staff through two nested groups
    ])
    assert got["unlicensed_device"] == [("windows-server", "device", f"KIOSK2-{t.upper()}", None)]
    assert got["stale_assignment"] == sorted([
        ("windows-server", "user", n["dave"], "disabled"),  # pwdAccountLockedTime
        ("windows-server", "user", n["frank"], "missing"),
    ])
    assert got["orphan_assignment"] == [("windows-server", "user", f"ghost-{t}", None)]
    assert got["over_assigned"] == [("windows-server", "user", "PO-WS", None)]
    products = {(p["product"], p["version"], p["cal_type"]): (p["required"], p["owned"], p["assigned"], p["licensed"],
                                                              p["shortfall"])
                for p in report["products"]}
    # staff-windows: alice, bob, grace (dave locked, erin expired, frank gone, svcbak excluded).
    # Four seats of PO-WS are handed out (alice, dave, frank, ghost) but only alice is licensed.
    assert products[("windows-server", "2022", "user")] == (3, 2, 4, 1, 1)
    assert products[("windows-server", "2022", "device")] == (2, 1, 1, 1, 1)
    assert products[("rds", "2022", "user")] == (1, 0, 0, 0, 1)
    assert sorted(f["product"] + "/" + f["cal_type"] for f in report["findings"] if f["kind"] == "shortfall") == [
        "exchange-standard/user", "rds/user", "windows-server/device", "windows-server/user"]
    new = {(f["kind"], f["principal"]["name"] if f["principal"] else None) for f in report["drift"]["new"]}
    assert new == {("stale_assignment", n["frank"])}
    assert report["drift"]["resolved"] == []
    # erin is expired (shadowExpire), so she is not required and has no finding.
    assert all(not f["principal"] or f["principal"]["name"] != n["erin"] for f in report["findings"])

    # A second sync + reconcile with no change: no drift.
    cal_agent(corp.config, "sync", check=True)
    cal_agent(corp.config, "reconcile")
    again = json.loads(cal_agent(corp.config, "report", "--format", "json", check=True).stdout)
    assert again["drift"] == {"new": [], "resolved": [], "principals": []}
    assert again["summary"] == report["summary"]


def test_reader_decodes_states_memberships_and_pages(corp):
    config = parse_config(yaml.safe_load(corp.config.read_text()), base_dir=corp.tmp)
    reader = LdapReader(config.directories[0], resolve_password(config.directories[0]))
    entries = {e.name: e for e in reader.read()}
    n, t = corp.n, corp.tag
    assert entries[n["dave"]].disabled and not entries[n["alice"]].disabled
    assert entries[n["erin"]].account_expires < datetime.now(timezone.utc)
    assert entries[n["alice"]].mail == f"{n['alice']}@example.com"
    assert entries[n["alice"]].when_created is not None
    staff = entries[f"staff-{t}"]
    assert corp.dn["bob"].lower() in [m.lower() for m in staff.members] and staff.gid_number is not None
    assert entries[n["carol"]].primary_group_id == entries[f"GG-Primary-{t}"].gid_number
    assert corp.dn["alice"] in entries[f"GG-Staff-{t}"].members
    guid = entries[n["alice"]].guid
    assert guid == guid.lower() and len(guid) == 36
    assert entries[f"KIOSK1-{t.upper()}"].kind == "computer"
    assert reader.stats.pages > reader.stats.searches  # page_size 5: several pages per search


def test_untrusted_certificate_is_refused_and_nothing_changes(corp):
    cal_agent(corp.config, "sync", check=True)
    corp.write_config(tls={"verify": True})  # no ca_file: the test CA is not trusted by the system
    try:
        proc = cal_agent(corp.config, "sync")
        assert proc.returncode == 3, proc.stderr
        assert "certificate verify failed" in proc.stderr and "tls.ca_file" in proc.stderr
        assert "Traceback" not in proc.stderr
    finally:
        corp.write_config()


def test_wrong_password_is_a_clear_error(corp):
    (corp.tmp / "wrong").write_text("not-the-password")
    (corp.tmp / "wrong").chmod(0o600)
    corp.write_config(password_file="wrong")
    try:
        proc = cal_agent(corp.config, "test-connection")
        assert proc.returncode == 3
        assert "invalid credentials" in proc.stdout + proc.stderr
        assert "not-the-password" not in proc.stdout + proc.stderr
    finally:
        corp.write_config()


def test_test_connection_reports_verified_tls_and_identity(corp):
    proc = cal_agent(corp.config, "test-connection", check=True)
    assert "corp: OK" in proc.stdout and "certificate_verified: True" in proc.stdout
    assert "paged_results: True" in proc.stdout
    assert corp.ldap.reader_password not in proc.stdout + proc.stderr


def test_starttls_url_works_with_verification(corp):
    corp.write_config(url=corp.ldap.starttls_url)
    try:
        proc = cal_agent(corp.config, "test-connection", check=True)
        assert "tls: starttls" in proc.stdout
    finally:
        corp.write_config()


def test_ldapi_socket_url_works_without_tls(corp):
    corp.write_config(url=corp.ldap.ldapi_url, tls={"verify": True})
    try:
        proc = cal_agent(corp.config, "test-connection", check=True)
        assert "tls: ldapi (local socket)" in proc.stdout
        cal_agent(corp.config, "sync", check=True)
    finally:
        corp.write_config()


def test_debug_logs_show_reproducible_queries_without_password(corp):
    proc = cal_agent(corp.config, "--log-level", "debug", "--log-format", "json", "sync", check=True)
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    queries = [line["query"] for line in lines if line.get("event") == "ldap.search"]
    assert any(f"ldapsearch -H {corp.ldap.url}" in q and "-W" in q and "pr=5/noprompt" in q
               and "entryUUID" in q for q in queries)
    assert corp.ldap.reader_password not in proc.stderr + proc.stdout


def test_test_connection_names_a_wrong_base_dn(corp):
    corp.write_config(base_dn=f"ou=nowhere-{corp.tag},{corp.ldap.base_dn}")
    try:
        proc = cal_agent(corp.config, "test-connection")
        assert proc.returncode == 3
        assert f"base_dn 'ou=nowhere-{corp.tag},{corp.ldap.base_dn}' cannot be read" in proc.stdout
    finally:
        corp.write_config()


class Bulk:
    """A directory `bulk`: an OU of `count` computers (pc00, pc01, ...), each licensed by a device CAL of
    PO-PC that a requirement asks for, read in pages of 20 by one of the server's accounts.  With
    `fault_at`, that computer carries a slapo-retcode fault (OpenLdapServer.add_fault(**fault))."""

    def __init__(self, ldap, tmp_path: Path, *, count: int = 60, fault_at: int | None = None, **fault) -> None:
        self.ldap, self.tmp, self.count = ldap, tmp_path, count
        self.base = ldap.add_ou(f"bulk-{uuid.uuid4().hex[:4]}")
        for i in range(count):
            dn, attributes = f"cn=pc{i:02d},{self.base}", {"cn": f"pc{i:02d}"}
            if i == fault_at:
                ldap.add_fault(dn, ["device"], attributes, **fault)
            else:
                ldap.add(dn, ["device"], attributes)
        (tmp_path / "inventory.yaml").write_text(yaml.safe_dump({
            "purchases": [{"id": "PO-PC", "product": "windows-server", "version": "2022", "cal_type": "device",
                           "quantity": count, "purchased_on": "2024-01-17", "invoice": "INV-PC"}],
            "assignments": [{"purchase": "PO-PC", "principal": f"pc{i:02d}", "assigned_on": "2024-02-01"}
                            for i in range(count)]}))
        self.config = tmp_path / "config.yaml"

    def bind_as(self, bind_dn: str, password: str) -> None:
        secret = self.tmp / f"password-{bind_dn.split(',')[0][3:]}"
        secret.write_text(password)
        secret.chmod(0o600)
        self.config.write_text(yaml.safe_dump({
            "database": {"url": "sqlite:///state.db"},
            "directories": [{"name": "bulk", "type": "ldap", "url": self.ldap.url, "base_dn": self.base,
                             "bind_dn": bind_dn, "password_file": secret.name,
                             "tls": {"ca_file": str(self.ldap.ca_file)}, "page_size": 20}],
            "inventory": "inventory.yaml",
            "requirements": [{"name": "pcs", "product": "windows-server", "version": "2022", "cal_type": "device",
                              "computers": {"ou": self.base}}],
            "reports": {"directory": "reports"}}))

    def report(self) -> dict:
        return json.loads(cal_agent(self.config, "report", check=True).stdout)

    def first_cycle(self) -> dict:
        """A good cycle with the unlimited reader: every computer read, required and licensed."""
        self.bind_as(self.ldap.reader_dn, self.ldap.reader_password)
        cal_agent(self.config, "run", "--once", check=True)
        report = self.report()
        assert report["directories"][0]["last_sync"]["computers"] == self.count
        assert [(p["required"], p["licensed"]) for p in report["products"]] == [(self.count, self.count)]
        assert report["compliant"] is True
        return report

    def failed_sync(self, says: list[str]) -> str:
        """`cal-agent sync` fails with exit 3 and a message containing each of `says`; returns it."""
        failed = cal_agent(self.config, "sync")
        assert failed.returncode == 3, failed.stdout + failed.stderr
        assert "bulk: sync FAILED, nothing was changed" in failed.stderr and "Traceback" not in failed.stderr
        for text in says:
            assert text in failed.stderr, failed.stderr
        return failed.stderr

    def nothing_changed_since(self, before: dict) -> dict:
        """After the failed sync, a reconcile: the sync is recorded as failed, no principal changed state,
        the findings and the product lines (required, licensed, ...) are those of `before`."""
        cal_agent(self.config, "reconcile", check=True)
        after = self.report()
        assert after["drift"] == {"new": [], "resolved": [], "principals": []}
        assert after["directories"][0]["last_sync"]["status"] == "failed"
        assert after["directories"][0]["last_successful_sync"] == before["directories"][0]["last_successful_sync"]
        assert after["findings"] == before["findings"] and after["products"] == before["products"]
        return after

    def next_cycle_works(self, before: dict) -> None:
        """With the cause gone, the next cycle reads everything and reports no drift."""
        cal_agent(self.config, "run", "--once", check=True)
        again = self.report()
        assert again["directories"][0]["last_sync"]["status"] == "ok"
        assert again["directories"][0]["last_sync"]["computers"] == self.count
        assert again["drift"] == {"new": [], "resolved": [], "principals": []}
        assert again["findings"] == before["findings"] and again["products"] == before["products"]


def test_size_limit_exceeded_mid_read_changes_nothing(openldap, tmp_path):
    """The server stops a paged search at its size limit (the limited reader keeps slapd's default
    limit of 50 entries): the sync fails, names the limit, and changes nothing (issue 7)."""
    bulk = Bulk(openldap, tmp_path)
    before = bulk.first_cycle()
    bulk.bind_as(openldap.limited_reader_dn, openldap.limited_reader_password)
    bulk.failed_sync(["the search stopped early at the server's size limit", "olcLimits size.prtotal=unlimited"])
    bulk.nothing_changed_since(before)
    bulk.bind_as(openldap.reader_dn, openldap.reader_password)  # the reader exempted from the limit
    bulk.next_cycle_works(before)


def test_time_limit_exceeded_mid_read_changes_nothing(openldap_faults, tmp_path):
    """slapd's own time limit stops the read of the computers after 50 of 60: the timed reader may
    search for one second (olcLimits time=1) and pc50 takes the server two seconds to return
    (slapo-retcode errSleepTime).  Applied, that read would have made 9 licensed computers `missing`
    (too few for the departure guard to hold); instead the sync fails, says which limit to raise,
    and changes nothing; with the limit lifted the next cycle works (issue 7)."""
    bulk = Bulk(openldap_faults, tmp_path, fault_at=50, err_code=0, sleep_seconds=2)
    before = bulk.first_cycle()  # the unlimited reader waits the two seconds
    bulk.bind_as(openldap_faults.timed_reader_dn, openldap_faults.timed_reader_password)
    message = bulk.failed_sync(["the search stopped early at the server's time limit (timeLimitExceeded)",
                                "read is incomplete and was discarded"])
    assert "raise the server's time limit for the bind account" in message and "time=unlimited" in message
    bulk.nothing_changed_since(before)
    bulk.bind_as(openldap_faults.reader_dn, openldap_faults.reader_password)  # the admin lifts the limit
    bulk.next_cycle_works(before)


def test_a_referral_for_base_dn_changes_nothing_and_names_the_server(openldap, tmp_path):
    """The directory's OU has moved elsewhere and a referral object took its place: slapd answers
    the read with a referral (result code 10) instead of entries.  The sync fails, names the server
    it was referred to and what to change, and changes nothing (the 60 computers stay licensed,
    none `missing`); once the OU is back the next cycle works (issue 7)."""
    bulk = Bulk(openldap, tmp_path)
    before = bulk.first_cycle()
    rdn = bulk.base.split(",")[0]
    moved = openldap.rename(bulk.base, f"{rdn}-moved")
    elsewhere = f"ldap://dc2.example.com/{moved}"
    openldap.add_referral(bulk.base, elsewhere)
    try:
        message = bulk.failed_sync([f"the search stopped early at a referral to another server (referral to "
                                    f"{elsewhere}", "read is incomplete and was discarded"])
        assert "point directories[].url (and base_dn) there" in message
        bulk.nothing_changed_since(before)
    finally:
        openldap.delete(bulk.base)
        openldap.rename(moved, rdn)
    bulk.next_cycle_works(before)


def test_a_continuation_reference_inside_base_dn_changes_nothing(openldap, tmp_path):
    """Part of base_dn (an OU with 5 computers) is delegated to another server, a referral object in
    its place: slapd returns the other 55 plus a continuation reference (searchResultReference).
    The entries behind it were not read, so the sync must fail rather than make them `missing`."""
    bulk = Bulk(openldap, tmp_path, count=55)
    branch = openldap.add_ou("branch", bulk.base)
    for i in range(5):
        openldap.add(f"cn=br{i:02d},{branch}", ["device"], {"cn": f"br{i:02d}"})
    bulk.bind_as(openldap.reader_dn, openldap.reader_password)
    cal_agent(bulk.config, "run", "--once", check=True)
    before = bulk.report()
    assert before["directories"][0]["last_sync"]["computers"] == 60
    for i in range(5):
        openldap.delete(f"cn=br{i:02d},{branch}")
    openldap.delete(branch)
    openldap.add_referral(branch, f"ldap://dc2.example.com/{branch}")
    bulk.failed_sync(["held by another server", "ldap://dc2.example.com/", "set base_dn to a subtree"])
    bulk.nothing_changed_since(before)
    # Without the referral (the branch back on this server, its entries gone) the next sync works.
    openldap.delete(branch)
    cal_agent(bulk.config, "sync", check=True)


def test_a_far_future_shadow_expire_is_never_and_every_directory_syncs(openldap, tmp_path):
    """`shadowExpire: 2147483647` (INT_MAX, what some tools write for "never") is past year 9999:
    once it stopped the whole sync with an OverflowError traceback, left the run `running` and kept
    the next directory from being read.  Now the account reads as never expiring (still required)
    and both directories sync."""
    t = uuid.uuid4().hex[:4]
    config = tmp_path / "config.yaml"
    (tmp_path / "bind-password").write_text(openldap.reader_password + "\n")
    (tmp_path / "bind-password").chmod(0o600)
    (tmp_path / "inventory.yaml").write_text(yaml.safe_dump({"purchases": [], "assignments": []}))
    directories = []
    for name, shadow_expire in (("far", "2147483647"), ("near", None)):
        ou = openldap.add_ou(f"{name}-{t}")
        dn = openldap.add(f"uid={name}-{t},{ou}", ["inetOrgPerson", "posixAccount", "shadowAccount"], {
            "uid": f"{name}-{t}", "cn": name, "sn": name, "uidNumber": "7100", "gidNumber": "7100",
            "homeDirectory": f"/home/{name}"})
        if shadow_expire:
            openldap.modify(dn, {"shadowExpire": shadow_expire})
        directories.append({"name": name, "type": "ldap", "url": openldap.url, "base_dn": ou,
                            "bind_dn": openldap.reader_dn, "password_file": "bind-password",
                            "tls": {"ca_file": str(openldap.ca_file)}})
    config.write_text(yaml.safe_dump({
        "database": {"url": "sqlite:///state.db"}, "directories": directories, "inventory": "inventory.yaml",
        "requirements": [{"name": "all", "product": "windows-server", "version": "2022", "cal_type": "user",
                          "users": {}}],
        "reports": {"directory": "reports"}}))
    done = cal_agent(config, "run", "--once")
    assert "Traceback" not in done.stderr, done.stderr
    report = json.loads((tmp_path / "reports" / "latest.json").read_text())
    assert {d["name"]: d["last_sync"]["status"] for d in report["directories"]} == {"far": "ok", "near": "ok"}
    unlicensed = {(f["principal"]["directory"], f["principal"]["name"]) for f in report["findings"]
                  if f["kind"] == "unlicensed_user"}
    assert unlicensed == {("far", f"far-{t}"), ("near", f"near-{t}")}

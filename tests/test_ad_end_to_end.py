"""End to end against a real Samba AD DC, as an admin would use it: config file, read-only bind
account over LDAPS with certificate verification, `cal-agent` commands, JSON and HTML reports."""

from __future__ import annotations

import html
import json
import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from agent.config import parse_config, resolve_password
from agent.directory.ad import ActiveDirectoryReader, read_ranged_values

pytestmark = pytest.mark.samba


def cal_agent(config: Path, *args: str, check: bool = False) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "agent", "--config", str(config), *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "CAL_AGENT_CONFIG": ""})
    if check and proc.returncode != 0:
        raise AssertionError(f"cal-agent {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def grant_tombstone_read(dc, sam: str) -> None:
    """As docs/security.md tells AD admins: let the read-only account list CN=Deleted Objects."""
    script = Path(__file__).parent / "servers" / "grant_deleted_objects.py"
    subprocess.run(["/usr/bin/python3", "-P", str(script), str(dc.smb_conf), str(dc.smb_conf.parent.parent / "private" / "sam.ldb"),
                    dc.base_dn, sam], check=True, capture_output=True, timeout=120)


class Corp:
    """A small company built in a fresh OU of the shared DC, with unique names."""

    def __init__(self, dc, tmp: Path) -> None:
        self.dc = dc
        self.tag = uuid.uuid4().hex[:4]
        t = self.tag
        self.root = dc.add_ou(f"e2e-{t}")
        self.staff = dc.add_ou("Staff", self.root)
        self.contractors = dc.add_ou("Contractors", self.root)
        self.kiosks = dc.add_ou("Kiosks", self.root)
        self.groups = dc.add_ou("Groups", self.root)
        self.n = {k: f"{k}-{t}" for k in ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "svcbak",
                                          "<b>x</b>")}
        dn = {}
        dn["alice"] = dc.add_user(self.n["alice"], self.staff, display_name="Alice Archer")
        dn["bob"] = dc.add_user(self.n["bob"], self.staff, display_name="Bob <script>alert(1)</script>")
        dn["grace"] = dc.add_user(self.n["grace"], self.staff, display_name="Grace Hopper")
        dn["dave"] = dc.add_user(self.n["dave"], self.staff, display_name="Dave Disabled", disabled=True)
        dn["erin"] = dc.add_user(self.n["erin"], self.staff, display_name="Erin Expired",
                                 account_expires=datetime.now(timezone.utc) - timedelta(days=5))
        dn["frank"] = dc.add_user(self.n["frank"], self.staff, display_name="Frank Leaver")
        dn["svcbak"] = dc.add_user(self.n["svcbak"], self.staff, display_name="Backup service")
        dn["carol"] = dc.add_user(self.n["carol"], self.contractors, display_name="Carol Contractor")
        self.dn = dn
        # Nested groups: staff > eng > apps > bob; alice directly in staff.
        apps = dc.add_group(f"GG-Apps-{t}", self.groups, [dn["bob"]])
        eng = dc.add_group(f"GG-Eng-{t}", self.groups, [apps])
        dc.add_group(f"GG-Staff-{t}", self.groups, [dn["alice"], eng])
        dc.add_group(f"svc-accounts-{t}", self.groups, [dn["svcbak"]])
        # carol is in GG-Primary only through primaryGroupID (not in its `member`).
        primary = dc.add_group(f"GG-Primary-{t}", self.groups)
        dc.set_primary_group(dn["carol"], primary)
        self.primary_group = primary
        dc.add_computer(f"KIOSK1-{t.upper()}", self.kiosks, dns_host_name=f"kiosk1-{t.upper()}.corp.example.com",
                        operating_system="Windows 11 Enterprise")
        dc.add_computer(f"KIOSK2-{t.upper()}", self.kiosks, operating_system="Windows 11 Enterprise")
        self.reader_upn, self.reader_password = dc.create_readonly_account(f"calread-{t}", "R3ad-Only-Pass!" + t)
        grant_tombstone_read(dc, f"calread-{t}")

        self.tmp = tmp
        secret = tmp / "bind-password"
        secret.write_text(self.reader_password + "\n")
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
                {"purchase": "PO-KIOSK", "principal": f"KIOSK1-{t.upper()}$", "assigned_on": "2024-02-01"},
            ],
        }))
        self.config = tmp / "config.yaml"
        self.config_data = {
            "database": {"url": "sqlite:///state.db"},
            "directories": [{
                "name": "corp", "type": "active_directory", "url": dc.url, "base_dn": dc.base_dn,
                "bind_dn": self.reader_upn, "password_file": "bind-password",
                "tls": {"ca_file": str(dc.ca_file)}, "inactive_after_days": 90,
            }],
            "inventory": "inventory.yaml",
            "requirements": [
                {"name": "staff-windows", "product": "windows-server", "version": "2022", "cal_type": "user",
                 "users": {"ou": self.staff, "group": "Domain Users", "exclude": [f"svc-accounts-{t}"]}},
                {"name": "kiosks", "product": "windows-server", "version": "2022", "cal_type": "device",
                 "computers": {"ou": self.kiosks}},
                {"name": "remote", "product": "rds", "version": "2022", "cal_type": "user",
                 "users": {"group": f"GG-Primary-{t}"}},
                {"name": "nested", "product": "exchange-standard", "version": "2019", "cal_type": "user",
                 "users": {"group": f"GG-Staff-{t}"}},
            ],
            "reports": {"directory": "reports"},
        }
        self.write_config()

    def write_config(self, **directory_overrides) -> None:
        data = json.loads(json.dumps(self.config_data))
        data["directories"][0].update(directory_overrides)
        self.config.write_text(yaml.safe_dump(data))


@pytest.fixture(scope="module")
def corp(samba_dc, tmp_path_factory):
    return Corp(samba_dc, tmp_path_factory.mktemp("corp"))


def findings_by_kind(report: dict) -> dict[str, list[tuple]]:
    out: dict[str, list[tuple]] = {}
    for f in report["findings"]:
        who = f["principal"]["name"] if f["principal"] else f["purchase"]
        out.setdefault(f["kind"], []).append((f["product"], f["cal_type"], who, f["reason"]))
    return {k: sorted(v) for k, v in out.items()}


def test_full_cycle_gives_the_findings_an_auditor_would_raise(corp):
    t, n = corp.tag, corp.n
    run = cal_agent(corp.config, "run", "--once")
    assert run.returncode == 0, run.stderr
    # frank leaves after the first sync: AD keeps a tombstone, the agent must call him deleted.
    corp.dc.delete(corp.dn["frank"])
    cal_agent(corp.config, "sync", check=True)
    reconcile = cal_agent(corp.config, "reconcile", "--check")
    assert reconcile.returncode == 1, reconcile.stdout + reconcile.stderr
    report = json.loads(cal_agent(corp.config, "report", "--format", "json", check=True).stdout)
    assert report["compliant"] is False
    got = findings_by_kind(report)
    assert got["unlicensed_user"] == sorted([
        ("windows-server", "user", n["bob"], None),        # Domain Users (primary group 513) + OU
        ("windows-server", "user", n["grace"], None),
        ("rds", "user", n["carol"], None),                 # member only through primaryGroupID
        ("exchange-standard", "user", n["alice"], None),   # direct member of GG-Staff
        ("exchange-standard", "user", n["bob"], None),     # member of GG-Staff through two nested groups
    ])
    assert got["unlicensed_device"] == [("windows-server", "device", f"KIOSK2-{t.upper()}", None)]
    assert got["stale_assignment"] == sorted([
        ("windows-server", "user", n["dave"], "disabled"),
        ("windows-server", "user", n["frank"], "deleted"),
    ])
    assert got["orphan_assignment"] == [("windows-server", "user", f"ghost-{t}", None)]
    assert got["over_assigned"] == [("windows-server", "user", "PO-WS", None)]
    products = {(p["product"], p["version"], p["cal_type"]): (p["required"], p["owned"], p["assigned"], p["licensed"],
                                                              p["shortfall"])
                for p in report["products"]}
    # staff-windows: alice, bob, grace (dave disabled, erin expired, frank deleted, svc excluded).
    # Four seats of PO-WS are handed out (alice, dave, frank, ghost) but only alice is licensed.
    assert products[("windows-server", "2022", "user")] == (3, 2, 4, 1, 1)
    assert products[("windows-server", "2022", "device")] == (2, 1, 1, 1, 1)
    assert products[("rds", "2022", "user")] == (1, 0, 0, 0, 1)
    assert sorted(f["product"] + "/" + f["cal_type"] for f in report["findings"] if f["kind"] == "shortfall") == [
        "exchange-standard/user", "rds/user", "windows-server/device", "windows-server/user"]
    # The drift since the first run is exactly frank's departure.
    new = {(f["kind"], f["principal"]["name"] if f["principal"] else None) for f in report["drift"]["new"]}
    assert new == {("stale_assignment", n["frank"])}
    assert report["drift"]["resolved"] == []
    # erin is expired, so she is not required and has no finding.
    assert all(not f["principal"] or f["principal"]["name"] != n["erin"] for f in report["findings"])

    html_text = cal_agent(corp.config, "report", "--format", "html", check=True).stdout
    assert "Not compliant" in html_text
    for name in (n["bob"], n["grace"], n["carol"], f"KIOSK2-{t.upper()}", n["dave"], f"ghost-{t}"):
        assert html.escape(name) in html_text
    assert "<script>alert(1)</script>" not in html_text and "&lt;script&gt;alert(1)&lt;/script&gt;" in html_text

    # A second sync + reconcile with no change: no drift.
    cal_agent(corp.config, "sync", check=True)
    cal_agent(corp.config, "reconcile")
    again = json.loads(cal_agent(corp.config, "report", "--format", "json", check=True).stdout)
    assert again["drift"] == {"new": [], "resolved": [], "principals": []}
    assert again["summary"] == report["summary"]
    assert (corp.tmp / "reports" / "latest.html").stat().st_mode & 0o077 == 0


def test_ranged_member_reads_follow_until_the_end(corp, samba_dc):
    members = [samba_dc.add_user(f"r{i:02d}-{corp.tag}", corp.staff) for i in range(35)]
    group = samba_dc.add_group(f"GG-Big-{corp.tag}", corp.groups, members)
    config = parse_config(yaml.safe_load(corp.config.read_text()), base_dir=corp.tmp)
    reader = ActiveDirectoryReader(config.directories[0], resolve_password(config.directories[0]))
    conn = reader.connect()
    try:
        values = read_ranged_values(conn, group, "member", 0, 10)
    finally:
        conn.unbind()
    assert len(values) == 35 and len(set(values)) == 35
    # and the full reader sees every member too
    entries = {e.name: e for e in reader.read()}
    assert len(entries[f"GG-Big-{corp.tag}"].members) == 35


def test_untrusted_certificate_is_refused_and_nothing_changes(corp):
    cal_agent(corp.config, "sync", check=True)
    corp.write_config(tls={"verify": True})  # no ca_file: the test CA is not trusted by the system
    try:
        proc = cal_agent(corp.config, "sync")
        assert proc.returncode == 3, proc.stderr
        assert "certificate verify failed" in proc.stderr and "tls.ca_file" in proc.stderr
        assert "Traceback" not in proc.stderr
        status = json.loads(cal_agent(corp.config, "report", "--format", "json", check=True).stdout)
        assert status["findings"]  # the previous findings are still there
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
    assert corp.reader_password not in proc.stdout + proc.stderr


def test_starttls_url_works_with_verification(corp, samba_dc):
    corp.write_config(url=samba_dc.starttls_url)
    try:
        proc = cal_agent(corp.config, "test-connection", check=True)
        assert "tls: starttls" in proc.stdout
    finally:
        corp.write_config()


def test_debug_logs_show_reproducible_queries_without_password(corp):
    proc = cal_agent(corp.config, "--log-level", "debug", "--log-format", "json", "sync", check=True)
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    queries = [line["query"] for line in lines if line.get("event") == "ldap.search"]
    assert any("ldapsearch -H ldaps://localhost:636" in q and "-W" in q for q in queries)
    assert corp.reader_password not in proc.stderr + proc.stdout
    summary = [line for line in lines if line.get("event") == "sync.finished"]
    assert len(summary) == 1 and summary[0]["users"] >= 8


def test_without_tombstone_rights_a_deleted_user_is_missing_not_forgotten(corp, samba_dc):
    # A plain Domain User cannot list CN=Deleted Objects (AD's default ACL): after a complete read
    # the leaver is "missing", still stale, never silently dropped.
    t = corp.tag
    upn, password = samba_dc.create_readonly_account(f"plain-{t}", "Plain-Pass!" + t)
    (corp.tmp / "plain").write_text(password)
    (corp.tmp / "plain").chmod(0o600)
    leaver = samba_dc.add_user(f"henry-{t}", corp.staff)
    corp.write_config(bind_dn=upn, password_file="plain")
    original = corp.inventory.read_text()
    try:
        inventory = yaml.safe_load(original)
        inventory["assignments"].append({"purchase": "PO-WS", "principal": f"henry-{t}"})
        corp.inventory.write_text(yaml.safe_dump(inventory))
        cal_agent(corp.config, "sync", check=True)
        samba_dc.delete(leaver)
        cal_agent(corp.config, "run", "--once")
        report = json.loads(cal_agent(corp.config, "report", "--format", "json", check=True).stdout)
        stale = {f["principal"]["name"]: f["reason"] for f in report["findings"] if f["kind"] == "stale_assignment"}
        assert stale[f"henry-{t}"] == "missing"
    finally:
        corp.inventory.write_text(original)
        corp.write_config()


def test_test_connection_names_a_wrong_base_dn(corp, samba_dc):
    corp.write_config(base_dn=f"OU=nowhere-{corp.tag},{samba_dc.base_dn}")
    try:
        proc = cal_agent(corp.config, "test-connection")
        assert proc.returncode == 3
        assert f"base_dn 'OU=nowhere-{corp.tag},{samba_dc.base_dn}' cannot be read" in proc.stdout
        assert "hint: check directories[].base_dn" in proc.stdout
    finally:
        corp.write_config()

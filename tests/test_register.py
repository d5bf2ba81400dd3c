"""The licence register in the database: import, assign/release/transfer with history, export,
policies.  Real `cal-agent` processes on a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import subprocess
import uuid
from datetime import date, timedelta
from pathlib import Path

import pytest
import yaml

from agent.cli import run_cli

BASE = "DC=acme,DC=example"
AS_OF = "2026-11-01T00:00:00Z"


def ldif_user(name: str, *, disabled: bool = False, ou: str = "Staff", display: str | None = None) -> str:
    guid = uuid.uuid5(uuid.NAMESPACE_DNS, name).bytes_le
    shown = [f"displayName:: {base64.b64encode(display.encode()).decode()}"] if display else []
    return "\n".join([
        f"dn: CN={name},OU={ou},{BASE}", "objectClass: top", "objectClass: person", "objectClass: user",
        *shown, f"sAMAccountName: {name}", f"userAccountControl: {514 if disabled else 512}",
        "whenCreated: 20260901000000.0Z", "pwdLastSet: 134050000000000000",
        f"objectGUID:: {base64.b64encode(guid).decode()}", ""])


def ldif_group(name: str, members: list[str]) -> str:
    guid = uuid.uuid5(uuid.NAMESPACE_DNS, "group-" + name).bytes_le
    return "\n".join([f"dn: CN={name},OU=Groups,{BASE}", "objectClass: top", "objectClass: group",
                      f"sAMAccountName: {name}", *[f"member: CN={m},OU=Staff,{BASE}" for m in members],
                      f"objectGUID:: {base64.b64encode(guid).decode()}", ""])


class Site:
    """A small company: an LDIF export, an inventory file and a config, in a folder."""

    def __init__(self, folder: Path, database_url: str) -> None:
        self.folder = folder
        staff = ["ann", "bob", "cat", "dan", "eve"]
        (folder / "acme.ldif").write_text("\n".join(
            [ldif_user(n) for n in staff] + [ldif_user("lee", disabled=True, ou="Leavers"),
                                              ldif_group("staff", staff)]) + "\n")
        self.inventory = {
            "purchases": [
                {"id": "PO-1", "product": "windows-server", "version": "2022", "cal_type": "user", "quantity": 4,
                 "purchased_on": date(2026, 1, 10), "invoice": "INV-1"},
                {"id": "PO-2", "product": "windows-server", "version": "2022", "cal_type": "user", "quantity": 2,
                 "purchased_on": date(2026, 6, 1), "invoice": "INV-2"},
            ],
            "assignments": [
                {"purchase": "PO-1", "principal": "ann", "assigned_on": date(2026, 2, 1)},
                {"purchase": "PO-1", "principal": "bob", "assigned_on": date(2026, 2, 1)},
                {"purchase": "PO-1", "principal": "lee", "assigned_on": date(2026, 2, 1)},
            ],
        }
        self.write_inventory()
        self.config = folder / "config.yaml"
        self.config.write_text(yaml.safe_dump({
            "database": {"url": database_url},
            "directories": [{"name": "acme", "type": "ldif", "path": "acme.ldif", "as_of": AS_OF}],
            "inventory": "inventory.yaml",
            "requirements": [{"name": "staff", "product": "windows-server", "version": "2022", "cal_type": "user",
                              "users": {"group": "staff"}}],
            "policies": {"reclaim": True, "auto_assign": True, "reclaim_after_days": 0},
            "reports": {"directory": "reports"},
        }))

    def write_inventory(self) -> None:
        (self.folder / "inventory.yaml").write_text(yaml.safe_dump(self.inventory, sort_keys=False))

    def run(self, *args: str, expect: int | None = 0) -> subprocess.CompletedProcess:
        """`cal-agent --config ... ARGS`, in this process (the CLI's own entry point, exit-code
        mapping included); test_demo and test_ad_end_to_end run real processes."""
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run_cli(["--config", str(self.config), "--log-level", "error", *args])
        proc = subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())
        if expect is not None:
            assert proc.returncode == expect, f"{args}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc

    def report(self) -> dict:
        self.run("reconcile")
        return json.loads(self.run("report").stdout)

    def findings(self, kind: str) -> list[tuple]:
        return sorted((f["principal"]["name"] if f["principal"] else f["purchase"], f["purchase"])
                      for f in self.report()["findings"] if f["kind"] == kind)


@pytest.fixture
def site(tmp_path, database_url):
    s = Site(tmp_path, database_url)
    s.run("sync")
    return s


def test_changes_are_refused_while_the_register_is_the_file(site):
    proc = site.run("assign", "PO-1", "cat", expect=2)
    assert "run `cal-agent inventory import`" in proc.stderr
    assert site.report()["inventory"]["source"] == "file"


def test_import_is_idempotent_and_makes_the_database_the_register(site):
    first = site.run("inventory", "import")
    assert "2 purchases added" in first.stdout and "3 assignments added" in first.stdout
    again = site.run("inventory", "import")
    assert "0 purchases added" in again.stdout and "0 assignments added" in again.stdout
    report = site.report()
    assert report["inventory"] == {"source": "database", "path": str(site.folder / "inventory.yaml"),
                                   "file_differs": False}
    history = json.loads(site.run("history", "--format", "json").stdout)
    assert [e["action"] for e in history].count("import") == 2
    assert [e["action"] for e in history].count("assign") == 3


def test_a_differing_purchase_is_a_conflict_unless_update_and_update_is_recorded(site):
    site.run("inventory", "import")
    site.inventory["purchases"][0]["quantity"] = 5
    site.inventory["assignments"].append({"purchase": "PO-2", "principal": "cat", "assigned_on": date(2026, 7, 1)})
    site.write_inventory()
    conflict = site.run("inventory", "import", expect=2)
    assert "PO-1" in conflict.stderr and "quantity" in conflict.stderr and "nothing was changed" in conflict.stderr
    assert site.findings("unlicensed_user") == [("cat", None), ("dan", None), ("eve", None)]  # cat not added
    assert site.report()["inventory"]["file_differs"] is True
    site.run("inventory", "import", "--update")
    (update,) = [e for e in json.loads(site.run("history", "PO-1", "--format", "json").stdout)
                 if e["action"] == "update_purchase"]
    assert update["details"] == {"before": {"quantity": 4}, "after": {"quantity": 5}}
    assert site.findings("unlicensed_user") == [("dan", None), ("eve", None)]


def test_assign_release_transfer_leave_an_audit_trail(site):
    site.run("inventory", "import")
    site.run("assign", "PO-2", "cat", "--reason", "new starter", "--by", "alice.admin")
    site.run("release", "PO-1", "lee", "--reason", "left in October", "--why", "departed", "--by", "alice.admin")
    site.run("transfer", "PO-2", "cat", "dan", "--reason", "cat moved to a kiosk role", "--why", "other",
             "--by", "bob.admin")
    trail = json.loads(site.run("history", "cat", "--format", "json").stdout)
    assert [(e["action"], e["actor"], e["principal"], e["to"], e["reason"]) for e in trail] == [
        ("assign", "alice.admin", "cat", None, "new starter"),
        ("transfer", "bob.admin", "cat", "dan", "cat moved to a kiosk role"),
    ]
    assert "left in October" in site.run("history", "lee").stdout
    assert site.findings("stale_assignment") == []
    assert site.findings("unlicensed_user") == [("cat", None), ("eve", None)]


def test_unknown_principal_refused_unless_forced_and_over_allocation_recorded_with_a_warning(site):
    site.run("inventory", "import")
    unknown = site.run("assign", "PO-2", "zed", expect=2)
    assert "no user named 'zed'" in unknown.stderr and "--force" in unknown.stderr
    site.run("assign", "PO-2", "cat")
    site.run("assign", "PO-2", "dan")
    over = site.run("assign", "PO-2", "zed", "--force")
    assert "3 assignments for 2 seats" in over.stderr
    assert site.findings("over_assigned") == [("PO-2", "PO-2")]
    assert site.findings("orphan_assignment") == [("zed", "PO-2")]


def test_R06_a_seat_moved_twice_in_a_month_is_reported(site):
    site.run("inventory", "import")
    today = date.today()
    site.run("assign", "PO-2", "cat", "--on", str(today - timedelta(days=40)))
    site.run("transfer", "PO-2", "cat", "dan", "--reason", "x", "--on", str(today - timedelta(days=25)))
    second = site.run("transfer", "PO-2", "dan", "eve", "--reason", "y", "--on", str(today - timedelta(days=5)))
    assert "R06" in second.stderr
    assert site.findings("premature_reassignment") == [("dan", "PO-2"), ("eve", "PO-2")]


def test_export_then_import_changes_nothing(site):
    site.run("inventory", "import")
    site.run("assign", "PO-2", "cat")
    site.run("transfer", "PO-2", "cat", "dan", "--reason", "role change", "--why", "temporary_cover")
    exported = site.folder / "exported.yaml"
    site.run("inventory", "export", "--output", str(exported))
    assert exported.stat().st_mode & 0o077 == 0
    data = yaml.safe_load(exported.read_text())
    assert {(a["purchase"], a["principal"]) for a in data["assignments"]} == {
        ("PO-1", "ann"), ("PO-1", "bob"), ("PO-1", "lee"), ("PO-2", "dan")}
    assert [(t["from"], t["to"], t["reason"]) for t in data["transfers"]] == [("cat", "dan", "temporary_cover")]
    again = site.run("inventory", "import", str(exported))
    assert "0 purchases added, 0 updated, 0 assignments added, 0 transfers added" in again.stdout


def test_assignments_only_in_the_database_survive_a_reimport(site):
    site.run("inventory", "import")
    site.run("assign", "PO-2", "cat")
    proc = site.run("inventory", "import")
    assert "only in the database" in proc.stdout and "PO-2 cat" in proc.stdout
    assert ("cat", None) not in site.findings("unlicensed_user")


def test_plan_is_a_dry_run_and_apply_reclaims_leavers_and_assigns_with_history(site):
    site.run("inventory", "import")
    before = site.report()
    plan = site.run("plan")
    assert "would release a seat of PO-1 from lee" in plan.stdout
    assert "would assign a seat of PO-1 to cat" in plan.stdout
    assert site.report()["findings"] == [dict(f, **{}) for f in before["findings"]]  # nothing changed
    applied = site.run("plan", "--apply")
    assert "changes made and recorded" in applied.stdout
    after = site.report()
    kinds = {f["kind"] for f in after["findings"]}
    assert "stale_assignment" not in kinds and "unlicensed_user" not in kinds and after["compliant"]
    trail = json.loads(site.run("history", "--format", "json").stdout)
    policy = [(e["action"], e["principal"], e["actor"]) for e in trail if e["actor"] == "cal-agent policy"]
    assert ("release", "lee", "cal-agent policy") in policy
    assert {p for a, p, _ in policy if a == "assign"} == {"cat", "dan", "eve"}
    assert site.run("plan").stdout.strip() == "nothing to change"


def test_R04_advice_prices_the_cheapest_mix_from_purchase_unit_prices(site):
    site.inventory["purchases"][0]["unit_price"] = 45
    site.inventory["purchases"].append({"id": "PO-D", "product": "windows-server", "version": "2022",
                                        "cal_type": "device", "quantity": 1, "invoice": "INV-3", "unit_price": 35})
    site.write_inventory()
    usage = site.folder / "usage.csv"
    # PC1 is a shared counter PC (one device CAL beats three user CALs); dan roams over three PCs.
    usage.write_text("user,computer\nACME\\ann,PC1$\nbob,PC1\ncat,pc1\ndan,PC2\ndan,PC3\ndan,PC4\n")
    (advice,) = json.loads(site.run("advise", "--usage", str(usage), "--format", "json").stdout)
    assert (advice["users_to_license"], advice["devices_to_license"]) == (["dan"], ["pc1"])
    assert (advice["cost"], advice["cost_all_user"], advice["cost_all_device"], advice["saving"]) == (
        "80", "180", "140", "60")
    assert advice["device_cals_to_buy"] == 0  # PO-D's one device CAL is enough
    text = site.run("advise", "--usage", str(usage)).stdout
    assert "saves 60" in text
    no_price = site.run("advise", "--usage", str(usage), "--price-user", "45", "--product", "rds", expect=2)
    assert "no unit_price for device CALs of rds" in no_price.stderr

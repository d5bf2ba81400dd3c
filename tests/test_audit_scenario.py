"""Tried as a new user would: a small estate with mixed versions, Enterprise CALs, a suite, RDS
users, an expiring antivirus subscription, a missing invoice and a seat moved twice in a month.
The findings are the ones an auditor would raise, in the JSON and the HTML report."""

from __future__ import annotations

import html
import json
from datetime import date, timedelta

import pytest
import yaml

from tests.test_register import Site, ldif_group, ldif_user

TODAY = date.today()


@pytest.fixture
def estate(tmp_path, database_url):
    site = Site(tmp_path, database_url)
    staff = ["ann", "bob", "cat", "dan", "eve"]
    (tmp_path / "acme.ldif").write_text("\n".join(
        [ldif_user(n) for n in staff] + [ldif_user("lee", disabled=True, ou="Leavers"),
                                          ldif_group("staff", staff), ldif_group("rds-users", ["ann", "bob", "cat"]),
                                          ldif_group("archive", ["ann", "bob"])]) + "\n")

    def buy(pid, product, version, quantity, holders, **extra):
        purchase = {"id": pid, "product": product, "version": version, "cal_type": extra.pop("cal_type", "user"),
                    "quantity": quantity, "purchased_on": date(2025, 1, 15), "invoice": f"INV-{pid}", **extra}
        if purchase["invoice"] is None:
            del purchase["invoice"]
        return purchase, [{"purchase": pid, "principal": h, "assigned_on": date(2025, 2, 1)} for h in holders]

    rows = [
        buy("WS22", "windows-server", "2022", 4, ["ann", "cat"]),
        buy("WS19", "windows-server", "2019", 5, ["bob"]),                    # R07: does not cover 2022
        buy("CORE", "core-cal-suite", "2022", 1, ["eve"], invoice=None),      # R16; no proof of purchase
        buy("EXS", "exchange-standard", "2019", 4, ["ann", "bob", "cat", "lee"]),
        buy("EXE", "exchange-enterprise", "2019", 2, ["ann", "cat"]),         # R13: base held by both
        buy("RDS19", "rds", "2019", 3, ["ann", "bob"]),                       # R10: 2019 RDS CALs, 2022 hosts
        buy("RDS22", "rds", "2022", 1, ["cat"]),
        buy("AV", "eset-endpoint", "11", 40, [], cal_type="device", activation="vendor_portal", owner="lee",
            expires_on=TODAY + timedelta(days=20)),
    ]
    site.inventory = {
        "products": [{"key": "eset-endpoint", "name": "ESET Endpoint Security", "vendor": "ESET",
                      "kind": "subscription", "cal_types": ["device"]}],
        "purchases": [p for p, _ in rows],
        "assignments": [a for _, held in rows for a in held],
    }
    site.write_inventory()
    config = yaml.safe_load(site.config.read_text())
    config["requirements"] = [
        {"name": "staff-windows", "product": "windows-server", "version": "2022", "cal_type": "user",
         "users": {"group": "staff"}},
        {"name": "remote-desktop", "product": "rds", "version": "2022", "cal_type": "user",
         "users": {"group": "rds-users"}},
        {"name": "mail", "product": "exchange-standard", "version": "2019", "cal_type": "user",
         "users": {"group": "staff"}},
        {"name": "archive", "product": "exchange-enterprise", "version": "2019", "cal_type": "user",
         "users": {"group": "archive"}},
    ]
    config.pop("policies")
    site.config.write_text(yaml.safe_dump(config))
    site.run("sync")
    site.run("inventory", "import")
    # The seat moved twice in a month: dan gets it, passes it to eve, and gets it back.
    site.run("assign", "WS22", "dan", "--on", str(TODAY - timedelta(days=40)), "--reason", "new starter")
    site.run("transfer", "WS22", "dan", "eve", "--on", str(TODAY - timedelta(days=25)), "--reason", "desk swap")
    site.run("transfer", "WS22", "eve", "dan", "--on", str(TODAY - timedelta(days=5)), "--reason", "swap back")
    return site


def test_the_findings_are_exactly_what_an_auditor_would_raise(estate):
    estate.run("reconcile")
    report = json.loads(estate.run("report").stdout)
    got = sorted((f["kind"], f["principal"]["name"] if f["principal"] else None, f["product"], f["purchase"],
                  f["reason"]) for f in report["findings"])
    assert got == sorted([
        ("unlicensed_user", "bob", "windows-server", None, None),            # holds only a 2019 CAL
        ("version_mismatch", "bob", "windows-server", "WS19", "2019"),       # R07
        ("unlicensed_user", "ann", "rds", None, None),                       # R10
        ("unlicensed_user", "bob", "rds", None, None),
        ("version_mismatch", "ann", "rds", "RDS19", "2019"),
        ("version_mismatch", "bob", "rds", "RDS19", "2019"),
        ("shortfall", None, "rds", None, None),                              # 3 RDS users, one 2022 CAL
        ("unlicensed_user", "dan", "exchange-standard", None, None),        # eve is covered by the suite
        ("unlicensed_user", "bob", "exchange-enterprise", None, None),
        ("stale_assignment", "lee", "exchange-standard", "EXS", "disabled"),
        ("premature_reassignment", "eve", "windows-server", "WS22", "other"),  # R06, held 15 days
        ("premature_reassignment", "dan", "windows-server", "WS22", "other"),  # R06, held 20 days
        ("missing_evidence", None, "core-cal-suite", "CORE", "none"),         # R36
        ("expiring", None, "eset-endpoint", "AV", "30"),
        ("owner_departed", "lee", "eset-endpoint", "AV", "disabled"),
    ])
    assert report["compliant"] is False
    assert report["summary"]["shortfall"] == 2
    rows = {(p["product"], p["version"], p["cal_type"]): (p["required"], p["owned"], p["licensed"])
            for p in report["products"]}
    assert rows[("windows-server", "2022", "user")] == (5, 5, 4)  # 4 WS22 + the Core CAL Suite
    assert rows[("rds", "2022", "user")] == (3, 1, 1)


def test_the_html_report_shows_each_finding_group_with_the_people_escaped(estate):
    estate.run("reconcile")
    page = estate.run("report", "--format", "html").stdout
    for heading in ("Unlicensed users", "CALs of an older version", "Shortfall", "Stale assignments",
                    "Seats moved too early", "Missing proof of purchase", "Licences expiring soon",
                    "Licences owned by departed accounts"):
        assert html.escape(heading) in page, heading
    assert "ESET Endpoint Security" in page and "R06" in page
    assert "15 days after dan got it" in page and "20 days after eve got it" in page


def test_audit_pack_counts_match_the_json_report(estate):
    import openpyxl

    estate.run("reconcile")
    report = json.loads(estate.run("report").stdout)
    out = estate.run("audit-pack", "--output", str(estate.folder / "pack"))
    assert "MANIFEST.txt SHA-256" in out.stdout
    book = openpyxl.load_workbook(estate.folder / "pack" / "audit-pack.xlsx")
    sheet = book["Products"]
    rows = list(sheet.iter_rows(values_only=True))
    header = list(rows[0])
    got = {(r[header.index("product")], r[header.index("version")], r[header.index("cal_type")]):
           tuple(r[header.index(c)] for c in ("required", "owned", "assigned", "licensed", "free", "shortfall"))
           for r in rows[1:] if r[header.index("product")] not in (None, "total")}
    want = {(p["product"], p["version"], p["cal_type"]):
            tuple(p[c] for c in ("required", "owned", "assigned", "licensed", "free", "shortfall"))
            for p in report["products"]}
    assert got == want
    findings = list(book["Findings"].iter_rows(values_only=True))
    assert len(findings) - 1 == len(report["findings"])
    history = list(book["History"].iter_rows(values_only=True))
    assert any("transfer" in (cell or "") for row in history for cell in row if isinstance(cell, str))

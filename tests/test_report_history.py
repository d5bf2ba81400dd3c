"""Report history: runs, report --diff, retention, and the report's drift of principals, leavers,
per-user licences and trend (JSON and HTML)."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import update

from agent.config import load_config
from agent.engine import open_store, prune_runs
from agent.store.models import Run
from tests.test_register import Site, ldif_group, ldif_user


@pytest.fixture
def site(tmp_path):
    s = Site(tmp_path, f"sqlite:///{tmp_path}/state.db")
    s.run("run", "--once")
    return s


def rewrite_ldif(site: Site, *, staff: list[str], disabled: list[str], extra: str = "") -> None:
    users = [ldif_user(n) for n in staff] + [ldif_user(n, disabled=True, ou="Leavers") for n in disabled]
    (site.folder / "acme.ldif").write_text("\n".join(users + [ldif_group("staff", staff), extra]) + "\n")


def test_second_run_lists_joiners_leavers_and_moves_and_the_html_shows_them(site):
    # dan leaves (disabled and moved to Leavers), fay joins, bob is moved to another OU.
    staff = ["ann", "bob", "cat", "eve", "fay"]
    rewrite_ldif(site, staff=staff, disabled=["lee", "dan"])
    text = (site.folder / "acme.ldif").read_text().replace("CN=bob,OU=Staff", "CN=bob,OU=Sales")
    (site.folder / "acme.ldif").write_text(text)
    site.run("run", "--once")
    report = json.loads(site.run("report").stdout)
    changes = sorted((c["event"], c["name"]) for c in report["drift"]["principals"])
    assert changes == [("disabled", "dan"), ("joined", "fay"), ("moved", "bob"), ("moved", "dan")]
    page = site.run("report", "--format", "html").stdout
    section = page[page.index('id="directory-changes"'):page.index('id="leavers"')]
    assert "fay" in section and "Joined" in section and "OU=Sales" in section
    leavers = page[page.index('id="leavers"'):page.index('id="findings"')]
    assert "lee" in leavers and "PO-1" in leavers
    licences = report["licences"]
    lee = next(e for e in licences if e["principal"]["name"] == "lee")
    assert lee["holds"] == [{"purchase": "PO-1", "product": "windows-server", "version": "2022", "cal_type": "user"}]
    assert lee["needs"] == []
    eve = next(e for e in licences if e["principal"]["name"] == "eve")
    assert eve["needs"] == [{"product": "windows-server", "version": "2022", "cal_type": "user", "licensed": False}]


def test_trend_chart_is_drawn_from_the_second_run_without_scripts(site):
    first = site.run("report", "--format", "html").stdout
    assert "The trend appears from the second run on" in first
    site.run("run", "--once")
    site.run("run", "--once")
    report = json.loads(site.run("report").stdout)
    assert [t["run"] for t in report["trend"]] == [1, 2, 3]
    page = site.run("report", "--format", "html").stdout
    trend = page[page.index('id="trend"'):page.index('id="drift"')]
    assert "<svg" in trend and "Shortfall (CALs to buy)" in trend
    assert "<script" not in page.lower()
    assert not re.search(r"""(?:src|href)=["']https?:""", page)  # self-contained: nothing fetched


def test_runs_lists_history_and_report_diff_names_new_and_resolved(site):
    rewrite_ldif(site, staff=["bob", "cat", "dan", "eve"], disabled=["lee", "ann"])
    site.run("run", "--once")
    listing = site.run("runs").stdout.splitlines()
    assert len(listing) == 3 and "NOT COMPLIANT" in listing[1]
    diff = json.loads(site.run("report", "--diff", "1", "2", "--format", "json").stdout)
    assert sorted((f["kind"], f["principal"]["name"]) for f in diff["new"]) == [("stale_assignment", "ann")]
    assert [f["kind"] for f in diff["resolved"]] == []
    text = site.run("report", "--diff", "1", "2", "--format", "text").stdout
    assert text.startswith("run 1 -> run 2: 1 new, 0 resolved")
    missing = site.run("report", "--diff", "1", "9", expect=5)
    assert "no run 9" in missing.stderr


def test_retention_deletes_old_runs_and_their_files_but_keeps_the_two_newest(site):
    for _ in range(3):
        site.run("run", "--once")
    config = load_config(site.config)
    store = open_store(config)
    old = datetime.now(timezone.utc) - timedelta(days=500)
    with store.session() as session:
        session.execute(update(Run).values(created_at=old))  # every run is old now
    reports = site.folder / "reports"
    assert (reports / "run-000001.html").exists()
    deleted = prune_runs(config, store)
    assert deleted == [1, 2]
    assert sorted(p.name for p in reports.glob("run-*.json")) == ["run-000003.json", "run-000004.json"]
    assert [r["run"] for r in json.loads(site.run("runs", "--format", "json").stdout)] == [3, 4]
    cfg = yaml.safe_load(site.config.read_text())
    cfg["reports"]["keep_days"] = None
    site.config.write_text(yaml.safe_dump(cfg))
    assert prune_runs(load_config(site.config), store) == []


def test_exports_xlsx_and_products_csv_neutralise_formulas(tmp_path):
    import csv
    import io

    import openpyxl

    s = Site(tmp_path, f"sqlite:///{tmp_path}/state.db")
    staff = ["ann", "bob", "cat", "dan", "eve"]
    users = [ldif_user(n) for n in staff if n != "dan"] + [ldif_user("dan", display='=HYPERLINK("http://x","y")')]
    (tmp_path / "acme.ldif").write_text("\n".join(users + [ldif_group("staff", staff)]) + "\n")
    s.run("run", "--once")
    report = json.loads(s.run("report").stdout)
    s.run("report", "--format", "xlsx", "--output", str(tmp_path / "r.xlsx"))
    assert (tmp_path / "r.xlsx").stat().st_mode & 0o077 == 0
    book = openpyxl.load_workbook(tmp_path / "r.xlsx")
    assert book.sheetnames == ["Products", "Findings"]
    cells = [c for row in book["Findings"].iter_rows() for c in row]
    assert not any(c.data_type == "f" for c in cells)
    assert "'=HYPERLINK(\"http://x\",\"y\")" in [c.value for c in cells]
    products = list(csv.DictReader(io.StringIO(s.run("report", "--format", "products-csv").stdout)))
    assert [(p["product"], int(p["required"]), int(p["shortfall"])) for p in products] == [
        (p["product"], p["required"], p["shortfall"]) for p in report["products"]]
    assert s.run("report", "--format", "xlsx", expect=2).stderr.count("--output") == 1


def test_drift_lists_new_findings_and_resolved_ones_in_full(tmp_path, database_url):
    # Drift compares finding keys with the previous run in SQL (run_findings, on either database)
    # and reads the previous stored report only for the resolved findings, which it lists in full.
    site = Site(tmp_path, database_url)
    site.run("run", "--once")
    first = json.loads(site.run("report").stdout)
    rewrite_ldif(site, staff=["ann", "bob", "cat", "dan", "fay", "gus"], disabled=["lee"])  # eve gone, fay+gus in
    site.run("run", "--once")
    second = json.loads(site.run("report").stdout)
    before = {f["key"]: f for f in first["findings"]}
    after = {f["key"]: f for f in second["findings"]}
    assert second["drift"]["new"] == [f for f in second["findings"] if f["key"] not in before]
    assert second["drift"]["resolved"] == [f for f in first["findings"] if f["key"] not in after]
    assert second["drift"]["new"] and second["drift"]["resolved"]  # the change did both
    assert all(f["message"] and f["severity"] for f in second["drift"]["resolved"])
    site.run("run", "--once")
    third = json.loads(site.run("report").stdout)
    assert third["drift"]["new"] == third["drift"]["resolved"] == []
    assert third["run"]["previous_id"] == second["run"]["id"]


def test_drift_from_a_previous_run_whose_finding_keys_were_not_kept_comes_from_its_report(tmp_path, database_url):
    # Drift compares keys in run_findings; a previous run without those rows (a store from before
    # them, rows deleted by hand) is compared through its stored report instead, with the same
    # result as `report --diff` of the two runs.
    from sqlalchemy import delete

    from agent.engine import diff_runs
    from agent.store.models import RunFinding

    site = Site(tmp_path, database_url)
    site.run("run", "--once")
    store = open_store(load_config(site.config))
    with store.session() as session:
        session.execute(delete(RunFinding).where(RunFinding.run_id == 1))
    rewrite_ldif(site, staff=["ann", "bob", "cat", "dan", "fay", "gus"], disabled=["lee"])
    site.run("run", "--once", expect=None)
    report = json.loads(site.run("report").stdout)
    diff = diff_runs(store, 1, 2)
    store.close()
    assert report["drift"]["new"] == diff["new"] and report["drift"]["resolved"] == diff["resolved"]
    assert report["drift"]["new"] and report["drift"]["resolved"]
    assert all(f["message"] for f in report["drift"]["resolved"])  # in full, out of run 1's report


def test_the_stored_report_is_the_json_report_gzipd_and_is_what_report_prints(site):
    # Each run keeps its report in the database; at 100,000 users that is ~90 MB of JSON a run, so
    # it is kept gzip'd: an admin can `gunzip` it, and `report --format json` prints it unchanged.
    import gzip

    from sqlalchemy import select

    from agent.reports.json_report import pretty_json

    printed = site.run("report", "--format", "json").stdout
    store = open_store(load_config(site.config))
    with store.session() as session:
        blob = session.scalars(select(Run.report_gz).order_by(Run.id.desc())).first()
    assert gzip.decompress(blob).decode() == printed
    assert printed == pretty_json(json.loads(printed)).decode()  # laid out as the whole report would be
    assert (site.folder / "reports" / "latest.json").read_text() == printed
    assert len(blob) * 4 < len(printed.encode())
    out = site.folder / "out.json"
    site.run("report", "--format", "json", "--output", str(out))
    assert out.read_text() == printed and json.loads(printed)["run"]["id"] == 1


_json = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.text(max_size=5),
                     lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=3), inner, max_size=4),
                     max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(report=st.dictionaries(st.text(max_size=4), _json, max_size=5), batch=st.integers(1, 4))
def test_the_report_text_made_in_pieces_is_the_whole_reports_text(report, batch):
    # The stored report is written in pieces (never 118 MB of text at once); the pieces must make
    # exactly the text of the report laid out whole: `report --format json` prints them unchanged.
    from agent.reports.json_report import pretty_chunks, pretty_json

    assert b"".join(pretty_chunks(report, batch=batch)) == pretty_json(report)


_finding = st.fixed_dictionaries({"key": st.text(max_size=6)}, optional={
    "message": st.text(alphabet=st.sampled_from(' \n{}[],:"\\ab\u2028é'), max_size=12),
    "principal": st.none() | st.dictionaries(st.text(max_size=3), _json, max_size=3),
    "details": _json})


@settings(max_examples=300, deadline=None)
@given(findings=st.lists(_finding, max_size=8), header=st.dictionaries(st.sampled_from(["run", "summary", "products"]),
                                                                       _json, max_size=3),
       wanted=st.sets(st.text(max_size=6), max_size=4), batch=st.integers(1, 3))
def test_findings_read_one_at_a_time_out_of_a_stored_report_are_those_it_parses_to(findings, header, wanted, batch):
    # Drift's resolved findings and alerting's baseline are read out of the stored text a finding
    # at a time (a parsed 100,000-user report is ~1 GB); they must be exactly the parsed report's,
    # whatever the values hold (newlines, braces, quotes are escaped in the text).
    import gzip

    from agent.reports.json_report import (gzip_report, pretty_chunks, stored_findings, stored_header)

    report = {**header, "findings": findings, "drift": {"new": findings}, "licences": []}
    blob = gzip.compress(b"".join(pretty_chunks(report, batch=batch)))
    assert list(stored_findings(blob)) == findings
    assert list(stored_findings(blob, wanted)) == [f for f in findings if f["key"] in wanted]
    assert stored_header(blob) == header
    assert list(stored_findings(gzip_report(report))) == findings


def test_a_stored_report_cut_short_is_damaged_when_its_findings_are_read():
    import gzip

    from agent.reports.json_report import DamagedReport, gzip_report, stored_findings, stored_header

    report = {"run": {"id": 1}, "findings": [{"key": f"k{i}", "message": "m" * 50} for i in range(3000)]}
    text = gzip.decompress(gzip_report(report))
    cut = gzip.compress(text[: len(text) // 2])
    assert stored_header(cut) == {"run": {"id": 1}}  # the start is there
    with pytest.raises(DamagedReport, match="truncated"):
        list(stored_findings(cut))
    with pytest.raises(DamagedReport):
        stored_header(gzip.compress(b'{"run": 1}'))  # no findings list at all
    assert list(stored_findings(gzip.compress(b"{}\n"))) == []  # a run stored without a report (migration 0007)
    with pytest.raises(DamagedReport):
        list(stored_findings(gzip.compress(b'["not", "a report"]')))


def test_report_rows_read_as_the_list_of_the_same_dicts_and_give_the_same_text():
    # The report's findings and licences are made a batch at a time when read (memory at 100,000
    # users); whoever reads them, however (whole, sliced, item by item, as JSON), sees one list.
    from agent.reports.json_report import ReportRows, pretty_chunks, pretty_json

    items = list(range(2500))
    rows = ReportRows(items, lambda i, memo: {"n": i, "shared": memo.setdefault("s", {"x": 1})})
    plain = [{"n": i, "shared": {"x": 1}} for i in items]
    assert list(rows) == plain and rows == plain and len(rows) == 2500
    assert rows[3] == plain[3] and rows[-1] == plain[-1] and rows[10:20] == plain[10:20]
    assert list(rows) == list(rows)  # read again: the same
    report = {"findings": rows, "drift": {"new": rows}, "small": ReportRows([1], lambda i, memo: {"n": i})}
    whole = {"findings": plain, "drift": {"new": plain}, "small": [{"n": 1}]}
    assert pretty_json(report) == pretty_json(whole) == b"".join(pretty_chunks(report))


def test_stored_chunks_are_bounded_and_a_truncated_report_is_an_error():
    from agent.reports.json_report import gunzipped_chunks, gzip_report

    report = {"findings": [{"key": f"k{i}", "message": "é" * (i % 50)} for i in range(5000)]}
    blob = gzip_report(report)
    chunks = list(gunzipped_chunks(blob, size=4096))
    assert max(map(len, chunks)) <= 4096 and len(chunks) > 10
    assert json.loads(b"".join(chunks)) == report
    with pytest.raises(ValueError, match="truncated"):
        list(gunzipped_chunks(blob[:len(blob) // 2], size=4096))


def test_reports_stored_before_migration_0007_survive_the_upgrade_and_a_downgrade(tmp_path, database_url):
    # Runs stored as a JSON column (migrations 0001-0006) are converted one by one; nothing of a
    # report is lost either way.
    import sqlalchemy as sa
    from alembic import command

    from agent.engine import stored_report, stored_report_text
    from agent.reports.json_report import pretty_json
    from agent.store.db import Store, alembic_config

    config = alembic_config()
    config.set_main_option("sqlalchemy.url", database_url)
    command.upgrade(config, "0006")
    old = [{"run": {"id": i, "previous_id": None}, "findings": [{"key": f"k{i}", "message": "Zoë <b>"}],
            "summary": {"findings": 1}} for i in (1, 2)]
    runs = sa.table("runs", sa.column("id", sa.Integer), sa.column("created_at", sa.DateTime),
                    sa.column("compliant", sa.Boolean), sa.column("findings", sa.Integer),
                    sa.column("errors", sa.Integer), sa.column("warnings", sa.Integer),
                    sa.column("shortfall", sa.Integer), sa.column("report", sa.JSON))
    run_findings = sa.table("run_findings", sa.column("run_id", sa.Integer), sa.column("key", sa.Text),
                            sa.column("kind", sa.String), sa.column("severity", sa.String))
    engine = sa.create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as connection:
        connection.execute(runs.insert(), [{"id": r["run"]["id"], "created_at": datetime(2026, 11, 1), "compliant": False,
                                            "findings": 1, "errors": 1, "warnings": 0, "shortfall": 0, "report": r}
                                           for r in old])
        connection.execute(run_findings.insert(), [{"run_id": i, "key": f"k{i}", "kind": "shortfall",
                                                    "severity": "error"} for i in (1, 2)])
    engine.dispose()

    def finding_keys() -> list[tuple[int, str]]:
        engine = sa.create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
        with engine.connect() as connection:
            keys = connection.execute(sa.select(run_findings.c.run_id, run_findings.c.key)
                                      .order_by(run_findings.c.run_id)).all()
        engine.dispose()
        return [tuple(k) for k in keys]

    store = Store(database_url)  # upgrades to the newest revision
    assert [stored_report(store, i) for i in (1, 2)] == old
    # SQLite rebuilds `runs` to drop its column: the rows referring to it must not go with it
    assert finding_keys() == [(1, "k1"), (2, "k2")]
    assert b"".join(stored_report_text(store, 2, "json")).decode() == pretty_json(old[1]).decode()
    store.close()
    command.downgrade(config, "0006")
    engine = sa.create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as connection:
        assert [r.report for r in connection.execute(sa.select(runs.c.report).order_by(runs.c.id))] == old
    engine.dispose()
    assert finding_keys() == [(1, "k1"), (2, "k2")]


def test_a_damaged_stored_report_is_a_clear_error(site):
    # The report is stored gzip'd; if the database was changed behind cal-agent's back, `report`
    # says which run is damaged (exit 4) instead of a traceback, and writes no --output file.
    from sqlalchemy import select

    store = open_store(load_config(site.config))
    with store.session() as session:
        blob = session.scalars(select(Run.report_gz)).first()
        session.execute(update(Run).values(report_gz=blob[: len(blob) // 2]))
    out = str(site.folder / "out.json")
    for args in (["--format", "json"], ["--format", "html"], ["--format", "json", "--output", out]):
        failed = site.run("report", *args, expect=4)
        assert "stored report of the latest run is damaged" in failed.stderr and "Traceback" not in failed.stderr
    assert not (site.folder / "out.json").exists()
    # The next cycle must still work, although drift would read that report for its resolved
    # findings: they are listed by key, and a new, readable run is recorded.
    rewrite_ldif(site, staff=["ann", "bob", "cat", "dan", "fay", "gus"], disabled=["lee"])  # resolves some
    cycle = site.run("run", "--once", expect=None)
    assert cycle.returncode in (0, 1) and "Traceback" not in cycle.stderr, cycle.stderr
    second = json.loads(site.run("report").stdout)
    assert second["run"]["id"] == 2 and second["drift"]["resolved"]
    assert all(set(f) == {"key"} for f in second["drift"]["resolved"])


def test_the_garbage_collector_is_back_on_after_a_cycle_and_after_a_failed_reconcile(tmp_path):
    # Sync and reconcile hold the cyclic collector back while they build their objects (a speed-up
    # at 100,000 users); the service must get it back, or its memory would grow cycle after cycle.
    import gc

    site = Site(tmp_path, f"sqlite:///{tmp_path}/state.db")
    assert gc.isenabled()
    site.run("reconcile", expect=None)  # nothing read yet: refused
    assert gc.isenabled()
    site.run("run", "--once")
    assert gc.isenabled()
    gc.disable()
    try:  # and a caller that had it off keeps it off
        site.run("run", "--once")
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_migration_failing_half_way_leaves_the_store_as_it_was_and_can_run_again(tmp_path, database_url,
                                                                                  monkeypatch):
    # Migration 0007 adds a column, converts every run's report, then drops the old column.  If
    # it fails in between (a full disk), nothing of it may stay: the next start must migrate.
    import sqlalchemy as sa
    from alembic import command

    import agent.reports.json_report as json_report
    from agent.engine import stored_report
    from agent.errors import StoreError
    from agent.store.db import Store, alembic_config

    config = alembic_config()
    config.set_main_option("sqlalchemy.url", database_url)
    command.upgrade(config, "0006")
    runs = sa.table("runs", sa.column("id", sa.Integer), sa.column("created_at", sa.DateTime),
                    sa.column("compliant", sa.Boolean), sa.column("findings", sa.Integer),
                    sa.column("errors", sa.Integer), sa.column("warnings", sa.Integer),
                    sa.column("shortfall", sa.Integer), sa.column("report", sa.JSON))
    url = database_url.replace("postgresql://", "postgresql+psycopg://")
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(runs.insert(), [{"id": 1, "created_at": datetime(2026, 11, 1), "compliant": True,
                                            "findings": 0, "errors": 0, "warnings": 0, "shortfall": 0,
                                            "report": {"run": {"id": 1}, "findings": []}}])

    def disk_full(report):
        raise sa.exc.OperationalError("UPDATE runs", {}, Exception("database or disk is full"))

    monkeypatch.setattr(json_report, "gzip_report", disk_full)
    with pytest.raises(StoreError, match="disk is full"):
        Store(database_url)
    with engine.connect() as connection:
        assert [c["name"] for c in sa.inspect(connection).get_columns("runs")][-1] == "report"
        assert connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "0006"
    engine.dispose()
    monkeypatch.undo()
    store = Store(database_url)  # the next start migrates
    assert stored_report(store, 1) == {"run": {"id": 1}, "findings": []}
    store.close()

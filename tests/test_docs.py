"""The reference docs cannot fall behind the code: each table is compared with what the code does."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent import engine
from agent.compliance.model import SEVERITY
from agent.demo import demo_config
from agent.inventory.catalog import BUILT_IN

DOCS = Path(__file__).resolve().parent.parent / "docs"


def table_rows(doc: str, heading: str) -> dict[str, list[str]]:
    """The rows of the first table under ``heading``: first cell (without backticks) -> cells."""
    text = (DOCS / doc).read_text(encoding="utf-8")
    start = text.index(heading)
    rows: dict[str, list[str]] = {}
    in_table = False
    for line in text[start:].splitlines()[1:]:
        if line.startswith("|"):
            in_table = True
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set(cells[0]) <= set("-: ") or cells[0] in ("key", "field", "kind"):
                continue
            for name in re.findall(r"`([^`]+)`", cells[0]) or [cells[0]]:
                rows[name] = cells
        elif in_table:
            break
    return rows


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    config = demo_config(tmp_path_factory.mktemp("docs-demo"))
    store = engine.open_store(config)
    engine.sync_directories(config, store)
    return engine.reconcile_and_record(config, store).report


def test_inventory_doc_lists_the_built_in_catalog():
    rows = table_rows("inventory.md", "## Built-in catalog")
    assert set(rows) == {p.key for p in BUILT_IN}
    for product in BUILT_IN:
        assert rows[product.key][1] == product.name
        assert rows[product.key][2] == (f"`{product.base}`" if product.base else "")


def test_report_doc_lists_every_finding_kind_with_its_severity():
    rows = table_rows("report-json.md", "### Finding kinds")
    assert {kind: cells[1] for kind, cells in rows.items()} == dict(SEVERITY)


def test_report_doc_describes_every_field_a_report_has(demo_report):
    top = table_rows("report-json.md", "## Top level")
    assert set(top) == set(demo_report)
    products = table_rows("report-json.md", "## `products[]`")
    assert set(products) == set(demo_report["products"][0])
    findings = table_rows("report-json.md", "## `findings[]`")
    assert set(findings) == set(demo_report["findings"][0])


def test_reliability_table_names_only_tests_that_exist():
    """docs/reliability.md promises a test per row: every test it names must exist."""
    root = DOCS.parent
    refs = re.findall(r"(tests/[a-z_]+\.py)(?:::([A-Za-z0-9_]+))?", (DOCS / "reliability.md").read_text())
    assert len(refs) >= 20
    for path, name in refs:
        source = (root / path).read_text()
        if name:
            assert f"def {name}(" in source, f"{path}::{name}"

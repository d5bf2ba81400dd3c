"""The bundled demo, run the way the README tells a new user to run it (a real `cal-agent` process).

The expected figures are not written here: the generator of the demo data computes them from its own
bookkeeping (independently of agent/compliance), and the agent's report must agree with them.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from agent.demo import DATA
from agent.demo import generate


def run_demo(output: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAL_AGENT_")}
    return subprocess.run([sys.executable, "-m", "agent", "demo", "--output", str(output), *args],
                          capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture(scope="module")
def expected():
    rng = random.Random(generate.SEED)
    directory, roles = generate.build_directory(rng)
    assignments = generate.build_inventory(directory, roles)
    return generate.expected_findings(directory, assignments)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("demo")
    proc = run_demo(output)
    assert proc.returncode == 0, proc.stderr
    return output, proc


def test_bundled_data_is_what_the_generator_writes(tmp_path, monkeypatch):
    """The data files are generated, never hand-edited: regenerating gives the same bytes."""
    monkeypatch.setattr(generate, "DATA", tmp_path)
    generate.main()
    for name in ("northwind.ldif", "inventory.yaml", "config.yaml", "README.md"):
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), name


def test_demo_prints_summary_and_writes_reports(first_run):
    output, proc = first_run
    assert "Northwind Traders" in proc.stdout
    assert "NOT COMPLIANT" in proc.stdout
    assert "first run" in proc.stdout
    html = output / "reports" / "run-000001.html"
    assert f"HTML report: {html.resolve()}" in proc.stdout
    assert html.read_text(encoding="utf-8").lstrip().lower().startswith("<!doctype html>")
    assert proc.stderr == ""  # no warnings, no traceback on the happy path


def test_findings_match_the_generators_expectations(first_run, expected):
    output, _ = first_run
    report = json.loads((output / "reports" / "latest.json").read_text(encoding="utf-8"))
    assert report["compliant"] is False
    by_kind = Counter(f["kind"] for f in report["findings"])
    assert by_kind == Counter(expected["findings"])
    stale = Counter(f["reason"] for f in report["findings"] if f["kind"] == "stale_assignment")
    assert stale == expected["stale_by_state"]
    over = {f["purchase"] for f in report["findings"] if f["kind"] == "over_assigned"}
    assert over == set(expected["over"])


def test_product_table_matches_the_generators_expectations(first_run, expected):
    output, proc = first_run
    report = json.loads((output / "reports" / "latest.json").read_text(encoding="utf-8"))
    rows = {(p["product"], p["version"], p["cal_type"]): (p["required"], p["owned"], p["licensed"])
            for p in report["products"]}
    assert rows == {key: tuple(value) for key, value in expected["rows"].items()}
    short = [p for p in report["products"] if p["shortfall"]]
    assert [(p["product"], p["version"], p["cal_type"]) for p in short] == [("windows-server", "2022", "user")]
    assert f"shortfall {short[0]['shortfall']}" in proc.stdout


def test_demo_html_escapes_hostile_display_name(first_run):
    output, _ = first_run
    html = (output / "reports" / "latest.html").read_text(encoding="utf-8")
    assert "Mallory <b>Test</b>" not in html
    assert "Mallory &lt;b&gt;Test&lt;/b&gt;" in html


def test_second_demo_run_reports_no_drift(tmp_path):
    first = run_demo(tmp_path)
    assert first.returncode == 0, first.stderr
    second = run_demo(tmp_path)
    assert second.returncode == 0, second.stderr
    report = json.loads((tmp_path / "reports" / "latest.json").read_text(encoding="utf-8"))
    assert report["run"]["id"] == 2 and report["run"]["previous_id"] == 1
    assert report["drift"]["new"] == [] and report["drift"]["resolved"] == []
    assert "0 new, 0 resolved" in second.stdout
    before = json.loads((tmp_path / "reports" / "run-000001.json").read_text(encoding="utf-8"))
    assert report["findings"] == before["findings"]

"""The accidental-departure guard: a sync that would make too many people leave at once is held."""

from __future__ import annotations

import json

import pytest

from agent.store.sync import departure_limit
from tests.test_register import Site, ldif_group, ldif_user

STAFF = [f"user{i:02d}" for i in range(40)]


def write_directory(site: Site, present: list[str], disabled: list[str] = ()) -> None:
    users = [ldif_user(n) for n in present if n not in disabled] + [ldif_user(n, disabled=True) for n in disabled]
    (site.folder / "acme.ldif").write_text("\n".join(users + [ldif_group("staff", present)]) + "\n")


@pytest.fixture
def site(tmp_path):
    s = Site(tmp_path, f"sqlite:///{tmp_path}/state.db")
    write_directory(s, STAFF)
    s.run("run", "--once")
    return s


@pytest.mark.parametrize(("active", "configured", "limit"), [
    (40, None, 10), (1000, None, 100), (20000, None, 500), (5, None, 10), (1000, 3, 3), (1000, 0, 0)])
def test_departure_limit_defaults(active, configured, limit):
    assert departure_limit(active, configured) == limit


def test_a_half_empty_read_is_held_and_changes_nothing(site):
    before = json.loads(site.run("report").stdout)
    write_directory(site, STAFF[:20])  # the "DC" returned half the users
    held = site.run("sync", expect=3)
    assert "would mark 20 of 40 active principals departed (20 missing)" in held.stderr
    assert "--accept-departures" in held.stderr
    site.run("reconcile")
    after = json.loads(site.run("report").stdout)
    assert after["drift"]["new"] == [] and after["findings"] == before["findings"]
    (directory,) = after["directories"]
    assert directory["last_sync"]["status"] == "held"
    assert directory["last_successful_sync"]["id"] == before["directories"][0]["last_successful_sync"]["id"]


def test_real_departures_go_through_when_accepted(site):
    write_directory(site, STAFF, disabled=STAFF[:15])  # a team left
    site.run("sync", expect=3)
    site.run("sync", "--accept-departures")
    site.run("reconcile")
    report = json.loads(site.run("report").stdout)
    left = sorted(c["name"] for c in report["drift"]["principals"] if c["event"] == "disabled")
    assert left == STAFF[:15]
    site.run("sync")  # nothing new: passes


def test_departures_under_the_limit_pass(site):
    write_directory(site, STAFF, disabled=STAFF[:4])
    site.run("sync")

"""The compliance engine on plain data: who needs what, and what is wrong.  No servers."""

from __future__ import annotations

import json
from datetime import date, datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.compliance.model import DirectoryView, Principal
from agent.compliance.reconcile import reconcile
from agent.config import Requirement
from agent.inventory.register import parse_inventory

TODAY = date(2026, 11, 24)
BASE = "DC=corp,DC=example,DC=com"


class Estate:
    """A tiny directory built by hand."""

    def __init__(self) -> None:
        self.principals: dict[str, Principal] = {}
        self.edges: list[tuple[str, str]] = []

    def add(self, name: str, kind: str = "user", ou: str = "Staff", state: str = "active",
            since: datetime | None = None) -> str:
        guid = f"00000000-0000-0000-0000-{len(self.principals):012d}"
        self.principals[name] = Principal(directory="corp", guid=guid, kind=kind, name=name,
                                          dn=f"CN={name},OU={ou},{BASE}", state=state, display_name=name.title(),
                                          state_since=since)
        return name

    def member(self, group: str, *members: str) -> None:
        for m in members:
            self.edges.append((group, m))

    def view(self) -> DirectoryView:
        return DirectoryView(
            principals=tuple(self.principals.values()),
            memberships=tuple((self.principals[g].key, self.principals[m].key) for g, m in self.edges),
            directories=("corp",),
        )


def req(name="staff", product="windows-server", version="2022", cal_type="user", **selector) -> Requirement:
    key = "users" if cal_type == "user" else "computers"
    return Requirement.model_validate({"name": name, "product": product, "version": version, "cal_type": cal_type,
                                       key: selector})


def inventory(purchases=(), assignments=()):
    return parse_inventory({"purchases": list(purchases), "assignments": list(assignments)})


def purchase(pid="PO-1", product="windows-server", version="2022", cal_type="user", quantity=10, **extra):
    # An invoice by default: tests of other rules should not also raise missing_evidence (R36).
    return {"id": pid, "product": product, "version": version, "cal_type": cal_type, "quantity": quantity,
            "invoice": f"INV-{pid}", **extra}


def kinds(result, kind):
    return sorted(f.principal.name for f in result.findings if f.kind == kind and f.principal)


def test_nested_group_members_are_required_and_unassigned_ones_flagged():
    e = Estate()
    for n in ("alice", "bob", "carol", "dave"):
        e.add(n)
    e.add("staff", kind="group")
    e.add("eng", kind="group")
    e.add("eng-apps", kind="group")
    e.member("staff", "alice", "eng")
    e.member("eng", "eng-apps")
    e.member("eng-apps", "bob", "carol")
    inv = inventory([purchase(quantity=10)], [{"purchase": "PO-1", "principal": "alice"},
                                                {"purchase": "PO-1", "principal": "bob"}])
    result = reconcile(e.view(), [req(group="staff")], inv, today=TODAY)
    assert kinds(result, "unlicensed_user") == ["carol"]  # dave is not in the group at all
    (line,) = result.products
    assert (line.required, line.owned, line.assigned, line.shortfall) == (3, 10, 2, 0)
    assert not result.compliant


def test_group_cycles_do_not_hang_and_members_still_found():
    e = Estate()
    e.add("alice")
    e.add("g1", kind="group")
    e.add("g2", kind="group")
    e.member("g1", "g2", "alice")
    e.member("g2", "g1")
    result = reconcile(e.view(), [req(group="g2")], inventory(), today=TODAY)
    assert kinds(result, "unlicensed_user") == ["alice"]


def test_group_given_by_dn_and_ou_and_exclude_must_all_match():
    e = Estate()
    e.add("alice")
    e.add("bob", ou="Contractors")
    e.add("svc-backup")
    e.add("all", kind="group", ou="Groups")
    e.add("svc", kind="group", ou="Groups")
    e.member("all", "alice", "bob", "svc-backup")
    e.member("svc", "svc-backup")
    requirement = req(group=f"CN=all,OU=Groups,{BASE}", ou=f"OU=Staff,{BASE}", exclude=["svc"])
    result = reconcile(e.view(), [requirement], inventory(), today=TODAY)
    assert kinds(result, "unlicensed_user") == ["alice"]


@pytest.mark.parametrize("state", ["disabled", "expired", "inactive", "deleted", "missing"])
def test_only_active_principals_are_required(state):
    e = Estate()
    e.add("alice", state=state)
    e.add("bob")
    e.add("all", kind="group")
    e.member("all", "alice", "bob")
    result = reconcile(e.view(), [req(group="all")], inventory(), today=TODAY)
    assert kinds(result, "unlicensed_user") == ["bob"]
    assert result.products[0].required == 1


def test_device_requirement_by_ou_flags_unlicensed_devices():
    e = Estate()
    e.add("KIOSK-01", kind="computer", ou="Kiosks")
    e.add("KIOSK-02", kind="computer", ou="Kiosks")
    e.add("WS-0001", kind="computer", ou="Workstations")
    inv = inventory([purchase(cal_type="device", quantity=1)], [{"purchase": "PO-1", "principal": "KIOSK-01$"}])
    result = reconcile(e.view(), [req(cal_type="device", ou=f"OU=Kiosks,{BASE}")], inv, today=TODAY)
    assert kinds(result, "unlicensed_device") == ["KIOSK-02"]
    shortfall = [f for f in result.findings if f.kind == "shortfall"]
    assert len(shortfall) == 1 and "buy 1 more" in shortfall[0].message


def test_r07_older_cal_version_does_not_cover_newer_server():
    e = Estate()
    e.add("alice")
    e.add("all", kind="group")
    e.member("all", "alice")
    inv = inventory([purchase(version="2019")], [{"purchase": "PO-1", "principal": "alice"}])
    result = reconcile(e.view(), [req(group="all")], inv, today=TODAY)
    (finding,) = [f for f in result.findings if f.kind == "unlicensed_user"]
    assert "holds only 2019" in finding.message
    newer = inventory([purchase(version="2025")], [{"purchase": "PO-1", "principal": "alice"}])
    assert reconcile(e.view(), [req(group="all")], newer, today=TODAY).compliant


def test_r08_2012_cal_covers_2012_r2_server():
    e = Estate()
    e.add("alice")
    e.add("all", kind="group")
    e.member("all", "alice")
    inv = inventory([purchase(version="2012")], [{"purchase": "PO-1", "principal": "alice"}])
    assert reconcile(e.view(), [req(group="all", version="2012 R2")], inv, today=TODAY).compliant


def test_r16_core_cal_suite_covers_windows_server_but_r18_not_rds():
    e = Estate()
    e.add("alice")
    e.add("all", kind="group")
    e.member("all", "alice")
    inv = inventory([purchase(product="core-cal-suite")], [{"purchase": "PO-1", "principal": "alice"}])
    requirements = [req("win", group="all"), req("rds", product="rds", group="all")]
    result = reconcile(e.view(), requirements, inv, today=TODAY)
    assert [(f.kind, f.product) for f in result.findings if f.principal] == [("unlicensed_user", "rds")]


def test_shortfall_counts_newer_cals_once_across_versions():
    # 5 people need 2022, 5 need 2019; 8 CALs of 2022 cover the 2022 five and 3 of the 2019 five.
    e = Estate()
    for i in range(10):
        e.add(f"u{i}")
    e.add("new", kind="group")
    e.add("old", kind="group")
    e.member("new", *[f"u{i}" for i in range(5)])
    e.member("old", *[f"u{i}" for i in range(5, 10)])
    inv = inventory([purchase(quantity=8)])
    result = reconcile(e.view(), [req("a", group="new"), req("b", group="old", version="2019")], inv, today=TODAY)
    lines = {(line.version): (line.required, line.owned, line.shortfall) for line in result.products}
    assert lines == {"2022": (5, 8, 0), "2019": (5, 3, 2)}
    assert result.shortfall == 2


def test_expired_purchase_is_not_owned():
    e = Estate()
    e.add("alice")
    e.add("all", kind="group")
    e.member("all", "alice")
    inv = inventory([purchase(expires_on=date(2026, 1, 1))], [{"purchase": "PO-1", "principal": "alice"}])
    result = reconcile(e.view(), [req(group="all")], inv, today=TODAY)
    assert kinds(result, "unlicensed_user") == ["alice"]
    assert result.products[0].owned == 0


@pytest.mark.parametrize("state", ["disabled", "expired", "inactive", "deleted", "missing"])
def test_assignment_held_by_departed_principal_is_stale_with_reason_and_since(state):
    e = Estate()
    since = datetime(2026, 3, 1, tzinfo=timezone.utc)
    e.add("leaver", state=state, since=since)
    inv = inventory([purchase()], [{"purchase": "PO-1", "principal": "leaver"}])
    result = reconcile(e.view(), [], inv, today=TODAY)
    (finding,) = result.findings
    assert (finding.kind, finding.reason, finding.since, finding.purchase) == ("stale_assignment", state, since, "PO-1")
    assert finding.severity == "warning" and result.compliant


def test_orphan_assignment_to_unknown_name():
    e = Estate()
    e.add("jdoe")
    inv = inventory([purchase()], [{"purchase": "PO-1", "principal": "jdoe2"}])
    (finding,) = reconcile(e.view(), [], inv, today=TODAY).findings
    assert finding.kind == "orphan_assignment" and finding.principal.name == "jdoe2"
    assert finding.principal.dn is None


def test_over_assigned_purchase():
    e = Estate()
    for n in ("a", "b", "c"):
        e.add(n)
    inv = inventory([purchase(quantity=2)], [{"purchase": "PO-1", "principal": n} for n in ("a", "b", "c")])
    result = reconcile(e.view(), [], inv, today=TODAY)
    (finding,) = result.findings
    assert finding.kind == "over_assigned" and "3 assignments for 2 seats" in finding.message
    assert not result.compliant


def test_user_cal_assigned_to_a_computer_is_a_type_mismatch():
    e = Estate()
    e.add("KIOSK-01", kind="computer", ou="Kiosks")
    inv = inventory([purchase(cal_type="user")], [{"purchase": "PO-1", "principal": "KIOSK-01"}])
    result = reconcile(e.view(), [req(cal_type="device", ou=f"OU=Kiosks,{BASE}")], inv, today=TODAY)
    assert {f.kind for f in result.findings} == {"type_mismatch", "unlicensed_device", "shortfall"}


def test_unknown_group_is_an_error_not_a_silent_pass():
    e = Estate()
    e.add("alice")
    result = reconcile(e.view(), [req(group="RDS-Userz")], inventory(), today=TODAY)
    assert [f.kind for f in result.findings] == ["unknown_group"]
    assert not result.compliant


def test_finding_keys_do_not_depend_on_counts_so_drift_is_stable():
    e = Estate()
    e.add("a")
    e.add("all", kind="group")
    e.member("all", "a")
    one = reconcile(e.view(), [req(group="all")], inventory(), today=TODAY)
    e.add("b")
    e.member("all", "b")
    two = reconcile(e.view(), [req(group="all")], inventory(), today=TODAY)
    shortfall_keys = {f.key for f in one.findings if f.kind == "shortfall"}
    assert shortfall_keys == {f.key for f in two.findings if f.kind == "shortfall"}


# -- properties ------------------------------------------------------------------------------

names = st.lists(st.sampled_from([f"u{i}" for i in range(12)]), unique=True, max_size=12)


@st.composite
def estates(draw):
    e = Estate()
    users = [e.add(f"u{i}", state=draw(st.sampled_from(["active", "active", "disabled", "inactive"])))
             for i in range(12)]
    e.add("all", kind="group")
    e.member("all", *draw(names))
    held = draw(names)
    quantity = draw(st.integers(0, 15))
    assignments = [{"purchase": "PO-1", "principal": n} for n in held]
    return e, users, quantity, assignments


@settings(max_examples=200, deadline=None)
@given(estates(), st.integers(1, 20))
def test_property_adding_a_valid_purchase_never_adds_a_shortfall(data, extra):
    e, _users, quantity, assignments = data
    base = inventory([purchase(quantity=quantity)], assignments)
    more = inventory([purchase(quantity=quantity), purchase("PO-2", quantity=extra)], assignments)
    before = reconcile(e.view(), [req(group="all")], base, today=TODAY)
    after = reconcile(e.view(), [req(group="all")], more, today=TODAY)
    assert after.shortfall <= before.shortfall
    assert {f.key for f in after.findings if f.kind == "shortfall"} <= {f.key for f in before.findings
                                                                        if f.kind == "shortfall"}


@settings(max_examples=200, deadline=None)
@given(estates())
def test_property_required_equals_active_principals_in_scope_and_is_deterministic(data):
    e, _users, quantity, assignments = data
    inv = inventory([purchase(quantity=quantity)], assignments)
    view = e.view()
    result = reconcile(view, [req(group="all")], inv, today=TODAY)
    in_group = {m for g, m in e.edges if g == "all"}
    expected = sum(1 for n in in_group if e.principals[n].state == "active")
    assert sum(line.required for line in result.products) == expected
    reversed_view = DirectoryView(principals=tuple(reversed(view.principals)),
                                  memberships=tuple(reversed(view.memberships)), directories=view.directories)
    assert reconcile(reversed_view, [req(group="all")], inv, today=TODAY) == result
    # The store's view holds memberships as MemberPairs (two tuples of keys): the same pairs.
    from agent.compliance.model import MemberPairs

    pairs = MemberPairs([g for g, _m in view.memberships], [m for _g, m in view.memberships])
    assert pairs == view.memberships and list(pairs) == list(view.memberships) and len(pairs) == len(view.memberships)
    paired_view = DirectoryView(principals=view.principals, memberships=pairs, directories=view.directories)
    assert reconcile(paired_view, [req(group="all")], inv, today=TODAY) == result


def test_the_json_report_gives_each_finding_its_own_details():
    # The report shares one details object among findings whose details are equal (memory at
    # 100,000 users); findings of one kind with other details must keep theirs.
    from agent.reports.json_report import build_report

    e = Estate()
    for n in ("alice", "bob", "carol"):
        e.add(n)
    e.add("KIOSK-01", kind="computer", ou="Kiosks")
    e.add("rds-users", kind="group")
    e.member("rds-users", "carol")
    inv = inventory([purchase(quantity=1), purchase("PO-2", cal_type="device", quantity=0)],
                    [{"purchase": "PO-2", "principal": "KIOSK-01"}])
    requirements = [req(), req("remote", group="rds-users"), req("kiosks", cal_type="device", ou=f"OU=Kiosks,{BASE}")]
    result = reconcile(e.view(), requirements, inv, today=TODAY)
    report = build_report(result, run_id=1, previous=None, directories=[], generated_at=datetime.now(timezone.utc))
    expected = [{k: list(v) if isinstance(v, tuple) else v for k, v in f.details} for f in result.findings]
    assert [f["details"] for f in report["findings"]] == expected
    details = {f["principal"]["name"]: f["details"] for f in report["findings"] if f["kind"] == "unlicensed_user"}
    assert details == {"alice": {"requirements": ["staff"]}, "bob": {"requirements": ["staff"]},
                       "carol": {"requirements": ["staff", "remote"]}}
    counts = [f["details"] for f in report["findings"] if f["kind"] in ("shortfall", "over_assigned")]
    assert len({json.dumps(d) for d in counts}) == 3


def test_equal_but_differently_typed_details_keep_their_types_in_the_json_report():
    from agent.compliance.model import Finding, Reconciliation
    from agent.reports.json_report import build_report

    result = Reconciliation(products=(), findings=(Finding(kind="expiring", message="a", purchase="P1",
                                                           details=(("days_left", 1),)),
                                                   Finding(kind="expiring", message="b", purchase="P2",
                                                           details=(("days_left", True),))))
    report = build_report(result, run_id=1, previous=None, directories=[], generated_at=datetime.now(timezone.utc))
    assert [json.dumps(f["details"]) for f in report["findings"]] == ['{"days_left": 1}', '{"days_left": true}']


@settings(max_examples=300, deadline=None)
@given(dn=st.text(alphabet=st.sampled_from("CNOUDCabcXYZ=, \\;+é"), max_size=30))
def test_a_principal_gives_its_dns_comparison_key_whether_or_not_it_holds_one(dn):
    # The view holds a principal's DN key only when it is not dn.lower() (memory at 100,000 users);
    # ou: selectors read the key either way.
    from agent.compliance.model import Principal
    from agent.directory.decode import dn_key

    worked_out = Principal(directory="corp", guid="g", kind="user", name="n", dn=dn, state="active")
    from_store = Principal(directory="corp", guid="g", kind="user", name="n", dn=dn, state="active",
                           key_of_dn=dn_key(dn))
    assert worked_out.dn_key == from_store.dn_key == dn_key(dn)
    assert worked_out == from_store


def test_a_suites_seats_count_on_one_line_whatever_the_order_of_the_requirements():
    # R16: a Core CAL Suite seat covers Windows Server and Exchange of its version.  Its seats are
    # `assigned` on one product line, the base CAL's on a tie, and the order in which requirements
    # (or principals) come must not move them to another line.
    import itertools

    e = Estate()
    e.add("u1", ou="A")
    e.add("u2", ou="B")
    reqs = [req("r1", product="sql-server", version="2019", ou=f"OU=A,{BASE}"),
            req("r2", product="windows-server", version="2019", ou=f"OU=B,{BASE}"),
            req("r3", product="exchange-standard", version="2019", ou=f"OU=A,{BASE}")]
    inv = inventory([purchase("PO-S", product="core-cal-suite", version="2019", quantity=5)],
                    [{"purchase": "PO-S", "principal": "u1"}])
    results = [reconcile(e.view(), list(order), inv, today=TODAY).products for order in itertools.permutations(reqs)]
    assert all(lines == results[0] for lines in results)
    assigned = {line.product: (line.assigned, line.free) for line in results[0]}
    assert assigned["windows-server"] == (1, 4) and assigned["exchange-standard"] == (0, 5)

"""Licensing rules on plain data, each test named after its rule in
../shared/reference/cal-licensing-rules.md (R01-R36).  No servers."""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta, timezone

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.compliance.model import DirectoryView, Principal, RdsPerUserCal
from agent.compliance.reconcile import reconcile
from agent.config import ExemptConfig, RulesConfig, parse_config
from agent.errors import ConfigError, InventoryError
from agent.inventory.register import load_inventory, parse_inventory
from tests.test_reconcile import TODAY, Estate, purchase, req


def inv(purchases=(), assignments=(), transfers=()):
    return parse_inventory({"purchases": list(purchases), "assignments": list(assignments),
                            "transfers": list(transfers)})


def found(result, kind):
    """(principal name or purchase, reason) of each finding of ``kind``."""
    return sorted((f.principal.name if f.principal else f.purchase, f.reason)
                  for f in result.findings if f.kind == kind)


def one_user(name="alice"):
    e = Estate()
    e.add(name)
    e.add("staff", kind="group")
    e.member("staff", name)
    return e


# ------------------------------------------------------------------ versions (R07, R08, R10)

def test_R07_older_cal_than_the_server_is_a_version_mismatch_and_leaves_the_user_unlicensed():
    e = one_user()
    result = reconcile(e.view(), [req(group="staff", version="2022")],
                       inv([purchase(version="2019")], [{"purchase": "PO-1", "principal": "alice"}]), today=TODAY)
    assert found(result, "unlicensed_user") == [("alice", None)]
    assert found(result, "version_mismatch") == [("alice", "2019")]
    (mismatch,) = [f for f in result.findings if f.kind == "version_mismatch"]
    assert mismatch.severity == "warning" and mismatch.purchase == "PO-1" and "R07" in mismatch.message


def test_R07_newer_cal_covers_an_older_server():
    e = one_user()
    result = reconcile(e.view(), [req(group="staff", version="2016")],
                       inv([purchase(version="2022")], [{"purchase": "PO-1", "principal": "alice"}]), today=TODAY)
    assert result.findings == () and result.compliant


@pytest.mark.parametrize(("cal", "server", "covered"), [
    ("2012", "2012 R2", True),       # R08: no 2012 R2 CALs exist; 2012 covers 2012 R2
    ("2008 R2", "2012 R2", False),
    ("2012 R2", "2016", False),
])
def test_R08_r2_release_accepts_the_previous_cal(cal, server, covered):
    e = one_user()
    result = reconcile(e.view(), [req(group="staff", version=server)],
                       inv([purchase(version=cal)], [{"purchase": "PO-1", "principal": "alice"}]), today=TODAY)
    assert (found(result, "unlicensed_user") == []) is covered
    assert (found(result, "version_mismatch") == []) is covered


@pytest.mark.parametrize(("cal", "covered"), [("2019", False), ("2022", True), ("2025", True)])
def test_R10_rds_cal_must_be_at_least_the_session_host_version(cal, covered):
    e = one_user()
    result = reconcile(
        e.view(), [req(group="staff"), req("remote", product="rds", version="2022", group="staff")],
        inv([purchase(), purchase("RDS", product="rds", version=cal)],
            [{"purchase": "PO-1", "principal": "alice"}, {"purchase": "RDS", "principal": "alice"}]),
        today=TODAY)
    assert (found(result, "version_mismatch") == []) is covered
    assert result.compliant is covered


# ------------------------------------------------------------------ CAL type (R01, R05)

def test_R01_device_cal_assigned_to_a_user_is_a_type_mismatch_and_licenses_nothing():
    e = one_user()
    result = reconcile(e.view(), [req(group="staff")],
                       inv([purchase(cal_type="device")], [{"purchase": "PO-1", "principal": "alice"}]), today=TODAY)
    assert found(result, "type_mismatch") == [("alice", None)]
    assert found(result, "unlicensed_user") == [("alice", None)]


def test_R01_one_device_cal_licenses_every_user_of_the_kiosk():
    e = Estate()
    e.add("KIOSK-01", kind="computer", ou="Kiosks")
    result = reconcile(e.view(), [req("kiosks", cal_type="device", ou=f"OU=Kiosks,DC=corp,DC=example,DC=com")],
                       inv([purchase(cal_type="device", quantity=1)], [{"purchase": "PO-1", "principal": "KIOSK-01$"}]),
                       today=TODAY)
    assert result.findings == ()


# ------------------------------------------------------------------ base and additive (R12-R15)

def test_R13_exchange_enterprise_cal_without_the_standard_cal_is_missing_its_base():
    e = one_user()
    result = reconcile(
        e.view(), [req(group="staff")],
        inv([purchase(), purchase("EXE", product="exchange-enterprise", version="2019")],
            [{"purchase": "PO-1", "principal": "alice"}, {"purchase": "EXE", "principal": "alice"}]),
        today=TODAY)
    assert found(result, "missing_base_cal") == [("alice", "exchange-standard")]
    (finding,) = [f for f in result.findings if f.kind == "missing_base_cal"]
    assert finding.severity == "error" and finding.purchase == "EXE" and not result.compliant


def test_R14_sharepoint_enterprise_needs_sharepoint_standard_and_is_fine_with_it():
    e = one_user()
    purchases = [purchase(), purchase("SPE", product="sharepoint-enterprise", version="2019"),
                 purchase("SPS", product="sharepoint-standard", version="2019")]
    held = [{"purchase": p, "principal": "alice"} for p in ("PO-1", "SPE")]
    lacking = reconcile(e.view(), [req(group="staff")], inv(purchases, held), today=TODAY)
    assert found(lacking, "missing_base_cal") == [("alice", "sharepoint-standard")]
    complete = reconcile(e.view(), [req(group="staff")],
                         inv(purchases, held + [{"purchase": "SPS", "principal": "alice"}]), today=TODAY)
    assert complete.findings == ()


def test_R12_rds_access_needs_a_windows_server_cal_too():
    e = one_user()
    result = reconcile(e.view(), [req("remote", product="rds", group="staff")],
                       inv([purchase("RDS", product="rds")], [{"purchase": "RDS", "principal": "alice"}]),
                       today=TODAY)
    assert found(result, "missing_base_cal") == [("alice", "windows-server")]


def test_R12_no_double_finding_when_windows_server_is_required_in_its_own_right():
    e = one_user()
    result = reconcile(e.view(), [req(group="staff"), req("remote", product="rds", group="staff")],
                       inv([purchase("RDS", product="rds")], [{"purchase": "RDS", "principal": "alice"}]),
                       today=TODAY)
    assert found(result, "unlicensed_user") == [("alice", None)]  # windows-server
    assert found(result, "missing_base_cal") == []


def test_R15_exchange_users_need_a_windows_server_cal_for_the_os_underneath():
    e = one_user()
    result = reconcile(e.view(), [req("mail", product="exchange-standard", version="2019", group="staff")],
                       inv([purchase("EXS", product="exchange-standard", version="2019")],
                           [{"purchase": "EXS", "principal": "alice"}]), today=TODAY)
    assert found(result, "missing_base_cal") == [("alice", "windows-server")]
    assert found(result, "unlicensed_user") == []


# ------------------------------------------------------------------ suites (R16-R18)

def test_R16_core_cal_suite_covers_windows_server_and_exchange_standard():
    e = one_user()
    result = reconcile(e.view(), [req(group="staff"), req("mail", product="exchange-standard", version="2019",
                                                          group="staff")],
                       inv([purchase("CORE", product="core-cal-suite")], [{"purchase": "CORE", "principal": "alice"}]),
                       today=TODAY)
    assert result.findings == ()


def test_R16_core_cal_suite_does_not_cover_enterprise_features():
    e = one_user()
    result = reconcile(e.view(), [req("archive", product="exchange-enterprise", version="2019", group="staff")],
                       inv([purchase("CORE", product="core-cal-suite")], [{"purchase": "CORE", "principal": "alice"}]),
                       today=TODAY)
    assert found(result, "unlicensed_user") == [("alice", None)]


def test_R17_enterprise_cal_suite_covers_enterprise_features_with_their_base():
    e = one_user()
    result = reconcile(e.view(), [req("archive", product="exchange-enterprise", version="2019", group="staff"),
                                  req("rms", product="rms", version="2019", group="staff")],
                       inv([purchase("ECAL", product="enterprise-cal-suite")],
                           [{"purchase": "ECAL", "principal": "alice"}]), today=TODAY)
    assert result.findings == ()


@pytest.mark.parametrize("suite", ["core-cal-suite", "enterprise-cal-suite"])
def test_R18_no_suite_includes_the_rds_cal(suite):
    e = one_user()
    result = reconcile(e.view(), [req("remote", product="rds", group="staff")],
                       inv([purchase("S", product=suite)], [{"purchase": "S", "principal": "alice"}]), today=TODAY)
    assert found(result, "unlicensed_user") == [("alice", None)]


# ------------------------------------------------------------------ exemptions (R19)

def test_R19_two_admins_per_product_and_service_accounts_are_never_required():
    e = Estate()
    for name in ("alice", "adm-1", "adm-2", "svc-backup"):
        e.add(name)
    e.add("staff", kind="group")
    e.member("staff", "alice", "adm-1", "adm-2", "svc-backup")
    exempt = ExemptConfig(admins={"windows-server": ["ADM-1", "adm-2"]}, service_accounts=["svc-backup"])
    result = reconcile(e.view(), [req(group="staff"), req("remote", product="rds", group="staff")], inv(),
                       today=TODAY, exempt=exempt)
    ws = sorted(f.principal.name for f in result.findings if f.kind == "unlicensed_user" and f.product == "windows-server")
    rds = sorted(f.principal.name for f in result.findings if f.kind == "unlicensed_user" and f.product == "rds")
    assert ws == ["alice"]
    assert rds == ["adm-1", "adm-2", "alice"]  # the admin exemption is per product
    assert [p.required for p in result.products if p.product == "windows-server"] == [1]


def test_R19_more_than_two_admins_for_a_product_is_a_config_error(tmp_path):
    data = {"directories": [{"name": "x", "type": "ldif", "path": "x.ldif"}], "inventory": "i.yaml",
            "exempt": {"admins": {"windows-server": ["a", "b", "c"]}}}
    with pytest.raises(ConfigError) as caught:
        parse_config(data, base_dir=tmp_path)
    assert "exempt.admins.windows-server" in str(caught.value)


# ------------------------------------------------------------------ expiry

@pytest.mark.parametrize(("days", "kind", "reason"), [
    (100, None, None), (90, "expiring", "90"), (25, "expiring", "30"), (7, "expiring", "7"), (0, "expiring", "7"),
    (-1, "expired", None),
])
def test_subscription_expiry_thresholds(days, kind, reason):
    result = reconcile(Estate().view(), [], inv([purchase(expires_on=TODAY + timedelta(days=days))]),
                       today=TODAY)
    got = [(f.kind, f.reason) for f in result.findings]
    assert got == ([] if kind is None else [(kind, reason)])


def test_expired_purchase_no_longer_counts_as_owned():
    e = one_user()
    result = reconcile(e.view(), [req(group="staff")],
                       inv([purchase(expires_on=TODAY - timedelta(days=1))],
                           [{"purchase": "PO-1", "principal": "alice"}]), today=TODAY)
    assert {f.kind for f in result.findings} == {"expired", "unlicensed_user", "shortfall"}


def test_custom_expiry_thresholds():
    result = reconcile(Estate().view(), [], inv([purchase(expires_on=TODAY + timedelta(days=100))]),
                       today=TODAY, rules=RulesConfig(expiry_warning_days=[120]))
    assert [(f.kind, f.reason) for f in result.findings] == [("expiring", "120")]


# ------------------------------------------------------------------ evidence (R36)

def test_R36_purchase_without_invoice_or_evidence_is_flagged():
    p = purchase()
    del p["invoice"]
    result = reconcile(Estate().view(), [], inv([p, purchase("PO-2")]), today=TODAY)
    assert found(result, "missing_evidence") == [("PO-1", "none")]


def test_R36_evidence_document_must_exist_next_to_the_inventory(tmp_path):
    (tmp_path / "invoices").mkdir()
    (tmp_path / "invoices" / "INV-1.pdf").write_bytes(b"%PDF-1.4")
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump({"purchases": [
        purchase("PO-1", evidence="invoices/INV-1.pdf"),
        purchase("PO-2", evidence="invoices/INV-2.pdf"),
    ]}))
    result = reconcile(Estate().view(), [], load_inventory(path), today=TODAY)
    assert found(result, "missing_evidence") == [("PO-2", "file_not_found")]


# ------------------------------------------------------------------ reassignment (R06)

def moved(estate_states=None, transfers=(), rules=None):
    e = Estate()
    for name in ("ann", "bob", "cat"):
        state, since = (estate_states or {}).get(name, ("active", None))
        e.add(name, state=state, since=since)
    return reconcile(e.view(), [], inv([purchase()], [{"purchase": "PO-1", "principal": "cat"}], transfers),
                     today=TODAY, rules=rules)


def test_R06_a_seat_moved_twice_in_a_month_is_a_premature_reassignment_each_time():
    result = moved(transfers=[
        {"purchase": "PO-1", "from": "ann", "to": "bob", "on": date(2026, 10, 1), "from_since": date(2026, 9, 1)},
        {"purchase": "PO-1", "from": "bob", "to": "cat", "on": date(2026, 10, 20)},
    ])
    findings = [f for f in result.findings if f.kind == "premature_reassignment"]
    assert [(f.principal.name, dict(f.details)["held_days"]) for f in findings] == [("bob", 30), ("cat", 19)]
    assert all("R06" in f.message for f in findings)


def test_R06_moving_after_90_days_is_fine():
    result = moved(transfers=[{"purchase": "PO-1", "from": "ann", "to": "cat", "on": date(2026, 10, 1),
                               "from_since": date(2026, 7, 3)}])
    assert found(result, "premature_reassignment") == []


@pytest.mark.parametrize("reason", ["departed", "hardware_failure", "temporary_cover"])
def test_R06_lawful_reasons_allow_an_early_move(reason):
    result = moved(transfers=[{"purchase": "PO-1", "from": "ann", "to": "cat", "on": date(2026, 10, 1),
                               "from_since": date(2026, 9, 20), "reason": reason}])
    assert found(result, "premature_reassignment") == []


def test_R06_a_departed_previous_holder_makes_the_early_move_lawful():
    left = datetime(2026, 9, 30, tzinfo=timezone.utc)
    result = moved({"ann": ("disabled", left)}, transfers=[
        {"purchase": "PO-1", "from": "ann", "to": "cat", "on": date(2026, 10, 1), "from_since": date(2026, 9, 20)}])
    assert found(result, "premature_reassignment") == []


def test_R06_minimum_days_is_a_parameter():
    transfers = [{"purchase": "PO-1", "from": "ann", "to": "cat", "on": date(2026, 10, 1),
                  "from_since": date(2026, 9, 1)}]
    assert found(moved(transfers=transfers, rules=RulesConfig(reassignment_min_days=30)),
                 "premature_reassignment") == []


# ------------------------------------------------------------------ vendor-portal owners

@pytest.mark.parametrize(("state", "reason"), [("disabled", "disabled"), ("deleted", "deleted"), (None, "not_found")])
def test_purchase_owned_by_a_departed_or_unknown_account(state, reason):
    e = Estate()
    if state:
        e.add("jsmith", state=state)
    result = reconcile(e.view(), [], inv([purchase("AV-2026", product="windows-server", owner="jsmith",
                                                   activation="vendor_portal")]), today=TODAY)
    assert found(result, "owner_departed") == [("jsmith", reason)]


def test_purchase_owned_by_an_active_account_is_fine():
    e = Estate()
    e.add("jsmith")
    result = reconcile(e.view(), [], inv([purchase(owner="jsmith")]), today=TODAY)
    assert result.findings == ()


def test_non_cal_subscription_lives_in_the_register():
    data = {
        "products": [{"key": "eset-endpoint", "name": "ESET Endpoint Security", "vendor": "ESET",
                      "kind": "subscription", "cal_types": ["device"]}],
        "purchases": [{"id": "AV-2026", "product": "eset-endpoint", "version": "11", "cal_type": "device",
                       "quantity": 40, "activation": "vendor_portal", "owner": "jsmith",
                       "expires_on": TODAY + timedelta(days=20), "invoice": "ESET-1"}],
    }
    e = Estate()
    e.add("jsmith", state="disabled")
    result = reconcile(e.view(), [], parse_inventory(data), today=TODAY)
    assert sorted((f.kind, f.reason) for f in result.findings) == [("expiring", "30"), ("owner_departed", "disabled")]


# ------------------------------------------------------------------ per-user RDS issuance (R25, R27)

def rds_estate(issued: list[tuple[str, datetime | None]]) -> DirectoryView:
    principals = tuple(
        Principal(directory="corp", guid=f"g{i}", kind="user", name=f"u{i}", dn=f"CN=u{i},DC=corp", state="active",
                  rds_cals=(RdsPerUserCal(version=v, expires=exp),))
        for i, (v, exp) in enumerate(issued))
    return DirectoryView(principals=principals, directories=("corp",))


def test_R25_R27_more_issued_per_user_rds_cals_than_purchased_is_over_issue():
    soon = datetime(2026, 12, 20, tzinfo=timezone.utc)
    gone = datetime(2026, 10, 1, tzinfo=timezone.utc)
    view = rds_estate([("2022", soon), ("2022", soon), ("2022", soon), ("2022", gone), ("2019", soon)])
    result = reconcile(view, [], inv([purchase("RDS", product="rds", quantity=2),
                                      purchase("RDS19", product="rds", version="2019", quantity=1)]), today=TODAY)
    (finding,) = [f for f in result.findings if f.kind == "rds_over_issued"]
    assert (finding.version, dict(finding.details)) == ("2022", {"issued": 3, "owned": 2})
    assert finding.severity == "error"


def test_R25_issued_within_the_purchased_count_is_fine():
    soon = datetime(2026, 12, 20, tzinfo=timezone.utc)
    result = reconcile(rds_estate([("2022", soon)] * 2), [], inv([purchase("RDS", product="rds", quantity=2)]),
                       today=TODAY)
    assert found(result, "rds_over_issued") == []


# ------------------------------------------------------------------ properties

names = st.lists(st.sampled_from(["ann", "bob", "cat", "dan", "eve", "fay"]), unique=True, max_size=6)


@settings(max_examples=60, deadline=None)
@given(names, names, st.integers(0, 8), st.sampled_from(["2016", "2019", "2022"]), st.randoms(use_true_random=False))
def test_property_reconcile_is_deterministic_whatever_the_input_order(members, holders, quantity, version, rnd):
    e = Estate()
    for n in ["ann", "bob", "cat", "dan", "eve", "fay"]:
        e.add(n)
    e.add("staff", kind="group")
    e.member("staff", *members)
    purchases = [purchase(version=version, quantity=quantity), purchase("EXE", product="exchange-enterprise",
                                                                        version="2019", quantity=quantity)]
    assignments = [{"purchase": p, "principal": h} for h in holders for p in ("PO-1", "EXE")]
    reqs = [req(group="staff"), req("mail", product="exchange-enterprise", version="2019", group="staff")]
    first = reconcile(e.view(), reqs, inv(purchases, assignments), today=TODAY)
    view = e.view()
    shuffled = DirectoryView(principals=tuple(rnd.sample(view.principals, len(view.principals))),
                             memberships=tuple(rnd.sample(view.memberships, len(view.memberships))),
                             directories=view.directories)
    second = reconcile(shuffled, list(reversed(reqs)), inv(list(reversed(purchases)), rnd.sample(assignments, len(assignments))),
                       today=TODAY)
    assert first == second


@settings(max_examples=60, deadline=None)
@given(names, st.integers(0, 6), st.integers(1, 6))
def test_property_adding_a_valid_purchase_never_adds_a_finding_of_shortfall_or_unlicensed(members, quantity, extra):
    e = Estate()
    for n in ["ann", "bob", "cat", "dan", "eve", "fay"]:
        e.add(n)
    e.add("staff", kind="group")
    e.member("staff", *members)
    base = reconcile(e.view(), [req(group="staff")], inv([purchase(quantity=quantity)]), today=TODAY)
    more = reconcile(e.view(), [req(group="staff")],
                     inv([purchase(quantity=quantity), purchase("PO-2", quantity=extra)]), today=TODAY)
    assert sum(p.shortfall for p in more.products) <= sum(p.shortfall for p in base.products)
    assert {f.key for f in more.findings if f.kind == "shortfall"} <= {f.key for f in base.findings if f.kind == "shortfall"}


def test_R25_R08_a_2008_generation_cal_counts_against_a_2008_R2_purchase():
    soon = datetime(2026, 12, 20, tzinfo=timezone.utc)
    result = reconcile(rds_estate([("2008", soon)] * 2), [],
                       inv([purchase("RDS", product="rds", version="2008 R2", quantity=2)]), today=TODAY)
    assert found(result, "rds_over_issued") == []


_PURCHASE = {"id": "PO-1", "product": "windows-server", "version": "2022", "cal_type": "user", "quantity": 4,
             "purchased_on": "2024-01-17", "invoice": "INV-1"}


@pytest.mark.parametrize("data, names", [
    ({"purchases": [{**_PURCHASE, "quantity": -3}]}, ["purchases[0].quantity", "greater than or equal to 0"]),
    ({"purchases": [{**_PURCHASE, "purchased_on": "2024-02-30"}]}, ["purchases[0].purchased_on", "day value"]),
    ({"purchases": [_PURCHASE, dict(_PURCHASE)]}, ["purchases[1].id", "'PO-1' is already used by purchases[0]"]),
    ({"purchases": [{**_PURCHASE, "product": "sharepoint-deluxe"}]}, ["purchases[0].product", "unknown product"]),
    ({"purchases": [_PURCHASE], "assignments": [{"purchase": "PO-9", "principal": "ann", "assigned_on": "2024-02-01"}]},
     ["assignments[0].purchase", "no purchase with id 'PO-9'"]),
    ({"purchases": [_PURCHASE], "assignments": [{"purchase": "PO-1", "principal": "ann", "assigned_on": "yesterday"}]},
     ["assignments[0].assigned_on"]),
], ids=["negative-quantity", "impossible-date", "duplicate-id", "unknown-product", "unknown-purchase", "bad-date"])
def test_bad_inventory_entries_are_named(data, names):
    # Issue 7: a bad inventory is an error naming the entry, never a silently wrong count.
    with pytest.raises(InventoryError) as caught:
        parse_inventory(data)
    for text in names:
        assert text in str(caught.value)


def test_an_unchanged_inventory_file_is_parsed_once_and_an_edit_is_seen(tmp_path):
    # The service reconciles every cycle; a 50,000-assignment register takes seconds to parse.
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump({"purchases": [_PURCHASE]}))
    first, second = load_inventory(path), load_inventory(path)
    assert second.purchases is first.purchases  # the same parse, not a new one
    path.write_text(yaml.safe_dump({"purchases": [{**_PURCHASE, "quantity": 9}]}))
    assert load_inventory(path).purchases[0].quantity == 9
    path.write_text("purchases: [")
    with pytest.raises(InventoryError, match="not valid YAML"):
        load_inventory(path)

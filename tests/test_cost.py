"""Cost advice: the cheapest mix of User and Device CALs (R01, R04) on plain data.  No servers.

R04: an access (user u, device d) is licensed when u holds a User CAL or d a Device CAL.
R01: every access must be licensed.  The cheapest mix is a minimum-weight vertex cover.
"""

from __future__ import annotations

import random
from decimal import Decimal
from itertools import combinations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.compliance.cost import (
    AccessPair,
    CostAdvice,
    cheapest_mix,
    load_usage_csv,
    parse_usage_csv,
    verify_cover,
)
from agent.errors import InventoryError

DEVICE_PRICE = Decimal("100.00")
USER_PRICE = Decimal("130.00")  # the post-2015 ratio: a User CAL costs about 1.3x a Device CAL


def pairs(*items: str) -> list[AccessPair]:
    """``pairs("alice:pc1", "bob:pc1")`` -> AccessPairs."""
    return [AccessPair(*item.split(":")) for item in items]


def mix(ps, pu=USER_PRICE, pd=DEVICE_PRICE, **kw) -> CostAdvice:
    return cheapest_mix(ps, pu, pd, product="Windows Server", **kw)


# --- hand-made covers ------------------------------------------------------------------------


def test_r04_shift_kiosk_shared_by_three_users_needs_one_device_cal():
    # kiosk <- ann, ben, cat.  Covers: {kiosk} = 100, {ann, ben, cat} = 390.  -> 1 device CAL.
    advice = mix(pairs("ann:kiosk", "ben:kiosk", "cat:kiosk"))
    assert advice.users_to_license == ()
    assert advice.devices_to_license == ("kiosk",)
    assert advice.cost == Decimal("100.00")
    assert (advice.cost_all_user, advice.cost_all_device) == (Decimal("390.00"), Decimal("100.00"))
    assert advice.best_single_type == "device" and advice.saving_vs_best_single_type == 0


def test_r04_user_with_four_devices_needs_one_user_cal():
    # dan -> laptop, desktop, phone, tablet.  {dan} = 130 beats the 4 devices = 400.
    advice = mix(pairs("dan:laptop", "dan:desktop", "dan:phone", "dan:tablet"))
    assert (advice.users_to_license, advice.devices_to_license) == (("dan",), ())
    assert advice.cost == Decimal("130.00")
    assert advice.best_single_type == "user" and advice.best_single_type_cost == Decimal("130.00")


def test_r04_user_with_exactly_one_device_gets_the_cheaper_device_cal():
    # eve -> pc1 only: {pc1} = 100 < {eve} = 130 at the 1.3x ratio.
    advice = mix(pairs("eve:pc1"))
    assert (advice.users_to_license, advice.devices_to_license) == ((), ("pc1",))
    assert advice.cost == Decimal("100.00")


def test_r04_mix_of_kiosk_and_roaming_manager_beats_both_single_types():
    # kiosk <- ann, ben, cat, max;  max -> l1, l2, l3 as well.
    #   all users  {ann, ben, cat, max}       = 4 x 130 = 520
    #   all devices {kiosk, l1, l2, l3}       = 4 x 100 = 400
    #   mix {max} + {kiosk}                   = 130 + 100 = 230  (covers every pair)
    ps = pairs("ann:kiosk", "ben:kiosk", "cat:kiosk", "max:kiosk", "max:l1", "max:l2", "max:l3")
    advice = mix(ps)
    assert advice.users_to_license == ("max",)
    assert advice.devices_to_license == ("kiosk",)
    assert advice.cost == Decimal("230.00")
    assert advice.best_single_type == "device"
    assert advice.saving_vs_best_single_type == Decimal("170.00")
    assert advice.message == ("Windows Server: license 1 user and 1 device for 230.00 instead of 400.00 "
                              "with device CALs only: saves 170.00")
    assert verify_cover(ps, advice.users_to_license, advice.devices_to_license) == []


def test_r04_message_with_thousands_matches_the_admin_wording():
    # 12 roaming users with 5 devices each (60 devices) plus 30 shared kiosks used by 3 users each:
    #   roaming: user CAL 100 < 5 devices x 100;  kiosk: 1 device CAL < 3 user CALs.
    #   mix = 12 x 100 + 30 x 100 = 4,200.00;  users only: 12 + 90 users = 10,200.00;
    #   devices only: 60 + 30 = 9,000.00.
    ps = [AccessPair(f"r{u:02}", f"r{u:02}-pc{d}") for u in range(12) for d in range(5)]
    ps += [AccessPair(f"k{k:02}-{s}", f"kiosk{k:02}") for k in range(30) for s in range(3)]
    advice = mix(ps, pu=Decimal("100"), pd=Decimal("100"))
    assert (len(advice.users_to_license), len(advice.devices_to_license)) == (12, 30)
    assert advice.message == ("Windows Server: license 12 users and 30 devices for 4,200.00 instead of "
                              "9,000.00 with device CALs only: saves 4,800.00")


def test_r04_tie_on_cost_prefers_fewer_licences():
    # pd = 200, pu = 100; kiosk <- ann, ben:  {kiosk} = 200 (1 licence) vs {ann, ben} = 200 (2).
    advice = mix(pairs("ann:kiosk", "ben:kiosk"), pu=Decimal(100), pd=Decimal(200))
    assert (advice.users_to_license, advice.devices_to_license) == ((), ("kiosk",))
    # and the other way round: pu = 200, pd = 100; ann -> x, y:  {ann} = 200 (1) vs {x, y} = 200 (2).
    advice = mix(pairs("ann:x", "ann:y"), pu=Decimal(200), pd=Decimal(100))
    assert (advice.users_to_license, advice.devices_to_license) == (("ann",), ())


def test_r04_tie_on_cost_and_count_prefers_user_cals():
    # Equal prices.  ann -> x, y;  ben -> y.  Covers of 2 licences: {ann, ben}, {ann, y}, {x, y}.
    # All cost 200; user CALs preferred -> {ann, ben}.
    advice = mix(pairs("ann:x", "ann:y", "ben:y"), pu=Decimal(100), pd=Decimal(100))
    assert (advice.users_to_license, advice.devices_to_license) == (("ann", "ben"), ())
    # one user, one device, equal prices: user CAL.
    advice = mix(pairs("eve:pc1"), pu=Decimal(100), pd=Decimal(100))
    assert (advice.users_to_license, advice.devices_to_license) == (("eve",), ())
    assert advice.best_single_type == "user"


def test_r04_user_and_computer_with_the_same_name_are_different_vertices():
    # "lab" the user -> pc1, pc2, pc3;  ann, ben -> "lab" the computer.  Cover {lab user} + {lab pc}.
    advice = mix(pairs("lab:pc1", "lab:pc2", "lab:pc3", "ann:lab", "ben:lab"))
    assert (advice.users_to_license, advice.devices_to_license) == (("lab",), ("lab",))
    assert advice.cost == Decimal("230.00")


def test_r01_no_access_needs_no_cal():
    advice = mix([])
    assert advice.cost == 0 and advice.licences == 0
    assert advice.message == "Windows Server: no access recorded, so no CALs are needed"


def test_r04_single_type_optimum_says_so():
    advice = mix(pairs("ann:kiosk", "ben:kiosk"))
    assert advice.message == ("Windows Server: device CALs only are cheapest: license 1 device for 100.00 "
                              "(user CALs only: 260.00)")


def test_r04_prices_with_more_than_two_places_are_exact():
    # 0.125 vs 0.1: ann -> pc1 costs 0.1 as a device; ann -> pc1, pc2 costs 0.125 as a user (< 0.2).
    advice = mix(pairs("ann:pc1", "ann:pc2", "ben:pc3"), pu=Decimal("0.125"), pd=Decimal("0.1"))
    assert (advice.users_to_license, advice.devices_to_license) == (("ann",), ("pc3",))
    assert advice.cost == Decimal("0.225")
    assert "0.225" in advice.message


def test_r04_held_cals_give_what_to_buy_and_what_is_spare():
    ps = pairs("ann:kiosk", "ben:kiosk", "cat:kiosk", "max:kiosk", "max:l1", "max:l2", "max:l3")
    advice = mix(ps, currently_user=0, currently_device=3)
    assert (advice.user_cals_to_buy, advice.device_cals_to_buy) == (1, 0)
    assert (advice.user_cals_surplus, advice.device_cals_surplus) == (0, 2)
    assert advice.message.endswith("; buy 1 user CAL, 2 device CALs held but not needed")
    unknown = mix(ps)
    assert unknown.user_cals_to_buy is None and ";" not in unknown.message


@pytest.mark.parametrize("bad", [1.3, "130", None, True])
def test_prices_must_be_exact_amounts(bad):
    with pytest.raises(TypeError):
        mix(pairs("ann:pc1"), pu=bad)


@pytest.mark.parametrize("bad", [Decimal("-1"), Decimal("NaN"), Decimal("Infinity")])
def test_prices_must_be_finite_and_not_negative(bad):
    with pytest.raises(ValueError):
        mix(pairs("ann:pc1"), pd=bad)


def test_held_counts_must_be_whole_and_not_negative():
    with pytest.raises(ValueError):
        mix(pairs("ann:pc1"), currently_user=-1)


def test_r01_verify_cover_lists_the_unlicensed_accesses():
    ps = pairs("ann:pc1", "ben:pc1", "ben:pc2", "cat:pc3")
    assert verify_cover(ps, ["ben"], ["pc1"]) == pairs("cat:pc3")
    assert verify_cover(ps, ["ben", "cat"], ["pc1"]) == []
    assert verify_cover(ps, [], []) == sorted(ps)


# --- usage CSV -------------------------------------------------------------------------------


def test_r04_csv_strips_domain_and_dollar_and_folds_case_and_duplicates():
    text = ("Time,User,Computer,Event\n"
            "2026-11-01,CORP\\Alice,PC01$,4624\n"
            "\n"
            "2026-11-02,alice,pc01,4624\n"
            "2026-11-02,CORP\\BOB,CORP\\KIOSK-1$,4624\n")
    assert parse_usage_csv(text) == [AccessPair("alice", "pc01"), AccessPair("bob", "kiosk-1")]


def test_csv_header_is_case_insensitive_in_any_column_order_with_bom():
    text = "\ufeffCOMPUTER, User \r\nPC2,ann\r\n"
    assert parse_usage_csv(text) == [AccessPair("ann", "pc2")]


def test_csv_header_only_means_no_access():
    assert parse_usage_csv("user,computer\n") == []


def test_csv_empty_names_are_reported_by_line_number_all_at_once():
    text = ("user,computer\n"     # line 1
            "ann,pc1\n"           # 2
            "\n"                  # 3 (blank: skipped)
            "ben,\n"              # 4
            ",pc3\n"              # 5
            "CORP\\,pc4\n"        # 6: a domain and no name
            "cat,$\n"             # 7: a bare $
            "dan\n")              # 8: the computer cell is missing
    with pytest.raises(InventoryError) as caught:
        parse_usage_csv(text, source="usage.csv")
    err = caught.value
    assert err.source == "usage.csv"
    assert err.problems == [
        "line 4: empty computer",
        "line 5: empty user",
        "line 6: empty user",
        "line 7: empty computer",
        "line 8: empty computer (the row has 1 of 2 columns)",
    ]
    assert "usage.csv" in str(err) and "line 7: empty computer" in str(err)


def test_csv_line_numbers_count_physical_lines_of_quoted_fields():
    text = 'note,user,computer\n"two\nlines",ann,pc1\n"x",,pc2\n'
    with pytest.raises(InventoryError) as caught:
        parse_usage_csv(text)
    assert caught.value.problems == ["line 4: empty user"]


def test_csv_without_the_needed_columns_is_refused():
    with pytest.raises(InventoryError) as caught:
        parse_usage_csv("account;workstation\nann;pc1\n", source="usage.csv")
    assert caught.value.problems == ["line 1: no 'user' column (the header has: 'account;workstation')",
                                     "line 1: no 'computer' column (the header has: 'account;workstation')"]
    with pytest.raises(InventoryError, match="2 columns named 'user'"):
        parse_usage_csv("user,computer,USER\nann,pc1,bob\n")
    with pytest.raises(InventoryError, match="no header line"):
        parse_usage_csv("\n\n")


def test_csv_with_a_problem_on_every_line_reports_the_first_twenty():
    text = "user,computer\n" + "ann,\n" * 50
    with pytest.raises(InventoryError) as caught:
        parse_usage_csv(text)
    assert len(caught.value.problems) == 21
    assert caught.value.problems[-1] == "... and 30 more rows with problems"


def test_csv_file_is_read_as_utf8_and_missing_file_named(tmp_path):
    path = tmp_path / "usage.csv"
    path.write_text("user,computer\nJosé,PC-Ü1$\n", encoding="utf-8-sig")
    assert load_usage_csv(path) == [AccessPair("josé", "pc-ü1")]
    with pytest.raises(InventoryError, match="not found"):
        load_usage_csv(tmp_path / "nope.csv")


# --- properties ------------------------------------------------------------------------------

NAMES = [f"n{i}" for i in range(6)]  # users and devices share names on purpose


@st.composite
def graphs(draw):
    """Up to 6 users x 6 devices, any edges, prices 0.00..5.00 (zero included on purpose)."""
    n_users = draw(st.integers(1, 6))
    n_devices = draw(st.integers(1, 6))
    edges = draw(st.lists(st.tuples(st.integers(0, n_users - 1), st.integers(0, n_devices - 1)),
                          max_size=20))
    ps = [AccessPair(NAMES[u], NAMES[d]) for u, d in edges]
    pu = Decimal(draw(st.integers(0, 500))) / 100
    pd = Decimal(draw(st.integers(0, 500))) / 100
    return ps, pu, pd


def brute_force(ps, pu, pd):
    """The optimum's key (cost, licences, device licences) over every cover.

    Every subset of users is tried; for each, the cheapest devices that complete it into a cover
    are exactly the devices of the pairs those users leave uncovered (any other device only adds
    cost or a licence), so this enumerates every candidate optimum over all user x device subsets.
    """
    users = sorted({p.user for p in ps})
    best = None
    for k in range(len(users) + 1):
        for chosen in combinations(users, k):
            devices = {p.computer for p in ps if p.user not in chosen}
            key = (k * pu + len(devices) * pd, k + len(devices), len(devices))
            best = key if best is None or key < best else best
    return best


@settings(max_examples=300, deadline=None)
@given(graphs())
def test_r01_r04_property_cover_is_valid_and_optimal(graph):
    ps, pu, pd = graph
    advice = cheapest_mix(ps, pu, pd, product="p")
    assert verify_cover(ps, advice.users_to_license, advice.devices_to_license) == []  # R01
    assert advice.cost == len(advice.users_to_license) * pu + len(advice.devices_to_license) * pd
    expected = brute_force(ps, pu, pd)
    assert (advice.cost, advice.licences, len(advice.devices_to_license)) == expected
    assert advice.cost <= advice.cost_all_user and advice.cost <= advice.cost_all_device
    assert advice.saving_vs_best_single_type == min(advice.cost_all_user, advice.cost_all_device) - advice.cost >= 0


@settings(max_examples=200, deadline=None)
@given(graphs(), st.randoms(use_true_random=False))
def test_r04_property_result_does_not_depend_on_input_order_or_duplicates(graph, rnd):
    ps, pu, pd = graph
    shuffled = ps + rnd.sample(ps, k=len(ps) // 2)
    rnd.shuffle(shuffled)
    assert cheapest_mix(shuffled, pu, pd, product="p") == cheapest_mix(ps, pu, pd, product="p")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["Ann", "ann", "CORP\\ANN", "bob"]),
                          st.sampled_from(["PC1", "pc1$", "CORP\\Pc1$", "kiosk"])), max_size=8))
def test_r04_property_csv_spellings_of_one_name_meet(rows):
    text = "user,computer\n" + "".join(f"{u},{c}\n" for u, c in rows)
    expected = sorted({AccessPair(u.rsplit("\\")[-1].lower(), c.rsplit("\\")[-1].rstrip("$").lower())
                       for u, c in rows})
    assert parse_usage_csv(text) == expected


def test_r04_larger_random_graph_is_covered_and_no_worse_than_single_types():
    rnd = random.Random(7)
    ps = [AccessPair(f"u{u}", f"d{rnd.randrange(300)}") for u in range(500) for _ in range(3)]
    advice = mix(ps)
    assert verify_cover(ps, advice.users_to_license, advice.devices_to_license) == []
    assert advice.cost <= min(advice.cost_all_user, advice.cost_all_device)

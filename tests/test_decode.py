"""Decoding AD wire values: FILETIME, GeneralizedTime, GUID, SID, DNs.  Plain data."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.directory import decode
from agent.directory.ad_entries import entry_from_ad
from agent.directory.records import EntryKind


@pytest.mark.parametrize("value", [0, "0", 0x7FFFFFFFFFFFFFFF, "9223372036854775807", -1, None])
def test_filetime_never_values_mean_no_date(value):
    assert decode.filetime(value) is None


def test_filetime_known_value():
    # 2024-01-17 09:30:00 UTC
    assert decode.filetime(133499574000000000) == datetime(2024, 1, 17, 9, 30, tzinfo=timezone.utc)


@given(st.datetimes(min_value=datetime(1700, 1, 1), max_value=datetime(9000, 1, 1), timezones=st.just(timezone.utc)))
def test_filetime_round_trip(moment):
    assert decode.filetime(decode.to_filetime(moment)) == moment


@pytest.mark.parametrize("text,expected", [
    ("20240117093000.0Z", datetime(2024, 1, 17, 9, 30, tzinfo=timezone.utc)),
    ("20240117093000Z", datetime(2024, 1, 17, 9, 30, tzinfo=timezone.utc)),
    ("20240117113000+0200", datetime(2024, 1, 17, 9, 30, tzinfo=timezone.utc)),
])
def test_generalized_time(text, expected):
    assert decode.generalized_time(text) == expected


def outcome(parse, value):
    try:
        return parse(value)
    except ValueError as exc:
        return ("ValueError", str(exc))


@settings(max_examples=2000, deadline=None)
@given(st.one_of(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31))
    .map(lambda m: m.strftime("%Y%m%d%H%M%S")),
    st.text(alphabet="0123456789", min_size=14, max_size=14),  # month 13, hour 24, day 00...
    st.text(alphabet="0123456789Z.+- \u0663", min_size=13, max_size=16),
).map(lambda main: main + "Z"))
def test_generalized_time_fast_path_agrees_with_the_general_parser(value):
    # The 15-character "...Z" form skips the general parse: same moment, or the same error.
    assert outcome(decode.generalized_time, value) == outcome(decode._generalized_time, value)


def test_generalized_time_rejects_garbage():
    with pytest.raises(ValueError):
        decode.generalized_time("yesterday")


@given(st.uuids())
def test_guid_round_trip_uses_little_endian_layout(value):
    assert decode.guid(value.bytes_le) == str(value)
    assert decode.guid_bytes(str(value)) == value.bytes_le


def test_guid_known_layout():
    # AD stores the first three fields little-endian.
    raw = bytes.fromhex("78563412341278560102030405060708")
    assert decode.guid(raw) == "12345678-1234-5678-0102-030405060708"


def test_sid_known_value_and_round_trip():
    text = "S-1-5-21-3623811015-3361044348-30300820-1013"
    raw = decode.sid_bytes(text)
    assert raw[:8] == bytes([1, 5, 0, 0, 0, 0, 0, 5])
    assert decode.sid(raw) == text


def test_sid_length_mismatch_is_an_error():
    with pytest.raises(ValueError):
        decode.sid(bytes([1, 5, 0, 0, 0, 0, 0, 5, 1, 2, 3]))


@pytest.mark.parametrize("dn,base,inside", [
    ("CN=a,OU=Staff,DC=corp,DC=example,DC=com", "ou=staff, dc=corp,dc=example,dc=com", True),
    ("CN=a,OU=Staff2,DC=corp,DC=example,DC=com", "OU=Staff,DC=corp,DC=example,DC=com", False),
    ("OU=Staff,DC=corp,DC=example,DC=com", "OU=Staff,DC=corp,DC=example,DC=com", True),
    ("CN=Doe\\, John,OU=Staff,DC=corp", "OU=Staff,DC=corp", True),
    ("CN=x,OU=A\\,OU=Staff,DC=corp", "OU=Staff,DC=corp", False),
])
def test_dn_subtree(dn, base, inside):
    assert decode.dn_is_under(dn, base) is inside
    assert decode.key_is_under(decode.dn_key(dn), decode.dn_key(base)) is inside


# RDNs as directories hand them out: attribute=value, where a comma, a backslash or a space at
# either end is escaped in the value.
_values = st.lists(st.sampled_from(["a", "B", " ", "=", "\\,", "\\\\", "\\ ", "\\2c"]), max_size=5).map("".join)
_rdns = st.builds("{}={}".format, st.sampled_from(["cn", "OU", " dc "]), _values)


@settings(max_examples=3000, deadline=None)
@given(st.lists(_rdns, min_size=1, max_size=4), st.integers(0, 3), st.lists(_rdns, max_size=2).map(",".join))
def test_subtree_on_stored_keys_agrees_with_subtree_on_dns(rdns, cut, other):
    # reconcile selects `ou:` from the keys the store keeps (no DN parsed per principal); it must
    # answer as the DN comparison does, escaped commas and backslashes included.
    dn = ",".join(rdns)
    for base in (",".join(rdns[cut:]), other, other + "," + ",".join(rdns[-1:])):
        assert decode.key_is_under(decode.dn_key(dn), decode.dn_key(base)) is decode.dn_is_under(dn, base), base


def _raw(**attrs):
    return {k: [v if isinstance(v, bytes) else str(v).encode()] for k, v in attrs.items()}


def test_entry_decodes_user_uac_and_dates():
    guid = uuid.uuid4()
    raw = _raw(objectGUID=guid.bytes_le, sAMAccountName="jdoe", userAccountControl=514,
               accountExpires=0, lastLogonTimestamp=133499574000000000, primaryGroupID=513,
               objectSid=decode.sid_bytes("S-1-5-21-1-2-3-1105"))
    raw["objectClass"] = [b"top", b"person", b"organizationalPerson", b"user"]
    entry = entry_from_ad("CN=John,DC=corp", raw)
    assert entry.kind is EntryKind.USER and entry.guid == str(guid)
    assert entry.disabled and entry.account_expires is None
    assert entry.domain_sid == "S-1-5-21-1-2-3"
    assert entry.last_logon == datetime(2024, 1, 17, 9, 30, tzinfo=timezone.utc)


def test_computer_name_loses_trailing_dollar():
    raw = _raw(objectGUID=uuid.uuid4().bytes_le, sAMAccountName="KIOSK-01$", userAccountControl=4096)
    raw["objectClass"] = [b"top", b"user", b"computer"]
    assert entry_from_ad("CN=KIOSK-01,DC=corp", raw).name == "KIOSK-01"


def test_missing_guid_is_a_clear_error():
    raw = _raw(sAMAccountName="x")
    raw["objectClass"] = [b"user"]
    with pytest.raises(ValueError, match="objectGUID"):
        entry_from_ad("CN=x,DC=corp", raw)


def test_bad_filetime_names_the_attribute():
    raw = _raw(objectGUID=uuid.uuid4().bytes_le, sAMAccountName="x", accountExpires="soon")
    raw["objectClass"] = [b"user"]
    with pytest.raises(ValueError, match="accountExpires"):
        entry_from_ad("CN=x,DC=corp", raw)


def test_contacts_and_ous_are_not_principals():
    raw = _raw(objectGUID=uuid.uuid4().bytes_le)
    raw["objectClass"] = [b"top", b"person", b"contact"]
    assert entry_from_ad("CN=c,DC=corp", raw) is None


# Per-user RDS CAL attributes (R27).  Values as real licence servers wrote them (see
# decode._RDS_CAL_VERSIONS for the sources).

@pytest.mark.parametrize("value,expected", [
    ("393216", "2008"),  # 0x00060000: the "2008 or 2008 R2" CAL
    (b"393218", "2012"),  # 0x00060002
    (" 393218 ", "2012"),
    ("C50-6.00-S", "2008"),  # key pack ID, seen in msTSLicenseVersion3
    ("c50-6.02-s", "2012"),
    ("C50-10.01-S", "2019"),
])
def test_rds_cal_version_known_values(value, expected):
    assert decode.rds_cal_version(value) == expected


@pytest.mark.parametrize("value", [None, "", "7", "393217", "655360", "655361", "6.1", "2022", "C50-9.99-S",
                                   "A02-6.00-S"])
def test_rds_cal_version_unknown_values_are_none_not_guesses(value):
    # "7" is what msTSLicenseVersion2 held in both real samples; A02 is a per-device key pack.
    assert decode.rds_cal_version(value) is None


def _rds_user(**attrs):
    raw = _raw(objectGUID=uuid.uuid4().bytes_le, sAMAccountName="rdsuser", **attrs)
    raw["objectClass"] = [b"top", b"person", b"organizationalPerson", b"user"]
    return entry_from_ad("CN=rdsuser,DC=corp", raw)


def test_entry_with_one_cal_as_a_licence_server_writes_it():
    # The smart.local sample: the 2 and 3 attributes describe the same CAL, they are not more CALs.
    entry = _rds_user(msTSExpireDate="20220118115555.0Z", msTSLicenseVersion="393218",
                      msTSManagingLS="00252-20000-35572-AT477", msTSLicenseVersion2="7",
                      msTSLicenseVersion3="C50-6.02-S")
    (cal,) = entry.rds_licenses
    assert cal.version == "2012" and cal.license_server == "00252-20000-35572-AT477"
    assert cal.expires == datetime(2022, 1, 18, 11, 55, 55, tzinfo=timezone.utc)


def test_entry_version_falls_back_to_the_key_pack_id():
    entry = _rds_user(msTSExpireDate="20260301000000.0Z", msTSLicenseVersion="655361",
                      msTSManagingLS="00000-00000-00000-AA000", msTSLicenseVersion3="C50-10.01-S")
    assert [c.version for c in entry.rds_licenses] == ["2019"]
    entry = _rds_user(msTSExpireDate="20260301000000.0Z", msTSLicenseVersion="655361")
    assert [(c.version, c.license_server) for c in entry.rds_licenses] == [(None, None)]


def test_entry_with_second_and_fourth_cal():
    entry = _rds_user(msTSExpireDate="20260301000000.0Z", msTSLicenseVersion="393216", msTSManagingLS="LS-1",
                      msTSExpireDate2="20260402000000.0Z", msTSLicenseVersion2="393218", msTSManagingLS2="LS-2",
                      msTSExpireDate4="20260503000000.0Z", msTSLicenseVersion4="C50-6.02-S")
    assert [(c.version, c.expires.month, c.license_server) for c in entry.rds_licenses] == [
        ("2008", 3, "LS-1"), ("2012", 4, "LS-2"), ("2012", 5, None)]


def test_entry_without_rds_attributes_and_computers_carry_none():
    assert _rds_user().rds_licenses == ()
    raw = _raw(objectGUID=uuid.uuid4().bytes_le, sAMAccountName="RDSH-01$", msTSExpireDate="20260301000000.0Z",
               msTSLicenseVersion="393218")
    raw["objectClass"] = [b"top", b"user", b"computer"]
    assert entry_from_ad("CN=RDSH-01,DC=corp", raw).rds_licenses == ()


def test_bad_rds_expiry_names_the_attribute():
    with pytest.raises(ValueError, match="msTSExpireDate2"):
        _rds_user(msTSExpireDate2="next month")


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet="aB=, ;\\\t\u2003\u00e9#+\"x\n", max_size=24))
def test_dn_parts_fast_paths_agree_with_the_general_parser(dn):
    # dn_parts takes shortcuts for DNs without escapes; they must never change a comparison key.
    assert decode.dn_parts(dn) == decode._dn_parts_escaped(dn)

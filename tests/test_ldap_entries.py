"""Generic LDAP decoding (agent/directory/ldap_entries.py) with plain data: no server."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import LdapAttributes, parse_config
from agent.directory import decode
from agent.directory import ldap_entries as le
from agent.directory.records import EntryKind
from agent.errors import ConfigError

NAMES = LdapAttributes()
UUID = "7f60d18e-7c93-1041-8d6c-5b492161075d"


@pytest.mark.parametrize("value, expected", [
    (b"19000", datetime(2022, 1, 8, tzinfo=timezone.utc)),
    ("1", datetime(1970, 1, 2, tzinfo=timezone.utc)),
    (b"-1", None),  # never
    (b"0", None),  # ambiguous per shadow(5): read as never, so the account stays required
    (None, None),
])
def test_shadow_expire_is_days_since_1970(value, expected):
    assert le.shadow_expire(value) == expected


@pytest.mark.parametrize("value", [b"2147483647", b"2932897", b"99999999999"])
def test_shadow_expire_past_the_last_date_is_never(value):
    # INT_MAX and other "far future" values are past year 9999: they must not crash the read
    # (an OverflowError once stopped the whole sync), and the account does not expire.
    assert le.shadow_expire(value) is None
    assert le.shadow_expire(b"2932896") == datetime(9999, 12, 31, tzinfo=timezone.utc)


def test_shadow_expire_rejects_garbage():
    with pytest.raises(ValueError):
        le.shadow_expire(b"soon")


def test_ppolicy_locked_time():
    assert le.ppolicy_locked(b"000001010000Z") and le.ppolicy_locked_permanently(b"000001010000Z")
    assert le.ppolicy_locked(b"20261124101010Z") and not le.ppolicy_locked_permanently(b"20261124101010Z")
    assert not le.ppolicy_locked(None) and not le.ppolicy_locked(b"")


def test_ns_account_lock():
    assert le.ns_account_lock(b"TRUE") and le.ns_account_lock(b"true")
    assert not le.ns_account_lock(b"FALSE") and not le.ns_account_lock(None)


@pytest.mark.parametrize("value, expected", [
    (b"uid=a,ou=People,dc=example,dc=com", "uid=a,ou=People,dc=example,dc=com"),
    (b"uid=a,ou=People,dc=example,dc=com#'0101'B", "uid=a,ou=People,dc=example,dc=com"),
    ("cn=a\\#b,dc=example,dc=com", "cn=a\\#b,dc=example,dc=com"),  # an escaped # in a value stays
    ("cn=x#y,dc=example,dc=com", "cn=x#y,dc=example,dc=com"),  # not a BitString: kept
])
def test_unique_member_suffix_is_stripped(value, expected):
    assert le.unique_member_dn(value) == expected


def test_identity_forms():
    assert le.identity(UUID.upper().encode()) == UUID
    # 389-DS nsUniqueId: four groups of eight hex digits
    assert le.identity(b"7F60D18E-7C931041-8D6C5B49-2161075D") == UUID
    with pytest.raises(ValueError):
        le.identity(b"")


def _user(**attrs):
    raw = {"objectClass": [b"inetOrgPerson", b"posixAccount"], "entryUUID": [UUID.encode()], "uid": [b"jdoe"],
           "cn": [b"John Doe"], "createTimestamp": [b"20260101000000Z"]}
    raw.update({k: [v] if isinstance(v, bytes) else v for k, v in attrs.items()})
    return le.entry_from_ldap("uid=jdoe,ou=People,dc=example,dc=com", raw, EntryKind.USER, NAMES)


def test_user_states():
    plain = _user()
    assert not plain.disabled and plain.account_expires is None and plain.name == "jdoe"
    assert plain.display_name == "John Doe"  # displayName absent: cn
    assert plain.when_created == datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert _user(pwdAccountLockedTime=b"000001010000Z").disabled
    assert _user(nsAccountLock=b"TRUE").disabled
    assert not _user(nsAccountLock=b"FALSE").disabled
    both = _user(shadowExpire=b"20000", krbPrincipalExpiration=b"20240101000000Z")
    assert both.account_expires == datetime(2024, 1, 1, tzinfo=timezone.utc)  # the earlier one
    active = _user(authTimestamp=b"20261101000000Z", pwdChangedTime=b"20260601000000Z", gidNumber=b"5000")
    assert active.last_logon == datetime(2026, 11, 1, tzinfo=timezone.utc)
    assert active.pwd_last_set == datetime(2026, 6, 1, tzinfo=timezone.utc)
    assert active.primary_group_id == 5000 and active.gid_number is None


def test_user_without_uid_is_named_by_its_rdn_and_missing_identity_is_an_error():
    raw = {"objectClass": [b"inetOrgPerson"], "entryUUID": [UUID.encode()], "cn": [b"X"]}
    assert le.entry_from_ldap("cn=Jane\\, Q,ou=People,dc=x", raw, EntryKind.USER, NAMES).name == "Jane\\, Q"
    with pytest.raises(ValueError, match="entryUUID is missing"):
        le.entry_from_ldap("uid=a,dc=x", {"uid": [b"a"]}, EntryKind.USER, NAMES)


def test_group_members_from_all_three_attributes():
    raw = {"objectClass": [b"posixGroup", b"groupOfNames"], "entryUUID": [UUID.encode()], "cn": [b"staff"],
           "gidNumber": [b"5000"],
           "member": [b"uid=a,ou=People,dc=example,dc=com", b"cn=nested,ou=Groups,dc=example,dc=com"],
           "uniqueMember": [b"uid=b,ou=People,dc=example,dc=com#'01'B", b"UID=A,ou=people,dc=example,dc=com"],
           "memberUid": [b"c", b"nobody"]}
    entry = le.entry_from_ldap("cn=staff,ou=Groups,dc=example,dc=com", raw, EntryKind.GROUP, NAMES,
                               member_dns_by_uid={"c": "uid=c,ou=People,dc=example,dc=com"})
    assert entry.members == ("uid=a,ou=People,dc=example,dc=com", "cn=nested,ou=Groups,dc=example,dc=com",
                             "uid=b,ou=People,dc=example,dc=com", "uid=c,ou=People,dc=example,dc=com")
    assert entry.gid_number == 5000 and entry.primary_group_id is None and not entry.disabled


def test_attribute_overrides_are_used():
    names = LdapAttributes(identity="nsUniqueId", user_name="mail", mail="mailAlternateAddress")
    raw = {"nsUniqueId": [b"7F60D18E-7C931041-8D6C5B49-2161075D"], "mail": [b"j@example.com"],
           "mailAlternateAddress": [b"jd@example.com"]}
    entry = le.entry_from_ldap("uid=j,dc=example,dc=com", raw, EntryKind.USER, names)
    assert (entry.guid, entry.name, entry.mail) == (UUID, "j@example.com", "jd@example.com")


def _ldap_config(**overrides):
    directory = {"name": "ol", "type": "ldap", "url": "ldaps://ldap.example.com", "base_dn": "dc=example,dc=com",
                 "bind_dn": "cn=cal-reader,ou=system,dc=example,dc=com", "password_env": "P", **overrides}
    return parse_config({"directories": [directory], "inventory": "i.yaml"})


def test_ldap_config_defaults_and_errors():
    d = _ldap_config().directories[0]
    assert d.attributes.identity == "entryUUID" and d.attributes.computer_filter == "(objectClass=device)"
    assert _ldap_config(attributes={"computer_filter": None}).directories[0].attributes.computer_filter is None
    with pytest.raises(ConfigError, match=r"directories\[0\]\.attributes\.user_filter"):
        _ldap_config(attributes={"user_filter": "objectClass=person"})
    with pytest.raises(ConfigError, match=r"directories\[0\]\.url"):
        _ldap_config(url="http://ldap.example.com")
    assert _ldap_config(url="ldapi://%2Frun%2Fslapd%2Fldapi").directories[0].url == "ldapi://%2Frun%2Fslapd%2Fldapi"
    with pytest.raises(ConfigError, match="percent-encoded"):
        _ldap_config(url="ldapi:///run/slapd/ldapi")
    with pytest.raises(ConfigError, match="exactly one of password_env"):
        _ldap_config(password_file="x")
    with pytest.raises(ConfigError, match=r"unknown type 'nis': use active_directory, ldap or ldif"):
        _ldap_config(type="nis")


@settings(max_examples=500, deadline=None)
@given(micros=st.integers(min_value=0, max_value=253402300799 * 1_000_000),
       attribute=st.sampled_from(["entryCSN", "modifyTimestamp"]))
def test_change_filter_values_are_inert_and_round_trip(micros, attribute):
    # The only values cal-agent writes into LDAP filters (issue 7: filters built from data are
    # escaped): generated stamps, made of digits and . Z #, never a filter metacharacter.
    value = le.change_filter_value(attribute, micros)
    assert not set(value) & set("()*\\\x00&|!=<>~")
    raw = {attribute: [value.encode()]}
    expected = micros if attribute == "entryCSN" else micros - micros % 1_000_000
    assert le.change_stamp(raw, attribute) == expected


@settings(max_examples=3000, deadline=None)
@given(st.one_of(
    st.integers(min_value=0, max_value=253402300799 * 1_000_000).map(
        lambda micros: le.change_filter_value("entryCSN", micros)),
    st.integers(min_value=0, max_value=253402300799 * 1_000_000).map(
        lambda micros: le.change_filter_value("modifyTimestamp", micros)),
    st.text(alphabet="0123456789", min_size=14, max_size=14).map(lambda t: t + ".000001Z#000000#000#000000"),
    st.text(alphabet="0123456789", min_size=14, max_size=14).map(lambda t: t + "Z"),
    st.text(alphabet="0123456789.Z#+- ", min_size=14, max_size=30),
), st.booleans())
def test_change_stamps_of_the_fixed_forms_agree_with_parsing_them(text, csn):
    # The fixed-width forms skip the datetime parse: the same stamp, or left to the parse.
    fixed = le._fixed_width_stamp(text, csn)
    assert fixed is None or fixed == le._parsed_stamp(text, csn)
    written = re.fullmatch(r"\d{14}\.\d{6}Z#.*" if csn else r"\d{14}Z", text)
    if written and le._parsed_stamp(text, csn) is not None:
        assert fixed is not None  # the forms servers write do take the fast path


def test_the_change_stamp_is_the_attribute_as_spelled_first_and_without_options():
    old, new = b"20200101000000Z", b"20300101000000Z"
    in_2020 = 1577836800000000
    assert le.change_stamp({"modifyTimestamp;x-a": [new], "modifyTimestamp": [old]}, "modifyTimestamp") == in_2020
    assert le.change_stamp({"modifytimestamp": [new], "modifyTimestamp": [old]}, "modifyTimestamp") == in_2020
    assert le.change_stamp({"modifyTimestamp;x-a": [old]}, "modifyTimestamp") is None


def test_a_time_before_year_1_in_utc_is_not_understood_rather_than_a_crash():
    with pytest.raises(ValueError, match="not a representable GeneralizedTime"):
        decode.generalized_time("00010101000000+0100")
    assert le.change_stamp({"modifyTimestamp": [b"00010101000000+0100"]}, "modifyTimestamp") is None

"""Bad and hostile input: thousands of generated LDIF files and configurations give either a result
or a clear, expected error — never a crash or a traceback (issue 7)."""

from __future__ import annotations

import string

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import parse_config
from agent.directory.ldif import LdifReader
from agent.errors import CalAgentError, ConfigError

GUID_B64 = "objectGUID:: AAECAwQFBgcICQoLDA0ODw=="

# Lines that look like what an ldapsearch export holds, plus broken variants of them.
ldif_lines = st.one_of(
    st.sampled_from([
        "version: 1", "", "# comment", "dn: CN=a,DC=x", "dn:: Q049YixEQz14", "objectClass: user",
        "objectClass: group", "objectClass: computer", "sAMAccountName: alice", GUID_B64,
        "objectGUID:: !!notbase64", "userAccountControl: 514", "userAccountControl: lots",
        "accountExpires: 9223372036854775807", "accountExpires: 0", "accountExpires: -5",
        "accountExpires: 99999999999999999999999", "lastLogonTimestamp: 1", "whenCreated: 20260101000000.0Z",
        "whenCreated: 2026", "member: CN=a,DC=x", "member:: AAEC", "primaryGroupID: 513",
        "primaryGroupID: x", "objectSid:: AQUAAAAAAAUVAAAA", "isDeleted: TRUE", " folded continuation",
        "displayName:: PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==", "changetype: modify", "-", ":: nothing",
        "attr", "dn: ", "url:< file:///etc/passwd",
    ]),
    st.text(alphabet=string.printable + "äöü\x00\u2028", max_size=40),
)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(ldif_lines, max_size=30))
def test_fuzzed_ldif_reads_or_fails_clearly(tmp_path, lines):
    path = tmp_path / "fuzz.ldif"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    try:
        entries = list(LdifReader(path).read())
    except CalAgentError as exc:
        assert str(exc)  # an error an admin can read, with its line when there is one
        return
    for entry in entries:
        assert entry.guid and entry.name is not None and entry.dn is not None


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_invalid_utf8_in_ldif_is_a_clear_error_or_read(tmp_path, data):
    path = tmp_path / "fuzz.ldif"
    path.write_bytes(b"dn: CN=a,DC=x\nobjectClass: user\nsAMAccountName: a\n" + data + b"\n")
    try:
        list(LdifReader(path).read())
    except CalAgentError as exc:
        assert str(exc)


scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=20), st.sampled_from(["ldaps://dc1", "ldap://dc1", "http://x", "2022", "1h",
                                                           "0 * * * *", "user", "device", "sqlite:///x.db"]))
keys = st.sampled_from(["database", "directories", "inventory", "requirements", "reports", "log", "schedule", "alerts",
                        "exempt", "rules", "policies", "metrics", "url", "name", "type", "path", "users", "group",
                        "version", "cal_type", "product", "interval", "cron", "email", "to", "from", "bogus"])
configs = st.recursive(scalars, lambda children: st.one_of(st.lists(children, max_size=4),
                                                          st.dictionaries(keys, children, max_size=6)),
                       max_leaves=25)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(keys, configs, max_size=8))
def test_fuzzed_configuration_is_valid_or_a_config_error_naming_keys(tmp_path, data):
    try:
        parse_config(data, base_dir=tmp_path)
    except ConfigError as exc:
        assert exc.exit_code == 2
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=200))
def test_fuzzed_yaml_text_never_crashes_the_loader(tmp_path, text):
    from agent.config import load_config

    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_config(path)
    except ConfigError as exc:
        assert exc.exit_code == 2


def test_a_hundred_thousand_member_values_are_read(tmp_path):
    members = "\n".join(f"member: CN=u{i},OU=Staff,DC=x" for i in range(100_000))
    path = tmp_path / "big.ldif"
    path.write_text(f"dn: CN=big,DC=x\nobjectClass: group\nsAMAccountName: big\n{GUID_B64}\n{members}\n")
    (group,) = list(LdifReader(path).read())
    assert len(group.members) == 100_000


@pytest.mark.parametrize("yaml_text", [
    "directories: [{name: a, type: ldif, path: a.ldif}]\ninventory: i.yaml\nschedule: {cron: '61 * * * *'}\n",
    "directories: [{name: a, type: ldif, path: a.ldif}]\ninventory: i.yaml\nmetrics: {listen: 'localhost'}\n",
])
def test_bad_schedule_and_listen_values_name_their_key(tmp_path, yaml_text):
    with pytest.raises(ConfigError) as caught:
        parse_config(yaml.safe_load(yaml_text), base_dir=tmp_path)
    assert any(p.startswith(("schedule.cron", "metrics.listen")) for p in caught.value.problems)

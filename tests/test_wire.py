"""The lean BER decoder of paged search responses (agent/directory/wire.py), on plain bytes.

The messages are built by a small BER encoder written here from RFC 4511, and every decoded entry
is compared with what ldap3's own decoder makes of the same bytes: the lean decoder must see
exactly the raw values ldap3 would have handed over.  The live reads (OpenLDAP, Samba AD) go
through it in test_ldap_end_to_end.py, test_ad_end_to_end.py and test_directory_faults.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ldap3.operation.search import search_result_entry_response_to_dict_fast
from ldap3.utils.asn1 import decode_message_fast

from agent.directory import wire


def tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        head = bytes([n])
    else:
        size = n.to_bytes((n.bit_length() + 7) // 8, "big")
        head = bytes([0x80 | len(size)]) + size
    return bytes([tag]) + head + content


def integer(tag: int, value: int) -> bytes:
    return tlv(tag, value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big"))


def message(message_id: int, op: bytes, controls: bytes = b"") -> bytes:
    return tlv(0x30, integer(0x02, message_id) + op + controls)


def entry(message_id: int, dn: bytes, attributes: list[tuple[bytes, list[bytes]]]) -> bytes:
    attrs = b"".join(tlv(0x30, tlv(0x04, name) + tlv(0x31, b"".join(tlv(0x04, v) for v in values)))
                     for name, values in attributes)
    return message(message_id, tlv(0x64, tlv(0x04, dn) + tlv(0x30, attrs)))


def done(message_id: int, code: int = 0, text: bytes = b"", referrals: list[bytes] = (), cookie: bytes | None = None):
    body = integer(0x0A, code) + tlv(0x04, b"") + tlv(0x04, text)
    if referrals:
        body += tlv(0xA3, b"".join(tlv(0x04, r) for r in referrals))
    controls = b""
    if cookie is not None:
        value = tlv(0x30, integer(0x02, 0) + tlv(0x04, cookie))
        controls = tlv(0xA0, tlv(0x30, tlv(0x04, wire.PAGED_RESULTS_OID.encode()) + tlv(0x04, value)))
    return message(message_id, tlv(0x65, body), controls)


def ldap3_view(data: bytes) -> tuple[str, dict[str, list[bytes]]]:
    decoded = decode_message_fast(data)
    as_dict = search_result_entry_response_to_dict_fast(decoded["payload"], None, None, False)
    # ldap3 gives None for an attribute sent without values; the lean decoder an empty list.
    return as_dict["dn"], {name: list(values or []) for name, values in as_dict["raw_attributes"].items()}


def lean_view(data: bytes) -> tuple[str, dict[str, list[bytes]]]:
    assert wire.message_size(data) == len(data)
    header = 2 if data[1] < 0x80 else 2 + (data[1] & 0x7F)
    mid_len = data[header + 1]
    return wire.decode_entry(data, header + 2 + mid_len, len(data))


names = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-;", min_size=1,
                max_size=20).map(str.encode)
values = st.lists(st.binary(max_size=300), max_size=6)


@settings(max_examples=1500, deadline=None)
@given(dn=st.text(max_size=200).map(str.encode), attributes=st.lists(st.tuples(names, values), max_size=8,
                                                                     unique_by=lambda a: a[0].lower()),
       message_id=st.integers(min_value=1, max_value=2**31 - 1))
def test_entries_decode_exactly_as_ldap3_decodes_them(dn, attributes, message_id):
    data = entry(message_id, dn, attributes)
    lean_dn, lean_attrs = lean_view(data)
    ldap3_dn, ldap3_attrs = ldap3_view(data)
    assert lean_dn == ldap3_dn == dn.decode()
    assert {k.lower(): v for k, v in lean_attrs.items()} == {k.lower(): v for k, v in ldap3_attrs.items()}
    assert lean_attrs == {name.decode(): vals for name, vals in attributes}


def test_long_lengths_and_100k_values_decode():
    big = b"x" * 70_000  # a three-byte length
    members = [f"uid=u{i:06d},ou=People,dc=example,dc=com".encode() for i in range(100_000)]
    data = entry(7, b"cn=big,dc=example,dc=com", [(b"member", members), (b"description", [big, b""])])
    dn, attrs = lean_view(data)
    assert dn == "cn=big,dc=example,dc=com"
    assert attrs["member"] == members and attrs["description"] == [big, b""]


def test_an_invalid_utf8_dn_is_replaced_not_fatal():
    dn, _attrs = lean_view(entry(1, b"cn=caf\xe9,dc=x", [(b"cn", [b"caf\xe9"])]))
    assert dn == "cn=caf\ufffd,dc=x"


def test_the_page_result_carries_code_message_referrals_and_cookie():
    data = done(5, code=4, text=b"size limit exceeded", referrals=[b"ldap://other/dc=x"], cookie=b"\x01\x02")
    header = 2 if data[1] < 0x80 else 2 + (data[1] & 0x7F)
    result = wire.decode_result(data, header + 3, len(data))
    assert result["result"] == 4 and result["description"] == "sizeLimitExceeded"
    assert result["message"] == "size limit exceeded"
    assert result["referrals"] == ["ldap://other/dc=x"]
    assert result["controls"][wire.PAGED_RESULTS_OID]["value"]["cookie"] == b"\x01\x02"


def test_message_size_waits_for_a_complete_header():
    data = entry(1, b"cn=a", [(b"cn", [b"a" * 300])])
    assert wire.message_size(data[:1]) == -1
    assert wire.message_size(data[:3]) == -1  # long-form length not complete yet
    assert wire.message_size(data[:4]) == len(data)
    with pytest.raises(wire.BerError):
        wire.message_size(b"\x04\x01a")


def test_a_length_running_past_the_attributes_is_an_error():
    good = entry(1, b"cn=a", [(b"cn", [b"abc"])])
    bad = bytearray(good)
    bad[-4] = 0x09  # the value claims 9 bytes, 3 are there
    with pytest.raises((wire.BerError, IndexError)):
        lean_view(bytes(bad))


def _entry_with(attrs_payload: bytes) -> bytes:
    return message(1, tlv(0x64, tlv(0x04, b"uid=bob,dc=x") + attrs_payload))


@pytest.mark.parametrize("payload", [
    # the attribute list claims fewer bytes than it holds: pwdAccountLockedTime would vanish
    b"\x30\x0b" + tlv(0x30, tlv(0x04, b"uid") + tlv(0x31, tlv(0x04, b"bob")))
    + tlv(0x30, tlv(0x04, b"pwdAccountLockedTime") + tlv(0x31, tlv(0x04, b"000001010000Z"))),
    # a value set longer than its attribute: the next attribute would become a value
    tlv(0x30, b"\x30\x0a" + tlv(0x04, b"uid") + b"\x31\x0f" + tlv(0x04, b"bob")
        + tlv(0x30, tlv(0x04, b"cn") + tlv(0x31, tlv(0x04, b"B")))),
    # an indefinite length (BER allows it, LDAP does not)
    tlv(0x30, tlv(0x30, tlv(0x04, b"uid") + tlv(0x31, b"\x04\x80bob\x00\x00"))),
    # an attribute that is not a SEQUENCE
    tlv(0x30, tlv(0x31, tlv(0x04, b"uid") + tlv(0x31, tlv(0x04, b"bob")))),
], ids=["short-list", "long-set", "indefinite", "wrong-tag"])
def test_malformed_entries_are_errors_not_silently_different_data(payload):
    with pytest.raises((wire.BerError, IndexError)):
        lean_view(_entry_with(payload))

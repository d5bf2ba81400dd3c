"""Paged searches whose responses are decoded by a lean BER reader instead of ldap3's.

ldap3 still opens the connection (TLS, certificate checks, StartTLS, bind, server pools) and
encodes each search request; only the responses of the big paged reads are decoded here.  Why:
ldap3 turns every entry into a case-insensitive dict of formatted *and* raw values through a
generic BER decoder and one configuration lookup per value -- 19 s of CPU for 125,000 entries
that ``ldapsearch`` dumps in 2.6 s (docs/performance.md).  cal-agent only ever uses the raw
values, so this module decodes SearchResultEntry messages straight into
``{attribute name: [raw values]}`` and nothing else.

The result of each page is stored in ``conn.result`` exactly as ldap3 does (``result``,
``description``, ``message``, ``referrals``, ``controls``), and results that ldap3 raises for
(with ``raise_exceptions=True``) raise the same ``LDAPOperationResult`` subclasses, so callers
map errors the same way whichever decoder read the page.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import ldap3
from ldap3.core import exceptions as ldap_exc
from ldap3.core.results import DO_NOT_RAISE_EXCEPTIONS, RESULT_CODES
from ldap3.operation.search import search_operation
from ldap3.protocol.rfc2696 import paged_search_control

PAGED_RESULTS_OID = "1.2.840.113556.1.4.319"
NOTICE_OF_DISCONNECTION = "1.3.6.1.4.1.1466.20036"

# LDAPMessage protocolOp tags (RFC 4511, [APPLICATION n]).
_ENTRY, _DONE, _REFERENCE, _EXTENDED, _INTERMEDIATE = 0x64, 0x65, 0x73, 0x78, 0x79
_RECV_SIZE = 65536  # large enough to take a whole TLS record; not so large that each recv allocates a lot

RawEntry = tuple[str, dict[str, list[bytes]]]


class BerError(ValueError):
    """A response that is not the BER an LDAP server must send."""


def _length(buf: bytes, pos: int) -> tuple[int, int]:
    """The definite length at ``pos`` (just after a tag) and the position of the content."""
    first = buf[pos]
    if first < 0x80:
        return first, pos + 1
    count = first & 0x7F
    if count == 0 or count > 8:
        raise BerError(f"unsupported BER length form 0x{first:02x} at offset {pos}")
    return int.from_bytes(buf[pos + 1:pos + 1 + count], "big"), pos + 1 + count


def message_size(buf: bytes, pos: int = 0) -> int:
    """Size of the whole LDAPMessage starting at ``pos``, or -1 when ``buf`` does not yet hold its header."""
    have = len(buf) - pos
    if have < 2:
        return -1
    if buf[pos] != 0x30:
        raise BerError(f"an LDAP message must start with a SEQUENCE (0x30), got 0x{buf[pos]:02x}")
    first = buf[pos + 1]
    if first < 0x80:
        return 2 + first
    count = first & 0x7F
    if count == 0 or count > 8:
        raise BerError(f"unsupported BER length form 0x{first:02x}")
    if have < 2 + count:
        return -1
    return 2 + count + int.from_bytes(buf[pos + 2:pos + 2 + count], "big")


def decode_entry(buf: bytes, pos: int, end: int) -> RawEntry:
    """SearchResultEntry at ``pos`` (its tag) up to ``end``: the DN and the raw values by
    attribute name as the server spelled it."""
    n, pos = _length(buf, pos + 1)
    op_end = pos + n
    if buf[pos] != 0x04:
        raise BerError("SearchResultEntry without an objectName")
    n, pos = _length(buf, pos + 1)
    dn = buf[pos:pos + n].decode("utf-8", "replace")
    pos += n
    if buf[pos] != 0x30:
        raise BerError(f"SearchResultEntry {dn!r}: attributes are not a SEQUENCE")
    n, pos = _length(buf, pos + 1)
    stop = pos + n
    if stop != op_end or stop > end:
        raise BerError(f"SearchResultEntry {dn!r}: the attribute list does not fill the entry")
    attributes: dict[str, list[bytes]] = {}
    while pos < stop:
        # Every length is checked against its container: a malformed entry is an error, never an
        # attribute silently dropped (a lock flag gone) or swallowed into another's values.
        if buf[pos] != 0x30:
            raise BerError(f"SearchResultEntry {dn!r}: an attribute is not a SEQUENCE")
        n, pos = _length(buf, pos + 1)  # PartialAttribute SEQUENCE
        attribute_end = pos + n
        if buf[pos] != 0x04:
            raise BerError(f"SearchResultEntry {dn!r}: an attribute type is not an OCTET STRING")
        n, pos = _length(buf, pos + 1)  # type
        name = buf[pos:pos + n].decode("utf-8", "replace")
        pos += n
        if buf[pos] != 0x31:
            raise BerError(f"SearchResultEntry {dn!r}: the values of {name!r} are not a SET")
        n, pos = _length(buf, pos + 1)  # vals SET OF
        values_end = pos + n
        if values_end != attribute_end:
            raise BerError(f"SearchResultEntry {dn!r}: attribute {name!r} has a bad length")
        values: list[bytes] = []
        append = values.append
        while pos < values_end:
            # An inline _length(): this loop runs once per value (millions of times per read).
            n = buf[pos + 1]
            if n < 0x80:
                pos += 2
            else:
                count = n & 0x7F
                if count == 0 or count > 8:
                    raise BerError(f"SearchResultEntry {dn!r}: unsupported length form in {name!r}")
                n = int.from_bytes(buf[pos + 2:pos + 2 + count], "big")
                pos += 2 + count
            append(buf[pos:pos + n])
            pos += n
        if pos != values_end:
            raise BerError(f"SearchResultEntry {dn!r}: attribute {name!r} is malformed")
        if name in attributes:  # the same attribute twice (never from a sane server): keep every value
            attributes[name].extend(values)
        else:
            attributes[name] = values
    if pos != stop:
        raise BerError(f"SearchResultEntry {dn!r}: the attribute list has a bad length")
    return dn, attributes


def decode_reference(buf: bytes, pos: int, end: int) -> list[str]:
    """SearchResultReference at ``pos`` (its tag): its URIs."""
    n, pos = _length(buf, pos + 1)
    stop = min(pos + n, end)
    uris = []
    while pos < stop:
        uri, pos = _octets(buf, pos)
        uris.append(uri.decode("utf-8", "replace"))
    return uris


def _octets(buf: bytes, pos: int, tag: int = 0x04) -> tuple[bytes, int]:
    if buf[pos] != tag:
        raise BerError(f"expected tag 0x{tag:02x}, got 0x{buf[pos]:02x}")
    n, pos = _length(buf, pos + 1)
    return buf[pos:pos + n], pos + n


def decode_result(buf: bytes, pos: int, end: int) -> dict:
    """An LDAPResult (SearchResultDone, ExtendedResponse) at ``pos`` (its tag) and the message's
    controls, as ldap3's ``conn.result`` dict."""
    n, pos = _length(buf, pos + 1)
    op_end = pos + n
    code_bytes, pos = _octets(buf, pos, 0x0A)
    code = int.from_bytes(code_bytes, "big")
    matched, pos = _octets(buf, pos)
    message, pos = _octets(buf, pos)
    referrals: list[str] = []
    response_name = None
    while pos < op_end:
        tag = buf[pos]
        n, content = _length(buf, pos + 1)
        if tag == 0xA3:  # referral [3] SEQUENCE OF URI
            inner = content
            while inner < content + n:
                uri, inner = _octets(buf, inner)
                referrals.append(uri.decode("utf-8", "replace"))
        elif tag == 0x8A:  # ExtendedResponse responseName [10]
            response_name = buf[content:content + n].decode("ascii", "replace")
        pos = content + n
    result = {
        "result": code,
        "description": RESULT_CODES.get(code, "unknown"),
        "dn": matched.decode("utf-8", "replace"),
        "message": message.decode("utf-8", "replace"),
        "referrals": referrals or None,
        "controls": _controls(buf, op_end, end),
    }
    if response_name is not None:
        result["responseName"] = response_name
    return result


def _controls(buf: bytes, pos: int, end: int) -> dict:
    controls: dict = {}
    if pos >= end or buf[pos] != 0xA0:
        return controls
    n, pos = _length(buf, pos + 1)
    stop = pos + n
    while pos < stop:
        n, pos = _length(buf, pos + 1)  # Control SEQUENCE
        control_end = pos + n
        oid_bytes, pos = _octets(buf, pos)
        oid = oid_bytes.decode("ascii", "replace")
        critical = False
        value = None
        if pos < control_end and buf[pos] == 0x01:
            flag, pos = _octets(buf, pos, 0x01)
            critical = flag != b"\x00"
        if pos < control_end and buf[pos] == 0x04:
            value, pos = _octets(buf, pos)
        pos = control_end
        decoded: dict = {"description": oid, "criticality": critical, "value": value}
        if oid == PAGED_RESULTS_OID and value is not None:
            _inner_len, inner = _length(value, 1)  # realSearchControlValue SEQUENCE
            size_bytes, inner = _octets(value, inner, 0x02)
            cookie, _inner = _octets(value, inner)
            decoded["value"] = {"size": int.from_bytes(size_bytes, "big", signed=True), "cookie": cookie}
        controls[oid] = decoded
    return controls


def _receive_error(conn: ldap3.Connection, reason: str) -> ldap_exc.LDAPSocketReceiveError:
    conn.last_error = f"error receiving data: {reason}"
    try:
        conn.strategy.close()
    except (OSError, ldap_exc.LDAPException):
        pass
    return ldap_exc.LDAPSocketReceiveError(conn.last_error)


def search_page(conn: ldap3.Connection, base: str, search_filter: str, attributes, *, scope=ldap3.SUBTREE,
                 page_size: int = 1000, controls=None, cookie: bytes | None = None,
                 references: list[str] | None = None) -> Iterator[RawEntry]:
    """One page of a paged search: yields its entries; then ``conn.result`` holds the page's
    result (with the next cookie under ``controls``).  The URIs of continuation references
    (parts of the tree held by other servers) are appended to ``references`` when it is given."""
    request = search_operation(base, search_filter, scope, ldap3.DEREF_NEVER, list(attributes), 0, 0, False,
                               conn.auto_escape, conn.auto_encode, None, validator=None, check_names=False)
    page_control = paged_search_control(True, page_size, cookie or b"")
    message_id = conn.strategy.send("searchRequest", request, [page_control, *(controls or [])])
    sock = conn.socket
    buf = b""
    try:
        while True:
            size = message_size(buf)
            while size < 0 or len(buf) < size:
                try:
                    chunk = sock.recv(_RECV_SIZE)
                except (OSError, socket.timeout) as exc:
                    raise _receive_error(conn, str(exc) or exc.__class__.__name__) from None
                if not chunk:
                    raise _receive_error(conn, "the server closed the connection")
                buf += chunk
                size = message_size(buf)
            # Decode every complete message in the buffer, keep the rest for the next recv.
            pos, have = 0, len(buf)
            while True:
                size = message_size(buf, pos)
                if size < 0 or pos + size > have:
                    break
                end = pos + size
                header = 2 if buf[pos + 1] < 0x80 else 2 + (buf[pos + 1] & 0x7F)
                mid_bytes, op = _octets(buf, pos + header, 0x02)
                mid = int.from_bytes(mid_bytes, "big")
                tag = buf[op]
                if mid == 0 and tag == _EXTENDED:
                    notice = decode_result(buf, op, end)
                    raise ldap_exc.LDAPSessionTerminatedByServerError(
                        f"the server ended the session: {notice['description']} {notice['message']}".strip())
                if mid != message_id:
                    raise _receive_error(conn, f"a response to message {mid} while waiting for {message_id}")
                if tag == _ENTRY:
                    yield decode_entry(buf, op, end)
                elif tag == _DONE:
                    result = decode_result(buf, op, end)
                    result["type"] = "searchResDone"
                    conn.result = result
                    conn.response = []
                    if result["result"] not in DO_NOT_RAISE_EXCEPTIONS:
                        raise ldap_exc.LDAPOperationResult(result=result["result"],
                                                           description=result["description"], dn=result["dn"],
                                                           message=result["message"], response_type="searchResDone")
                    return
                elif tag == _REFERENCE:
                    if references is not None:
                        references.extend(decode_reference(buf, op, end))
                elif tag != _INTERMEDIATE:
                    raise _receive_error(conn, f"unexpected response 0x{tag:02x} to a search")
                pos = end
            buf = buf[pos:]
    except (BerError, IndexError) as exc:  # IndexError: a length pointing past the data
        raise _receive_error(conn, f"undecodable response: {exc}") from None
    finally:
        outstanding = getattr(conn.strategy, "_outstanding", None)  # None once the connection is closed
        if outstanding:
            outstanding.pop(message_id, None)

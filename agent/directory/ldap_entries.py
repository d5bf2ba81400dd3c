"""Turn generic LDAP entries (OpenLDAP, 389-DS, FreeIPA) into the same records as AD's.

Pure functions over raw attribute values (bytes), so they are tested with plain data.  What
counts as disabled, expired and active, and how memberships are read, is in docs/directory.md.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone

from agent.directory import decode
from agent.directory.ad_entries import converted, normalise_attributes
from agent.directory.records import UAC_ACCOUNTDISABLE, DirectoryEntry, EntryKind

# OpenLDAP ppolicy: an administrator's permanent lock (draft-behera-ldap-password-policy 5.3.3).
PERMANENT_LOCK = "000001010000Z"
_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_LAST_SHADOW_DAY = (datetime.max.replace(tzinfo=timezone.utc) - _UNIX_EPOCH).days
# RFC 4517 NameAndOptionalUID: a DN, optionally followed by "#" and a BitString ('0101'B).
_OPTIONAL_UID_RE = re.compile(r"#'[01]*'B$")
_CANONICAL_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

# Read for every principal besides the configured identity/name/display/mail attributes.
STATE_ATTRIBUTES = (
    "objectClass",
    "cn",
    "uid",
    "nsAccountLock",  # 389-DS, FreeIPA
    "pwdAccountLockedTime",  # OpenLDAP ppolicy (operational)
    "shadowExpire",  # shadowAccount: days since 1970-01-01
    "krbPrincipalExpiration",  # FreeIPA
    "authTimestamp",  # OpenLDAP lastbind overlay (operational)
    "pwdChangedTime",  # ppolicy / 389-DS (operational)
    "createTimestamp",  # operational
    "gidNumber",
)
MEMBER_ATTRIBUTES = ("member", "uniqueMember", "memberUid")
# Change stamps for incremental reads, in order of preference: OpenLDAP's entryCSN (microseconds),
# else modifyTimestamp (seconds; 389-DS, FreeIPA and most servers).
CHANGE_ATTRIBUTES = ("entryCSN", "modifyTimestamp")

RawAttributes = Mapping[str, Sequence[bytes]]


def identity(value: bytes | str) -> str:
    """entryUUID (RFC 4530) or 389-DS's nsUniqueId (``xxxxxxxx-xxxxxxxx-xxxxxxxx-xxxxxxxx``) as a
    canonical lower-case UUID; any other value lower-cased as it is."""
    text = (decode.text(value) or "").strip().lower()
    if _CANONICAL_UUID_RE.fullmatch(text):
        return text  # already canonical (OpenLDAP's entryUUID): skip the parse
    if not text:
        raise ValueError("empty identity value")
    digits = text.replace("-", "")
    if len(digits) == 32 and all(c in "0123456789abcdef" for c in digits):
        return str(uuid.UUID(hex=digits))
    return text


def shadow_expire(value: bytes | str | int | None) -> datetime | None:
    """shadowExpire (days since 1970-01-01) to the moment the account expires.

    -1 (and any negative value) means never.  0 is ambiguous (shadow(5): "should not be used",
    read as never or as 1970-01-01 by different tools); it is read as never, so such an account
    keeps being required rather than silently dropped from the count.  A day past the last one a
    date can hold (year 9999; some tools write 2147483647, or 99999-style "far future" values) is
    read as never too: the account does not expire in any time a report covers.
    """
    days = decode.integer(value)
    if days is None or days <= 0 or days > _LAST_SHADOW_DAY:
        return None
    return _UNIX_EPOCH + timedelta(days=days)


def ppolicy_locked(value: bytes | str | None) -> bool:
    """pwdAccountLockedTime present: the account is locked (by failed binds until the policy's
    pwdLockoutDuration passes, or for good when the value is ``000001010000Z``)."""
    text = (decode.text(value) or "").strip()
    return bool(text)


def ppolicy_locked_permanently(value: bytes | str | None) -> bool:
    return (decode.text(value) or "").strip().upper() == PERMANENT_LOCK


def ns_account_lock(value: bytes | str | None) -> bool:
    """389-DS / FreeIPA nsAccountLock: locked when TRUE (any case)."""
    return (decode.text(value) or "").strip().upper() == "TRUE"


def unique_member_dn(value: bytes | str) -> str:
    """A uniqueMember value without its optional ``#'0101'B`` unique-identifier suffix."""
    text = (decode.text(value) or "").strip()
    return _OPTIONAL_UID_RE.sub("", text)


def _rdn_value(dn: str) -> str:
    """The value of a DN's first RDN (``uid=jdoe,ou=People,...`` -> ``jdoe``), escapes kept."""
    end, escaped = len(dn), False
    for index, ch in enumerate(dn):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch in ",+":
            end = index
            break
    return dn[:end].partition("=")[2].strip()


def entry_from_ldap(dn: str, raw: RawAttributes, kind: EntryKind, names, *,
                    member_dns_by_uid: Mapping[str, str] | None = None) -> DirectoryEntry:
    """Build a record for one entry found by the ``kind`` search.

    ``names`` is the directory's ``attributes:`` configuration (identity, name, display, mail).
    ``member_dns_by_uid`` resolves posixGroup ``memberUid`` values (lower-cased uid -> user DN).
    Raises ValueError (naming the attribute) when a value cannot be decoded.
    """
    return entry_from_attributes(dn, normalise_attributes(raw), kind, names, member_dns_by_uid=member_dns_by_uid)


def _first(attrs: Mapping[str, list[bytes]], lowered: str) -> bytes | None:
    values = attrs.get(lowered)
    return values[0] if values else None


def _decoded(attrs: Mapping[str, list[bytes]], lowered: str, name: str, convert):
    """``decoded_value`` with the name given lower-cased as well (no ``lower()`` per entry)."""
    values = attrs.get(lowered)
    return converted(values, name, convert) if values else None


def entry_from_attributes(dn: str, attrs: Mapping[str, list[bytes]], kind: EntryKind, names, *,
                          member_dns_by_uid: Mapping[str, str] | None = None) -> DirectoryEntry:
    """``entry_from_ldap`` for attributes already normalised (``normalise_attributes``): the reader
    normalises each entry once, for this, its uids and its change stamp.  Attribute names are
    looked up lower-cased (this runs for every entry of a 125,000-entry read)."""
    text = decode.text
    if _first(attrs, names.identity.lower()) is None:
        raise ValueError(f"{names.identity} is missing (an operational attribute: may the bind account read it?)")
    guid = _decoded(attrs, names.identity.lower(), names.identity, identity)
    name_attr = {EntryKind.USER: names.user_name, EntryKind.GROUP: names.group_name,
                 EntryKind.COMPUTER: names.computer_name}[kind]
    name = text(_first(attrs, name_attr.lower())) or _rdn_value(dn)
    if not name:
        raise ValueError(f"{name_attr} is missing")
    display = text(_first(attrs, names.display_name.lower())) or text(_first(attrs, "cn"))
    members: tuple[str, ...] = ()
    gid_number = primary_gid = None
    disabled = False
    expires = None
    if kind is EntryKind.GROUP:
        out = [text(v) or "" for v in attrs.get("member", ())]
        out += [unique_member_dn(v) for v in attrs.get("uniquemember", ())]
        for uid in attrs.get("memberuid", ()):
            resolved = (member_dns_by_uid or {}).get((text(uid) or "").strip().lower())
            if resolved is not None:
                out.append(resolved)
        seen: set[str] = set()
        kept = []
        for member in out:
            if member:
                key = decode.dn_key(member)
                if key not in seen:
                    seen.add(key)
                    kept.append(member)
        members = tuple(kept)
        gid_number = _decoded(attrs, "gidnumber", "gidNumber", decode.integer)
    else:
        disabled = (ns_account_lock(_first(attrs, "nsaccountlock"))
                    or ppolicy_locked(_first(attrs, "pwdaccountlockedtime")))
        shadow, kerberos = attrs.get("shadowexpire"), attrs.get("krbprincipalexpiration")
        if shadow or kerberos:  # rarely: most accounts never expire
            moments = [m for m in (_decoded(attrs, "shadowexpire", "shadowExpire", shadow_expire),
                                   _decoded(attrs, "krbprincipalexpiration", "krbPrincipalExpiration",
                                            decode.generalized_time)) if m is not None]
            expires = min(moments) if moments else None
        if kind is EntryKind.USER:
            primary_gid = _decoded(attrs, "gidnumber", "gidNumber", decode.integer)
    return DirectoryEntry(
        guid=guid,
        kind=kind,
        dn=dn,
        name=name,
        display_name=display,
        mail=text(_first(attrs, names.mail.lower())),
        # The AD-equivalent flag: the lifecycle rule and the store treat every directory alike.
        user_account_control=UAC_ACCOUNTDISABLE if disabled else None,
        account_expires=expires,
        last_logon=_decoded(attrs, "authtimestamp", "authTimestamp", decode.generalized_time),
        pwd_last_set=_decoded(attrs, "pwdchangedtime", "pwdChangedTime", decode.generalized_time),
        when_created=_decoded(attrs, "createtimestamp", "createTimestamp", decode.generalized_time),
        primary_group_id=primary_gid,
        gid_number=gid_number,
        members=members,
    )


def uids_of(attrs: Mapping[str, list[bytes]]) -> list[str]:
    """The lower-cased ``uid`` values of a user (attributes normalised), for resolving posixGroup memberUid."""
    return [(decode.text(v) or "").strip().lower() for v in attrs.get("uid", ()) if v]


def change_stamp(raw: RawAttributes, attribute: str) -> int | None:
    """An entry's change stamp (``entryCSN`` or ``modifyTimestamp``) as microseconds since 1970,
    None when absent or not understood (the entry is read, it just does not move the watermark)."""
    values = raw.get(attribute)
    if values is None:
        wanted = attribute.lower()
        values = next((v for name, v in raw.items() if name.lower() == wanted), None)
    if not values:
        return None
    try:
        text = values[0].decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    csn = attribute.lower() == "entrycsn"
    fixed = _fixed_width_stamp(text, csn)
    return fixed if fixed is not None else _parsed_stamp(text, csn)


_DAYS: dict[str, int] = {}  # "YYYYmmdd" -> days since 1970-01-01 (a read's stamps fall on a few days)
_EPOCH_ORDINAL = _UNIX_EPOCH.toordinal()


def _fixed_width_stamp(text: str, csn: bool) -> int | None:
    """The stamp of the forms servers write (``20261124221942.271409Z#000000#000#000000``,
    ``20261124221942Z``) without parsing a datetime; None for anything else (``_parsed_stamp``
    decides).  Once per entry of every read: a sixth of converting a 125,000-entry read."""
    if csn:
        if len(text) < 22 or text[14] != "." or text[21] != "Z" or not text[15:21].isdigit():
            return None
        micros = int(text[15:21])
    elif len(text) == 15 and text[14] == "Z":
        micros = 0
    else:
        return None
    if not text[:14].isdigit():  # ASCII: decoded as such
        return None
    hour, minute, second = int(text[8:10]), int(text[10:12]), int(text[12:14])
    if hour > 23 or minute > 59 or second > 59:
        return None
    day = text[:8]
    days = _DAYS.get(day)
    if days is None:
        try:
            days = datetime(int(day[:4]), int(day[4:6]), int(day[6:8])).toordinal() - _EPOCH_ORDINAL
        except ValueError:
            return None
        if len(_DAYS) < 100_000:
            _DAYS[day] = days
    return ((days * 24 + hour) * 60 + minute) * 60_000_000 + second * 1_000_000 + micros


def _parsed_stamp(text: str, csn: bool) -> int | None:
    try:
        if csn:
            # 20261124221942.271409Z#000000#000#000000: time (with microseconds)#count#sid#mod
            stamp, _, fraction = text.partition("#")[0].rstrip("Z").partition(".")
            moment = decode.generalized_time(stamp + "Z")
            micros = int((fraction + "000000")[:6]) if fraction else 0
        else:
            moment, micros = decode.generalized_time(text), 0
    except ValueError:
        return None
    if moment is None:
        return None
    return int((moment - _UNIX_EPOCH).total_seconds()) * 1_000_000 + micros


def change_filter_value(attribute: str, micros: int) -> str:
    """The assertion value for ``(attribute>=...)`` at ``micros`` (microseconds since 1970): the
    lowest CSN of that microsecond, or the second it falls in for modifyTimestamp."""
    moment = _UNIX_EPOCH + timedelta(microseconds=micros)
    if attribute.lower() == "entrycsn":
        return moment.strftime("%Y%m%d%H%M%S.%fZ#000000#000#000000")
    return moment.strftime("%Y%m%d%H%M%SZ")

"""Turn Active Directory attributes (as raw bytes, from LDAP or an LDIF export) into records.

Both the live AD reader and the LDIF reader feed ``entry_from_ad`` so an export and a live read of
the same directory produce identical records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from agent.directory import decode
from agent.directory.records import DirectoryEntry, EntryKind

# What is read from AD for every principal (one paged search for users, groups and computers).
AD_ATTRIBUTES = (
    "objectClass",
    "objectGUID",
    "objectSid",
    "sAMAccountName",
    "displayName",
    "mail",
    "userAccountControl",
    "accountExpires",
    "lastLogonTimestamp",
    "pwdLastSet",
    "whenCreated",
    "primaryGroupID",
    "member",
    "dNSHostName",
    "operatingSystem",
    "operatingSystemVersion",
    "isDeleted",
    "lastKnownParent",
)

# Tombstones keep only a fixed attribute list (MS-ADTS 3.1.1.5.5.6.1).
AD_TOMBSTONE_ATTRIBUTES = (
    "objectClass",
    "objectGUID",
    "objectSid",
    "sAMAccountName",
    "userAccountControl",
    "whenCreated",
    "isDeleted",
    "lastKnownParent",
    "msDS-LastKnownRDN",
)

AD_PRINCIPAL_FILTER = "(|(objectClass=user)(objectClass=group))"
AD_TOMBSTONE_FILTER = "(&(isDeleted=TRUE)(|(objectClass=user)(objectClass=group)))"

RawAttributes = Mapping[str, Sequence[bytes]]


def classify(object_classes: Sequence[str]) -> EntryKind | None:
    """Users, groups and computers; contacts, OUs, foreign security principals are ignored."""
    classes = {c.lower() for c in object_classes}
    if "computer" in classes:
        return EntryKind.COMPUTER
    if "group" in classes:
        return EntryKind.GROUP
    if "user" in classes:
        return EntryKind.USER
    return None


def normalise_attributes(raw: Mapping[str, Sequence[bytes]]) -> dict[str, list[bytes]]:
    """Lower-case attribute names and drop options such as ``;binary`` (ranges are handled by the
    reader before this point)."""
    out: dict[str, list[bytes]] = {}
    for name, values in raw.items():
        base = name.split(";", 1)[0].lower()
        out.setdefault(base, []).extend(bytes(v) if not isinstance(v, bytes) else v for v in values)
    return out


def _one(attrs: Mapping[str, list[bytes]], name: str) -> bytes | None:
    values = attrs.get(name.lower())
    return values[0] if values else None


def entry_from_ad(dn: str, raw: RawAttributes) -> DirectoryEntry | None:
    """Build a record from one AD object, or None for objects that are not principals.

    Raises ValueError (naming the attribute) when a value cannot be decoded.
    """
    attrs = normalise_attributes(raw)
    kind = classify([decode.text(v) or "" for v in attrs.get("objectclass", [])])
    if kind is None:
        return None

    def field(name: str, convert):
        value = _one(attrs, name)
        if value is None:
            return None
        try:
            return convert(value)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"{name}: {exc}") from None

    guid_raw = _one(attrs, "objectGUID")
    if guid_raw is None:
        raise ValueError("objectGUID is missing (is the bind account allowed to read it?)")
    guid = field("objectGUID", decode.guid)
    name = decode.text(_one(attrs, "sAMAccountName"))
    if not name:
        raise ValueError("sAMAccountName is missing")
    if kind is EntryKind.COMPUTER and name.endswith("$"):
        name = name[:-1]
    deleted = (decode.text(_one(attrs, "isDeleted")) or "").upper() == "TRUE"
    return DirectoryEntry(
        guid=guid,
        kind=kind,
        dn=dn,
        name=name,
        sid=field("objectSid", decode.sid),
        display_name=decode.text(_one(attrs, "displayName")),
        mail=decode.text(_one(attrs, "mail")),
        user_account_control=field("userAccountControl", decode.integer),
        account_expires=field("accountExpires", decode.filetime),
        last_logon=field("lastLogonTimestamp", decode.filetime),
        pwd_last_set=field("pwdLastSet", decode.filetime),
        when_created=field("whenCreated", decode.generalized_time),
        primary_group_id=field("primaryGroupID", decode.integer),
        members=tuple(decode.text(v) or "" for v in attrs.get("member", ())) if kind is EntryKind.GROUP else (),
        dns_host_name=decode.text(_one(attrs, "dNSHostName")),
        operating_system=decode.text(_one(attrs, "operatingSystem")),
        operating_system_version=decode.text(_one(attrs, "operatingSystemVersion")),
        deleted=deleted,
    )


def tombstone_parent(raw: RawAttributes) -> str | None:
    attrs = normalise_attributes(raw)
    return decode.text(_one(attrs, "lastKnownParent"))

"""Turn Active Directory attributes (as raw bytes, from LDAP or an LDIF export) into records.

Both the live AD reader and the LDIF reader feed ``entry_from_ad`` so an export and a live read of
the same directory produce identical records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from agent.directory import decode
from agent.directory.records import DirectoryEntry, EntryKind, RdsLicense

# Per-user RDS CAL tracking (R27): (expiry, version, licence server) of the 1st..4th CAL an RD
# licence server recorded on a user (MS-ADA2 msTSExpireDate, msTSLicenseVersion, msTSManagingLS).
RDS_LICENSE_SLOTS = tuple(
    (f"msTSExpireDate{n}", f"msTSLicenseVersion{n}", f"msTSManagingLS{n}") for n in ("", "2", "3", "4")
)

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
    *(name for slot in RDS_LICENSE_SLOTS for name in slot),
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
# What can hold users, groups and computers: OUs, containers (CN=Users, CN=Computers...), the
# Builtin domain and LostAndFound.  Their renames and moves carry principals along unchanged.
# Group Policy objects are containers too, edited often and never holding principals.
AD_CONTAINER_FILTER = ("(&(|(objectClass=organizationalUnit)(objectClass=container)(objectClass=builtinDomain)"
                       "(objectClass=lostAndFound))(!(objectClass=groupPolicyContainer)))")

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


# Attribute names as servers spell them -> normalised: a few dozen distinct names, met millions
# of times in a big read.  Bounded, in case a directory sends ever new ones (;range=..., ;lang-..).
_BASE_NAMES: dict[str, str] = {}


def normalise_attributes(raw: Mapping[str, Sequence[bytes]]) -> dict[str, list[bytes]]:
    """Lower-case attribute names and drop options such as ``;binary`` (ranges are handled by the
    reader before this point).  The value lists are shared with ``raw``, not copied."""
    out: dict[str, list[bytes]] = {}
    for name, values in raw.items():
        base = _BASE_NAMES.get(name)
        if base is None:
            base = name.lower()
            if ";" in base:
                base = base.split(";", 1)[0]
            if len(_BASE_NAMES) < 4096:
                _BASE_NAMES[name] = base
        if type(values) is not list or (values and type(values[0]) is not bytes):
            values = [v if isinstance(v, bytes) else bytes(v) for v in values]
        out[base] = out[base] + values if base in out else values
    return out


def first_value(attrs: Mapping[str, list[bytes]], name: str) -> bytes | None:
    """The first raw value of ``name`` in normalised attributes, or None."""
    values = attrs.get(name.lower())
    return values[0] if values else None


def decoded_value(attrs: Mapping[str, list[bytes]], name: str, convert):
    """``convert`` applied to the first value of ``name`` (None when absent); a value that does not
    decode raises ValueError naming the attribute."""
    values = attrs.get(name.lower())
    return converted(values, name, convert) if values else None


def converted(values: Sequence[bytes], name: str, convert):
    """``convert`` applied to the first of ``values`` (those of attribute ``name``); a value that
    does not decode raises ValueError naming the attribute."""
    try:
        return convert(values[0])
    except (ValueError, UnicodeDecodeError, OverflowError) as exc:  # Overflow: a date past year 9999
        raise ValueError(f"{name}: {exc}") from None


def entry_from_ad(dn: str, raw: RawAttributes) -> DirectoryEntry | None:
    """Build a record from one AD object, or None for objects that are not principals.

    Raises ValueError (naming the attribute) when a value cannot be decoded.
    """
    attrs = normalise_attributes(raw)
    kind = classify([decode.text(v) or "" for v in attrs.get("objectclass", [])])
    if kind is None:
        return None

    guid_raw = first_value(attrs, "objectGUID")
    if guid_raw is None:
        raise ValueError("objectGUID is missing (is the bind account allowed to read it?)")
    guid = decoded_value(attrs, "objectGUID", decode.guid)
    name = decode.text(first_value(attrs, "sAMAccountName"))
    if not name:
        raise ValueError("sAMAccountName is missing")
    if kind is EntryKind.COMPUTER and name.endswith("$"):
        name = name[:-1]
    deleted = (decode.text(first_value(attrs, "isDeleted")) or "").upper() == "TRUE"
    return DirectoryEntry(
        guid=guid,
        kind=kind,
        dn=dn,
        name=name,
        sid=decoded_value(attrs, "objectSid", decode.sid),
        display_name=decode.text(first_value(attrs, "displayName")),
        mail=decode.text(first_value(attrs, "mail")),
        user_account_control=decoded_value(attrs, "userAccountControl", decode.integer),
        account_expires=decoded_value(attrs, "accountExpires", decode.filetime),
        last_logon=decoded_value(attrs, "lastLogonTimestamp", decode.filetime),
        pwd_last_set=decoded_value(attrs, "pwdLastSet", decode.filetime),
        when_created=decoded_value(attrs, "whenCreated", decode.generalized_time),
        primary_group_id=decoded_value(attrs, "primaryGroupID", decode.integer),
        members=tuple(decode.text(v) or "" for v in attrs.get("member", ())) if kind is EntryKind.GROUP else (),
        dns_host_name=decode.text(first_value(attrs, "dNSHostName")),
        operating_system=decode.text(first_value(attrs, "operatingSystem")),
        operating_system_version=decode.text(first_value(attrs, "operatingSystemVersion")),
        rds_licenses=_rds_licenses(attrs) if kind is EntryKind.USER else (),
        deleted=deleted,
    )


def _rds_licenses(attrs: Mapping[str, list[bytes]]) -> tuple[RdsLicense, ...]:
    """The per-user RDS CALs recorded on a user, in slot order.

    Licence servers seen in real directories write msTSLicenseVersion2 ("7") and
    msTSLicenseVersion3 (the key pack ID, "C50-6.02-S") as more data about the *first* CAL, with no
    msTSExpireDate2/3 (see ``decode.rds_cal_version``).  So a 2nd-4th slot is a CAL only when its
    own msTSExpireDateN is set; otherwise counting those values as CALs would double or triple
    the CALs issued.  And when msTSLicenseVersion is not understood, the first CAL's version is
    read from the key pack ID in msTSLicenseVersion3, unless slot 3 is a CAL of its own.
    """
    licenses = []
    for index, (expire_attr, version_attr, server_attr) in enumerate(RDS_LICENSE_SLOTS):
        expires = decoded_value(attrs, expire_attr, decode.generalized_time)
        version = decode.text(first_value(attrs, version_attr))
        server = decode.text(first_value(attrs, server_attr))
        if expires is None and (index > 0 or (version is None and server is None)):
            continue
        decoded = decode.rds_cal_version(version)
        if index == 0 and decoded is None and first_value(attrs, RDS_LICENSE_SLOTS[2][0]) is None:
            decoded = decode.rds_cal_version(first_value(attrs, RDS_LICENSE_SLOTS[2][1]))
        licenses.append(RdsLicense(version=decoded, expires=expires, license_server=server))
    return tuple(licenses)


def tombstone_parent(raw: RawAttributes) -> str | None:
    attrs = normalise_attributes(raw)
    return decode.text(first_value(attrs, "lastKnownParent"))

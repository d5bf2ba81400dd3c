"""Decoding of Active Directory wire values into Python values.

Everything here is pure and total: bad input raises ``ValueError`` with what was wrong, which the
readers turn into a per-entry problem rather than a crash.
"""

from __future__ import annotations

import struct
import uuid
from datetime import datetime, timedelta, timezone

_FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=timezone.utc)
FILETIME_NEVER = 0x7FFFFFFFFFFFFFFF  # accountExpires "never"
_MAX_DATETIME_TICKS = int((datetime(9999, 12, 31, tzinfo=timezone.utc) - _FILETIME_EPOCH).total_seconds()) * 10**7


def filetime(value: int | str | bytes | None) -> datetime | None:
    """FILETIME (100-ns ticks since 1601-01-01 UTC) to an aware datetime.

    0 and 0x7FFFFFFFFFFFFFFF mean "never"/"not set" (MS-ADA1 accountExpires), as does a value beyond
    year 9999 (some tools write -1 or other sentinels); those return None.
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii")
    ticks = int(value)
    if ticks <= 0 or ticks >= FILETIME_NEVER or ticks > _MAX_DATETIME_TICKS:
        return None
    return _FILETIME_EPOCH + timedelta(microseconds=ticks // 10)


def to_filetime(moment: datetime | None) -> int:
    """The inverse of ``filetime``; None becomes "never"."""
    if moment is None:
        return FILETIME_NEVER
    delta = moment.astimezone(timezone.utc) - _FILETIME_EPOCH
    return (delta.days * 86400 + delta.seconds) * 10**7 + delta.microseconds * 10


def generalized_time(value: str | bytes | None) -> datetime | None:
    """LDAP GeneralizedTime (``20240117093000.0Z``, ``20240117093000Z``) to an aware datetime."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii")
    if len(value) == 15 and value[14] == "Z" and value[:14].isdigit():
        # The form nearly every value has (OpenLDAP's operational times: one per entry of a read);
        # the same result as the general parse below, which a test checks.
        return datetime(int(value[0:4]), int(value[4:6]), int(value[6:8]), int(value[8:10]), int(value[10:12]),
                        int(value[12:14]), tzinfo=timezone.utc)
    return _generalized_time(value)


def _generalized_time(value: str) -> datetime | None:
    text = value.strip()
    if not text:
        return None
    main, _, _fraction = text.rstrip("Z").partition(".")
    tz = timezone.utc
    for sign in ("+", "-"):
        if sign in main:
            main, _, offset = main.partition(sign)
            hours, minutes = int(offset[:2]), int(offset[2:4] or 0)
            delta = timedelta(hours=hours, minutes=minutes)
            tz = timezone(delta if sign == "+" else -delta)
    if len(main) < 10 or not main.isdigit():
        raise ValueError(f"not a GeneralizedTime: {value!r}")
    main = main.ljust(14, "0")
    # datetime() checks the ranges as strptime would, at a tenth of the cost (millions of values per read).
    moment = datetime(int(main[0:4]), int(main[4:6]), int(main[6:8]), int(main[8:10]), int(main[10:12]),
                      int(main[12:14]), tzinfo=tz)
    if tz is timezone.utc:
        return moment
    try:
        return moment.astimezone(timezone.utc)
    except OverflowError:  # 00010101000000+0100: before year 1 in UTC
        raise ValueError(f"not a representable GeneralizedTime: {value!r}") from None


def guid(value: bytes) -> str:
    """Binary objectGUID (little-endian first three fields) to the canonical string form."""
    if len(value) != 16:
        raise ValueError(f"objectGUID must be 16 bytes, got {len(value)}")
    return str(uuid.UUID(bytes_le=bytes(value)))


def guid_bytes(text: str) -> bytes:
    return uuid.UUID(text).bytes_le


def sid(value: bytes) -> str:
    """Binary objectSid to ``S-1-5-21-...``: revision, sub-authority count, 48-bit big-endian
    authority, then little-endian 32-bit sub-authorities (MS-DTYP 2.4.2.2)."""
    if len(value) < 8:
        raise ValueError("objectSid too short")
    revision, count = value[0], value[1]
    if len(value) != 8 + 4 * count:
        raise ValueError(f"objectSid length {len(value)} does not match {count} sub-authorities")
    authority = int.from_bytes(value[2:8], "big")
    subs = struct.unpack("<" + "I" * count, value[8:])
    return "S-" + "-".join(str(part) for part in (revision, authority, *subs))


def sid_bytes(text: str) -> bytes:
    parts = text.split("-")
    if len(parts) < 3 or parts[0].upper() != "S":
        raise ValueError(f"not a SID: {text!r}")
    revision, authority, subs = int(parts[1]), int(parts[2]), [int(p) for p in parts[3:]]
    return bytes([revision, len(subs)]) + authority.to_bytes(6, "big") + struct.pack("<" + "I" * len(subs), *subs)


def text(value: bytes | str | None) -> str | None:
    """Directory strings are UTF-8; invalid bytes are replaced rather than crashing a sync."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return value.decode("utf-8", errors="replace")


def integer(value: bytes | str | int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, bytes):
        value = value.decode("ascii")
    return int(value.strip())


def dn_parts(dn: str) -> tuple[str, ...]:
    """The RDNs of a DN, normalised for comparison: case-insensitive, spaces around ``=`` and
    separators removed, escaped separators (``\\,``) kept inside their RDN."""
    # Fast paths (member DNs are parsed by the hundred thousand per read); the same result as the
    # general parser below for DNs without escapes, which a test checks on generated DNs.
    if "\\" not in dn:
        if " " not in dn and ";" not in dn and dn.isprintable():  # isprintable: no tab, newline...
            return tuple(p for p in dn.lower().split(",") if p)
        out = []
        for rdn in dn.replace(";", ",").split(","):
            attr, sep, value = rdn.partition("=")
            key = f"{attr.strip().lower()}{sep}{value.strip(' ').lower()}"
            if key:
                out.append(key)
        return tuple(out)
    return _dn_parts_escaped(dn)


def _dn_parts_escaped(dn: str) -> tuple[str, ...]:
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for ch in dn:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            current.append(ch)
            escaped = True
        elif ch in ",;":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    out = []
    for rdn in parts:
        attr, sep, value = rdn.partition("=")
        out.append(f"{attr.strip().lower()}{sep}{_strip_unescaped(value).lower()}")
    return tuple(p for p in out if p)


def _strip_unescaped(value: str) -> str:
    value = value.lstrip(" ")
    stripped = value.rstrip(" ")
    if len(stripped) < len(value) and stripped.endswith("\\"):
        stripped += " "  # an escaped trailing space is part of the value
    return stripped


def dn_key(dn: str) -> str:
    """A comparison key for DNs (see ``dn_parts``)."""
    return ",".join(dn_parts(dn))


def dn_is_under(dn: str, base: str) -> bool:
    """True when ``dn`` equals ``base`` or lies in its subtree (compared RDN by RDN)."""
    dn_p, base_p = dn_parts(dn), dn_parts(base)
    return len(dn_p) >= len(base_p) and dn_p[len(dn_p) - len(base_p):] == base_p


def key_is_under(key: str, base_key: str) -> bool:
    """``dn_is_under`` on comparison keys (``dn_key``), which the store keeps: no DN parsed.  The
    key's separator before ``base_key`` must be a real one, not an escaped comma in a value."""
    if key == base_key:
        return True
    if not base_key:
        return True  # the root: everything is under it, as dn_is_under says
    start = len(key) - len(base_key) - 1  # where the separator must be
    if start < 1 or key[start] != "," or not key.endswith(base_key):
        return False
    backslashes = len(key[:start]) - len(key[:start].rstrip("\\"))
    return backslashes % 2 == 0


# msTSLicenseVersion (and its 2-4 variants) -> Windows Server version of a per-user RDS CAL (R27).
#
# The schema says only "Unicode string: version of the (first..fourth) per-user CAL" (MS-ADA2
# 2.702-2.705, adschema a-mstslicenseversion).  What RD licence servers actually write, from two
# real user objects published on GitHub (each with msTSExpireDate and msTSManagingLS too):
#   msTSLicenseVersion = "393216", msTSLicenseVersion2 = "7", msTSLicenseVersion3 = "C50-6.00-S"
#   msTSLicenseVersion = "393218", msTSLicenseVersion2 = "7", msTSLicenseVersion3 = "C50-6.02-S"
# and no msTSExpireDate2/3, msTSManagingLS2/3: the 2/3 variants held more data about the same
# (only) CAL, not a second CAL.  The number is the CAL version as major << 16 | minor
# (0x00060000 = 6.0, 0x00060002 = 6.2).  The C50-... string is the ID of the per-user key pack the
# CAL came from, which Win32_TSLicenseKeyPack reports as Description beside ProductVersion (key
# pack listings in Checkmk's cmk/base/legacy_checks/rds_licenses.py and a public check_mk local
# check): C50-6.00-S "Windows Server 2008 or Windows Server 2008 R2" (ProductVersionID 2),
# C50-6.02-S "Windows Server 2012" (4), C50-10.01-S "Windows Server 2019" (6).
# Only these values are mapped.  Anything else (for instance whatever number a 2016, 2019, 2022 or
# 2025 licence server writes: no source we found shows one) decodes to None, never to a guess.
_RDS_CAL_VERSIONS = {
    "393216": "2008",  # 6.0: its key pack reads "Windows Server 2008 or Windows Server 2008 R2"
    "393218": "2012",  # 6.2: also the CAL for 2012 R2 (no 2012 R2 RDS CAL exists, R08)
    "C50-6.00-S": "2008",
    "C50-6.02-S": "2012",
    "C50-10.01-S": "2019",
}


def rds_cal_version(value: bytes | str | None) -> str | None:
    """A msTSLicenseVersion* value to the product version of the CAL (``"2012"``), or None when
    the value is absent or not one we have seen documented (see ``_RDS_CAL_VERSIONS``)."""
    raw = text(value)
    if raw is None:
        return None
    key = raw.strip().upper()
    if key.isdigit():
        key = str(int(key))  # "0393218" and "393218" are the same number
    return _RDS_CAL_VERSIONS.get(key)

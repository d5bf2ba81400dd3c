"""Offline source: an LDIF export of Active Directory (ldifde, or ldapsearch output).

The parser follows RFC 2849 for content records: folded lines, ``#`` comments, ``attr:: base64``
values, ``version: 1``.  Change records and ``attr:< URL`` values are refused with the line number
(an export never contains them, and fetching URLs from a data file is not something to do
silently).  Records are streamed: the file is never held in memory as a whole.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from pathlib import Path

from agent.directory import decode
from agent.directory.ad_entries import entry_from_ad
from agent.directory.records import DirectoryEntry, EntryKind, ReadStats
from agent.errors import DirectoryError


class LdifSyntaxError(ValueError):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


def parse_ldif(lines: Iterator[str]) -> Iterator[tuple[int, str, dict[str, list[bytes]]]]:
    """Yield ``(first_line_number, dn, attributes)`` for each content record."""
    record: list[tuple[int, str]] = []  # unfolded logical lines with their line numbers
    current: tuple[int, str] | None = None
    number = 0

    def flush() -> Iterator[tuple[int, str, dict[str, list[bytes]]]]:
        nonlocal record
        if record:
            parsed = _parse_record(record)
            record = []
            if parsed is not None:
                yield parsed

    for number, raw_line in enumerate(lines, start=1):
        line = raw_line.rstrip("\r\n")
        if line.startswith(" "):
            if current is None:
                raise LdifSyntaxError(number, "continuation line with nothing to continue")
            current = (current[0], current[1] + line[1:])
            continue
        if current is not None:
            record.append(current)
            current = None
        if line.startswith("#"):
            continue
        if not line.strip():
            yield from flush()
            continue
        current = (number, line)
    if current is not None:
        record.append(current)
    yield from flush()


def _parse_record(lines: list[tuple[int, str]]) -> tuple[int, str, dict[str, list[bytes]]] | None:
    first_line = lines[0][0]
    dn: str | None = None
    attrs: dict[str, list[bytes]] = {}
    for number, line in lines:
        name, sep, rest = line.partition(":")
        if not sep:
            raise LdifSyntaxError(number, f"expected 'attribute: value', got {line[:60]!r}")
        name = name.strip()
        if rest.startswith(":"):
            try:
                value = base64.b64decode(rest[1:].strip(), validate=True)
            except (binascii.Error, ValueError):
                raise LdifSyntaxError(number, f"bad base64 value for {name}") from None
        elif rest.startswith("<"):
            raise LdifSyntaxError(number, f"URL values (attr:< ...) are not supported ({name})")
        else:
            value = rest.lstrip(" ").encode("utf-8")
        lower = name.lower()
        if lower == "version" and dn is None:
            continue  # "version: 1" header, possibly its own record
        if lower == "dn":
            if dn is not None:
                raise LdifSyntaxError(number, "a second dn in one record (missing blank line?)")
            dn = decode.text(value) or ""
            continue
        if dn is None:
            raise LdifSyntaxError(number, f"record does not start with dn: ({name})")
        if lower == "changetype":
            raise LdifSyntaxError(number, "change records are not an export; use ldifde -f or ldapsearch output")
        attrs.setdefault(name, []).append(value)
    if dn is None:
        return None
    return first_line, dn, attrs


class LdifReader:
    """Reads principals from an AD LDIF export.  A read either completes or raises."""

    def __init__(self, path: Path, *, base_dn: str | None = None, directory: str = "ldif") -> None:
        self.path = path
        self.base_dn = base_dn
        self.directory = directory
        self.stats = ReadStats()

    def describe(self) -> str:
        return f"LDIF file {self.path}"

    def read(self) -> Iterator[DirectoryEntry]:
        counts = {kind: 0 for kind in EntryKind}
        tombstones = 0
        try:
            with self.path.open("r", encoding="utf-8", errors="strict", newline="") as handle:
                for line_number, dn, attrs in parse_ldif(handle):
                    try:
                        entry = entry_from_ad(dn, attrs)
                    except ValueError as exc:
                        raise DirectoryError(
                            f"{self.path}: entry at line {line_number} ({dn}): {exc}",
                            hint="fix or remove the entry; nothing was changed",
                        ) from None
                    if entry is None:
                        continue
                    if self.base_dn and not entry.deleted and not decode.dn_is_under(entry.dn, self.base_dn):
                        continue
                    if entry.deleted:
                        tombstones += 1
                    else:
                        counts[entry.kind] += 1
                    yield entry
        except LdifSyntaxError as exc:
            raise DirectoryError(f"{self.path}: not valid LDIF, {exc}") from None
        except UnicodeDecodeError as exc:
            raise DirectoryError(f"{self.path}: not UTF-8 text (byte {exc.start})") from None
        except FileNotFoundError:
            raise DirectoryError(f"LDIF file {self.path} does not exist") from None
        except OSError as exc:
            raise DirectoryError(f"cannot read LDIF file {self.path}: {exc.strerror}") from None
        self.stats = ReadStats(
            users=counts[EntryKind.USER],
            groups=counts[EntryKind.GROUP],
            computers=counts[EntryKind.COMPUTER],
            tombstones=tombstones,
        )

    def test_connection(self) -> dict[str, object]:
        entries = sum(1 for _ in self.read())
        return {"source": self.describe(), "entries": entries}

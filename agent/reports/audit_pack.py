"""The audit pack (R36): what an auditor asks for, in one folder they can open and check.

``write_audit_pack`` writes, into a new folder (mode 0700, files 0600: the pack names employees):

- ``audit-pack.xlsx``: sheets Summary, Products (with a totals row), Purchases, Assignments,
  Transfers, Findings and History.  Header rows are bold and frozen, each table has an
  auto-filter, numbers are numbers (totals are computed values, not formulas), dates and times are
  real Excel dates, in UTC.
- ``products.csv``, ``purchases.csv``, ``assignments.csv``, ``transfers.csv``, ``findings.csv``,
  ``history.csv``: the same tables, row for row and column for column (RFC 4180, like
  ``agent.reports.csv_export``; the Products totals row is only in the sheet, so scripts reading the
  CSV do not count it as a product).  They are UTF-8 *with a byte order mark*: without it Excel on
  Windows opens a CSV in the ANSI code page and shows "ZoÃ«" for "Zoë".  Python scripts should
  read them with ``encoding="utf-8-sig"``; scripts wanting exact values should use the JSON files.
  Dates are ``YYYY-MM-DD``, times ISO 8601 UTC with ``Z`` as in the JSON report.
- ``report.json``: the JSON report as given (docs/report-json.md); ``register.json``: the CAL
  register (dates as ISO strings, prices as decimal strings).
- ``evidence/``: a copy of each purchase's ``evidence`` document.  Relative paths are resolved
  against ``evidence_dir`` (the inventory file's folder) and must stay inside it after symbolic
  links are followed: ``../../etc/passwd`` is refused and listed as missing.  Absolute paths are
  copied as written, like the ``missing_evidence`` rule accepts them.  File names are kept;
  characters Windows cannot store and control characters become ``_``, and a second, different
  file with the same name gets ``-2``, ``-3``...  The Purchases table says which copy belongs to
  which purchase (``evidence_in_pack``).  A document that cannot be copied (not found, refused,
  not a regular file, unreadable) does not stop the pack: it is listed in the Summary sheet, in
  ``MANIFEST.txt`` and in ``AuditPack.evidence_missing``.
- ``MANIFEST.txt``: when and from which run the pack was made, the evidence copied and missing,
  and every other file with its size and SHA-256.  The checksum lines are in the format of
  ``sha256sum -c MANIFEST.txt``, which ignores the ``#`` lines.  The manifest cannot list itself:
  to make the pack tamper-evident, record ``AuditPack.manifest_sha256`` somewhere the pack is not
  (the ticket, the mail to the auditor).

Untrusted text.  Directory and register values are attacker-controlled and spreadsheets run
formulas.  Every text cell goes through ``agent.reports.csv_export.neutralise`` (text starting with
``= + - @``, tab or CR gets a leading ``'``), in the sheet as in the CSV, so the two agree and the
text stays text even when someone edits the cell in Excel.  In the sheet, text cells are also forced
to the string type: openpyxl itself turns any ``str`` starting with ``=`` into a formula and
``"#N/A"``-like values into error cells.  Excel decodes ``_xHHHH_`` in cell text (``_x003D_`` shows
as ``=``), so a literal one is written escaped (``_x005F_xHHHH_``) and shows as written.  Characters
an xlsx file cannot hold or keep (C0 controls other than tab and LF, CR, lone surrogates) are
written as ``\\xNN``/``\\uNNNN`` in the sheet and the CSV alike, and text longer than an Excel cell
(32,767 characters) is cut with a note; the JSON files keep the exact values.

Output folder.  The pack is built in a temporary folder next to ``output_dir`` and renamed into
place at the end, so ``output_dir`` never holds half a pack.  ``output_dir`` may be missing or an
empty folder.  If it is not empty, it must be an earlier audit pack: a folder whose
``MANIFEST.txt`` starts with ``# cal-agent audit pack`` and which holds nothing but the files that
manifest lists (no links, nothing added).  An earlier pack is replaced as a whole; any other folder
is refused with a ``CalAgentError`` and left untouched.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from agent import __version__
from agent.errors import EXIT_CONFIG, CalAgentError
from agent.reports.csv_export import FINDING_COLUMNS, PRODUCT_COLUMNS, neutralise
from agent.reports.json_report import iso

XLSX_NAME = "audit-pack.xlsx"
MANIFEST_NAME = "MANIFEST.txt"
EVIDENCE_FOLDER = "evidence"
MANIFEST_HEADER = "# cal-agent audit pack"

SHEETS = ("Summary", "Products", "Purchases", "Assignments", "Transfers", "Findings", "History")

MAX_CELL = 32767  # characters in one Excel cell
MAX_WIDTH = 60  # column width cap, in characters
DATE_FORMAT = "yyyy-mm-dd"
DATETIME_FORMAT = "yyyy-mm-dd hh:mm:ss"

# Column kinds: how a value is typed in both the sheet and the CSV.
TEXT, INT, NUMBER, DATE, DATETIME, JSON, AUTO = "text", "int", "number", "date", "datetime", "json", "auto"

PURCHASE_COLUMNS = (
    ("id", TEXT), ("product", TEXT), ("version", TEXT), ("cal_type", TEXT), ("quantity", INT),
    ("purchased_on", DATE), ("invoice", TEXT), ("vendor", TEXT), ("evidence", TEXT), ("expires_on", DATE),
    ("notes", TEXT), ("activation", TEXT), ("owner", TEXT), ("unit_price", NUMBER), ("currency", TEXT),
)
ASSIGNMENT_COLUMNS = (("purchase", TEXT), ("principal", TEXT), ("directory", TEXT), ("assigned_on", DATE),
                      ("notes", TEXT))
TRANSFER_COLUMNS = (("purchase", TEXT), ("from", TEXT), ("to", TEXT), ("on", DATE), ("reason", TEXT),
                    ("from_since", DATE))
HISTORY_COLUMNS = (("id", INT), ("at", DATETIME), ("actor", TEXT), ("action", TEXT), ("purchase", TEXT),
                   ("principal", TEXT), ("to", TEXT), ("reason", TEXT), ("details", JSON))
PRODUCT_KINDS = {"required": INT, "owned": INT, "assigned": INT, "licensed": INT, "free": INT, "shortfall": INT}
# The findings CSV of `cal-agent report --format csv`, plus what an auditor may need to trace a row.
FINDING_EXTRA_COLUMNS = ("principal_guid", "details", "key")


# ------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class EvidenceCopy:
    purchase: str
    source: Path  # the document read (after resolving links)
    stored_as: str  # path inside the pack, e.g. "evidence/INV-88812.pdf"


@dataclass(frozen=True)
class MissingEvidence:
    purchase: str
    evidence: str  # as written in the register
    reason: str


@dataclass(frozen=True)
class AuditPack:
    path: Path
    files: tuple[str, ...]  # every file in the pack, relative POSIX paths, MANIFEST.txt included
    evidence_copied: tuple[EvidenceCopy, ...]
    evidence_missing: tuple[MissingEvidence, ...]
    manifest_sha256: str  # keep it outside the pack: it is what proves the pack unaltered


class AuditPackError(CalAgentError):
    """The pack cannot be written where asked; nothing there was changed."""

    exit_code = EXIT_CONFIG


# ------------------------------------------------------------------------------------- values

# C0 controls an xlsx cannot hold, and CR, which XML parsers turn into LF (a CR would differ between
# the sheet and the CSV; shown escaped, a CR in a directory value is visible, as it should be).
_UNSTORABLE = re.compile("[\x00-\x08\x0b\x0c\x0d\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
# Excel decodes "_xHHHH_" in cell text ("_x003D_" shows as "="); a literal one is written "_x005F_xHHHH_".
_OOXML_ESCAPE = re.compile(r"_(x[0-9A-Fa-f]{4}_)")
_CONTROL = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_ISO_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
_INTEGER = re.compile(r"-?\d{1,15}")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _cell_text(value: str) -> str:
    """Text an xlsx cell (and Excel reading the CSV) can hold, not yet neutralised."""
    text = _UNSTORABLE.sub(_escape, value)
    if len(text) >= MAX_CELL:  # leave room for neutralise's quote
        note = f" [truncated: {len(text)} characters]"
        text = text[: MAX_CELL - 1 - len(note)] + note
    return text


def _one_line(value: Any) -> str:
    """For MANIFEST.txt: a register value can never start a new (checksum) line."""
    return _CONTROL.sub(_escape, str(value))


def _utc(moment: datetime) -> datetime:
    """Aware UTC, to the millisecond: Excel keeps no finer, and the CSV must say what the sheet says.
    A naive time is local time, as in json_report.iso."""
    moment = moment.astimezone(timezone.utc)
    return moment.replace(microsecond=0) + timedelta(milliseconds=round(moment.microsecond / 1000))


def _as_date(value: Any) -> date | datetime | None:
    if isinstance(value, datetime):
        return _utc(value)
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        text = value.strip()
        if _ISO_DATE.fullmatch(text):
            try:
                return date.fromisoformat(text)
            except ValueError:
                return None
        return _as_datetime(text)
    return None


def _as_datetime(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return _utc(value)
    if isinstance(value, str) and _ISO_DATETIME.match(value.strip()):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            return None
        return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else _utc(moment)
    return None


def _as_number(value: Any) -> int | float | Decimal | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | Decimal):
        return value
    if isinstance(value, str):
        text = value.strip()
        if _INTEGER.fullmatch(text):
            return int(text)
        try:
            number = Decimal(text)
        except InvalidOperation:
            return None
        return number if number.is_finite() else None
    return None


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


def _json_text(value: Any, *, indent: int | None = None) -> str:
    """JSON; non-ASCII kept readable, unless the data holds text UTF-8 cannot encode."""
    text = json.dumps(value, indent=indent, ensure_ascii=False, sort_keys=indent is None, default=_json_default)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(value, indent=indent, ensure_ascii=True, sort_keys=indent is None, default=_json_default)
    return text


def _typed(value: Any, kind: str) -> Any:
    """The value of one cell: None (empty), a number, a date, an aware UTC datetime, or text."""
    if value is None or value == "":
        return None
    if kind == AUTO:
        if isinstance(value, datetime):
            return _utc(value)
        if isinstance(value, date | int | float | Decimal) and not isinstance(value, bool):
            return value
        kind = JSON if isinstance(value, dict | list | tuple) else TEXT
    if kind == DATE:
        typed = _as_date(value)
        if typed is not None:
            return typed
    elif kind == DATETIME:
        typed = _as_datetime(value)
        if typed is not None:
            return typed
    elif kind in (INT, NUMBER):
        typed = _as_number(value)
        if typed is not None:
            return typed
    elif kind == JSON:
        if not value:
            return None
        if not isinstance(value, str):
            value = _json_text(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return _utc(value)
    return _cell_text(str(value))  # anything that did not fit its column stays visible, as text


# ------------------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class Table:
    sheet: str
    csv_name: str | None
    header: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]  # typed values (see _typed); text not yet neutralised
    totals: tuple[Any, ...] | None = None  # sheet only


def _columns_with_extras(known: Sequence[tuple[str, str]], entries: Iterable[dict],
                         reserved: Iterable[str] = ()) -> list[tuple[str, str]]:
    """Known columns, then any other key found in the entries (new optional register keys are
    shown, not dropped)."""
    names = {name for name, _ in known} | set(reserved)
    extra: list[str] = []
    for entry in entries:
        for key in entry:
            if key not in names and key not in extra:
                extra.append(str(key))
    return [*known, *((key, AUTO) for key in extra)]


def _dict_table(sheet: str, csv_name: str, known: Sequence[tuple[str, str]], entries: Sequence[dict],
                *, added: Sequence[tuple[str, Callable[[dict], Any]]] = ()) -> Table:
    entries = [e for e in entries if isinstance(e, dict)]
    columns = _columns_with_extras(known, entries, reserved=[name for name, _ in added])
    rows = tuple(
        tuple(_typed(entry.get(name), kind) for name, kind in columns)
        + tuple(_typed(get(entry), TEXT) for _, get in added)
        for entry in entries
    )
    return Table(sheet, csv_name, tuple(name for name, _ in columns) + tuple(name for name, _ in added), rows)


def _products_table(report: dict) -> Table:
    kinds = [PRODUCT_KINDS.get(column, TEXT) for column in PRODUCT_COLUMNS]
    rows = tuple(tuple(_typed(line.get(column), kind) for column, kind in zip(PRODUCT_COLUMNS, kinds))
                 for line in report.get("products") or [])
    totals: list[Any] = []
    for index, (column, kind) in enumerate(zip(PRODUCT_COLUMNS, kinds)):
        if kind == INT:
            totals.append(sum(row[index] for row in rows if isinstance(row[index], int | float | Decimal)))
        else:
            totals.append("total" if index == 0 else None)
    return Table("Products", "products.csv", PRODUCT_COLUMNS, rows, tuple(totals))


def _finding_row(finding: dict) -> tuple[Any, ...]:
    principal = finding.get("principal") or {}
    values = {
        "principal_kind": principal.get("kind"), "principal_name": principal.get("name"),
        "display_name": principal.get("display_name"), "directory": principal.get("directory"),
        "dn": principal.get("dn"), "state": principal.get("state"), "principal_guid": principal.get("guid"),
    }
    row = []
    for column in (*FINDING_COLUMNS, *FINDING_EXTRA_COLUMNS):
        value = values[column] if column in values else finding.get(column)
        row.append(_typed(value, DATETIME if column == "since" else JSON if column == "details" else TEXT))
    return tuple(row)


def _findings_table(report: dict) -> Table:
    rows = tuple(_finding_row(f) for f in report.get("findings") or [] if isinstance(f, dict))
    return Table("Findings", "findings.csv", (*FINDING_COLUMNS, *FINDING_EXTRA_COLUMNS), rows)


def _summary_table(report: dict, register: dict, history: Sequence[dict], made_at: datetime,
                   copied: Sequence[EvidenceCopy], missing: Sequence[MissingEvidence]) -> Table:
    summary = report.get("summary") or {}
    run = report.get("run") or {}
    inventory = report.get("inventory") or {}
    findings = [f for f in report.get("findings") or [] if isinstance(f, dict)]
    purchases = [p for p in register.get("purchases") or [] if isinstance(p, dict)]
    compliant = report.get("compliant")
    rows: list[tuple[str, str, Any]] = [
        ("pack", "made at (UTC)", made_at),
        ("pack", "made by", f"cal-agent {__version__}"),
        ("pack", "times", "all dates and times in this pack are UTC"),
        ("report", "run", run.get("id")),
        ("report", "previous run", run.get("previous_id")),
        ("report", "generated at (UTC)", _as_datetime(report.get("generated_at")) or report.get("generated_at")),
        ("report", "schema version", report.get("schema_version")),
        ("compliance", "compliant", None if compliant is None else ("yes" if compliant else "no")),
        ("compliance", "findings", summary.get("findings", len(findings))),
        ("compliance", "shortfall (CALs to buy)", summary.get("shortfall")),
        ("findings by severity", "error",
         summary.get("errors", sum(1 for f in findings if f.get("severity") == "error"))),
        ("findings by severity", "warning",
         summary.get("warnings", sum(1 for f in findings if f.get("severity") == "warning"))),
    ]
    by_kind = summary.get("by_kind")
    if not isinstance(by_kind, dict):
        by_kind = {}
        for f in findings:
            by_kind[f.get("kind")] = by_kind.get(f.get("kind"), 0) + 1
    rows += [("findings by kind", str(kind), count) for kind, count in sorted(by_kind.items(), key=str)]
    rows += [
        ("inventory", "source", inventory.get("source")),
        ("inventory", "path", inventory.get("path")),
        ("inventory", "file differs from the database register",
         None if "file_differs" not in inventory else ("yes" if inventory.get("file_differs") else "no")),
    ]
    for directory in report.get("directories") or []:
        if not isinstance(directory, dict):
            continue
        last = directory.get("last_successful_sync") or {}
        when = last.get("finished_at") if isinstance(last, dict) else None
        rows.append(("directories", str(directory.get("name")),
                     f"{directory.get('type')} {directory.get('source')}; "
                     f"last successful sync: {when or 'never'}"))
    rows += [
        ("register", "purchases", len(purchases)),
        ("register", "assignments", len(register.get("assignments") or [])),
        ("register", "transfers", len(register.get("transfers") or [])),
        ("register", "history events", len(history)),
        ("evidence", "copied", len({c.stored_as for c in copied})),
        ("evidence", "missing", len(missing)),
    ]
    rows += [("evidence missing", m.purchase, f"{m.evidence}: {m.reason}") for m in missing]
    rows += [("no evidence document", str(p.get("id")),
              f"invoice {p['invoice']}" if p.get("invoice") else "no invoice reference either")
             for p in purchases if not p.get("evidence")]
    typed = tuple((_typed(section, TEXT), _typed(item, TEXT), _typed(value, AUTO)) for section, item, value in rows)
    return Table("Summary", None, ("section", "item", "value"), typed)


# ------------------------------------------------------------------------------------- evidence

_UNSAFE_NAME = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]')
_RESERVED_NAMES = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)


def _safe_name(name: str) -> str:
    """A file name any system (and a zip of the pack) can store; the name is otherwise kept."""
    name = _UNSAFE_NAME.sub("_", name).rstrip(" .")
    if not name or name in (".", ".."):
        return "evidence"
    if name.split(".")[0].lower() in _RESERVED_NAMES:
        name = "_" + name
    return name[:200]


def _locate(evidence: str, evidence_dir: Path | None) -> tuple[Path | None, str]:
    """The document to copy, or None and why not."""
    written = Path(evidence).expanduser()
    if written.is_absolute():
        candidate = written.resolve()
    else:
        if evidence_dir is None:
            return None, "relative path and no evidence folder given"
        base = evidence_dir.resolve()
        candidate = (base / written).resolve()
        if not candidate.is_relative_to(base):
            return None, f"outside the evidence folder {base} (refused)"
    if not candidate.exists():
        return None, "not found"
    if not candidate.is_file():
        return None, "not a regular file"
    return candidate, ""


def _copy_file(source: Path, target: Path) -> None:
    fd = os.open(source, _OPEN_FLAGS)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise IsADirectoryError(f"{source} is not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        with os.fdopen(fd, "rb") as reader:
            fd = -1
            with os.fdopen(os.open(target, _CREATE_FLAGS, 0o600), "wb") as writer:
                shutil.copyfileobj(reader, writer, 1024 * 1024)
    finally:
        if fd >= 0:
            os.close(fd)


def _copy_evidence(work: Path, purchases: Sequence[dict], evidence_dir: Path | None
                   ) -> tuple[list[EvidenceCopy], list[MissingEvidence], dict[str, str]]:
    """Copy each purchase's evidence into work/evidence.  Returns the copies, the missing ones and
    what to show per purchase id in the Purchases table."""
    folder = work / EVIDENCE_FOLDER
    folder.mkdir(mode=0o700)
    copied: list[EvidenceCopy] = []
    missing: list[MissingEvidence] = []
    in_pack: dict[str, str] = {}
    by_source: dict[Path, str] = {}
    taken: set[str] = set()
    for purchase in purchases:
        pid = str(purchase.get("id"))
        evidence = purchase.get("evidence")
        if evidence is None or str(evidence).strip() == "":
            continue
        evidence = str(evidence)
        try:
            source, why = _locate(evidence, evidence_dir)
        except (OSError, ValueError, RuntimeError) as exc:  # unresolvable, NUL byte, link loop
            source, why = None, f"cannot be read: {getattr(exc, 'strerror', None) or exc}"
        if source is not None and source in by_source:
            stored = by_source[source]
        elif source is not None:
            name = _safe_name(Path(evidence).name or source.name)
            stem, dot, suffix = name.rpartition(".")
            stem, suffix = (stem, dot + suffix) if stem else (name, "")
            candidate, n = name, 1
            while candidate.lower() in taken:
                n += 1
                candidate = f"{stem}-{n}{suffix}"
            try:
                _copy_file(source, folder / candidate)
            except OSError as exc:
                (folder / candidate).unlink(missing_ok=True)
                source, why = None, f"cannot be read: {exc.strerror or exc}"
            else:
                taken.add(candidate.lower())
                stored = f"{EVIDENCE_FOLDER}/{candidate}"
                by_source[source] = stored
        if source is None:
            missing.append(MissingEvidence(pid, evidence, why))
            in_pack[pid] = f"missing: {why}"
        else:
            copied.append(EvidenceCopy(pid, source, stored))
            in_pack[pid] = stored
    return copied, missing, in_pack


# ------------------------------------------------------------------------------------- writers


def _open_new(path: Path):
    return os.fdopen(os.open(path, _CREATE_FLAGS, 0o600), "wb")


def _display_width(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, datetime):
        return len("2000-01-01 00:00:00")
    if isinstance(value, date):
        return len("2000-01-01")
    if isinstance(value, str):
        return max((len(line) for line in neutralise(value).splitlines()), default=0)
    return len(str(value))


def _set_cell(cell, value: Any) -> None:
    if isinstance(value, str):
        cell.value = _OOXML_ESCAPE.sub(r"_x005F_\1", neutralise(value))
        cell.data_type = "s"  # openpyxl makes "=..." a formula and "#N/A" an error: never for our text
    elif isinstance(value, datetime):
        cell.value = _utc(value).replace(tzinfo=None)  # Excel has no time zones: UTC, as the Summary says
        cell.number_format = DATETIME_FORMAT
    elif isinstance(value, date):
        cell.value = value
        cell.number_format = DATE_FORMAT
    else:
        cell.value = value


def _write_xlsx(path: Path, tables: Sequence[Table], made_at: datetime) -> None:
    from openpyxl import Workbook
    from openpyxl.styles import Font
    from openpyxl.utils import get_column_letter

    bold = Font(bold=True)
    workbook = Workbook()
    workbook.remove(workbook.active)
    workbook.properties.creator = f"cal-agent {__version__}"
    workbook.properties.title = "CAL audit pack"
    workbook.properties.created = _utc(made_at).replace(tzinfo=None)
    for table in tables:
        sheet = workbook.create_sheet(table.sheet)
        widths = [len(name) for name in table.header]
        for column, name in enumerate(table.header, start=1):
            cell = sheet.cell(row=1, column=column)
            _set_cell(cell, name)
            cell.font = bold
        lines = [*table.rows, *([table.totals] if table.totals else [])]
        for row_number, row in enumerate(lines, start=2):
            for column, value in enumerate(row, start=1):
                cell = sheet.cell(row=row_number, column=column)
                _set_cell(cell, value)
                if row is table.totals:
                    cell.font = bold
                widths[column - 1] = max(widths[column - 1], _display_width(value))
        last = get_column_letter(len(table.header))
        sheet.freeze_panes = "A2"
        # the filter covers the header and the data rows, not the totals row: sorting keeps it last
        sheet.auto_filter.ref = f"A1:{last}{1 + len(table.rows)}"
        for column, width in enumerate(widths, start=1):
            sheet.column_dimensions[get_column_letter(column)].width = min(width + 2, MAX_WIDTH)
    with _open_new(path) as handle:
        workbook.save(handle)


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, str):
        return neutralise(value)
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, date):
        return value.isoformat()
    return value  # a number, written as such


def _write_csv(path: Path, table: Table) -> None:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, dialect="excel", lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(table.header)
    for row in table.rows:
        writer.writerow([_csv_cell(value) for value in row])
    with _open_new(path) as handle:
        handle.write(buffer.getvalue().encode("utf-8-sig"))  # BOM: see the module docstring


def _write_text(path: Path, text: str) -> None:
    with _open_new(path) as handle:
        handle.write(text.encode("utf-8"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def _pack_files(work: Path) -> list[str]:
    return sorted(p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file())


def _manifest(work: Path, files: Sequence[str], *, report: dict, made_at: datetime,
              copied: Sequence[EvidenceCopy], missing: Sequence[MissingEvidence]) -> str:
    run = report.get("run") or {}
    compliant = report.get("compliant")
    sizes = {name: (work / name).stat().st_size for name in files}
    lines = [
        MANIFEST_HEADER,
        f"# made at: {iso(made_at)} by cal-agent {__version__}",
        f"# report: run {_one_line(run.get('id'))}, generated at {_one_line(report.get('generated_at'))}, "
        f"compliant: {'unknown' if compliant is None else 'yes' if compliant else 'no'}",
        f"# files: {len(files)}, each with its SHA-256 below (this manifest cannot list itself)",
        "# check on Linux:   sha256sum -c MANIFEST.txt      (lines starting with # are ignored)",
        "# check on Windows: Get-FileHash -Algorithm SHA256 <file>, and compare with its line below",
        "#",
        f"# evidence copied ({len(copied)}):",
        *(f"#   {_one_line(c.purchase)}: {_one_line(c.source)} -> {c.stored_as}" for c in copied),
        f"# evidence missing ({len(missing)}):",
        *(f"#   {_one_line(m.purchase)}: {_one_line(m.evidence)}: {_one_line(m.reason)}" for m in missing),
        "#",
        "#        bytes  file",
        *(f"# {sizes[name]:>12}  {name}" for name in files),
        "#",
        *(f"{_sha256(work / name)}  {name}" for name in files),
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------- folder

_CHECKSUM_LINE = re.compile(r"[0-9a-f]{64}  (.+)")


def _is_earlier_pack(folder: Path) -> bool:
    """A folder holding only the files its MANIFEST.txt (of an audit pack) lists."""
    try:
        lines = (folder / MANIFEST_NAME).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return False
    if not lines or lines[0] != MANIFEST_HEADER:
        return False
    listed = {m.group(1) for m in map(_CHECKSUM_LINE.fullmatch, lines) if m}
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            if Path(root, name).is_symlink():
                return False
        for name in files:
            path = Path(root, name)
            relative = path.relative_to(folder).as_posix()
            if path.is_symlink() or not path.is_file():
                return False
            if relative != MANIFEST_NAME and relative not in listed:
                return False
    return True


def _target(output_dir: Path) -> Path:
    output_dir = Path(output_dir).expanduser()
    if output_dir.name in ("", ".", ".."):
        output_dir = output_dir.resolve()
    return output_dir.parent.resolve() / output_dir.name


def _check_target(target: Path) -> str:
    """'new', 'empty' or 'earlier pack'; anything else is refused."""
    if target.is_symlink():
        raise AuditPackError(f"{target} is a symbolic link; refusing to write the audit pack through it",
                             hint="name the real folder")
    if not target.exists():
        return "new"
    if not target.is_dir():
        raise AuditPackError(f"{target} exists and is not a folder; refusing to write the audit pack there")
    if not any(target.iterdir()):
        return "empty"
    if _is_earlier_pack(target):
        return "earlier pack"
    raise AuditPackError(
        f"{target} is not empty and is not an earlier audit pack; refusing to write the audit pack into it",
        hint="name a new or empty folder; an earlier pack (a folder holding only the files its MANIFEST.txt "
             "lists) is replaced as a whole")


def _move_into_place(work: Path, target: Path) -> None:
    state = _check_target(target)  # again: the folder may have changed while the pack was built
    if state == "new":
        os.rename(work, target)
        return
    if state == "empty":
        target.rmdir()
        os.rename(work, target)
        return
    old = target.parent / f".{target.name}.old-{secrets.token_hex(6)}"
    os.rename(target, old)
    try:
        os.rename(work, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------- entry point


def write_audit_pack(output_dir: Path, *, report: dict, register: dict, history: list[dict],
                     evidence_dir: Path | None, made_at: datetime) -> AuditPack:
    """Write the audit pack into ``output_dir`` (see the module docstring) and say what is in it."""
    target = _target(output_dir)
    _check_target(target)
    register = register or {}
    purchases = [p for p in register.get("purchases") or [] if isinstance(p, dict)]
    history = [event for event in history or [] if isinstance(event, dict)]
    work: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        work = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))  # mode 0700
        copied, missing, in_pack = _copy_evidence(work, purchases, evidence_dir)
        tables = [
            _summary_table(report, register, history, made_at, copied, missing),
            _products_table(report),
            _dict_table("Purchases", "purchases.csv", PURCHASE_COLUMNS, purchases,
                        added=[("evidence_in_pack", lambda p: in_pack.get(str(p.get("id"))))]),
            _dict_table("Assignments", "assignments.csv", ASSIGNMENT_COLUMNS, register.get("assignments") or []),
            _dict_table("Transfers", "transfers.csv", TRANSFER_COLUMNS, register.get("transfers") or []),
            _findings_table(report),
            _dict_table("History", "history.csv", HISTORY_COLUMNS, history),
        ]
        _write_xlsx(work / XLSX_NAME, tables, made_at)
        for table in tables:
            if table.csv_name:
                _write_csv(work / table.csv_name, table)
        _write_text(work / "report.json", _json_text(report, indent=2) + "\n")  # as `report --format json`
        _write_text(work / "register.json", _json_text(register, indent=2) + "\n")
        files = _pack_files(work)
        _write_text(work / MANIFEST_NAME, _manifest(work, files, report=report, made_at=made_at,
                                                    copied=copied, missing=missing))
        manifest_sha256 = _sha256(work / MANIFEST_NAME)
        _move_into_place(work, target)
        work = None
    except OSError as exc:
        raise AuditPackError(f"cannot write the audit pack to {target}: {exc.strerror or exc}",
                             hint="check that its parent folder exists and is writable") from None
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    return AuditPack(path=target, files=tuple(sorted([*files, MANIFEST_NAME])), evidence_copied=tuple(copied),
                     evidence_missing=tuple(missing), manifest_sha256=manifest_sha256)



def write_report_xlsx(path: Path, report: dict, *, made_at: datetime) -> None:
    """`report --format xlsx`: the Products (with totals) and Findings sheets of one run, with the
    same formula neutralising and typed cells as the audit pack; written atomically, mode 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    work = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        staged = work / path.name
        _write_xlsx(staged, [_products_table(report), _findings_table(report)], made_at)
        os.replace(staged, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)

"""Render a compliance report dict as CSV for spreadsheets: findings, and the per-product table.

Output is RFC 4180 (header row, ``\\r\\n`` line ends, fields quoted when they hold a comma, quote,
CR or LF), so a newline inside a directory value stays inside one quoted cell.

Directory and inventory values are attacker-controlled, and spreadsheets execute cells that look
like formulas.  Following the OWASP CSV-injection guidance, every *text* cell starting with ``=``,
``+``, ``-``, ``@``, tab or carriage return gets a leading ``'`` so it is shown as text.  Numeric
columns are written as numbers and never prefixed, so a negative count stays a number.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from typing import Any

FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")

FINDING_COLUMNS = (
    "kind",
    "severity",
    "product",
    "version",
    "cal_type",
    "principal_kind",
    "principal_name",
    "display_name",
    "directory",
    "dn",
    "state",
    "reason",
    "since",
    "purchase",
    "message",
)

PRODUCT_COLUMNS = (
    "product",
    "product_name",
    "version",
    "cal_type",
    "required",
    "owned",
    "assigned",
    "licensed",
    "free",
    "shortfall",
)


def neutralise(value: str) -> str:
    """Prefix ``'`` to text a spreadsheet would otherwise evaluate as a formula."""
    return "'" + value if value.startswith(FORMULA_TRIGGERS) else value


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return value  # a real number: written as such, never prefixed
    return neutralise(str(value))


def _write(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, dialect="excel", lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(value) for value in row])
    return buffer.getvalue()


def _finding_row(finding: dict) -> list[Any]:
    principal = finding.get("principal") or {}
    return [
        finding.get("kind"),
        finding.get("severity"),
        finding.get("product"),
        finding.get("version"),
        finding.get("cal_type"),
        principal.get("kind"),
        principal.get("name"),
        principal.get("display_name"),
        principal.get("directory"),
        principal.get("dn"),
        principal.get("state"),
        finding.get("reason"),
        finding.get("since"),
        finding.get("purchase"),
        finding.get("message"),
    ]


def render_findings_csv(report: dict) -> str:
    """One row per finding, in report order."""
    return _write(FINDING_COLUMNS, (_finding_row(f) for f in report.get("findings") or []))


def render_products_csv(report: dict) -> str:
    """One row per product/version/CAL type, as in the report's product table."""
    products = report.get("products") or []
    return _write(PRODUCT_COLUMNS, ([p.get(col) for col in PRODUCT_COLUMNS] for p in products))

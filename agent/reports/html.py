"""Render a compliance report dict as a self-contained HTML page an admin can read and print.

The report dict is the JSON report (``schema_version`` 1) built elsewhere; this module only shapes
it for display.  Every value that came from a directory or the inventory is hostile until proven
otherwise, so the Jinja environment autoescapes everything and nothing here marks a value safe.
Presentation decisions (grouping, ordering, wording) are made in Python so the template stays a
plain layout and the decisions can be tested without parsing HTML.
"""

from __future__ import annotations

import heapq
import re
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

TEMPLATE_NAME = "report.html.j2"

SEVERITY_RANK = {"error": 0, "warning": 1}

# Known finding kinds, in the order they are shown when their severity is equal:
# kind -> (group heading, what it means, what to do).  "{shortfall}" is filled with the total.
KIND_INFO: dict[str, tuple[str, str, str]] = {
    "unlicensed_user": (
        "Unlicensed users",
        "Users who need a user CAL for a product and hold none.",
        "Assign a CAL from a purchase with free seats, or buy more.",
    ),
    "unlicensed_device": (
        "Unlicensed devices",
        "Computers that need a device CAL for a product and hold none.",
        "Assign a device CAL from a purchase with free seats, or buy more.",
    ),
    "shortfall": (
        "Shortfall",
        "More CALs are required than the inventory owns.",
        "Buy {shortfall} more CALs.",
    ),
    "over_assigned": (
        "Over-assigned purchases",
        "A purchase has more seats assigned than it owns.",
        "Remove assignments or buy seats.",
    ),
    "stale_assignment": (
        "Stale assignments",
        "A CAL is still assigned to someone who left, was disabled, expired or is inactive.",
        "Release the seat: its holder left or is inactive.",
    ),
    "orphan_assignment": (
        "Orphan assignments",
        "The inventory assigns a CAL to a name that does not exist in any directory.",
        "Fix the principal name in the inventory: nobody by that name exists.",
    ),
    "type_mismatch": (
        "CAL type mismatches",
        "A user CAL is assigned to a computer, or a device CAL to a user: it licenses nothing.",
        "Release it and assign a CAL of the right type.",
    ),
    "unknown_group": (
        "Unknown groups in requirements",
        "A requirement names a group no directory has, so who needs the CAL cannot be judged.",
        "Fix the group name (sAMAccountName or DN) in the configuration.",
    ),
    "missing_base_cal": (
        "Missing base CALs",
        "An additive CAL (Enterprise, RDS, RMS) or a server product (Exchange, SharePoint, SQL Server) "
        "is used without the base CAL it builds on, such as the Windows Server CAL.",
        "Assign the base CAL to the same user or device.",
    ),
    "rds_over_issued": (
        "Over-issued RDS CALs",
        "The RD licence servers issued more per-user RDS CALs than were bought.",
        "Buy RDS user CALs of that version, or revoke issued ones.",
    ),
    "version_mismatch": (
        "CALs of an older version",
        "An assigned CAL is older than the server version it must cover.",
        "Assign a CAL of the server's version or later.",
    ),
    "expired": (
        "Expired licences",
        "A subscription or time-bound purchase has expired and no longer counts as owned.",
        "Renew it, or release its assignments.",
    ),
    "expiring": (
        "Licences expiring soon",
        "A subscription or time-bound purchase expires within a warning threshold.",
        "Renew it before it expires.",
    ),
    "premature_reassignment": (
        "Seats moved too early",
        "A seat moved to another principal within 90 days of its previous assignment, with no "
        "departure, hardware failure or absence to justify it.",
        "Record the lawful reason, or move the seat back.",
    ),
    "owner_departed": (
        "Licences owned by departed accounts",
        "A licence activated on a vendor portal belongs to an account that left.",
        "Move the licence to a service or team account.",
    ),
    "missing_evidence": (
        "Missing proof of purchase",
        "A purchase has no invoice reference or evidence document, or its document is missing.",
        "Add the invoice or evidence before an audit.",
    ),
}
KIND_ORDER = {kind: index for index, kind in enumerate(KIND_INFO)}

DIRECTORY_TYPES = {"active_directory": "Active Directory", "ldap": "LDAP directory", "ldif": "LDIF export"}
FAILED_SYNC_STATUSES = {"failed", "error", "aborted"}


def humanise(name: Any) -> str:
    """``"license_expiring"`` -> ``"License expiring"``: labels kinds and types we don't know."""
    text = str(name or "").replace("_", " ").replace("-", " ").strip()
    text = " ".join(text.split())
    return text[:1].upper() + text[1:] if text else "Unknown"


def format_when(value: Any) -> str:
    """An ISO timestamp as ``2026-11-24 19:00 UTC``; anything unparsable is shown as given."""
    if value is None or value == "":
        return "—"
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    if moment.tzinfo is None:
        return moment.strftime("%Y-%m-%d %H:%M")
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def format_number(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if value.is_integer() else f"{value:,}"
    return str(value)


def plural(count: Any, singular: str, plural_form: str | None = None) -> str:
    word = singular if count == 1 else (plural_form or singular + "s")
    return f"{format_number(count)} {word}"


def _severity_rank(severity: Any) -> int:
    return SEVERITY_RANK.get(severity, len(SEVERITY_RANK))


def _cal_label(finding: dict, product_names: dict[str, str]) -> str:
    product = finding.get("product")
    if not product:
        return ""
    parts = [product_names.get(product) or str(product)]
    if finding.get("version"):
        parts.append(str(finding["version"]))
    label = " ".join(parts)
    if finding.get("cal_type"):
        label += f" ({finding['cal_type']} CAL)"
    return label


def _finding_row(finding: dict, product_names: dict[str, str]) -> dict[str, Any]:
    principal = finding.get("principal") or {}
    state = principal.get("state")
    reason = finding.get("reason")
    parts = [str(part) for part in (state, reason) if part]
    state_reason = " / ".join(dict.fromkeys(parts))  # "disabled / disabled" reads as a bug
    return {
        "key": finding.get("key") or "",
        "kind": finding.get("kind") or "",
        "kind_label": humanise(finding.get("kind")),
        "severity": finding.get("severity") or "",
        "severity_label": humanise(finding.get("severity")),
        "principal_kind": principal.get("kind") or "",
        "principal_name": principal.get("name") or "",
        "display_name": principal.get("display_name") or "",
        "directory": principal.get("directory") or "",
        "dn": principal.get("dn") or "",
        "state_reason": state_reason,
        "since": finding.get("since"),
        "purchase": finding.get("purchase") or "",
        "cal": _cal_label(finding, product_names),
        "message": finding.get("message") or "",
    }


def _group_findings(
    findings: list[dict], product_names: dict[str, str], total_shortfall: Any
) -> list[dict[str, Any]]:
    """Findings grouped by kind; groups holding errors first, then the known kinds' order.

    Each group's rows are its findings ordered by severity (stably), the first HTML_ROWS of them;
    only those are kept as the findings are read, with counts of the rest: a report's findings
    may be ~70,000 dicts made as they are read (json_report.ReportRows)."""
    by_kind: dict[str, dict[str, Any]] = {}
    for finding in findings:
        kind = finding.get("kind") or ""
        group = by_kind.get(kind)
        if group is None:
            group = by_kind[kind] = {"total": 0, "by_severity": {}, "first": {}}
        group["total"] += 1
        severity = finding.get("severity")
        group["by_severity"][severity] = group["by_severity"].get(severity, 0) + 1
        first = group["first"].setdefault(_severity_rank(severity), [])
        if len(first) < HTML_ROWS:
            first.append(finding)

    groups = []
    for kind, group in by_kind.items():
        members = [f for rank in sorted(group["first"]) for f in group["first"][rank]][:HTML_ROWS]
        if kind in KIND_INFO:
            title, meaning, action = KIND_INFO[kind]
        else:
            title = humanise(kind)
            meaning = "This kind of finding has no description in this version of cal-agent."
            action = "Read each message below for what to do."
        if kind == "shortfall":
            if isinstance(total_shortfall, int) and total_shortfall > 0:
                action = action.format(shortfall=format_number(total_shortfall))
            else:
                action = "Buy the missing CALs."
        errors = group["by_severity"].get("error", 0)
        warnings = group["by_severity"].get("warning", 0)
        others = group["total"] - errors - warnings
        parts = [plural(n, word) for n, word in ((errors, "error"), (warnings, "warning"),
                                                 (others, "other")) if n]
        count_label = ", ".join(parts)
        if len(parts) > 1:
            count_label = f"{format_number(group['total'])} findings: {count_label}"
        groups.append(
            {
                "kind": kind,
                "title": title,
                "meaning": meaning,
                "action": action,
                "severity": "error" if errors else (members[0].get("severity") or "warning"),
                "count_label": count_label,
                "rows": [_finding_row(f, product_names) for f in members],
                "total": group["total"],
            }
        )
    groups.sort(
        key=lambda g: (
            _severity_rank(g["severity"]),
            KIND_ORDER.get(g["kind"], len(KIND_ORDER)),
            g["kind"],
        )
    )
    return groups


def _directory_status(directory: dict) -> dict[str, Any]:
    sync = directory.get("last_sync")
    dtype = directory.get("type")
    view: dict[str, Any] = {
        "name": directory.get("name") or "",
        "type_label": DIRECTORY_TYPES.get(dtype) or humanise(dtype),
        "state": "never",
        "status": "",
        "status_note": "",
        "finished_at": None,
        "error": "",
        "counts": [],
    }
    if not sync:
        return view
    status = str(sync.get("status") or "")
    error = sync.get("error")
    if error or status.lower() in FAILED_SYNC_STATUSES:
        view["state"] = "failed"
    elif status.lower() == "ok":
        view["state"] = "ok"
    else:
        view["state"] = "other"
    view["status"] = status or "unknown"
    # "FAILED (failed)" says nothing; keep the raw status only when it adds information.
    view["status_note"] = "" if status.lower() in FAILED_SYNC_STATUSES else view["status"]
    view["finished_at"] = sync.get("finished_at")
    view["error"] = error or ""
    for field, singular in (
        ("users", "user"),
        ("groups", "group"),
        ("computers", "computer"),
        ("tombstones", "tombstone"),
    ):
        if sync.get(field) is not None:
            view["counts"].append(plural(sync[field], singular))
    return view


# Rows per table in the HTML page.  Beyond this a page gets too big for a browser to open (a
# 100,000-user report made 82 MB of HTML, in 9 s, every cycle); the counts stay exact and the
# page says where the rest is (JSON, CSV, xlsx).
HTML_ROWS = 2000


def build_view(report: dict) -> dict[str, Any]:
    """Everything the template shows, already decided; raw strings stay raw (escaped on output)."""
    summary = report.get("summary") or {}
    run = report.get("run") or {}
    products = report.get("products") or []
    product_names = {
        p.get("product"): p.get("product_name") for p in products if p.get("product_name")
    }
    compliant = bool(report.get("compliant"))
    drift = report.get("drift") or {}
    previous_id = run.get("previous_id")

    def drift_rows(findings: list[dict]) -> list[dict]:
        # sorted(...)[:HTML_ROWS], stable as it is, holding only those rows (heapq documents it so)
        ordered = heapq.nsmallest(HTML_ROWS, findings, key=lambda f: _severity_rank(f.get("severity")))
        return [_finding_row(f, product_names) for f in ordered]

    findings = report.get("findings") or []
    leavers = _leavers(findings, product_names)
    licences = report.get("licences") or []
    changes = drift.get("principals") or []

    return {
        "compliant": compliant,
        "status_text": "Compliant" if compliant else "Not compliant",
        "generated_at": report.get("generated_at"),
        "run_id": run.get("id"),
        "previous_id": previous_id,
        "shortfall": summary.get("shortfall", 0),
        "errors": summary.get("errors", 0),
        "warnings": summary.get("warnings", 0),
        "findings_total": summary.get("findings", len(report.get("findings") or [])),
        "directories": [_directory_status(d) for d in report.get("directories") or []],
        "products": products,
        "first_run": previous_id is None,
        "drift_new": drift_rows(drift.get("new") or []),
        "drift_new_total": len(drift.get("new") or []),
        "drift_resolved": drift_rows(drift.get("resolved") or []),
        "drift_resolved_total": len(drift.get("resolved") or []),
        "groups": _group_findings(findings, product_names, summary.get("shortfall")),
        "schema_version": report.get("schema_version"),
        "trend_chart": trend_chart(report.get("trend") or []),
        "principal_changes": _principal_changes(changes[:HTML_ROWS]),
        "principal_changes_total": len(changes),
        "leavers": leavers[:HTML_ROWS],
        "leavers_total": len(leavers),
        "licences": _licence_rows(licences[:HTML_ROWS], product_names),
        "licences_total": len(licences),
        "licences_unlicensed": sum(1 for entry in licences
                                   if any(not n.get("licensed") for n in entry.get("needs") or [])),
    }


EVENT_LABELS = {
    "joined": "Joined", "disabled": "Disabled", "expired": "Account expired", "inactive": "Became inactive",
    "deleted": "Deleted", "missing": "Missing from the directory", "reactivated": "Active again",
    "moved": "Moved", "renamed": "Renamed",
}


def trend_chart(trend: list[dict]) -> Markup | None:
    """Shortfall and findings over past runs, as an inline SVG drawn by pygal (no script, no network:
    the report must work offline and print).  Only numbers and run ids go in; no directory text."""
    points = [t for t in trend if isinstance(t, dict) and isinstance(t.get("run"), int)]
    if len(points) < 2:
        return None
    import pygal
    from pygal.style import Style

    style = Style(background="transparent", plot_background="transparent", font_family="system-ui, sans-serif",
                  colors=("#b3261e", "#8a5a00", "#1f5fa8"), label_font_size=11, major_label_font_size=11,
                  legend_font_size=12, title_font_size=13)
    chart = pygal.Line(js=[], disable_xml_declaration=True, style=style, height=260, width=900,
                       show_dots=len(points) <= 30, dots_size=2.5, legend_at_bottom=True, x_title="Run",
                       print_values=False, include_x_axis=True, explicit_size=False, truncate_label=-1,
                       show_minor_x_labels=False, x_labels_major_every=max(1, len(points) // 12))
    chart.x_labels = [str(t["run"]) for t in points]
    chart.add("Shortfall (CALs to buy)", [int(t.get("shortfall") or 0) for t in points])
    chart.add("Errors", [int(t.get("errors") or 0) for t in points])
    chart.add("Findings", [int(t.get("findings") or 0) for t in points])
    svg = chart.render(is_unicode=True)
    # pygal embeds a config <script> for its optional tooltips, which we never load: drop it so the
    # report stays script-free.
    svg = re.sub(r"<script\b[^>]*>.*?</script>", "", svg, flags=re.DOTALL)
    return Markup(svg)


def _principal_changes(changes: list[dict]) -> list[dict[str, Any]]:
    rows = []
    for c in changes:
        event = c.get("event") or ""
        detail = ""
        if event in ("moved", "renamed"):
            detail = f"{c.get('old') or ''} → {c.get('new') or ''}"
        rows.append({"event": event, "label": EVENT_LABELS.get(event) or humanise(event), "kind": c.get("kind") or "",
                     "name": c.get("name") or "", "display_name": c.get("display_name") or "",
                     "directory": c.get("directory") or "", "detail": detail, "at": c.get("at")})
    return rows


def _leavers(findings: list[dict], product_names: dict[str, str]) -> list[dict[str, Any]]:
    """Departed principals still holding seats, one row each, with what they hold."""
    by_principal: dict[tuple, dict[str, Any]] = {}
    for f in findings:
        principal = f.get("principal") or {}
        if f.get("kind") != "stale_assignment" or not principal:
            continue
        key = (principal.get("directory"), principal.get("name"))
        row = by_principal.setdefault(key, {
            "name": principal.get("name") or "", "display_name": principal.get("display_name") or "",
            "directory": principal.get("directory") or "", "state": f.get("reason") or principal.get("state") or "",
            "since": f.get("since"), "seats": []})
        row["seats"].append(f"{f.get('purchase') or '?'} ({_cal_label(f, product_names)})")
    return sorted(by_principal.values(), key=lambda r: (r["since"] or "", r["name"].lower()))


def _licence_rows(licences: list[dict], product_names: dict[str, str]) -> list[dict[str, Any]]:
    rows = []
    for entry in licences:
        principal = entry.get("principal") or {}
        needs = entry.get("needs") or []
        holds = entry.get("holds") or []
        missing = [n for n in needs if not n.get("licensed")]
        rows.append({
            "name": principal.get("name") or "", "kind": principal.get("kind") or "",
            "display_name": principal.get("display_name") or "", "directory": principal.get("directory") or "",
            "state": principal.get("state") or "",
            "holds": [f"{h.get('purchase')}: {_cal_label(h, product_names)}" for h in holds],
            "needs": [(_cal_label(n, product_names), bool(n.get("licensed"))) for n in needs],
            "status": "unlicensed" if missing else ("surplus" if holds and not needs else "ok"),
        })
    return rows


@lru_cache(maxsize=1)
def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("agent.reports", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = format_when
    env.filters["num"] = format_number
    env.filters["plural"] = plural
    env.filters["humanise"] = humanise
    return env


def render_html(report: dict) -> str:
    """The report as one HTML page: inline CSS, no scripts, no external resources."""
    template = _environment().get_template(TEMPLATE_NAME)
    return template.render(view=build_view(report))

"""Building the alert messages: the email (text + HTML, the report attached) and the webhook
payloads (Slack, Teams).  Pure: an ``Alert`` in, a message out; nothing is sent here.

Directory values (names, display names, DNs) are hostile.  They never reach a header unescaped:
headers are set on ``email.message.EmailMessage`` (default policy) and every value put in one has
its control characters (CR, LF, ...) replaced first.  The HTML part is a Jinja2 template with
autoescape; the text part and the webhook payloads have control characters replaced, Slack's
``&``, ``<``, ``>`` escaped (its only markup that could fake a mention or a link), and Teams text
sits in Adaptive Card ``TextRun``s, which do not interpret markdown.
"""

from __future__ import annotations

import email.policy
import json
import secrets
import socket
import unicodedata
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from datetime import datetime
from functools import lru_cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from agent.alerts.triggers import Alert, parse_time

MAX_EMAIL_FINDINGS = 100  # listed in an email; the attached report has them all
MAX_WEBHOOK_FINDINGS = 10  # listed in a chat message
MAX_SUBJECT = 200


def clean(value: Any) -> str:
    """One line of text: control characters and line/paragraph separators become spaces."""
    text = "" if value is None else str(value)
    return "".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in text)


def header_text(value: Any, limit: int = MAX_SUBJECT) -> str:
    text = " ".join(clean(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    return f"{count} {singular if count == 1 else (plural_form or singular + 's')}"


def kind_label(kind: Any) -> str:
    text = clean(kind).replace("_", " ").strip()
    return text[:1].upper() + text[1:] if text else "Finding"


def when(value: Any) -> str:
    moment = parse_time(value)
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else "—"


def who(finding: dict[str, Any]) -> str:
    """The principal (``name (display name)``) or the purchase a finding is about."""
    principal = finding.get("principal") or {}
    name, display = clean(principal.get("name")), " ".join(clean(principal.get("display_name")).split())
    if name and display and display.lower() != name.lower():
        return f"{name} ({display})"
    if name:
        return name
    if finding.get("purchase"):
        return f"purchase {clean(finding['purchase'])}"
    return clean(finding.get("product") or "")


def subject(alert: Alert) -> str:
    report = alert.report
    summary = report.get("summary") or {}
    status = "compliant" if report.get("compliant") else "NOT COMPLIANT"
    parts = []
    n = len(alert.findings)
    if n and alert.mode == "change":
        parts.append(plural(n, "new finding"))
    elif n:
        parts.append(f"{plural(n, 'finding')} {'needs' if n == 1 else 'need'} attention")
    if alert.low_free:
        parts.append(f"{plural(len(alert.low_free), 'product line')} low on free seats")
    prefix = "cal-agent"
    if not parts:
        prefix = f"cal-agent {alert.digest or ''} digest".replace("  ", " ")
        parts.append(plural(int(summary.get("findings") or 0), "finding"))
    text = f"{prefix}: {status} — {', '.join(parts)}"
    if n == 1 and not alert.low_free:
        (finding,) = alert.findings
        text += f": {clean(finding.get('kind'))} {who(finding)}"
    if summary.get("shortfall"):
        text += f" (shortfall {summary['shortfall']})"
    return header_text(text)


def _finding_view(finding: dict[str, Any], alert: Alert) -> dict[str, Any]:
    return {
        "severity": clean(finding.get("severity") or "warning"),
        "kind": kind_label(finding.get("kind")),
        "who": who(finding),
        "message": clean(finding.get("message")),
        "new": alert.mode == "always" and finding.get("key") in alert.new_keys,
    }


def view(alert: Alert, *, attachment: str | None = None, limit: int = MAX_EMAIL_FINDINGS) -> dict[str, Any]:
    """Everything the text and HTML parts show, decided once; strings are raw (escaped on output)."""
    report = alert.report
    summary = report.get("summary") or {}
    run = report.get("run") or {}
    drift = report.get("drift") or {}
    total = len(alert.findings)
    findings = [_finding_view(f, alert) for f in alert.findings[:limit]]  # only those listed are read
    if alert.mode == "change":
        since = f"since run {run['previous_id']}" if run.get("previous_id") else "on the first run"
        heading = f"{plural(total, 'new finding')} {since}" if total else ""
    else:
        fresh = (sum(1 for f in alert.findings if f.get("key") in alert.new_keys)
                 if alert.mode == "always" else 0)
        heading = (f"{plural(total, 'finding')} {'needs' if total == 1 else 'need'} attention"
                   + (f" ({fresh} new)" if fresh else "")) if total else ""
    return {
        "subject": subject(alert),
        "compliant": bool(report.get("compliant")),
        "status": "compliant" if report.get("compliant") else "NOT COMPLIANT",
        "run_id": run.get("id"),
        "previous_id": run.get("previous_id"),
        "generated_at": when(report.get("generated_at")),
        "errors": summary.get("errors", 0),
        "warnings": summary.get("warnings", 0),
        "shortfall": summary.get("shortfall", 0),
        "total": summary.get("findings", 0),
        "by_kind": [(kind_label(k), v) for k, v in (summary.get("by_kind") or {}).items()],
        "heading": heading,
        "findings": findings,
        "more": max(0, total - limit),
        "low_free": [{"line": f"{clean(l.product_name)} {clean(l.version)} ({clean(l.cal_type)})",
                      "free": l.free, "minimum": l.minimum} for l in alert.low_free],
        "resolved": len(drift.get("resolved") or []),
        "digest": alert.digest,
        "attachment": attachment,
        "host": clean(socket.gethostname()),
    }


def text_body(v: dict[str, Any]) -> str:
    lines = [f"cal-agent run {v['run_id']} ({v['generated_at']}): {v['status']}",
             f"{plural(v['errors'], 'error')}, {plural(v['warnings'], 'warning')}, "
             f"shortfall {v['shortfall']} (CALs to buy).", ""]
    if v["findings"]:
        lines.append(v["heading"] + ":")
        for f in v["findings"]:
            lines.append(f"  - [{f['severity']}] {f['kind']}: {f['who']}{' (new)' if f['new'] else ''}")
            lines.append(f"    {f['message']}")
        if v["more"]:
            lines.append(f"  ... and {v['more']} more: see the attached report.")
        lines.append("")
    if v["low_free"]:
        lines.append("Product lines below their minimum of free seats:")
        for line in v["low_free"]:
            lines.append(f"  - {line['line']}: {line['free']} free, minimum {line['minimum']}")
        lines.append("")
    lines.append(("Daily digest: " if v["digest"] == "daily" else "Weekly digest: " if v["digest"] else "")
                 + f"the estate is {v['status']}, {plural(v['total'], 'finding')}, shortfall {v['shortfall']}.")
    for kind, count in v["by_kind"]:
        lines.append(f"  {kind}: {count}")
    if v["previous_id"] and v["resolved"]:
        lines.append(f"Resolved since run {v['previous_id']}: {plural(v['resolved'], 'finding')}.")
    lines.append("")
    if v["attachment"]:
        lines.append(f"The full report is attached ({v['attachment']}).")
    lines.append(f"-- \ncal-agent on {v['host']} (automatic message; alerts are configured under `alerts:`)")
    return "\n".join(lines) + "\n"


@lru_cache(maxsize=1)
def _environment() -> Environment:
    return Environment(loader=PackageLoader("agent.alerts", "templates"), autoescape=True,
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def html_body(v: dict[str, Any]) -> str:
    return _environment().get_template("alert.html.j2").render(v=v)


def envelope(sender: str, recipients: list[str]) -> tuple[str, list[str]]:
    return parseaddr(sender)[1], [parseaddr(r)[1] for r in recipients]


def build_email(alert: Alert | None, *, sender: str, recipients: list[str], now: datetime,
                attachment: tuple[str, str] | None = None, test_text: str | None = None) -> EmailMessage:
    """The email: multipart/alternative (text, HTML), in multipart/mixed with the HTML report
    attached when there is one.  ``alert`` None with ``test_text`` builds the test message."""
    msg = EmailMessage(policy=email.policy.default)
    if alert is not None:
        v = view(alert, attachment=attachment[0] if attachment else None)
        subject_text, text, html = v["subject"], text_body(v), html_body(v)
    else:
        subject_text = "cal-agent: test message"
        text = test_text or ""
        html = _environment().get_template("test.html.j2").render(text=text)
    msg["Subject"] = header_text(subject_text)
    msg["From"] = header_text(sender, 998)
    msg["To"] = ", ".join(header_text(r, 998) for r in recipients)
    msg["Date"] = format_datetime(now)
    domain = parseaddr(sender)[1].rpartition("@")[2] or "cal-agent.invalid"
    run_id = (alert.report.get("run") or {}).get("id") if alert is not None else None
    # Unique and short enough never to be folded; fixed when the message is built, so every retry
    # of it carries the same Message-ID.
    msg["Message-ID"] = f"<cal-agent.{f'run{run_id}.' if run_id else ''}{secrets.token_hex(10)}@{domain}>"
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Auto-Response-Suppress"] = "All"
    msg.set_content(text, cte="quoted-printable")
    msg.add_alternative(html, subtype="html", cte="quoted-printable")
    if attachment is not None:
        name, content = attachment
        # As bytes: the attachment is exactly the report file (a str part would be re-wrapped).
        msg.add_attachment(content.encode("utf-8"), maintype="text", subtype="html", filename=name,
                           params={"charset": "utf-8"})
    return msg


def email_bytes(msg: EmailMessage) -> bytes:
    """The message as it goes on the wire (CRLF line ends, 7-bit: every part is encoded)."""
    return msg.as_bytes(policy=email.policy.SMTP)


# ------------------------------------------------------------------------------------- webhooks


def _slack_escape(text: str) -> str:
    return clean(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _lines(alert: Alert) -> tuple[str, list[str], str]:
    v = view(alert, limit=MAX_WEBHOOK_FINDINGS)
    items = [f"[{f['severity']}] {f['kind']}: {f['who']}{' (new)' if f['new'] else ''} — {f['message']}"
             for f in v["findings"]]
    if v["more"]:
        items.append(f"... and {v['more']} more: see the report of run {v['run_id']}.")
    items += [f"{line['line']}: {line['free']} free, minimum {line['minimum']}" for line in v["low_free"]]
    footer = (f"Run {v['run_id']} ({v['generated_at']}): {v['status']}, {plural(v['errors'], 'error')}, "
              f"{plural(v['warnings'], 'warning')}, shortfall {v['shortfall']}.")
    return v["subject"], items, footer


def slack_payload(alert: Alert | None, *, test_text: str | None = None) -> dict[str, Any]:
    if alert is None:
        return {"text": _slack_escape(f"cal-agent: test message. {test_text or ''}".strip())}
    title, items, footer = _lines(alert)
    text = "*" + _slack_escape(title) + "*"
    if items:
        text += "\n" + "\n".join("• " + _slack_escape(i) for i in items)
    return {"text": text + "\n" + _slack_escape(footer)}


def _run(text: str, **style: Any) -> dict[str, Any]:
    return {"type": "RichTextBlock", "inlines": [{"type": "TextRun", "text": clean(text), **style}]}


def teams_payload(alert: Alert | None, *, test_text: str | None = None) -> dict[str, Any]:
    """An Adaptive Card in the message envelope Teams incoming webhooks and Workflows accept."""
    if alert is None:
        body = [_run("cal-agent: test message", weight="Bolder", size="Medium"), _run(test_text or "")]
        summary = "cal-agent: test message"
    else:
        title, items, footer = _lines(alert)
        body = [_run(title, weight="Bolder", size="Medium")]
        body += [_run("• " + i) for i in items]
        body.append(_run(footer, isSubtle=True))
        summary = title
    return {
        "type": "message",
        "summary": clean(summary),
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": None,
            "content": {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "type": "AdaptiveCard",
                        "version": "1.4", "msteams": {"width": "Full"}, "body": body},
        }],
    }


def webhook_body(alert: Alert | None, fmt: str, *, test_text: str | None = None) -> str:
    payload = (slack_payload if fmt == "slack" else teams_payload)(alert, test_text=test_text)
    return json.dumps(payload, ensure_ascii=False)

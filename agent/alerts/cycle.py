"""Alerts in the agent's cycle: what `run --once` and `reconcile` call, and `cal-agent alert`.

    retry(config, store)                      # start of a cycle: the outbox, oldest first
    ... sync, reconcile_and_record, write the report files ...
    after_run(config, store, report, ...)     # decide, queue (one transaction), deliver

``after_run`` measures change from the *last run whose alerts were queued* (``alert_state``), not
simply from the previous run: if cal-agent stopped between recording a run and queueing its alert,
the next cycle still alerts on what that run found.  The message rows and the new ``alert_state``
are written in one transaction, so a run is alerted on once.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import select

from agent.alerts import message as msg
from agent.alerts import outbox
from agent.alerts.triggers import Alert, digest_due, evaluate, unknown_min_free_products
from agent.config import Config, resolve_password, resolve_webhook_url
from agent.errors import AlertError, CalAgentError, ConfigError
from agent.reports.json_report import DamagedReport, StoredReport
from agent.store.db import Store
from agent.store.models import AlertState, OutboxMessage, Run

log = structlog.get_logger("agent.alerts")

STATE = "alerts"
NOUNS = {"email": ("email", "emails"), "webhook": ("webhook message", "webhook messages")}


@dataclass
class Outcome:
    """What alerting did in one cycle, for the one line `run`/`reconcile` print."""

    channels: list[str]
    queued: dict[str, int] = field(default_factory=dict)
    delivery: outbox.Delivery = field(default_factory=outbox.Delivery)
    kind: str | None = None

    def line(self) -> str | None:
        if not self.channels:
            return None
        parts = []
        for channel in self.channels:
            queued = self.queued.get(channel, 0)
            sent = sum(1 for a in self.delivery.sent if a.channel == channel)
            waiting = sum(1 for a in self.delivery.failed if a.channel == channel) + sum(
                1 for c, _why in self.delivery.waiting.values() if c == channel)
            if not (queued or sent or waiting):
                continue
            noun = NOUNS[channel][0 if max(queued, sent, waiting) == 1 else 1]
            error = self.delivery.failed_channels.get(channel, "")
            waits = f"{waiting} waiting in the outbox" + (f" ({error})" if error else "")
            if queued:
                text = f"{queued} {noun} queued"
                text += ", sent" if sent == queued and not waiting else f", {sent} sent" if sent else ""
                text += f", {waits}" if waiting else ""
            elif sent:
                text = f"{sent} earlier {noun} sent" + (f", {waits}" if waiting else "")
            else:
                text = f"{waiting} {noun} waiting in the outbox" + (f" ({error})" if error else "")
            parts.append(text)
        return "alerts: " + ("; ".join(parts) if parts else "nothing to send")


def _report_of(session, run_id: int | None) -> dict[str, Any] | None:
    """Run ``run_id``'s stored report as a baseline: its header, its findings read one at a time
    when they are iterated (StoredReport)."""
    if run_id is None:
        return None
    blob = session.scalars(select(Run.report_gz).where(Run.id == run_id)).first()
    if blob is None:
        return None
    try:
        return StoredReport(blob)
    except DamagedReport as exc:
        _baseline_damaged(run_id, exc)
        return None


def _baseline_damaged(run_id: int | None, exc: Exception) -> None:
    # As if the run were pruned: the next baseline, or the new run's own drift, decides (docs/alerts.md).
    log.warning("alerts.baseline_damaged", run=run_id, error=str(exc))


def retry(config: Config, store: Store, *, now: datetime | None = None) -> outbox.Delivery:
    """Retry the outbox (start of a cycle; `alert --flush`)."""
    if not config.alerts.channels and not _has_pending(store):
        return outbox.Delivery()
    return outbox.deliver(store, config.alerts, now=(lambda: now) if now else None)


def _has_pending(store: Store) -> bool:
    with store.session() as session:
        return session.scalar(select(OutboxMessage.id).where(OutboxMessage.status != outbox.SENT).limit(1)) is not None


def after_run(config: Config, store: Store, report: dict[str, Any], *, report_file: Path | None = None,
              retried: outbox.Delivery | None = None, now: datetime | None = None) -> Outcome:
    """Decide this run's alert, queue it for every channel, then deliver the outbox."""
    alerts = config.alerts
    result = Outcome(channels=alerts.channels)
    if not alerts.channels:
        return result
    moment = now or datetime.now(timezone.utc)
    run_id = (report.get("run") or {}).get("id")
    missing = unknown_min_free_products(report, alerts.triggers)
    if missing:
        log.warning("alerts.min_free_unknown_product", products=missing,
                    why="alerts.triggers.min_free names products with no line in the report")
    with store.session() as session:
        state = session.get(AlertState, STATE)
        if state is None:
            state = AlertState(name=STATE)
            session.add(state)
        if state.last_run_id is not None and run_id is not None and state.last_run_id >= run_id:
            alert = None  # this run was already alerted on
        else:
            due = digest_due(alerts.digest, state.last_digest_at, moment)
            # The last run alerted on, else the previous run, else none; a baseline found damaged
            # while it is read (its findings are read as evaluate() goes) counts as missing.
            tried = [i for i in (state.last_run_id, (report.get("run") or {}).get("previous_id")) if i is not None]
            for baseline_id in [*tried, None]:
                baseline = _report_of(session, baseline_id)
                if baseline is None and baseline_id is not None:
                    continue
                try:
                    alert = evaluate(report, baseline, alerts, digest=due)
                    break
                except DamagedReport as exc:
                    _baseline_damaged(baseline_id, exc)
            if alert is not None:
                result.kind = alert.kind
                for channel in alerts.channels:
                    _queue(session, channel, alert, config, moment, report_file)
                    result.queued[channel] = 1
                if alert.digest:
                    state.last_digest_at = moment
            state.last_run_id = run_id
    if alert is not None:
        log.info("alerts.queued", run=run_id, kind=alert.kind, findings=len(alert.findings),
                 low_free=len(alert.low_free), digest=alert.digest, channels=alerts.channels)
    skip = dict(retried.failed_channels) if retried else {}
    result.delivery = outbox.deliver(store, alerts, now=(lambda: now) if now else None, skip=skip)
    if retried is not None:
        result.delivery = retried.merge(result.delivery)
    return result


def _attachment(report: dict[str, Any], report_file: Path | None) -> tuple[str, str]:
    run_id = (report.get("run") or {}).get("id") or 0
    name = f"cal-agent-run-{run_id:06d}.html"
    if report_file is not None:
        try:
            return name, Path(report_file).read_text(encoding="utf-8")
        except OSError as exc:
            log.warning("alerts.report_file_unreadable", path=str(report_file), error=exc.strerror)
    from agent.reports.html import render_html

    return name, render_html(report)


def _queue(session, channel: str, alert: Alert, config: Config, now: datetime, report_file: Path | None) -> None:
    run_id = (alert.report.get("run") or {}).get("id")
    if channel == "email":
        email = config.alerts.email
        message = msg.build_email(alert, sender=email.from_, recipients=list(email.to), now=now,
                                  attachment=_attachment(alert.report, report_file))
        sender, recipients = msg.envelope(email.from_, list(email.to))
        outbox.add(session, channel="email", kind=alert.kind, subject=str(message["Subject"]),
                   body=msg.email_bytes(message).decode("utf-8"), now=now, run_id=run_id,
                   message_id=str(message["Message-ID"]), sender=sender, recipients=recipients)
    else:
        outbox.add(session, channel="webhook", kind=alert.kind, subject=msg.subject(alert),
                   body=msg.webhook_body(alert, config.alerts.webhook.format), now=now, run_id=run_id)


# ------------------------------------------------------------------------------ `alert --test`


@dataclass
class TestResult:
    channel: str
    ok: bool
    detail: str


def send_test(config: Config, *, now: datetime | None = None) -> list[TestResult]:
    """A test message to every configured channel, now, not through the outbox."""
    from agent.alerts import smtp, webhook

    alerts = config.alerts
    if not alerts.channels:
        raise ConfigError("alerts: no channel configured: add alerts.email and/or alerts.webhook "
                          "(config.example.yaml, docs/alerts.md)", source=config.source)
    moment = now or datetime.now(timezone.utc)
    text = (f"This is a test message from cal-agent on {socket.gethostname()}, sent {moment:%Y-%m-%d %H:%M UTC}. "
            "If you can read it, alerts reach you here.")
    results = []
    for channel in alerts.channels:
        try:
            if channel == "email":
                email = alerts.email
                try:
                    password = resolve_password(email, where="alerts.email") if email.username else None
                except CalAgentError as exc:
                    raise AlertError(str(exc)) from None
                message = msg.build_email(None, sender=email.from_, recipients=list(email.to), now=moment,
                                          test_text=text)
                sender, recipients = msg.envelope(email.from_, list(email.to))
                refused = smtp.send(email, password, sender, recipients, msg.email_bytes(message))
                detail = f"sent to {', '.join(recipients)} via {smtp.describe(email)}"
                if refused:
                    detail += "; refused: " + "; ".join(f"{r}: {a}" for r, a in refused.items())
            else:
                try:
                    url = resolve_webhook_url(alerts.webhook)
                except CalAgentError as exc:
                    raise AlertError(str(exc)) from None
                status = webhook.post(url, msg.webhook_body(None, alerts.webhook.format, test_text=text),
                                      timeout=alerts.webhook.timeout)
                detail = f"sent ({alerts.webhook.format} format), HTTP {status}"
            results.append(TestResult(channel, True, detail))
            log.info("alert.test", channel=channel, ok=True)
        except AlertError as exc:
            results.append(TestResult(channel, False, str(exc)))
            log.warning("alert.test", channel=channel, ok=False, error=str(exc))
    return results

"""The outbox: every alert message is stored in the database first, then delivered.

Delivery is **at least once**, never silently lost:

* a message is ``pending`` until a channel accepted it (the SMTP server answered 250 to the data,
  the webhook answered 2xx); only then is it marked ``sent``;
* before sending, a delivery claims the message (``pending`` -> ``sending``, one atomic UPDATE), so
  two cal-agent processes flushing at once never both send it;
* a failed attempt puts it back to ``pending`` with the error and the attempt count; it is retried
  at the next cycle or by ``cal-agent alert --flush``, oldest first, and the first failure on a
  channel leaves that channel's later messages for next time (order is kept);
* the window: if cal-agent dies after the server accepted a message and before it was marked sent,
  the message stays ``sending``; after ``lease()`` it is retried, so it may arrive twice.  The email is
  stored fully built, so a second copy carries the same Message-ID (mail clients and many servers
  drop duplicates by it); a webhook post has no such identity.  We chose a rare duplicate over a
  lost alert.

Sent messages are kept ``alerts.keep_sent_days`` days (default 90; null: forever), then deleted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable

import structlog
from pydantic import SecretStr
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from agent.config import AlertsConfig, resolve_password, resolve_webhook_url
from agent.errors import AlertError, CalAgentError
from agent.store.db import Store
from agent.store.models import OutboxMessage

log = structlog.get_logger("agent.alerts")

PENDING, SENDING, SENT = "pending", "sending", "sent"
LEASE = timedelta(minutes=15)  # a message `sending` for longer was interrupted (the process died);
# longer when a channel's timeout is so long that a live attempt could take that long (see lease())


@dataclass
class Attempt:
    id: int
    channel: str
    subject: str
    ok: bool
    error: str | None = None


@dataclass
class Delivery:
    """What one pass over the outbox did."""

    attempts: list[Attempt] = field(default_factory=list)
    waiting: dict[int, tuple[str, str]] = field(default_factory=dict)  # id -> (channel, why not tried)
    failed_channels: dict[str, str] = field(default_factory=dict)  # channel -> error

    @property
    def sent(self) -> list[Attempt]:
        return [a for a in self.attempts if a.ok]

    @property
    def failed(self) -> list[Attempt]:
        return [a for a in self.attempts if not a.ok]

    def merge(self, other: "Delivery") -> "Delivery":
        attempted = {a.id for a in self.attempts + other.attempts}
        waiting = {k: v for k, v in {**self.waiting, **other.waiting}.items() if k not in attempted}
        return Delivery(self.attempts + other.attempts, waiting, {**self.failed_channels, **other.failed_channels})


def add(session: Session, *, channel: str, kind: str, subject: str, body: str, now: datetime,
        run_id: int | None = None, message_id: str | None = None, sender: str | None = None,
        recipients: list[str] | None = None) -> OutboxMessage:
    row = OutboxMessage(created_at=now, run_id=run_id, channel=channel, kind=kind, subject=subject,
                        message_id=message_id, sender=sender, recipients=recipients, body=body, status=PENDING,
                        attempts=0)
    session.add(row)
    return row


class Senders:
    """Per channel, a function that delivers one outbox row; secrets resolved once, lazily."""

    def __init__(self, alerts: AlertsConfig) -> None:
        self.alerts = alerts
        self._secrets: dict[str, SecretStr | None] = {}

    def _secret(self, channel: str) -> SecretStr | None:
        if channel not in self._secrets:
            try:
                if channel == "email":
                    email = self.alerts.email
                    self._secrets[channel] = (resolve_password(email, where="alerts.email")
                                              if email.username else None)
                else:
                    self._secrets[channel] = resolve_webhook_url(self.alerts.webhook)
            except CalAgentError as exc:
                raise AlertError(str(exc)) from None
        return self._secrets[channel]

    def configured(self, channel: str) -> bool:
        return getattr(self.alerts, channel, None) is not None

    def send(self, row: OutboxMessage) -> str | None:
        """Deliver ``row``; returns a note (partly refused recipients) or raises AlertError."""
        if row.channel == "email":
            from agent.alerts import smtp

            refused = smtp.send(self.alerts.email, self._secret("email"), row.sender or "",
                                list(row.recipients or []), row.body.encode("utf-8"))
            if refused:
                return "accepted, but the server refused " + "; ".join(f"{r}: {a}" for r, a in refused.items())
            return None
        if row.channel == "webhook":
            from agent.alerts import webhook

            webhook.post(self._secret("webhook"), row.body, timeout=self.alerts.webhook.timeout)
            return None
        raise AlertError(f"unknown channel {row.channel!r}")


def deliver(store: Store, alerts: AlertsConfig, *, now: Callable[[], datetime] | None = None,
            skip: dict[str, str] | None = None) -> Delivery:
    """Send every pending message, oldest first.  ``skip``: channels that already failed in this
    cycle (their messages wait for the next one, behind the older ones)."""
    clock = now or (lambda: datetime.now(timezone.utc))
    result = Delivery(failed_channels=dict(skip or {}))
    senders = Senders(alerts)
    _recover_interrupted(store, alerts, clock())
    with store.session() as session:
        queue = session.execute(select(OutboxMessage.id, OutboxMessage.channel)
                                .where(OutboxMessage.status == PENDING).order_by(OutboxMessage.id)).all()
    for message_id, channel in queue:
        if channel in result.failed_channels:
            result.waiting[message_id] = (channel, result.failed_channels[channel])
            continue
        if not senders.configured(channel):
            result.waiting[message_id] = (channel, f"alerts.{channel} is not configured")
            continue
        started = clock()
        with store.session() as session:
            claimed = session.execute(
                update(OutboxMessage).where(OutboxMessage.id == message_id, OutboxMessage.status == PENDING)
                .values(status=SENDING, attempts=OutboxMessage.attempts + 1, last_attempt_at=started)
            ).rowcount
            row = session.get(OutboxMessage, message_id) if claimed else None
            if row is not None:
                session.expunge(row)
        if row is None:
            continue  # another cal-agent took it
        try:
            note = senders.send(row)
        except AlertError as exc:
            error = str(exc)
            with store.session() as session:
                session.execute(update(OutboxMessage).where(OutboxMessage.id == message_id)
                                .values(status=PENDING, last_error=error))
            result.failed_channels[channel] = error
            result.attempts.append(Attempt(message_id, channel, row.subject, False, error))
            log.warning("alert.delivery", outbox_id=message_id, channel=channel, kind=row.kind, run=row.run_id,
                        attempt=row.attempts, message_id=row.message_id, ok=False, error=error)
            continue
        with store.session() as session:
            session.execute(update(OutboxMessage).where(OutboxMessage.id == message_id)
                            .values(status=SENT, sent_at=clock(), **({"last_error": note} if note else {})))
        result.attempts.append(Attempt(message_id, channel, row.subject, True, note))
        log.info("alert.delivery", outbox_id=message_id, channel=channel, kind=row.kind, run=row.run_id,
                 attempt=row.attempts, message_id=row.message_id, ok=True,
                 recipients=len(row.recipients or []) if channel == "email" else None, note=note)
    prune(store, alerts, clock())
    return result


def lease(alerts: AlertsConfig) -> timedelta:
    """How long a `sending` message may be in flight before it counts as interrupted."""
    timeouts = [c.timeout for c in (alerts.email, alerts.webhook) if c is not None]
    return max([LEASE] + [timedelta(seconds=8 * t) for t in timeouts])


def _recover_interrupted(store: Store, alerts: AlertsConfig, now: datetime) -> None:
    with store.session() as session:
        stuck = session.scalars(select(OutboxMessage).where(
            OutboxMessage.status == SENDING, OutboxMessage.last_attempt_at < now - lease(alerts))).all()
        for row in stuck:
            row.status = PENDING
            row.last_error = ("the previous attempt was interrupted (cal-agent stopped while sending); "
                              "it may have been delivered, so this retry may be a duplicate")
            log.warning("alert.interrupted", outbox_id=row.id, channel=row.channel, message_id=row.message_id,
                        attempt=row.attempts)


def prune(store: Store, alerts: AlertsConfig, now: datetime) -> int:
    if alerts.keep_sent_days is None:
        return 0
    with store.session() as session:
        return session.execute(delete(OutboxMessage).where(
            OutboxMessage.status == SENT, OutboxMessage.sent_at < now - timedelta(days=alerts.keep_sent_days))
        ).rowcount


def status(store: Store) -> list[OutboxMessage]:
    """Messages not yet sent, oldest first (detached rows, for display)."""
    with store.session() as session:
        rows = session.scalars(select(OutboxMessage).where(OutboxMessage.status != SENT)
                               .order_by(OutboxMessage.id)).all()
        for row in rows:
            session.expunge(row)
        return list(rows)

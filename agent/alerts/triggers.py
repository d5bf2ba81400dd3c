"""Which findings are alert-worthy, and what one cycle's alert says.  Pure: reports in, an
``Alert`` (or None: nothing to say) out.

A finding alerts once, when it *becomes* alert-worthy: it is alert-worthy in this run's report and
was not in the baseline report (the last run whose alerts were queued; see agent/alerts/cycle.py).
For most kinds that is exactly "it is in drift.new"; for `stale_assignment` it is the run in which
the seat's holder has been departed for `stale_after_days`, and for `min_free` the run in which a
product line's free seats drop below the minimum.  Each `expiring` threshold is its own finding (its
`reason` is the threshold), so each threshold alerts once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from agent.config import AlertsConfig, AlertTriggersConfig
from agent.reports.json_report import ReportRows

UNLICENSED = ("unlicensed_user", "unlicensed_device")
EXPIRY = ("expiring", "expired")


@dataclass(frozen=True)
class LowFree:
    """A product line whose free seats are below `alerts.triggers.min_free`."""

    product: str
    product_name: str
    version: str
    cal_type: str
    free: int
    minimum: int

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.product, self.version, self.cal_type)


@dataclass(frozen=True)
class Alert:
    """What one cycle tells the admins.  ``findings`` are the alerting findings (for `on: change`
    the ones that became alert-worthy in this run); ``new_keys`` marks which of them are new
    (differs only for `on: always`); ``digest`` is "daily"/"weekly" when the message also serves as
    the periodic digest of the current state."""

    mode: str  # change | always | digest
    report: dict[str, Any]
    findings: Sequence[dict[str, Any]] = ()
    low_free: tuple[LowFree, ...] = ()
    new_keys: frozenset[str] = field(default_factory=frozenset)
    digest: str | None = None

    @property
    def kind(self) -> str:
        """The outbox's `kind`: what made this message (change / always / digest)."""
        if self.findings or self.low_free:
            return self.mode
        return "digest"


def parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def report_time(report: dict[str, Any]) -> datetime:
    return parse_time(report.get("generated_at")) or datetime.now(timezone.utc)


def is_alert_worthy(finding: dict[str, Any], triggers: AlertTriggersConfig, now: datetime) -> bool:
    """Whether ``finding`` (a report finding dict) alerts, judged at ``now`` (the report's time)."""
    kind = finding.get("kind")
    if kind == "shortfall":
        return triggers.shortfall
    if kind in UNLICENSED:
        return triggers.unlicensed
    if kind in EXPIRY:
        return triggers.expiring
    if kind == "stale_assignment":
        days = triggers.stale_after_days
        if days is None:
            return False
        if days == 0:
            return True
        since = parse_time(finding.get("since"))
        return since is not None and now - since >= timedelta(days=days)
    return False


class Picked(ReportRows):
    """Some of a report's findings, by position, read from the report when they are read: a
    100,000-user report has ~70,000 alert-worthy findings, and an alert lists a hundred."""

    __slots__ = ("_findings",)

    def __init__(self, findings: Sequence[dict[str, Any]], positions: list[int]) -> None:
        super().__init__(positions, lambda at, _memo: findings[at])
        self._findings = findings

    def where(self, keep: Callable[[dict[str, Any]], bool]) -> "Picked":
        return Picked(self._findings, [at for at, f in zip(self._items, self) if keep(f)])


def alert_worthy(report: dict[str, Any], triggers: AlertTriggersConfig) -> Picked:
    now = report_time(report)
    findings = report.get("findings") or []
    return Picked(findings, [i for i, f in enumerate(findings) if is_alert_worthy(f, triggers, now)])


def alert_worthy_keys(report: dict[str, Any], triggers: AlertTriggersConfig) -> set[str]:
    """The keys of the alert-worthy findings (a baseline's findings may be read only once, in order)."""
    now = report_time(report)
    return {f.get("key") for f in report.get("findings") or [] if is_alert_worthy(f, triggers, now)}


def low_free(report: dict[str, Any], triggers: AlertTriggersConfig) -> list[LowFree]:
    out = []
    for line in report.get("products") or []:
        minimum = triggers.min_free.get(line.get("product"))
        free = line.get("free")
        if minimum is None or not isinstance(free, int) or free >= minimum:
            continue
        out.append(LowFree(product=line["product"], product_name=line.get("product_name") or line["product"],
                           version=str(line.get("version") or ""), cal_type=str(line.get("cal_type") or ""),
                           free=free, minimum=minimum))
    return out


def unknown_min_free_products(report: dict[str, Any], triggers: AlertTriggersConfig) -> list[str]:
    """min_free keys that match no product line of the report (probably a typo)."""
    seen = {line.get("product") for line in report.get("products") or []}
    return sorted(k for k in triggers.min_free if k not in seen)


def digest_due(period: str | None, last: datetime | None, now: datetime) -> bool:
    """At most one digest per calendar day (`daily`) or ISO week, Monday first (`weekly`), in
    the local time zone of the machine; the first cycle of a new day/week sends it."""
    if period is None:
        return False
    if last is None:
        return True
    a, b = last.astimezone().date(), now.astimezone().date()
    if period == "daily":
        return b > a
    return b.isocalendar()[:2] > a.isocalendar()[:2]


def evaluate(report: dict[str, Any], baseline: dict[str, Any] | None, alerts: AlertsConfig, *,
             digest: bool = False) -> Alert | None:
    """The alert of this run, or None when there is nothing to say.

    ``baseline`` is the report changes are measured from (the last run whose alerts were queued);
    None when there is none, and then the run's own drift (``drift.new``) tells what is new.
    ``digest`` asks for the periodic summary (``alerts.digest``) in this message.
    """
    triggers = alerts.triggers
    current = alert_worthy(report, triggers)
    lows = low_free(report, triggers)
    if baseline is None:
        new_keys = {f.get("key") for f in (report.get("drift") or {}).get("new") or []}
        previous_low: set[tuple[str, str, str]] = set()
    else:
        old = alert_worthy_keys(baseline, triggers)
        new_keys = {f.get("key") for f in current if f.get("key") not in old}
        previous_low = {line.key for line in low_free(baseline, triggers)}
    new_lows = [line for line in lows if line.key not in previous_low]

    if alerts.on == "change":
        findings = current.where(lambda f: f.get("key") in new_keys)
        lines = new_lows
    elif alerts.on == "always":
        findings, lines = current, lows
    else:  # never: only the digest, if any
        findings, lines = Picked([], []), []
    if not findings and not lines and not digest:
        return None
    return Alert(mode=alerts.on if alerts.on != "never" else "digest", report=report, findings=findings,
                 low_free=tuple(lines), new_keys=frozenset(k for k in new_keys if k),
                 digest=alerts.digest if digest else None)

"""One cycle of the agent: sync -> reconcile -> report (-> alerts), under the store lock.

Used by `cal-agent run --once` and by the daemon's scheduler.  ``should_stop`` is checked between
phases, so a stop request never interrupts a write: a sync is read completely and applied in one
transaction, then the next phase starts only if no stop was asked for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import structlog

from agent import alerts, engine
from agent.config import Config
from agent.store.db import Store
from agent.store.lock import store_lock

log = structlog.get_logger("agent.cycle")


@dataclass
class CycleResult:
    started_at: datetime
    finished_at: datetime | None = None
    stopped: bool = False  # a stop was asked for and the cycle ended early (between phases)
    report: dict[str, Any] | None = None
    written: dict[str, Any] = field(default_factory=dict)
    failures: list = field(default_factory=list)
    synced: list = field(default_factory=list)
    alerts: Any = None  # agent.alerts.Outcome: what alerting queued and sent in this cycle
    run_id: int | None = None
    compliant: bool | None = None
    _summary: str | None = field(default=None, repr=False)  # kept by release()

    @property
    def duration(self) -> float:
        end = self.finished_at or datetime.now(timezone.utc)
        return (end - self.started_at).total_seconds()

    def release(self) -> None:
        """Keep what the service shows of this cycle until the next one (its summary, run, verdict)
        and drop the report: at 100,000 users its findings and licences are ~100 MB that the daemon
        would otherwise hold between cycles, for nothing."""
        self._summary = self.summary()
        self.report = None

    def summary(self) -> str:
        if self._summary is not None:
            return self._summary
        if self.report is None:
            return "stopped before reconcile" if self.stopped else "no report"
        s = self.report["summary"]
        state = "compliant" if self.report["compliant"] else "NOT COMPLIANT"
        drift = self.report["drift"]
        return (f"run {self.report['run']['id']}: {state}, shortfall {s['shortfall']}, {s['errors']} errors, "
                f"{s['warnings']} warnings, {len(drift['new'])} new, {len(drift['resolved'])} resolved"
                + (f"; {len(self.failures)} directory read failed" if self.failures else ""))


def run_cycle(config: Config, store: Store, *, should_stop: Callable[[], bool] = lambda: False) -> CycleResult:
    result = CycleResult(started_at=datetime.now(timezone.utc))
    began = time.monotonic()
    with store_lock(store):
        retried = alerts.retry(config, store)  # the outbox first: what earlier cycles could not send
        result.synced, result.failures = engine.sync_directories(config, store)
        if should_stop():
            result.stopped = True
        else:
            run = engine.reconcile_and_record(config, store)
            result.report = run.report
            result.run_id, result.compliant = run.run_id, run.reconciliation.compliant
            result.written = engine.write_report_files(config, run)
            engine.prune_runs(config, store)
            result.alerts = alerts.after_run(config, store, run.report, report_file=result.written.get("html"),
                                             retried=retried)
    result.finished_at = datetime.now(timezone.utc)
    log.info("cycle.finished", seconds=round(time.monotonic() - began, 3), stopped=result.stopped,
             summary=result.summary(), failed_directories=[f.directory for f in result.failures])
    return result

"""`cal-agent run`: the long-running service.

* APScheduler runs one cycle at start and then on `schedule:` (interval or cron, with jitter); one
  cycle at a time (max_instances=1, coalesce, misfire grace).
* systemd: READY=1 once started, WATCHDOG=1 on a timer, STATUS= with the last cycle's summary,
  STOPPING=1 / RELOADING=1 around stop and reload.
* SIGTERM / SIGINT: stop after the current phase of the running cycle (never mid-write), exit 0.
* SIGHUP: reload the configuration; an invalid one is logged and the running one kept.
* A configuration that is invalid at start is fatal: exit 2 (systemd does not restart on it).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import structlog
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from agent import engine
from agent.config import Config, duration_seconds, load_config
from agent.errors import CalAgentError
from agent.service.cycle import CycleResult, run_cycle
from agent.service.notify import SystemdNotifier

log = structlog.get_logger("agent.service")

STATUS_FILE = "agent-status.json"
SIGNAL_POLL_SECONDS = 0.5  # how soon a signal is acted on (see Daemon.serve)


def _trigger(config: Config):
    schedule = config.schedule
    jitter = duration_seconds(schedule.jitter) if schedule.jitter else None
    if schedule.cron:
        return CronTrigger.from_crontab(schedule.cron, timezone=timezone.utc), jitter
    return IntervalTrigger(seconds=duration_seconds(schedule.interval), timezone=timezone.utc), jitter


class Daemon:
    def __init__(self, config_path: Path | None, config: Config, *, notifier: SystemdNotifier | None = None) -> None:
        self.config_path = config_path
        self.config = config
        self.notifier = notifier or SystemdNotifier()
        self.stop_requested = threading.Event()
        self.reload_requested = threading.Event()
        self.wake = threading.Event()
        self.cycle_lock = threading.Lock()
        self.last: CycleResult | None = None
        self.last_error: str | None = None
        self.cycles = 0
        self.retries = 0
        self.scheduler = BackgroundScheduler(timezone=timezone.utc)
        self.store = engine.open_store(config)
        self.metrics = None
        if config.metrics.listen:
            from agent.service.metrics import Metrics

            self.metrics = Metrics(config.metrics.listen)

    # ------------------------------------------------------------------ the job

    def _cycle(self) -> None:
        if self.stop_requested.is_set():
            return
        with self.cycle_lock:
            try:
                self.last = run_cycle(self.config, self.store, should_stop=self.stop_requested.is_set)
                self.last_error = None
            except CalAgentError as exc:
                # Expected failures (store locked, database down...) are reported, and the next
                # cycle tries again: a service must outlive a DC or database hiccup.
                self.last_error = str(exc)
                log.error("cycle.failed", error=str(exc), exit_code=exc.exit_code)
            except Exception as exc:  # noqa: BLE001 - the daemon must survive a bug in one cycle
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("cycle.crashed")
            self.cycles += 1
            self._schedule_retry(failed=self.last_error is not None or bool(self.last and self.last.failures))
            self._record_metrics()  # before STATUS=, so whoever reads the status sees the same cycle
            if self.last is not None:
                self.last.release()  # metrics are recorded: the status needs only the summary
            self._publish()

    def _schedule_retry(self, *, failed: bool) -> None:
        """Retry a failed cycle with backoff (retry_after, doubled each time) instead of waiting a
        whole interval with stale data; a good cycle resets the backoff."""
        if not failed or self.stop_requested.is_set() or not self.config.schedule.retry_after:
            self.retries = 0
            return
        delay = duration_seconds(self.config.schedule.retry_after) * (2 ** self.retries)
        self.retries += 1
        when = datetime.now(timezone.utc) + timedelta(seconds=delay)
        next_run = self._next_run()
        if next_run is not None and next_run <= when:
            return  # the schedule comes first anyway
        self.scheduler.add_job(self._cycle, "date", run_date=when, id="retry", replace_existing=True,
                               max_instances=1, misfire_grace_time=duration_seconds(self.config.schedule.misfire_grace))
        log.info("cycle.retry_scheduled", at=_iso(when), attempt=self.retries, delay_seconds=delay)

    def _record_metrics(self) -> None:
        if self.metrics is None:
            return
        import time

        try:
            self.metrics.record(seconds=self.last.duration if self.last else 0.0, finished=time.time(),
                                ok=self.last_error is None, report=self.last.report if self.last else None,
                                principals=engine.principal_counts(self.store))
        except CalAgentError as exc:
            log.warning("metrics.update_failed", error=str(exc))

    def _next_run(self) -> datetime | None:
        if self.stop_requested.is_set():
            return None  # the scheduler is shutting down (and holds its locks while it waits for us)
        job = self.scheduler.get_job("cycle")
        return job.next_run_time if job else None

    def _publish(self) -> None:
        next_run = self._next_run()
        summary = self.last.summary() if self.last else "starting"
        if self.last_error:
            summary = f"last cycle failed: {self.last_error}"
        when = f"; next {next_run:%Y-%m-%d %H:%M} UTC" if next_run else ""
        self.notifier.notify(STATUS=(summary + when)[:400])
        status: dict[str, Any] = {
            "pid": os.getpid(),
            "updated_at": _iso(datetime.now(timezone.utc)),
            "cycles": self.cycles,
            "next_run": _iso(next_run),
            "last_cycle": None if self.last is None else {
                "started_at": _iso(self.last.started_at), "finished_at": _iso(self.last.finished_at),
                "duration_seconds": round(self.last.duration, 3), "summary": self.last.summary(),
                "run": self.last.run_id,
                "compliant": self.last.compliant,
                "failed_directories": [f.directory for f in self.last.failures],
            },
            "last_error": self.last_error,
        }
        try:
            engine.write_private(self.config.reports.directory / STATUS_FILE, json.dumps(status, indent=2) + "\n")
        except OSError as exc:
            log.warning("status.write_failed", error=str(exc))

    # ------------------------------------------------------------------ lifecycle

    def _schedule(self, *, first: bool) -> None:
        trigger, jitter = _trigger(self.config)
        grace = duration_seconds(self.config.schedule.misfire_grace)
        kwargs = {"next_run_time": datetime.now(timezone.utc)} if first else {}
        self.scheduler.add_job(self._cycle, trigger, id="cycle", replace_existing=True, max_instances=1,
                               coalesce=True, misfire_grace_time=grace, jitter=jitter, **kwargs)

    def _reload(self) -> None:
        self.notifier.notify(RELOADING=1, MONOTONIC_USEC=int(_monotonic_usec()))
        try:
            config = load_config(self.config_path)
        except CalAgentError as exc:
            log.error("config.reload_failed", error=str(exc), kept="the running configuration")
        else:
            with self.cycle_lock:  # never swap the configuration under a running cycle
                self.config = config
                self.store.close()
                self.store = engine.open_store(config)
            self._schedule(first=False)
            log.info("config.reloaded", path=str(self.config_path))
        self.notifier.notify(READY=1, STATUS="configuration reloaded")

    def request_stop(self) -> None:
        """Stop after the current phase of a running cycle, as SIGTERM does (any thread: the Windows
        service control handler calls it)."""
        self.stop_requested.set()
        self.wake.set()

    def request_reload(self) -> None:
        """Reload the configuration in the serve loop, as SIGHUP does (any thread)."""
        self.reload_requested.set()
        self.wake.set()

    def serve(self, *, handle_signals: bool = True) -> int:
        """Run until a stop is requested.  ``handle_signals=False``: the caller stops and reloads
        through request_stop() / request_reload() (the Windows service: not the main thread)."""
        # A signal handler runs in the main thread between two bytecodes, possibly while that thread
        # holds an Event's or the log's lock: taking either there deadlocks.  So the handlers only
        # note the signal, and the loop below, awake at least every SIGNAL_POLL_SECONDS, acts on it.
        signalled: dict[str, str] = {}

        def on_stop(signum, _frame):
            signalled["stop"] = signal.Signals(signum).name

        def on_hup(_signum, _frame):
            signalled["reload"] = "SIGHUP"

        if handle_signals:
            signal.signal(signal.SIGTERM, on_stop)
            signal.signal(signal.SIGINT, on_stop)
            if hasattr(signal, "SIGHUP"):
                signal.signal(signal.SIGHUP, on_hup)
        self._schedule(first=True)
        self.scheduler.start()
        self.notifier.notify(READY=1, STATUS="started; first cycle running", MAINPID=os.getpid())
        log.info("service.started", pid=os.getpid(), schedule=self.config.schedule.model_dump(),
                 watchdog_seconds=self.notifier.watchdog_seconds)
        ping = (self.notifier.watchdog_seconds or 0) / 2 or None
        last_ping = time.monotonic()
        while not self.stop_requested.is_set():
            self.wake.wait(timeout=min(ping or 3600, SIGNAL_POLL_SECONDS if handle_signals else 3600))
            self.wake.clear()
            if "stop" in signalled:
                log.info("service.stopping", signal=signalled["stop"])
                self.request_stop()
            if signalled.pop("reload", None):
                self.reload_requested.set()
            if self.reload_requested.is_set() and not self.stop_requested.is_set():
                self.reload_requested.clear()
                self._reload()
            if ping and time.monotonic() - last_ping >= ping * 0.9:
                self.notifier.notify(WATCHDOG=1)
                last_ping = time.monotonic()
        self.notifier.notify(STOPPING=1, STATUS="stopping after the current step")
        self.scheduler.shutdown(wait=True)  # the running cycle ends at its next phase boundary
        if self.metrics is not None:
            self.metrics.close()
        self.store.close()
        log.info("service.stopped", cycles=self.cycles)
        return 0


def serve(config_path: Path | None, config: Config) -> int:
    return Daemon(config_path, config).serve()


def read_status(config: Config) -> dict[str, Any] | None:
    path = config.reports.directory / STATUS_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return {"error": f"cannot read {path}: {exc}"}


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _monotonic_usec() -> float:
    import time

    return time.clock_gettime(time.CLOCK_MONOTONIC) * 1_000_000 if hasattr(time, "clock_gettime") else 0


__all__ = ["Daemon", "serve", "read_status", "STATUS_FILE"]

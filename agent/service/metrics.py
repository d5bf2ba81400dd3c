"""Optional Prometheus endpoint for the service (`metrics.listen`), with prometheus-client.

Gauges are set from each cycle's report, so a scrape shows the state of the last cycle:
cycle duration and result, principals by state, findings by kind and severity, shortfall and
free seats by product line.  The registry is private to the daemon (no process-wide globals).
"""

from __future__ import annotations

from typing import Any

import structlog

log = structlog.get_logger("agent.metrics")


class Metrics:
    def __init__(self, listen: str) -> None:
        from prometheus_client import CollectorRegistry, Gauge, start_http_server

        host, _, port = listen.rpartition(":")
        self.registry = CollectorRegistry()
        g = lambda name, doc, labels=(): Gauge(name, doc, labels, registry=self.registry)  # noqa: E731
        self.cycle_seconds = g("cal_agent_cycle_duration_seconds", "Duration of the last cycle")
        self.cycle_timestamp = g("cal_agent_last_cycle_timestamp_seconds", "When the last cycle finished (Unix time)")
        self.cycle_ok = g("cal_agent_last_cycle_success", "1 if the last cycle completed, 0 if it failed")
        self.compliant = g("cal_agent_compliant", "1 if the last run was compliant")
        self.principals = g("cal_agent_principals", "Principals by directory, kind and lifecycle state",
                            ("directory", "kind", "state"))
        self.findings = g("cal_agent_findings", "Findings of the last run by kind and severity", ("kind", "severity"))
        self.shortfall = g("cal_agent_shortfall", "CALs to buy per product line", ("product", "version", "cal_type"))
        self.free = g("cal_agent_free_seats", "Free seats per product line", ("product", "version", "cal_type"))
        self.server, self.thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=self.registry)
        log.info("metrics.listening", address=f"{host or '127.0.0.1'}:{port}")

    def record(self, *, seconds: float, finished: float, ok: bool, report: dict[str, Any] | None,
               principals: list[tuple[str, str, str, int]]) -> None:
        self.cycle_seconds.set(seconds)
        self.cycle_timestamp.set(finished)
        self.cycle_ok.set(1 if ok else 0)
        self.principals.clear()
        for directory, kind, state, count in principals:
            self.principals.labels(directory, kind, state).set(count)
        if report is None:
            return
        self.compliant.set(1 if report["compliant"] else 0)
        self.findings.clear()
        counts: dict[tuple[str, str], int] = {}
        for f in report["findings"]:
            counts[(f["kind"], f["severity"])] = counts.get((f["kind"], f["severity"]), 0) + 1
        for (kind, severity), count in counts.items():
            self.findings.labels(kind, severity).set(count)
        self.shortfall.clear()
        self.free.clear()
        for p in report["products"]:
            self.shortfall.labels(p["product"], p["version"], p["cal_type"]).set(p["shortfall"])
            self.free.labels(p["product"], p["version"], p["cal_type"]).set(p.get("free", 0))

    def close(self) -> None:
        self.server.shutdown()

"""`cal-agent run` as a service: a real subprocess talking the systemd notify protocol to a socket
this test owns, stopped and reloaded with real signals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from agent.demo import DATA
from agent.store.db import Store
from agent.store.models import Run, SyncRun


class NotifySocket:
    """What systemd does for Type=notify: a datagram socket the service writes to."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.messages: list[dict[str, str]] = []

    def wait_for(self, key: str, value: str | None = None, timeout: float = 60) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        for message in self.messages:
            if key in message and (value is None or value in message[key]):
                return message
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                data = self.sock.recv(4096).decode()
            except socket.timeout:
                break
            message = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
            self.messages.append(message)
            if key in message and (value is None or value in message[key]):
                return message
        raise AssertionError(f"no {key}={value or '*'} within {timeout}s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def northwind(tmp_path):
    """The demo company (a cycle of a couple of seconds) with a service configuration."""
    for name in ("northwind.ldif", "inventory.yaml"):
        shutil.copy(DATA / name, tmp_path / name)
    config = yaml.safe_load((DATA / "config.yaml").read_text())
    config["schedule"] = {"interval": "1h", "jitter": None}
    config["log"] = {"level": "info", "format": "json"}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start(config: Path, notify: NotifySocket, **env: str) -> subprocess.Popen:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CAL_AGENT_", "NOTIFY_", "WATCHDOG_"))}
    environ.update({"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000", **env})
    # Output goes to files: a pipe nobody reads would block the service once full.
    out = open(config.parent / "service.out", "w")
    err = open(config.parent / "service.err", "w")
    proc = subprocess.Popen([sys.executable, "-m", "agent", "--config", str(config), "run"], env=environ,
                            stdout=out, stderr=err, text=True)
    out.close()
    err.close()
    return proc


def stderr_of(config: Path) -> str:
    return (config.parent / "service.err").read_text()


def test_service_reports_ready_status_and_watchdog_reloads_on_hup_and_stops_cleanly(northwind, tmp_path):
    notify = NotifySocket(tmp_path)
    proc = start(northwind, notify)
    try:
        notify.wait_for("READY", "1")
        status = notify.wait_for("STATUS", "run 1:")
        assert "NOT COMPLIANT" in status["STATUS"] and "next" in status["STATUS"]
        notify.wait_for("WATCHDOG", "1")
        proc.send_signal(signal.SIGHUP)
        notify.wait_for("RELOADING", "1")
        notify.wait_for("STATUS", "configuration reloaded")
        proc.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING", "1")
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        notify.close()
    stderr = stderr_of(northwind)
    events = [json.loads(line)["event"] for line in stderr.splitlines() if line.startswith("{")]
    assert "service.started" in events and "config.reloaded" in events and events[-1] == "service.stopped"
    agent_status = json.loads((tmp_path / "reports" / "agent-status.json").read_text())
    assert agent_status["last_cycle"]["run"] == 1 and agent_status["next_run"]
    assert agent_status["last_cycle"]["compliant"] is False
    assert agent_status["last_cycle"]["summary"].startswith("run 1: NOT COMPLIANT, shortfall 11, ")
    shown = subprocess.run([sys.executable, "-m", "agent", "--config", str(northwind), "status"],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "last cycle" in shown.stdout and "NOT COMPLIANT" in shown.stdout and "next run" in shown.stdout


def test_sigterm_mid_cycle_exits_0_and_leaves_the_store_consistent(northwind, tmp_path):
    notify = NotifySocket(tmp_path)
    proc = start(northwind, notify)
    try:
        notify.wait_for("READY", "1")  # the first cycle is running now
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        notify.close()
    store = Store(f"sqlite:///{tmp_path}/state.db")
    with store.session() as session:
        syncs = session.scalars(select(SyncRun)).all()
        runs = session.scalars(select(Run)).all()
    # Either the sync completed (and the stop came before reconcile), or nothing was written;
    # never a half-applied sync.
    assert all(s.status == "ok" for s in syncs), [(s.status, s.error) for s in syncs]
    assert len(runs) <= 1
    again = subprocess.run([sys.executable, "-m", "agent", "--config", str(northwind), "run", "--once"],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr


def test_an_invalid_configuration_at_start_exits_2(tmp_path):
    bad = tmp_path / "config.yaml"
    bad.write_text("directories: []\ninventory: x.yaml\nschedule: {interval: often}\n")
    notify = NotifySocket(tmp_path)
    proc = start(bad, notify)
    try:
        assert proc.wait(timeout=60) == 2
    finally:
        notify.close()
    err = stderr_of(bad)
    assert "schedule.interval" in err and "directories" in err


def test_a_second_agent_on_the_same_store_is_refused_and_the_service_survives_it(northwind, tmp_path):
    from agent.store.lock import store_lock

    store = Store(f"sqlite:///{tmp_path}/state.db")
    notify = NotifySocket(tmp_path)
    with store_lock(store):  # another agent is at work on this store
        other = subprocess.run([sys.executable, "-m", "agent", "--config", str(northwind), "sync"],
                               capture_output=True, text=True, timeout=60)
        proc = start(northwind, notify)
        try:
            notify.wait_for("READY", "1")
            failed = notify.wait_for("STATUS", "last cycle failed")
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=60)
            notify.close()
    assert other.returncode == 4 and "another cal-agent is working on" in other.stderr
    assert f"pid {os.getpid()}" in other.stderr
    assert "another cal-agent is working on" in failed["STATUS"]
    assert code == 0


def test_prometheus_endpoint_exposes_the_last_cycle(northwind, tmp_path):
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = yaml.safe_load(northwind.read_text())
    config["metrics"] = {"listen": f"127.0.0.1:{port}"}
    northwind.write_text(yaml.safe_dump(config))
    notify = NotifySocket(tmp_path)
    proc = start(northwind, notify)
    try:
        notify.wait_for("STATUS", "run 1:")
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        notify.close()
    report = json.loads((tmp_path / "reports" / "latest.json").read_text())
    line = next(p for p in report["products"] if p["shortfall"])
    assert (f'cal_agent_shortfall{{cal_type="{line["cal_type"]}",product="{line["product"]}",'
            f'version="{line["version"]}"}} {float(line["shortfall"])}') in text
    assert 'cal_agent_principals{directory="northwind",kind="user",state="active"} 180.0' in text
    stale = sum(1 for f in report["findings"] if f["kind"] == "stale_assignment")
    assert f'cal_agent_findings{{kind="stale_assignment",severity="warning"}} {float(stale)}' in text
    assert "cal_agent_last_cycle_success 1.0" in text and "cal_agent_compliant 0.0" in text


def test_a_failed_cycle_is_retried_with_backoff_not_an_hour_later(northwind, tmp_path):
    config = yaml.safe_load(northwind.read_text())
    config["schedule"] = {"interval": "1h", "jitter": None, "retry_after": "1s"}
    northwind.write_text(yaml.safe_dump(config))
    export = tmp_path / "northwind.ldif"
    good = export.read_bytes()
    export.write_text("version: 1\n\ndn CN=half-written export\n")  # the read fails
    notify = NotifySocket(tmp_path)
    proc = start(northwind, notify)
    try:
        notify.wait_for("STATUS", "last cycle failed")
        export.write_bytes(good)
        status = notify.wait_for("STATUS", "run 1:", timeout=30)  # retried after 1 s, 2 s, ...
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        notify.close()
    assert "NOT COMPLIANT" in status["STATUS"]
    events = [json.loads(line) for line in stderr_of(northwind).splitlines() if line.startswith("{")]
    assert any(e["event"] == "cycle.retry_scheduled" and e["delay_seconds"] == 1 for e in events)


def test_between_cycles_the_service_keeps_a_cycles_summary_not_its_report(northwind, tmp_path, monkeypatch):
    # At 100,000 users a report's findings and licences are ~100 MB; the daemon shows only the
    # summary, run and verdict of its last cycle until the next one.
    from agent.config import load_config
    from agent.service.daemon import Daemon

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    daemon = Daemon(northwind, load_config(northwind))
    daemon._cycle()
    assert daemon.last is not None and daemon.last.report is None
    status = json.loads((tmp_path / "reports" / "agent-status.json").read_text())["last_cycle"]
    assert (status["run"], status["compliant"]) == (1, False)
    assert status["summary"] == daemon.last.summary() and status["summary"].startswith("run 1: NOT COMPLIANT")

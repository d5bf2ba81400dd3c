"""The Windows service, tested on Linux: pywin32's modules (win32serviceutil, win32service,
servicemanager) are replaced by small fakes in sys.modules that record what the agent asks of the
Service Control Manager and the Event Log.  The daemon under the fake SCM is the real one, on a small
LDIF company.  The PowerShell scripts and the PyInstaller build cannot run here: their data paths and
the config rewrite are checked, the rest is by review (docs/windows.md)."""

from __future__ import annotations

import ast
import contextlib
import importlib
import io
import json
import logging
import os
import re
import stat
import subprocess
import sys
import threading
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import structlog
import yaml
from sqlalchemy import select

import agent
import agent.service
from agent.cli import run_cli
from agent.config import parse_config
from agent.errors import ConfigError
from agent.logs import configure_logging
from agent.service import paths
from agent.store.db import Store
from agent.store.lock import store_lock
from agent.store.models import Run, SyncRun
from tests.test_register import Site

ROOT = Path(__file__).resolve().parent.parent
WINDOWS_PACKAGING = ROOT / "packaging" / "windows"

# win32service's real values
SERVICE_STOPPED, SERVICE_START_PENDING, SERVICE_STOP_PENDING, SERVICE_RUNNING = 1, 2, 3, 4
SERVICE_AUTO_START, SERVICE_DEMAND_START = 2, 3


# ---------------------------------------------------------------------------------------------
# Fakes of pywin32


class FakeWinError(Exception):
    """pywintypes.error: (winerror, funcname, strerror)."""

    def __init__(self, winerror: int, funcname: str = "", strerror: str = "") -> None:
        super().__init__(winerror, funcname, strerror)
        self.winerror, self.funcname, self.strerror = winerror, funcname, strerror


@dataclass
class Status:
    state: int
    wait_hint: int
    win32_exit_code: int
    service_exit_code: int


@dataclass
class Fakes:
    calls: list[tuple] = field(default_factory=list)  # (function, args, kwargs) of win32serviceutil/servicemanager
    events: list[tuple[str, str]] = field(default_factory=list)  # the Event Log: (info|warning|error, message)
    states: list[int] = field(default_factory=lambda: [SERVICE_RUNNING])  # what QueryServiceStatus answers, in turn
    raises: dict[str, BaseException] = field(default_factory=dict)  # function name -> error it raises
    modules: dict[str, types.ModuleType] = field(default_factory=dict)
    windows: types.ModuleType | None = None  # agent.service.windows, imported with the fakes

    def called(self, name: str) -> list[tuple]:
        return [(args, kwargs) for fn, args, kwargs in self.calls if fn == name]

    def errors(self) -> list[str]:
        return [m for kind, m in self.events if kind == "error"]

    def infos(self) -> list[str]:
        return [m for kind, m in self.events if kind == "info"]


def make_fakes() -> Fakes:
    fakes = Fakes()

    def recorder(name, result=None):
        def call(*args, **kwargs):
            fakes.calls.append((name, args, kwargs))
            if name in fakes.raises:
                raise fakes.raises.pop(name)
            return result(*args, **kwargs) if callable(result) else result
        return call

    win32service = types.ModuleType("win32service")
    win32service.error = FakeWinError
    for name, value in dict(SERVICE_STOPPED=SERVICE_STOPPED, SERVICE_START_PENDING=SERVICE_START_PENDING,
                            SERVICE_STOP_PENDING=SERVICE_STOP_PENDING, SERVICE_RUNNING=SERVICE_RUNNING,
                            SERVICE_AUTO_START=SERVICE_AUTO_START, SERVICE_DEMAND_START=SERVICE_DEMAND_START,
                            SERVICE_DISABLED=4, SERVICE_CONTROL_STOP=1, SERVICE_CONTROL_SHUTDOWN=5).items():
        setattr(win32service, name, value)

    servicemanager = types.ModuleType("servicemanager")
    servicemanager.LogInfoMsg = lambda message: fakes.events.append(("info", message))
    servicemanager.LogWarningMsg = lambda message: fakes.events.append(("warning", message))
    servicemanager.LogErrorMsg = lambda message: fakes.events.append(("error", message))
    for name in ("Initialize", "PrepareToHostSingle", "StartServiceCtrlDispatcher"):
        setattr(servicemanager, name, recorder(name))

    class ServiceFramework:
        """What pywin32's base class does that matters here: keep the args, report statuses."""

        def __init__(self, args) -> None:
            self.ssh = "status-handle"
            self.framework_args = list(args)
            self.statuses: list[Status] = []

        def ReportServiceStatus(self, serviceStatus, waitHint=5000, win32ExitCode=0, svcExitCode=0):  # noqa: N802,N803
            self.statuses.append(Status(serviceStatus, waitHint, win32ExitCode, svcExitCode))

    def query(_name, *_args):
        state = fakes.states.pop(0) if len(fakes.states) > 1 else fakes.states[0]
        return (16, state, 0, 0, 0, 0, 0)

    win32serviceutil = types.ModuleType("win32serviceutil")
    win32serviceutil.ServiceFramework = ServiceFramework
    for name in ("InstallService", "ChangeServiceConfig", "RemoveService", "StartService", "StopService",
                 "DebugService"):
        setattr(win32serviceutil, name, recorder(name))
    win32serviceutil.QueryServiceStatus = recorder("QueryServiceStatus", query)

    fakes.modules = {"win32service": win32service, "servicemanager": servicemanager,
                     "win32serviceutil": win32serviceutil}
    return fakes


def fresh_windows_module(monkeypatch) -> types.ModuleType:
    """Import agent.service.windows anew (it looks for pywin32 at import); put back at teardown."""
    monkeypatch.delitem(sys.modules, "agent.service.windows", raising=False)
    monkeypatch.setattr(agent.service, "windows", None, raising=False)
    return importlib.import_module("agent.service.windows")


@pytest.fixture
def win(monkeypatch):
    fakes = make_fakes()
    for name, module in fakes.modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(fresh_windows_module(monkeypatch), "CONTROL_TIMEOUT_SECONDS", 2.0)
    fakes.windows = sys.modules["agent.service.windows"]
    return fakes


@pytest.fixture
def no_pywin32(monkeypatch):
    """This machine as it is: no pywin32 (a None entry makes the import fail even if one existed)."""
    for name in ("win32service", "servicemanager", "win32serviceutil"):
        monkeypatch.setitem(sys.modules, name, None)
    return fresh_windows_module(monkeypatch)


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
            stream = getattr(handler, "stream", None)
            if hasattr(stream, "handler"):
                stream.handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)
    configure_logging("warning", "auto")


def cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_cli(list(args))
    return code, out.getvalue(), err.getvalue()


def run_under_scm(service) -> dict:
    """What pywin32's C framework does with the instance: SvcRun in the service's thread; an
    exception means 'stopped with an error'."""
    outcome: dict = {}

    def target():
        try:
            service.SvcRun()
            outcome["ok"] = True
        except Exception as exc:  # noqa: BLE001
            outcome["error"] = exc

    outcome["thread"] = threading.Thread(target=target, name="service-main")
    outcome["thread"].start()
    return outcome


def wait_until(condition, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def log_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# Paths


def test_default_config_path_is_programdata_on_windows_and_etc_on_linux(monkeypatch):
    monkeypatch.delenv("CAL_AGENT_CONFIG", raising=False)
    monkeypatch.setenv("ProgramData", "D:\\ProgramData")
    monkeypatch.setattr(os, "name", "nt")
    try:
        windows = {
            "config": str(paths.default_config_path()),
            "database": paths.default_database_url(),
            "reports": paths.default_reports_dir(),
            "log": str(paths.windows_log_file()),
            "data": str(paths.windows_data_dir()),
        }
    finally:
        monkeypatch.setattr(os, "name", "posix")
    assert windows == {
        "config": "D:\\ProgramData\\cal-agent\\config.yaml",
        "database": "sqlite:///D:/ProgramData/cal-agent/state.db",
        "reports": "D:\\ProgramData\\cal-agent\\reports",
        "log": "D:\\ProgramData\\cal-agent\\logs\\cal-agent.log",
        "data": "D:\\ProgramData\\cal-agent",
    }
    monkeypatch.delenv("ProgramData")
    monkeypatch.setattr(os, "name", "nt")
    try:
        plain = str(paths.default_config_path())
    finally:
        monkeypatch.setattr(os, "name", "posix")
    assert plain == "C:\\ProgramData\\cal-agent\\config.yaml"

    # Linux: unchanged, and what load_config uses when no --config / $CAL_AGENT_CONFIG is given.
    from agent import config as config_module

    assert paths.default_config_path() == Path("/etc/cal-agent/config.yaml")
    assert config_module.default_config_path() == Path("/etc/cal-agent/config.yaml")
    assert config_module.DEFAULT_DATABASE_URL == "sqlite:////var/lib/cal-agent/state.db"
    assert config_module.DEFAULT_REPORTS_DIR == "/var/lib/cal-agent/reports"
    assert paths.default_database_url() == config_module.DEFAULT_DATABASE_URL
    with pytest.raises(ConfigError, match="/etc/cal-agent/config.yaml not found"):
        config_module.load_config()
    monkeypatch.setenv("CAL_AGENT_CONFIG", "/srv/agent.yaml")
    assert config_module.default_config_path() == Path("/srv/agent.yaml")


def test_password_file_mode_is_checked_on_posix_only_and_a_bom_is_ignored(tmp_path, monkeypatch):
    from agent.config import _read_secret_file

    secret = tmp_path / "bind-password"
    secret.write_bytes("\ufeffs3cr\u00e9t\r\n".encode("utf-8"))
    secret.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        _read_secret_file(secret, "directories[0].password_file", check_mode=True)
    monkeypatch.setattr(os, "name", "nt")  # NTFS ACLs protect it there; st_mode tells nothing
    try:
        value = _read_secret_file(secret, "directories[0].password_file", check_mode=True)
    finally:
        monkeypatch.setattr(os, "name", "posix")
    assert value.get_secret_value() == "s3cr\u00e9t"
    secret.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert _read_secret_file(secret, "x", check_mode=True).get_secret_value() == "s3cr\u00e9t"


# ---------------------------------------------------------------------------------------------
# The command line


@pytest.mark.parametrize("command", [["install"], ["install", "--startup", "manual"], ["remove"], ["start"],
                                     ["stop"], ["debug"]])
def test_service_commands_on_linux_exit_2_and_point_to_systemd(no_pywin32, command, tmp_path):
    code, out, err = cli("service", *command)
    assert code == 2, (out, err)
    assert "Windows service commands run on Windows; on Linux use systemd: see docs/install.md" in err
    assert "Traceback" not in err


def test_the_module_imports_without_pywin32_and_says_so(no_pywin32):
    assert not no_pywin32.pywin32_available()
    with pytest.raises(no_pywin32.WindowsServiceError, match="run on Windows"):
        no_pywin32.CalAgentService(["cal-agent"])
    assert no_pywin32.main(["cal-agent", no_pywin32.HOST_ARG]) == 2


def test_install_passes_class_name_display_name_startup_and_config(win, tmp_path, monkeypatch):
    config = tmp_path / "config.yaml"
    config.write_text("# written later\n")
    code, out, err = cli("service", "install", "--startup", "auto", "--config", str(config))
    assert code == 0, err
    [(args, kwargs)] = win.called("InstallService")
    class_string, name, display = args
    assert (name, display) == ("cal-agent", "cal-agent CAL compliance")
    folder, _, dotted = class_string.rpartition("\\")
    assert dotted == "agent.service.windows.CalAgentService"
    assert Path(folder) == Path(agent.__file__).resolve().parent.parent  # pythonservice.exe adds it to sys.path
    module, _, cls = dotted.rpartition(".")
    assert getattr(importlib.import_module(module), cls) is win.windows.CalAgentService
    assert kwargs["startType"] == SERVICE_AUTO_START and kwargs["delayedstart"] is False
    assert kwargs["exeName"] is None  # not frozen: pywin32's pythonservice.exe hosts it
    assert kwargs["exeArgs"] == subprocess.list2cmdline(["--config", str(config)])
    assert "CAL" in kwargs["description"]
    assert f"service cal-agent installed: startup auto, configuration {config}" in out

    # What the service reads back from that command line: the same configuration file.
    argv = ["pythonservice.exe", *kwargs["exeArgs"].split()]
    assert win.windows.parse_service_args(argv[1:]).config == config

    # --startup manual and delayed
    cli("service", "install", "--startup", "manual", "--config", str(config))
    cli("service", "install", "--startup", "delayed", "--config", str(config))
    manual, delayed = (kw for _a, kw in win.called("InstallService")[1:])
    assert manual["startType"] == SERVICE_DEMAND_START and manual["delayedstart"] is None
    assert delayed["startType"] == SERVICE_AUTO_START and delayed["delayedstart"] is True


def test_install_of_the_packaged_exe_makes_the_scm_start_it_as_the_service_host(win, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", "C:\\Program Files\\cal-agent\\cal-agent.exe")
    monkeypatch.setenv("CAL_AGENT_CONFIG", str(tmp_path / "my config.yaml"))  # a space: quoted
    code, out, err = cli("service", "install")
    assert code == 0, err
    [(_args, kwargs)] = win.called("InstallService")
    assert kwargs["exeName"] == "C:\\Program Files\\cal-agent\\cal-agent.exe"
    assert kwargs["exeArgs"] == f'--service-host --config "{tmp_path / "my config.yaml"}"'
    assert "does not exist yet" in out


def test_install_updates_an_installed_service_and_explains_access_denied(win, tmp_path):
    config = tmp_path / "config.yaml"
    win.raises["InstallService"] = FakeWinError(1073, "CreateService", "The specified service already exists.")
    code, out, err = cli("service", "install", "--config", str(config))
    assert code == 0, err
    [(args, kwargs)] = win.called("ChangeServiceConfig")
    assert args[1] == "cal-agent" and kwargs["displayName"] == "cal-agent CAL compliance"
    assert kwargs["exeArgs"] == subprocess.list2cmdline(["--config", str(config)])
    assert "service cal-agent updated" in out

    win.raises["InstallService"] = FakeWinError(5, "OpenSCManager", "Access is denied.")
    code, out, err = cli("service", "install", "--config", str(config))
    assert code == 2
    assert "cannot install the service cal-agent: Access is denied. (error 5)" in err
    assert "Run as administrator" in err


def test_remove_start_stop_and_debug(win, tmp_path):
    code, out, _ = cli("service", "remove")
    assert code == 0 and "removed" in out
    assert [fn for fn, _a, _k in win.calls] == ["StopService", "RemoveService"]
    assert win.called("RemoveService") == [(("cal-agent",), {})]

    win.calls.clear()
    win.states[:] = [SERVICE_START_PENDING, SERVICE_START_PENDING, SERVICE_RUNNING]
    code, out, _ = cli("service", "start")
    assert code == 0 and "running" in out
    assert win.called("StartService") == [(("cal-agent",), {})]

    win.states[:] = [SERVICE_START_PENDING, SERVICE_STOPPED]  # it could not start: bad configuration
    code, out, err = cli("service", "start")
    assert code == 2 and "stopped while starting" in err and "Event Log" in err

    win.states[:] = [SERVICE_STOP_PENDING, SERVICE_STOPPED]
    code, out, _ = cli("service", "stop")
    assert code == 0 and "service cal-agent stopped" in out
    win.raises["StopService"] = FakeWinError(1062, "ControlService", "The service has not been started.")
    code, out, _ = cli("service", "stop")
    assert code == 0 and "not running" in out
    win.raises["StartService"] = FakeWinError(1060, "OpenService", "The specified service does not exist as an "
                                              "installed service.")
    code, out, err = cli("service", "start")
    assert code == 2 and "does not exist" in err

    config = tmp_path / "config.yaml"
    code, out, err = cli("service", "debug", "--config", str(config))
    assert code == 0, err
    [(args, _kwargs)] = win.called("DebugService")
    assert args[0] is win.windows.CalAgentService
    assert win.windows.parse_service_args(args[1][1:]) == win.windows.ServiceOptions(config=config, console=True)


def test_the_packaged_exe_hosts_the_service_or_runs_the_cli(win, capsys):
    windows = win.windows
    assert windows.main(["cal-agent.exe", windows.HOST_ARG, "--config", "C:\\x.yaml"]) == 0
    assert [fn for fn, _a, _k in win.calls] == ["Initialize", "PrepareToHostSingle", "StartServiceCtrlDispatcher"]
    assert win.called("PrepareToHostSingle") == [((windows.CalAgentService,), {})]

    # Started from a console instead of by the SCM:
    win.raises["StartServiceCtrlDispatcher"] = FakeWinError(1063, "StartServiceCtrlDispatcher", "...")
    assert windows.main(["cal-agent.exe", windows.HOST_ARG]) == 2
    assert "service start" in capsys.readouterr().err

    assert windows.main(["cal-agent.exe", "--version"]) == 0
    assert agent.__version__ in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# The service under a (fake) SCM, with the real daemon


@pytest.fixture
def company(tmp_path):
    site = Site(tmp_path, f"sqlite:///{tmp_path}/state.db")
    config = yaml.safe_load(site.config.read_text())
    config["schedule"] = {"interval": "1s", "jitter": None}
    config["log"] = {"level": "info", "format": "auto"}
    site.config.write_text(yaml.safe_dump(config))
    return site


def test_svcdorun_serves_the_daemon_and_svcstop_stops_it_cleanly(win, company, tmp_path, monkeypatch,
                                                                 restore_logging):
    windows = win.windows
    monkeypatch.setenv("ProgramData", str(tmp_path / "ProgramData"))
    # The command line `service install` registered (the packaged exe's).
    monkeypatch.setattr(sys, "argv", ["cal-agent.exe", windows.HOST_ARG, "--config", str(company.config)])
    service = windows.CalAgentService(["cal-agent"])
    outcome = run_under_scm(service)
    try:
        wait_until(lambda: service.daemon is not None and service.daemon.cycles >= 2, what="two cycles")
        running = [s.state for s in service.statuses]
        assert running[:2] == [SERVICE_START_PENDING, SERVICE_RUNNING]
        log_file = tmp_path / "ProgramData" / "cal-agent" / "logs" / "cal-agent.log"
        service.SvcOther(windows.RELOAD_CONTROL)  # `sc control cal-agent 128`
        wait_until(lambda: any(e["event"] == "config.reloaded" for e in log_events(log_file)), what="reload")
    finally:
        service.SvcStop()
        outcome["thread"].join(60)
    assert not outcome["thread"].is_alive()
    assert outcome.get("ok"), outcome.get("error")

    states = [s.state for s in service.statuses]
    assert states[0] == SERVICE_START_PENDING and service.statuses[0].wait_hint == windows.START_WAIT_HINT_MS
    assert states.count(SERVICE_RUNNING) == 1  # the reload did not report it again
    stop = states.index(SERVICE_STOP_PENDING)
    assert states.index(SERVICE_RUNNING) < stop and service.statuses[stop].wait_hint == windows.STOP_WAIT_HINT_MS
    assert set(states[stop:-1]) == {SERVICE_STOP_PENDING}
    assert service.statuses[-1] == Status(SERVICE_STOPPED, 5000, 0, 0)

    # Event Log: started (with the configuration) and stopped, no error.
    assert win.errors() == []
    started, stopped = win.infos()
    assert started.startswith(f"cal-agent {agent.__version__} started: configuration {company.config}")
    assert "every 1s" in started and str(log_file) in started
    assert re.fullmatch(r"cal-agent stopped after \d+ cycles", stopped)

    # The log file: JSON lines of the daemon's events.
    events = [e["event"] for e in log_events(log_file)]
    assert "service.started" in events and events[-1] == "service.stopped"
    assert "cycle.finished" in events and "config.reloaded" in events

    # The store: complete syncs only, runs recorded, the lock released; the status file written.
    store = Store(f"sqlite:///{tmp_path}/state.db")
    with store.session() as session:
        syncs = session.scalars(select(SyncRun)).all()
        runs = session.scalars(select(Run)).all()
    assert syncs and all(s.status == "ok" for s in syncs), [(s.status, s.error) for s in syncs]
    assert len(runs) >= 2
    with store_lock(store):
        pass
    status = json.loads((tmp_path / "reports" / "agent-status.json").read_text())
    assert status["cycles"] >= 2 and status["last_cycle"]["run"] >= 2 and status["last_error"] is None
    assert company.run("run", "--once").returncode == 0


def test_a_stop_during_the_start_is_honoured(win, company, tmp_path, monkeypatch, restore_logging):
    windows = win.windows
    monkeypatch.setenv("ProgramData", str(tmp_path / "ProgramData"))
    monkeypatch.setattr(sys, "argv", ["pythonservice.exe"])
    service = windows.CalAgentService(["cal-agent", "--config", str(company.config)])  # a start parameter
    service.SvcStop()  # before SvcRun has even created the daemon
    outcome = run_under_scm(service)
    outcome["thread"].join(60)
    assert outcome.get("ok"), outcome.get("error")
    states = [s.state for s in service.statuses]
    assert states[0] == SERVICE_STOP_PENDING and states[-1] == SERVICE_STOPPED
    assert SERVICE_RUNNING not in states
    assert service.daemon is not None and service.daemon.stop_requested.is_set()
    assert service.daemon.cycles <= 1 and win.errors() == []


@pytest.mark.parametrize("content, expected", [
    ("directories: []\ninventory: x.yaml\nschedule: {interval: often}\n", "directories"),
    (None, "not found"),
])
def test_a_bad_configuration_at_start_goes_to_the_event_log_and_stops_with_exit_code_2(
        win, tmp_path, monkeypatch, content, expected):
    windows = win.windows
    monkeypatch.setattr(sys, "argv", ["cal-agent.exe"])
    config = tmp_path / "config.yaml"
    if content is not None:
        config.write_text(content)
    service = windows.CalAgentService(["cal-agent", f"--config={config}"])
    outcome = run_under_scm(service)
    outcome["thread"].join(60)
    error = outcome.get("error")
    assert isinstance(error, windows.ServiceFailed) and error.exit_code == 2
    assert [s.state for s in service.statuses] == [SERVICE_START_PENDING, SERVICE_STOPPED]
    assert service.statuses[-1] == Status(SERVICE_STOPPED, 5000, windows.ERROR_SERVICE_SPECIFIC_ERROR, 2)
    [message] = win.errors()
    assert message.startswith(f"cal-agent could not start (configuration {config}): ")
    assert expected in message
    assert win.infos() == []


def test_error_log_events_also_go_to_the_event_log(win, restore_logging):
    stream = io.StringIO()
    configure_logging("info", "json", stream, extra_processors=[win.windows.event_log_errors])
    log = structlog.get_logger("agent.service")
    log.info("cycle.finished", summary="fine")
    log.error("cycle.failed", error="dc1.corp.example.com unreachable", exit_code=3)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("cycle.crashed")
    first, second = win.errors()
    assert first == "cycle.failed (error=dc1.corp.example.com unreachable, exit_code=3)"
    assert second.startswith("cycle.crashed\nTraceback") and "RuntimeError: boom" in second
    assert win.infos() == []
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == [
        "cycle.finished", "cycle.failed", "cycle.crashed"]


def test_the_log_file_is_json_lines_rotated_at_its_size(tmp_path, monkeypatch, restore_logging):
    import agent.logs

    monkeypatch.setattr(agent.logs, "LOG_FILE_MAX_BYTES", 4000)
    path = tmp_path / "logs" / "cal-agent.log"
    configure_logging("info", "auto", log_file=path)
    log = structlog.get_logger("agent.service")
    for i in range(400):
        log.info("cycle.finished", n=i, summary="run 1: compliant")
    logging.getLogger("sqlalchemy.pool").warning("connection %s invalidated", 7)
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["cal-agent.log", *(f"cal-agent.log.{i}" for i in range(1, 6))]
    for file in path.parent.iterdir():
        assert file.stat().st_size <= 4000
        lines = [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines()]
        assert lines and all("event" in line for line in lines)
    last = log_events(path)
    assert last[-2]["n"] == 399 and last[-2]["level"] == "info"
    assert last[-1] == {**last[-1], "event": "connection 7 invalidated", "level": "warning",
                        "logger": "sqlalchemy.pool"}


# ---------------------------------------------------------------------------------------------
# Daemon control shared with Linux: request_stop() for the SCM, signals for systemd


SIGNAL_STORM = """
import sys
from agent.config import load_config
from agent.logs import configure_logging
from agent.service.daemon import Daemon

config = load_config(sys.argv[1])
configure_logging("info", "json")
sys.exit(Daemon(sys.argv[1], config).serve())
"""


def test_a_storm_of_sighup_then_sigterm_never_deadlocks_the_daemon(company, tmp_path):
    """Signal handlers run in the main thread between two bytecodes: one that took an Event's lock
    (or the log's) while the loop held it would hang the daemon for ever."""
    import signal

    err = open(tmp_path / "daemon.err", "w")
    proc = subprocess.Popen([sys.executable, "-c", SIGNAL_STORM, str(company.config)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=err)
    err.close()
    try:
        wait_until(lambda: (tmp_path / "reports" / "agent-status.json").exists() or proc.poll() is not None,
                   what="the first cycle")
        for _ in range(400):
            proc.send_signal(signal.SIGHUP)
            time.sleep(0.0005)
        wait_until(lambda: "config.reloaded" in (tmp_path / "daemon.err").read_text(), what="a reload")
        for _ in range(200):
            proc.send_signal(signal.SIGHUP)
            time.sleep(0.0005)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, (tmp_path / "daemon.err").read_text()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    events = [json.loads(line)["event"] for line in (tmp_path / "daemon.err").read_text().splitlines()
              if line.startswith("{")]
    assert "config.reloaded" in events and events[-1] == "service.stopped"
    assert events.count("service.stopping") == 1


# ---------------------------------------------------------------------------------------------
# Packaging (review only beyond this: the build and the PowerShell scripts need Windows)


def _literal(tree: ast.Module, name: str):
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} is not assigned in the spec")


def test_pyinstaller_spec_is_python_and_names_existing_package_data(tmp_path):
    spec = WINDOWS_PACKAGING / "cal-agent.spec"
    source = spec.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(spec))
    entry = _literal(tree, "ENTRY_SCRIPT")
    assert (ROOT / entry).is_file()
    ast.parse((ROOT / entry).read_text(encoding="utf-8"))
    data = _literal(tree, "PACKAGE_DATA")
    optional = _literal(tree, "OPTIONAL_PACKAGE_DATA")
    for pattern, target in data:
        assert list(ROOT.glob(pattern)), f"{pattern} matches nothing"
    for folder in ("agent/demo/data", "agent/reports/templates", "agent/store/migrations",
                   "agent/store/migrations/versions"):
        assert folder in {target for _p, target in data}, folder
    assert ("agent/alerts/templates/*", "agent/alerts/templates") in optional
    assert {"win32timezone", "win32serviceutil", "win32service", "servicemanager"} <= set(
        _literal(tree, "HIDDEN_IMPORTS"))

    # Run it against stand-ins of PyInstaller's objects: what would be bundled.
    recorded: dict = {}
    hooks = types.ModuleType("PyInstaller.utils.hooks")
    hooks.collect_data_files = lambda package: [(f"<{package} data>", package)]
    hooks.collect_submodules = lambda package: [f"{package}.<submodules>"]
    hooks.copy_metadata = lambda dist: [(f"<{dist} metadata>", ".")]
    fake_modules = {"PyInstaller": types.ModuleType("PyInstaller"),
                    "PyInstaller.utils": types.ModuleType("PyInstaller.utils"), "PyInstaller.utils.hooks": hooks}

    def record(kind):
        def make(*args, **kwargs):
            recorded[kind] = (args, kwargs)
            return types.SimpleNamespace(pure=[], scripts=[], binaries=[], datas=kwargs.get("datas", []))
        return make

    namespace = {"SPECPATH": str(WINDOWS_PACKAGING), "__file__": str(spec),
                 **{k: record(k) for k in ("Analysis", "PYZ", "EXE", "COLLECT")}}
    saved = {k: sys.modules.get(k) for k in fake_modules}
    sys.modules.update(fake_modules)
    try:
        exec(compile(source, str(spec), "exec"), namespace)  # noqa: S102 - our own build file
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    (scripts,), analysis = recorded["Analysis"]
    assert scripts == [str(ROOT / entry)]
    bundled = {(Path(src).relative_to(ROOT).as_posix() if src.startswith(str(ROOT)) else src, target)
               for src, target in analysis["datas"]}
    for version in sorted((ROOT / "agent/store/migrations/versions").glob("*.py")):
        assert (f"agent/store/migrations/versions/{version.name}", "agent/store/migrations/versions") in bundled
    assert ("agent/store/migrations/env.py", "agent/store/migrations") in bundled
    assert ("agent/reports/templates/report.html.j2", "agent/reports/templates") in bundled
    assert ("agent/demo/data/northwind.ldif", "agent/demo/data") in bundled
    assert ("config.example.yaml", ".") in bundled
    for template in (ROOT / "agent/alerts/templates").glob("*"):
        assert (f"agent/alerts/templates/{template.name}", "agent/alerts/templates") in bundled
    assert not any("__pycache__" in src for src, _t in bundled)
    assert "win32timezone" in analysis["hiddenimports"] and "agent.<submodules>" in analysis["hiddenimports"]
    assert recorded["EXE"][1]["name"] == "cal-agent" and recorded["EXE"][1]["exclude_binaries"] is True
    assert recorded["COLLECT"][1]["name"] == "cal-agent"


def test_install_ps1_turns_the_example_into_a_windows_config_next_to_its_data(tmp_path):
    script = (WINDOWS_PACKAGING / "install.ps1").read_text(encoding="utf-8")
    block = re.search(r"^\$LinuxToWindows = @\((.*?)^\)", script, re.S | re.M).group(1)
    pairs = re.findall(r"@\('([^']*)', '([^']*)'\)", block)
    assert len(pairs) == 3
    text = (ROOT / "config.example.yaml").read_text(encoding="utf-8")
    for old, new in pairs:  # String.Replace, in the script's order
        text = text.replace(old, new)
    assert "/var/lib/cal-agent" not in text and "/etc/cal-agent" not in text
    config = parse_config(yaml.safe_load(text), base_dir=tmp_path)
    assert config.database.url == f"sqlite:///{tmp_path / 'state.db'}"
    assert config.reports.directory == tmp_path / "reports"
    assert config.inventory == tmp_path / "inventory.yaml"
    assert config.directories[0].tls.ca_file == tmp_path / "ca.pem"

    # The steps the brief asks for, as the script spells them (it cannot run here).
    assert "@('service', 'install', '--startup', 'auto', '--config', $config)" in script
    assert "'/inheritance:r', '/grant:r', '*S-1-5-18:(OI)(CI)F', '*S-1-5-32-544:(OI)(CI)F'" in script
    assert "Join-Path $env:ProgramFiles 'cal-agent'" in script and "Join-Path $env:ProgramData 'cal-agent'" in script
    assert "if (Test-Path -LiteralPath $config)" in script  # an existing config.yaml is kept
    uninstall = (WINDOWS_PACKAGING / "uninstall.ps1").read_text(encoding="utf-8")
    assert "@('service', 'remove')" in uninstall and "[switch]$RemoveData" in uninstall

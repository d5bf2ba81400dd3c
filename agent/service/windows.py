"""The Windows service: the same Daemon as `cal-agent run` on Linux, run by the Service Control Manager.

* ``CalAgentService`` (pywin32 ServiceFramework, service name ``cal-agent``): SvcDoRun loads the
  configuration and serves a ``Daemon``; SERVICE_RUNNING is reported once the daemon has started
  (its READY notification), SERVICE_STOP_PENDING with a wait hint on stop (renewed until the running
  cycle reaches its next phase boundary), SERVICE_STOPPED at the end: with a service-specific exit
  code (2 bad configuration, 4 database...) when it could not start.
* Start, stop and failures go to the Event Log (Application, source ``cal-agent``), and so does every
  error-level log event; the full log is JSON lines in %ProgramData%\\cal-agent\\logs\\cal-agent.log
  (rotated at 10 MB, 5 kept).
* ``sc control cal-agent 128`` reloads the configuration (what SIGHUP does on Linux).
* ``install`` / ``remove`` / ``start`` / ``stop`` / ``debug`` behind ``cal-agent service ...``.

The configuration file is given on the service's command line (``--config PATH``, written by
``cal-agent service install``), else ``$CAL_AGENT_CONFIG``, else %ProgramData%\\cal-agent\\config.yaml.
The packaged cal-agent.exe (packaging/windows) hosts the service itself: the SCM starts it as
``cal-agent.exe --service-host --config PATH`` (see ``main``).  A pip-installed agent is hosted by
pywin32's pythonservice.exe, which loads ``CalAgentService`` by its class string.

pywin32 exists only on Windows: this module imports it under a guard, so it stays importable (and is
tested with small fakes of those modules) elsewhere; every entry point says so when it is missing.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import __version__
from agent.errors import EXIT_CONFIG, CalAgentError
from agent.service import paths

try:  # pywin32: Windows only
    import servicemanager
    import win32service
    import win32serviceutil
except ImportError:  # Linux, or Windows without pywin32
    servicemanager = win32service = win32serviceutil = None

SERVICE_NAME = "cal-agent"
DISPLAY_NAME = "cal-agent CAL compliance"
DESCRIPTION = ("Reconciles Active Directory against the Microsoft CAL register on a schedule and writes "
               "compliance reports to %ProgramData%\\cal-agent\\reports.")
HOST_ARG = "--service-host"  # cal-agent.exe's first argument when the SCM starts the packaged agent
RELOAD_CONTROL = 128  # user-defined control code: `sc control cal-agent 128` reloads the configuration
STARTUP_TYPES = ("auto", "delayed", "manual")
START_WAIT_HINT_MS = 30_000
STOP_WAIT_HINT_MS = 30_000
STOP_HEARTBEAT_SECONDS = 10.0  # STOP_PENDING is renewed this often while the current step finishes
CONTROL_TIMEOUT_SECONDS = 60.0  # `service start` / `service stop` wait this long for the new state

# winerror codes (not imported: the winerror module is pywin32's too)
ERROR_SERVICE_SPECIFIC_ERROR = 1066  # "the service has returned a service-specific error code"
ERROR_SERVICE_EXISTS = 1073
ERROR_SERVICE_NOT_ACTIVE = 1062
ERROR_FAILED_SERVICE_CONTROLLER_CONNECT = 1063
ERROR_ACCESS_DENIED = 5

NOT_WINDOWS = "Windows service commands run on Windows; on Linux use systemd: see docs/install.md"
EVENT_LOG_HINT = "Event Viewer > Windows Logs > Application, source cal-agent"


class WindowsServiceError(CalAgentError):
    """A service command cannot run here, or the Service Control Manager refused it."""

    exit_code = EXIT_CONFIG


class ServiceFailed(CalAgentError):
    """The service stopped on an error (already written to the Event Log), with the daemon's exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def pywin32_available() -> bool:
    return None not in (servicemanager, win32service, win32serviceutil)


def _require_pywin32() -> None:
    if pywin32_available():
        return
    if not paths.is_windows():
        raise WindowsServiceError(NOT_WINDOWS)
    raise WindowsServiceError("pywin32 is not installed", hint='pip install "pywin32>=306" (or use the packaged '
                              "cal-agent.exe, which includes it)")


class _Unavailable:
    """Base class when pywin32 is missing: the class below still exists, it just cannot run."""

    def __init__(self, args: Any) -> None:
        _require_pywin32()


_ServiceFramework: Any = win32serviceutil.ServiceFramework if win32serviceutil is not None else _Unavailable


# ---------------------------------------------------------------------------------------------
# The service


@dataclass
class ServiceOptions:
    config: Path | None = None
    console: bool = False  # `service debug`: log to the console instead of the log file


def parse_service_args(tokens: list[str]) -> ServiceOptions:
    """``--config PATH`` / ``--config=PATH`` and ``--console`` among other arguments (later wins)."""
    options = ServiceOptions()
    tokens = [str(t) for t in tokens]
    for i, token in enumerate(tokens):
        if token == "--config" and i + 1 < len(tokens):
            options.config = Path(tokens[i + 1])
        elif token.startswith("--config="):
            options.config = Path(token.split("=", 1)[1])
        elif token == "--console":
            options.console = True
    return options


class _ScmNotifier:
    """The Daemon's notifier under the SCM (instead of systemd's): READY -> SERVICE_RUNNING,
    STOPPING -> SERVICE_STOP_PENDING, STATUS kept for the Event Log."""

    watchdog_seconds = None
    enabled = True

    def __init__(self, service: "CalAgentService") -> None:
        self.service = service
        self.status: str | None = None

    def notify(self, **fields: Any) -> bool:
        if "STATUS" in fields:
            self.status = str(fields["STATUS"])
        if str(fields.get("READY")) == "1":
            self.service._daemon_ready()
        if str(fields.get("STOPPING")) == "1":
            self.service._report(win32service.SERVICE_STOP_PENDING, STOP_WAIT_HINT_MS)
        return True


class CalAgentService(_ServiceFramework):
    _svc_name_ = SERVICE_NAME
    _svc_display_name_ = DISPLAY_NAME
    _svc_description_ = DESCRIPTION

    def __init__(self, args: Any) -> None:
        super().__init__(args)
        # args: [service name, *start parameters]; sys.argv: the service's command line (ImagePath),
        # which `install` wrote with --config.  Start parameters win.
        self.options = parse_service_args([*sys.argv[1:], *list(args)[1:]])
        self.daemon = None
        self.exit_code = 0
        self.failure: str | None = None
        self.state: int | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()  # a stop was asked for (perhaps before the daemon existed)
        self._done = threading.Event()  # SvcDoRun has returned
        self._heartbeat: threading.Thread | None = None
        self._running_reported = False

    # ------------------------------------------------------------------ status to the SCM

    def _report(self, status: int, wait_hint: int | None = None, *, exit_code: int = 0) -> None:
        with self._lock:
            if self._done.is_set() and status != win32service.SERVICE_STOPPED:
                return  # never a pending state after the final one
            self.state = status
            kwargs: dict[str, int] = {} if wait_hint is None else {"waitHint": wait_hint}
            if exit_code:
                kwargs.update(win32ExitCode=ERROR_SERVICE_SPECIFIC_ERROR, svcExitCode=exit_code)
            self.ReportServiceStatus(status, **kwargs)

    def _daemon_ready(self) -> None:
        with self._lock:
            first, self._running_reported = not self._running_reported, True
        if not first or self._stop.is_set():
            return  # READY again after a reload: still running; or a stop came during the start
        self._report(win32service.SERVICE_RUNNING)
        message = f"cal-agent {__version__} started: configuration {self._config_path()}"
        if self.daemon is not None:
            schedule = self.daemon.config.schedule
            message += f", a cycle {f'at cron {schedule.cron}' if schedule.cron else f'every {schedule.interval}'}"
        message += f", log {'to the console' if self.options.console else paths.windows_log_file()}"
        _event_info(message)

    # ------------------------------------------------------------------ SCM entry points

    def SvcRun(self) -> None:  # noqa: N802 - pywin32's names
        """Called by the SCM framework (or DebugService) in the service's thread; returns when stopped."""
        self._report(win32service.SERVICE_START_PENDING, START_WAIT_HINT_MS)
        try:
            self.exit_code = self.SvcDoRun()
        finally:
            with self._lock:
                self._done.set()
        if self.exit_code:
            self._report(win32service.SERVICE_STOPPED, exit_code=self.exit_code)
            # pywin32's C framework reports SERVICE_STOPPED once more after SvcRun: with success if it
            # returned, with an error if it raised.  Raise, so the last word is a failure too.
            raise ServiceFailed(self.failure or f"cal-agent stopped with exit code {self.exit_code}", self.exit_code)
        self._report(win32service.SERVICE_STOPPED)

    def SvcDoRun(self) -> int:  # noqa: N802
        """Load the configuration, start the daemon and serve until SvcStop; the exit code."""
        from agent.config import load_config
        from agent.service.daemon import Daemon

        config_path = self._config_path()
        try:
            config = load_config(config_path)
            self._configure_logging(config)
            daemon = Daemon(config_path, config, notifier=_ScmNotifier(self))
        except CalAgentError as exc:
            return self._failed(f"cal-agent could not start (configuration {config_path}): {exc}", exc.exit_code)
        except Exception as exc:  # noqa: BLE001 - the Event Log must say why, whatever it is
            return self._failed(f"cal-agent could not start (configuration {config_path}): "
                                f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}", 1)
        with self._lock:
            self.daemon = daemon
            stop_early = self._stop.is_set()
        if stop_early:
            daemon.request_stop()
        try:
            code = daemon.serve(handle_signals=False)
        except Exception as exc:  # noqa: BLE001
            daemon.request_stop()
            try:
                daemon.scheduler.shutdown(wait=False)
            except Exception:  # noqa: BLE001 - not started, or already down
                pass
            return self._failed(f"cal-agent stopped on an error: {type(exc).__name__}: {exc}\n"
                                f"{traceback.format_exc()}", 1)
        _event_info(f"cal-agent stopped after {daemon.cycles} cycles"
                    + (f"; last cycle failed: {daemon.last_error}" if daemon.last_error else ""))
        return code

    def SvcStop(self) -> None:  # noqa: N802
        """SERVICE_CONTROL_STOP (from the SCM's thread): stop after the current step of a cycle."""
        self._report(win32service.SERVICE_STOP_PENDING, STOP_WAIT_HINT_MS)
        with self._lock:
            self._stop.set()
            daemon = self.daemon
            start_heartbeat = self._heartbeat is None
            if start_heartbeat:
                self._heartbeat = threading.Thread(target=self._stop_heartbeat, name="scm-stop-pending", daemon=True)
        if daemon is not None:
            daemon.request_stop()
        if start_heartbeat:
            self._heartbeat.start()

    SvcShutdown = SvcStop  # the machine shuts down: same as stop (and accepting it makes Windows ask)

    def SvcOther(self, control: int) -> None:  # noqa: N802
        if control == RELOAD_CONTROL and self.daemon is not None:
            self.daemon.request_reload()

    def SvcInterrogate(self) -> None:  # noqa: N802 - the base class would claim "running" in any state
        self._report(self.state if self.state is not None else win32service.SERVICE_START_PENDING)

    # ------------------------------------------------------------------ helpers

    def _stop_heartbeat(self) -> None:
        # A pending state needs a fresh checkpoint within its wait hint, or the SCM gives up on us.
        while not self._done.wait(STOP_HEARTBEAT_SECONDS):
            self._report(win32service.SERVICE_STOP_PENDING, STOP_WAIT_HINT_MS)

    def _config_path(self) -> Path:
        return self.options.config or paths.default_config_path()

    def _configure_logging(self, config) -> None:
        from agent.logs import configure_logging

        if self.options.console:
            configure_logging(config.log.level, config.log.format, extra_processors=[event_log_errors])
        else:
            configure_logging(config.log.level, "json", log_file=paths.windows_log_file(),
                              extra_processors=[event_log_errors])

    def _failed(self, message: str, exit_code: int) -> int:
        self.failure = message
        _event_error(message)
        return exit_code or 1


# ---------------------------------------------------------------------------------------------
# The Event Log


def _event_info(message: str) -> None:
    if servicemanager is not None:
        try:
            servicemanager.LogInfoMsg(message)
        except Exception:  # noqa: BLE001 - the Event Log being full or refused must not stop the agent
            pass


def _event_error(message: str) -> None:
    if servicemanager is not None:
        try:
            servicemanager.LogErrorMsg(message[:31_000])  # ReportEvent's limit is 31,839 characters
        except Exception:  # noqa: BLE001
            pass


def event_log_errors(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: error-level events also go to the Windows Event Log (Application, source
    cal-agent), so a failing cycle shows where Windows admins look first."""
    if event_dict.get("level") in ("error", "critical"):
        skip = {"event", "level", "timestamp", "exc_info", "exception"}
        details = ", ".join(f"{k}={v}" for k, v in event_dict.items() if k not in skip)
        text = str(event_dict.get("event")) + (f" ({details})" if details else "")
        exc = event_dict.get("exc_info")
        if exc is True:
            exc = sys.exc_info()
        elif isinstance(exc, BaseException):
            exc = (type(exc), exc, exc.__traceback__)
        if isinstance(exc, tuple) and exc[0] is not None:
            text += "\n" + "".join(traceback.format_exception(*exc))
        _event_error(text)
    return event_dict


# ---------------------------------------------------------------------------------------------
# Commands: cal-agent service install | remove | start | stop | debug


def service_class_string() -> str:
    """``<folder holding the agent package>\\agent.service.windows.CalAgentService``: pythonservice.exe
    puts the folder on sys.path and imports the class (the packaged exe passes the class itself)."""
    import agent

    folder = str(Path(agent.__file__).resolve().parent.parent)
    return f"{folder}\\{CalAgentService.__module__}.{CalAgentService.__name__}"


def _api_error(action: str, exc: BaseException) -> WindowsServiceError:
    code = getattr(exc, "winerror", None)
    reason = getattr(exc, "strerror", None) or str(exc)
    hint = "run it from an elevated prompt (Run as administrator)" if code == ERROR_ACCESS_DENIED else None
    return WindowsServiceError(f"cannot {action} the service {SERVICE_NAME}: {reason}"
                               + (f" (error {code})" if code else ""), hint=hint)


def install(config_path: Path | None = None, *, startup: str = "auto") -> str:
    """Install (or update) the service; returns what was done, for the admin."""
    _require_pywin32()
    if startup not in STARTUP_TYPES:
        raise WindowsServiceError(f"unknown startup type {startup!r}: use {', '.join(STARTUP_TYPES)}")
    config = Path(config_path) if config_path else paths.default_config_path()
    config = config if config.is_absolute() else Path.cwd() / config  # the SCM's cwd is System32
    start_type = win32service.SERVICE_DEMAND_START if startup == "manual" else win32service.SERVICE_AUTO_START
    frozen = bool(getattr(sys, "frozen", False))
    arguments = ([HOST_ARG] if frozen else []) + ["--config", str(config)]
    options = {
        "startType": start_type,
        "exeName": sys.executable if frozen else None,  # None: pywin32's pythonservice.exe
        "exeArgs": subprocess.list2cmdline(arguments),
        "description": DESCRIPTION,
        "delayedstart": None if startup == "manual" else startup == "delayed",
    }
    class_string = service_class_string()
    try:
        win32serviceutil.InstallService(class_string, SERVICE_NAME, DISPLAY_NAME, **options)
        done = "installed"
    except win32service.error as exc:
        if getattr(exc, "winerror", None) != ERROR_SERVICE_EXISTS:
            raise _api_error("install", exc) from None
        try:
            win32serviceutil.ChangeServiceConfig(class_string, SERVICE_NAME, displayName=DISPLAY_NAME, **options)
        except win32service.error as exc2:
            raise _api_error("update", exc2) from None
        done = "updated"
    lines = [f"service {SERVICE_NAME} {done}: startup {startup}, configuration {config}"]
    if not config.is_file():
        lines.append(f"  note: {config} does not exist yet; write it, then: cal-agent check-config --config \"{config}\"")
    lines.append("  start it: cal-agent service start")
    return "\n".join(lines)


def remove() -> str:
    _require_pywin32()
    try:  # a running service is deleted only once stopped
        win32serviceutil.StopService(SERVICE_NAME)
    except win32service.error:
        pass  # not running; or not installed, access denied...: RemoveService says it better
    try:
        win32serviceutil.RemoveService(SERVICE_NAME)
    except win32service.error as exc:
        raise _api_error("remove", exc) from None
    return (f"service {SERVICE_NAME} removed; configuration, state and logs are kept in "
            f"{paths.windows_data_dir()}")


def _state() -> int:
    return win32serviceutil.QueryServiceStatus(SERVICE_NAME)[1]


def _wait_while(pending: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    state = _state()
    while state == pending and time.monotonic() < deadline:
        time.sleep(0.5)
        state = _state()
    return state


def start() -> str:
    _require_pywin32()
    try:
        win32serviceutil.StartService(SERVICE_NAME)
        state = _wait_while(win32service.SERVICE_START_PENDING, CONTROL_TIMEOUT_SECONDS)
    except win32service.error as exc:
        raise _api_error("start", exc) from None
    if state == win32service.SERVICE_RUNNING:
        return f"service {SERVICE_NAME} running; log: {paths.windows_log_file()}"
    if state == win32service.SERVICE_STOPPED:
        raise WindowsServiceError(f"service {SERVICE_NAME} stopped while starting",
                                  hint=f"the reason is in the Event Log ({EVENT_LOG_HINT}); "
                                  "check the configuration: cal-agent check-config")
    return f"service {SERVICE_NAME} is still starting"


def stop() -> str:
    _require_pywin32()
    try:
        win32serviceutil.StopService(SERVICE_NAME)
        state = _wait_while(win32service.SERVICE_STOP_PENDING, CONTROL_TIMEOUT_SECONDS)
    except win32service.error as exc:
        if getattr(exc, "winerror", None) == ERROR_SERVICE_NOT_ACTIVE:
            return f"service {SERVICE_NAME} is not running"
        raise _api_error("stop", exc) from None
    if state == win32service.SERVICE_STOPPED:
        return f"service {SERVICE_NAME} stopped"
    return f"service {SERVICE_NAME} is stopping (the running cycle finishes its current step first)"


def debug(config_path: Path | None = None) -> None:
    """Run the service class in the foreground (Ctrl+C stops it), logging to the console."""
    _require_pywin32()
    argv = [SERVICE_NAME, "--console"] + (["--config", str(config_path)] if config_path else [])
    win32serviceutil.DebugService(CalAgentService, argv)


def host_service() -> int:
    """The packaged exe started by the SCM: hand this process to the service control dispatcher."""
    _require_pywin32()
    servicemanager.Initialize()
    servicemanager.PrepareToHostSingle(CalAgentService)
    try:
        servicemanager.StartServiceCtrlDispatcher()
    except win32service.error as exc:
        if getattr(exc, "winerror", None) == ERROR_FAILED_SERVICE_CONTROLLER_CONNECT:
            raise WindowsServiceError(f"{HOST_ARG} is for the Service Control Manager",
                                      hint="use `cal-agent service start`, or `cal-agent service debug` to run "
                                      "in the foreground") from None
        raise _api_error("host", exc) from None
    return 0


def main(argv: list[str] | None = None) -> int:
    """cal-agent.exe (packaging/windows): the service host when the SCM starts it, else the CLI."""
    argv = list(sys.argv if argv is None else argv)
    if argv[1:2] == [HOST_ARG]:
        try:
            return host_service()
        except CalAgentError as exc:
            if sys.stderr is not None:
                print(f"cal-agent: error: {exc}", file=sys.stderr)
            return exc.exit_code
    from agent.cli import run_cli

    return run_cli(argv[1:])


__all__ = [
    "CalAgentService", "DISPLAY_NAME", "HOST_ARG", "RELOAD_CONTROL", "SERVICE_NAME", "ServiceFailed",
    "WindowsServiceError", "debug", "event_log_errors", "host_service", "install", "main", "remove",
    "service_class_string", "start", "stop",
]

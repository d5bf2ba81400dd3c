"""The command line: thin.  Parses arguments, calls the engine, prints, maps errors to exit codes."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from agent import __version__
from agent.config import CONFIG_ENV, Config, load_config
from agent.errors import EXIT_CONFIG, EXIT_DIRECTORY, EXIT_NOT_COMPLIANT, CalAgentError, ConfigError, DirectoryError
from agent.logs import configure_logging


def _config_option(func):
    @click.option("--config", "-c", "config_path", type=click.Path(dir_okay=False, path_type=Path),
                  envvar=CONFIG_ENV, show_envvar=True,
                  help="Configuration file [default: /etc/cal-agent/config.yaml].")
    @functools.wraps(func)
    def wrapper(*args, config_path=None, **kwargs):
        ctx = click.get_current_context()
        path = config_path or ctx.find_root().params.get("config_path")
        return func(*args, config_path=path, **kwargs)

    return wrapper


def _load(config_path: Path | None) -> Config:
    config = load_config(config_path)
    root = click.get_current_context().find_root()
    configure_logging(root.params.get("log_level") or config.log.level, root.params.get("log_format") or config.log.format)
    return config


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", "-V", prog_name="cal-agent")
@click.option("--config", "-c", "config_path", type=click.Path(dir_okay=False, path_type=Path), envvar=CONFIG_ENV,
              show_envvar=True, help="Configuration file [default: /etc/cal-agent/config.yaml].")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None,
              help="Override log.level from the configuration.")
@click.option("--log-format", type=click.Choice(["auto", "json", "console"]), default=None,
              help="Override log.format: console on a TTY, JSON otherwise.")
def cli(config_path, log_level, log_format):
    """cal-agent keeps Microsoft CAL compliance true to Active Directory.

    \b
    Exit codes: 0 ok, 1 not compliant (--check), 2 bad configuration or inventory,
    3 directory read failed, 4 database error, 5 no data yet, 6 alert not delivered.
    """
    configure_logging(log_level or "warning", log_format or "auto")


@cli.command("check-config")
@_config_option
def check_config(config_path):
    """Validate the configuration and the inventory; report every problem with its key path."""
    from agent.inventory.register import load_inventory

    config = _load(config_path)
    inventory = load_inventory(config.inventory)
    click.echo(
        f"configuration OK: {config.source}\n"
        f"  {len(config.directories)} directories, {len(config.requirements)} requirements, "
        f"{len(inventory.purchases)} purchases, {len(inventory.assignments)} assignments"
    )


@cli.command("test-connection")
@click.option("--directory", "-d", help="Only this directory (its `name`).")
@_config_option
def test_connection(config_path, directory):
    """Connect and bind to each directory with TLS verification, and show what was reached."""
    from agent.directory import make_reader

    config = _load(config_path)
    failed = 0
    for d in config.directories:
        if directory and d.name != directory:
            continue
        try:
            info = make_reader(d).test_connection()
        except CalAgentError as exc:
            failed += 1
            click.echo(f"{d.name}: FAILED\n  {exc}".replace("\n", "\n  "), err=False)
            continue
        click.echo(f"{d.name}: OK")
        for key, value in info.items():
            click.echo(f"  {key}: {value}")
    if failed:
        sys.exit(EXIT_DIRECTORY)


@cli.command()
@click.option("--directory", "-d", help="Only this directory (its `name`).")
@click.option("--accept-departures", is_flag=True,
              help="Apply a sync that the accidental-departure guard held (the departures are real).")
@click.option("--full", is_flag=True, help="A complete read, even where an incremental one would do (AD).")
@_config_option
def sync(config_path, directory, accept_departures, full):
    """Read users, groups and computers into the store (one transaction per directory)."""
    from agent import engine

    from agent.store.lock import store_lock

    config = _load(config_path)
    store = engine.open_store(config)
    with store_lock(store):
        outcomes, failures = engine.sync_directories(config, store, only=directory,
                                                     accept_departures=accept_departures, progress=_progress(),
                                                     full=full)
    if sys.stderr.isatty():
        click.echo("\r\033[K", nl=False, err=True)
    for o in outcomes:
        changes = ", ".join(f"{k} {v}" for k, v in sorted(o.events.items())) or "no changes"
        how = f" ({o.mode}: {o.read} changed entries read)" if o.mode == "incremental" else ""
        click.echo(f"{o.directory}: {o.users} users, {o.groups} groups, {o.computers} computers, "
                   f"{o.tombstones} deleted; {changes}{how}")
    _report_failures(failures)


def _progress():
    """A one-line counter on an interactive terminal, so a long sync is visibly alive."""
    if not sys.stderr.isatty():
        return None

    def show(directory: str, entries: int) -> None:
        click.echo(f"\r\033[K{directory}: {entries:,} entries read", nl=False, err=True)

    return show


def _report_failures(failures) -> None:
    for f in failures:
        click.echo(f"{f.directory}: sync FAILED, nothing was changed\n  {f.error}".replace("\n", "\n  "), err=True)
    if failures:
        sys.exit(EXIT_DIRECTORY)


@cli.command()
@click.option("--check", is_flag=True, help="Exit 1 when the estate is not compliant.")
@_config_option
def reconcile(config_path, check):
    """Compare who needs a CAL with purchases and assignments; record the run and its findings."""
    from agent import engine

    from agent.store.lock import store_lock

    config = _load(config_path)
    store = engine.open_store(config)
    with store_lock(store):
        result = engine.reconcile_and_record(config, store)
    _print_summary(result.report)
    from agent import alerts

    _print_alerts(alerts.after_run(config, store, result.report))
    if check and not result.reconciliation.compliant:
        sys.exit(EXIT_NOT_COMPLIANT)


@cli.command()
@click.option("--format", "-f", "fmt", type=click.Choice(["json", "html", "csv", "products-csv", "xlsx", "text"]),
              default="json", show_default=True,
              help="csv: the findings; products-csv: per-product counts; xlsx: both (needs --output).")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to this file (mode 0600) instead of stdout.")
@click.option("--run", "run_id", type=int, help="A past run instead of the latest.")
@click.option("--diff", "diff", type=int, nargs=2, metavar="A B",
              help="What changed between runs A and B: findings new in B and resolved since A.")
@_config_option
def report(config_path, fmt, output, run_id, diff):
    """Print or write the report of the latest (or a given) run."""
    from agent import engine

    config = _load(config_path)
    store = engine.open_store(config)
    if diff:
        changes = engine.diff_runs(store, *diff)
        if fmt == "json":
            text = json.dumps(changes, indent=2, ensure_ascii=False) + "\n"
        elif fmt == "text":
            lines = [f"run {diff[0]} -> run {diff[1]}: {len(changes['new'])} new, {len(changes['resolved'])} resolved"]
            lines += [f"  + {f['kind']}: {f['message']}" for f in changes["new"]]
            lines += [f"  - {f['kind']}: {f['message']}" for f in changes["resolved"]]
            text = "\n".join(lines) + "\n"
        else:
            raise ConfigError(f"--diff prints text or json, not {fmt}")
    elif fmt == "xlsx":
        from datetime import datetime, timezone

        from agent.reports.audit_pack import write_report_xlsx

        if not output:
            raise ConfigError("--format xlsx writes a file: give --output FILE.xlsx")
        write_report_xlsx(output, engine.stored_report(store, run_id), made_at=datetime.now(timezone.utc))
        click.echo(f"wrote {output}", err=True)
        return
    else:
        if fmt == "text":
            raise ConfigError("--format text is for --diff; the report itself is json, html, csv or xlsx")
        text = engine.stored_report_text(store, run_id, fmt)
    if output:
        try:
            engine.write_private(output, text)
        except OSError as exc:
            raise CalAgentError(f"cannot write {output}: {exc.strerror or exc}") from None
        click.echo(f"wrote {output}", err=True)
    elif isinstance(text, str):
        click.echo(text, nl=False)
    else:
        _write_stdout_bytes(text)


def _write_stdout_bytes(chunks) -> None:
    """UTF-8 chunks to stdout: through its binary buffer, or as text where it has none (a
    redirected stream)."""
    binary = getattr(sys.stdout, "buffer", None)
    if binary is None:
        sys.stdout.write(b"".join(chunks).decode("utf-8"))
        return
    sys.stdout.flush()
    for chunk in chunks:
        binary.write(chunk)
    binary.flush()


@cli.command()
@click.option("--once", is_flag=True, help="One cycle (sync, reconcile, report) and exit.")
@click.option("--check", is_flag=True, help="With --once: exit 1 when not compliant.")
@_config_option
def run(config_path, once, check):
    """Run the agent: a cycle (sync -> reconcile -> report) now and then on `schedule:`.

    As a service (systemd Type=notify, or in a terminal): SIGTERM/SIGINT stop after the current
    step, SIGHUP reloads the configuration.  With --once: one cycle, then exit.
    """
    from agent import engine
    from agent.service.cycle import run_cycle

    config = _load(config_path)
    if not once:
        from agent.service.daemon import serve

        if check:
            raise ConfigError("--check needs --once")
        sys.exit(serve(config_path, config))
    store = engine.open_store(config)
    cycle = run_cycle(config, store)
    _print_summary(cycle.report)
    click.echo(f"report: {cycle.written['html']}")
    _print_alerts(cycle.alerts)
    if cycle.failures:
        _report_failures(cycle.failures)
    if check and not cycle.report["compliant"]:
        sys.exit(EXIT_NOT_COMPLIANT)


@cli.command()
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path), default=Path("cal-agent-demo"),
              show_default=True, help="Folder for the demo's database and reports.")
def demo(output):
    """Run one cycle on the bundled fictional company (LDIF export + inventory) and show the result."""
    from agent import engine
    from agent.demo import demo_config

    configure_logging(click.get_current_context().find_root().params.get("log_level") or "warning",
                      click.get_current_context().find_root().params.get("log_format") or "auto")
    config = demo_config(output)
    store = engine.open_store(config)
    _outcomes, failures = engine.sync_directories(config, store)
    if failures:
        _report_failures(failures)
    result = engine.reconcile_and_record(config, store)
    written = engine.write_report_files(config, result)
    click.echo("cal-agent demo: Northwind Traders (fictional), directory export of 2026-11-01\n")
    _print_summary(result.report)
    click.echo(f"\nHTML report: {written['html'].resolve()}")
    click.echo(f"JSON report: {written['json'].resolve()}")


@cli.command()
@click.option("--usage", required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="CSV of observed accesses with `user` and `computer` columns (e.g. from logon events).")
@click.option("--product", "products", multiple=True, help="Catalog key [default: every required product].")
@click.option("--price-user", type=click.FloatRange(min=0), help="Unit price of a user CAL [default: newest purchase].")
@click.option("--price-device", type=click.FloatRange(min=0), help="Unit price of a device CAL.")
@click.option("--format", "-f", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@_config_option
def advise(config_path, usage, products, price_user, price_device, fmt):
    """The cheapest mix of user and device CALs for the observed accesses (R04)."""
    from decimal import Decimal

    from agent import engine

    config = _load(config_path)
    store = engine.open_store(config)
    advice = engine.cost_advice(config, store, usage, products=list(products) or None,
                                price_user=Decimal(str(price_user)) if price_user is not None else None,
                                price_device=Decimal(str(price_device)) if price_device is not None else None)
    if fmt == "json":
        click.echo(json.dumps([{
            "product": a.product, "users_to_license": list(a.users_to_license),
            "devices_to_license": list(a.devices_to_license), "price_user": str(a.price_user),
            "price_device": str(a.price_device), "cost": str(a.cost), "cost_all_user": str(a.cost_all_user),
            "cost_all_device": str(a.cost_all_device), "saving": str(a.saving_vs_best_single_type),
            "user_cals_to_buy": a.user_cals_to_buy, "device_cals_to_buy": a.device_cals_to_buy,
            "message": a.message} for a in advice], indent=2))
        return
    for a in advice:
        click.echo(a.message)


@cli.command()
@click.option("--format", "-f", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@_config_option
def status(config_path, fmt):
    """The service's last cycle (result, duration), next run, and the store's counts."""
    from agent import engine
    from agent.service.daemon import read_status

    config = _load(config_path)
    store = engine.open_store(config)
    service = read_status(config)
    runs_ = engine.list_runs(store)
    directories = engine.directory_status(config, store)
    data = {"service": service, "last_run": runs_[-1] if runs_ else None, "runs": len(runs_),
            "directories": directories}
    if fmt == "json":
        click.echo(json.dumps(data, indent=2, default=str))
        return
    if service is None:
        click.echo("service: no status yet (the service has not completed a cycle with this configuration)")
    elif "error" in service:
        click.echo(f"service: {service['error']}")
    else:
        last = service.get("last_cycle") or {}
        click.echo(f"service: pid {service.get('pid')}, {service.get('cycles')} cycles, updated {service.get('updated_at')}")
        if last:
            click.echo(f"  last cycle: {last.get('started_at')}, {last.get('duration_seconds')} s: {last.get('summary')}")
        if service.get("last_error"):
            click.echo(f"  last error: {service['last_error']}")
        click.echo(f"  next run: {service.get('next_run') or 'not scheduled'}")
    if runs_:
        r = runs_[-1]
        click.echo(f"last run: {r['run']} at {r['generated_at']}: {'compliant' if r['compliant'] else 'NOT COMPLIANT'}, "
                   f"{r['errors']} errors, {r['warnings']} warnings, shortfall {r['shortfall']}")
    else:
        click.echo("last run: none")
    for d in directories:
        sync = d["last_sync"]
        if sync is None:
            click.echo(f"directory {d['name']}: never synced")
        else:
            click.echo(f"directory {d['name']}: last sync {sync['status']} at {sync['finished_at']}: {sync['users']} users, "
                       f"{sync['groups']} groups, {sync['computers']} computers"
                       + (f" — {sync['error']}" if sync.get("error") else ""))


@cli.command()
@click.option("--format", "-f", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@_config_option
def runs(config_path, fmt):
    """Past runs, oldest first: when, compliant, errors, warnings, shortfall."""
    from agent import engine

    config = _load(config_path)
    rows = engine.list_runs(engine.open_store(config))
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no runs yet")
        return
    click.echo(f"{'run':>6}  {'when (UTC)':<20} {'status':<14} {'errors':>6} {'warnings':>8} {'shortfall':>9}")
    for r in rows:
        status = "compliant" if r["compliant"] else "NOT COMPLIANT"
        click.echo(f"{r['run']:>6}  {r['generated_at'][:19].replace('T', ' '):<20} {status:<14} {r['errors']:>6} "
                   f"{r['warnings']:>8} {r['shortfall']:>9}")


@cli.command("audit-pack")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write (new, empty, or an earlier pack to replace).")
@click.option("--run", "run_id", type=int, help="A past run instead of the latest.")
@_config_option
def audit_pack(config_path, output, run_id):
    """Everything an auditor asks for: xlsx workbook, CSV, JSON, evidence copies, checksums (R36)."""
    from datetime import datetime, timezone

    import yaml

    from agent import engine
    from agent.inventory.ledger import Ledger
    from agent.reports.audit_pack import write_audit_pack

    config = _load(config_path)
    store = engine.open_store(config)
    report = engine.stored_report(store, run_id)
    ledger = Ledger(store, actor="cal-agent")
    if ledger.initialised():
        register, history = ledger.export(), ledger.history()
    else:
        engine.load_register(config, store)  # validates the file, with its errors' paths
        register, history = yaml.safe_load(config.inventory.read_text(encoding="utf-8")) or {}, []
    pack = write_audit_pack(output, report=report, register=register, history=history,
                            evidence_dir=config.inventory.parent, made_at=datetime.now(timezone.utc))
    click.echo(f"wrote {len(pack.files)} files to {pack.path}: audit-pack.xlsx, CSV and JSON of run "
               f"{report['run']['id']}, {len(pack.evidence_copied)} evidence documents")
    for missing in pack.evidence_missing:
        click.echo(f"warning: evidence of {missing.purchase} not included ({missing.evidence}): {missing.reason}", err=True)
    click.echo(f"MANIFEST.txt SHA-256: {pack.manifest_sha256} (keep it: it proves the pack unaltered)")


# ------------------------------------------------------------------------------ the Windows service


@cli.group()
def service():
    """The Windows service: install, remove, start, stop, debug (docs/windows.md).

    On Linux the service is the systemd unit running `cal-agent run` (docs/install.md).
    """


@service.command("install")
@click.option("--startup", type=click.Choice(["auto", "delayed", "manual"]), default="auto", show_default=True,
              help="How Windows starts the service (delayed: auto, a little after boot).")
@_config_option
def service_install(config_path, startup):
    """Install (or update) the Windows service `cal-agent` with this configuration file."""
    from agent.service import windows

    click.echo(windows.install(config_path, startup=startup))


@service.command("remove")
def service_remove():
    """Stop and remove the Windows service (configuration, state and logs are kept)."""
    from agent.service import windows

    click.echo(windows.remove())


@service.command("start")
def service_start():
    """Start the Windows service and wait until it runs."""
    from agent.service import windows

    click.echo(windows.start())


@service.command("stop")
def service_stop():
    """Stop the Windows service (after the current step of a running cycle)."""
    from agent.service import windows

    click.echo(windows.stop())


@service.command("debug")
@_config_option
def service_debug(config_path):
    """Run the service in the foreground, logging to the console; Ctrl+C stops it."""
    from agent.service import windows

    windows.debug(config_path)


# ------------------------------------------------------------------------------ the register


def _actor(by: str | None) -> str:
    """Who is changing the register, for the audit trail: --by, else the login behind sudo."""
    import getpass
    import os

    if by:
        return by
    user = os.environ.get("SUDO_USER") or getpass.getuser()
    return f"{user}@{os.uname().nodename}" if hasattr(os, "uname") else user


def _ledger(config: Config, by: str | None, *, need_register: bool = True):
    from agent import engine
    from agent.inventory.ledger import Ledger

    store = engine.open_store(config)
    ledger = Ledger(store, actor=_actor(by))
    if need_register and not ledger.initialised():
        raise _not_initialised(config)
    return store, ledger


def _not_initialised(config: Config):
    from agent.errors import RegisterError

    return RegisterError(
        f"the register is still the file {config.inventory}; run `cal-agent inventory import` once to make the "
        "database the register (then assign/release/transfer record who, when and why)")


_by_option = click.option("--by", help="Who makes the change, for the audit trail [default: your login].")
_on_option = click.option("--on", "on", type=click.DateTime(["%Y-%m-%d"]), help="Date of the change [default: today].")


def _day(on) -> "date":
    from datetime import date

    return on.date() if on else date.today()


def _outcome(outcome) -> None:
    click.echo(outcome.message)
    for warning in outcome.warnings:
        click.echo(f"warning: {warning}", err=True)


@cli.group()
def inventory():
    """Import the inventory file into the database register, or export the register."""


@inventory.command("import")
@click.argument("file", required=False, type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--update", is_flag=True, help="Apply the file's values to purchases that differ (recorded).")
@_by_option
@_config_option
def inventory_import(config_path, file, update, by):
    """Load purchases and assignments from FILE (default: the configured inventory); idempotent."""
    config = _load(config_path)
    _store, ledger = _ledger(config, by, need_register=False)
    result = ledger.import_file(file or config.inventory, update=update)
    click.echo(f"imported {result.source}: {len(result.purchases_added)} purchases added, "
               f"{len(result.purchases_updated)} updated, {result.assignments_added} assignments added, "
               f"{result.transfers_added} transfers added, {result.unchanged} unchanged")
    if result.only_in_database:
        click.echo(f"kept {len(result.only_in_database)} assignments that are only in the database register:")
        for line in result.only_in_database:
            click.echo(f"  {line}")


@inventory.command("export")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write to this file.")
@_config_option
def inventory_export(config_path, output):
    """Write the database register as an inventory file (re-importing it changes nothing)."""
    import yaml

    from agent import engine

    config = _load(config_path)
    _store, ledger = _ledger(config, None)
    text = (f"# cal-agent register exported {datetime_now()}\n"
            + yaml.safe_dump(ledger.export(), sort_keys=False, allow_unicode=True))
    if output:
        engine.write_private(output, text)
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)


def datetime_now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@cli.command()
@click.argument("purchase")
@click.argument("principal")
@click.option("--reason", help="Why (recorded in the history).")
@click.option("--directory", "-d", help="The principal's directory, when several have that name.")
@click.option("--force", is_flag=True, help="Record it even if PRINCIPAL is not in the directory.")
@_on_option
@_by_option
@_config_option
def assign(config_path, purchase, principal, reason, directory, force, on, by):
    """Assign a seat of PURCHASE to PRINCIPAL (sAMAccountName or computer name)."""
    from agent import engine
    from agent.errors import RegisterError

    config = _load(config_path)
    store, ledger = _ledger(config, by)
    bought = {p.id: p for p in ledger.load().purchases}.get(purchase)
    if bought is None:
        raise RegisterError(f"no purchase with id {purchase!r} in the register")
    kind = "user" if bought.cal_type == "user" else "computer"
    state = engine.known_principal(store, principal, kind)
    if state is None and not force:
        raise RegisterError(f"no {kind} named {principal!r} in the directory data (last sync)",
                             hint="check the name, run `cal-agent sync`, or use --force to record it anyway")
    outcome = ledger.assign(purchase, principal, on=_day(on), reason=reason, directory=directory)
    _outcome(outcome)
    if state not in (None, "active"):
        click.echo(f"warning: {principal} is {state}: this seat will be reported as stale", err=True)


@cli.command()
@click.argument("purchase")
@click.argument("principal")
@click.option("--reason", required=True, help="Why (recorded in the history).")
@click.option("--why", type=click.Choice(["departed", "hardware_failure", "temporary_cover", "other"]),
              default="other", show_default=True, help="The kind of reason (R06 exceptions).")
@_on_option
@_by_option
@_config_option
def release(config_path, purchase, principal, reason, why, on, by):
    """Release PRINCIPAL's seat of PURCHASE."""
    config = _load(config_path)
    _store, ledger = _ledger(config, by)
    _outcome(ledger.release(purchase, principal, on=_day(on), reason=reason, why=why))


@cli.command()
@click.argument("purchase")
@click.argument("source", metavar="FROM")
@click.argument("target", metavar="TO")
@click.option("--reason", required=True, help="Why (recorded in the history).")
@click.option("--why", type=click.Choice(["departed", "hardware_failure", "temporary_cover", "other"]),
              default="other", show_default=True,
              help="departed, hardware_failure and temporary_cover allow a move within 90 days (R06).")
@_on_option
@_by_option
@_config_option
def transfer(config_path, purchase, source, target, reason, why, on, by):
    """Move a seat of PURCHASE from FROM to TO."""
    config = _load(config_path)
    _store, ledger = _ledger(config, by)
    _outcome(ledger.transfer(purchase, source, target, on=_day(on), reason=reason, why=why,
                             min_days=config.rules.reassignment_min_days))


@cli.command()
@click.argument("subject", required=False)
@click.option("--format", "-f", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@_config_option
def history(config_path, subject, fmt):
    """The register's audit trail, all of it or for one PRINCIPAL or PURCHASE."""
    config = _load(config_path)
    _store, ledger = _ledger(config, None, need_register=False)
    events = ledger.history(subject)
    if fmt == "json":
        click.echo(json.dumps(events, default=str, indent=2))
        return
    if not events:
        click.echo("no history" + (f" for {subject}" if subject else ""))
        return
    for e in events:
        who = e["principal"] or ""
        if e["to"]:
            who += f" -> {e['to']}"
        click.echo(f"{e['at']:%Y-%m-%d %H:%M}  {e['actor']:<24} {e['action']:<15} {e['purchase'] or '':<16} "
                   f"{who:<28} {e['reason'] or ''}".rstrip())


@cli.command()
@click.option("--apply", "apply_", is_flag=True, help="Carry the changes out and record them in the history.")
@_by_option
@_config_option
def plan(config_path, apply_, by):
    """What the policies (reclaim, auto_assign) would change; nothing changes without --apply."""
    from agent import engine
    from agent.compliance.policy import plan as make_plan

    config = _load(config_path)
    store, ledger = _ledger(config, by or "cal-agent policy", need_register=apply_)
    if not (config.policies.reclaim or config.policies.auto_assign):
        click.echo("no policy is enabled (policies.reclaim, policies.auto_assign): nothing to plan")
        return
    from datetime import date

    today = date.today()
    result, inv = engine.current_reconciliation(config, store, today=today)
    changes = make_plan(result, inv, config.policies, today=today)
    if not changes:
        click.echo("nothing to change")
        return
    for change in changes:
        click.echo(("" if apply_ else "would ") + change.describe())
    if not apply_:
        click.echo(f"\n{len(changes)} changes planned; run `cal-agent plan --apply` to make them")
        if not ledger.initialised():
            click.echo("(--apply needs the database register: run `cal-agent inventory import` first)")
        return
    for change in changes:
        if change.action == "release":
            ledger.release(change.purchase, change.principal, on=today, reason=change.reason, why=change.why)
        else:
            ledger.assign(change.purchase, change.principal, on=today, reason=change.reason,
                          directory=change.directory)
    click.echo(f"\n{len(changes)} changes made and recorded; see `cal-agent history`")


@cli.command()
@click.option("--test", "test_", is_flag=True,
              help="Send a test message to every configured channel now (not through the outbox).")
@click.option("--flush", is_flag=True, help="Retry the messages waiting in the outbox now, oldest first.")
@_config_option
def alert(config_path, test_, flush):
    """Email and webhook alerts: send a test, retry the outbox, or (no option) show what waits in it.

    \b
    Exit 6 when a message could not be delivered; queued messages stay in the outbox.
    """
    from agent import alerts, engine
    from agent.errors import AlertError

    config = _load(config_path)
    if test_ and flush:
        raise ConfigError("give --test or --flush, not both")
    if test_:
        results = alerts.send_test(config)
        for r in results:
            if r.ok:
                click.echo(f"{r.channel}: {r.detail}")
        failed = [r for r in results if not r.ok]
        if failed:
            raise AlertError("alert test failed:\n" + "\n".join(f"  {r.channel}: {r.detail}" for r in failed))
        return
    store = engine.open_store(config)
    if flush:
        delivery = alerts.retry(config, store)
        for a in delivery.attempts:
            click.echo(f"{'sent' if a.ok else 'FAILED'} #{a.id} {a.channel}: {a.subject}"
                       + (f"\n  {a.error}" if a.error else ""))
        for message_id, (channel, why) in sorted(delivery.waiting.items()):
            click.echo(f"pending #{message_id} {channel}: not tried ({why})")
        left = len(delivery.failed) + len(delivery.waiting)
        click.echo(f"outbox: {len(delivery.sent)} sent, {left} still pending")
        if left:
            raise AlertError(f"{left} alert messages could not be delivered; they stay in the outbox",
                             hint="fix the cause above; the next cycle or `cal-agent alert --flush` retries them")
        return
    waiting = alerts.outbox.status(store)
    if not waiting:
        click.echo("outbox: nothing waiting")
    for row in waiting:
        click.echo(f"#{row.id} {row.channel} {row.status}, queued {row.created_at:%Y-%m-%d %H:%M} UTC, "
                   f"{row.attempts} attempts: {row.subject}" + (f"\n  last error: {row.last_error}" if row.last_error else ""))


def _print_alerts(outcome) -> None:
    line = outcome.line() if outcome is not None else None
    if line:
        click.echo(line)


def _print_summary(report: dict) -> None:
    summary = report["summary"]
    status = "COMPLIANT" if report["compliant"] else "NOT COMPLIANT"
    click.echo(f"run {report['run']['id']}: {status} — {summary['errors']} errors, {summary['warnings']} warnings, "
               f"shortfall {summary['shortfall']}")
    rows = [("product", "version", "type", "required", "owned", "assigned", "licensed", "free", "shortfall")]
    for p in report["products"]:
        rows.append((p["product"], p["version"], p["cal_type"], str(p["required"]), str(p["owned"]),
                     str(p["assigned"]), str(p.get("licensed", "")), str(p.get("free", "")), str(p["shortfall"])))
    if len(rows) > 1:
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        click.echo("")
        for n, r in enumerate(rows):
            cells = [c.ljust(widths[i]) if i < 3 else c.rjust(widths[i]) for i, c in enumerate(r)]
            click.echo("  " + "  ".join(cells))
    if summary["by_kind"]:
        click.echo("\nfindings:")
        for kind, count in summary["by_kind"].items():
            click.echo(f"  {kind:<20} {count:>5}")
    drift = report["drift"]
    if report["run"]["previous_id"] is None:
        click.echo("\nfirst run: nothing to compare with")
    else:
        click.echo(f"\nsince run {report['run']['previous_id']}: {len(drift['new'])} new, "
                   f"{len(drift['resolved'])} resolved")


def run_cli(argv: list[str] | None = None) -> int:
    """Run one command and return its exit code: the one place errors become exit codes."""
    try:
        cli.main(args=argv, prog_name="cal-agent", standalone_mode=False)
        return 0
    except CalAgentError as exc:
        click.echo(f"cal-agent: error: {exc}", err=True)
        return exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("cal-agent: interrupted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return EXIT_CONFIG if exc.exit_code == 2 else exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)


def main() -> None:
    sys.exit(run_cli())


if __name__ == "__main__":  # pragma: no cover
    main()

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
    3 directory read failed, 4 database error, 5 no data yet.
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
@_config_option
def sync(config_path, directory):
    """Read users, groups and computers into the store (one transaction per directory)."""
    from agent import engine

    config = _load(config_path)
    store = engine.open_store(config)
    outcomes, failures = engine.sync_directories(config, store, only=directory)
    for o in outcomes:
        changes = ", ".join(f"{k} {v}" for k, v in sorted(o.events.items())) or "no changes"
        click.echo(f"{o.directory}: {o.users} users, {o.groups} groups, {o.computers} computers, "
                   f"{o.tombstones} deleted; {changes}")
    _report_failures(failures)


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

    config = _load(config_path)
    store = engine.open_store(config)
    result = engine.reconcile_and_record(config, store)
    _print_summary(result.report)
    if check and not result.reconciliation.compliant:
        sys.exit(EXIT_NOT_COMPLIANT)


@cli.command()
@click.option("--format", "-f", "fmt", type=click.Choice(["json", "html", "csv"]), default="json", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to this file (mode 0600) instead of stdout.")
@click.option("--run", "run_id", type=int, help="A past run instead of the latest.")
@_config_option
def report(config_path, fmt, output, run_id):
    """Print or write the report of the latest (or a given) run."""
    from agent import engine

    config = _load(config_path)
    store = engine.open_store(config)
    text = engine.render(engine.stored_report(store, run_id), fmt)
    if output:
        try:
            engine.write_private(output, text)
        except OSError as exc:
            raise CalAgentError(f"cannot write {output}: {exc.strerror or exc}") from None
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)


@cli.command()
@click.option("--once", is_flag=True, help="One cycle (sync, reconcile, report) and exit.")
@click.option("--check", is_flag=True, help="With --once: exit 1 when not compliant.")
@_config_option
def run(config_path, once, check):
    """Run the agent: sync -> reconcile -> report."""
    from agent import engine

    if not once:
        raise ConfigError("the scheduler is not available yet: use `cal-agent run --once` from cron or a systemd timer")
    config = _load(config_path)
    store = engine.open_store(config)
    _outcomes, failures = engine.sync_directories(config, store)
    result = engine.reconcile_and_record(config, store)
    written = engine.write_report_files(config, result.report)
    _print_summary(result.report)
    click.echo(f"report: {written['html']}")
    if failures:
        _report_failures(failures)
    if check and not result.reconciliation.compliant:
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
    written = engine.write_report_files(config, result.report)
    click.echo("cal-agent demo: Northwind Traders (fictional), directory export of 2026-11-01\n")
    _print_summary(result.report)
    click.echo(f"\nHTML report: {written['html'].resolve()}")
    click.echo(f"JSON report: {written['json'].resolve()}")


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


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except CalAgentError as exc:
        click.echo(f"cal-agent: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("cal-agent: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_CONFIG if exc.exit_code == 2 else exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("cal-agent: interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()

"""One cycle, in the ldap2pg shape: inspect -> wanted -> diff -> apply.

- inspect: ``sync_directories`` reads each directory into the store (one transaction each);
  ``load_view`` reads the store back as plain data.
- wanted + diff: ``agent.compliance.reconcile.reconcile`` (pure).
- apply: ``reconcile_and_record`` stores the run and its findings; ``write_report_files`` writes
  the reports.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import delete, func, select
from sqlalchemy.orm import defer

from agent.compliance.model import DirectoryView, MemberPairs, PrincipalKey, RdsPerUserCal, Reconciliation
from agent.compliance.model import Principal as RulePrincipal
from agent.compliance.reconcile import reconcile
from agent.config import ActiveDirectoryConfig, Config, LdapConfig, LdifConfig, duration_seconds
from agent.directory import make_reader
from agent.errors import CalAgentError, InventoryError, NoDataError, StoreError
from agent.inventory.ledger import Ledger
from agent.inventory.register import Inventory, load_inventory
from agent.reports.json_report import (Baseline, DamagedReport, build_report, gunzipped_chunks, gzip_report, iso,
                                       report_from_gzip, stored_findings)
from agent.store.db import Store
from agent.store.models import Membership, Principal, PrincipalEvent, Run, RunFinding, SyncRun
from agent.store.sync import SyncOutcome, insert_rows, rds_licenses_from_json, run_sync

log = structlog.get_logger("agent.engine")


@dataclass
class SyncFailure:
    directory: str
    error: CalAgentError


def open_store(config: Config) -> Store:
    return Store(config.database.url)


@contextlib.contextmanager
def _bulk_step() -> Iterator[None]:
    """A sync or a reconcile: a step that builds millions of short-lived objects at 100,000 users.

    - The cyclic garbage collector is held back meanwhile.  None of those objects are in
      reference cycles, but CPython 3.11 runs a full collection each time the live objects grow by
      a quarter, each one walking all of them: 4.4 s of a 15.9 s reconcile.  Reference counting
      still frees everything as usual; cycles made meanwhile wait for the next collection.
    - Afterwards the C heap's free memory goes back to the system (glibc's ``malloc_trim``).  Big
      buffers and lists (a page of search results, 125,000 records) live in the C heap, which
      keeps what they freed, while Python's small objects live in arenas of their own: without
      this the memory a sync used stayed in the process (+200 MB for the reconcile after it) and
      a service's resident size stayed at its largest cycle."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
        _trim_heap()


def _trim_heap() -> None:
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            import ctypes

            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc (Windows, musl): nothing to do
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM = None


@_bulk_step()
def sync_directories(config: Config, store: Store, only: str | None = None, *, accept_departures: bool = False,
                     progress: Any = None, full: bool = False) -> tuple[list[SyncOutcome], list[SyncFailure]]:
    """Sync every configured directory (or one).  A failure of one does not stop the others.
    AD directories are read incrementally when they can be (``full``: always a complete read)."""
    outcomes, failures = [], []
    targets = [d for d in config.directories if only is None or d.name == only]
    if only is not None and not targets:
        from agent.errors import ConfigError

        raise ConfigError(f"no directory named {only!r} (known: {', '.join(d.name for d in config.directories)})")
    for directory in targets:
        judge_at = directory.as_of if isinstance(directory, LdifConfig) else None
        try:
            reader = make_reader(directory)
            reads_changes = isinstance(directory, (ActiveDirectoryConfig, LdapConfig))
            incremental = reads_changes and directory.incremental
            every = duration_seconds(directory.full_sync_every) if reads_changes else None
            outcomes.append(run_sync(store, directory.name, reader, inactive_after_days=directory.inactive_after_days,
                                     judge_at=judge_at, max_departures=directory.max_departures,
                                     accept_departures=accept_departures, incremental=incremental,
                                     full_sync_every=every, force_full=full,
                                     progress=(lambda n, name=directory.name: progress(name, n)) if progress else None))
        except StoreError:
            raise
        except CalAgentError as exc:
            failures.append(SyncFailure(directory.name, exc))
    if failures or any(outcome.mode == "full" for outcome in outcomes):
        # The cycles a complete or failed read made go now (a failed read's frames, the
        # connection's objects), before the heap is trimmed and the next step allocates on top of
        # them: a first sync left ~45 MB at 100,000 users.  ~40 ms, so not after an incremental
        # read, which makes few.
        gc.collect()
    return outcomes, failures


def load_view(store: Store, directories: list[str]) -> DirectoryView:
    # Rows are fetched 5,000 at a time (not all 125,000 as rows first, which peaked ~40 MB higher)
    # and unpacked by position (reading 11 columns by name was a third of the time).  Directory,
    # kind and state repeat on every row: one string each instead of 125,000 copies.
    principals = []
    keys: dict[int, PrincipalKey] = {}
    intern = sys.intern
    # One object per distinct time: every principal of a first sync has the same state_since.
    moments: dict[datetime, datetime] = {}
    with store.session() as session:
        rows = session.execute(select(Principal.id, Principal.directory, Principal.guid, Principal.kind,
                                      Principal.name, Principal.dn, Principal.state, Principal.display_name,
                                      Principal.state_since, Principal.rds_licenses, Principal.dn_key)
                               .where(Principal.directory.in_(directories)).execution_options(yield_per=5000))
        for pid, directory, guid, kind, name, dn, state, display_name, state_since, rds, key in rows:
            principal = RulePrincipal(
                directory=intern(directory), guid=guid, kind=intern(kind), name=name, dn=dn, state=intern(state),
                display_name=display_name, state_since=moments.setdefault(state_since, state_since),
                key_of_dn=key,
                rds_cals=tuple(RdsPerUserCal(c.version, c.expires, c.license_server)
                               for c in rds_licenses_from_json(rds)) if rds and rds != "[]" else ())
            principals.append(principal)
            keys[pid] = principal.key
        members = session.execute(select(Membership.group_id, Membership.member_id)
                                  .execution_options(yield_per=5000))
        groups, member_keys = [], []
        for g, m in members:
            if g in keys and m in keys:
                groups.append(keys[g])
                member_keys.append(keys[m])
        del keys
        memberships = MemberPairs(groups, member_keys)
    return DirectoryView(principals=tuple(principals), memberships=memberships, directories=tuple(directories))


def directory_status(config: Config, store: Store) -> list[dict[str, Any]]:
    """Per configured directory: its last sync attempt (ok or failed) and the last good one."""
    out = []
    with store.session() as session:
        for d in config.directories:
            last = session.scalars(select(SyncRun).where(SyncRun.directory == d.name, SyncRun.status != "running")
                                   .order_by(SyncRun.id.desc()).limit(1)).first()
            last_ok = session.scalars(select(SyncRun).where(SyncRun.directory == d.name, SyncRun.status == "ok")
                                      .order_by(SyncRun.id.desc()).limit(1)).first()
            out.append({
                "name": d.name,
                "type": d.type,
                "source": d.url if isinstance(d, (ActiveDirectoryConfig, LdapConfig)) else str(d.path),
                "last_sync": _sync_dict(last),
                "last_successful_sync": _sync_dict(last_ok),
            })
    return out


def _sync_dict(sync: SyncRun | None) -> dict[str, Any] | None:
    if sync is None:
        return None
    return {"id": sync.id, "status": sync.status, "started_at": iso(sync.started_at),
            "finished_at": iso(sync.finished_at), "users": sync.users, "groups": sync.groups,
            "computers": sync.computers, "tombstones": sync.tombstones, "changes": sync.changes,
            "error": sync.error, "mode": sync.mode, "reason": sync.reason}


@dataclass
class RunResult:
    run_id: int
    reconciliation: Reconciliation
    report: dict[str, Any]
    report_gz: bytes  # the report as stored: its JSON text, gzip'd


def load_register(config: Config, store: Store) -> tuple[Inventory, dict[str, Any]]:
    """The inventory from its one source of truth (agent/inventory/ledger.py explains which)."""
    ledger = Ledger(store, actor="cal-agent")
    if not ledger.initialised():
        return load_inventory(config.inventory), {"source": "file", "path": str(config.inventory),
                                                   "file_differs": False}
    differs = config.inventory.exists() and ledger.file_differs(config.inventory)
    if differs:
        log.warning("inventory.file_differs", path=str(config.inventory),
                    why="the database register is the source of truth; import the file or export the register")
    return (ledger.load(evidence_dir=config.inventory.parent),
            {"source": "database", "path": str(config.inventory), "file_differs": differs})


@_bulk_step()
def reconcile_and_record(config: Config, store: Store, *, now: datetime | None = None) -> RunResult:
    now = now or datetime.now(timezone.utc)
    inventory, inventory_info = load_register(config, store)
    status = directory_status(config, store)
    never = [d["name"] for d in status if d["last_successful_sync"] is None]
    if never:
        # Judging an unread directory would call everyone in it "not required": a false pass.
        raise NoDataError(
            f"directory {', '.join(never)} has never been read successfully, so compliance cannot be judged",
            hint="run `cal-agent sync` (or `cal-agent test-connection`) first",
        )
    view = load_view(store, [d.name for d in config.directories])
    result = reconcile(view, config.requirements, inventory, today=now.date(), exempt=config.exempt,
                       rules=config.rules)
    # The report is built from the result alone; its findings and licences hold the principals
    # they name, the rest (and the view's own tuples) go now.
    del view
    with store.session() as session:
        # The stored report is deferred: loaded only if drift needs it (_drift_baseline).
        previous_run = session.scalars(select(Run).options(defer(Run.report_gz)).order_by(Run.id.desc()).limit(1)).first()
        run = Run(created_at=now, compliant=result.compliant, findings=len(result.findings), errors=0, warnings=0,
                  shortfall=result.shortfall, report_gz=b"")
        session.add(run)
        session.flush()
        for start in range(0, len(result.findings), 5000):  # one executemany per batch, not one ORM object each
            insert_rows(session.connection(), RunFinding.__table__, [
                {"run_id": run.id, "key": f.key, "kind": f.kind, "severity": f.severity}
                for f in result.findings[start:start + 5000]])
        baseline = _drift_baseline(session, previous_run, run.id)
        report = build_report(result, run_id=run.id, previous=baseline, directories=status, generated_at=now,
                              inventory=inventory_info, trend=_trend(session, before=run.id),
                              principal_changes=_principal_changes(session, previous_run, config))
        run.report_gz = report_gz = gzip_report(report)
        run.errors, run.warnings = report["summary"]["errors"], report["summary"]["warnings"]
        run_id = run.id
    log.info("reconcile.finished", run=run_id, compliant=result.compliant, findings=len(result.findings),
             shortfall=result.shortfall, new=len(report["drift"]["new"]), resolved=len(report["drift"]["resolved"]))
    return RunResult(run_id=run_id, reconciliation=result, report=report, report_gz=report_gz)


def _drift_baseline(session, previous_run: Run | None, run_id: int) -> Baseline | None:
    """What drift is measured against: which of run ``run_id``'s finding keys (stored already)
    the previous run had not, and the previous run's findings this one no longer has.  Both sides
    are compared in SQL, on run_findings, instead of as two sets of 70,000 keys in memory at
    100,000 users; the resolved findings are read out of the previous stored report (120 MB of
    JSON text at that size) one at a time, and only they are kept, only when there are some."""
    if previous_run is None:
        return None
    current = select(RunFinding.key).where(RunFinding.run_id == run_id)
    before = select(RunFinding.key).where(RunFinding.run_id == previous_run.id)
    if previous_run.findings and session.scalar(before.limit(1)) is None:
        # Its finding keys were not stored (pruned rows, or a store from before run_findings):
        # they come from its report.
        try:
            keys = {f["key"] for f in stored_findings(previous_run.report_gz)}
        except DamagedReport as exc:
            _previous_damaged(previous_run, exc)
            keys = set()
        now = set(session.scalars(current))
        new, gone = now - keys, keys - now
    else:
        new = set(session.scalars(current.except_(before)))
        gone = set(session.scalars(before.except_(current)))
    resolved: list[dict[str, Any]] = []
    if gone:
        try:
            resolved = list(stored_findings(previous_run.report_gz, gone))  # in that report's order
        except DamagedReport as exc:
            _previous_damaged(previous_run, exc)
            resolved = []
        listed = {f["key"] for f in resolved}
        # Listed by key only when its report does not have them (damaged, or changed behind our back).
        resolved += [{"key": key} for key in sorted(gone - listed)]
    return Baseline(run_id=previous_run.id, new_keys=new, resolved=resolved)


def _previous_damaged(previous_run: Run, exc: Exception) -> None:
    # Drift still comes out (from the keys); the resolved findings are listed by key only.
    log.warning("report.previous_damaged", run=previous_run.id, error=str(exc),
                why="its stored report cannot be read; resolved findings are listed without details")


TREND_RUNS = 60  # runs shown in the report's trend chart


def _trend(session, *, before: int) -> list[dict[str, Any]]:
    runs = session.execute(select(Run.id, Run.created_at, Run.compliant, Run.shortfall, Run.findings, Run.errors,
                                  Run.warnings).where(Run.id < before).order_by(Run.id.desc())
                           .limit(TREND_RUNS - 1)).all()
    return [{"run": r.id, "generated_at": iso(r.created_at), "compliant": r.compliant, "shortfall": r.shortfall,
             "findings": r.findings, "errors": r.errors, "warnings": r.warnings} for r in reversed(runs)]


def _principal_changes(session, previous_run: Run | None, config: Config) -> list[dict[str, Any]]:
    """Joiners, leavers, moves and renames the directory syncs recorded since the previous run.
    On the first run everyone would be a joiner: nothing is listed."""
    if previous_run is None:
        return []
    rows = session.execute(
        select(PrincipalEvent.at, PrincipalEvent.event, PrincipalEvent.old, PrincipalEvent.new, Principal.kind,
               Principal.name, Principal.directory, Principal.display_name, Principal.dn)
        .join(Principal, Principal.id == PrincipalEvent.principal_id)
        .where(PrincipalEvent.at > previous_run.created_at, Principal.kind != "group",
               Principal.directory.in_([d.name for d in config.directories]))
        .order_by(PrincipalEvent.at, PrincipalEvent.id)).all()
    out = []
    for r in rows:
        if r.event == "state":
            event = {"active": "reactivated"}.get(r.new, r.new)  # disabled, expired, inactive, deleted, missing
        else:
            event = r.event  # joined, deleted, moved, renamed, rds_licenses
        if event == "rds_licenses":
            continue
        out.append({"event": event, "kind": r.kind, "name": r.name, "directory": r.directory,
                    "display_name": r.display_name, "dn": r.dn, "old": r.old, "new": r.new, "at": iso(r.at)})
    return out


def stored_report_gz(store: Store, run_id: int | None = None) -> bytes:
    """The stored report of run ``run_id`` (default: the newest) as stored: its JSON text, gzip'd."""
    with store.session() as session:
        if run_id is None:
            blob = session.scalars(select(Run.report_gz).order_by(Run.id.desc()).limit(1)).first()
            if blob is None:
                raise NoDataError("no reconcile has run yet", hint="run `cal-agent reconcile` or `cal-agent run --once`")
        else:
            blob = session.scalars(select(Run.report_gz).where(Run.id == run_id)).first()
            if blob is None:
                count = session.scalar(select(func.count(Run.id)))
                raise NoDataError(f"no run {run_id} (there are {count} runs)")
        return blob


def stored_report(store: Store, run_id: int | None = None) -> dict[str, Any]:
    try:
        return report_from_gzip(stored_report_gz(store, run_id))
    except DamagedReport as exc:
        raise _damaged(run_id, exc) from None


def _stored_json(blob: bytes, run_id: int | None) -> Iterator[bytes]:
    try:
        yield from gunzipped_chunks(blob)
    except DamagedReport as exc:
        raise _damaged(run_id, exc) from None


def _damaged(run_id: int | None, exc: Exception) -> StoreError:
    which = f"run {run_id}" if run_id is not None else "the latest run"
    return StoreError(f"the stored report of {which} is damaged ({exc})",
                      hint="the database file was changed or corrupted outside cal-agent; restore it from a "
                      "backup, or run `cal-agent reconcile` (or wait for the next cycle) for a new report")


def stored_report_text(store: Store, run_id: int | None, fmt: str) -> str | Iterable[bytes]:
    """A stored report in ``fmt``; JSON comes straight out of the stored text, unparsed."""
    if fmt == "json":
        return _stored_json(stored_report_gz(store, run_id), run_id)
    return render(stored_report(store, run_id), fmt)


def render(report: dict[str, Any], fmt: str) -> str:
    if fmt == "html":
        from agent.reports.html import render_html

        return render_html(report)
    if fmt == "csv":
        from agent.reports.csv_export import render_findings_csv

        return render_findings_csv(report)
    if fmt == "products-csv":
        from agent.reports.csv_export import render_products_csv

        return render_products_csv(report)
    raise ValueError(fmt)


def write_private(path: Path, content: str | bytes | Iterable[bytes]) -> None:
    """Write atomically (temp file + rename) with mode 0600: reports name every employee.
    ``content``: text (written as UTF-8), bytes, or chunks of bytes (a stored report's JSON)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            if isinstance(content, str):
                content = content.encode("utf-8")
            if isinstance(content, bytes):
                handle.write(content)
            else:
                for chunk in content:
                    handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_report_files(config: Config, run: RunResult) -> dict[str, Path]:
    """run-<id>.{json,html} plus latest.{json,html} in reports.directory; the JSON files are copied
    out of the stored report, not rendered again."""
    directory = config.reports.directory
    written: dict[str, Path] = {}
    try:
        for fmt in ("json", "html"):
            text = render(run.report, fmt) if fmt == "html" else None
            path = directory / f"run-{run.run_id:06d}.{fmt}"
            for target in (path, directory / f"latest.{fmt}"):
                write_private(target, text if text is not None else gunzipped_chunks(run.report_gz))
            written[fmt] = path
    except OSError as exc:
        raise StoreError(f"cannot write reports to {directory}: {exc.strerror or exc}",
                         hint="check reports.directory exists, is writable by the agent and has space") from None
    return written


def current_reconciliation(config: Config, store: Store, *, today: date | None = None):
    """Reconcile the store's current state without recording a run (for `plan`)."""
    inventory, _info = load_register(config, store)
    view = load_view(store, [d.name for d in config.directories])
    result = reconcile(view, config.requirements, inventory, today=today or datetime.now(timezone.utc).date(),
                       exempt=config.exempt, rules=config.rules)
    return result, inventory


def known_principal(store: Store, name: str, kind: str) -> str | None:
    """The state of the principal called ``name`` (user or computer) in the store, or None."""
    key = name.strip().lower().removesuffix("$")
    with store.session() as session:
        states = session.scalars(select(Principal.state).where(Principal.kind == kind, Principal.name_key == key)).all()
    if not states:
        return None
    return "active" if "active" in states else states[0]


def cost_advice(config: Config, store: Store, usage: Path, *, products: list[str] | None = None,
                price_user: Decimal | None = None, price_device: Decimal | None = None) -> list[Any]:
    """R04: the cheapest mix of user and device CALs for the observed accesses, per product, priced
    with the unit prices of the newest purchases of each type (or the prices given)."""
    from agent.compliance.cost import cheapest_mix, load_usage_csv

    inventory, _info = load_register(config, store)
    pairs = load_usage_csv(usage)
    wanted = products or sorted({r.product for r in config.requirements})
    advice = []
    for product in wanted:
        prices: dict[str, Decimal | None] = {"user": price_user, "device": price_device}
        held: dict[str, int] = {"user": 0, "device": 0}
        for cal_type in ("user", "device"):
            own = [p for p in inventory.purchases if p.product == product and p.cal_type == cal_type
                   and p.valid_on(datetime.now(timezone.utc).date())]
            held[cal_type] = sum(p.quantity for p in own)
            if prices[cal_type] is None:
                priced = sorted((p for p in own if p.unit_price is not None),
                                key=lambda p: (p.purchased_on or date.min, p.id))
                if not priced:
                    priced = sorted((p for p in inventory.purchases if p.product == product
                                     and p.cal_type == cal_type and p.unit_price is not None),
                                    key=lambda p: (p.purchased_on or date.min, p.id))
                prices[cal_type] = priced[-1].unit_price if priced else None
        missing = [t for t, v in prices.items() if v is None]
        if missing:
            raise InventoryError(
                f"no unit_price for {' and '.join(missing)} CALs of {product}: add unit_price to a purchase of "
                f"that type, or give --price-{missing[0]}")
        advice.append(cheapest_mix(pairs, prices["user"], prices["device"], product=inventory.catalog.name(product),
                                   currently_user=held["user"], currently_device=held["device"]))
    return advice


def prune_runs(config: Config, store: Store, *, now: datetime | None = None) -> list[int]:
    """reports.keep_days: delete runs older than that (never the two newest) and their files."""
    if config.reports.keep_days is None:
        return []
    now = now or datetime.now(timezone.utc)
    cutoff = now - timedelta(days=config.reports.keep_days)
    with store.session() as session:
        newest = [r for r, in session.execute(select(Run.id).order_by(Run.id.desc()).limit(2))]
        old = [r for r, in session.execute(select(Run.id).where(Run.created_at < cutoff, Run.id.not_in(newest or [0])))]
        if old:
            session.execute(delete(RunFinding).where(RunFinding.run_id.in_(old)))
            session.execute(delete(Run).where(Run.id.in_(old)))
    for run_id in old:
        for fmt in ("json", "html"):
            try:
                (config.reports.directory / f"run-{run_id:06d}.{fmt}").unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("reports.prune_failed", run=run_id, error=str(exc))
    if old:
        log.info("reports.pruned", runs=len(old), older_than=iso(cutoff))
    return old


def list_runs(store: Store) -> list[dict[str, Any]]:
    with store.session() as session:
        rows = session.execute(select(Run.id, Run.created_at, Run.compliant, Run.errors, Run.warnings, Run.shortfall,
                                      Run.findings).order_by(Run.id)).all()
    return [{"run": r.id, "generated_at": iso(r.created_at), "compliant": r.compliant, "errors": r.errors,
             "warnings": r.warnings, "shortfall": r.shortfall, "findings": r.findings} for r in rows]


def diff_runs(store: Store, older: int, newer: int) -> dict[str, Any]:
    """Findings of run ``newer`` that were not in ``older`` (new), and the reverse (resolved)."""
    a, b = stored_report(store, older), stored_report(store, newer)
    keys_a = {f["key"] for f in a["findings"]}
    keys_b = {f["key"] for f in b["findings"]}
    return {"from": older, "to": newer,
            "new": [f for f in b["findings"] if f["key"] not in keys_a],
            "resolved": [f for f in a["findings"] if f["key"] not in keys_b]}


def principal_counts(store: Store) -> list[tuple[str, str, str, int]]:
    """(directory, kind, state, count) for the metrics endpoint and `status`."""
    with store.session() as session:
        rows = session.execute(select(Principal.directory, Principal.kind, Principal.state, func.count())
                               .group_by(Principal.directory, Principal.kind, Principal.state)).all()
    return [(r[0], r[1], r[2], r[3]) for r in rows]

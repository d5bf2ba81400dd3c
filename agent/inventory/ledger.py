"""The licence register in the database, with an audit trail.

One source of truth, chosen explicitly:

* Until ``cal-agent inventory import`` has run once, the register *is* the YAML file named by
  ``inventory:``; it is read on every run and the commands that change assignments refuse (they
  would have nowhere lasting to write).
* ``inventory import`` copies the file into the database.  From then on the database is the
  register: ``assign``, ``release``, ``transfer`` and ``plan --apply`` change it, each leaving a
  RegisterEvent (who, when, what, why) that is never updated or deleted.  The file is no longer
  read by runs; when it differs from the register, runs say so (a warning and the report's
  ``inventory.file_differs``) instead of silently following either.
* Importing again is idempotent: new purchases and assignments are added; a purchase whose fields
  differ is a conflict that changes nothing unless ``--update`` is given; assignments that exist
  only in the database are kept (listed, never released by an import).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import func, or_, select

from agent.errors import InventoryError, RegisterError
from agent.inventory.catalog import Catalog, Product
from agent.inventory.register import (
    TRANSFER_REASONS,
    Assignment,
    Inventory,
    ProductEntry,
    Purchase,
    Transfer,
    check_evidence,
    load_inventory,
    load_yaml,
    parse_inventory,
)
from agent.store.db import Store
from agent.store.models import RegisterAssignment, RegisterEvent, RegisterProduct, RegisterPurchase


def principal_key(name: str) -> str:
    return name.strip().lower().removesuffix("$")


def _purchase_data(p: Purchase) -> dict[str, Any]:
    return p.model_dump(mode="json", exclude_none=True)


@dataclass
class ImportResult:
    source: str
    products_added: list[str] = field(default_factory=list)
    purchases_added: list[str] = field(default_factory=list)
    purchases_updated: list[str] = field(default_factory=list)
    assignments_added: int = 0
    transfers_added: int = 0
    unchanged: int = 0
    only_in_database: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.products_added or self.purchases_added or self.purchases_updated
                    or self.assignments_added or self.transfers_added)


@dataclass(frozen=True)
class Outcome:
    """What a register command did, and what the admin should know about it."""

    message: str
    warnings: tuple[str, ...] = ()


class Ledger:
    def __init__(self, store: Store, *, actor: str) -> None:
        self.store = store
        self.actor = actor

    # ------------------------------------------------------------------ reading

    def initialised(self) -> bool:
        with self.store.session() as session:
            return session.scalar(select(func.count()).select_from(RegisterEvent)
                                  .where(RegisterEvent.action == "import")) > 0

    def load(self, *, catalog: Catalog | None = None, evidence_dir: Path | None = None) -> Inventory:
        catalog = catalog or Catalog()
        with self.store.session() as session:
            products = [ProductEntry.model_validate(row.data) for row in session.scalars(
                select(RegisterProduct).order_by(RegisterProduct.key))]
            purchases = [Purchase.model_validate(row.data) for row in session.scalars(
                select(RegisterPurchase).order_by(RegisterPurchase.id))]
            rows = list(session.scalars(select(RegisterAssignment).order_by(RegisterAssignment.id)))
        by_id = {row.id: row for row in rows}
        assignments = [Assignment(purchase=r.purchase_id, principal=r.principal, directory=r.directory,
                                  assigned_on=r.assigned_on, notes=r.notes)
                       for r in rows if r.released_on is None]
        transfers = [Transfer(purchase=r.purchase_id, from_principal=r.principal,
                              to_principal=by_id[r.moved_to].principal, on=r.released_on,
                              reason=r.release_reason if r.release_reason in TRANSFER_REASONS else "other",
                              from_since=r.assigned_on)
                     for r in rows if r.moved_to is not None and r.moved_to in by_id and r.released_on]
        catalog = catalog.extended(Product(p.key, p.name, vendor=p.vendor, kind=p.kind, cal_types=tuple(p.cal_types),
                                           base=p.base, includes=tuple(p.includes)) for p in products)
        inventory = Inventory(tuple(purchases), tuple(assignments), catalog, source="database register",
                              transfers=tuple(transfers))
        return check_evidence(inventory, evidence_dir)

    def export(self) -> dict[str, Any]:
        """The register as an inventory file (re-importing it changes nothing)."""
        with self.store.session() as session:
            products = [row.data for row in session.scalars(select(RegisterProduct).order_by(RegisterProduct.key))]
            purchases = [row.data for row in session.scalars(select(RegisterPurchase).order_by(RegisterPurchase.id))]
            rows = list(session.scalars(select(RegisterAssignment).order_by(RegisterAssignment.id)))
        by_id = {row.id: row for row in rows}
        out: dict[str, Any] = {}
        if products:
            out["products"] = products
        out["purchases"] = purchases
        out["assignments"] = [
            {k: v for k, v in (("purchase", r.purchase_id), ("principal", r.principal), ("directory", r.directory),
                               ("assigned_on", r.assigned_on), ("notes", r.notes)) if v is not None}
            for r in sorted(rows, key=lambda r: (r.purchase_id, r.assigned_on or date.min, r.principal_key))
            if r.released_on is None
        ]
        transfers = [
            {k: v for k, v in (("purchase", r.purchase_id), ("from", r.principal), ("to", by_id[r.moved_to].principal),
                               ("on", r.released_on), ("reason", r.release_reason or "other"),
                               ("from_since", r.assigned_on)) if v is not None}
            for r in rows if r.moved_to in by_id and r.released_on
        ]
        if transfers:
            out["transfers"] = sorted(transfers, key=lambda t: (t["on"], t["purchase"], t["from"]))
        return out

    def history(self, subject: str | None = None) -> list[dict[str, Any]]:
        with self.store.session() as session:
            query = select(RegisterEvent).order_by(RegisterEvent.id)
            if subject:
                key = principal_key(subject)
                query = query.where(or_(RegisterEvent.purchase_id == subject, RegisterEvent.principal_key == key,
                                        RegisterEvent.to_principal_key == key))
            return [{"id": e.id, "at": e.at, "actor": e.actor, "action": e.action, "purchase": e.purchase_id,
                     "principal": e.principal_key, "to": e.to_principal_key, "reason": e.reason,
                     "details": e.details or {}} for e in session.scalars(query)]

    # ------------------------------------------------------------------ import

    def import_file(self, path: Path, *, update: bool = False, now: datetime | None = None) -> ImportResult:
        now = now or datetime.now(timezone.utc)
        inventory = load_inventory(path)  # every file problem, with its path, before touching anything

        raw = load_yaml(path.read_text(encoding="utf-8")) or {}
        result = ImportResult(source=str(path))
        problems: list[str] = []
        with self.store.session() as session:
            for i, entry in enumerate(raw.get("products") or []):
                product = ProductEntry.model_validate(entry)
                data = product.model_dump(mode="json")
                row = session.get(RegisterProduct, product.key)
                if row is None:
                    session.add(RegisterProduct(key=product.key, data=data))
                    result.products_added.append(product.key)
                elif row.data != data:
                    problems.append(f"products[{i}] ({product.key}): differs from the register")
                else:
                    result.unchanged += 1
            for i, purchase in enumerate(inventory.purchases):
                data = _purchase_data(purchase)
                row = session.get(RegisterPurchase, purchase.id)
                if row is None:
                    session.add(RegisterPurchase(id=purchase.id, data=data))
                    self._event(session, now, "add_purchase", purchase=purchase.id, reason="import",
                                details={"purchase": data})
                    result.purchases_added.append(purchase.id)
                elif row.data != data:
                    changed = sorted(k for k in set(row.data) | set(data) if row.data.get(k) != data.get(k))
                    if not update:
                        problems.append(f"purchases[{i}] ({purchase.id}): {', '.join(changed)} differ from the "
                                        "register (use --update to apply the file's values)")
                        continue
                    self._event(session, now, "update_purchase", purchase=purchase.id, reason="import --update",
                                details={"before": {k: row.data.get(k) for k in changed},
                                         "after": {k: data.get(k) for k in changed}})
                    row.data = data
                    result.purchases_updated.append(purchase.id)
                else:
                    result.unchanged += 1
            session.flush()
            active = {(r.purchase_id, r.principal_key, r.directory): r for r in session.scalars(
                select(RegisterAssignment).where(RegisterAssignment.released_on.is_(None)))}
            in_file = set()
            for a in inventory.assignments:
                key = (a.purchase, principal_key(a.principal), a.directory)
                in_file.add(key)
                if key in active:
                    result.unchanged += 1
                    continue
                row = RegisterAssignment(purchase_id=a.purchase, principal=a.principal, principal_key=key[1],
                                         directory=a.directory, assigned_on=a.assigned_on, notes=a.notes)
                session.add(row)
                active[key] = row
                self._event(session, now, "assign", purchase=a.purchase, principal=a.principal, reason="import",
                            details={"assigned_on": a.assigned_on.isoformat() if a.assigned_on else None})
                result.assignments_added += 1
            session.flush()
            moved = {(r.purchase_id, r.principal_key, r.released_on, r.moved_to) for r in session.scalars(
                select(RegisterAssignment).where(RegisterAssignment.moved_to.is_not(None)))}
            rows_by_principal: dict[tuple[str, str], list[RegisterAssignment]] = {}
            for r in session.scalars(select(RegisterAssignment)):
                rows_by_principal.setdefault((r.purchase_id, r.principal_key), []).append(r)
            for i, t in enumerate(sorted(inventory.transfers, key=lambda t: t.on)):
                receivers = rows_by_principal.get((t.purchase, principal_key(t.to_principal)), [])
                if not receivers:
                    problems.append(f"transfers ({t.purchase} {t.from_principal} -> {t.to_principal}): "
                                    f"{t.to_principal} holds no seat of {t.purchase} in the register or the file")
                    continue
                receiver = receivers[-1]
                if (t.purchase, principal_key(t.from_principal), t.on, receiver.id) in moved:
                    result.unchanged += 1
                    continue
                session.add(RegisterAssignment(
                    purchase_id=t.purchase, principal=t.from_principal, principal_key=principal_key(t.from_principal),
                    assigned_on=t.from_since, released_on=t.on, release_reason=t.reason, moved_to=receiver.id,
                    notes=t.notes))
                self._event(session, now, "transfer", purchase=t.purchase, principal=t.from_principal,
                            to=t.to_principal, reason=t.reason, details={"on": t.on.isoformat(), "import": True})
                result.transfers_added += 1
            result.only_in_database = sorted(f"{p} {r.principal}" for (p, _k, _d), r in active.items()
                                             if (p, _k, _d) not in in_file)
            if problems:
                raise InventoryError(problems, source=f"{path} (import: nothing was changed)")
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            self._event(session, now, "import", reason=str(path),
                        details={"sha256": digest, "purchases_added": len(result.purchases_added),
                                 "purchases_updated": len(result.purchases_updated),
                                 "assignments_added": result.assignments_added,
                                 "transfers_added": result.transfers_added})
        return result

    def file_differs(self, path: Path) -> bool:
        """Does the inventory file say something the register does not (or the reverse)?"""
        try:
            file_inventory = load_inventory(path)
        except InventoryError:
            return True
        register = self.load()
        def purchases(inv: Inventory) -> dict[str, dict]:
            return {p.id: _purchase_data(p) for p in inv.purchases}
        def seats(inv: Inventory) -> set[tuple]:
            return {(a.purchase, principal_key(a.principal), a.directory) for a in inv.assignments}
        return purchases(file_inventory) != purchases(register) or seats(file_inventory) != seats(register)

    # ------------------------------------------------------------------ changes

    def assign(self, purchase_id: str, principal: str, *, on: date, reason: str | None, directory: str | None = None,
               now: datetime | None = None) -> Outcome:
        now = now or datetime.now(timezone.utc)
        with self.store.session() as session:
            purchase = self._purchase(session, purchase_id)
            key = principal_key(principal)
            if self._active(session, purchase_id, key, directory) is not None:
                raise RegisterError(f"{principal} already holds a seat of {purchase_id}")
            used = self._used(session, purchase_id)
            session.add(RegisterAssignment(purchase_id=purchase_id, principal=principal.strip().removesuffix("$"),
                                           principal_key=key, directory=directory, assigned_on=on))
            self._event(session, now, "assign", purchase=purchase_id, principal=principal, reason=reason,
                        details={"assigned_on": on.isoformat()})
        warnings = []
        if used + 1 > purchase.quantity:
            # Recorded, never refused: the register must show what really happened.
            warnings.append(f"{purchase_id} now has {used + 1} assignments for {purchase.quantity} seats "
                            "(over-assigned)")
        return Outcome(f"assigned a seat of {purchase_id} to {principal}", tuple(warnings))

    def release(self, purchase_id: str, principal: str, *, on: date, reason: str, why: str = "other",
                now: datetime | None = None) -> Outcome:
        now = now or datetime.now(timezone.utc)
        with self.store.session() as session:
            self._purchase(session, purchase_id)
            row = self._active(session, purchase_id, principal_key(principal), None, any_directory=True)
            if row is None:
                raise RegisterError(f"{principal} holds no seat of {purchase_id}")
            row.released_on, row.release_reason = on, why
            self._event(session, now, "release", purchase=purchase_id, principal=principal, reason=reason,
                        details={"released_on": on.isoformat(), "why": why})
        return Outcome(f"released {principal}'s seat of {purchase_id}")

    def transfer(self, purchase_id: str, source: str, target: str, *, on: date, reason: str, why: str = "other",
                 min_days: int = 90, now: datetime | None = None) -> Outcome:
        now = now or datetime.now(timezone.utc)
        if why not in TRANSFER_REASONS:
            raise RegisterError(f"--why must be one of {', '.join(TRANSFER_REASONS)}")
        with self.store.session() as session:
            self._purchase(session, purchase_id)
            row = self._active(session, purchase_id, principal_key(source), None, any_directory=True)
            if row is None:
                raise RegisterError(f"{source} holds no seat of {purchase_id}")
            if self._active(session, purchase_id, principal_key(target), None, any_directory=True) is not None:
                raise RegisterError(f"{target} already holds a seat of {purchase_id}")
            new = RegisterAssignment(purchase_id=purchase_id, principal=target.strip().removesuffix("$"),
                                     principal_key=principal_key(target), directory=row.directory, assigned_on=on)
            session.add(new)
            session.flush()
            row.released_on, row.release_reason, row.moved_to = on, why, new.id
            held_days = (on - row.assigned_on).days if row.assigned_on else None
            self._event(session, now, "transfer", purchase=purchase_id, principal=source, to=target, reason=reason,
                        details={"on": on.isoformat(), "why": why, "held_days": held_days})
        warnings = []
        if held_days is not None and held_days < min_days and why == "other":
            warnings.append(f"{source} held this seat for {held_days} days: moving it before {min_days} days is "
                            "allowed only when the holder left, the hardware failed or it covers an absence (R06); "
                            "it will be reported as premature_reassignment")
        return Outcome(f"moved a seat of {purchase_id} from {source} to {target}", tuple(warnings))

    # ------------------------------------------------------------------ helpers

    def _purchase(self, session, purchase_id: str) -> Purchase:
        row = session.get(RegisterPurchase, purchase_id)
        if row is None:
            raise RegisterError(f"no purchase with id {purchase_id!r} in the register")
        return Purchase.model_validate(row.data)

    def _active(self, session, purchase_id: str, key: str, directory: str | None, *, any_directory: bool = False):
        query = select(RegisterAssignment).where(RegisterAssignment.purchase_id == purchase_id,
                                                 RegisterAssignment.principal_key == key,
                                                 RegisterAssignment.released_on.is_(None))
        if not any_directory:
            query = query.where(RegisterAssignment.directory.is_(None) if directory is None
                                else RegisterAssignment.directory == directory)
        return session.scalars(query.order_by(RegisterAssignment.id)).first()

    def _used(self, session, purchase_id: str) -> int:
        return session.scalar(select(func.count()).select_from(RegisterAssignment).where(
            RegisterAssignment.purchase_id == purchase_id, RegisterAssignment.released_on.is_(None)))

    def _event(self, session, now: datetime, action: str, *, purchase: str | None = None, principal: str | None = None,
               to: str | None = None, reason: str | None = None, details: dict | None = None) -> None:
        session.add(RegisterEvent(at=now, actor=self.actor, action=action, purchase_id=purchase,
                                  principal_key=principal_key(principal) if principal else None,
                                  to_principal_key=principal_key(to) if to else None, reason=reason,
                                  details=details))

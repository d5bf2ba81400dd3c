"""Register policies as a plan: which seats to reclaim and which to hand out.  Pure: findings and
the inventory in, frozen changes out; ``cal-agent plan`` prints them, ``plan --apply`` records them.

* reclaim: seats held by principals that departed (disabled, expired, inactive, deleted, missing)
  at least ``reclaim_after_days`` ago.  Departure is a lawful reason to reassign a seat early (R06).
* auto_assign: free seats to unlicensed principals, from a purchase that covers the need (product or
  suite, version, CAL type, not expired), seats reclaimed by this plan included.  The lowest
  covering version and the oldest purchase go first, so newer CALs stay for the servers that need them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import date

from agent.compliance import model as m
from agent.compliance.model import Reconciliation
from agent.config import PoliciesConfig
from agent.inventory.register import Inventory, Purchase
from agent.inventory.versions import parse_version, version_covers


@dataclass(frozen=True, slots=True)
class Change:
    action: str  # release | assign
    purchase: str
    principal: str
    directory: str | None
    reason: str
    why: str = "other"  # for releases: departed | other

    def describe(self) -> str:
        verb = "release" if self.action == "release" else "assign"
        where = f" ({self.directory})" if self.directory else ""
        arrow = "from" if self.action == "release" else "to"
        return f"{verb} a seat of {self.purchase} {arrow} {self.principal}{where}: {self.reason}"


def plan(result: Reconciliation, inventory: Inventory, policies: PoliciesConfig, *, today: date) -> tuple[Change, ...]:
    changes: list[Change] = []
    used = Counter(a.purchase for a in inventory.assignments)
    if policies.reclaim:
        for f in result.findings:
            if f.kind != m.STALE_ASSIGNMENT or f.principal is None or f.purchase is None:
                continue
            days = (today - f.since.date()).days if f.since else None
            if days is None or days < policies.reclaim_after_days:
                continue
            changes.append(Change("release", f.purchase, f.principal.name, None,
                                  f"{f.principal.name} is {f.reason} since {f.since:%Y-%m-%d} ({days} days)",
                                  why="departed"))
            used[f.purchase] -= 1
    if policies.auto_assign:
        candidates = sorted((p for p in inventory.purchases if p.valid_on(today)),
                            key=lambda p: (parse_version(p.version), p.purchased_on or date.min, p.id))
        unlicensed = sorted((f for f in result.findings
                             if f.kind in (m.UNLICENSED_USER, m.UNLICENSED_DEVICE) and f.principal is not None),
                            key=lambda f: (f.principal.directory or "", f.principal.name.lower(), f.product or ""))
        for f in unlicensed:
            chosen = _first_free(candidates, used, inventory, f.product, f.version, f.cal_type)
            if chosen is None:
                continue
            used[chosen.id] += 1
            changes.append(Change("assign", chosen.id, f.principal.name, f.principal.directory,
                                  f"{f.principal.name} needs {inventory.catalog.name(f.product)} {f.version} "
                                  f"({f.cal_type}); {chosen.id} has a free seat"))
    return tuple(changes)


def _first_free(candidates: list[Purchase], used: Counter, inventory: Inventory, product: str | None,
                version: str | None, cal_type: str | None) -> Purchase | None:
    # The product itself before a suite that includes it: a suite seat carries rights worth keeping.
    for exact in (True, False):
        for p in candidates:
            if ((p.product == product) is exact and p.cal_type == cal_type and product and version
                    and inventory.catalog.grants(p.product, product) and version_covers(p.version, version)
                    and used[p.id] < p.quantity):
                return p
    return None

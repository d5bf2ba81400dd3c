"""Reconcile: who needs what (wanted) against what is owned and assigned (diff).

``reconcile`` is a pure function: plain data in, a frozen ``Reconciliation`` out, same output for
the same input (findings are sorted).  It reads nothing and writes nothing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from itertools import chain
from dataclasses import dataclass
from datetime import date, datetime, time, timezone

from agent.compliance import model as m
from agent.compliance.model import (
    DirectoryView,
    Finding,
    Principal,
    PrincipalKey,
    PrincipalRef,
    ProductLine,
    Reconciliation,
)
from agent.config import ExemptConfig, Requirement, RulesConfig, Selector
from agent.directory.decode import dn_key, key_is_under
from agent.inventory.register import LAWFUL_EARLY_REASONS, Assignment, Inventory, Purchase
from agent.inventory.versions import normalise_version, parse_version, version_covers
from agent.store.models import PrincipalState

_KIND_FOR_CAL_TYPE = {"user": "user", "device": "computer"}
# The state values as plain strings: an enum member's .value is a descriptor call, and the loops
# below test a state per principal, hundreds of thousands of times.
_ACTIVE = PrincipalState.ACTIVE.value
_GONE = (PrincipalState.DELETED.value, PrincipalState.MISSING.value)
_STALE_STATES = {
    PrincipalState.DISABLED.value,
    PrincipalState.EXPIRED.value,
    PrincipalState.INACTIVE.value,
    PrincipalState.DELETED.value,
    PrincipalState.MISSING.value,
}


@dataclass(frozen=True, slots=True, eq=False)
class Need:
    """A ``product`` CAL of at least ``version`` and type ``cal_type``, needed for
    ``requirements``.  One object per distinct need (``wanted`` makes each once), shared by
    every principal that has it: compared and hashed by identity."""

    product: str
    version: str
    cal_type: str
    requirements: tuple[str, ...]


Needs = dict[PrincipalKey, tuple[Need, ...]]  # each principal's needs, one per (product, cal_type)


def _folded(text: str) -> str:
    """``text.lower()``, as the same object when it is lower-case already (most account names):
    the index and the sorts keep one per principal, 125,000 copies otherwise."""
    low = text.lower()
    return text if low == text else low


class _Index:
    """Look-ups over a DirectoryView: by key, by name, by DN, and the membership graph."""

    def __init__(self, view: DirectoryView) -> None:
        self.by_key: dict[PrincipalKey, Principal] = {p.key: p for p in view.principals}
        # By lower-cased name: the principal itself, or a tuple of those sharing the name (other
        # kinds, other directories).  Not a list per name: 125,000 lists were ~20 MB.
        self._by_name: dict[str, Principal | tuple[Principal, ...]] = {}
        self.by_dn: dict[tuple[str, str], Principal] = {}  # groups only
        by_name = self._by_name
        for p in view.principals:
            name = _folded(p.name)
            found = by_name.get(name)
            by_name[name] = p if found is None else (*found, p) if type(found) is tuple else (found, p)
            if p.kind == "group" and p.state not in _GONE:
                self.by_dn[(p.directory, p.dn_key)] = p  # requirements name groups by DN
        self.children: dict[PrincipalKey, list[PrincipalKey]] = defaultdict(list)
        for group, member in view.memberships:
            self.children[group].append(member)
        self.directories = tuple(sorted({p.directory for p in view.principals} | set(view.directories)))
        self._tuples: dict[tuple, tuple] = {}

    def named(self, kind: str, name: str) -> list[Principal]:
        """The principals of ``kind`` called ``name`` (lower-cased), in every directory."""
        found = self._by_name.get(name)
        if found is None:
            return []
        if type(found) is not tuple:
            return [found] if found.kind == kind else []
        return [p for p in found if p.kind == kind]

    def shared(self, value: tuple) -> tuple:
        """One object per distinct tuple: most principals hold and need the same few things."""
        return self._tuples.setdefault(value, value)

    def groups_named(self, ref: str, directory: str | None) -> list[Principal]:
        """A group given by DN or by sAMAccountName (case-insensitive)."""
        dirs = [directory] if directory else list(self.directories)
        if "=" in ref:
            found = [self.by_dn.get((d, dn_key(ref))) for d in dirs]
            return [g for g in found if g is not None]
        return [g for g in self.named("group", ref.lower())
                if (directory is None or g.directory == directory)
                and g.state not in _GONE]

    def transitive_members(self, groups: Iterable[Principal]) -> set[PrincipalKey]:
        """Every principal reachable below the groups (nesting, cycles tolerated)."""
        seen: set[PrincipalKey] = set()
        stack = [g.key for g in groups]
        expanded: set[PrincipalKey] = set()
        while stack:
            group = stack.pop()
            if group in expanded:
                continue
            expanded.add(group)
            for member in self.children.get(group, ()):
                if member not in seen:
                    seen.add(member)
                    stack.append(member)
        return seen


def select_principals(requirement: Requirement, index: _Index, problems: list[Finding]) -> list[Principal]:
    """The active principals a requirement applies to (the *wanted* side)."""
    selector: Selector = requirement.users if requirement.cal_type == "user" else requirement.computers
    kind = _KIND_FOR_CAL_TYPE[requirement.cal_type]
    candidates = [p for p in index.by_key.values()
                  if p.kind == kind and p.state == _ACTIVE
                  and (requirement.directory is None or p.directory == requirement.directory)]
    if selector.ou:
        base = dn_key(selector.ou)
        candidates = [p for p in candidates if key_is_under(p.dn_key, base)]
    if selector.group:
        groups = index.groups_named(selector.group, requirement.directory)
        if not groups:
            problems.append(_unknown_group(requirement, selector.group, "group"))
        members = index.transitive_members(groups)
        candidates = [p for p in candidates if p.key in members]
    for excluded in selector.exclude:
        groups = index.groups_named(excluded, requirement.directory)
        if not groups:
            problems.append(_unknown_group(requirement, excluded, "exclude"))
            continue
        members = index.transitive_members(groups)
        candidates = [p for p in candidates if p.key not in members]
    return candidates


def _unknown_group(requirement: Requirement, group: str, key: str) -> Finding:
    return Finding(
        kind=m.UNKNOWN_GROUP,
        product=requirement.product,
        version=normalise_version(requirement.version),
        cal_type=requirement.cal_type,
        reason=key,
        message=f"requirement {requirement.name!r}: {key} group {group!r} was not found in any directory read, "
        f"so the requirement cannot be judged; check the name (sAMAccountName or DN)",
        details=(("requirement", requirement.name), ("group", group)),
    )


def _exempt_names(product: str, exempt: ExemptConfig | None) -> frozenset[str]:
    """R19: up to two administrators per server product, and service accounts, need no CAL
    (lower-cased names; computers without "$")."""
    if exempt is None:
        return frozenset()
    return frozenset({a.lower() for a in exempt.service_accounts}
                     | {a.lower().removesuffix("$") for a in exempt.admins.get(product, ())})


def wanted(requirements: Sequence[Requirement], index: _Index, problems: list[Finding],
           exempt: ExemptConfig | None = None) -> Needs:
    """Each selected principal's needs: one per (product, cal_type), at the highest version any
    requirement asks, naming every requirement that asks for it (in requirement order).

    The needs are shared objects, and so are the tuples of them: most principals need the same
    few things (100,000 needs of their own, and their keys, were ~20 MB)."""
    needs: Needs = {}
    made: dict[tuple, Need] = {}

    def need(product: str, version: str, cal_type: str, names: tuple[str, ...]) -> Need:
        found = made.get((product, version, cal_type, names))
        if found is None:
            found = made[(product, version, cal_type, names)] = Need(product, version, cal_type, names)
        return found

    for requirement in requirements:
        version = normalise_version(requirement.version)
        rank = parse_version(version)
        product, cal_type, name = requirement.product, requirement.cal_type, requirement.name
        plain = need(product, version, cal_type, (name,))
        exempt_names = _exempt_names(product, exempt)
        for principal in select_principals(requirement, index, problems):
            if exempt_names and principal.name.lower() in exempt_names:
                continue
            current = needs.get(principal.key, ())
            for position, held in enumerate(current):
                if held.product == product and held.cal_type == cal_type:
                    if rank > parse_version(held.version):
                        replaced = need(product, version, cal_type, held.requirements + (name,))
                    elif name not in held.requirements:
                        replaced = need(product, held.version, cal_type, held.requirements + (name,))
                    else:
                        break
                    current = current[:position] + (replaced,) + current[position + 1:]
                    break
            else:
                current = current + (plain,)
            needs[principal.key] = index.shared(current)
    return needs


def _covers(purchase: Purchase, product: str, version: str, cal_type: str, inventory: Inventory, today: date) -> bool:
    return (
        purchase.valid_on(today)
        and purchase.cal_type == cal_type
        and inventory.catalog.grants(purchase.product, product)
        and version_covers(purchase.version, version)
    )


def _cal_label(inventory: Inventory, product: str, version: str, cal_type: str) -> str:
    return f"{inventory.catalog.name(product)} {version} ({cal_type})"


def _a(label: str) -> str:
    return ("an " if label[:1].lower() in "aeiou" else "a ") + label


def reconcile(view: DirectoryView, requirements: Sequence[Requirement], inventory: Inventory, *,
              today: date, exempt: ExemptConfig | None = None, rules: RulesConfig | None = None) -> Reconciliation:
    rules = rules or RulesConfig()
    index = _Index(view)
    findings: list[Finding] = []
    needs = wanted(requirements, index, findings, exempt)

    # Resolve assignments to principals.
    holding: dict[PrincipalKey, list[Purchase]] = defaultdict(list)
    seats_used: dict[str, set[tuple]] = defaultdict(set)
    for assignment in inventory.assignments:
        purchase = inventory.by_id[assignment.purchase]
        seats_used[purchase.id].add((assignment.directory, assignment.principal.lower()))
        holders = _resolve(assignment, purchase, index)
        if holders is None:
            findings.append(_orphan(assignment, purchase))
            continue
        wrong_kind = [h for h in holders if h.kind != _KIND_FOR_CAL_TYPE[purchase.cal_type]]
        for holder in holders:
            if holder in wrong_kind:
                findings.append(Finding(
                    kind=m.TYPE_MISMATCH, product=purchase.product, version=purchase.version,
                    cal_type=purchase.cal_type, principal=holder, purchase=purchase.id,
                    message=f"{purchase.id} is a {purchase.cal_type} CAL but {holder.name} is a {holder.kind}; "
                    f"it licenses nothing",
                ))
                continue
            holding[holder.key].append(purchase)
            if holder.state in _STALE_STATES:
                findings.append(Finding(
                    kind=m.STALE_ASSIGNMENT, product=purchase.product, version=purchase.version,
                    cal_type=purchase.cal_type, principal=holder, purchase=purchase.id,
                    reason=holder.state, since=holder.state_since,
                    message=f"{holder.name} holds a seat of {purchase.id} but is {holder.state}"
                    + (f" since {holder.state_since:%Y-%m-%d}" if holder.state_since else "")
                    + "; release the seat",
                ))
    # Seats per purchase as counts, and each holder's purchases as one tuple shared by every
    # holder of the same ones: the sets and lists were ~15 MB at 50,000 assignments.
    seats = {pid: len(holders) for pid, holders in seats_used.items()}
    del seats_used
    same_purchases: dict[tuple[str, ...], tuple[Purchase, ...]] = {}
    held = {key: same_purchases.setdefault(tuple(p.id for p in purchases), tuple(purchases))
            for key, purchases in holding.items()}
    del same_purchases, holding

    # Unlicensed principals.
    coverage: dict[tuple[str, str, str, str], bool] = {}  # a few purchases against a few needs, 100,000 times

    def covers(purchase: Purchase, need: Need) -> bool:
        slot = (purchase.id, need.product, need.version, need.cal_type)
        found = coverage.get(slot)
        if found is None:
            found = coverage[slot] = _covers(purchase, need.product, need.version, need.cal_type, inventory, today)
        return found

    licensed: dict[tuple[str, str, str], int] = defaultdict(int)
    rows: dict[tuple[str, str, str], int] = defaultdict(int)
    wants: dict[PrincipalKey, tuple[tuple[str, str, str, bool], ...]] = {}  # per principal, for licences
    needs_wording: dict[tuple, tuple[str, tuple]] = {}
    for key, principal_needs in needs.items():
        principal = index.by_key[key]
        purchases = held.get(key, ())
        judged: tuple[tuple[str, str, str, bool], ...] = ()
        for need in principal_needs:
            line = (need.product, need.version, need.cal_type)
            rows[line] += 1
            ok = any(covers(p, need) for p in purchases)
            judged += (index.shared((*line, ok)),)
            if ok:
                licensed[line] += 1
                continue
            too_old = [p for p in purchases if p.cal_type == need.cal_type and p.valid_on(today)
                       and inventory.catalog.grants(p.product, need.product)
                       and not version_covers(p.version, need.version)]
            for p in too_old:
                findings.append(Finding(
                    kind=m.VERSION_MISMATCH, product=need.product, version=need.version, cal_type=need.cal_type,
                    principal=principal, purchase=p.id, reason=p.version,
                    message=f"{principal.name} holds {p.id}, a {p.version} CAL, which does not cover the "
                    f"{need.version} server (R07): assign a {need.version} or later CAL",
                    details=(("held_version", p.version), ("required_version", need.version)),
                ))
            detail = f"; holds only {', '.join(sorted({p.version for p in too_old}))}" if too_old else " and holds none"
            # The same few (line, requirements) for most principals: their wording is made once.
            wording = needs_wording.get((line, need.requirements))
            if wording is None:
                wording = needs_wording[(line, need.requirements)] = (
                    f" needs {_a(_cal_label(inventory, *line))} (requirement {', '.join(need.requirements)})",
                    (("requirements", need.requirements),))
            findings.append(Finding(
                kind=m.UNLICENSED_USER if need.cal_type == "user" else m.UNLICENSED_DEVICE, product=need.product,
                version=need.version, cal_type=need.cal_type, principal=principal,
                message=principal.name + wording[0] + detail, details=wording[1],
            ))
        wants[key] = index.shared(judged)

    findings += _missing_base_cals(needs, held, index, inventory, today)
    del needs  # 100,000 of them: freed before the licences and the sort below need their memory
    products = _product_lines(rows, licensed, seats, inventory, today)
    for line in products:
        if line.shortfall:
            findings.append(Finding(
                kind=m.SHORTFALL, product=line.product, version=line.version, cal_type=line.cal_type,
                message=f"{_cal_label(inventory, line.product, line.version, line.cal_type)}: {line.required} "
                f"required, {line.owned} owned: buy {line.shortfall} more",
                details=(("required", line.required), ("owned", line.owned), ("shortfall", line.shortfall)),
            ))

    for purchase in inventory.purchases:
        used = seats.get(purchase.id, 0)
        if used > purchase.quantity:
            findings.append(Finding(
                kind=m.OVER_ASSIGNED, product=purchase.product, version=purchase.version,
                cal_type=purchase.cal_type, purchase=purchase.id,
                message=f"{purchase.id} has {used} assignments for {purchase.quantity} seats: "
                f"remove {used - purchase.quantity} or buy more",
                details=(("assigned", used), ("quantity", purchase.quantity)),
            ))
    findings += _purchase_dates(inventory, today, rules)
    findings += _evidence(inventory)
    findings += _premature_reassignments(inventory, index, rules)
    findings += _departed_owners(inventory, index)
    findings += _rds_over_issued(view, inventory, today)
    licences = _licence_view(wants, held, index)
    del index, held, wants  # the look-ups (~40 MB at 100,000 principals) go before the sort
    findings = list(set(findings))
    # The order of _finding_order, then by key: sorted by the key first (stable sorts), so the key
    # strings are made for one sort and gone before the other's tuples are.
    findings.sort(key=Finding.key.fget)
    findings.sort(key=_finding_order)
    return Reconciliation(products=products, findings=tuple(findings),
                          licences=licences)


def _licence_view(wants: dict[PrincipalKey, tuple[tuple[str, str, str, bool], ...]],
                  held: dict[PrincipalKey, tuple[Purchase, ...]], index: _Index) -> tuple[m.PrincipalLicences, ...]:
    """Per principal that holds a seat or needs one: what it holds and what it needs."""
    holdings: dict[tuple[str, ...], tuple] = {}  # purchase ids held -> the sorted holds (a few distinct ones)
    out = []
    for key in chain(wants, (key for key in held if key not in wants)):
        purchases = held.get(key, ())
        ids = tuple(p.id for p in purchases)
        holds = holdings.get(ids)
        if holds is None:
            holds = holdings[ids] = tuple(sorted({(p.id, p.product, p.version, p.cal_type) for p in purchases}))
        needed = wants.get(key, ())
        needs = index.shared(needed if len(needed) < 2 else tuple(sorted(needed)))
        out.append(m.PrincipalLicences(index.by_key[key], holds, needs))
    # By (kind, name case-folded, directory), in three stable sorts from the least significant
    # key: one existing string per principal each time instead of a tuple and a lower-cased copy
    # (~15 MB at 100,000 principals).
    out.sort(key=lambda l: l.principal.directory or "")
    out.sort(key=lambda l: _folded(l.principal.name))
    out.sort(key=lambda l: l.principal.kind)
    return tuple(out)


def _holds(purchases: Iterable[Purchase], product: str, cal_type: str, inventory: Inventory, today: date) -> bool:
    return any(p.valid_on(today) and p.cal_type == cal_type and inventory.catalog.grants(p.product, product)
               for p in purchases)


def _missing_base_cals(needs: Needs, held: dict[PrincipalKey, tuple[Purchase, ...]], index: _Index,
                       inventory: Inventory, today: date) -> list[Finding]:
    """R12-R15: an additive CAL needs its base CAL, and access to RDS, RMS, Exchange, SharePoint,
    Skype or SQL Server also needs a Windows Server CAL, for the same principal and CAL type."""
    catalog = inventory.catalog
    out: dict[tuple, Finding] = {}

    def needed(key: PrincipalKey, product: str, cal_type: str) -> bool:
        return any(n.product == product and n.cal_type == cal_type for n in needs.get(key, ()))

    prerequisites: dict[str, tuple[str, ...]] = {}  # per product, made once

    def check(key: PrincipalKey, product: str, cal_type: str, via: str | None) -> None:
        wanted_first = prerequisites.get(product)
        if wanted_first is None:
            spec = catalog.get(product)
            wanted_first = prerequisites[product] = () if spec is None else tuple(dict.fromkeys(
                p for p in (spec.base, spec.layered_on) if p and p != product))
        for prerequisite in wanted_first:
            if needed(key, prerequisite, cal_type):
                continue  # required in its own right: its unlicensed_* finding speaks for it
            if _holds(held.get(key, ()), prerequisite, cal_type, inventory, today):
                continue
            principal = index.by_key[key]
            what = f"holds {via}" if via else f"needs {catalog.name(product)}"
            out.setdefault((key, product, cal_type, prerequisite), Finding(
                kind=m.MISSING_BASE_CAL, product=product, cal_type=cal_type, principal=principal,
                purchase=via, reason=prerequisite,
                message=f"{principal.name} {what} but no {catalog.name(prerequisite)} ({cal_type}): "
                f"{catalog.name(product)} is licensed only on top of it (R12-R15)",
                details=(("requires", prerequisite),),
            ))

    for key, principal_needs in needs.items():
        for need in principal_needs:
            # () once known to have no prerequisite (most needs: Windows Server): no check to make
            if prerequisites.get(need.product) != () and index.by_key[key].state == _ACTIVE:
                check(key, need.product, need.cal_type, None)
    for key, purchases in held.items():
        if index.by_key[key].state != _ACTIVE:
            continue  # a departed holder's seat is a stale_assignment already
        for purchase in purchases:
            if purchase.valid_on(today) and not needed(key, purchase.product, purchase.cal_type):
                check(key, purchase.product, purchase.cal_type, purchase.id)
    return list(out.values())


def _purchase_dates(inventory: Inventory, today: date, rules: RulesConfig) -> list[Finding]:
    """Subscriptions and time-bound purchases: `expired`, or `expiring` at each warning threshold
    (the threshold is part of the finding's identity, so each one is new once)."""
    out = []
    thresholds = sorted(set(rules.expiry_warning_days))
    for p in inventory.purchases:
        if p.expires_on is None:
            continue
        days = (p.expires_on - today).days
        label = f"{p.id} ({inventory.catalog.name(p.product)} {p.version}, {p.quantity} {p.cal_type} seats)"
        if days < 0:
            out.append(Finding(
                kind=m.EXPIRED, product=p.product, version=p.version, cal_type=p.cal_type, purchase=p.id,
                since=datetime.combine(p.expires_on, time(), timezone.utc),
                message=f"{label} expired on {p.expires_on:%Y-%m-%d} and no longer counts as owned: renew it "
                "or remove its assignments",
                details=(("expires_on", p.expires_on.isoformat()),),
            ))
            continue
        crossed = [t for t in thresholds if days <= t]
        if crossed:
            out.append(Finding(
                kind=m.EXPIRING, product=p.product, version=p.version, cal_type=p.cal_type, purchase=p.id,
                reason=str(crossed[0]),
                message=f"{label} expires on {p.expires_on:%Y-%m-%d}, in {days} day{'s' if days != 1 else ''}",
                details=(("expires_on", p.expires_on.isoformat()), ("days_left", days)),
            ))
    return out


def _evidence(inventory: Inventory) -> list[Finding]:
    """R36: an auditor asks for proof of purchase (invoice, MLS, certificate) for every licence."""
    out = []
    for p in inventory.purchases:
        if not p.invoice and not p.evidence:
            reason, why = "none", "has no invoice reference and no evidence document"
        elif p.id in inventory.missing_evidence_files:
            reason, why = "file_not_found", f"names evidence {p.evidence!r}, which does not exist"
        else:
            continue
        out.append(Finding(
            kind=m.MISSING_EVIDENCE, product=p.product, version=p.version, cal_type=p.cal_type, purchase=p.id,
            reason=reason, message=f"{p.id} {why}: add the proof of purchase before an audit",
        ))
    return out


def _principal_named(index: _Index, name: str, kinds: Sequence[str], directory: str | None = None) -> Principal | None:
    for kind in kinds:
        found = [p for p in index.named(kind, name.lower().removesuffix("$"))
                 if directory is None or p.directory == directory]
        if found:
            return sorted(found, key=lambda p: (p.state != _ACTIVE, p.directory))[0]
    return None


def _departed(principal: Principal | None, on: date) -> bool:
    return (principal is not None and principal.state in _STALE_STATES
            and (principal.state_since is None or principal.state_since.date() <= on))


def _premature_reassignments(inventory: Inventory, index: _Index, rules: RulesConfig) -> list[Finding]:
    """R06: a seat may move to another principal only 90 days after its previous assignment, unless
    the previous holder left, the hardware failed, or it covers an absence."""
    out = []
    arrivals: dict[tuple[str, str], list[date]] = defaultdict(list)  # (purchase, principal) -> days it arrived
    for t in sorted(inventory.transfers, key=lambda t: (t.on, t.purchase, t.from_principal.lower())):
        held_since = max((d for d in arrivals[(t.purchase, t.from_principal.lower())] if d <= t.on),
                         default=t.from_since)
        arrivals[(t.purchase, t.to_principal.lower())].append(t.on)
        if held_since is None or t.reason in LAWFUL_EARLY_REASONS:
            continue
        held_days = (t.on - held_since).days
        if held_days >= rules.reassignment_min_days:
            continue
        purchase = inventory.by_id.get(t.purchase)
        kinds = ("user",) if purchase is None or purchase.cal_type == "user" else ("computer",)
        previous = _principal_named(index, t.from_principal, kinds)
        if _departed(previous, t.on):
            continue
        target = _principal_named(index, t.to_principal, kinds)
        ref = target if target else PrincipalRef(kind=kinds[0], name=t.to_principal, directory=None)
        out.append(Finding(
            kind=m.PREMATURE_REASSIGNMENT, product=purchase.product if purchase else None,
            version=purchase.version if purchase else None, cal_type=purchase.cal_type if purchase else None,
            principal=ref, purchase=t.purchase, reason=t.reason,
            since=datetime.combine(t.on, time(), timezone.utc),
            message=f"a seat of {t.purchase} moved from {t.from_principal} to {t.to_principal} on {t.on:%Y-%m-%d}, "
            f"{held_days} days after {t.from_principal} got it; reassignment is allowed after "
            f"{rules.reassignment_min_days} days unless the holder left, the hardware failed or it covers an "
            "absence (R06)",
            details=(("from", t.from_principal), ("to", t.to_principal), ("on", t.on.isoformat()),
                     ("held_since", held_since.isoformat()), ("held_days", held_days)),
        ))
    return out


def _departed_owners(inventory: Inventory, index: _Index) -> list[Finding]:
    """A licence activated on a vendor portal under a person's account is lost with that account."""
    out = []
    for p in inventory.purchases:
        if not p.owner:
            continue
        owner = _principal_named(index, p.owner, ("user",))
        if owner is not None and owner.state == _ACTIVE:
            continue
        state = owner.state if owner else "not_found"
        what = f"is {owner.state}" if owner else "is not in the directory"
        out.append(Finding(
            kind=m.OWNER_DEPARTED, product=p.product, version=p.version, cal_type=p.cal_type, purchase=p.id,
            principal=owner if owner else PrincipalRef(kind="user", name=p.owner, directory=None),
            reason=state, since=owner.state_since if owner else None,
            message=f"{p.id} is held by the account {p.owner}, which {what}"
            + (f" (activated on the vendor's portal)" if p.activation == "vendor_portal" else "")
            + ": move the licence to a service or team account before access is lost",
        ))
    return out


def _rds_over_issued(view: DirectoryView, inventory: Inventory, today: date) -> list[Finding]:
    """R25/R27: per-user RDS CALs are not enforced; the licence server records each one it issues on
    the user (msTSExpireDate, msTSLicenseVersion).  More unexpired ones of a version than purchased
    RDS user CALs of that version is over-issue."""
    # Licence servers write the CAL generation ("2008" for the 2008/2008 R2 CAL), purchases may say
    # "2008 R2": compare the release numbers and ignore the R2 mark.
    issued: dict[str, set[PrincipalKey]] = defaultdict(set)
    for principal in view.principals:
        for cal in principal.rds_cals:
            if cal.version and (cal.expires is None or cal.expires.date() >= today):
                issued[normalise_version(cal.version).removesuffix(" R2")].add(principal.key)
    out = []
    for version, holders in sorted(issued.items()):
        owned = sum(p.quantity for p in inventory.purchases
                    if p.product == "rds" and p.cal_type == "user" and p.valid_on(today)
                    and parse_version(p.version)[0] == parse_version(version)[0])
        if len(holders) > owned:
            out.append(Finding(
                kind=m.RDS_OVER_ISSUED, product="rds", version=version, cal_type="user",
                message=f"the RD licence servers issued {len(holders)} per-user RDS {version} CALs but {owned} are "
                f"owned: buy {len(holders) - owned} more or revoke (R25)",
                details=(("issued", len(holders)), ("owned", owned)),
            ))
    return out


def _resolve(assignment: Assignment, purchase: Purchase, index: _Index) -> list[Principal] | None:
    """The principal(s) an assignment names: by the kind its CAL type implies, else any kind."""
    name = assignment.principal.lower()
    wanted_kind = _KIND_FOR_CAL_TYPE[purchase.cal_type]
    for kind in (wanted_kind, *(k for k in ("user", "computer") if k != wanted_kind)):
        found = [p for p in index.named(kind, name)
                 if assignment.directory is None or p.directory == assignment.directory]
        if found:
            return found
    return None


def _orphan(assignment: Assignment, purchase: Purchase) -> Finding:
    kind = _KIND_FOR_CAL_TYPE[purchase.cal_type]
    return Finding(
        kind=m.ORPHAN_ASSIGNMENT, product=purchase.product, version=purchase.version, cal_type=purchase.cal_type,
        principal=PrincipalRef(kind=kind, name=assignment.principal, directory=assignment.directory),
        purchase=purchase.id,
        message=f"{purchase.id} is assigned to {assignment.principal!r}, a name never seen in the directory; "
        "fix the name or release the seat",
    )


def _product_lines(rows: dict[tuple[str, str, str], int], licensed: dict[tuple[str, str, str], int],
                   seats: dict[str, int], inventory: Inventory, today: date) -> tuple[ProductLine, ...]:
    """Per product/version/type: required vs owned.  A newer CAL may serve an older requirement,
    so within a product and CAL type the rows are filled most demanding version first; each row's
    `owned` is what is left for it (the eligible sets are nested, so this greedy fill is optimal).

    `assigned` counts the seats handed out (stale ones included) of the purchases whose home is the
    row: the most demanding row the purchase covers, or its own row when it covers none.  Of
    equally demanding rows (a CAL suite covering Windows Server 2019 and Exchange 2019), the
    purchase's own product's, else the first product the suite includes (Windows Server first):
    the same whatever order the rows were met in."""
    keys = set(rows)
    home: dict[tuple[str, str, str], int] = defaultdict(int)
    for p in inventory.purchases:
        if not p.valid_on(today):
            continue
        covered = [key for key in rows if _covers(p, *key, inventory, today)]
        if covered:
            most = max(parse_version(k[1]) for k in covered)
            spec = inventory.catalog.get(p.product)
            includes = spec.includes if spec is not None else ()

            def preference(k: tuple[str, str, str]) -> tuple:
                return (k[0] != p.product, includes.index(k[0]) if k[0] in includes else len(includes), k)

            key = min((k for k in covered if parse_version(k[1]) == most), key=preference)
        else:
            key = (p.product, p.version, p.cal_type)
            keys.add(key)
        home[key] += seats.get(p.id, 0)
    lines: list[ProductLine] = []
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for product, version, cal_type in keys:
        groups[(product, cal_type)].append(version)
    for (product, cal_type), versions in groups.items():
        consumed = 0
        for version in sorted(versions, key=parse_version, reverse=True):
            eligible = sum(p.quantity for p in inventory.purchases
                           if _covers(p, product, version, cal_type, inventory, today))
            owned = max(0, eligible - consumed)
            required = rows.get((product, version, cal_type), 0)
            consumed += min(required, owned)
            lines.append(ProductLine(product=product, product_name=inventory.catalog.name(product),
                                     version=version, cal_type=cal_type, required=required, owned=owned,
                                     assigned=home.get((product, version, cal_type), 0),
                                     licensed=licensed.get((product, version, cal_type), 0)))
    return tuple(sorted(lines, key=lambda l: (l.product, l.cal_type, parse_version(l.version))))


_SEVERITY_ORDER = {m.ERROR: 0, m.WARNING: 1}


def _finding_order(f: Finding):
    """Errors first, then by what the finding is about; ties by key (a sort before this one)."""
    return (_SEVERITY_ORDER.get(f.severity, 2), f.kind, f.product or "", f.version or "", f.cal_type or "",
            f.principal.directory or "" if f.principal else "", _folded(f.principal.name) if f.principal else "",
            f.purchase or "")

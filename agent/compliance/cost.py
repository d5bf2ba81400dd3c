"""Cost advice: the cheapest mix of User and Device CALs for the accesses actually observed.

R04: an access by user *u* from device *d* to a product is licensed when *u* holds a User CAL or
*d* holds a Device CAL for it.  R01: every access must be licensed.  Given the observed access
pairs (from logon events, say), choosing which users and which devices to license is therefore a
vertex cover of the bipartite user–device graph, and the cheapest choice is a *minimum-weight*
vertex cover with weights = unit prices.  Counting users or devices alone is not enough: since 2015
a User CAL costs about 1.3x a Device CAL, so a shared kiosk is cheaper with a Device CAL while a
user with a laptop, a desktop and a phone is cheaper with a User CAL, and real prices decide the
cases in between.

On a bipartite graph that problem is solved exactly, in polynomial time, by a minimum s–t cut
(König/Egerváry): source → user (capacity: user CAL price), user → device (infinite),
device → sink (device CAL price).  A finite cut cannot cut a user → device edge, so for every pair
either the user is on the sink side (its source edge is cut: license the user) or the device is
on the source side (its sink edge is cut: license the device); the cut's capacity is the cover's
cost.  The max-flow is a small Dinic implementation on integer capacities (prices converted to
exact integer minor units): graphs here have at most tens of thousands of edges, which does not
justify a graph library as a dependency.

Everything is pure: plain data in, a frozen ``CostAdvice`` out, the same output for the same
pairs in any order.  The only input handled is the CSV text (or file) the caller gives
``parse_usage_csv`` / ``load_usage_csv``.
"""

from __future__ import annotations

import csv
import io
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from agent.errors import InventoryError

USER = "user"
DEVICE = "device"

_MAX_PROBLEMS = 20  # a wrong file can have a problem on every line; the first few say enough


# ---------------------------------------------------------------------------------------------
# Access pairs and the usage CSV


def normalise_user(name: str) -> str:
    """``CORP\\Alice`` -> ``alice``: the sAMAccountName, lower-cased.

    Logon events and exports write users as ``DOMAIN\\name``; the directory and the CAL register
    know the bare sAMAccountName, compared case-insensitively (as reconcile does)."""
    return name.strip().rsplit("\\", 1)[-1].strip().lower()


def normalise_computer(name: str) -> str:
    """``CORP\\PC01$`` -> ``pc01``: the computer name without domain prefix or trailing ``$``.

    Machine accounts carry a ``$`` in AD and in event logs; the register and the directory reader
    drop it, so the same device is never counted twice."""
    bare = name.strip().rsplit("\\", 1)[-1].strip()
    return bare.removesuffix("$").strip().lower()


@dataclass(frozen=True, slots=True, order=True)
class AccessPair:
    """User ``user`` reached the product from computer ``computer`` (names as the directory has them).

    ``cheapest_mix`` and ``verify_cover`` compare names exactly; build pairs from raw names with
    ``AccessPair.normalised`` (as ``parse_usage_csv`` does) so ``CORP\\Alice`` and ``alice`` meet."""

    user: str
    computer: str

    @classmethod
    def normalised(cls, user: str, computer: str) -> AccessPair:
        """The pair with both names normalised; ValueError names the side that ends up empty."""
        u, c = normalise_user(user), normalise_computer(computer)
        empty = [side for side, value in ((USER, u), ("computer", c)) if not value]
        if empty:
            raise ValueError("empty " + " and ".join(empty))
        return cls(u, c)


def parse_usage_csv(text: str, source: str = "usage") -> list[AccessPair]:
    """The distinct access pairs of a usage CSV, sorted.

    The header must name a ``user`` and a ``computer`` column (any case, any position); other
    columns are ignored, so a raw logon-event export can be used as it is.  Blank lines are
    skipped.  Every bad row is reported at once, by its line number in the file, in one
    ``InventoryError``: advice computed from a partly read file would under-count silently.
    A file with a header and no rows is valid (nothing was accessed); an empty file is not (an
    export that failed usually leaves one).
    """
    problems: list[str] = []
    pairs: set[AccessPair] = set()
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""))
    columns: tuple[int, int] | None = None
    width = 0
    last_line = 0
    try:
        for row in reader:
            line, last_line = last_line + 1, reader.line_num  # a quoted field may span lines
            if not any(cell.strip() for cell in row):
                continue
            if columns is None:
                columns = _header_columns(row, line, source)
                width = len(row)
                continue
            raw_user = row[columns[0]] if columns[0] < len(row) else ""
            raw_computer = row[columns[1]] if columns[1] < len(row) else ""
            try:
                pairs.add(AccessPair.normalised(raw_user, raw_computer))
            except ValueError as exc:
                short = f" (the row has {len(row)} of {width} columns)" if len(row) < width else ""
                problems.append(f"line {line}: {exc}{short}")
    except csv.Error as exc:
        problems.append(f"line {reader.line_num}: not valid CSV: {exc}")
    if columns is None and not problems:
        problems.append("no header line: expected a header with user and computer columns")
    if problems:
        if len(problems) > _MAX_PROBLEMS:
            more = len(problems) - _MAX_PROBLEMS
            problems = problems[:_MAX_PROBLEMS] + [f"... and {more} more rows with problems"]
        raise InventoryError(problems, source=source)
    return sorted(pairs)


def _header_columns(row: list[str], line: int, source: str) -> tuple[int, int]:
    """Positions of the user and computer columns; a header without exactly one of each is fatal
    (no row could be read correctly), so it raises at once."""
    names = [cell.strip().removeprefix("\ufeff").lower() for cell in row]
    problems = []
    found: list[int] = []
    for wanted in (USER, "computer"):
        at = [i for i, name in enumerate(names) if name == wanted]
        if not at:
            problems.append(f"line {line}: no {wanted!r} column (the header has: {', '.join(map(repr, names))})")
        elif len(at) > 1:
            problems.append(f"line {line}: {len(at)} columns named {wanted!r}; keep one")
        else:
            found.append(at[0])
    if problems:
        raise InventoryError(problems, source=source)
    return found[0], found[1]


def load_usage_csv(path: Path | str) -> list[AccessPair]:
    """``parse_usage_csv`` on a file (UTF-8, with or without BOM); unreadable files raise
    ``InventoryError`` naming the path, like the inventory loader."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InventoryError(f"usage file {source} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InventoryError(f"cannot read usage file {source}: {exc}") from None
    return parse_usage_csv(text, source=source)


# ---------------------------------------------------------------------------------------------
# The advice


@dataclass(frozen=True, slots=True)
class CostAdvice:
    """The cheapest way to license ``product`` for the observed accesses, and what it saves.

    ``cost_all_user`` / ``cost_all_device`` are the two single-type strategies an admin would
    otherwise pick (every user that accessed / every device used gets a CAL);
    ``saving_vs_best_single_type`` is what the mix saves against the cheaper of them.  The
    ``currently_*`` counts are the CALs of each type already held, when the caller knows them;
    the ``*_to_buy`` / ``*_surplus`` figures compare them with the advised mix.
    """

    product: str
    users_to_license: tuple[str, ...]
    devices_to_license: tuple[str, ...]
    price_user: Decimal
    price_device: Decimal
    cost: Decimal
    cost_all_user: Decimal
    cost_all_device: Decimal
    best_single_type: str  # "user" | "device"
    best_single_type_cost: Decimal
    saving_vs_best_single_type: Decimal
    users_seen: int
    devices_seen: int
    currently_user: int | None = None
    currently_device: int | None = None

    @property
    def licences(self) -> int:
        return len(self.users_to_license) + len(self.devices_to_license)

    @property
    def user_cals_to_buy(self) -> int | None:
        return None if self.currently_user is None else max(0, len(self.users_to_license) - self.currently_user)

    @property
    def device_cals_to_buy(self) -> int | None:
        return None if self.currently_device is None else max(0, len(self.devices_to_license) - self.currently_device)

    @property
    def user_cals_surplus(self) -> int | None:
        return None if self.currently_user is None else max(0, self.currently_user - len(self.users_to_license))

    @property
    def device_cals_surplus(self) -> int | None:
        return None if self.currently_device is None else max(0, self.currently_device - len(self.devices_to_license))

    @property
    def message(self) -> str:
        """One sentence for the admin: what to license, for how much, against what, and what
        to buy given what is held."""
        if not self.users_seen:
            text = f"{self.product}: no access recorded, so no CALs are needed"
        else:
            what = _what(len(self.users_to_license), len(self.devices_to_license))
            alternative = f"{self.best_single_type} CALs only"
            if self.saving_vs_best_single_type > 0:
                text = (f"{self.product}: license {what} for {_money(self.cost)} instead of "
                        f"{_money(self.best_single_type_cost)} with {alternative}: "
                        f"saves {_money(self.saving_vs_best_single_type)}")
            elif self.users_to_license and self.devices_to_license:
                text = (f"{self.product}: license {what} for {_money(self.cost)}, "
                        f"the same as with {alternative}")
            else:
                other, other_cost = ((DEVICE, self.cost_all_device) if self.best_single_type == USER
                                     else (USER, self.cost_all_user))
                text = (f"{self.product}: {alternative} are cheapest: license {what} for "
                        f"{_money(self.cost)} ({other} CALs only: {_money(other_cost)})")
        return text + self._holding_text()

    def _holding_text(self) -> str:
        parts = []
        for kind, held, buy, surplus in ((USER, self.currently_user, self.user_cals_to_buy, self.user_cals_surplus),
                                         (DEVICE, self.currently_device, self.device_cals_to_buy,
                                          self.device_cals_surplus)):
            if held is None:
                continue
            if buy:
                parts.append(f"buy {buy} {kind} CAL{'s' if buy != 1 else ''}")
            elif surplus:
                parts.append(f"{surplus} {kind} CAL{'s' if surplus != 1 else ''} held but not needed")
            else:
                parts.append(f"the {held} {kind} CAL{'s' if held != 1 else ''} held are enough")
        return "; " + ", ".join(parts) if parts else ""


def cheapest_mix(
    pairs: Iterable[AccessPair],
    price_user: Decimal,
    price_device: Decimal,
    *,
    product: str,
    currently_user: int | None = None,
    currently_device: int | None = None,
) -> CostAdvice:
    """The minimum-cost set of User and Device CALs that licenses every pair (R01, R04).

    Ties are broken so the answer is one an admin would pick and never depends on input order:
    among the cheapest covers, the one with the fewest licences; among those, the one with the
    most User CALs (a User CAL follows the person to any device, a Device CAL does not).

    The count tie-break is folded into the weights (cost x (n + 1) + 1 per licence, n = number of
    vertices: one cent always outweighs any difference in count).  The user preference comes
    from the cut itself: the vertices reachable from the source in the residual graph form the
    *smallest* source side of all minimum cuts, whatever maximum flow was found, so it licenses
    the fewest devices and the most users among the optimal covers.  Names are compared exactly
    (see ``AccessPair.normalised``); a user and a computer with the same name stay two vertices.

    The optimum ignores CALs already held (they are reported against it, not optimised around):
    it answers "what should this estate be licensed with", not "what is the cheapest top-up".
    """
    price_user = _price(price_user, "price_user")
    price_device = _price(price_device, "price_device")
    for name, held in (("currently_user", currently_user), ("currently_device", currently_device)):
        if held is not None and (isinstance(held, bool) or not isinstance(held, int) or held < 0):
            raise ValueError(f"{name} must be a whole number >= 0, not {held!r}")

    distinct = sorted(set(pairs))
    users = sorted({p.user for p in distinct})
    devices = sorted({p.computer for p in distinct})
    chosen_users, chosen_devices = _min_weight_cover(distinct, users, devices, price_user, price_device)

    cost = len(chosen_users) * price_user + len(chosen_devices) * price_device
    cost_all_user = len(users) * price_user
    cost_all_device = len(devices) * price_device
    # Same tie rule as the cover: cheaper, then fewer licences, then user CALs.
    if (cost_all_device, len(devices)) < (cost_all_user, len(users)):
        best, best_cost = DEVICE, cost_all_device
    else:
        best, best_cost = USER, cost_all_user
    return CostAdvice(
        product=product,
        users_to_license=tuple(chosen_users),
        devices_to_license=tuple(chosen_devices),
        price_user=price_user,
        price_device=price_device,
        cost=cost,
        cost_all_user=cost_all_user,
        cost_all_device=cost_all_device,
        best_single_type=best,
        best_single_type_cost=best_cost,
        saving_vs_best_single_type=best_cost - cost,
        users_seen=len(users),
        devices_seen=len(devices),
        currently_user=currently_user,
        currently_device=currently_device,
    )


def verify_cover(pairs: Iterable[AccessPair], users: Iterable[str], devices: Iterable[str]) -> list[AccessPair]:
    """The pairs neither whose user is in ``users`` nor whose computer is in ``devices`` (R01):
    empty when the licences cover every access.  Distinct, sorted; names compared exactly."""
    user_set, device_set = set(users), set(devices)
    return sorted({p for p in pairs if p.user not in user_set and p.computer not in device_set})


# ---------------------------------------------------------------------------------------------
# Internals


def _price(value: Decimal, name: str) -> Decimal:
    """Prices are exact: a binary float cannot hold 0.10, and sums of them drift."""
    if isinstance(value, bool) or not isinstance(value, (Decimal, int)):
        raise TypeError(f"{name} must be a Decimal (or int), not {type(value).__name__}")
    value = Decimal(value)
    if not value.is_finite() or value < 0:
        raise ValueError(f"{name} must be a finite amount >= 0, not {value}")
    return value


def _minor_units(prices: tuple[Decimal, ...]) -> list[int]:
    """Integers proportional to ``prices``, exactly: scaled by 10**(most decimal places)."""
    places = max(0, *(-p.as_tuple().exponent for p in prices))
    return [int(p.scaleb(places)) for p in prices]


def _what(users: int, devices: int) -> str:
    parts = []
    if users:
        parts.append(f"{users:,} user{'s' if users != 1 else ''}")
    if devices:
        parts.append(f"{devices:,} device{'s' if devices != 1 else ''}")
    return " and ".join(parts) or "nothing"


def _money(amount: Decimal) -> str:
    """``4210`` -> ``4,210.00``; more places are kept when a price has them (never rounds)."""
    places = max(2, -amount.normalize().as_tuple().exponent) if amount else 2
    return f"{amount:,.{places}f}"


def _min_weight_cover(
    pairs: list[AccessPair], users: list[str], devices: list[str], price_user: Decimal, price_device: Decimal
) -> tuple[list[str], list[str]]:
    """Users and devices (sorted) of the canonical minimum-weight vertex cover (see cheapest_mix)."""
    if not pairs:
        return [], []
    unit_user, unit_device = _minor_units((price_user, price_device))
    n_users, n_devices = len(users), len(devices)
    scale = n_users + n_devices + 1  # > any count of licences: cost first, then count
    weight_user, weight_device = unit_user * scale + 1, unit_device * scale + 1
    source, sink = n_users + n_devices, n_users + n_devices + 1
    flow = _FlowNetwork(n_users + n_devices + 2)
    infinite = weight_user * n_users + 1  # more than any finite cut (all users' source edges)
    for u in range(n_users):
        flow.add_edge(source, u, weight_user)
    for d in range(n_devices):
        flow.add_edge(n_users + d, sink, weight_device)
    user_at = {name: i for i, name in enumerate(users)}
    device_at = {name: n_users + i for i, name in enumerate(devices)}
    for p in pairs:
        flow.add_edge(user_at[p.user], device_at[p.computer], infinite)
    flow.max_flow(source, sink)
    source_side = flow.reachable(source)
    chosen_users = [name for i, name in enumerate(users) if not source_side[i]]
    chosen_devices = [name for i, name in enumerate(devices) if source_side[n_users + i]]
    return chosen_users, chosen_devices


class _FlowNetwork:
    """Dinic's max-flow on integer capacities, with flat edge arrays (edge e and its reverse e^1).

    On this three-layer unit-depth network each phase is one BFS plus augmenting paths of three
    edges, so it is near-linear in practice; the DFS is iterative (no recursion limit)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.adj: list[list[int]] = [[] for _ in range(n)]
        self.to: list[int] = []
        self.cap: list[int] = []

    def add_edge(self, a: int, b: int, capacity: int) -> None:
        self.adj[a].append(len(self.to))
        self.to.append(b)
        self.cap.append(capacity)
        self.adj[b].append(len(self.to))
        self.to.append(a)
        self.cap.append(0)

    def _levels(self, source: int, sink: int) -> list[int] | None:
        level = [-1] * self.n
        level[source] = 0
        queue = deque([source])
        to, cap, adj = self.to, self.cap, self.adj
        while queue:
            v = queue.popleft()
            for e in adj[v]:
                w = to[e]
                if cap[e] > 0 and level[w] < 0:
                    level[w] = level[v] + 1
                    queue.append(w)
        return level if level[sink] >= 0 else None

    def max_flow(self, source: int, sink: int) -> int:
        to, cap, adj = self.to, self.cap, self.adj
        total = 0
        while (level := self._levels(source, sink)) is not None:
            nxt = [0] * self.n  # per vertex: the next edge worth trying in this phase
            path: list[int] = []
            v = source
            while True:
                if v == sink:
                    pushed = min(cap[e] for e in path)
                    for e in path:
                        cap[e] -= pushed
                        cap[e ^ 1] += pushed
                    total += pushed
                    path.clear()
                    v = source
                    continue
                edges = adj[v]
                i = nxt[v]
                want = level[v] + 1
                while i < len(edges) and not (cap[edges[i]] > 0 and level[to[edges[i]]] == want):
                    i += 1
                nxt[v] = i
                if i < len(edges):
                    path.append(edges[i])
                    v = to[edges[i]]
                elif v == source:
                    break  # blocking flow found
                else:
                    level[v] = -1  # dead end for the rest of this phase
                    v = to[path.pop() ^ 1]
                    nxt[v] += 1
        return total

    def reachable(self, source: int) -> list[bool]:
        """Vertices reachable from ``source`` through edges with capacity left."""
        seen = [False] * self.n
        seen[source] = True
        stack = [source]
        to, cap, adj = self.to, self.cap, self.adj
        while stack:
            v = stack.pop()
            for e in adj[v]:
                w = to[e]
                if cap[e] > 0 and not seen[w]:
                    seen[w] = True
                    stack.append(w)
        return seen

"""The CAL inventory: purchases (what was bought) and assignments (who holds a seat).

Loaded from the inventory YAML file named in the configuration.  Every problem is reported at once
and names its entry (``purchases[3].quantity: ...``); an inventory with problems is never half
used.  The file is the source of truth for now; a database-held register comes later and will
import from it.
"""

from __future__ import annotations

import hashlib

from dataclasses import dataclass
from functools import cached_property
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent.config import format_validation_error
from agent.errors import InventoryError
from agent.inventory.catalog import Catalog, Product
from agent.inventory.versions import normalise_version


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _version(value):
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str):
        return normalise_version(value)
    return value


class ProductEntry(_Strict):
    key: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")]
    name: Annotated[str, Field(min_length=1)]
    vendor: str = "Microsoft"
    kind: Literal["cal", "subscription", "perpetual"] = "cal"
    cal_types: list[Literal["user", "device"]] = ["user", "device"]
    base: str | None = None
    includes: list[str] = []


class Purchase(_Strict):
    id: Annotated[str, Field(min_length=1, max_length=200)]
    product: Annotated[str, Field(min_length=1)]
    version: str
    cal_type: Literal["user", "device"]
    quantity: Annotated[int, Field(ge=0)]
    purchased_on: date | None = None
    invoice: str | None = None
    vendor: str | None = None
    evidence: str | None = None
    expires_on: date | None = None
    notes: str | None = None
    activation: Literal["vendor_portal", "key", "none"] | None = None
    owner: str | None = None  # the account that holds a vendor-portal licence (owner_departed)
    unit_price: Annotated[Decimal, Field(ge=0)] | None = None  # per seat, for cost advice (R04)
    currency: str | None = None

    _v = field_validator("version", mode="before")(lambda cls, v: _version(v))

    def valid_on(self, day: date) -> bool:
        """A purchase counts while it has not expired (subscriptions, time-bound licences)."""
        return self.expires_on is None or self.expires_on >= day


class _AssignmentEntry(_Strict):
    """One ``assignments:`` item as validated; kept as an ``Assignment``."""

    purchase: Annotated[str, Field(min_length=1)]
    principal: Annotated[str, Field(min_length=1)]  # sAMAccountName, or computer name without "$"
    directory: str | None = None  # needed only when several directories share a name
    assigned_on: date | None = None
    notes: str | None = None

    @field_validator("principal")
    @classmethod
    def _strip(cls, value: str) -> str:
        value = value.strip()
        return value[:-1] if value.endswith("$") else value


@dataclass(frozen=True, slots=True)
class Assignment:
    """A seat of a purchase held by a principal.  A register holds tens of thousands, kept between
    cycles: a slots object is ~70 bytes where the validated model was ~550 (25 MB at 50,000)."""

    purchase: str
    principal: str  # as validated: stripped, computers without "$"
    directory: str | None = None
    assigned_on: date | None = None
    notes: str | None = None


LAWFUL_EARLY_REASONS = ("departed", "hardware_failure", "temporary_cover")  # R06 exceptions
TRANSFER_REASONS = (*LAWFUL_EARLY_REASONS, "other")


class Transfer(_Strict):
    """A seat moved from one principal to another (R06: not within 90 days, unless lawful)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    purchase: Annotated[str, Field(min_length=1)]
    from_principal: Annotated[str, Field(min_length=1, alias="from")]
    to_principal: Annotated[str, Field(min_length=1, alias="to")]
    on: date
    reason: Literal["departed", "hardware_failure", "temporary_cover", "other"] = "other"
    from_since: date | None = None  # when the previous holder got the seat, if not in the register
    notes: str | None = None

    @field_validator("from_principal", "to_principal")
    @classmethod
    def _strip(cls, value: str) -> str:
        value = value.strip()
        return value[:-1] if value.endswith("$") else value


class InventoryFile(_Strict):
    products: list[ProductEntry] = []
    purchases: list[Purchase] = []
    assignments: list[_AssignmentEntry] = []
    transfers: list[Transfer] = []


@dataclass(frozen=True)
class Inventory:
    """Everything the rules need to know about what was bought and who holds it.  Built from the
    YAML file or from the database register; the rules cannot tell which."""

    purchases: tuple[Purchase, ...]
    assignments: tuple[Assignment, ...]
    catalog: Catalog
    source: str | None = None
    transfers: tuple[Transfer, ...] = ()
    missing_evidence_files: frozenset[str] = frozenset()  # purchase ids whose evidence file is absent

    def __post_init__(self) -> None:
        object.__setattr__(self, "purchases", tuple(self.purchases))
        object.__setattr__(self, "assignments", tuple(self.assignments))
        object.__setattr__(self, "transfers", tuple(self.transfers))

    @cached_property
    def by_id(self) -> dict[str, Purchase]:
        return {p.id: p for p in self.purchases}


def parse_inventory(data, *, catalog: Catalog | None = None, source: str | None = None) -> Inventory:
    catalog = catalog or Catalog()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InventoryError("the top level must be a mapping with purchases: and assignments:", source=source)
    try:
        parsed = InventoryFile.model_validate(data)
    except ValidationError as exc:
        raise InventoryError(format_validation_error(exc), source=source) from None
    problems: list[str] = []
    extra: list[Product] = []
    for i, p in enumerate(parsed.products):
        if p.key in catalog:
            problems.append(f"products[{i}].key: {p.key!r} is a built-in product; choose another key")
        extra.append(Product(p.key, p.name, vendor=p.vendor, kind=p.kind, cal_types=tuple(p.cal_types),
                             base=p.base, includes=tuple(p.includes)))
    catalog = catalog.extended(extra)
    seen: dict[str, int] = {}
    for i, purchase in enumerate(parsed.purchases):
        where = f"purchases[{i}]"
        if purchase.id in seen:
            problems.append(f"{where}.id: {purchase.id!r} is already used by purchases[{seen[purchase.id]}]")
        else:
            seen[purchase.id] = i
        product = catalog.get(purchase.product)
        if product is None:
            problems.append(f"{where}.product: unknown product {purchase.product!r} "
                            f"(known: {', '.join(sorted(catalog.products))})")
        elif purchase.cal_type not in product.cal_types:
            problems.append(f"{where}.cal_type: {product.key} is not sold as {purchase.cal_type} licences")
        if purchase.expires_on and purchase.purchased_on and purchase.expires_on < purchase.purchased_on:
            problems.append(f"{where}.expires_on: before purchased_on")
    for i, assignment in enumerate(parsed.assignments):
        if assignment.purchase not in seen:
            problems.append(f"assignments[{i}].purchase: no purchase with id {assignment.purchase!r}")
    for i, transfer in enumerate(parsed.transfers):
        if transfer.purchase not in seen:
            problems.append(f"transfers[{i}].purchase: no purchase with id {transfer.purchase!r}")
    if problems:
        raise InventoryError(problems, source=source)
    assignments = tuple(Assignment(a.purchase, a.principal, a.directory, a.assigned_on, a.notes)
                        for a in parsed.assignments)
    return Inventory(tuple(parsed.purchases), assignments, catalog, source=source,
                     transfers=tuple(parsed.transfers))


def evidence_path(evidence: str, base_dir: Path | None) -> Path:
    path = Path(evidence).expanduser()
    return path if path.is_absolute() or base_dir is None else base_dir / path


def check_evidence(inventory: Inventory, base_dir: Path | None) -> Inventory:
    """The I/O half of `missing_evidence`: which evidence documents do not exist (relative paths
    are resolved against the inventory file's folder)."""
    import dataclasses

    missing = frozenset(p.id for p in inventory.purchases
                        if p.evidence and not evidence_path(p.evidence, base_dir).is_file())
    return dataclasses.replace(inventory, missing_evidence_files=missing)


# libyaml's C parser when PyYAML was built with it: an inventory with 50,000 assignments parses
# several times faster (bench/run profiled 55 % of a 100,000-user reconcile in the Python parser).
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(text: str):
    """yaml.safe_load, with the C loader when available (same safe subset, same error marks).

    A document of plain mappings, lists and scalars (every inventory we know of) is built straight
    from the parser's events.  PyYAML first composes a node per value (each with two position
    marks), then constructs the values from the nodes: for 50,000 assignments that tree peaked at
    ~190 MB, and the strings that outlive it kept much of that memory fragmented for good.
    Anchors, aliases, explicit tags, merge keys and several documents are left to PyYAML itself."""
    try:
        return _load_plain(text)
    except _NotPlain:
        pass
    try:
        return yaml.load(text, Loader=_YAML_LOADER)  # noqa: S506 - a SafeLoader
    except ValueError as exc:  # PyYAML's own constructors raise it for dates such as 2024-02-30
        raise yaml.constructor.ConstructorError(problem=str(exc)) from None


class _NotPlain(Exception):
    """The document needs PyYAML's own composer and constructor."""


_DEFAULT_STR = "tag:yaml.org,2002:str"
_NO_KEY = object()


def _load_plain(text: str):
    loader = _YAML_LOADER(text)
    try:
        get, check = loader.get_event, loader.check_event
        get()  # StreamStartEvent
        if check(yaml.StreamEndEvent):
            return None  # empty, or comments only: what yaml.load returns
        get()  # DocumentStartEvent
        value = _plain_node(loader, get)
        get()  # DocumentEndEvent
        if not check(yaml.StreamEndEvent):
            raise _NotPlain  # a second document: PyYAML's own error
        return value
    finally:
        loader.dispose()


def _plain_node(loader, get):
    """The value of the node whose events come next, as SafeLoader constructs it."""
    constructors = loader.yaml_constructors
    stack: list[list] = []  # [container, its pending key (mappings)]
    while True:
        event = get()
        kind = type(event)
        if kind is yaml.ScalarEvent:
            if event.anchor is not None or event.tag not in (None, "!"):
                raise _NotPlain
            tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
            if tag == _DEFAULT_STR:
                value = event.value
            else:
                construct = constructors.get(tag)  # merge keys ("<<") and "=" have none here
                if construct is None:
                    raise _NotPlain
                try:
                    value = construct(loader, yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark,
                                                              event.style))
                except Exception:  # noqa: BLE001 - 2024-02-30, a KeyError for `! "true\n"`: PyYAML
                    raise _NotPlain from None  # says which error comes first in the document
        elif kind is yaml.MappingStartEvent or kind is yaml.SequenceStartEvent:
            if event.anchor is not None or event.tag not in (None, "!"):
                raise _NotPlain
            stack.append([{} if kind is yaml.MappingStartEvent else [], _NO_KEY])
            continue
        elif kind is yaml.MappingEndEvent or kind is yaml.SequenceEndEvent:
            value = stack.pop()[0]
        else:  # an alias
            raise _NotPlain
        if not stack:
            return value
        frame = stack[-1]
        container = frame[0]
        if type(container) is list:
            container.append(value)
        elif frame[1] is _NO_KEY:
            if type(value) is dict or type(value) is list:
                raise _NotPlain  # an unhashable key: PyYAML's own error
            frame[1] = value
        else:
            container[frame[1]] = value
            frame[1] = _NO_KEY


# The last file parsed, by path and content hash: the service reconciles every cycle, and YAML
# parsing dominates for big registers (50,000 assignments: ~4 s with libyaml).  The parsed
# objects are frozen, so sharing them between cycles is safe; evidence files are checked anew.
_PARSED: dict[tuple[str, str], Inventory] = {}


def load_inventory(path: Path, *, catalog: Catalog | None = None) -> Inventory:
    source = str(path)
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise InventoryError(f"inventory file {source} not found (see `inventory:` in the config)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InventoryError(f"cannot read inventory file {source}: {exc}") from None
    key = (source, hashlib.sha256(raw).hexdigest())
    parsed = _PARSED.get(key) if catalog is None else None
    if parsed is None:
        try:
            data = load_yaml(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise InventoryError(f"not valid YAML{where}: {getattr(exc, 'problem', None) or exc}",
                                 source=source) from None
        parsed = parse_inventory(data, catalog=catalog, source=source)
        if catalog is None:
            _PARSED.clear()
            _PARSED[key] = parsed
    return check_evidence(parsed, path.parent)

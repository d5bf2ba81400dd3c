"""The JSON report: a public interface (docs/report-json.md).  Add keys, never rename or drop."""

from __future__ import annotations

import gzip
import io
import zlib
from collections import Counter
from collections.abc import Callable, Collection, Container, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import orjson

from agent.compliance.model import Finding, Principal, PrincipalLicences, PrincipalRef, Reconciliation

SCHEMA_VERSION = 1


class ReportRows(Sequence):
    """A list of a built report (its findings, drift's new findings, its licences) whose dicts
    are made from the reconciliation's objects when they are read, a batch at a time, instead of
    all at once: at 100,000 users those dicts were ~85 MB, held while the report was gzip'd,
    rendered and alerted on, though each reader needs only a few at a time.  Reads as a list of
    the same dicts every time (a read-only one: each read makes new dicts, so changing one
    changes nothing); the JSON text is the same as the list's."""

    __slots__ = ("_items", "_make")
    BATCH = 1000

    def __init__(self, items: Sequence[Any], make: Callable[[Any, dict], dict[str, Any]]) -> None:
        self._items = items
        self._make = make  # (item, memo shared by one batch) -> its dict

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index):
        if isinstance(index, slice):
            memo: dict = {}
            return [self._make(item, memo) for item in self._items[index]]
        return self._make(self._items[index], {})

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for start in range(0, len(self._items), self.BATCH):
            yield from self[start:start + self.BATCH]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (ReportRows, list, tuple)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  (a list is not hashable either)

    def __repr__(self) -> str:
        return f"ReportRows({len(self)} rows)"


def _as_list(value: Any) -> list:
    """orjson's ``default``: a ReportRows is written as the list it reads as."""
    if isinstance(value, ReportRows):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def pretty_json(report: dict[str, Any]) -> bytes:
    """The report as the `report --format json` text, UTF-8: two-space indents, a final newline.
    Byte for byte what ``json.dumps(indent=2, ensure_ascii=False)`` writes, 25 times faster (a
    100,000-user report is ~120 MB: 8.5 s with the standard library's indenting encoder, which is
    pure Python; 0.3 s with orjson).  Reports are stored laid out in pieces (``pretty_chunks``);
    this is the whole-text form those pieces must add up to."""
    return orjson.dumps(report, default=_as_list, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)


# The stored form of a report (runs.report_gz): that same text, gzip'd.  JSON of this shape
# compresses ~30 times (118 MB to 4 MB at 100,000 users, in 0.4 s at level 1), so each run costs the
# database megabytes instead of ~90 MB, and `report --format json` copies it out without parsing
# (parsing alone is ~3 s and ~400 MB of objects at that size).  `gunzip` reads it as it is.

def gzip_report(report: dict[str, Any]) -> bytes:
    deflate = zlib.compressobj(1, zlib.DEFLATED, 31)  # 31: with a gzip header and trailer
    # Into one growing buffer whose bytes getvalue() hands over without a copy: joining the
    # pieces at the end held the gzip'd text twice (7 MB each at 100,000 users).
    out = io.BytesIO()
    for chunk in pretty_chunks(report):
        out.write(deflate.compress(chunk))
    out.write(deflate.flush())
    return out.getvalue()


def pretty_chunks(value: Any, depth: int = 0, batch: int = 1000) -> Iterator[bytes]:
    """``pretty_json(value)`` in pieces of at most ``batch`` list items, so a big report is never
    whole in memory as text (118 MB at 100,000 users).  The report's own dicts (depth 0 and 1)
    and its lists are laid out here as orjson lays them out; everything below is orjson's."""
    pad = b"  " * depth
    if isinstance(value, dict) and value and depth < 2:
        yield b"{"
        for i, (key, item) in enumerate(value.items()):
            yield (b",\n" if i else b"\n") + pad + b"  " + orjson.dumps(key) + b": "
            yield from pretty_chunks(item, depth + 1, batch)
        yield b"\n" + pad + b"}"
    elif isinstance(value, (list, ReportRows)) and len(value) > batch:
        yield b"["
        for start in range(0, len(value), batch):
            text = orjson.dumps(value[start:start + batch], option=orjson.OPT_INDENT_2)
            # "[\n  item,\n  item\n]" indented one level deeper, without its brackets
            yield (b"," if start else b"") + text[1:-2].replace(b"\n", b"\n" + pad)
        yield b"\n" + pad + b"]"
    else:
        yield orjson.dumps(value, default=_as_list, option=orjson.OPT_INDENT_2).replace(b"\n", b"\n" + pad)
    if depth == 0:
        yield b"\n"


class DamagedReport(ValueError):
    """A stored report that does not gunzip to a JSON object (the database changed behind our back)."""


def report_from_gzip(blob: bytes) -> dict[str, Any]:
    try:
        report = orjson.loads(gzip.decompress(blob))
    except (OSError, EOFError, ValueError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise DamagedReport(str(exc) or type(exc).__name__) from None
    if not isinstance(report, dict):
        raise DamagedReport("not a JSON object")
    return report


def gunzipped_chunks(blob: bytes, size: int = 1 << 20) -> Iterator[bytes]:
    """The report text of a stored report, a chunk at a time (never the whole text in memory)."""
    inflate = zlib.decompressobj(wbits=31)  # 31: a gzip header and trailer
    try:
        for start in range(0, len(blob), size):
            data = blob[start:start + size]
            while data:
                chunk = inflate.decompress(data, size)  # at most `size` bytes out at a time
                if chunk:
                    yield chunk
                data = inflate.unconsumed_tail
        rest = inflate.flush()
    except zlib.error as exc:
        raise DamagedReport(str(exc)) from None
    if rest:
        yield rest
    if not inflate.eof:
        raise DamagedReport("truncated stored report")


_FINDINGS_START = b'\n  "findings": ['
_ITEM_END = b"\n    }"  # a list item of the report's top level closes at this indent, on a line of its own


def stored_findings(blob: bytes, keys: Container[str] | None = None) -> Iterator[dict[str, Any]]:
    """The findings of a stored report (those whose key is in ``keys``, or all), in its order,
    read one at a time out of its text: a parsed 100,000-user report is ~1 GB of objects.

    This relies on the layout every stored report has (``pretty_chunks``, the same as
    ``json.dumps(indent=2)``): the top-level key on a line of its own, each item of the list
    closed by a brace four spaces in, and no raw newline inside a value (JSON escapes them).
    Anything else is a DamagedReport."""
    chunks = gunzipped_chunks(blob)
    head, buffer = _until_findings(chunks)
    if buffer is None:
        try:
            whole = orjson.loads(head)
        except orjson.JSONDecodeError:
            whole = None
        if isinstance(whole, dict) and not whole.get("findings"):
            return  # an object with no findings (a run stored without a report: `{}`)
        raise DamagedReport("no findings list")
    del head
    pos = 0
    while True:
        while True:
            head = buffer[pos:pos + 8].lstrip(b", \n")
            if head[:1] == b"]":
                return
            end = buffer.find(_ITEM_END, pos)
            if end >= 0:
                break
            more = next(chunks, None)
            if more is None:
                raise DamagedReport("truncated findings list")
            buffer, pos = buffer[pos:] + more, 0
        text, pos = buffer[pos:end + len(_ITEM_END)], end + len(_ITEM_END)
        try:
            finding = orjson.loads(text.lstrip(b", \n"))
        except orjson.JSONDecodeError as exc:
            raise DamagedReport(f"a finding does not parse: {exc}") from None
        if not isinstance(finding, dict) or not isinstance(finding.get("key"), str):
            raise DamagedReport("a finding without a key")
        if keys is None or finding["key"] in keys:
            yield finding
        if pos > 1 << 20:  # let go of what was read
            buffer, pos = buffer[pos:], 0


def stored_header(blob: bytes) -> dict[str, Any]:
    """The top-level keys a stored report has before its findings (schema_version, generated_at,
    run, compliant, summary, directories, inventory, products), without parsing the rest."""
    head, rest = _until_findings(gunzipped_chunks(blob))
    if rest is None:
        raise DamagedReport("no findings list")
    try:
        header = orjson.loads(head.rstrip().removesuffix(b",") + b"\n}")
    except orjson.JSONDecodeError as exc:
        raise DamagedReport(f"its header does not parse: {exc}") from None
    if not isinstance(header, dict):
        raise DamagedReport("not a JSON object")
    return header


_HEADER_LIMIT = 1 << 24  # a report's text before its findings is its summary, directories, products: KBs


def _until_findings(chunks: Iterator[bytes]) -> tuple[bytes, bytes | None]:
    """Read a stored report's text up to the opening of its findings list: the text before it and
    what was read after it; (the text read, None) when there is none (at most _HEADER_LIMIT read)."""
    head = b""
    for chunk in chunks:
        start = max(0, len(head) - len(_FINDINGS_START))  # a start cut between two chunks is found too
        head += chunk
        at = head.find(_FINDINGS_START, start)
        if at >= 0:
            return head[:at], head[at + len(_FINDINGS_START):]
        if len(head) > _HEADER_LIMIT:
            break
    return head, None


class StoredReport(dict):
    """A stored report's header (``stored_header``) whose ``findings`` are read out of the stored
    text each time they are iterated (``stored_findings``): what alerting needs of a baseline
    report, without its ~1 GB of objects at 100,000 users."""

    def __init__(self, blob: bytes) -> None:
        super().__init__(stored_header(blob))
        self["findings"] = _StoredFindings(blob)


class _StoredFindings:
    __slots__ = ("_blob",)

    def __init__(self, blob: bytes) -> None:
        self._blob = blob

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return stored_findings(self._blob)


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _principal_dict(p: PrincipalRef | Principal) -> dict[str, Any]:
    return {"kind": p.kind, "name": p.name, "directory": p.directory, "dn": p.dn, "display_name": p.display_name,
            "state": p.state, "guid": p.guid}


def _once(memo: dict, key: Any, make) -> Any:
    """One value per distinct ``key``, shared wherever it recurs: a principal's dict in its
    findings and its licences (keyed by the principal object's id: each is alive while the
    report is built, and hashing a frozen dataclass hashes every field), and the few distinct `holds`/`needs` lists and finding details most
    principals have in common.  At 100,000 users the report's objects took ~100 MB more with a
    copy each; its text is the same either way.  Nothing changes a report once built, so sharing
    is safe."""
    found = memo.get(key)
    if found is None:
        found = memo[key] = make()
    return found


def finding_to_dict(f: Finding, memo: dict) -> dict[str, Any]:
    ref = f.principal
    principal = _once(memo, id(ref), lambda: _principal_dict(ref)) if ref is not None else None
    return {
        "key": f.key,
        "kind": f.kind,
        "severity": f.severity,
        "product": f.product,
        "version": f.version,
        "cal_type": f.cal_type,
        "principal": principal,
        "purchase": f.purchase,
        "reason": f.reason,
        "since": iso(f.since),
        "message": f.message,
        # By identity, not value: ("n", 1) and ("n", True) are equal tuples but not the same JSON.
        # Findings made alike share their details tuple (unlicensed ones: one per wording).
        "details": _once(memo, ("details", id(f.details)),
                         lambda: {k: list(v) if isinstance(v, tuple) else v for k, v in f.details}),
    }


def _licence_to_dict(entry: PrincipalLicences, memo: dict) -> dict[str, Any]:
    return {
        "principal": _once(memo, id(entry.principal), lambda: _principal_dict(entry.principal)),
        "holds": _once(memo, ("holds", entry.holds), lambda: [
            {"purchase": pid, "product": product, "version": version, "cal_type": cal_type}
            for pid, product, version, cal_type in entry.holds]),
        "needs": _once(memo, ("needs", entry.needs), lambda: [
            {"product": product, "version": version, "cal_type": cal_type, "licensed": ok}
            for product, version, cal_type, ok in entry.needs]),
    }


@dataclass(frozen=True)
class Baseline:
    """The run drift is measured against: its id, which of this run's finding keys it did not
    have, and its findings (report dicts) that this run no longer has."""

    run_id: int
    new_keys: Collection[str]
    resolved: list[dict[str, Any]]


def build_report(result: Reconciliation, *, run_id: int, previous: Baseline | None,
                 directories: list[dict[str, Any]], generated_at: datetime,
                 inventory: dict[str, Any] | None = None, trend: list[dict[str, Any]] | None = None,
                 principal_changes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The report of ``result``; its findings, new findings and licences are ``ReportRows``."""
    findings = ReportRows(result.findings, finding_to_dict)
    if previous is None:
        new, resolved = findings, []
    else:
        new_keys = previous.new_keys
        new = ReportRows(tuple(f for f in result.findings if f.key in new_keys), finding_to_dict)
        resolved = previous.resolved
    by_kind = Counter(f.kind for f in result.findings)
    errors = sum(1 for f in result.findings if f.severity == "error")
    warnings = sum(1 for f in result.findings if f.severity == "warning")
    return {
        "schema_version": SCHEMA_VERSION,
        "generated_at": iso(generated_at),
        "run": {"id": run_id, "previous_id": previous.run_id if previous else None},
        "compliant": result.compliant,
        "summary": {
            "findings": len(findings),
            "errors": errors,
            "warnings": warnings,
            "shortfall": result.shortfall,
            "by_kind": dict(sorted(by_kind.items())),
        },
        "directories": directories,
        "inventory": inventory or {"source": "file", "path": None, "file_differs": False},
        "products": [
            {
                "product": line.product,
                "product_name": line.product_name,
                "version": line.version,
                "cal_type": line.cal_type,
                "required": line.required,
                "owned": line.owned,
                "assigned": line.assigned,
                "licensed": line.licensed,
                "free": line.free,
                "shortfall": line.shortfall,
            }
            for line in result.products
        ],
        "findings": findings,
        "drift": {"new": new, "resolved": resolved, "principals": principal_changes or []},
        "licences": ReportRows(result.licences, _licence_to_dict),
        "trend": (trend or []) + [{
            "run": run_id, "generated_at": iso(generated_at), "compliant": result.compliant,
            "shortfall": result.shortfall, "findings": len(findings), "errors": errors, "warnings": warnings,
        }],
    }

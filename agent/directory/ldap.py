"""Live reader for generic LDAP directories: OpenLDAP, 389 Directory Server, FreeIPA.

The connection is the AD reader's (TLS always, verification on, simple bind, raw values, paged
searches marked critical, the reproducible ``ldapsearch`` debug log); what differs is what is
searched and how entries decode (``ldap_entries``, docs/directory.md "Generic LDAP"):
- three paged searches under base_dn: users, then groups, then computers (each by its filter);
  users first so that posixGroup ``memberUid`` values resolve to the users' DNs;
- no tombstones: a deleted entry is simply absent after a complete read (-> missing);
- incremental reads by ``entryCSN`` (OpenLDAP) or ``modifyTimestamp`` (389-DS, FreeIPA, others):
  only entries changed since the watermark, which is the newest change seen, less the read's
  duration and a clock margin (an entry changed during a read may carry an older stamp than one
  read after it).  Deletions and moves out of base_dn leave no trace in such a read: they are seen
  at the next complete read (``full_sync_every``, default 24h);
- any error makes the whole read fail, nothing is applied.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import ldap3
import structlog
from ldap3.core import exceptions as ldap_exc
from pydantic import SecretStr

from agent.config import LdapConfig
from agent.directory import decode
from agent.directory.ad import (
    PAGED_RESULTS_OID,
    ActiveDirectoryReader,
    ChangeSince,
    DcIdentity,
    _ldap_reason,
    _unbind,
)
from agent.directory.ad_entries import normalise_attributes
from agent.directory.ldap_entries import (
    CHANGE_ATTRIBUTES,
    MEMBER_ATTRIBUTES,
    STATE_ATTRIBUTES,
    change_filter_value,
    change_stamp,
    entry_from_attributes,
    identity,
    uids_of,
)
from agent.directory.records import DirectoryEntry, EntryKind, ReadStats
from agent.errors import DirectoryError

log = structlog.get_logger("agent.directory.ldap")


class LdapReader(ActiveDirectoryReader):
    config: LdapConfig
    supports_incremental = True  # by entryCSN or modifyTimestamp (module docstring)
    # A continuation reference under base_dn is a subtree delegated to another server: its entries
    # were not read, and would otherwise turn missing.  The read fails instead.
    _REFERENCES_ARE_GAPS = True
    # Stamps come from the server's clock, possibly several servers' (multi-master): a change
    # stamped up to this long before the newest stamp seen is read again next time.
    CLOCK_MARGIN_S = 60
    # No tombstones, no committed-change counter: the watermark never ages out by a lifetime
    # (full_sync_every decides), and a restore is noticed by the base entry's new identity.
    NO_LIFETIME_DAYS = 36500
    _BASE_DN_HINT = "check directories[].base_dn (e.g. dc=example,dc=com) and the server's ACL for the bind account"
    _SIZE_LIMIT_HINT = ("the server's size limit applies to the bind account despite paging: raise it for that "
                        "account (OpenLDAP: limits dn.exact=\"<bind_dn>\" size.prtotal=unlimited)")
    _TIME_LIMIT_HINT = "the server's time limit applies to the bind account: raise it for that account"

    def __init__(self, config: LdapConfig, password: SecretStr) -> None:
        super().__init__(config, password)  # type: ignore[arg-type]  (same connection settings)
        # Set by the sync: the stored users' DNs by lower-cased uid, to resolve posixGroup
        # memberUid values of users an incremental read did not return (called at most once).
        self.stored_uids: Callable[[], dict[str, str]] | None = None

    def _attributes(self, kind: EntryKind) -> list[str]:
        names = self.config.attributes
        wanted = [names.identity, names.display_name, names.mail, *STATE_ATTRIBUTES, *CHANGE_ATTRIBUTES,
                  {EntryKind.USER: names.user_name, EntryKind.GROUP: names.group_name,
                   EntryKind.COMPUTER: names.computer_name}[kind]]
        if kind is EntryKind.GROUP:
            wanted += MEMBER_ATTRIBUTES
        out: list[str] = []
        for name in wanted:
            if name.lower() not in {o.lower() for o in out}:
                out.append(name)
        return out

    def _searches(self) -> list[tuple[EntryKind, str]]:
        names = self.config.attributes
        searches = [(EntryKind.USER, names.user_filter), (EntryKind.GROUP, names.group_filter)]
        if names.computer_filter:
            searches.append((EntryKind.COMPUTER, names.computer_filter))
        return searches

    def test_connection(self) -> dict[str, Any]:
        conn = self.connect()
        try:
            root = self._root(conn)
            whoami = self._whoami(conn)
            self._check_base_dn(conn)
            controls = root.get("supportedcontrol", [])
            return {
                "server": root.get("vendorname", [self.host])[0] + (
                    f" {root['vendorversion'][0]}" if root.get("vendorversion") else ""),
                "bound_as": whoami,
                "base_dn": self.config.base_dn,
                "naming_contexts": ", ".join(root.get("namingcontexts", [])),
                "paged_results": PAGED_RESULTS_OID in controls,
                "tls": "ldapi (local socket)" if self.ipc else "ldaps" if self.use_ssl else "starttls",
                "certificate_verified": self.config.tls.verify and not self.ipc,
            }
        except ldap_exc.LDAPException as exc:
            raise DirectoryError(f"{self.config.url}: cannot read the root DSE: {_ldap_reason(exc)}") from None
        finally:
            conn.unbind()

    def _root(self, conn: ldap3.Connection) -> dict[str, list[str]]:
        attrs = ["namingContexts", "supportedControl", "vendorName", "vendorVersion"]
        self._log_search("", "(objectClass=*)", attrs, scope="base")
        conn.search("", "(objectClass=*)", ldap3.BASE, attributes=attrs)
        out: dict[str, list[str]] = {}
        for item in conn.response or []:
            if item.get("type") == "searchResEntry":
                for name, values in item["raw_attributes"].items():
                    out[name.lower()] = [decode.text(v) or "" for v in values]
        return out

    def read(self, *, since: ChangeSince | None = None) -> Iterator[DirectoryEntry]:
        """Stream every user, then group, then computer under base_dn; with ``since`` (given the
        server's identity, the watermark or None), only those changed since the watermark."""
        counts = {kind: 0 for kind in EntryKind}
        searches = pages = 0
        uid_to_dn: dict[str, str] = {}
        self.incremental_from = None
        self.out_of_scope = set()
        conn = self.connect()
        try:
            change_attribute, base_identity = self._read_base(conn)
            searches += 1
            # No committed-change counter to compare a stored watermark with: this machine's clock
            # plus the margin stands in, so a watermark in the future (an entry stamped ahead, a
            # clock set back) makes a full read instead of hiding every change until then.
            latest = int(time.time() * 1_000_000) + self.CLOCK_MARGIN_S * 1_000_000
            self.dc = DcIdentity(host=self._server_name(), invocation_id=base_identity if change_attribute else None,
                                 highest_usn=latest, tombstone_lifetime_days=self.NO_LIFETIME_DAYS,
                                 naming_context=self.config.base_dn,
                                 position="change stamp (microseconds since 1970; now plus the clock margin)",
                                 ahead_means="a watermark in the future: an entry stamped ahead, or a clock set back")
            watermark = since(self.dc) if since is not None and change_attribute else None
            self.incremental_from = watermark
            began = time.monotonic()
            newest: int | None = None
            future: list[str] = []
            seen: set[str] = set()
            stored_merged = False
            for kind, search_filter in self._searches():
                if watermark is not None:
                    search_filter = f"(&({change_attribute}>={change_filter_value(change_attribute, watermark)})" \
                                    f"{search_filter})"
                searches += 1
                last_page = 0
                for dn, raw, page_count in self._paged_search(conn, self.config.base_dn, search_filter,
                                                              self._attributes(kind)):
                    last_page = page_count
                    if (kind is EntryKind.GROUP and watermark is not None and not stored_merged
                            and self.stored_uids is not None and any(n.lower() == "memberuid" for n in raw)):
                        # An incremental read returns only changed users: memberUid values of the
                        # others resolve against the store (loaded once, for the first such group).
                        uid_to_dn = {**self.stored_uids(), **uid_to_dn}
                        stored_merged = True
                    entry, attrs = self._ldap_entry(dn, raw, kind, uid_to_dn)
                    if kind is EntryKind.USER:
                        for uid in uids_of(attrs):
                            uid_to_dn.setdefault(uid, dn)
                    stamp = change_stamp(raw, change_attribute) if change_attribute else None
                    if stamp is not None and stamp > latest:
                        # Stamped in the future: it must not carry the watermark past changes
                        # still to come (they would be skipped until a full read).
                        future.append(dn)
                    elif stamp is not None and (newest is None or stamp > newest):
                        newest = stamp
                    counts[kind] += 1
                    if watermark is not None:  # only an incremental read looks for what it did not return
                        seen.add(entry.guid)
                    yield entry
                pages += last_page
            if watermark is not None:
                searches += 1
                self._changed_elsewhere(conn, change_attribute, watermark, seen)
            self.dc = self._next_watermark(watermark, newest, time.monotonic() - began)
            if future:
                log.warning("ldap.future_change_stamps", directory=self.config.name, entries=len(future),
                            example=future[0], attribute=change_attribute,
                            why="stamped after this machine's clock; not used for the incremental watermark")
        except ldap_exc.LDAPException as exc:
            raise self._read_error(exc) from None
        finally:
            _unbind(conn)
        self.stats = ReadStats(
            users=counts[EntryKind.USER],
            groups=counts[EntryKind.GROUP],
            computers=counts[EntryKind.COMPUTER],
            searches=searches,
            pages=pages,
        )

    def _server_name(self) -> str:
        return self.config.url if self.ipc else f"{self.host}:{self.port}".lower()

    def _read_base(self, conn: ldap3.Connection) -> tuple[str | None, str | None]:
        """Which change stamp the server keeps (entryCSN, else modifyTimestamp, else none) and the
        base entry's identity (a rebuilt or reloaded server gives it a new one)."""
        attrs = [self.config.attributes.identity, *CHANGE_ATTRIBUTES]
        raw = {name.lower(): values for name, values in self._base_read(conn, self.config.base_dn, attrs).items()}
        change = next((name for name in CHANGE_ATTRIBUTES if raw.get(name.lower())), None)
        ident = raw.get(self.config.attributes.identity.lower())
        try:
            base_identity = identity(ident[0]) if ident else None
        except ValueError:
            base_identity = None
        if base_identity is not None and len(base_identity) != 36:
            base_identity = None  # not a UUID: cannot serve as the server's identity
        return change, base_identity

    def _changed_elsewhere(self, conn: ldap3.Connection, change_attribute: str, watermark: int,
                           seen: set[str]) -> None:
        """Entries changed since the watermark that no principal search returned: a principal that
        no longer matches its filter (say `(!(employeeType=left))`) is among them.  Their identities
        go to ``out_of_scope``; the sync makes a full read when one of them is a stored principal."""
        identity_attribute = self.config.attributes.identity
        search_filter = f"({change_attribute}>={change_filter_value(change_attribute, watermark)})"
        for _dn, raw, _page in self._paged_search(conn, self.config.base_dn, search_filter, [identity_attribute]):
            values = next((v for name, v in raw.items() if name.lower() == identity_attribute.lower()), None)
            if not values:
                continue
            try:
                guid = identity(values[0])
            except ValueError:
                continue
            if guid not in seen:
                self.out_of_scope.add(guid)

    def _next_watermark(self, watermark: int | None, newest: int | None, seconds: float) -> DcIdentity | None:
        """The identity to store with the new watermark: the newest stamp seen, less the read's
        duration and the clock margin; never below the watermark this read started from."""
        if self.dc is None or self.dc.invocation_id is None:
            return self.dc
        if newest is None:
            if watermark is None:  # nothing stamped: no watermark to keep
                return replace(self.dc, invocation_id=None, highest_usn=0)
            mark = watermark
        else:
            mark = newest - int((seconds + self.CLOCK_MARGIN_S) * 1_000_000)
            if watermark is not None:
                mark = max(mark, watermark)
        return replace(self.dc, highest_usn=mark)

    def _ldap_entry(self, dn: str, raw, kind: EntryKind,
                    uid_to_dn: dict[str, str]) -> tuple[DirectoryEntry, dict[str, list[bytes]]]:
        """The entry's record and its normalised attributes (normalised once, for the record and
        the uids)."""
        try:
            attrs = normalise_attributes(raw)
            return entry_from_attributes(dn, attrs, kind, self.config.attributes, member_dns_by_uid=uid_to_dn), attrs
        except (ValueError, OverflowError) as exc:
            raise DirectoryError(
                f"{self.config.url}: cannot decode {dn}: {exc}",
                hint="the read was discarded; nothing was changed",
            ) from None

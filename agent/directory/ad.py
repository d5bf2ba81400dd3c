"""Live reader for Active Directory (and Samba AD) over LDAP with ldap3.

Design choices, each for a reason (see docs/directory.md):
- TLS always: LDAPS, or StartTLS on ldap:// URLs.  Certificate verification is on unless the
  admin sets ``tls.verify: false``; ldap3's own default is CERT_NONE, so we always pass ``Tls``.
- Simple bind over TLS: AD and Samba refuse simple binds on cleartext, and ldap3's SASL layers
  cannot sign or seal.
- No schema download (``get_info=NONE``) and raw attribute values, decoded by ``ad_entries``.
- One paged search (page size 1000 = AD's MaxPageSize) for users, groups and computers, consumed
  page by page; large ``member`` values are fetched with ranged reads (``member;range=N-*``).
- Tombstones are read with the Show Deleted control so a deleted user is known as deleted.
- Any error makes the whole read fail: the caller applies nothing (a partial read must never turn
  absent principals into leavers).
"""

from __future__ import annotations

import math
import re
import shlex
import ssl
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import ldap3
import structlog
from ldap3.core import exceptions as ldap_exc
from pydantic import SecretStr

from agent.config import ActiveDirectoryConfig
from agent.directory import decode, wire
from agent.directory.ad_entries import (
    AD_ATTRIBUTES,
    AD_CONTAINER_FILTER,
    AD_PRINCIPAL_FILTER,
    AD_TOMBSTONE_ATTRIBUTES,
    AD_TOMBSTONE_FILTER,
    entry_from_ad,
    tombstone_parent,
)
from agent.directory.records import DirectoryEntry, EntryKind, ReadStats
from agent.errors import DirectoryError

PAGED_RESULTS_OID = "1.2.840.113556.1.4.319"
SHOW_DELETED_OID = "1.2.840.113556.1.4.417"
_RANGE_RE = re.compile(r"^(?P<attr>[^;]+);range=(?P<low>\d+)-(?P<high>\d+|\*)$", re.IGNORECASE)
_MAX_RANGE_ROUNDS = 100_000  # a server that never says "*" must not loop us forever

DEFAULT_TOMBSTONE_LIFETIME_DAYS = 60  # when tombstoneLifetime is unset (MS-ADTS 6.1.1.2.4.1.1)

log = structlog.get_logger("agent.directory.ad")


@dataclass(frozen=True, slots=True)
class DcIdentity:
    """The DC a read went to, read at the start of the read (before any search): what an
    incremental sync must check against its watermark (docs/directory.md "Incremental sync")."""

    host: str  # rootDSE dnsHostName
    invocation_id: str | None  # invocationId of the DC's nTDSDSA object (rootDSE dsServiceName); None if unreadable
    highest_usn: int  # rootDSE highestCommittedUSN, read before the searches
    tombstone_lifetime_days: int  # CN=Directory Service,CN=Windows NT,CN=Services,<config NC>; 60 when unset
    naming_context: str  # defaultNamingContext
    # What highest_usn is, and what a stored watermark above it means (docs/directory.md).
    position: str = "highestCommittedUSN"
    ahead_means: str = "DC re-initialised or restored"


# A change-read decision: given the DC, the USN to read changes from (uSNChanged >= it), or None
# for a complete read.
ChangeSince = Callable[[DcIdentity], "int | None"]


class ActiveDirectoryReader:
    supports_incremental = True  # read(since=...) can read only what changed (AD's uSNChanged)
    # AD answers a search of the domain root with references to its other naming contexts
    # (Configuration, DomainDnsZones...): not part of what is read, so they are skipped.
    _REFERENCES_ARE_GAPS = False

    def __init__(self, config: ActiveDirectoryConfig, password: SecretStr) -> None:
        self.config = config
        self._password = password
        self.stats = ReadStats()
        parts = urlsplit(config.url)
        self.host = parts.hostname or ""
        self.use_ssl = parts.scheme == "ldaps"
        self.ipc = parts.scheme == "ldapi"  # generic LDAP only: a local Unix socket, no TLS needed
        self.port = None if self.ipc else (parts.port or (636 if self.use_ssl else 389))
        self.root_dse: dict[str, str] = {}
        self.dc: DcIdentity | None = None  # the DC of the last read (AD)
        self.incremental_from: int | None = None  # the USN the last read started from; None: a complete read
        self.out_of_scope: set[str] = set()  # incremental: GUIDs of changed objects now outside base_dn
        self.tombstones_unreadable = False  # the last read could not list CN=Deleted Objects

    @property
    def urls(self) -> list[str]:
        """The DCs to try, in order (AD `urls`), or just `url`."""
        return list(getattr(self.config, "urls", None) or [self.config.url])

    def describe(self) -> str:
        return f"{' '.join(self.urls)} as {self.config.bind_dn}"

    # -- connection -----------------------------------------------------------------------

    def _tls(self) -> ldap3.Tls:
        tls = self.config.tls
        if not tls.verify:
            log.warning(
                "tls.verification_disabled",
                directory=self.config.name,
                why="tls.verify is false: the DC's identity is not checked and the bind password "
                "can be intercepted",
            )
        return ldap3.Tls(
            validate=ssl.CERT_REQUIRED if tls.verify else ssl.CERT_NONE,
            ca_certs_file=str(tls.ca_file) if tls.ca_file else None,
            version=ssl.PROTOCOL_TLS_CLIENT if tls.verify else ssl.PROTOCOL_TLS,
        )

    def _server(self, url: str) -> ldap3.Server:
        parts = urlsplit(url)
        return ldap3.Server(
            parts.hostname or "",
            port=parts.port or (636 if self.use_ssl else 389),
            use_ssl=self.use_ssl,
            tls=self._tls(),
            get_info=ldap3.NONE,
            connect_timeout=self.config.timeout,
        )

    def connect(self) -> ldap3.Connection:
        if self.ipc:
            server = ldap3.Server(self.config.url, get_info=ldap3.NONE, connect_timeout=self.config.timeout)
        elif len(self.urls) > 1:
            # Failover, not load balancing: the first DC that answers, always in the same order, so
            # incremental syncs keep reading the same DC (USNs are per DC) while it is up.  active=1:
            # one round over the DCs (ldap3's active=True retries forever when all are down).
            server = ldap3.ServerPool([self._server(url) for url in self.urls], ldap3.FIRST, active=1,
                                      exhaust=True)
        else:
            server = self._server(self.config.url)
        conn = ldap3.Connection(
            server,
            user=self.config.bind_dn,
            password=self._password.get_secret_value(),
            authentication=ldap3.SIMPLE,
            read_only=True,
            raise_exceptions=True,
            receive_timeout=max(1, math.ceil(self.config.timeout)),  # ldap3 packs it as an int
            auto_range=False,  # we do ranged reads ourselves, streaming, with a loop guard
            auto_referrals=False,
            return_empty_attributes=False,
        )
        where = f"{' '.join(self.urls)} (directory {self.config.name!r})"
        try:
            conn.open()
            if not self.use_ssl and not self.ipc:
                conn.start_tls()
            conn.bind()
        except ldap_exc.LDAPInvalidCredentialsResult:
            raise DirectoryError(
                f"bind to {where} as {self.config.bind_dn} refused: invalid credentials",
                hint="check bind_dn and the password source; a disabled or locked account is refused too",
            ) from None
        except ldap_exc.LDAPStrongerAuthRequiredResult:
            raise DirectoryError(
                f"{where} requires a stronger authentication (TLS was not active)",
                hint="use an ldaps:// URL",
            ) from None
        except ldap_exc.LDAPStartTLSError as exc:
            raise DirectoryError(f"StartTLS with {where} failed: {_tls_reason(exc)}", hint=_TLS_HINT) from None
        except ldap_exc.LDAPSocketOpenError as exc:
            reason = _tls_reason(exc)
            if "certificate" in reason.lower() or "ssl" in reason.lower() or "tls" in reason.lower():
                raise DirectoryError(f"TLS handshake with {where} failed: {reason}", hint=_TLS_HINT) from None
            raise DirectoryError(
                f"cannot connect to {where}: {reason}",
                hint="check the host name, port, firewall and that the DC is running",
            ) from None
        except ldap_exc.LDAPSocketReceiveError as exc:
            raise DirectoryError(f"{where} did not answer in {self.config.timeout:g}s: {exc}") from None
        except ldap_exc.LDAPServerPoolExhaustedError:
            raise DirectoryError(
                f"none of the DCs in urls answered: {where}",
                hint="check the host names, ports, firewall and that at least one DC is running",
            ) from None
        except ldap_exc.LDAPException as exc:
            raise DirectoryError(f"cannot bind to {where}: {_ldap_reason(exc)}") from None
        return conn

    # -- reading --------------------------------------------------------------------------

    def test_connection(self) -> dict[str, Any]:
        conn = self.connect()
        try:
            root = self._read_root_dse(conn)
            whoami = self._whoami(conn)
            self._check_base_dn(conn)
            return {
                "server": root.get("dnsHostName") or self.host,
                "bound_as": whoami,
                "base_dn": self.config.base_dn,
                "default_naming_context": root.get("defaultNamingContext"),
                "highest_committed_usn": root.get("highestCommittedUSN"),
                "tls": "ldaps" if self.use_ssl else "starttls",
                "certificate_verified": self.config.tls.verify,
            }
        except ldap_exc.LDAPException as exc:
            raise DirectoryError(f"{self.config.url}: cannot read the root DSE: {_ldap_reason(exc)}") from None
        finally:
            conn.unbind()

    def read(self, *, since: ChangeSince | None = None) -> Iterator[DirectoryEntry]:
        """Stream every user, group and computer under base_dn, then tombstones.

        With ``since``: after reading the root DSE and the DC's identity (``self.dc``), ``since(dc)``
        gives the USN to read changes from, and only objects and tombstones with
        ``uSNChanged >= it`` are read (an incremental read), or None for a complete read."""
        counts = {kind: 0 for kind in EntryKind}
        tombstones = searches = pages = 0
        self.incremental_from = None
        self.out_of_scope = set()
        self.tombstones_unreadable = False
        conn = self.connect()
        try:
            self.root_dse = self._read_root_dse(conn)
            searches += 1
            self.dc = self._read_dc_identity(conn)
            searches += 2
            usn = since(self.dc) if since is not None else None
            self.incremental_from = usn
            base, principal_filter, tombstone_filter = self.config.base_dn, AD_PRINCIPAL_FILTER, AD_TOMBSTONE_FILTER
            if usn is not None:
                # Changes are read from the whole naming context and filtered here, so that an object
                # moved out of base_dn is noticed (a complete read would no longer return it).
                if decode.dn_is_under(self.config.base_dn, self.dc.naming_context):
                    base = self.dc.naming_context
                principal_filter = f"(&(uSNChanged>={usn}){AD_PRINCIPAL_FILTER})"
                tombstone_filter = f"(&(isDeleted=TRUE)(uSNChanged>={usn})(|(objectClass=user)(objectClass=group)))"
            read: set[str] | None = set() if usn is not None else None  # GUIDs an incremental read returned
            for dn, raw, page_count in self._paged_search(conn, base, principal_filter, AD_ATTRIBUTES):
                pages = max(pages, page_count)
                if base != self.config.base_dn and not decode.dn_is_under(dn, self.config.base_dn):
                    guid = raw.get("objectGUID") or raw.get("objectguid")
                    if guid:
                        self.out_of_scope.add(str(uuid.UUID(bytes_le=bytes(guid[0]))))
                    continue
                entry = self._principal(conn, dn, raw, read)
                if entry is not None:
                    counts[entry.kind] += 1
                    yield entry
            if usn is not None:
                # A renamed or moved OU changes the DN of everything below it, but only its own
                # uSNChanged: what lies under a changed container is read again (inside base_dn) or
                # checked for principals that left base_dn with it (outside).
                for container, inside in self._changed_containers(conn, base, usn):
                    searches += 1
                    if inside:
                        for dn, raw, _page in self._paged_search(conn, container, AD_PRINCIPAL_FILTER, AD_ATTRIBUTES):
                            entry = self._principal(conn, dn, raw, read)
                            if entry is not None:
                                counts[entry.kind] += 1
                                yield entry
                    else:
                        for _dn, raw, _page in self._paged_search(conn, container, AD_PRINCIPAL_FILTER,
                                                                  ["objectGUID"]):
                            guid = raw.get("objectGUID") or raw.get("objectguid")
                            if guid and len(guid[0]) == 16:
                                self.out_of_scope.add(str(uuid.UUID(bytes_le=bytes(guid[0]))))
            if self.config.read_deleted:
                for entry in self._read_tombstones(conn, tombstone_filter):
                    tombstones += 1
                    yield entry
                searches += 1
        except ldap_exc.LDAPException as exc:
            raise self._read_error(exc) from None
        finally:
            _unbind(conn)
        self.stats = ReadStats(
            users=counts[EntryKind.USER],
            groups=counts[EntryKind.GROUP],
            computers=counts[EntryKind.COMPUTER],
            tombstones=tombstones,
            searches=searches + 1,
            pages=pages,
        )

    def _entry(self, dn: str, raw: dict[str, list[bytes]]) -> DirectoryEntry | None:
        try:
            return entry_from_ad(dn, raw)
        except ValueError as exc:
            raise DirectoryError(
                f"{self.config.url}: cannot decode {dn}: {exc}",
                hint="the read was discarded; nothing was changed",
            ) from None

    def _read_root_dse(self, conn: ldap3.Connection) -> dict[str, str]:
        attrs = ["defaultNamingContext", "configurationNamingContext", "highestCommittedUSN", "dsServiceName",
                 "dnsHostName"]
        self._log_search("", "(objectClass=*)", attrs, scope="base")
        conn.search("", "(objectClass=*)", ldap3.BASE, attributes=attrs)
        out: dict[str, str] = {}
        for item in conn.response or []:
            if item.get("type") == "searchResEntry":
                for name, values in item["raw_attributes"].items():
                    if values:
                        out[name] = decode.text(values[0]) or ""
        return out

    def _read_dc_identity(self, conn: ldap3.Connection) -> DcIdentity:
        """invocationId of the DC's nTDSDSA object and the forest's tombstoneLifetime (two base
        searches); the root DSE must have been read."""
        root = self.root_dse
        invocation_id = None
        service = root.get("dsServiceName")
        if service:
            raw = self._base_read(conn, service, ["invocationId"])
            value = raw.get("invocationId") or []
            if value and len(value[0]) == 16:
                invocation_id = str(uuid.UUID(bytes_le=bytes(value[0])))
        lifetime = DEFAULT_TOMBSTONE_LIFETIME_DAYS
        config_nc = root.get("configurationNamingContext")
        if config_nc:
            raw = self._base_read(conn, f"CN=Directory Service,CN=Windows NT,CN=Services,{config_nc}",
                                  ["tombstoneLifetime"])
            value = raw.get("tombstoneLifetime") or []
            try:
                lifetime = int(decode.text(value[0]) or "") if value else lifetime
            except ValueError:
                pass
        try:
            usn = int(root.get("highestCommittedUSN") or "0")
        except ValueError:
            usn = 0
        return DcIdentity(host=(root.get("dnsHostName") or self.host).lower(), invocation_id=invocation_id,
                          highest_usn=usn, tombstone_lifetime_days=lifetime,
                          naming_context=root.get("defaultNamingContext") or self.config.base_dn)

    def _base_read(self, conn: ldap3.Connection, dn: str, attrs: list[str]) -> dict[str, list[bytes]]:
        """One entry's raw attributes; {} when it does not exist or cannot be read."""
        self._log_search(dn, "(objectClass=*)", attrs, scope="base")
        try:
            conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=attrs)
        except (ldap_exc.LDAPNoSuchObjectResult, ldap_exc.LDAPInsufficientAccessRightsResult):
            return {}
        for item in conn.response or []:
            if item.get("type") == "searchResEntry":
                return {name: list(values) for name, values in item["raw_attributes"].items()}
        return {}

    # What the admin should check when the server limits a read, per directory kind.
    _BASE_DN_HINT = ("check directories[].base_dn (e.g. DC=corp,DC=example,DC=com) and that the bind account may "
                     "read it")
    _SIZE_LIMIT_HINT = "the DC ignored paging or has a low MaxResultSetSize; check the LDAP policy"
    _TIME_LIMIT_HINT = "the DC's MaxQueryDuration was hit; a narrower base_dn or a less busy DC helps"

    def _whoami(self, conn: ldap3.Connection) -> str:
        try:
            return conn.extend.standard.who_am_i() or self.config.bind_dn
        except ldap_exc.LDAPException:
            return self.config.bind_dn  # Samba does not implement the WhoAmI extended operation

    def _check_base_dn(self, conn: ldap3.Connection) -> None:
        """The commonest set-up mistake is a base_dn that does not exist or that the account cannot
        read: test-connection says so rather than leaving it to an empty (or failed) first sync."""
        self._log_search(self.config.base_dn, "(objectClass=*)", ["objectClass"], scope="base")
        try:
            found = conn.search(self.config.base_dn, "(objectClass=*)", ldap3.BASE, attributes=["objectClass"])
            reason = "not visible to the bind account"
        except ldap_exc.LDAPOperationResult as exc:
            found, reason = False, _ldap_reason(exc)
        if not found or not conn.entries:
            raise DirectoryError(f"{self.config.url}: base_dn {self.config.base_dn!r} cannot be read: {reason}",
                                 hint=self._BASE_DN_HINT)

    def _read_error(self, exc: ldap_exc.LDAPException) -> DirectoryError:
        """The admin-facing error for an LDAP failure during a read (the read is always discarded)."""
        url, base = self.config.url, self.config.base_dn
        if isinstance(exc, ldap_exc.LDAPSizeLimitExceededResult):
            return DirectoryError(f"{url}: sizeLimitExceeded while paging; the read is incomplete and was discarded",
                                  hint=self._SIZE_LIMIT_HINT)
        if isinstance(exc, ldap_exc.LDAPTimeLimitExceededResult):
            return DirectoryError(f"{url}: timeLimitExceeded; the read is incomplete and was discarded",
                                  hint=self._TIME_LIMIT_HINT)
        if isinstance(exc, ldap_exc.LDAPNoSuchObjectResult):
            return DirectoryError(f"{url}: base_dn {base!r} does not exist", hint="check directories[].base_dn")
        if isinstance(exc, ldap_exc.LDAPReferralResult):
            return DirectoryError(f"{url}: the server referred us elsewhere for {base!r}",
                                  hint="base_dn must be in a naming context this server holds")
        if isinstance(exc, ldap_exc.LDAPUnavailableCriticalExtensionResult):
            return DirectoryError(f"{url}: the server does not support the simple paged results control",
                                  hint="enable paged results (AD, OpenLDAP, 389-DS and FreeIPA support it)")
        if isinstance(exc, (ldap_exc.LDAPSocketReceiveError, ldap_exc.LDAPSocketSendError,
                            ldap_exc.LDAPSessionTerminatedByServerError, ldap_exc.LDAPSocketOpenError)):
            return DirectoryError(f"connection to {url} lost during the read: {_ldap_reason(exc)}; "
                                  "the read is incomplete and was discarded")
        return DirectoryError(f"{url}: search failed: {_ldap_reason(exc)}; the read was discarded")

    def _paged_search(self, conn: ldap3.Connection, base: str, search_filter: str, attributes, *,
                      scope=ldap3.SUBTREE, controls=None) -> Iterator[tuple[str, dict[str, list[bytes]], int]]:
        self._log_search(base, search_filter, attributes, scope="one" if scope == ldap3.LEVEL else "sub",
                         show_deleted=bool(controls))
        cookie: bytes | None = None
        page = 0
        while True:
            # The page is collected before its entries are handed out: callers may use the
            # connection for each entry (ranged reads), which must wait until the page is complete.
            references: list[str] | None = [] if self._REFERENCES_ARE_GAPS else None
            entries = list(wire.search_page(conn, base, search_filter, attributes, scope=scope,
                                            page_size=self.config.page_size, controls=controls, cookie=cookie,
                                            references=references))
            page += 1
            _require_complete(conn, self.config.url)
            if references:
                raise DirectoryError(
                    f"{self.config.url}: part of {base!r} is held by another server (continuation reference to "
                    f"{', '.join(sorted(set(references)))}); the read is incomplete and was discarded",
                    hint="set base_dn to a subtree this server holds entirely, and add the other server as a "
                    "directory of its own")
            # The cookie is taken before the entries go out: a ranged read of one of them searches on
            # this connection and replaces conn.result, and its missing paging control read as "last
            # page" once ended a complete read after the first page holding a big group.
            control = (conn.result.get("controls") or {}).get(PAGED_RESULTS_OID) or {}
            previous, cookie = cookie, (control.get("value") or {}).get("cookie")
            for dn, attrs in entries:
                yield dn, attrs, page
            if not cookie:
                return
            # Samba hands out the same cookie for every page of a search (a handle, not a position),
            # so a repeated cookie is normal; a repeated cookie with an empty page is a server stuck
            # in a loop, and the read is abandoned rather than spun forever.
            if cookie == previous and not entries:
                raise DirectoryError(f"{self.config.url}: the server returned an empty page and the same paging "
                                     "cookie; read discarded")

    def _principal(self, conn: ldap3.Connection, dn: str, raw: dict[str, list[bytes]],
                   read: set[str] | None) -> DirectoryEntry | None:
        """The live principal of one search entry (ranged values completed), or None; with ``read``
        (an incremental read), None for a GUID already returned."""
        raw = self._complete_ranges(conn, dn, raw)
        entry = self._entry(dn, raw)
        if entry is None or entry.deleted:
            return None
        if read is not None:
            if entry.guid in read:
                return None
            read.add(entry.guid)
        return entry

    def _changed_containers(self, conn: ldap3.Connection, base: str, usn: int) -> list[tuple[str, bool]]:
        """Containers changed since ``usn`` whose subtree may hold principals that moved with them:
        (DN, under base_dn), outermost first, one per subtree; base_dn and its ancestors left out
        (a rename of those makes base_dn itself unknown, which the read reports)."""
        search_filter = f"(&(uSNChanged>={usn}){AD_CONTAINER_FILTER})"
        found = [dn for dn, _raw, _page in self._paged_search(conn, base, search_filter, ["objectGUID"])]
        chosen: list[tuple[str, bool]] = []
        for dn in sorted(found, key=lambda d: len(decode.dn_parts(d))):
            if decode.dn_is_under(self.config.base_dn, dn):
                continue  # base_dn or above it
            if any(decode.dn_is_under(dn, outer) for outer, _inside in chosen):
                continue  # read with the container it is in
            chosen.append((dn, decode.dn_is_under(dn, self.config.base_dn)))
        return chosen

    def _complete_ranges(self, conn: ldap3.Connection, dn: str, raw: dict[str, list[bytes]]) -> dict[str, list[bytes]]:
        """AD returns at most MaxValRange (1500) values of ``member`` and names the attribute
        ``member;range=0-1499``; fetch the rest with base searches until the range ends in ``*``."""
        ranged = [name for name in raw if ";range=" in name.lower()]
        if not ranged:
            return raw
        out = dict(raw)
        for name in ranged:
            match = _RANGE_RE.match(name)
            values = list(out.pop(name))
            if match is None:
                raise DirectoryError(f"{self.config.url}: cannot parse ranged attribute {name!r} of {dn}")
            attr, high = match["attr"], match["high"]
            if high != "*":
                values.extend(read_ranged_values(conn, dn, attr, int(high) + 1, self.config.range_size))
            out.setdefault(attr, []).extend(values)
        return out

    def _read_tombstones(self, conn: ldap3.Connection,
                         search_filter: str = AD_TOMBSTONE_FILTER) -> Iterator[DirectoryEntry]:
        naming_context = self.root_dse.get("defaultNamingContext") or self.config.base_dn
        base = f"CN=Deleted Objects,{naming_context}"
        try:
            seen = 0
            parents: dict[str, str | None] = {}  # a deleted container's tombstone DN: where it lived
            for dn, raw, _page in self._paged_search(conn, base, search_filter, AD_TOMBSTONE_ATTRIBUTES,
                                                     scope=ldap3.LEVEL,
                                                     controls=[(SHOW_DELETED_OID, True, None)]):
                seen += 1
                parent = self._live_parent(conn, tombstone_parent(raw), base, parents)
                if parent and not decode.dn_is_under(parent, self.config.base_dn):
                    guid = raw.get("objectGUID") or []
                    if guid and len(guid[0]) == 16:
                        # Moved out of base_dn, then deleted: the sync decides whether it was ours.
                        self.out_of_scope.add(str(uuid.UUID(bytes_le=bytes(guid[0]))))
                    continue
                entry = self._entry(dn, raw)
                if entry is not None:
                    yield entry
            if not seen and not self._deleted_objects_readable(conn, base):
                # Samba (and AD) answer an account without the right with an empty list, not an
                # error: the container's own isDeleted is unreadable to it too.
                raise ldap_exc.LDAPInsufficientAccessRightsResult(
                    result=50, description="insufficientAccessRights",
                    message="CN=Deleted Objects is not readable (its isDeleted is hidden)")
        except (ldap_exc.LDAPNoSuchObjectResult, ldap_exc.LDAPInsufficientAccessRightsResult) as exc:
            # By default only administrators may list CN=Deleted Objects in AD.  Without that
            # right deletions still show up, as "missing" after a complete read.
            self.tombstones_unreadable = True
            log.warning(
                "ldap.tombstones_unreadable",
                directory=self.config.name,
                base=base,
                error=_ldap_reason(exc),
                consequence="deleted principals will be reported as missing instead of deleted",
            )

    def _live_parent(self, conn: ldap3.Connection, parent: str | None, deleted_objects: str,
                     parents: dict[str, str | None]) -> str | None:
        """Where a tombstone lived: its lastKnownParent, or, when that is itself a tombstone (an OU
        deleted with what it held: a tree delete), that tombstone's own lastKnownParent, and so on."""
        for _depth in range(64):
            if not parent or not decode.dn_is_under(parent, deleted_objects):
                return parent
            if parent not in parents:
                attrs = ["lastKnownParent"]
                self._log_search(parent, "(objectClass=*)", attrs, scope="base", show_deleted=True)
                conn.search(parent, "(objectClass=*)", ldap3.BASE, attributes=attrs,
                            controls=[(SHOW_DELETED_OID, True, None)])
                found = None
                for item in conn.response or []:
                    if item.get("type") == "searchResEntry":
                        found = tombstone_parent(item["raw_attributes"])
                parents[parent] = found
            parent = parents[parent]
        return parent

    def _deleted_objects_readable(self, conn: ldap3.Connection, base: str) -> bool:
        self._log_search(base, "(objectClass=*)", ["isDeleted"], scope="base", show_deleted=True)
        conn.search(base, "(objectClass=*)", ldap3.BASE, attributes=["isDeleted"],
                    controls=[(SHOW_DELETED_OID, True, None)])
        for item in conn.response or []:
            if item.get("type") == "searchResEntry":
                values = item["raw_attributes"].get("isDeleted") or []
                return bool(values) and bytes(values[0]).upper() == b"TRUE"
        return False

    def _log_search(self, base: str, search_filter: str, attributes, *, scope: str,
                    show_deleted: bool = False) -> None:
        # A reproducible query for the admin: the same search with OpenLDAP's ldapsearch.  -W makes
        # ldapsearch prompt for the password, which is never logged.
        args = ["ldapsearch", "-H", " ".join(self.urls), "-x", "-D", self.config.bind_dn, "-W",
                "-b", base, "-s", scope]
        if not self.use_ssl and not self.ipc:
            args.insert(1, "-ZZ")
        if scope != "base":
            args += ["-E", f"pr={self.config.page_size}/noprompt"]
        if show_deleted:
            args += ["-E", f"!{SHOW_DELETED_OID}"]
        args += [search_filter, *attributes]
        log.debug("ldap.search", directory=self.config.name, query=shlex.join(args))


def read_ranged_values(conn: ldap3.Connection, dn: str, attr: str, start: int, step: int) -> list[bytes]:
    """Read ``attr`` of one entry from index ``start`` on, ``step`` values per request, until the
    server answers with a range ending in ``*``."""
    values: list[bytes] = []
    low = start
    for _ in range(_MAX_RANGE_ROUNDS):
        requested = f"{attr};range={low}-{low + step - 1}"
        conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=[requested])
        got_name = None
        for item in conn.response or []:
            if item.get("type") != "searchResEntry":
                continue
            for name, chunk in item["raw_attributes"].items():
                match = _RANGE_RE.match(name)
                if match and match["attr"].lower() == attr.lower():
                    got_name = match
                    values.extend(chunk)
                elif name.lower() == attr.lower():
                    values.extend(chunk)  # server ignored the range option: this is everything
                    return values
        if got_name is None or got_name["high"] == "*":
            return values
        low = int(got_name["high"]) + 1
    raise DirectoryError(f"ranged read of {attr} on {dn} did not end after {_MAX_RANGE_ROUNDS} rounds")


# ldap3 does not raise for these result codes even with raise_exceptions=True: it hands back the
# entries received so far as if the search had succeeded.  For us that is a partial read, which must
# never reach the store (it would turn the unread part of the directory into "missing").
_INCOMPLETE_RESULTS = {
    3: "the server's time limit",
    4: "the server's size limit",
    10: "a referral to another server",
    11: "an administrative limit",
}


_INCOMPLETE_HINTS = {
    3: "raise the server's time limit for the bind account (AD: MaxQueryDuration in the LDAP query policy; "
       "OpenLDAP: olcLimits time=unlimited for it), or lower page_size so that each page is read within it",
    10: "base_dn is held by the server the referral names: point directories[].url (and base_dn) there, or set "
        "base_dn to a part of the directory this server holds",
}


def _unbind(conn: ldap3.Connection) -> None:
    """Close a read's connection; one that already broke (the read failed) closes quietly."""
    try:
        conn.unbind()
    except ldap_exc.LDAPException:
        pass


def _require_complete(conn: ldap3.Connection, url: str) -> None:
    code = (conn.result or {}).get("result", 0)
    if code in (0, None):
        return
    reason = _INCOMPLETE_RESULTS.get(code, conn.result.get("description") or f"result code {code}")
    message = conn.result.get("message") or conn.result.get("description") or ""
    if conn.result.get("referrals"):
        message += " to " + ", ".join(conn.result["referrals"])
    raise DirectoryError(
        f"{url}: the search stopped early at {reason} ({message}); the read is incomplete and was discarded",
        hint=_INCOMPLETE_HINTS.get(code, "let the bind account read the whole base without size or time limits "
                                   "(AD: MaxPageSize and the query policy; OpenLDAP: olcLimits size.prtotal=unlimited "
                                   "for it), or narrow base_dn"))


_TLS_HINT = (
    "set directories[].tls.ca_file to the PEM file of the CA that issued the DC's certificate, and use "
    "the host name that certificate names"
)


def _tls_reason(exc: Exception) -> str:
    text = str(exc)
    match = re.search(r"(certificate verify failed[^'\"\]\)]*|hostname [^'\"\]\)]*|doesn't match[^'\"\]\)]*)",
                      text, re.IGNORECASE)
    return match.group(1).strip() if match else text


def _ldap_reason(exc: Exception) -> str:
    description = getattr(exc, "description", None)
    message = getattr(exc, "message", None)
    if description:
        return f"{description}{f' ({message})' if message else ''}"
    return str(exc) or exc.__class__.__name__

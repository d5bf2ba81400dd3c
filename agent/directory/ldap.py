"""Live reader for generic LDAP directories: OpenLDAP, 389 Directory Server, FreeIPA.

The connection is the AD reader's (TLS always, verification on, simple bind, raw values, paged
searches marked critical, the reproducible ``ldapsearch`` debug log); what differs is what is
searched and how entries decode (``ldap_entries``, docs/directory.md "Generic LDAP"):
- three paged searches under base_dn: users, then groups, then computers (each by its filter);
  users first so that posixGroup ``memberUid`` values resolve to the users' DNs;
- no tombstones: a deleted entry is simply absent after a complete read (-> missing);
- any error makes the whole read fail, nothing is applied.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import ldap3
import structlog
from ldap3.core import exceptions as ldap_exc
from pydantic import SecretStr

from agent.config import LdapConfig
from agent.directory import decode
from agent.directory.ad import PAGED_RESULTS_OID, ActiveDirectoryReader, _ldap_reason
from agent.directory.ldap_entries import MEMBER_ATTRIBUTES, STATE_ATTRIBUTES, entry_from_ldap, user_uids
from agent.directory.records import DirectoryEntry, EntryKind, ReadStats
from agent.errors import DirectoryError

log = structlog.get_logger("agent.directory.ldap")


class LdapReader(ActiveDirectoryReader):
    config: LdapConfig
    supports_incremental = False  # no uSNChanged: every sync is a complete read
    _BASE_DN_HINT = "check directories[].base_dn (e.g. dc=example,dc=com) and the server's ACL for the bind account"
    _SIZE_LIMIT_HINT = ("the server's size limit applies to the bind account despite paging: raise it for that "
                        "account (OpenLDAP: limits dn.exact=\"<bind_dn>\" size.prtotal=unlimited)")
    _TIME_LIMIT_HINT = "the server's time limit applies to the bind account: raise it for that account"

    def __init__(self, config: LdapConfig, password: SecretStr) -> None:
        super().__init__(config, password)  # type: ignore[arg-type]  (same connection settings)

    def _attributes(self, kind: EntryKind) -> list[str]:
        names = self.config.attributes
        wanted = [names.identity, names.display_name, names.mail, *STATE_ATTRIBUTES,
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

    def read(self) -> Iterator[DirectoryEntry]:
        """Stream every user, then group, then computer under base_dn."""
        counts = {kind: 0 for kind in EntryKind}
        searches = pages = 0
        uid_to_dn: dict[str, str] = {}
        conn = self.connect()
        try:
            for kind, search_filter in self._searches():
                searches += 1
                last_page = 0
                for dn, raw, page_count in self._paged_search(conn, self.config.base_dn, search_filter,
                                                              self._attributes(kind)):
                    last_page = page_count
                    entry = self._ldap_entry(dn, raw, kind, uid_to_dn)
                    if kind is EntryKind.USER:
                        for uid in user_uids(raw):
                            uid_to_dn.setdefault(uid, dn)
                    counts[kind] += 1
                    yield entry
                pages += last_page
        except ldap_exc.LDAPException as exc:
            raise self._read_error(exc) from None
        finally:
            try:
                conn.unbind()
            except ldap_exc.LDAPException:
                pass
        self.stats = ReadStats(
            users=counts[EntryKind.USER],
            groups=counts[EntryKind.GROUP],
            computers=counts[EntryKind.COMPUTER],
            searches=searches,
            pages=pages,
        )

    def _ldap_entry(self, dn: str, raw, kind: EntryKind, uid_to_dn: dict[str, str]) -> DirectoryEntry:
        try:
            return entry_from_ldap(dn, raw, kind, self.config.attributes, member_dns_by_uid=uid_to_dn)
        except ValueError as exc:
            raise DirectoryError(
                f"{self.config.url}: cannot decode {dn}: {exc}",
                hint="the read was discarded; nothing was changed",
            ) from None

"""Directory readers: each turns a source (live AD, an LDIF export) into plain records."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from agent.directory.records import DirectoryEntry, EntryKind, ReadStats

__all__ = ["DirectoryEntry", "EntryKind", "ReadStats", "DirectoryReader", "make_reader"]


class DirectoryReader(Protocol):
    stats: ReadStats

    def describe(self) -> str: ...

    def read(self) -> Iterator[DirectoryEntry]:
        """Yield every principal; raise DirectoryError if the read cannot complete."""
        ...

    def test_connection(self) -> dict[str, Any]: ...


def make_reader(config) -> DirectoryReader:
    """The reader for one ``directories[]`` entry of the configuration."""
    from agent.config import ActiveDirectoryConfig, LdapConfig, LdifConfig, resolve_password

    if isinstance(config, LdifConfig):
        from agent.directory.ldif import LdifReader

        return LdifReader(config.path, base_dn=config.base_dn, directory=config.name)
    if isinstance(config, ActiveDirectoryConfig):
        from agent.directory.ad import ActiveDirectoryReader

        return ActiveDirectoryReader(config, resolve_password(config, where=f"directory {config.name}"))
    if isinstance(config, LdapConfig):
        from agent.directory.ldap import LdapReader

        return LdapReader(config, resolve_password(config, where=f"directory {config.name}"))
    raise TypeError(f"no reader for {type(config).__name__}")

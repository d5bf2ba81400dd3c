"""Throwaway real servers (Samba AD DC, PostgreSQL) for the integration tests."""

from .common import ServerStartError, ServerUnavailable
from .openldap import OpenLdapServer
from .postgres import PostgresServer
from .samba import SambaDC

__all__ = ["OpenLdapServer", "PostgresServer", "SambaDC", "ServerStartError", "ServerUnavailable"]

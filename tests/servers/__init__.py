"""Throwaway real servers (Samba AD DC, PostgreSQL) for the integration tests."""

from .common import ServerStartError, ServerUnavailable
from .postgres import PostgresServer
from .samba import SambaDC

__all__ = ["PostgresServer", "SambaDC", "ServerStartError", "ServerUnavailable"]

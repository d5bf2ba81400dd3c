"""Shared fixtures: real throwaway servers for integration tests.

Policy for servers that cannot be started:

* the software is missing (or we lack root for Samba): skip the test locally,
  but FAIL it when CI=true — CI must never go green by skipping;
* anything else (port taken, provisioning or start-up error): fail, with the
  tail of the server's log in the message.

A session fixture that skips or fails does so once; pytest re-reports the
cached outcome for every test that uses it, without retrying the start.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator

import pytest

from tests.servers import OpenLdapServer, PostgresServer, SambaDC, ServerStartError, ServerUnavailable


def _in_ci() -> bool:
    return os.environ.get("CI") == "true"


def _unavailable(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"{reason} [CI=true: a test server that cannot run is a failure, not a skip]", pytrace=False)
    pytest.skip(reason)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by the servers they use, so `-m "not samba"` etc. work
    without every test module remembering to add the marker."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "samba_dc" in names and not item.get_closest_marker("samba"):
            item.add_marker(pytest.mark.samba)
        if "postgres_server" in names and not item.get_closest_marker("postgres"):
            item.add_marker(pytest.mark.postgres)
        if ("openldap" in names or "openldap_faults" in names) and not item.get_closest_marker("openldap"):
            item.add_marker(pytest.mark.openldap)


def _running(server, label: str):
    """Start a throwaway server for a session fixture, yield it, clean it up.  Missing software
    skips locally and fails in CI (_unavailable); any other start-up error fails."""
    try:
        server.start()
    except ServerUnavailable as exc:
        server.cleanup()
        _unavailable(f"{label} unavailable: {exc}")
    except ServerStartError as exc:
        server.cleanup()
        pytest.fail(f"{label} failed to start: {exc}", pytrace=False)
    except BaseException:
        server.cleanup()
        raise
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def samba_dc() -> Iterator[SambaDC]:
    """A freshly provisioned Samba AD DC (CORP.EXAMPLE.COM) shared by the session."""
    yield from _running(SambaDC(), "Samba AD DC")


def _safe_name(text: str, limit: int) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:limit] or "test"


@pytest.fixture
def samba_ou(samba_dc: SambaDC, request: pytest.FixtureRequest) -> str:
    """A new, uniquely named OU under the base DN for this test only.

    It is left in place afterwards (deleting it would only add tombstones).
    """
    name = f"t-{_safe_name(request.node.name, 40)}-{uuid.uuid4().hex[:8]}"
    return samba_dc.add_ou(name)


@pytest.fixture(scope="session")
def openldap() -> Iterator[OpenLdapServer]:
    """A throwaway OpenLDAP slapd (dc=example,dc=com) over LDAPS/StartTLS with the test CA, a rootdn
    for populating and a read-only bind account (tests/servers/openldap.py)."""
    yield from _running(OpenLdapServer(), "OpenLDAP")


@pytest.fixture(scope="session")
def openldap_faults() -> Iterator[OpenLdapServer]:
    """A second, separate slapd like `openldap`, with the retcode overlay for making the server
    itself answer with chosen result codes or delays, and a reader with a one-second time limit
    (OpenLdapServer(faults=True))."""
    yield from _running(OpenLdapServer(faults=True), "OpenLDAP (fault injection)")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL cluster (trust auth on 127.0.0.1) for the session."""
    yield from _running(PostgresServer(), "PostgreSQL")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """A SQLAlchemy URL of an empty database: a SQLite file, or a fresh
    PostgreSQL database of the session cluster (started only when needed)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/state.db"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database(f"t_{uuid.uuid4().hex[:16]}")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's headless Chromium, for tests that look at the HTML report in a real browser."""
    import shutil

    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        _unavailable("Chromium not installed (Debian package `chromium`; tests/run installs it)")
    return path


@pytest.fixture(scope="session")
def smtp_pki(tmp_path_factory) -> "Path":
    """A throwaway test CA and a localhost certificate for the SMTP (and HTTPS webhook) servers."""
    try:
        from tests.servers.smtp import write_test_pki
        import aiosmtpd  # noqa: F401
    except ImportError as exc:
        _unavailable(f"SMTP test server unavailable: {exc} (pip install -e '.[test]' installs aiosmtpd)")
    folder = tmp_path_factory.mktemp("smtp-pki")
    write_test_pki(folder)
    return folder


@pytest.fixture
def smtp_server(smtp_pki, monkeypatch):
    """A real SMTP server (aiosmtpd) on a free localhost port: STARTTLS with the test CA's
    certificate, AUTH LOGIN/PLAIN for `server.user` / `server.password` (also exported as
    $CAL_AGENT_TEST_SMTP_PASSWORD); `server.stop()` / `server.start()` take it down and back."""
    from tests.servers.smtp import SmtpServer

    server = SmtpServer(smtp_pki).start()
    monkeypatch.setenv("CAL_AGENT_TEST_SMTP_PASSWORD", server.password)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def webhook_server():
    """A real HTTP server (http.server in a thread) recording the webhook POSTs it receives."""
    from tests.servers.smtp import WebhookServer

    server = WebhookServer().start()
    try:
        yield server
    finally:
        server.stop()

"""Smoke tests proving the server fixtures are real and behave like production.

They exercise the test infrastructure only (tests/servers, tests/conftest.py)
and deliberately do not import the `agent` package.
"""

from __future__ import annotations

import contextlib
import ssl
import uuid

import pytest
import sqlalchemy as sa
from ldap3 import BASE, NONE, SUBTREE, Connection, Server, Tls
from ldap3.core.exceptions import LDAPException, LDAPSocketOpenError, LDAPStartTLSError
from ldap3.utils.conv import escape_bytes

from tests.servers import PostgresServer, SambaDC
from tests.servers.samba import SHOW_DELETED_OID


def _unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


# ---------------------------------------------------------------- Samba


@pytest.mark.samba
def test_readonly_account_reads_users_over_verified_ldaps(samba_dc: SambaDC, samba_ou: str) -> None:
    alice = samba_dc.add_user(_unique("alice"), samba_ou, display_name="Alice A", mail="alice@corp.example.com")
    bob = samba_dc.add_user(_unique("bob"), samba_ou, disabled=True)
    bind_upn, password = samba_dc.create_readonly_account(_unique("reader"), "Rd-only-Passw0rd!")

    tls = Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(samba_dc.ca_file))
    conn = Connection(Server(samba_dc.url, tls=tls, get_info=NONE), bind_upn, password, auto_bind=True)
    try:
        assert conn.server.ssl and conn.bound
        conn.search(
            samba_ou,
            "(&(objectCategory=person)(objectClass=user))",
            SUBTREE,
            attributes=["sAMAccountName", "userAccountControl", "displayName", "mail"],
        )
        found = {entry["dn"]: entry["attributes"] for entry in conn.response if entry["type"] == "searchResEntry"}
        assert set(found) == {alice, bob}
        assert found[alice]["userAccountControl"] == ["512"]
        assert found[alice]["displayName"] == ["Alice A"]
        assert found[bob]["userAccountControl"] == ["514"]
    finally:
        conn.unbind()


@pytest.mark.samba
def test_readonly_account_is_not_privileged(samba_dc: SambaDC, samba_ou: str) -> None:
    bind_upn, password = samba_dc.create_readonly_account(_unique("ro"), "Rd-only-Passw0rd!")
    conn = samba_dc.connect(bind_upn, password)
    try:
        reader_dn = f"CN={bind_upn.split('@')[0]},{samba_dc.users_dn}"
        conn.search(reader_dn, "(objectClass=*)", BASE, attributes=["memberOf", "primaryGroupID"])
        attrs = conn.response[0]["attributes"]
        assert attrs.get("memberOf", []) == []  # no explicit groups at all
        assert attrs["primaryGroupID"] == ["513"]  # Domain Users
        # And it cannot write.
        assert not conn.add(f"OU={_unique('nope')},{samba_ou}", ["organizationalUnit"])
        assert conn.result["description"] == "insufficientAccessRights"
    finally:
        conn.unbind()


@pytest.mark.samba
def test_starttls_with_verification(samba_dc: SambaDC) -> None:
    tls = Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(samba_dc.ca_file))
    server = Server(samba_dc.starttls_url, tls=tls, get_info=NONE)
    conn = Connection(server, samba_dc.admin_upn, samba_dc.admin_password)
    try:
        conn.open()
        assert conn.start_tls()
        assert conn.bind(), conn.result
        conn.search(samba_dc.base_dn, "(objectClass=domain)", BASE, attributes=["objectGUID"])
        assert len(conn.response) == 1
    finally:
        conn.unbind()


@pytest.mark.samba
def test_plain_simple_bind_without_tls_is_refused(samba_dc: SambaDC) -> None:
    conn = Connection(Server(samba_dc.starttls_url, get_info=NONE), samba_dc.admin_upn, samba_dc.admin_password)
    try:
        assert not conn.bind()
        assert conn.result["description"] == "strongerAuthRequired"
    finally:
        conn.unbind()


@pytest.mark.samba
def test_ldaps_without_the_test_ca_is_not_trusted(samba_dc: SambaDC) -> None:
    # Verification on, system trust store only: the throwaway CA is unknown.
    tls = Tls(validate=ssl.CERT_REQUIRED)
    server = Server(samba_dc.url, tls=tls, get_info=NONE, connect_timeout=5)
    conn = Connection(server, samba_dc.admin_upn, samba_dc.admin_password)
    with pytest.raises(LDAPSocketOpenError, match="CERTIFICATE_VERIFY_FAILED"):
        conn.open()


@pytest.mark.samba
def test_starttls_without_the_test_ca_is_not_trusted(samba_dc: SambaDC) -> None:
    tls = Tls(validate=ssl.CERT_REQUIRED)
    conn = Connection(Server(samba_dc.starttls_url, tls=tls, get_info=NONE, connect_timeout=5))
    try:
        conn.open()
        with pytest.raises(LDAPStartTLSError, match="CERTIFICATE_VERIFY_FAILED"):
            conn.start_tls()
    finally:
        with contextlib.suppress(LDAPException):  # the failed handshake left the socket dead
            conn.unbind()


@pytest.mark.samba
def test_set_primary_group(samba_dc: SambaDC, samba_ou: str) -> None:
    user = samba_dc.add_user(_unique("pg"), samba_ou)
    group = samba_dc.add_group(_unique("grp"), samba_ou)
    assert samba_dc.get_attributes(user, "primaryGroupID")["primaryGroupID"] == ["513"]

    token = samba_dc.set_primary_group(user, group)

    attrs = samba_dc.get_attributes(group, "primaryGroupToken", "objectSid")
    assert attrs["primaryGroupToken"] == [str(token)]
    assert token not in (512, 513)
    assert samba_dc.get_attributes(user, "primaryGroupID")["primaryGroupID"] == [str(token)]


@pytest.mark.samba
def test_deleted_user_leaves_a_tombstone(samba_dc: SambaDC, samba_ou: str) -> None:
    sam = _unique("gone")
    user = samba_dc.add_user(sam, samba_ou)
    guid = samba_dc.get_guid(user)
    assert str(uuid.UUID(guid)) == guid  # canonical lower-case form

    samba_dc.delete(user)

    conn = samba_dc.connect()
    try:
        # Gone for a normal search...
        conn.search(samba_dc.base_dn, f"(sAMAccountName={sam})", SUBTREE, attributes=["1.1"])
        assert [e for e in conn.response if e["type"] == "searchResEntry"] == []
        # ...but present as a tombstone with the Show Deleted control.
        conn.search(
            f"CN=Deleted Objects,{samba_dc.base_dn}",
            f"(objectGUID={escape_bytes(uuid.UUID(guid).bytes_le)})",
            SUBTREE,
            attributes=["isDeleted", "objectGUID", "lastKnownParent"],
            controls=[(SHOW_DELETED_OID, True, None)],
        )
        entries = [e for e in conn.response if e["type"] == "searchResEntry"]
        assert len(entries) == 1
        tombstone = entries[0]
        assert tombstone["dn"].endswith(f"CN=Deleted Objects,{samba_dc.base_dn}")
        assert tombstone["attributes"]["isDeleted"] == ["TRUE"]
        assert str(uuid.UUID(bytes_le=tombstone["raw_attributes"]["objectGUID"][0])) == guid
        assert tombstone["attributes"]["lastKnownParent"][0].lower() == samba_ou.lower()
    finally:
        conn.unbind()
    assert samba_dc.find_tombstone(guid)["dn"] == tombstone["dn"]


@pytest.mark.samba
def test_directory_helpers(samba_dc: SambaDC, samba_ou: str) -> None:
    import datetime as dt

    sub = samba_dc.add_ou("Sub", samba_ou)
    expires = dt.datetime(2031, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    user = samba_dc.add_user(_unique("h"), samba_ou, account_expires=expires, attributes={"department": "IT"})
    pc = samba_dc.add_computer(
        _unique("pc"), samba_ou, dns_host_name="pc1.corp.example.com",
        operating_system="Windows 11 Pro", operating_system_version="10.0 (22631)",
    )
    group = samba_dc.add_group(_unique("g"), samba_ou, members=[user])
    guid = samba_dc.get_guid(user)

    assert samba_dc.get_attributes(pc, "userAccountControl", "sAMAccountName")["userAccountControl"] == ["4096"]
    assert samba_dc.get_attributes(pc, "sAMAccountName")["sAMAccountName"][0].endswith("$")
    assert samba_dc.get_attributes(user, "accountExpires")["accountExpires"] == ["135695630450000000"]
    samba_dc.disable(pc)
    assert samba_dc.get_attributes(pc, "userAccountControl")["userAccountControl"] == ["4098"]
    samba_dc.disable(user)
    samba_dc.enable(user)
    assert samba_dc.get_attributes(user, "userAccountControl")["userAccountControl"] == ["512"]

    samba_dc.add_members(group, [pc])
    samba_dc.remove_members(group, [user])
    assert samba_dc.get_attributes(group, "member")["member"] == [pc]

    samba_dc.set_attributes(user, {"department": None, "title": "Engineer"})
    attrs = samba_dc.get_attributes(user, "department", "title")
    assert "department" not in attrs or attrs["department"] == []
    assert attrs["title"] == ["Engineer"]

    moved = samba_dc.move(user, sub)
    renamed = samba_dc.rename(moved, "Renamed, User")
    assert renamed == f"CN=Renamed\\, User,{sub}"
    assert samba_dc.get_guid(renamed) == guid  # same object throughout
    assert samba_dc.rename(sub, "Sub2").startswith("OU=Sub2,")


@pytest.mark.samba
def test_populating_many_entries_is_quick(samba_dc: SambaDC, samba_ou: str) -> None:
    import time

    started = time.monotonic()
    users = [samba_dc.add_user(f"bulk{i}{uuid.uuid4().hex[:6]}", samba_ou) for i in range(40)]
    for i in range(120):
        samba_dc.add_computer(f"BULK{i}{uuid.uuid4().hex[:4]}", samba_ou)
    for i in range(40):
        samba_dc.add_group(f"bulkg{i}{uuid.uuid4().hex[:6]}", samba_ou, members=users[i:i + 5])
    elapsed = time.monotonic() - started
    # ~25 ms per user (password hashing), a few ms per other entry.
    assert elapsed < 20, f"200 entries took {elapsed:.1f}s"


# ---------------------------------------------------------------- databases


def test_database_url_accepts_a_table(database_url: str) -> None:
    engine = sa.create_engine(database_url)
    try:
        meta = sa.MetaData()
        table = sa.Table("probe", meta, sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.String(50)))
        meta.create_all(engine)
        with engine.begin() as conn:
            conn.execute(table.insert(), [{"name": "a"}, {"name": "b"}])
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one() == 2
        expected = "postgresql" if database_url.startswith("postgresql") else "sqlite"
        assert engine.dialect.name == expected
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_database_urls_are_isolated(postgres_server: PostgresServer) -> None:
    first = sa.create_engine(postgres_server.create_database(_unique("iso_a_")))
    second = sa.create_engine(postgres_server.create_database(_unique("iso_b_")))
    try:
        with first.begin() as conn:
            conn.execute(sa.text("CREATE TABLE only_here (id int)"))
        with second.connect() as conn:
            assert conn.execute(sa.text("SELECT to_regclass('only_here')")).scalar() is None
    finally:
        first.dispose()
        second.dispose()


@pytest.mark.postgres
def test_postgres_restart_keeps_data(postgres_server: PostgresServer) -> None:
    engine = sa.create_engine(postgres_server.create_database(_unique("restart_")), pool_pre_ping=True)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE survivor (v text)"))
            conn.execute(sa.text("INSERT INTO survivor VALUES ('kept')"))
        backend_pid = None
        with engine.connect() as conn:
            backend_pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()

        postgres_server.restart()

        assert postgres_server.running
        # pool_pre_ping replaces the pooled connection the restart broke.
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT v FROM survivor")).scalar() == "kept"
            assert conn.execute(sa.text("SELECT pg_backend_pid()")).scalar() != backend_pid
    finally:
        engine.dispose()

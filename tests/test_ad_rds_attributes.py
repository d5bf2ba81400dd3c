"""Per-user RDS CAL attributes (msTSExpireDate, msTSLicenseVersion, msTSManagingLS and their 2-4
variants, R27) written on users of a real Samba AD DC, as an RD licence server would, and read
back by the AD reader over LDAPS with the read-only account."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from pydantic import SecretStr

from agent.config import ActiveDirectoryConfig
from agent.directory.ad import ActiveDirectoryReader
from agent.directory.ad_entries import RDS_LICENSE_SLOTS
from agent.engine import load_view
from agent.store.db import Store
from agent.store.sync import run_sync

pytestmark = pytest.mark.samba

RDS_ATTRIBUTES = [name for slot in RDS_LICENSE_SLOTS for name in slot]


@pytest.fixture(scope="module")
def rds_schema(samba_dc):
    """Fail (with the reason) if this Samba's schema lacks the attributes: the tests would prove
    nothing, and CI must never go green by skipping."""
    conn = samba_dc.connect()
    try:
        conn.search(f"CN=Schema,CN=Configuration,{samba_dc.base_dn}",
                    "(|" + "".join(f"(lDAPDisplayName={name})" for name in RDS_ATTRIBUTES) + ")",
                    attributes=["lDAPDisplayName"])
        present = {str(entry.lDAPDisplayName) for entry in conn.entries}
    finally:
        conn.unbind()
    missing = [name for name in RDS_ATTRIBUTES if name not in present]
    if missing:
        pytest.fail(f"this Samba's AD schema has no {', '.join(missing)}: per-user RDS CAL attributes cannot "
                    "be written to test their reading", pytrace=False)


@pytest.fixture(scope="module")
def reader_account(samba_dc):
    """An ordinary Domain User, like the agent's least-privilege bind account."""
    return samba_dc.create_readonly_account("calread-rds", "R3ad-Only-Rds!")


def read_ou(dc, ou: str, account) -> dict:
    upn, password = account
    config = ActiveDirectoryConfig(type="active_directory", name="corp", url=dc.url, base_dn=ou, bind_dn=upn,
                                   password_env="CAL_AGENT_UNUSED", tls={"ca_file": str(dc.ca_file)},
                                   read_deleted=False)
    return ActiveDirectoryReader(config, SecretStr(password))


def test_reader_returns_the_rds_cals_a_licence_server_wrote(samba_dc, samba_ou, rds_schema, reader_account,
                                                            tmp_path):
    one = samba_dc.add_user("rds-one", samba_ou)
    two = samba_dc.add_user("rds-two", samba_ou)
    samba_dc.add_user("rds-none", samba_ou)
    # As a Windows licence server writes one CAL: the number, the key pack ID in ...3, "7" in ...2.
    samba_dc.set_attributes(one, {
        "msTSExpireDate": "20260118115555.0Z",
        "msTSLicenseVersion": "393218",
        "msTSManagingLS": "00252-20000-35572-AT477",
        "msTSLicenseVersion2": "7",
        "msTSLicenseVersion3": "C50-6.02-S",
    })
    # A first and a second CAL, each with its own expiry.
    samba_dc.set_attributes(two, {
        "msTSExpireDate": "20260301080000.0Z",
        "msTSLicenseVersion": "393216",
        "msTSManagingLS": "00377-70517-40386-AT629",
        "msTSExpireDate2": "20260402090000.0Z",
        "msTSLicenseVersion2": "C50-10.01-S",
        "msTSManagingLS2": "00377-70517-40386-AT629",
    })
    assert samba_dc.get_attributes(one, "msTSLicenseVersion3")["msTSLicenseVersion3"] == ["C50-6.02-S"]

    reader = read_ou(samba_dc, samba_ou, reader_account)
    entries = {e.name: e for e in reader.read()}
    assert [(c.version, c.expires, c.license_server) for c in entries["rds-one"].rds_licenses] == [
        ("2012", datetime(2026, 1, 18, 11, 55, 55, tzinfo=timezone.utc), "00252-20000-35572-AT477")]
    assert [(c.version, c.expires) for c in entries["rds-two"].rds_licenses] == [
        ("2008", datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc)),
        ("2019", datetime(2026, 4, 2, 9, 0, tzinfo=timezone.utc)),
    ]
    assert entries["rds-none"].rds_licenses == ()

    # and on through the store to the compliance view
    store = Store(f"sqlite:///{tmp_path}/state.db")
    try:
        run_sync(store, "corp", reader, inactive_after_days=90)
        cals = {p.name: p.rds_cals for p in load_view(store, ["corp"]).principals}
        assert [c.version for c in cals["rds-two"]] == ["2008", "2019"] and cals["rds-none"] == ()
        # The licence server renews the CAL: one change, no state change.
        samba_dc.set_attributes(one, {"msTSExpireDate": "20260319115555.0Z"})
        outcome = run_sync(store, "corp", read_ou(samba_dc, samba_ou, reader_account), inactive_after_days=90)
        assert outcome.events == {"rds_licenses": 1}
    finally:
        store.close()

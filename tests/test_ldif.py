"""The LDIF reader on small hand-written exports.  Plain files, no server."""

from __future__ import annotations

import base64
import uuid

import pytest

from agent.directory import decode
from agent.directory.ldif import LdifReader
from agent.errors import DirectoryError

GUID = uuid.UUID("5b1c5c3e-0000-4000-8000-000000000001")


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def write(tmp_path, text: str):
    path = tmp_path / "export.ldif"
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_folded_base64_and_multivalued_records(tmp_path):
    display = "José Müller"
    path = write(tmp_path, f"""version: 1
# exported by ldifde

dn: CN=Jose Muller,OU=Staff,DC=corp,DC=example,DC=com
objectClass: top
objectClass: person
objectClass: organizationalPerson
objectClass: user
objectGUID:: {b64(GUID.bytes_le)}
sAMAccountName: jmuller
displayName:: {b64(display.encode())}
userAccountControl: 512
mail: jose@corp.exa
 mple.com

dn: CN=Staff,OU=Groups,DC=corp,DC=example,DC=com
objectClass: group
objectGUID:: {b64(uuid.uuid4().bytes_le)}
sAMAccountName: Staff
member: CN=Jose Muller,OU=Staff,DC=corp,DC=example,DC=com
member: CN=Someone Else,OU=Staff,DC=corp,DC=example,DC=com

dn: OU=Staff,DC=corp,DC=example,DC=com
objectClass: organizationalUnit
""")
    reader = LdifReader(path)
    entries = list(reader.read())
    assert [e.name for e in entries] == ["jmuller", "Staff"]
    assert entries[0].display_name == display and entries[0].mail == "jose@corp.example.com"
    assert entries[0].guid == str(GUID)
    assert len(entries[1].members) == 2
    assert (reader.stats.users, reader.stats.groups) == (1, 1)


def test_tombstone_is_read_as_deleted(tmp_path):
    path = write(tmp_path, f"""dn: CN=Ann\\0ADEL:{GUID},CN=Deleted Objects,DC=corp,DC=example,DC=com
objectClass: top
objectClass: user
isDeleted: TRUE
objectGUID:: {b64(GUID.bytes_le)}
sAMAccountName: ann
lastKnownParent: OU=Staff,DC=corp,DC=example,DC=com
""")
    (entry,) = LdifReader(path, base_dn="DC=corp,DC=example,DC=com").read()
    assert entry.deleted and entry.name == "ann"


def test_base_dn_limits_entries(tmp_path):
    path = write(tmp_path, f"""dn: CN=a,OU=Staff,DC=corp
objectClass: user
objectGUID:: {b64(uuid.uuid4().bytes_le)}
sAMAccountName: a

dn: CN=b,OU=Other,DC=corp
objectClass: user
objectGUID:: {b64(uuid.uuid4().bytes_le)}
sAMAccountName: b
""")
    assert [e.name for e in LdifReader(path, base_dn="OU=Staff,DC=corp").read()] == ["a"]


@pytest.mark.parametrize("text,needle", [
    ("dn: CN=a,DC=corp\nobjectClass user\n", "line 2"),
    ("dn: CN=a,DC=corp\nobjectGUID:: !!!notbase64\n", "bad base64"),
    ("dn: CN=a,DC=corp\nchangetype: add\n", "change records"),
    (" continued\n", "continuation"),
    ("dn: CN=a,DC=corp\nobjectClass: user\nobjectGUID:: AAAA\nsAMAccountName: a\n", "objectGUID"),
    ("dn: CN=a,DC=corp\njpegPhoto:< file:///etc/passwd\n", "URL values"),
])
def test_bad_ldif_is_a_clear_error_with_position(tmp_path, text, needle):
    with pytest.raises(DirectoryError, match=needle):
        list(LdifReader(write(tmp_path, text)).read())


def test_missing_file_is_a_directory_error(tmp_path):
    with pytest.raises(DirectoryError, match="does not exist"):
        list(LdifReader(tmp_path / "nope.ldif").read())


def test_sid_and_filetime_decoded_from_ldif(tmp_path):
    sid = decode.sid_bytes("S-1-5-21-10-20-30-1105")
    path = write(tmp_path, f"""dn: CN=a,DC=corp
objectClass: user
objectGUID:: {b64(uuid.uuid4().bytes_le)}
objectSid:: {b64(sid)}
sAMAccountName: a
accountExpires: 9223372036854775807
pwdLastSet: 133499574000000000
whenCreated: 20240117093000.0Z
""")
    (entry,) = LdifReader(path).read()
    assert entry.sid == "S-1-5-21-10-20-30-1105" and entry.account_expires is None
    assert entry.pwd_last_set == entry.when_created


def test_per_user_rds_cals_are_read_from_an_export(tmp_path):
    path = write(tmp_path, f"""dn: CN=Rita Remote,OU=Staff,DC=corp,DC=example,DC=com
objectClass: top
objectClass: person
objectClass: organizationalPerson
objectClass: user
objectGUID:: {b64(GUID.bytes_le)}
sAMAccountName: rremote
msTSExpireDate: 20260118115555.0Z
msTSLicenseVersion: 393218
msTSManagingLS: 00252-20000-35572-AT477
msTSExpireDate2: 20260301080000.0Z
msTSLicenseVersion2: 393216
msTSManagingLS2: 00377-70517-40386-AT629

dn: CN=Olga Once,OU=Staff,DC=corp,DC=example,DC=com
objectClass: user
objectGUID:: {b64(uuid.uuid4().bytes_le)}
sAMAccountName: oonce
msTSExpireDate: 20260118115555.0Z
msTSLicenseVersion: 393218
msTSManagingLS: 00252-20000-35572-AT477
msTSLicenseVersion2: 7
msTSLicenseVersion3: C50-6.02-S

dn: CN=Nora Local,OU=Staff,DC=corp,DC=example,DC=com
objectClass: user
objectGUID:: {b64(uuid.uuid4().bytes_le)}
sAMAccountName: nlocal
""")
    rita, olga, nora = LdifReader(path).read()
    assert [(c.version, c.expires.isoformat(), c.license_server) for c in rita.rds_licenses] == [
        ("2012", "2026-01-18T11:55:55+00:00", "00252-20000-35572-AT477"),
        ("2008", "2026-03-01T08:00:00+00:00", "00377-70517-40386-AT629"),
    ]
    # As licence servers write it: the 2 and 3 values without msTSExpireDate2/3 are one CAL.
    assert [c.version for c in olga.rds_licenses] == ["2012"]
    assert nora.rds_licenses == ()

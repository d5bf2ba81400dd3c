"""A throwaway OpenLDAP server (Debian's slapd) for integration tests.

`OpenLdapServer.start()` writes a cn=config LDIF, loads it with `slapadd -n0` into a slapd.d in a
temp directory, and runs slapd in the foreground on free ports: LDAPS (a certificate from the test
CA, for localhost / 127.0.0.1) and plain LDAP for StartTLS, plus an ldapi:// socket in the temp dir.  One mdb database `dc=example,dc=com`
with:
- the ppolicy overlay when the module is installed (pwdAccountLockedTime is then its operational
  attribute), else just that attribute defined in a small schema;
- a rootdn (`cn=admin,...`) used by the tests to populate it;
- a read-only bind account (`cn=cal-reader,ou=system,...`) that the ACL lets read everything but
  passwords: the least-privilege set-up docs/directory.md shows.
With `faults=True` (a separate instance, the `openldap_faults` fixture) the database also carries the
retcode overlay (slapo-retcode, "retcode-indir"): an entry of the auxiliary class errAuxObject makes the
server itself answer with its errCode (or sleep errSleepTime seconds) when a search reaches it; and a
third reader, `timed_reader_dn`, has a one-second time limit.  `add_fault()` adds such an entry.
The system slapd service is never used (tests/run installs the package with policy-rc.d).
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import (
    end_process,
    unbind_quietly,
    ServerStartError,
    ServerUnavailable,
    find_program,
    free_port,
    keep_workdirs,
    port_is_listening,
    random_password,
    tail,
)

SUFFIX = "dc=example,dc=com"
MODULE_PATH = Path("/usr/lib/ldap")
SCHEMA_DIR = Path("/etc/ldap/schema")

_FALLBACK_PPOLICY_SCHEMA = """\
dn: cn=ppolicy-attrs,cn=schema,cn=config
objectClass: olcSchemaConfig
cn: ppolicy-attrs
olcAttributeTypes: ( 1.3.6.1.4.1.42.2.27.8.1.17 NAME 'pwdAccountLockedTime'
  EQUALITY generalizedTimeMatch ORDERING generalizedTimeOrderingMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.24 SINGLE-VALUE USAGE directoryOperation )
"""


MANAGE_DSA_IT = ("2.16.840.1.113730.3.4.2", True, None)  # RFC 3296: treat special entries as plain entries


class OpenLdapServer:
    def __init__(self, *, start_timeout: float = 20.0, faults: bool = False) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="cal-agent-slapd-"))
        self.start_timeout = start_timeout
        self.base_dn = SUFFIX
        self.admin_dn = f"cn=admin,{SUFFIX}"
        self.admin_password = random_password()
        self.reader_dn = f"cn=cal-reader,ou=system,{SUFFIX}"
        self.reader_password = random_password()
        # A reader left with the server's default size limit (olcSizeLimit 50, which also caps a paged
        # search's total): for the sizeLimitExceeded fault test.
        self.limited_reader_dn = f"cn=cal-limited,ou=system,{SUFFIX}"
        self.limited_reader_password = random_password()
        self.faults = faults
        # faults=True only: a reader whose searches the server stops after one second (olcLimits time=1).
        self.timed_reader_dn = f"cn=cal-timed,ou=system,{SUFFIX}"
        self.timed_reader_password = random_password()
        self.ldaps_port = self.ldap_port = 0
        self.ca_file = self.workdir / "tls" / "ca.pem"
        self.log_file = self.workdir / "slapd.log"
        self.ppolicy = False
        self.startup_seconds: float | None = None
        self._process: subprocess.Popen | None = None
        self._log_handle = None
        self._admin_conn = None

    @property
    def url(self) -> str:
        return f"ldaps://localhost:{self.ldaps_port}"

    @property
    def starttls_url(self) -> str:
        return f"ldap://localhost:{self.ldap_port}"

    @property
    def ldapi_url(self) -> str:
        from urllib.parse import quote

        return "ldapi://" + quote(str(self.workdir / "ldapi"), safe="")

    @staticmethod
    def missing_software() -> str | None:
        for program in ("slapd", "slapadd"):
            if find_program(program) is None:
                return f"{program} not found (Debian packages slapd and ldap-utils; tests/run installs them)"
        if not (MODULE_PATH / "back_mdb.so").exists():
            return f"{MODULE_PATH}/back_mdb.so not found (Debian package slapd)"
        for name in ("core", "cosine", "nis", "inetorgperson"):
            if not (SCHEMA_DIR / f"{name}.ldif").exists():
                return f"{SCHEMA_DIR}/{name}.ldif not found (Debian package slapd)"
        try:
            import cryptography  # noqa: F401
        except ImportError:
            return "the Python package 'cryptography' is needed to create the test CA"
        return None

    # ------------------------------------------------------------------ start / stop

    def start(self) -> "OpenLdapServer":
        reason = self.missing_software()
        if reason:
            raise ServerUnavailable(reason)
        from .samba import _write_test_pki

        started = time.monotonic()
        ca_file, cert_file, key_file = _write_test_pki(self.workdir / "tls")
        assert ca_file == self.ca_file
        self.ppolicy = (MODULE_PATH / "ppolicy.so").exists()
        (self.workdir / "data").mkdir()
        (self.workdir / "slapd.d").mkdir()
        config = self.workdir / "config.ldif"
        config.write_text(self._config_ldif(cert_file, key_file))
        slapadd = subprocess.run([find_program("slapadd"), "-n0", "-F", str(self.workdir / "slapd.d"),
                                  "-l", str(config)], capture_output=True, text=True, timeout=60)
        if slapadd.returncode != 0:
            raise ServerStartError(f"slapadd -n0 failed ({slapadd.returncode}): {slapadd.stderr.strip()}")
        self.ldaps_port, self.ldap_port = free_port(), free_port()
        self._log_handle = open(self.log_file, "ab")
        self._process = subprocess.Popen(
            [find_program("slapd"), "-d", "0", "-F", str(self.workdir / "slapd.d"),
             "-h", f"ldaps://127.0.0.1:{self.ldaps_port}/ ldap://127.0.0.1:{self.ldap_port}/ {self.ldapi_url}/"],
            stdin=subprocess.DEVNULL, stdout=self._log_handle, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_until_ready()
        self._populate_base()
        self.startup_seconds = time.monotonic() - started
        return self

    def _config_ldif(self, cert_file: Path, key_file: Path) -> str:
        schemas = "".join(f"include: file://{SCHEMA_DIR}/{name}.ldif\n\n"
                          for name in ("core", "cosine", "nis", "inetorgperson"))
        modules = ("olcModuleLoad: back_mdb\n" + ("olcModuleLoad: ppolicy\n" if self.ppolicy else "")
                   + ("olcModuleLoad: retcode\n" if self.faults else ""))
        overlay = ("" if not self.ppolicy else f"""
dn: olcOverlay={{0}}ppolicy,olcDatabase={{1}}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcPPolicyConfig
olcOverlay: {{0}}ppolicy
""")
        limits = f'olcLimits: {{0}}dn.exact="{self.reader_dn}" size.prtotal=unlimited\n'
        readers = f'by dn.exact="{self.reader_dn}" read by dn.exact="{self.limited_reader_dn}" read'
        if self.faults:
            index = 1 if self.ppolicy else 0
            overlay += f"""
dn: olcOverlay={{{index}}}retcode,olcDatabase={{1}}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcRetcodeConfig
olcOverlay: {{{index}}}retcode
olcRetcodeParent: ou=retcodes,{SUFFIX}
olcRetcodeInDir: TRUE
"""
            limits += f'olcLimits: {{1}}dn.exact="{self.timed_reader_dn}" time=1 size.prtotal=unlimited\n'
            readers += f' by dn.exact="{self.timed_reader_dn}" read'

        return f"""\
dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {self.workdir}/slapd.pid
olcTLSCACertificateFile: {self.ca_file}
olcTLSCertificateFile: {cert_file}
olcTLSCertificateKeyFile: {key_file}
olcLogLevel: none

dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: {MODULE_PATH}
{modules}
dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

{schemas}{'' if self.ppolicy else _FALLBACK_PPOLICY_SCHEMA + chr(10)}\
dn: olcDatabase={{-1}}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {{-1}}frontend
olcSizeLimit: 50

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcAccess: {{0}}to * by * none

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcSuffix: {SUFFIX}
olcRootDN: {self.admin_dn}
olcRootPW: {self.admin_password}
olcDbDirectory: {self.workdir}/data
olcDbMaxSize: 104857600
olcDbNoSync: TRUE
olcDbIndex: objectClass eq
{limits}\
olcAccess: {{0}}to attrs=userPassword by anonymous auth by * none
olcAccess: {{1}}to dn.subtree="{SUFFIX}" {readers} by * none
{overlay}"""

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                code = self._process.returncode
                self.stop()
                raise ServerStartError(f"slapd exited with status {code} during start-up; "
                                       f"log {self.log_file} tail:\n{tail(self.log_file)}")
            if port_is_listening(self.ldaps_port, timeout=0.1) and port_is_listening(self.ldap_port, timeout=0.1):
                return
            time.sleep(0.02)
        self.stop()
        raise ServerStartError(f"slapd did not listen on 127.0.0.1:{self.ldaps_port} within "
                               f"{self.start_timeout:.0f}s; log {self.log_file} tail:\n{tail(self.log_file)}")

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        unbind_quietly(self._admin_conn)
        self._admin_conn = None
        end_process(self._process, timeout)
        self._process = None
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def cleanup(self) -> None:
        self.stop()
        if not keep_workdirs():
            shutil.rmtree(self.workdir, ignore_errors=True)

    # ------------------------------------------------------------------ populating (as the rootdn)

    def connect(self, user: str | None = None, password: str | None = None):
        import ldap3

        tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(self.ca_file),
                        version=ssl.PROTOCOL_TLS_CLIENT)
        server = ldap3.Server("localhost", port=self.ldaps_port, use_ssl=True, tls=tls, get_info=ldap3.NONE,
                              connect_timeout=10)
        return ldap3.Connection(server, user=user or self.admin_dn, password=password or self.admin_password,
                                auto_bind=True, raise_exceptions=True)

    def _admin(self):
        if self._admin_conn is None or self._admin_conn.closed:
            self._admin_conn = self.connect()
        return self._admin_conn

    def add(self, dn: str, object_class: list[str], attributes: dict[str, Any] | None = None) -> str:
        self._admin().add(dn, object_class, attributes or {})
        return dn

    def modify(self, dn: str, changes: dict[str, Any]) -> None:
        """Replace (or, with None, delete) attribute values."""
        import ldap3

        self._admin().modify(dn, {name: [(ldap3.MODIFY_REPLACE, [] if value is None else
                                          (value if isinstance(value, list) else [value]))]
                                  for name, value in changes.items()})

    def delete(self, dn: str) -> None:
        # ManageDsaIT: a referral object is deleted itself (without it the server refers the delete on).
        self._admin().delete(dn, controls=[MANAGE_DSA_IT])

    def rename(self, dn: str, new_rdn: str) -> str:
        """Rename an entry, with its subtree (entryUUIDs are kept); returns the new DN."""
        self._admin().modify_dn(dn, new_rdn)
        return f"{new_rdn},{dn.split(',', 1)[1]}"

    def add_referral(self, dn: str, url: str) -> str:
        """A referral object (RFC 3296 / slapd's `referral` class): searches at or under `dn` are answered
        with a referral to `url` (result code 10), searches above it list it as a continuation reference."""
        attribute, value = dn.split(",", 1)[0].split("=", 1)
        return self.add(dn, ["referral", "extensibleObject"], {attribute: value, "ref": url})

    def get(self, dn: str, *attributes: str) -> dict[str, list[bytes]]:
        import ldap3

        conn = self._admin()
        conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=list(attributes) or ["*", "+"])
        return dict(conn.response[0]["raw_attributes"])

    def _populate_base(self) -> None:
        self.add(SUFFIX, ["top", "dcObject", "organization"], {"dc": "example", "o": "Example"})
        self.add(f"ou=system,{SUFFIX}", ["organizationalUnit"], {"ou": "system"})
        self.add(self.reader_dn, ["organizationalRole", "simpleSecurityObject"],
                 {"cn": "cal-reader", "userPassword": self.reader_password,
                  "description": "cal-agent: read-only"})
        self.add(self.limited_reader_dn, ["organizationalRole", "simpleSecurityObject"],
                 {"cn": "cal-limited", "userPassword": self.limited_reader_password,
                  "description": "read-only, with the default size limit"})
        if self.faults:
            self.add(self.timed_reader_dn, ["organizationalRole", "simpleSecurityObject"],
                     {"cn": "cal-timed", "userPassword": self.timed_reader_password,
                      "description": "read-only, with a one-second time limit"})

    def add_fault(self, dn: str, object_class: list[str], attributes: dict[str, Any], *, err_code: int,
                  sleep_seconds: int | None = None, text: str | None = None) -> str:
        """faults=True only: an entry that makes the server answer a search reaching it with result
        `err_code` (0: carry on), after sleeping `sleep_seconds` (slapo-retcode's errAuxObject).  Added
        with the ManageDsaIT control, without which the overlay would answer the add itself."""
        assert self.faults, "add_fault needs OpenLdapServer(faults=True)"
        fault: dict[str, Any] = {"errCode": str(err_code)}
        if sleep_seconds is not None:
            fault["errSleepTime"] = str(sleep_seconds)
        if text is not None:
            fault["errText"] = text
        self._admin().add(dn, [*object_class, "errAuxObject"], {**attributes, **fault}, controls=[MANAGE_DSA_IT])
        return dn

    def add_ou(self, name: str, parent: str | None = None) -> str:
        return self.add(f"ou={name},{parent or SUFFIX}", ["organizationalUnit"], {"ou": name})

    def log_tail(self, lines: int = 60) -> str:
        return tail(self.log_file, lines)

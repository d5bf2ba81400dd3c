"""A throwaway Samba Active Directory domain controller for integration tests.

`SambaDC.start()` provisions a brand-new domain CORP.EXAMPLE.COM in a
temporary directory, runs `samba` in the foreground as a child process that
serves LDAP (389, StartTLS) and LDAPS (636) on 127.0.0.1 only, and waits until
a certificate-verified LDAPS bind works.  The TLS certificate is issued by a
test CA generated for this instance; every client keeps verification on and
trusts only `ca_file`.

The helper methods write to the directory over LDAPS as the domain
Administrator, the way an admin tool would, so what the agent later reads is
exactly what real AD clients produce (objectGUIDs, tombstones, primary groups).

Notes on choices that are not obvious:

* `server services = ldap` is enough: LDAP simple binds are checked by the
  in-process auth subsystem and unicodePwd is hashed by the dsdb module stack,
  so no KDC, DNS, RPC or SMB service is needed.  That keeps start-up fast and
  binds only ports 389, 636, 3268 and 3269.
* `interfaces = 127.0.0.1` (not `lo`) so that nothing is bound on ::1 either.
* Samba's defaults put pid files and sockets under /run/samba; they are
  moved into the temp dir so a second instance, or the distribution's own
  service, cannot collide with this one.
* `ldb:nosync = true` skips fsync on every write transaction (the Samba
  selftest setting); it roughly doubles the add rate and durability does not
  matter for a throwaway database.
* samba runs with `-i` and its stdin connected to a pipe we hold: in
  interactive mode it exits on EOF, so it dies with the test process even if
  that is killed with SIGKILL.
* The LDAP ports are fixed, so only one test DC can run per machine at a
  time; a machine-wide flock serializes concurrent test sessions.
* Setting a password costs ~25 ms on Samba 4.17 (PBKDF2 for the Kerberos
  keys), against ~3 ms for an add without one; computers are therefore
  created without a password.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import ssl
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .common import (
    end_process,
    unbind_quietly,
    MachineLock,
    ServerStartError,
    ServerUnavailable,
    describe_listener,
    find_program,
    keep_workdirs,
    port_is_listening,
    random_password,
    tail,
)

# ldap3 is a runtime dependency of the project, so it is always installed
# where the tests run; import it lazily anyway so that merely importing this
# module (e.g. during collection) never fails.

REALM = "CORP.EXAMPLE.COM"
DNS_DOMAIN = "corp.example.com"
NETBIOS_DOMAIN = "CORP"
BASE_DN = "DC=corp,DC=example,DC=com"

# Ports `server services = ldap` listens on: LDAP, LDAPS, Global Catalog, GC over TLS.
SAMBA_PORTS = (389, 636, 3268, 3269)

# userAccountControl bits used here.
UAC_ACCOUNTDISABLE = 0x0002
UAC_NORMAL_ACCOUNT = 0x0200  # 512
UAC_WORKSTATION_TRUST_ACCOUNT = 0x1000  # 4096

# LDAP controls (Microsoft OIDs).
SHOW_DELETED_OID = "1.2.840.113556.1.4.417"
TREE_DELETE_OID = "1.2.840.113556.1.4.805"

# Windows FILETIME epoch: 100-nanosecond intervals since 1601-01-01 UTC.
_FILETIME_EPOCH = dt.datetime(1601, 1, 1, tzinfo=dt.UTC)


def datetime_to_filetime(value: dt.datetime) -> int:
    """Convert a datetime to an AD FILETIME integer (naive values are taken as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return (value - _FILETIME_EPOCH) // dt.timedelta(microseconds=1) * 10


def _unicode_pwd(password: str) -> bytes:
    """The unicodePwd wire format: the password in double quotes, UTF-16-LE."""
    return f'"{password}"'.encode("utf-16-le")


def _ldap_value(value: Any) -> Any:
    """Convert Python values to what AD expects on the wire."""
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "TRUE" if value else "FALSE"
    if isinstance(value, dt.datetime):
        return str(datetime_to_filetime(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_ldap_value(item) for item in value]
    return value


def _missing_software() -> str | None:
    """Why Samba cannot be provisioned here, or None if it can."""
    missing = [name for name in ("samba", "samba-tool") if not find_program(name)]
    if missing:
        return (
            f"Samba AD DC software not installed (missing {', '.join(missing)}); "
            "install the Debian packages samba samba-ad-dc samba-ad-provision"
        )
    setup_dir = Path("/usr/share/samba/setup")
    if not (setup_dir / "provision.ldif").exists():
        return (
            f"Samba provisioning data not found in {setup_dir}; "
            "install the Debian package samba-ad-provision"
        )
    if os.geteuid() != 0:
        return "a Samba AD DC must run as root (it binds ports 389/636)"
    try:
        import cryptography  # noqa: F401  (needed to make the test CA)
    except ImportError:
        return "the Python package 'cryptography' is needed to create the test CA"
    return None


def _write_test_pki(tls_dir: Path) -> tuple[Path, Path, Path]:
    """Create a throwaway CA and a server cert for localhost / 127.0.0.1.

    Returns (ca_file, cert_file, key_file).  The server key is written 0600
    because Samba refuses a TLS key readable by others.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    tls_dir.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    not_before = now - dt.timedelta(hours=1)  # tolerate small clock skew
    not_after = now + dt.timedelta(days=7)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cal-agent tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"cal-agent throwaway test CA {uuid.uuid4().hex[:8]}"),
        ]
    )
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    ca_file = tls_dir / "ca.pem"
    cert_file = tls_dir / "cert.pem"
    key_file = tls_dir / "key.pem"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key_pem)
    # The CA key is not written anywhere: nothing else will ever be signed.
    return ca_file, cert_file, key_file


class SambaDC:
    """A provisioned, running Samba AD DC in a temp directory.

    Use as a context manager or call start()/stop()/cleanup() yourself.
    """

    realm = REALM
    dns_domain = DNS_DOMAIN
    netbios_domain = NETBIOS_DOMAIN
    base_dn = BASE_DN
    host = "localhost"

    def __init__(self, workdir: Path | str | None = None, *, start_timeout: float = 60.0) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="cal-agent-samba-"))
        self.start_timeout = start_timeout
        self.url = "ldaps://localhost:636"
        self.starttls_url = "ldap://localhost:389"
        self.ca_file = self.workdir / "tls" / "ca.pem"
        self.admin_dn = f"CN=Administrator,CN=Users,{BASE_DN}"
        self.admin_upn = f"Administrator@{DNS_DOMAIN}"
        self.admin_password = random_password()
        self.log_file = self.workdir / "samba.log"
        self.provision_log = self.workdir / "provision.log"
        self.smb_conf = self.workdir / "dc" / "etc" / "smb.conf"
        self.users_dn = f"CN=Users,{BASE_DN}"
        self.computers_dn = f"CN=Computers,{BASE_DN}"
        self.deleted_objects_dn = f"CN=Deleted Objects,{BASE_DN}"
        self.provision_seconds: float | None = None
        self.startup_seconds: float | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log_handle = None
        self._admin_conn = None
        self._lock = MachineLock("cal-agent-test-samba-dc")

    # ------------------------------------------------------------------ life cycle

    @staticmethod
    def missing_software() -> str | None:
        """A reason string if Samba cannot run on this machine, else None."""
        return _missing_software()

    def __enter__(self) -> SambaDC:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    def start(self) -> SambaDC:
        """Provision the domain and start samba; raise ServerUnavailable/ServerStartError."""
        reason = _missing_software()
        if reason:
            raise ServerUnavailable(reason)
        started = time.monotonic()
        ca_file, cert_file, key_file = _write_test_pki(self.workdir / "tls")
        assert ca_file == self.ca_file
        # Provisioning needs no ports, so it runs before waiting for them.
        self._provision(cert_file, key_file)
        self.provision_seconds = time.monotonic() - started
        self._claim_ports()
        spawned = time.monotonic()
        self._spawn()
        self._wait_until_ready()
        self.startup_seconds = time.monotonic() - spawned
        return self

    def _claim_ports(self) -> None:
        """Take the machine-wide test-DC lock, then make sure the ports are free.

        Samba's LDAP ports are fixed, so two test sessions on one machine
        (say, two developers' runs) cannot both run a DC: the later one waits
        for the earlier to finish, up to CAL_AGENT_SAMBA_LOCK_WAIT seconds
        (default 600).
        """
        wait = float(os.environ.get("CAL_AGENT_SAMBA_LOCK_WAIT", "600"))
        if not self._lock.acquire(wait):
            raise ServerStartError(
                f"another test session has been running the test Samba DC for over {wait:.0f}s "
                f"({self._lock.holder()}; lock {self._lock.path}); ports 389/636 are fixed, "
                "so only one can run at a time"
            )
        busy = [port for port in SAMBA_PORTS if port_is_listening(port)]
        if busy:
            self._lock.release()
            details = "\n".join(f"  port {port}: {describe_listener(port)}" for port in busy)
            raise ServerStartError(
                "cannot start the test Samba DC: something already listens on "
                f"127.0.0.1 port(s) {', '.join(map(str, busy))} (a system samba/slapd "
                "service, or a leftover server?). Stop it first.\n" + details
            )

    def _provision(self, cert_file: Path, key_file: Path) -> None:
        target = self.workdir / "dc"
        run_dir = self.workdir / "run"
        run_dir.mkdir(parents=True, exist_ok=True)
        # An empty config: otherwise samba-tool merges /etc/samba/smb.conf
        # (log paths, passwd program, ...) into the new domain's smb.conf.
        empty_conf = self.workdir / "empty-smb.conf"
        empty_conf.write_text("")
        options = {
            "interfaces": "127.0.0.1",
            "bind interfaces only": "yes",
            "server services": "ldap",
            # The default, stated so the "no simple bind without TLS" test is explicit.
            "ldap server require strong auth": "yes",
            "tls enabled": "yes",
            "tls keyfile": str(key_file),
            "tls certfile": str(cert_file),
            "tls cafile": str(self.ca_file),
            "ldb:nosync": "true",
            "log file": str(self.log_file),
            "pid directory": str(run_dir),
            "ncalrpc dir": str(run_dir / "ncalrpc"),
            "winbindd socket directory": str(run_dir / "winbindd"),
            "ntp signd socket directory": str(run_dir / "ntp_signd"),
        }
        command = [
            find_program("samba-tool") or "samba-tool",
            "domain",
            "provision",
            f"--configfile={empty_conf}",
            f"--realm={REALM}",
            f"--domain={NETBIOS_DOMAIN}",
            "--server-role=dc",
            "--dns-backend=NONE",
            "--use-rfc2307",
            "--host-name=dc1",
            "--host-ip=127.0.0.1",
            f"--targetdir={target}",
            f"--adminpass={self.admin_password}",
            *(f"--option={key}={value}" for key, value in options.items()),
        ]
        with open(self.provision_log, "wb") as log:
            try:
                result = subprocess.run(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self._env(),
                    timeout=300,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise ServerStartError(
                    f"samba-tool domain provision timed out; log tail:\n{tail(self.provision_log)}"
                ) from exc
        if result.returncode != 0:
            raise ServerStartError(
                f"samba-tool domain provision failed (exit {result.returncode}); "
                f"log {self.provision_log} tail:\n{tail(self.provision_log)}"
            )

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # Keep the host's Kerberos configuration out of the picture.
        env["KRB5_CONFIG"] = str(self.workdir / "dc" / "private" / "krb5.conf")
        return env

    def _spawn(self) -> None:
        self._log_handle = open(self.log_file, "ab")
        self._process = subprocess.Popen(
            [
                find_program("samba") or "samba",
                "-s",
                str(self.smb_conf),
                "-i",  # foreground; exits when our end of stdin closes
                "-M",
                "single",  # one process: fewer moving parts, quicker start
                "--debug-stdout",
                "--debuglevel=1",
            ],
            stdin=subprocess.PIPE,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            env=self._env(),
            start_new_session=True,  # not hit by the terminal's Ctrl-C twice
        )

    def _wait_until_ready(self) -> None:
        from ldap3.core.exceptions import LDAPException

        deadline = time.monotonic() + self.start_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                code = self._process.returncode
                self._close_process_handles()
                raise ServerStartError(
                    f"samba exited with status {code} during start-up; "
                    f"log {self.log_file} tail:\n{tail(self.log_file)}"
                )
            if port_is_listening(636, timeout=0.2):
                try:
                    self.connect().unbind()
                    return
                except LDAPException as exc:
                    last_error = exc
            time.sleep(0.2)
        self.stop()
        raise ServerStartError(
            f"samba did not accept a verified LDAPS bind on 127.0.0.1:636 within "
            f"{self.start_timeout:.0f}s (last error: {last_error!r}); "
            f"log {self.log_file} tail:\n{tail(self.log_file)}"
        )

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop samba: EOF on stdin, then SIGTERM, then SIGKILL."""
        unbind_quietly(self._admin_conn)
        self._admin_conn = None
        end_process(self._process, timeout, stdin_first=True)
        self._close_process_handles()
        self._lock.release()

    def _close_process_handles(self) -> None:
        if self._process is not None and self._process.stdin:
            try:
                self._process.stdin.close()
            except OSError:
                pass
        self._process = None
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def cleanup(self) -> None:
        """Stop the server and remove its temp directory (unless asked to keep it)."""
        self.stop()
        if self._own_workdir and not keep_workdirs():
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = 60) -> str:
        return tail(self.log_file, lines)

    # ------------------------------------------------------------------ connections

    def tls(self, ca_file: Path | str | None = None):
        """An ldap3 Tls object that verifies the server against the test CA."""
        from ldap3 import Tls

        # ldap3 checks the host name against the certificate itself, after
        # the handshake, whenever validate is CERT_REQUIRED.
        return Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(ca_file or self.ca_file))

    def connect(
        self,
        user: str | None = None,
        password: str | None = None,
        *,
        url: str | None = None,
        **connection_kwargs: Any,
    ):
        """A bound ldap3 Connection over LDAPS (certificate verified).

        With no user this binds as the domain Administrator.  `user` may be a
        DN or a UPN.  Extra keyword arguments go to ldap3.Connection.
        Raises ldap3's LDAPBindError if the bind is refused.
        """
        from ldap3 import NONE, Connection, Server

        if user is None:
            user, password = self.admin_upn, self.admin_password
        server = Server(url or self.url, tls=self.tls(), get_info=NONE, connect_timeout=10)
        connection_kwargs.setdefault("receive_timeout", 30)
        return Connection(server, user=user, password=password, auto_bind=True, **connection_kwargs)

    def _admin(self):
        if self._admin_conn is None or self._admin_conn.closed:
            self._admin_conn = self.connect(raise_exceptions=True)
        return self._admin_conn

    def _call(self, method: str, *args: Any, **kwargs: Any):
        """Run an ldap3 operation on the admin connection, reconnecting once if it dropped."""
        from ldap3.core.exceptions import LDAPCommunicationError

        try:
            return getattr(self._admin(), method)(*args, **kwargs)
        except LDAPCommunicationError:
            self._admin_conn = None
            return getattr(self._admin(), method)(*args, **kwargs)

    # ------------------------------------------------------------------ reading

    def get_attributes(self, dn: str, *attributes: str, show_deleted: bool = False) -> dict[str, Any]:
        """Attribute values of one entry, by name.

        Connections here do not load the schema, so every value list comes
        back as ldap3's list of strings (e.g. {"userAccountControl": ["512"]});
        use get_guid() for objectGUID.  Ask explicitly for constructed
        attributes such as primaryGroupToken.
        """
        from ldap3 import BASE

        controls = [(SHOW_DELETED_OID, True, None)] if show_deleted else None
        conn = self._admin()
        self._call(
            "search", dn, "(objectClass=*)", search_scope=BASE,
            attributes=list(attributes) or ["*"], controls=controls,
        )
        if not conn.response:
            raise KeyError(dn)
        return dict(conn.response[0]["attributes"])

    def _raw(self, dn: str, attribute: str, *, show_deleted: bool = False) -> list[bytes]:
        from ldap3 import BASE

        controls = [(SHOW_DELETED_OID, True, None)] if show_deleted else None
        conn = self._admin()
        self._call("search", dn, "(objectClass=*)", search_scope=BASE, attributes=[attribute], controls=controls)
        if not conn.response:
            raise KeyError(dn)
        return list(conn.response[0]["raw_attributes"].get(attribute, []))

    def get_guid(self, dn: str) -> str:
        """objectGUID as a canonical lower-case UUID string."""
        values = self._raw(dn, "objectGUID")
        if not values:
            raise KeyError(f"{dn} has no objectGUID")
        # AD stores GUIDs in Microsoft's mixed-endian layout.
        return str(uuid.UUID(bytes_le=values[0]))

    def find_tombstone(self, guid: str) -> dict[str, Any] | None:
        """The deleted object with this objectGUID (searched with Show Deleted), or None."""
        from ldap3 import SUBTREE
        from ldap3.utils.conv import escape_bytes

        conn = self._admin()
        self._call(
            "search",
            self.deleted_objects_dn,
            f"(objectGUID={escape_bytes(uuid.UUID(guid).bytes_le)})",
            search_scope=SUBTREE,
            attributes=["*", "isDeleted", "lastKnownParent"],
            controls=[(SHOW_DELETED_OID, True, None)],
        )
        entries = [item for item in conn.response if item.get("type") == "searchResEntry"]
        if not entries:
            return None
        return {"dn": entries[0]["dn"], **entries[0]["attributes"]}

    # ------------------------------------------------------------------ writing

    def _add(self, dn: str, object_class: list[str], attributes: Mapping[str, Any]) -> str:
        values = {key: _ldap_value(value) for key, value in attributes.items() if value is not None}
        self._call("add", dn, object_class, values)
        return dn

    @staticmethod
    def _rdn(attribute: str, value: str) -> str:
        from ldap3.utils.dn import escape_rdn

        return f"{attribute}={escape_rdn(value)}"

    def add_ou(self, name: str, parent_dn: str | None = None) -> str:
        dn = f"{self._rdn('OU', name)},{parent_dn or BASE_DN}"
        return self._add(dn, ["top", "organizationalUnit"], {"ou": name})

    def add_user(
        self,
        sam: str,
        ou_dn: str | None = None,
        *,
        display_name: str | None = None,
        mail: str | None = None,
        password: str | None = None,
        disabled: bool = False,
        account_expires: dt.datetime | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> str:
        """Create a user (CN = sAMAccountName unless attributes give `cn`).

        Every user gets a password (a random one if none is given), because
        AD only lets an account without PASSWD_NOTREQD be enabled once it has
        one; userAccountControl is then exactly 512, or 514 when disabled.
        The password is set in the add itself, which AD allows over TLS.
        """
        extra = dict(attributes or {})
        cn = str(extra.pop("cn", sam))
        dn = f"{self._rdn('CN', cn)},{ou_dn or self.users_dn}"
        values: dict[str, Any] = {
            "sAMAccountName": sam,
            "userPrincipalName": f"{sam}@{DNS_DOMAIN}",
            "displayName": display_name,
            "mail": mail,
            "unicodePwd": _unicode_pwd(password or random_password()),
            "userAccountControl": UAC_NORMAL_ACCOUNT | (UAC_ACCOUNTDISABLE if disabled else 0),
            "accountExpires": account_expires,
        }
        values.update(extra)
        return self._add(dn, ["top", "person", "organizationalPerson", "user"], values)

    def add_group(
        self,
        name: str,
        ou_dn: str | None = None,
        members: Iterable[str] = (),
        *,
        attributes: Mapping[str, Any] | None = None,
    ) -> str:
        """Create a group (Samba's default type: global security group)."""
        dn = f"{self._rdn('CN', name)},{ou_dn or self.users_dn}"
        values: dict[str, Any] = {"sAMAccountName": name}
        member_list = list(members)
        if member_list:
            values["member"] = member_list
        values.update(attributes or {})
        return self._add(dn, ["top", "group"], values)

    def add_members(self, group_dn: str, member_dns: Iterable[str]) -> None:
        from ldap3 import MODIFY_ADD

        members = list(member_dns)
        if members:
            self._call("modify", group_dn, {"member": [(MODIFY_ADD, members)]})

    def remove_members(self, group_dn: str, member_dns: Iterable[str]) -> None:
        from ldap3 import MODIFY_DELETE

        members = list(member_dns)
        if members:
            self._call("modify", group_dn, {"member": [(MODIFY_DELETE, members)]})

    def add_computer(
        self,
        name: str,
        ou_dn: str | None = None,
        *,
        dns_host_name: str | None = None,
        operating_system: str | None = None,
        operating_system_version: str | None = None,
        disabled: bool = False,
        attributes: Mapping[str, Any] | None = None,
    ) -> str:
        """Create a computer account: sAMAccountName is NAME$ (upper case, as a
        domain join writes it), userAccountControl 4096 (4098 when disabled)."""
        dn = f"{self._rdn('CN', name)},{ou_dn or self.computers_dn}"
        values: dict[str, Any] = {
            "sAMAccountName": f"{name.upper()}$",
            "userAccountControl": UAC_WORKSTATION_TRUST_ACCOUNT | (UAC_ACCOUNTDISABLE if disabled else 0),
            "dNSHostName": dns_host_name,
            "operatingSystem": operating_system,
            "operatingSystemVersion": operating_system_version,
        }
        values.update(attributes or {})
        return self._add(
            dn, ["top", "person", "organizationalPerson", "user", "computer"], values
        )

    def set_primary_group(self, user_dn: str, group_dn: str) -> int:
        """Make group_dn the user's primary group; returns the new primaryGroupID.

        AD requires the user to be a member before the switch (it then drops
        the explicit `member` value, as primary membership is implicit).
        """
        from ldap3 import BASE, MODIFY_REPLACE
        from ldap3.utils.conv import escape_filter_chars

        token = int(self.get_attributes(group_dn, "primaryGroupToken")["primaryGroupToken"][0])
        conn = self._admin()
        # Let the server compare DNs, so differences in case/spacing do not matter.
        self._call(
            "search", user_dn, f"(memberOf={escape_filter_chars(group_dn)})",
            search_scope=BASE, attributes=["1.1"],
        )
        if not conn.response:
            self.add_members(group_dn, [user_dn])
        self._call("modify", user_dn, {"primaryGroupID": [(MODIFY_REPLACE, [str(token)])]})
        return token

    def _set_uac_bit(self, dn: str, bit: int, on: bool) -> None:
        from ldap3 import MODIFY_REPLACE

        current = int(self.get_attributes(dn, "userAccountControl")["userAccountControl"][0])
        wanted = current | bit if on else current & ~bit
        if wanted != current:
            self._call("modify", dn, {"userAccountControl": [(MODIFY_REPLACE, [str(wanted)])]})

    def disable(self, dn: str) -> None:
        self._set_uac_bit(dn, UAC_ACCOUNTDISABLE, True)

    def enable(self, dn: str) -> None:
        self._set_uac_bit(dn, UAC_ACCOUNTDISABLE, False)

    def set_password(self, dn: str, password: str) -> None:
        from ldap3 import MODIFY_REPLACE

        self._call("modify", dn, {"unicodePwd": [(MODIFY_REPLACE, [_unicode_pwd(password)])]})

    def set_attributes(self, dn: str, attributes: Mapping[str, Any]) -> None:
        """Replace attribute values; None (or an empty list) removes the attribute.

        datetimes become FILETIME integers (as accountExpires expects),
        booleans TRUE/FALSE.
        """
        from ldap3 import MODIFY_REPLACE

        changes = {}
        for name, value in attributes.items():
            if value is None:
                values: list[Any] = []
            elif isinstance(value, (list, tuple, set, frozenset)):
                values = _ldap_value(list(value))
            else:
                values = [_ldap_value(value)]
            changes[name] = [(MODIFY_REPLACE, values)]
        if changes:
            self._call("modify", dn, changes)

    def delete(self, dn: str, *, tree: bool = False) -> None:
        """Delete an entry for real (AD keeps a tombstone under CN=Deleted Objects).

        tree=True deletes a container with everything below it.
        """
        controls = [(TREE_DELETE_OID, True, None)] if tree else None
        self._call("delete", dn, controls=controls)

    def move(self, dn: str, new_parent_dn: str) -> str:
        """Move an entry under another container; returns its new DN."""
        from ldap3.utils.dn import to_dn

        relative = to_dn(dn)[0]
        self._call("modify_dn", dn, relative, new_superior=new_parent_dn)
        return f"{relative},{new_parent_dn}"

    def rename(self, dn: str, new_cn: str) -> str:
        """Change the RDN value (keeps the RDN type, so OUs stay OU=...)."""
        from ldap3.utils.dn import parse_dn, to_dn

        rdn_attr = parse_dn(dn)[0][0]
        parent = ",".join(to_dn(dn)[1:])  # components keep their escaping
        relative = self._rdn(rdn_attr, new_cn)
        self._call("modify_dn", dn, relative)
        return f"{relative},{parent}"

    def create_readonly_account(self, sam: str, password: str | None = None) -> tuple[str, str]:
        """An ordinary Domain User (no admin groups) for read-only binds.

        Returns (bind UPN, password).  Authenticated users can read the
        directory in AD, which is all the agent needs.
        """
        password = password or random_password()
        self.add_user(sam, self.users_dn, password=password, display_name=f"{sam} (read-only)")
        return f"{sam}@{DNS_DOMAIN}", password

#!/usr/bin/env python3
"""Benchmark: cal-agent against a large throwaway Samba AD DC (`type: active_directory`).

A benchmark, not a test: it measures and prints, it asserts nothing (docs/performance.md).
The Samba AD variant of bench/run, whose timed steps (drive()) it loads and runs unchanged.

    bench/run_ad.py [--users 20000] [--seed 6] [--rebuild] [--keep] [--profile FILE.prof [--profile-step incremental]]

1. The DC, built once per (N, seed) and cached in ~/.cache/cal-agent-bench/samba-N-SEED/
   ($XDG_CACHE_HOME is honoured; --cache-dir DIR elsewhere; --rebuild builds it again):
   - provisioned by tests/servers/samba.py's SambaDC (`samba-tool domain provision`, services
     ldap only, LDAPS with a throwaway test CA);
   - populated OFFLINE, before samba first starts, through Samba's own dsdb module stack (SamDB
     with the system session, Debian's python3 and its samba bindings), in transactions of 1000
     adds: N users (each with a password, as a real enabled account must have; 2 % disabled, 1 %
     past their accountExpires, 90 % with a lastLogonTimestamp in the 30 days before the build),
     N/20 global security groups (25 members on average, one group of N/5 users, 10 % nesting two
     other groups), N/5 computer accounts, and a read-only Domain User `cal-reader` allowed to list
     CN=Deleted Objects (tests/servers/grant_deleted_objects.py, as the AD tests do).  Every object
     gets its objectSid (RID pool), objectGUID, uSNCreated/uSNChanged, replPropertyMetaData and
     backlinks exactly as an add over LDAP would.  Offline adds in a transaction beat adds over
     LDAP (measured on a fresh domain: 24 against 29 ms a user with a password, 2.6 against 6.3 ms
     a user without), but a user still costs ~24 ms of password hashing (Kerberos keys) and every
     add gets slower as the directory grows (Samba's index lists are copied): 20,000 users took
     about 14 minutes here, hence the cache;
   - each run works on a COPY of the cached DC, with a fresh test CA and certificate, started on
     a free loopback address 127.0.0.X (Samba's LDAP ports are fixed at 389/636/3268/3269, so a
     fresh address stands for fresh ports; the test suite's DC keeps 127.0.0.1).
2. Times, in one run, as bench/run does:
   - the floor: one paged `ldapsearch` (pr=1000, LDAPS, the read-only account) with cal-agent's
     AD filter and attributes (agent/directory/ad_entries.py), output to /dev/null, best of two;
   - in ONE cal-agent process (start-up timed apart): the full sync into a fresh SQLite store;
     then, after `ldapmodify` as the domain Administrator changed 1 % of the entries (users'
     displayName, some users disabled, a member added to groups, computers' operatingSystemVersion),
     the next sync (incremental by uSNChanged: its mode and entries read are reported); then
     reconcile + the JSON report; then, if bench/run's drive() has it, a cycle with nothing changed;
   - the peak RSS after each step, and `cal-agent --version` (start-up).
3. Prints ONE JSON line on stdout with bench/run's keys (`provision_s` instead of `slapadd_s`,
   plus `cache`, `restore_s`, `samba_start_s`, `full_sync_read`); progress goes to stderr.

Needs root, samba, samba-tool and the Debian packages samba-ad-dc, samba-ad-provision,
python3-samba (for /usr/bin/python3) and ldap-utils.  Run it with the interpreter whose packages are
to be measured (`.venv/bin/python bench/run_ad.py`): the shebang's python3 may be another.  --keep keeps the work directory (the DC copy,
config, store and reports).
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import json
import math
import os
import random
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE_FORMAT = 1  # bump when the generated directory changes: older caches are then rebuilt
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, with the samba bindings (python3-samba)
USER_PASSWORD = "Bench-User-Pass-1!"  # every generated user's; the hashing, not the value, costs
READER_SAM = "cal-reader"
BATCH = 1000  # adds per transaction while populating

BASE_DN = "DC=corp,DC=example,DC=com"  # tests/servers/samba.py's domain
DNS_DOMAIN = "corp.example.com"
PEOPLE, GROUPS, DEVICES = f"OU=People,{BASE_DN}", f"OU=Groups,{BASE_DN}", f"OU=Devices,{BASE_DN}"

UAC_NORMAL, UAC_DISABLED, UAC_WORKSTATION = 0x200, 0x2, 0x1000
_FILETIME_OFFSET = 11644473600  # seconds from 1601-01-01 to 1970-01-01


def say(message: str) -> None:
    print(f"[bench-ad {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def filetime(posix: float) -> str:
    return str(int((posix + _FILETIME_OFFSET) * 10_000_000))


def user_sam(i: int) -> str:
    return f"u{i:07d}"


def user_dn(i: int) -> str:
    return f"CN={user_sam(i)},{PEOPLE}"


def group_name(g: int) -> str:
    return f"GG-{g:06d}"


def group_dn(g: int) -> str:
    return f"CN={group_name(g)},{GROUPS}"


def computer_name(c: int) -> str:
    return f"WS{c:07d}"


def computer_dn(c: int) -> str:
    return f"CN={computer_name(c)},{DEVICES}"


def reader_dn() -> str:
    return f"CN={READER_SAM},CN=Users,{BASE_DN}"


# ---------------------------------------------------------------------------------- the data


def plan(n: int, seed: int, now: float, reader_password: str, info: dict):
    """The objects to add, in order (users before the groups naming them, groups nesting only
    groups already added), as (dn, attributes) with str or bytes values.  Fills ``info`` with what
    the rest of the run needs to know (counts, who is disabled, the groups' members).

    Pure standard library: runs under Debian's python3 (populate()) and is deterministic."""
    rnd = random.Random(seed)
    n_groups, n_computers = max(2, n // 20), n // 5
    big = n // 5
    password = f'"{USER_PASSWORD}"'.encode("utf-16-le")
    disabled, expired = [], []
    for ou in (PEOPLE, GROUPS, DEVICES):
        yield ou, {"objectClass": ["top", "organizationalUnit"]}
    yield reader_dn(), {
        "objectClass": ["top", "person", "organizationalPerson", "user"], "sAMAccountName": READER_SAM,
        "userPrincipalName": f"{READER_SAM}@{DNS_DOMAIN}", "displayName": "cal-agent (read-only)",
        "unicodePwd": f'"{reader_password}"'.encode("utf-16-le"), "userAccountControl": str(UAC_NORMAL)}
    for i in range(n):
        uac = UAC_NORMAL
        attrs = {"objectClass": ["top", "person", "organizationalPerson", "user"], "sAMAccountName": user_sam(i),
                 "userPrincipalName": f"{user_sam(i)}@{DNS_DOMAIN}", "givenName": "User", "sn": f"Number{i}",
                 "displayName": f"User Number {i}", "mail": f"{user_sam(i)}@{DNS_DOMAIN}", "unicodePwd": password}
        roll = rnd.random()
        if roll < 0.02:
            uac |= UAC_DISABLED
            disabled.append(i)
        elif roll < 0.03:
            attrs["accountExpires"] = filetime(now - 30 * 86400)
            expired.append(i)
        attrs["userAccountControl"] = str(uac)
        if rnd.random() < 0.9:  # the rest never logged on
            attrs["lastLogonTimestamp"] = filetime(now - 3600 - rnd.random() * 30 * 86400)
        yield user_dn(i), attrs
    # Members: 25 per group on average over all groups, GG-000000 alone holding N/5 users (bench/run's).
    rest = max(1, (n_groups * 25 - big) // max(1, n_groups - 1))
    members_of: dict[int, list[int]] = {}
    nested: dict[int, list[int]] = {}
    for g in range(n_groups):
        if g == 0:
            members_of[g] = rnd.sample(range(n), big)
        else:
            size = max(1, min(n, rnd.randint(rest // 2, rest + rest // 2)))
            members_of[g] = rnd.sample(range(n), size)
            if rnd.random() < 0.10 and g + 1 < n_groups:  # nesting: a few later groups inside
                nested[g] = rnd.sample(range(g + 1, n_groups), min(2, n_groups - g - 1))
    memberships = 0
    for g in reversed(range(n_groups)):  # nested groups (later ones) exist before their parents
        member = [user_dn(i) for i in members_of[g]] + [group_dn(h) for h in nested.get(g, ())]
        memberships += len(member)
        yield group_dn(g), {"objectClass": ["top", "group"], "sAMAccountName": group_name(g),
                            "description": f"Group {g}", "member": member}
    for c in range(n_computers):
        attrs = {"objectClass": ["top", "person", "organizationalPerson", "user", "computer"],
                 "sAMAccountName": f"{computer_name(c)}$", "userAccountControl": str(UAC_WORKSTATION),
                 "dNSHostName": f"{computer_name(c).lower()}.{DNS_DOMAIN}",
                 "operatingSystem": "Windows 11 Enterprise", "operatingSystemVersion": "10.0 (22631)"}
        if rnd.random() < 0.9:
            attrs["lastLogonTimestamp"] = filetime(now - 3600 - rnd.random() * 30 * 86400)
        yield computer_dn(c), attrs
    info.update(users=n, groups=n_groups, computers=n_computers, memberships=memberships,
                entries=n + n_groups + n_computers, disabled=disabled, expired=expired,
                members={str(g): m for g, m in members_of.items()})


def populate(spec_path: Path) -> None:
    """Add plan()'s objects to the stopped DC's sam.ldb through the dsdb modules (Debian's python3)."""
    import ldb
    from samba.auth import system_session
    from samba.dcerpc import misc, security
    from samba.ndr import ndr_unpack
    from samba.param import LoadParm
    from samba.samdb import SamDB

    spec = json.loads(spec_path.read_text())
    lp = LoadParm()
    lp.load(spec["smb_conf"])
    db = SamDB(url=spec["sam_ldb"], session_info=system_session(), lp=lp)
    assert str(db.domain_dn()).lower() == BASE_DN.lower(), db.domain_dn()
    info: dict = {}
    began = last = time.perf_counter()
    total = spec["n"] + spec["n"] // 20 + spec["n"] // 5 + 4
    done = 0
    db.transaction_start()
    try:
        for dn, attrs in plan(spec["n"], spec["seed"], spec["now"], spec["reader_password"], info):
            db.add({"dn": dn, **attrs})
            done += 1
            if done % BATCH == 0:
                db.transaction_commit()
                db.transaction_start()
                if time.perf_counter() - last > 30:
                    last = time.perf_counter()
                    rate = done / (last - began)
                    print(f"[populate] {done}/{total} objects, {rate:.0f}/s, about "
                          f"{(total - done) / rate:.0f}s to go", file=sys.stderr, flush=True)
        db.transaction_commit()
    except BaseException:
        db.transaction_cancel()
        raise
    info["populate_s"] = round(time.perf_counter() - began, 1)
    # What normal adds give: objectSid from the RID pool, objectGUID, USNs, replication metadata.
    sample = {}
    for label, dn in (("user", user_dn(0)), ("group", group_dn(0)), ("computer", computer_dn(0))):
        entry = db.search(base=dn, scope=ldb.SCOPE_BASE, attrs=[
            "objectSid", "objectGUID", "uSNCreated", "uSNChanged", "whenCreated", "pwdLastSet",
            "primaryGroupID", "sAMAccountType", "replPropertyMetaData", "memberOf"])[0]
        sample[label] = {
            "objectSid": str(ndr_unpack(security.dom_sid, entry["objectSid"][0])),
            "objectGUID": str(ndr_unpack(misc.GUID, entry["objectGUID"][0])),
            "uSNChanged": int(str(entry["uSNChanged"][0])), "whenCreated": str(entry["whenCreated"][0]),
            "pwdLastSet": str(entry["pwdLastSet"][0]) if "pwdLastSet" in entry else None,
            "sAMAccountType": str(entry["sAMAccountType"][0]),
            "replPropertyMetaData": "replPropertyMetaData" in entry,
            "memberOf": len(entry["memberOf"]) if "memberOf" in entry else 0,
        }
    info["sample"] = sample
    Path(spec["info"]).write_text(json.dumps(info))


# ---------------------------------------------------------------------------------- the DC


def write_pki(tls_dir: Path, address: str) -> Path:
    """A throwaway CA and a server certificate for ``address`` (tests/servers/samba.py's test PKI
    names 127.0.0.1 and localhost only).  Returns the CA file; the key is written 0600."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    tls_dir.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    valid = {"not_valid_before": now - dt.timedelta(hours=1), "not_valid_after": now + dt.timedelta(days=7)}
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cal-agent bench throwaway CA")])

    def build(subject, public_key, extensions):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(public_key)
                   .serial_number(x509.random_serial_number()).not_valid_before(valid["not_valid_before"])
                   .not_valid_after(valid["not_valid_after"]))
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(ca_key, hashes.SHA256())

    ca_cert = build(ca_name, ca_key.public_key(), [(x509.BasicConstraints(ca=True, path_length=0), True)])
    cert = build(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)]), key.public_key(), [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        (x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]), False)])
    (tls_dir / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (tls_dir / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(tls_dir / "key.pem", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return tls_dir / "ca.pem"


def samba_version() -> str:
    from tests.servers.common import find_program

    return subprocess.run([find_program("samba"), "--version"], check=False, capture_output=True, text=True).stdout.strip()


def build_cache(entry: Path, n: int, seed: int) -> dict:
    """Provision and populate a DC in a staging directory next to ``entry``; rename it into place."""
    from tests.servers.common import random_password
    from tests.servers.samba import SambaDC

    staging = entry.with_name(f"{entry.name}.building-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        began = time.perf_counter()
        dc = SambaDC(staging)
        write_pki(dc.workdir / "tls", "127.0.0.1")  # only for provisioning: each run writes its own
        dc._provision(dc.workdir / "tls" / "cert.pem", dc.workdir / "tls" / "key.pem")
        provision_only_s = time.perf_counter() - began
        say(f"provisioned the domain in {provision_only_s:.1f}s; adding {n} users, {max(2, n // 20)} groups, "
            f"{n // 5} computers offline (20,000 users took 14 min here)")
        sam_ldb = dc.smb_conf.parent.parent / "private" / "sam.ldb"
        now = time.time()
        reader_password = random_password()
        spec = {"smb_conf": str(dc.smb_conf), "sam_ldb": str(sam_ldb), "n": n, "seed": seed, "now": now,
                "reader_password": reader_password, "info": str(staging / "info.json")}
        (staging / "populate.json").write_text(json.dumps(spec))
        subprocess.run([SYSTEM_PYTHON, "-P", str(Path(__file__).resolve()), "--populate", str(staging / "populate.json")],
                       check=True, env={**os.environ, "KRB5_CONFIG": str(sam_ldb.parent / "krb5.conf")})
        info = json.loads((staging / "info.json").read_text())
        grant = subprocess.run([SYSTEM_PYTHON, "-P", str(REPO / "tests" / "servers" / "grant_deleted_objects.py"),
                                str(dc.smb_conf), str(sam_ldb), BASE_DN, READER_SAM],
                               check=False, capture_output=True, text=True, timeout=300)
        if grant.returncode != 0:
            raise SystemExit(f"bench: granting {READER_SAM} the right to list tombstones failed:\n{grant.stderr}")
        provision_s = time.perf_counter() - began
        meta = {
            "format": CACHE_FORMAT, "samba": samba_version(), "users": n, "seed": seed, "built_at": now,
            "built": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now)),
            "prefix": str(staging), "provision_s": round(provision_s, 1),
            "provision_only_s": round(provision_only_s, 1), "populate_s": info.pop("populate_s"),
            "admin_password": dc.admin_password, "reader_upn": f"{READER_SAM}@{DNS_DOMAIN}",
            "reader_password": reader_password, "info": info,
        }
        for leftover in ("populate.json", "info.json", "tls"):
            path = staging / leftover
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        fd = os.open(staging / "meta.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(meta, handle)
        shutil.rmtree(entry, ignore_errors=True)
        staging.rename(entry)
        return meta
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def cached_meta(entry: Path) -> dict | None:
    try:
        meta = json.loads((entry / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("format") != CACHE_FORMAT or meta.get("samba") != samba_version():
        return None
    return meta


def _regular_only(directory: str, names: list[str]) -> list[str]:
    """copytree's ignore: sockets, fifos and the like (samba's ldapi, msg.sock) are not copied."""
    skip = []
    for name in names:
        mode = os.lstat(os.path.join(directory, name)).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
            skip.append(name)
    return skip


def pick_address():
    """A loopback address 127.0.0.X (X >= 2) on which nothing listens on Samba's fixed ports, held
    with a machine-wide lock so that two benchmark runs do not take the same one."""
    from tests.servers.common import MachineLock, port_is_listening
    from tests.servers.samba import SAMBA_PORTS

    for last in range(2, 255):
        address = f"127.0.0.{last}"
        lock = MachineLock(f"cal-agent-bench-samba-{address}")
        if not lock.acquire(0):
            continue
        if any(port_is_listening(port, address, timeout=0.2) for port in SAMBA_PORTS):
            lock.release()
            continue
        return address, lock
    raise SystemExit("bench: no free loopback address 127.0.0.2-254 for the DC")


def start_copy(entry: Path, meta: dict, workdir: Path, address: str):
    """Copy the cached DC into ``workdir``, give it a fresh CA and certificate for ``address`` and
    start samba there.  Returns (the SambaDC, copy seconds, start-up seconds)."""
    from ldap3.core.exceptions import LDAPException

    from tests.servers.common import ServerStartError, port_is_listening, tail
    from tests.servers.samba import SambaDC

    began = time.perf_counter()
    shutil.copytree(entry, workdir, ignore=_regular_only, symlinks=True)
    (workdir / "meta.json").unlink()
    copy_s = time.perf_counter() - began
    dc = SambaDC(workdir, start_timeout=300)
    write_pki(workdir / "tls", address)
    conf = dc.smb_conf.read_text().replace(meta["prefix"], str(workdir))
    # An address that is not an interface's own is only taken with a netmask.
    conf, count = re.subn(r"(?m)^(\s*interfaces\s*=).*$", rf"\g<1> {address}/8", conf)
    assert count == 1, "no `interfaces` line in the cached smb.conf"
    dc.smb_conf.write_text(conf)
    dc.admin_password = meta["admin_password"]
    dc.url = f"ldaps://{address}:636"
    began = time.perf_counter()
    dc._spawn()
    deadline, last_error = time.monotonic() + dc.start_timeout, None
    while True:
        if dc._process.poll() is not None:
            code = dc._process.returncode
            dc.stop()
            raise ServerStartError(f"samba exited with status {code}; log {dc.log_file}:\n{tail(dc.log_file)}")
        if port_is_listening(636, address, timeout=0.2):
            try:
                dc.connect().unbind()
                break
            except LDAPException as exc:
                last_error = exc
        if time.monotonic() > deadline:
            dc.stop()
            raise ServerStartError(f"samba on {address} not ready in {dc.start_timeout:.0f}s ({last_error!r}); "
                                   f"log {dc.log_file}:\n{tail(dc.log_file)}")
        time.sleep(0.2)
    return dc, copy_s, time.perf_counter() - began


# ---------------------------------------------------------------------------------- the run


def changes_ldif(path: Path, info: dict, rnd: random.Random) -> int:
    """1 % of the generated entries changed, as an admin tool would: users renamed (displayName)
    or disabled (a fifth of the users changed), a member added to groups, computers' OS version."""
    n = info["users"]
    total = max(1, info["entries"] // 100)
    n_groups = max(1, total * info["groups"] // info["entries"])
    n_computers = max(1, total * info["computers"] // info["entries"])
    n_users = max(1, total - n_groups - n_computers)
    n_disable = max(1, n_users // 5)
    untouched = sorted(set(range(n)) - set(info["disabled"]) - set(info["expired"]))
    parts = []
    for k, i in enumerate(rnd.sample(untouched, n_users)):
        if k < n_disable:
            parts.append(f"dn: {user_dn(i)}\nchangetype: modify\nreplace: userAccountControl\n"
                         f"userAccountControl: {UAC_NORMAL | UAC_DISABLED}\n\n")
        else:
            parts.append(f"dn: {user_dn(i)}\nchangetype: modify\nreplace: displayName\ndisplayName: Renamed {i}\n\n")
    for g in rnd.sample(range(1, info["groups"]), min(n_groups, info["groups"] - 1)):
        current = set(info["members"][str(g)])
        newcomer = rnd.choice([i for i in range(n) if i not in current])
        parts.append(f"dn: {group_dn(g)}\nchangetype: modify\nadd: member\nmember: {user_dn(newcomer)}\n\n")
    for c in rnd.sample(range(info["computers"]), min(n_computers, info["computers"])):
        parts.append(f"dn: {computer_dn(c)}\nchangetype: modify\nreplace: operatingSystemVersion\n"
                     f"operatingSystemVersion: 10.0 (26100)\n\n")
    path.write_text("".join(parts))
    return len(parts)


def write_agent_files(work: Path, dc, meta: dict, n: int, info: dict, rnd: random.Random) -> Path:
    """bench/run's register and requirements, with the AD names; inactive_after_days is 90 plus the
    cached DC's age in days, so that the findings do not change as the cache gets older."""
    import yaml

    secret = work / "bind-password"
    secret.write_text(meta["reader_password"] + "\n")
    secret.chmod(0o600)
    user_seats = int(n * 0.45)
    device_seats = max(1, n // 20)
    purchases = [
        {"id": "PO-WS-USER", "product": "windows-server", "version": "2022", "cal_type": "user",
         "quantity": int(user_seats * 1.1), "purchased_on": "2024-01-17", "invoice": "INV-1"},
        {"id": "PO-WS-DEV", "product": "windows-server", "version": "2022", "cal_type": "device",
         "quantity": device_seats, "purchased_on": "2024-01-17", "invoice": "INV-2"},
        {"id": "PO-RDS", "product": "rds", "version": "2022", "cal_type": "user",
         "quantity": max(1, n // 100), "purchased_on": "2024-03-01", "invoice": "INV-3"},
        {"id": "PO-EXCH", "product": "exchange-standard", "version": "2019", "cal_type": "user",
         "quantity": max(1, n // 50), "purchased_on": "2023-06-01", "invoice": "INV-4"},
    ]
    assignments = [{"purchase": "PO-WS-USER", "principal": user_sam(i), "assigned_on": "2024-02-01"}
                   for i in range(user_seats)]
    assignments += [{"purchase": "PO-WS-DEV", "principal": computer_name(c), "assigned_on": "2024-02-01"}
                    for c in range(min(device_seats, info["computers"]))]
    assignments += [{"purchase": "PO-RDS", "principal": user_sam(i), "assigned_on": "2024-03-02"}
                    for i in rnd.sample(range(user_seats), max(1, n // 100))]
    assignments += [{"purchase": "PO-EXCH", "principal": f"ghost{i}", "assigned_on": "2024-03-02"} for i in range(5)]
    (work / "inventory.yaml").write_text(yaml.safe_dump({"purchases": purchases, "assignments": assignments},
                                                        sort_keys=False))
    age_days = max(0, math.ceil((time.time() - meta["built_at"]) / 86400))
    config = {
        "database": {"url": "sqlite:///state.db"},
        "directories": [{
            "name": "bench", "type": "active_directory", "url": dc.url, "base_dn": BASE_DN,
            "bind_dn": meta["reader_upn"], "password_file": "bind-password", "tls": {"ca_file": str(dc.ca_file)},
            "inactive_after_days": 90 + age_days, "page_size": 1000, "timeout": 300,
        }],
        "inventory": "inventory.yaml",
        "requirements": [
            {"name": "staff-windows", "product": "windows-server", "version": "2022", "cal_type": "user",
             "users": {"ou": PEOPLE}},
            {"name": "workstations", "product": "windows-server", "version": "2022", "cal_type": "device",
             "computers": {"ou": DEVICES}},
            {"name": "remote", "product": "rds", "version": "2022", "cal_type": "user",
             "users": {"group": group_name(1)}},  # nested groups, transitively
        ],
        "reports": {"directory": "reports"},
    }
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def load_bench_run():
    """bench/run as a module (it has no .py suffix): its drive(), timed(), agent_cmd() and GOALS."""
    loader = importlib.machinery.SourceFileLoader("bench_run", str(REPO / "bench" / "run"))
    spec = importlib.util.spec_from_loader("bench_run", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def stored_counts(work: Path) -> dict:
    """What the first (full) sync read, from the store's sync_runs (after the timed child exited)."""
    import sqlite3

    with sqlite3.connect(work / "state.db") as db:
        row = db.execute("select users, groups, computers, tombstones from sync_runs order by id limit 1").fetchone()
    return dict(zip(("users", "groups", "computers", "tombstones"), row))


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--populate":  # under Debian's python3: no venv imports
        populate(Path(sys.argv[2]))
        return
    sys.path.insert(0, str(REPO))
    bench = load_bench_run()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--cache-dir", type=Path,
                        default=Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cal-agent-bench")
    parser.add_argument("--rebuild", action="store_true", help="provision and populate the cached DC again")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (DC copy, config, store)")
    parser.add_argument("--profile", type=Path, help="profile the timed full sync into this .prof file")
    parser.add_argument("--profile-step", choices=bench.PROFILED_STEPS, default="full",
                        help="the sync --profile profiles: the full one (default) or the incremental one")
    parser.add_argument("--driver", type=Path, help=argparse.SUPPRESS)  # the timed child: bench/run's drive()
    parser.add_argument("--report", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--modify", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.driver:
        print(json.dumps(bench.drive(args.driver, json.loads(args.modify), args.report, args.profile,
                                     args.profile_step)), flush=True)
        return
    if args.users < 100:
        parser.error("--users must be at least 100")

    from tests.servers.common import MachineLock, ServerStartError, find_program
    from tests.servers.samba import SambaDC

    reason = SambaDC.missing_software()
    if reason:
        raise SystemExit(f"bench: cannot run a Samba DC here: {reason}")
    for program in ("ldapsearch", "ldapmodify", SYSTEM_PYTHON):
        if find_program(program) is None:
            raise SystemExit(f"bench: {program} not found (Debian packages ldap-utils, python3-samba)")
    n = args.users
    entry = args.cache_dir.resolve() / f"samba-{n}-{args.seed}"
    entry.parent.mkdir(parents=True, exist_ok=True)
    building = MachineLock(f"cal-agent-bench-{entry.name}")  # one build of one cache entry at a time
    if not building.acquire(3600):
        raise SystemExit(f"bench: another run has been building {entry} for an hour")
    try:
        meta = None if args.rebuild else cached_meta(entry)
        if meta is None:
            say(f"no usable cached DC in {entry}: building it")
            meta = build_cache(entry, n, args.seed)
            cache = "built"
            say(f"built the DC in {meta['provision_s']:.1f}s (provision {meta['provision_only_s']:.1f}s, "
                f"offline adds {meta['populate_s']:.1f}s); cached in {entry}")
        else:
            cache = "hit"
            say(f"cache hit: {entry} (built {meta['built']} in {meta['provision_s']:.1f}s): provisioning skipped")
    finally:
        building.release()
    info = meta["info"]
    say(f"sample objects: {json.dumps(info['sample'])}")

    rnd = random.Random(args.seed + 1)
    address, address_lock = pick_address()
    work = Path(tempfile.mkdtemp(prefix="cal-agent-bench-ad-"))
    dc = None
    try:
        dc, restore_s, start_s = start_copy(entry, meta, work / "samba", address)
        say(f"copied the cached DC in {restore_s:.1f}s; samba ready on {dc.url} in {start_s:.1f}s")
        config = write_agent_files(work, dc, meta, n, info, rnd)
        env = {**os.environ, "LDAPTLS_CACERT": str(dc.ca_file), "CAL_AGENT_CONFIG": "",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        from agent.directory.ad_entries import AD_ATTRIBUTES, AD_PRINCIPAL_FILTER

        search = ["ldapsearch", "-LLL", "-E", f"pr={bench.PAGE_SIZE}/noprompt", "-H", dc.url, "-x",
                  "-D", meta["reader_upn"], "-w", meta["reader_password"], "-b", BASE_DN, AD_PRINCIPAL_FILTER,
                  *AD_ATTRIBUTES]
        say(f"timed steps run by {sys.executable}; load average before them: "
            + " ".join(f"{x:.2f}" for x in os.getloadavg()))
        floor_runs = [bench.timed(search, env=env)[0] for _ in range(2)]
        ldapsearch_s = min(floor_runs)
        say(f"ldapsearch: {', '.join(f'{s:.2f}s' for s in floor_runs)}")

        changed = changes_ldif(work / "changes.ldif", info, rnd)
        modify = ["ldapmodify", "-H", dc.url, "-x", "-D", dc.admin_upn, "-w", dc.admin_password,
                  "-f", str(work / "changes.ldif")]
        startup_s = min(bench.timed(bench.agent_cmd(config, "--version"), cwd=work, env=env)[0] for _ in range(3))
        say(f"cal-agent start-up (--version): {startup_s:.2f}s")
        driver = [sys.executable, str(Path(__file__).resolve()), "--driver", str(config),
                  "--report", str(work / "report.json"), "--modify", json.dumps(modify)]
        if args.profile:
            driver += ["--profile", str(args.profile.resolve()), "--profile-step", args.profile_step]
        with tempfile.TemporaryFile() as captured:
            wall, driver_rss = bench.timed(driver, cwd=work, env=env, stdout=captured)
            captured.seek(0)
            steps = json.loads(captured.read().decode().strip().splitlines()[-1])
        read = stored_counts(work)
        say(f"full sync ({steps['full_sync_mode']}, {read['users']} users, {read['groups']} groups, "
            f"{read['computers']} computers): {steps['full_sync_s']:.2f}s; after ldapmodify changed {changed} "
            f"entries, {steps['incremental_mode']} sync: {steps['incremental_s']:.2f}s "
            f"({steps['incremental_read']} read; {steps['incremental_reason']}); reconcile "
            f"{steps['reconcile_only_s']:.2f}s + JSON report {steps['report_json_s']:.2f}s; "
            f"peak RSS {driver_rss:.0f} MB ({wall:.1f}s in all)")
        if args.profile:
            bench.print_profile(args.profile)
        full_s, incr_s = steps["full_sync_s"], steps["incremental_s"]
        rec_s, rep_s = steps["reconcile_only_s"], steps["report_json_s"]
        reconcile_s = rec_s + rep_s
        result = {
            "users": n,
            "entries": info["entries"],
            "groups": info["groups"],
            "computers": info["computers"],
            "member_values": info["memberships"],
            "changed_entries": changed,
            "provision_s": meta["provision_s"],
            "cache": cache,
            "restore_s": round(restore_s, 2),
            "samba_start_s": round(start_s, 2),
            "ldapsearch_s": round(ldapsearch_s, 3),
            "full_sync_s": round(full_s, 3),
            "full_sync_mode": steps["full_sync_mode"],
            "full_sync_read": sum(read[k] for k in ("users", "groups", "computers")),
            "incremental_s": round(incr_s, 3),
            "incremental_mode": steps["incremental_mode"],
            "incremental_read": steps["incremental_read"],
            "reconcile_s": round(reconcile_s, 3),
            "reconcile_only_s": round(rec_s, 3),
            "report_json_s": round(rep_s, 3),
            "full_sync_ratio": round(full_s / ldapsearch_s, 2),
            "incremental_ratio": round(incr_s / full_s, 3),
            "reconcile_ratio": round(reconcile_s / full_s, 3),
            "peak_rss_mb": round(driver_rss),
            "rss_mb": steps["rss_mb"],
            "rss_after_mb": steps["rss_after_mb"],
            "findings": steps["findings"],
            **({"steady_cycle_s": round(steps["steady_cycle_s"], 3), "steady_cycle_read": steps["steady_cycle_read"]}
               if "steady_cycle_s" in steps else {}),  # bench/run's drive() times it since aa95e62
            "full_resync_s": round(steps["full_resync_s"], 3),
            "startup_s": round(startup_s, 3),
            "import_s": steps["import_s"],
            "goals": bench.GOALS,
        }
        result["met"] = {key: result[key] <= goal for key, goal in bench.GOALS.items()}
        print(json.dumps(result), flush=True)
    except ServerStartError as exc:
        raise SystemExit(f"bench: samba did not start: {exc}") from None
    finally:
        if dc is not None:
            dc.stop()
        address_lock.release()
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

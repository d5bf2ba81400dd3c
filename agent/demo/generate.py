"""Generate the bundled demo dataset in ``agent/demo/data/`` (run: ``python -m agent.demo.generate``).

Northwind Traders is fictional.  Everything comes from one seeded ``random.Random``, iterated in
list order only (never over sets), so two runs write byte-identical files.  Stdlib only.

The directory is built first; the CAL register is then built from it on purpose (who is short,
who holds stale seats, ...).  The expected findings written to README.md are computed here, from
this module's own bookkeeping, with the rules the agent applies (lifecycle precedence deleted >
disabled > expired > inactive; transitive and primary-group membership; same-or-later CAL version).
"""

from __future__ import annotations

import base64
import random
import unicodedata
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

SEED = 20261101
AS_OF = datetime(2026, 11, 1, tzinfo=timezone.utc)  # the export instant; all times are relative to it
INACTIVE_DAYS = 90
DOMAIN = "DC=northwind,DC=example"
DNS = "northwind.example"
DOMAIN_SID = "S-1-5-21-1718284573-2390812649-3077196108"
DOMAIN_CREATED = datetime(2019, 1, 7, 9, 12, 44, tzinfo=timezone.utc)
NEVER = 9223372036854775807  # accountExpires "never" (0 means never too)
EPOCH = datetime(1601, 1, 1, tzinfo=timezone.utc)
DATA = Path(__file__).parent / "data"

STAFF = f"OU=Staff,{DOMAIN}"
OU = {name: f"OU={name},{STAFF}" for name in ("Sales", "Finance", "Engineering", "Operations")}
OU.update({name: f"OU={name},{DOMAIN}" for name in
           ("Staff", "Contractors", "Service Accounts", "Leavers", "Groups", "Workstations", "Kiosks", "Servers")})
USERS_CN = f"CN=Users,{DOMAIN}"

FIRST = ("Aaron Abigail Adam Aisha Alan Alice Amir Ana Andrew Anna Ben Bianca Carlos Chloe Daniel Diana David "
         "Elena Emily Emma Ethan Farah Felix Grace Hannah Hugo Ian Irene Isaac Jack James Julia Kevin Laura Leo "
         "Lina Lucas Maria Mark Maya Michael Mia Nadia Nathan Nina Noah Olivia Omar Paul Priya Rachel Ravi Rosa "
         "Ryan Sara Sean Sofia Thomas Tina Victor Wei Yusuf Zara").split()
LAST = ("Adams Ahmed Allen Baker Bennett Brooks Campbell Carter Chen Clark Collins Cooper Cruz Davies Diaz "
        "Edwards Evans Fischer Foster Garcia Gray Green Hall Harris Hughes Jackson Jensen Johnson Kelly Khan Kim "
        "King Kowalski Lee Lewis Lopez Martin Meyer Miller Mitchell Moore Morgan Murphy Nguyen Novak Okafor Park "
        "Patel Perez Phillips Reed Reyes Roberts Rossi Russell Sanchez Schmidt Scott Silva Singh Smith Stewart "
        "Sullivan Taylor Thompson Turner Walker Ward Watson White Wilson Wright Young").split()

# (given name, surname, department OU, engineering team, cn override, displayName override).
# Non-ASCII names make LDIF write dn::/cn::/member:: in base64; "Nakamura, Kenji" needs an escaped
# comma in its DN; Mallory's displayName checks that reports escape HTML.
SPECIAL = [
    ("José", "Müller", "Sales", None, None, None),
    ("Zoë", "Ødegaard", "Engineering", "Apps", None, None),
    ("François", "Lefèvre", "Finance", None, None, None),
    ("Małgorzata", "Wiśniewska", "Operations", None, None, None),
    ("Kenji", "Nakamura", "Finance", None, "Nakamura, Kenji", None),
    ("Mallory", "Test", "Engineering", "Apps", None, "Mallory <b>Test</b>"),
]
# Staff drawn from the name pool per department (+ the specials above = 170).
DEPARTMENTS = [("Sales", None, 39), ("Finance", None, 22), ("Engineering", "Platform", 30),
               ("Engineering", "Apps", 34), ("Operations", None, 39)]
SERVICE_ACCOUNTS = [("svc-backup", "Backup jobs (file server)"), ("svc-sql", "SQL Server engine"),
                    ("svc-print", "Print spooler queues"), ("svc-scan", "Scan-to-mail on the copiers"),
                    ("svc-calagent", "cal-agent read-only directory bind")]


@dataclass
class P:
    """One principal (user, group or computer) as the export will show it."""

    kind: str
    cn: str
    parent: str  # container DN; for a tombstone, its lastKnownParent
    sam: str  # sAMAccountName; computers without the trailing "$"
    created: datetime
    uac: int = 512
    expires: int = NEVER  # accountExpires FILETIME
    last_logon: datetime | None = None
    pwd_set: datetime | None = None  # None: pwdLastSet 0 ("must change at next logon")
    primary: str = "Domain Users"  # primary group by sAMAccountName (primaryGroupID)
    given: str | None = None
    surname: str | None = None
    display: str | None = None
    mail: str | None = None
    department: str | None = None
    description: str | None = None
    os: tuple[str, str] | None = None
    members: list[str] = field(default_factory=list)  # sAMAccountNames, written as DNs
    deleted: bool = False
    rid: int = 0
    guid: uuid.UUID | None = None

    @property
    def dn(self) -> str:
        rdn = "CN=" + escape_rdn(self.cn)
        if self.deleted:  # AD mangles a tombstone's RDN to "<cn>\0ADEL:<guid>" (0x0A escaped)
            return f"{rdn}\\0ADEL:{self.guid},CN=Deleted Objects,{DOMAIN}"
        return f"{rdn},{self.parent}"


def escape_rdn(value: str) -> str:
    return "".join("\\" + ch if ch in ',+"\\<>;=' else ch for ch in value)


def ascii_fold(text: str) -> str:
    text = text.translate(str.maketrans({"ø": "o", "Ø": "O", "ł": "l", "Ł": "L", "æ": "ae", "ß": "ss"}))
    return "".join(c for c in unicodedata.normalize("NFKD", text) if c.isascii())


def filetime(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1) * 10


def from_filetime(ticks: int) -> datetime | None:
    return None if ticks in (0, NEVER) else EPOCH + timedelta(microseconds=ticks // 10)


def sid_bytes(sid: str) -> bytes:
    parts = [int(x) for x in sid.split("-")[1:]]
    subs = parts[2:]
    return (bytes([parts[0], len(subs)]) + parts[1].to_bytes(6, "big")
            + b"".join(s.to_bytes(4, "little") for s in subs))


class Directory:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.objects: list[P] = []
        self.by_sam: dict[str, P] = {}
        self.names = [(f, s) for f in FIRST for s in LAST]
        rng.shuffle(self.names)
        self.mails: set[str] = set()

    def ago(self, lo: float, hi: float) -> datetime:
        """A random instant between ``hi`` and ``lo`` days before the export."""
        seconds = self.rng.randrange(int(lo * 86400), int(hi * 86400))
        return AS_OF - timedelta(seconds=seconds, microseconds=self.rng.randrange(10**6))

    def add(self, p: P) -> P:
        key = p.sam.lower()
        assert key not in self.by_sam, f"duplicate sAMAccountName {p.sam}"
        self.objects.append(p)
        self.by_sam[key] = p
        return p

    def person(self, parent: str, department: str | None, *, name: tuple[str, str] | None = None,
               cn: str | None = None, display: str | None = None) -> P:
        given, surname = name or self.names.pop()
        base = ascii_fold(given[0] + surname).lower()
        sam, n = base, 1
        while sam in self.by_sam:
            n += 1
            sam = f"{base}{n}"
        local = ascii_fold(f"{given}.{surname}").lower().replace(" ", "")
        mail, n = local, 1
        while mail in self.mails:
            n += 1
            mail = f"{local}{n}"
        self.mails.add(mail)
        created = self.ago(60, (AS_OF - DOMAIN_CREATED).days - 30)
        last = self.ago(0.1, 14)  # lastLogonTimestamp replicates with up to ~14 days of lag
        pwd = self.ago((AS_OF - last).days + 1, min(170, (AS_OF - created).days))
        # Some provisioning tools write accountExpires 0 instead of the "never" maximum.
        expires = 0 if self.rng.random() < 0.15 else NEVER
        return self.add(P("user", cn or f"{given} {surname}", parent, sam, created, expires=expires,
                          last_logon=last, pwd_set=pwd, given=given, surname=surname,
                          display=display or f"{given} {surname}", mail=f"{mail}@{DNS}", department=department))

    def group(self, name: str, parent: str, created: datetime, members: list[str], description: str) -> P:
        return self.add(P("group", name, parent, name, created, members=list(members), description=description))

    def computer(self, name: str, parent: str, created: datetime, os: tuple[str, str], *,
                 disabled: bool = False, idle_days: float | None = None, description: str | None = None) -> P:
        last = self.ago(idle_days, idle_days + 1) if idle_days else self.ago(0.1, 14)
        pwd = last - timedelta(days=self.rng.randint(0, 29))  # machine passwords rotate every 30 days
        return self.add(P("computer", name, parent, name, created, uac=4098 if disabled else 4096,
                          last_logon=last, pwd_set=max(pwd, created), primary="Domain Computers", os=os,
                          description=description))

    # ------------------------------------------------------------------ bookkeeping (agent rules)

    def state(self, p: P) -> str:
        if p.deleted:
            return "deleted"
        if p.kind == "group":
            return "active"
        if p.uac & 2:
            return "disabled"
        expiry = from_filetime(p.expires)
        if expiry is not None and expiry <= AS_OF:
            return "expired"
        newest = max(m for m in (p.last_logon, p.pwd_set, p.created) if m is not None)
        return "inactive" if newest + timedelta(days=INACTIVE_DAYS) < AS_OF else "active"

    def members_of(self, group: str) -> set[str]:
        """Transitive members (lower-case names), including primaryGroupID membership."""
        found: set[str] = set()
        stack, expanded = [group.lower()], set()
        while stack:
            g = stack.pop()
            if g in expanded:
                continue
            expanded.add(g)
            direct = [m.lower() for m in self.by_sam[g].members]
            direct += [p.sam.lower() for p in self.objects if not p.deleted and p.primary.lower() == g]
            for m in direct:
                found.add(m)
                if self.by_sam[m].kind == "group":
                    stack.append(m)
        return found

    def active(self, kind: str) -> list[P]:
        return [p for p in self.objects if p.kind == kind and self.state(p) == "active"]


def build_directory(rng: random.Random) -> tuple[Directory, dict[str, list[P]]]:
    d = Directory(rng)
    roles: dict[str, list[P]] = {}
    early = DOMAIN_CREATED + timedelta(days=3)

    # Staff: the name pool plus the special names, spread over the department OUs.
    team: dict[str, list[str]] = {"Sales": [], "Finance": [], "Operations": [], "Platform": [], "Apps": []}
    pool: list[P] = []
    for dept, sub, count in DEPARTMENTS:
        for _ in range(count):
            p = d.person(OU[dept], dept)
            team[sub or dept].append(p.sam)
            pool.append(p)
    for given, surname, dept, sub, cn, display in SPECIAL:
        p = d.person(OU[dept], dept, name=(given, surname), cn=cn, display=display)
        team[sub or dept].append(p.sam)
    roles["special"] = [d.by_sam[ascii_fold(g[0] + s).lower()] for g, s, *_ in SPECIAL]
    head_of_eng = d.person(OU["Engineering"], "Engineering")  # a direct member of GG-Engineering

    picks = rng.sample(pool, 10)
    roles["new"], roles["inactive"] = picks[:2], picks[2:]
    for p in roles["new"]:  # joined this month and never logged on: active, not inactive
        p.created, p.last_logon = d.ago(3, 25), None
    roles["new"][1].pwd_set = roles["new"][1].created  # the other one keeps pwdLastSet 0
    roles["new"][0].pwd_set = None
    for p in roles["inactive"]:  # enabled but idle for 120-400 days (long leave, forgotten account)
        p.last_logon = d.ago(120, 400)
        p.pwd_set = p.last_logon - timedelta(days=rng.randint(5, 120))
        p.created = min(p.created, p.pwd_set - timedelta(days=rng.randint(100, 900)))

    # Leavers: disabled and moved to OU=Leavers; nobody logged on after they left.
    roles["leavers"] = []
    for _ in range(12):
        p = d.person(OU["Leavers"], rng.choice(["Sales", "Finance", "Engineering", "Operations"]))
        left = d.ago(30, 300)
        p.uac, p.last_logon, p.description = 514, left - timedelta(hours=rng.randint(1, 60)), f"Left {left:%Y-%m-%d}"
        p.pwd_set = p.last_logon - timedelta(days=rng.randint(10, 150))
        p.created = min(p.created, p.pwd_set - timedelta(days=rng.randint(300, 1500)))
        roles["leavers"].append(p)

    # Contractors: 0-4 have GG-Contractors as primary group (no member value there, and - as this
    # export has it - not in Domain Users either); 0, 5, 6 have expired; 1 expires next month.
    roles["contractors"] = c = [d.person(OU["Contractors"], None) for _ in range(15)]
    for p in c:
        p.created = max(p.created, d.ago(200, 900))
        p.description = "Contractor (Fabrikam Consulting)"
    for p in c[:5]:
        p.primary = "GG-Contractors"
    for p in (c[0], c[5], c[6]):
        ends = d.ago(10, 150)
        p.expires, p.last_logon = filetime(ends), ends - timedelta(days=rng.randint(1, 5))
        p.pwd_set = p.last_logon - timedelta(days=rng.randint(5, 60))
    c[1].expires = filetime((AS_OF + timedelta(days=45)).replace(hour=0))
    c[7].expires = c[8].expires = 0

    roles["service"] = []
    for sam, what in SERVICE_ACCOUNTS:  # password never expires (0x10000): pwdLastSet years old
        created = d.ago(700, 2200)
        roles["service"].append(d.add(P("user", sam, OU["Service Accounts"], sam, created, uac=66048,
                                        last_logon=d.ago(0.1, 10), pwd_set=created + timedelta(hours=1),
                                        display=sam, description=what)))

    # Deleted users (tombstones): only the attributes AD keeps on a tombstone are written.
    roles["deleted"] = []
    for parent, uac in ((OU["Sales"], 514), (OU["Leavers"], 514), (OU["Contractors"], 512)):
        p = d.person(parent, None)
        p.deleted, p.uac = True, uac
        roles["deleted"].append(p)

    # Groups.  Leavers are out of their department groups except one forgotten in GG-Sales.
    leavers = [p.sam for p in roles["leavers"]]
    d.group("GG-Sales", OU["Groups"], early, team["Sales"] + leavers[:1], "Sales department")
    d.group("GG-Finance", OU["Groups"], early, team["Finance"], "Finance department")
    d.group("GG-Operations", OU["Groups"], early, team["Operations"], "Operations department")
    d.group("GG-Eng-Platform", OU["Groups"], early, team["Platform"], "Engineering: platform team")
    d.group("GG-Eng-Apps", OU["Groups"], early, team["Apps"], "Engineering: applications team")
    d.group("GG-Engineering", OU["Groups"], early, ["GG-Eng-Platform", "GG-Eng-Apps", head_of_eng.sam],
            "Engineering department")
    d.group("GG-All-Staff", OU["Groups"], early, ["GG-Sales", "GG-Finance", "GG-Engineering", "GG-Operations"],
            "Everyone on the payroll")
    d.group("GG-Contractors", OU["Groups"], early + timedelta(days=400), [p.sam for p in c[5:]],
            "External contractors")
    rds_direct = rng.sample(team["Finance"][:20], 4) + rng.sample(team["Sales"][:36], 3)
    rds_direct += [roles["inactive"][0].sam, c[6].sam, c[2].sam] + leavers[1:3]
    d.group("RDS-Users", OU["Groups"], datetime(2023, 9, 18, 10, 4, 51, tzinfo=timezone.utc),
            ["GG-Eng-Platform"] + rds_direct, "Remote Desktop Users on SRV-RDS01")
    d.group("Exchange-Users", OU["Groups"], early + timedelta(days=30),
            ["GG-All-Staff", c[5].sam, c[9].sam, c[10].sam], "Mailbox users on SRV-EXCH01")
    d.group("svc-accounts", OU["Groups"], early, [p.sam for p in roles["service"]], "Service accounts")
    d.group("GG-Kiosk-Operators", OU["Groups"], datetime(2024, 6, 10, 8, 30, tzinfo=timezone.utc),
            rng.sample(team["Operations"][:36], 6), "Staff who operate the lobby and warehouse kiosks")
    # Built-ins: like real AD, no member values (membership comes from primaryGroupID alone).
    d.group("Domain Users", USERS_CN, DOMAIN_CREATED, [], "All domain users").rid = 513
    d.group("Domain Computers", USERS_CN, DOMAIN_CREATED, [],
            "All workstations and servers joined to the domain").rid = 515

    # Computers.
    for i in range(1, 41):
        os = ("Windows 11 Enterprise", "10.0 (22631)") if i % 4 else ("Windows 10 Enterprise", "10.0 (19045)")
        idle = {23: 150, 35: 260}.get(i)
        d.computer(f"WS-{i:04d}", OU["Workstations"], d.ago(60, 1400), os, disabled=i == 17, idle_days=idle,
                   description="Retired, awaiting disposal" if i == 17 else None)
    kiosk_os = ("Windows 10 IoT Enterprise LTSC", "10.0 (19044)")
    roles["kiosks"] = []
    for i in range(1, 13):
        created = datetime(2024, 6, 10, 9, tzinfo=timezone.utc) + timedelta(days=i // 4, minutes=17 * i)
        if i == 12:
            created = d.ago(15, 20)  # a new kiosk, never assigned a CAL
        roles["kiosks"].append(d.computer(
            f"KIOSK-{i:02d}", OU["Kiosks"], created, kiosk_os, disabled=i == 7, idle_days=200 if i == 11 else None,
            description={7: "Touch screen broken, awaiting repair", 11: "Lobby kiosk, in storage"}.get(i)))
    for name in ("SRV-FILE01", "SRV-EXCH01", "SRV-RDS01"):
        d.computer(name, OU["Servers"], d.ago(600, 1300), ("Windows Server 2022 Standard", "10.0 (20348)"))

    # GUIDs and RIDs: RIDs are handed out in creation order, starting where AD's built-ins end.
    for p in d.objects:
        p.guid = uuid.UUID(int=rng.getrandbits(128), version=4)
    rid = 1103
    for p in sorted(d.objects, key=lambda p: (p.created, p.sam)):
        if not p.rid:
            p.rid, rid = rid, rid + 1
    return d, roles


# ---------------------------------------------------------------------------------- inventory

PURCHASES = [  # id, product, version, cal_type, quantity, purchased_on, invoice, vendor, notes
    ("PO-2021-0520", "windows-server", "2019", "user", 25, date(2021, 5, 20), "INV-61207", "Contoso Reseller",
     "Bought before the 2022 upgrade; 2019 CALs do not cover Windows Server 2022"),
    ("PO-2022-0412", "exchange-standard", "2019", "user", 150, date(2022, 4, 12), "INV-70341", "Contoso Reseller",
     None),
    ("PO-2023-0915", "rds", "2022", "user", 45, date(2023, 9, 15), "FAB-2023-1187", "Fabrikam Licensing", None),
    ("PO-2024-0117", "windows-server", "2022", "user", 100, date(2024, 1, 17), "INV-88812", "Contoso Reseller",
     None),
    ("PO-2024-0603", "windows-server", "2022", "device", 10, date(2024, 6, 3), "INV-90455", "Contoso Reseller",
     "Device CALs for the lobby and warehouse kiosks"),
    ("PO-2025-0314", "windows-server", "2022", "user", 40, date(2025, 3, 14), "INV-95120", "Contoso Reseller",
     None),
    ("PO-2025-0819", "exchange-standard", "2019", "user", 20, date(2025, 8, 19), "INV-98702", "Contoso Reseller",
     None),
    ("PO-2026-0611", "windows-server", "2022", "user", 24, date(2026, 6, 11), "FAB-2026-0420", "Fabrikam Licensing",
     None),
]
QTY = {row[0]: row[4] for row in PURCHASES}
BOUGHT = {row[0]: row[5] for row in PURCHASES}

# Requirements (mirrors config.yaml): name, product, version, cal_type, selector.
REQUIREMENTS = [
    ("staff-windows", "windows-server", "2022", "user", {"group": "Domain Users", "exclude": ["svc-accounts"]}),
    ("contractors-windows", "windows-server", "2022", "user", {"group": "GG-Contractors"}),
    ("kiosks", "windows-server", "2022", "device", {"ou": OU["Kiosks"]}),
    ("remote-desktop", "rds", "2022", "user", {"group": "RDS-Users"}),
    ("mail", "exchange-standard", "2019", "user", {"group": "Exchange-Users"}),
]


def required(d: Directory, selector: dict, kind: str) -> list[P]:
    chosen = d.active(kind)
    if "ou" in selector:
        chosen = [p for p in chosen if p.dn.lower().endswith("," + selector["ou"].lower())]
    if "group" in selector:
        members = d.members_of(selector["group"])
        chosen = [p for p in chosen if p.sam.lower() in members]
    for group in selector.get("exclude", []):
        members = d.members_of(group)
        chosen = [p for p in chosen if p.sam.lower() not in members]
    return chosen


def typo(name: str, d: Directory) -> str:
    """A plausible mistyped sAMAccountName (two letters swapped) that is not in the directory."""
    for i in range(1, len(name) - 2):
        candidate = name[:i] + name[i + 1] + name[i] + name[i + 2:]
        if candidate != name and candidate not in d.by_sam:
            return candidate
    raise AssertionError(name)


def build_inventory(d: Directory, roles: dict[str, list[P]]) -> list[tuple[str, str, date]]:
    rng = d.rng
    need = {name: required(d, sel, "user" if ct == "user" else "computer") for name, _, _, ct, sel in REQUIREMENTS}
    windows = {p.sam: p for p in need["staff-windows"] + need["contractors-windows"]}
    assignments: list[tuple[str, str, date]] = []

    def assign(po: str, holder: P | str) -> None:
        if isinstance(holder, str):  # an orphan: a name that was never in the directory
            assignments.append((po, holder, BOUGHT[po] + timedelta(days=rng.randint(3, 20))))
            return
        on = max(BOUGHT[po], holder.created.date()) + timedelta(days=rng.randint(1, 12))
        if d.state(holder) != "active":  # seats were assigned while the holder still worked here
            end = holder.last_logon or from_filetime(holder.expires) or AS_OF
            on = min(on, end.date())
            assert on >= BOUGHT[po], (po, holder.sam)
        assignments.append((po, holder.sam, min(on, AS_OF.date() - timedelta(days=1))))

    # Windows Server user CALs.  10 required users hold nothing (one because their seat was typed
    # under a wrong name), 12 hold only the old 2019 CALs, and stale holders eat 2022 seats.
    s = roles["special"]
    c = roles["contractors"]
    candidates = [p for p in windows.values() if p not in s and p not in roles["new"] and p is not c[3]]
    unlicensed = roles["new"] + [s[1], s[5], c[3]] + rng.sample(candidates, 5)
    typo_target = unlicensed[-1]
    old = sorted((p for p in candidates if p not in unlicensed and p.created.date() < date(2021, 5, 20)),
                 key=lambda p: p.sam)
    legacy = rng.sample(old, 12)
    for p in legacy + roles["leavers"][6:8]:
        assign("PO-2021-0520", p)
    expired = [p for p in c if d.state(p) == "expired"]
    stale = roles["leavers"][:6] + roles["deleted"] + [p for p in expired if p.primary == "Domain Users"]
    stale += roles["inactive"][:4]
    holders: list[P | str] = stale + [typo(typo_target.sam, d)]
    holders += sorted((p for p in windows.values() if p not in unlicensed and p not in legacy),
                      key=lambda p: (p.created, p.sam))
    # Fill the first and last purchase exactly; the middle one gets the rest (over-assigned).
    first, last = QTY["PO-2024-0117"], QTY["PO-2026-0611"]
    for i, h in enumerate(holders):
        assign("PO-2024-0117" if i < first else "PO-2026-0611" if i >= len(holders) - last else "PO-2025-0314", h)

    # Remote Desktop: 2 members lack a seat (one recorded under a typo); departed members keep theirs.
    rds_members = d.members_of("RDS-Users")
    rds_users = [p for p in d.objects if p.kind == "user" and p.sam.lower() in rds_members]
    rds_missing = rng.sample([p for p in need["remote-desktop"] if p not in unlicensed], 2)
    for p in rds_users:
        if p not in rds_missing:
            assign("PO-2023-0915", p)
    assign("PO-2023-0915", typo(rds_missing[0].sam, d))

    # Exchange: new joiners and one other user lack a seat; some departed still hold one.
    mail_missing = roles["new"] + rng.sample([p for p in need["mail"] if p not in roles["new"]], 1)
    mail_holders = roles["leavers"][3:6] + roles["deleted"][:1] + roles["inactive"][4:6]
    mail_holders += sorted((p for p in need["mail"] if p not in mail_missing), key=lambda p: (p.created, p.sam))
    for i, p in enumerate(mail_holders):
        assign("PO-2022-0412" if i < QTY["PO-2022-0412"] else "PO-2025-0819", p)

    # Kiosks: 10 device CALs for 12 kiosks; the broken and the stored kiosk still hold seats, so
    # two working kiosks have none although nothing needs to be bought.
    k = roles["kiosks"]
    for p in k[:6] + k[7:9] + [k[6], k[10]]:
        assign("PO-2024-0603", p)
    return assignments


def expected_findings(d: Directory, assignments: list[tuple[str, str, date]]) -> dict:
    """What the agent should report, computed independently of the choices above."""
    product = {row[0]: row for row in PURCHASES}
    needs: dict[tuple[str, str, str, str], P] = {}  # (sam, product, version, type) -> principal
    for _name, prod, version, ct, sel in REQUIREMENTS:
        for p in required(d, sel, "user" if ct == "user" else "computer"):
            needs[(p.sam.lower(), prod, version, ct)] = p
    held: dict[str, list[tuple]] = {}
    found: Counter = Counter()
    stale_by_state: Counter = Counter()
    per_po: Counter = Counter()
    for po, name, _on in assignments:
        per_po[po] += 1
        holder = d.by_sam.get(name.lower())
        if holder is None:
            found["orphan_assignment"] += 1
            continue
        held.setdefault(name.lower(), []).append(product[po])
        if d.state(holder) != "active":
            found["stale_assignment"] += 1
            stale_by_state[d.state(holder)] += 1
    rows: dict[tuple[str, str, str], list[int]] = {}  # -> [required, owned, licensed]
    for (sam, prod, version, ct), p in needs.items():
        row = rows.setdefault((prod, version, ct), [0, sum(r[4] for r in PURCHASES if r[1] == prod and r[3] == ct
                                                           and int(r[2]) >= int(version)), 0])
        row[0] += 1
        if any(r[1] == prod and r[3] == ct and int(r[2]) >= int(version) for r in held.get(sam, [])):
            row[2] += 1
        else:
            found["unlicensed_user" if ct == "user" else "unlicensed_device"] += 1
            # Each held CAL of the right product and type but an older version is a version_mismatch.
            found["version_mismatch"] += sum(1 for r in held.get(sam, []) if r[1] == prod and r[3] == ct
                                             and int(r[2]) < int(version))
    for r in PURCHASES:  # purchases that cover no requirement show as their own line
        if not any(r[1] == prod and r[3] == ct and int(r[2]) >= int(v) for prod, v, ct in rows):
            rows[(r[1], r[2], r[3])] = [0, r[4], 0]
    found["shortfall"] = sum(1 for req, owned, _ in rows.values() if req > owned)
    over = {po: n for po, n in per_po.items() if n > QTY[po]}
    found["over_assigned"] = len(over)
    return {"findings": found, "stale_by_state": stale_by_state, "rows": rows, "over": over, "per_po": per_po}


# ---------------------------------------------------------------------------------- writers

def ldif_line(name: str, value: str | bytes) -> str:
    """One attribute line, base64 when binary or not a SAFE-STRING (RFC 2849), folded at 76
    columns like OpenLDAP's ldapsearch."""
    if isinstance(value, bytes) or not value.isascii() or value[:1] in (" ", ":", "<") or value.endswith(" "):
        raw = value if isinstance(value, bytes) else value.encode("utf-8")
        line = f"{name}:: {base64.b64encode(raw).decode('ascii')}"
    else:
        line = f"{name}: {value}"
    chunks = [line[:76]] + [" " + line[i:i + 75] for i in range(76, len(line), 75)]
    return "\n".join(chunks)


def generalized(moment: datetime) -> str:
    return moment.strftime("%Y%m%d%H%M%S") + ".0Z"


def principal_lines(d: Directory, p: P) -> list[tuple[str, str | bytes]]:
    sid = sid_bytes(f"{DOMAIN_SID}-{p.rid}")
    if p.deleted:
        return [("objectClass", v) for v in ("top", "person", "organizationalPerson", "user")] + [
            ("sAMAccountName", p.sam), ("userAccountControl", str(p.uac)), ("whenCreated", generalized(p.created)),
            ("isDeleted", "TRUE"), ("lastKnownParent", p.parent), ("msDS-LastKnownRDN", p.cn),
            ("objectGUID", p.guid.bytes_le), ("objectSid", sid)]
    classes = {"user": ("top", "person", "organizationalPerson", "user"), "group": ("top", "group"),
               "computer": ("top", "person", "organizationalPerson", "user", "computer")}[p.kind]
    out: list[tuple[str, str | bytes]] = [("objectClass", v) for v in classes] + [("cn", p.cn)]
    for name, value in (("sn", p.surname), ("givenName", p.given), ("displayName", p.display),
                        ("description", p.description), ("department", p.department)):
        if value:
            out.append((name, value))
    if p.kind == "group":
        out += [("member", d.by_sam[m.lower()].dn) for m in p.members]
        out += [("sAMAccountName", p.sam), ("groupType", "-2147483646")]
    else:
        if p.mail:
            out += [("userPrincipalName", p.mail.split("@")[0] and f"{p.sam}@{DNS}"), ("mail", p.mail)]
        out += [("sAMAccountName", p.sam + ("$" if p.kind == "computer" else "")),
                ("userAccountControl", str(p.uac)), ("accountExpires", str(p.expires)),
                ("pwdLastSet", str(filetime(p.pwd_set)) if p.pwd_set else "0")]
        if p.last_logon:
            out.append(("lastLogonTimestamp", str(filetime(p.last_logon))))
        out.append(("primaryGroupID", str(d.by_sam[p.primary.lower()].rid)))
        if p.os:
            out += [("dNSHostName", f"{p.sam}.{DNS}"), ("operatingSystem", p.os[0]),
                    ("operatingSystemVersion", p.os[1])]
    out += [("whenCreated", generalized(p.created)), ("objectGUID", p.guid.bytes_le), ("objectSid", sid)]
    return out


def write_ldif(d: Directory, rng: random.Random) -> str:
    entries: list[tuple[str, list[tuple[str, str | bytes]]]] = []
    entries.append((DOMAIN, [("objectClass", "top"), ("objectClass", "domain"), ("objectClass", "domainDNS"),
                             ("dc", "northwind"), ("whenCreated", generalized(DOMAIN_CREATED)),
                             ("objectGUID", uuid.UUID(int=rng.getrandbits(128), version=4).bytes_le),
                             ("objectSid", sid_bytes(DOMAIN_SID))]))
    containers = [(USERS_CN, "container")] + [(dn, "organizationalUnit") for dn in
                                              [OU["Staff"]] + [OU[n] for n in ("Sales", "Finance", "Engineering",
                                                                              "Operations")]
                                              + [OU[n] for n in ("Contractors", "Service Accounts", "Leavers",
                                                                 "Groups", "Workstations", "Kiosks", "Servers")]]
    for dn, cls in containers:
        rdn = dn.split(",", 1)[0].split("=", 1)[1]
        entries.append((dn, [("objectClass", "top"), ("objectClass", cls), ("cn" if cls == "container" else "ou", rdn),
                             ("whenCreated", generalized(DOMAIN_CREATED + timedelta(minutes=7))),
                             ("objectGUID", uuid.UUID(int=rng.getrandbits(128), version=4).bytes_le)]))
    order = {"group": 0, "user": 1, "computer": 2}
    live = sorted((p for p in d.objects if not p.deleted), key=lambda p: (order[p.kind], p.parent, p.cn.lower()))
    entries += [(p.dn, principal_lines(d, p)) for p in live]
    entries += [(p.dn, principal_lines(d, p)) for p in d.objects if p.deleted]
    out = [f"# Northwind Traders demo directory, exported {AS_OF:%Y-%m-%dT%H:%M:%SZ}; fictional",
           "# generated by agent/demo/generate.py (do not edit by hand)",
           "# extended LDIF", "#", "# LDAPv3", f"# base <{DOMAIN}> with scope subtree",
           "# filter: (objectClass=*)", "# requesting: ALL",
           '# with the "Show Deleted" control (1.2.840.113556.1.4.417)', "#", "", "version: 1", ""]
    for dn, attrs in entries:
        out += [f"# {dn}", ldif_line("dn", dn)] + [ldif_line(n, v) for n, v in attrs] + [""]
    out += ["# search result", f"# numEntries: {len(entries)}", ""]
    return "\n".join(out)


def yaml_str(value: str) -> str:
    plain = value.replace("-", "").replace(".", "").replace(" ", "").replace("/", "").isalnum()
    if plain and value[:1].isalpha() and value.lower() not in ("yes", "no", "on", "off", "true", "false", "null"):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_inventory(assignments: list[tuple[str, str, date]]) -> str:
    out = ["# Northwind Traders CAL register -- FICTIONAL demo data, generated by agent/demo/generate.py.",
           "# Not compliant on purpose: a Windows Server 2022 user CAL shortfall, 2019 CALs that do not",
           "# cover 2022, required users and kiosks without a seat, seats still held by leavers and",
           "# deleted, expired or inactive accounts, two assignments to names that never existed, and",
           "# one over-assigned purchase.",
           "", "purchases:"]
    for pid, prod, version, ct, qty, bought, invoice, vendor, notes in PURCHASES:
        out += [f"  - id: {pid}", f"    product: {prod}", f'    version: "{version}"', f"    cal_type: {ct}",
                f"    quantity: {qty}", f"    purchased_on: {bought.isoformat()}", f"    invoice: {invoice}",
                f"    vendor: {yaml_str(vendor)}", "    expires_on: null"]
        if notes:
            out.append(f"    notes: {yaml_str(notes)}")
    out += ["", "assignments:"]
    for pid, prod, version, ct, qty, *_ in PURCHASES:
        rows = sorted((a for a in assignments if a[0] == pid), key=lambda a: (a[2], a[1].lower()))
        out.append(f"  # {pid}: {prod} {version} {ct} CALs, {len(rows)} assigned of {qty}")
        for _, name, on in rows:
            out += [f"  - purchase: {pid}", f"    principal: {yaml_str(name)}", f"    assigned_on: {on.isoformat()}"]
    return "\n".join(out) + "\n"


CONFIG = f"""\
# cal-agent demo configuration: Northwind Traders (fictional), generated by agent/demo/generate.py.
# Relative paths are resolved from this file's folder.  `cal-agent demo` overrides the database
# and reports locations with its --output folder.
database:
  url: sqlite:///state.db
directories:
  - name: northwind
    type: ldif
    path: northwind.ldif
    base_dn: {DOMAIN}
    as_of: {AS_OF:%Y-%m-%dT%H:%M:%SZ}     # judge inactivity and expiry as of the export time
    inactive_after_days: {INACTIVE_DAYS}
inventory: inventory.yaml
requirements:
  - name: staff-windows
    product: windows-server
    version: "2022"
    cal_type: user
    users: {{group: "Domain Users", exclude: [svc-accounts]}}
  # Contractors whose primary group is GG-Contractors are members of it only through
  # primaryGroupID, and (in this export) not of Domain Users: they need their own selector.
  - name: contractors-windows
    product: windows-server
    version: "2022"
    cal_type: user
    users: {{group: GG-Contractors}}
  - name: kiosks
    product: windows-server
    version: "2022"
    cal_type: device
    computers: {{ou: "{OU['Kiosks']}"}}
  - name: remote-desktop
    product: rds
    version: "2022"
    cal_type: user
    users: {{group: RDS-Users}}
  - name: mail
    product: exchange-standard
    version: "2019"
    cal_type: user
    users: {{group: Exchange-Users}}
reports: {{directory: reports}}
"""


def write_readme(d: Directory, counts: dict[str, int], exp: dict) -> str:
    f, rows = exp["findings"], exp["rows"]
    kinds = ["unlicensed_user", "unlicensed_device", "shortfall", "over_assigned", "stale_assignment",
             "orphan_assignment", "version_mismatch"]
    table = ["| product | version | type | required | owned | licensed | shortfall |", "|---|---|---|---:|---:|---:|---:|"]
    for (prod, version, ct), (req, owned, lic) in sorted(rows.items()):
        table.append(f"| {prod} | {version} | {ct} | {req} | {owned} | {lic} | {max(0, req - owned)} |")
    stale = ", ".join(f"{n} {state}" for state, n in sorted(exp["stale_by_state"].items()))
    over = ", ".join(f"{po} ({n} assigned of {QTY[po]})" for po, n in sorted(exp["over"].items()))
    directory = ", ".join(f"{n} {k}" for k, n in counts.items())
    return "\n".join([
        "# Northwind Traders: the cal-agent demo data (fictional)",
        "",
        "Generated by `python -m agent.demo.generate` (deterministic, seed "
        f"{SEED}); do not edit these files by hand. Run the demo with `cal-agent demo`.",
        "",
        "Northwind Traders is an invented wholesaler with Sales, Finance, Engineering and Operations",
        "departments, a few contractors, service accounts, lobby/warehouse kiosks and three Windows",
        "Server 2022 servers (file, Exchange, Remote Desktop). Every name, SID and GUID is made up.",
        "",
        "- `northwind.ldif`: ldapsearch-style export of `DC=northwind,DC=example` taken",
        f"  {AS_OF:%Y-%m-%dT%H:%M:%SZ}, with tombstones (Show Deleted). {directory}.",
        "- `inventory.yaml`: the CAL register (purchases and named assignments).",
        "- `config.yaml`: the LDIF directory, judged as of the export time (inactive after"
        f" {INACTIVE_DAYS} days), and five requirements.",
        "",
        "What the data exercises: nested groups (Exchange-Users > GG-All-Staff > GG-Engineering >",
        "GG-Eng-Platform > users; RDS-Users contains GG-Eng-Platform), membership through",
        "primaryGroupID only (Domain Users has no `member` values; five contractors have",
        "GG-Contractors as primary group), disabled leavers, expired contractors, enabled but inactive",
        "staff, new joiners who never logged on (active), deleted users (tombstones), non-ASCII names",
        "(base64 in LDIF), an escaped comma in a DN and a display name with HTML (`Mallory <b>Test</b>`).",
        "",
        "## Expected result",
        "",
        "Not compliant. Findings by kind:",
        "",
        *[f"- `{k}`: {f.get(k, 0)}" for k in kinds],
        "- `type_mismatch`, `unknown_group`: 0",
        "",
        f"Stale assignments by holder state: {stale}. Over-assigned: {over}.",
        "",
        *table,
        "",
        "The Windows Server 2022 user shortfall is smaller than the number of unlicensed users: seats",
        "are held by leavers and departed accounts (release them), 12 users hold only 2019 CALs (which",
        "do not cover 2022) and one seat was recorded under a mistyped name. The kiosks need no",
        "purchase: two working kiosks lack a seat because a broken and a stored kiosk still hold theirs.",
        "",
    ])


def main() -> None:
    rng = random.Random(SEED)
    d, roles = build_directory(rng)
    assignments = build_inventory(d, roles)
    exp = expected_findings(d, assignments)
    assert len(exp["over"]) == 1, exp["over"]  # the demo promises exactly one over-assigned purchase
    states = Counter((p.kind, d.state(p)) for p in d.objects)
    counts = {
        "users": sum(1 for p in d.objects if p.kind == "user" and not p.deleted),
        "groups": sum(1 for p in d.objects if p.kind == "group"),
        "computers": sum(1 for p in d.objects if p.kind == "computer"),
        "tombstones": sum(1 for p in d.objects if p.deleted),
    }
    DATA.mkdir(parents=True, exist_ok=True)
    files = {
        "northwind.ldif": write_ldif(d, rng),
        "inventory.yaml": write_inventory(assignments),
        "config.yaml": CONFIG,
        "README.md": write_readme(d, counts, exp),
    }
    for name, text in files.items():
        (DATA / name).write_text(text, encoding="utf-8", newline="\n")
    print(f"wrote {', '.join(files)} to {DATA}")
    print("directory: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    print("states:    " + ", ".join(f"{k} {s}: {n}" for (k, s), n in sorted(states.items())))
    print(f"inventory: {len(PURCHASES)} purchases, {len(assignments)} assignments")
    for (prod, version, ct), (req, owned, lic) in sorted(exp["rows"].items()):
        print(f"  {prod} {version} {ct}: required {req}, owned {owned}, licensed {lic}")
    print("expected findings: " + ", ".join(f"{k} {n}" for k, n in sorted(exp["findings"].items())))
    print("stale by state:    " + ", ".join(f"{s} {n}" for s, n in sorted(exp["stale_by_state"].items())))


if __name__ == "__main__":
    main()

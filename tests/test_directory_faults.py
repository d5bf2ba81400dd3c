"""Directory faults against the real Samba DC, injected by the test: the connection dies after some
pages, the DC is unreachable, the read comes back empty.  Each time the sync is recorded as failed
or held, no principal changes state, and the next good sync works (issue 7)."""

from __future__ import annotations

import json
import socket
import threading
import uuid
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from agent.store.db import Store
from agent.store.models import Principal, SyncRun
from tests.test_register import Site

pytestmark = pytest.mark.samba


class CuttingProxy:
    """A TCP relay to the DC's LDAPS port that drops both sides after `cut_after` bytes from the
    DC: the client sees the DC die in the middle of a paged search."""

    def __init__(self, target: tuple[str, int], cut_after: int) -> None:
        self.target, self.cut_after = target, cut_after
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.port = self.listener.getsockname()[1]
        self.cuts = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, server, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, self.cut_after), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while True:
                data = source.recv(16384)
                if not data:
                    break
                if limit is not None and sent + len(data) > limit:
                    self.cuts += 1
                    break
                sink.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture(scope="module")
def estate(samba_dc, tmp_path_factory):
    tag = uuid.uuid4().hex[:4]
    root = samba_dc.add_ou(f"faults-{tag}")
    staff = samba_dc.add_ou("Staff", root)
    samba_dc.add_ou("Empty", root)
    for i in range(300):
        samba_dc.add_computer(f"PC{i:03d}-{tag.upper()}", staff)
    upn, password = samba_dc.create_readonly_account(f"faultread-{tag}", "R3ad-Only-Pass!" + tag)
    folder = tmp_path_factory.mktemp("faults")
    (folder / "bind-password").write_text(password)
    (folder / "bind-password").chmod(0o600)
    (folder / "inventory.yaml").write_text("purchases: []\n")
    return {"dc": samba_dc, "root": root, "folder": folder, "upn": upn, "password": password}


def write_config(estate, *, url: str, base_dn: str | None = None) -> Path:
    dc = estate["dc"]
    path = estate["folder"] / "config.yaml"
    path.write_text(yaml.safe_dump({
        "database": {"url": "sqlite:///state.db"},
        "directories": [{"name": "corp", "type": "active_directory", "url": url, "base_dn": base_dn or estate["root"],
                         "bind_dn": estate["upn"], "password_file": "bind-password",
                         "tls": {"ca_file": str(dc.ca_file)}, "page_size": 25, "timeout": 10}],
        "inventory": "inventory.yaml",
        "requirements": [{"name": "pcs", "product": "windows-server", "version": "2022", "cal_type": "device",
                          "computers": {}}],
        "reports": {"directory": "reports"},
    }))
    return path


def states(folder: Path) -> dict[str, str]:
    store = Store(f"sqlite:///{folder}/state.db")
    with store.session() as session:
        return {p.name: p.state for p in session.scalars(select(Principal))}


def last_sync(folder: Path) -> SyncRun:
    store = Store(f"sqlite:///{folder}/state.db")
    with store.session() as session:
        return session.scalars(select(SyncRun).order_by(SyncRun.id.desc())).first()


def run(config: Path, *args: str, expect: int | None = 0):
    site = Site.__new__(Site)
    site.config = config
    return site.run(*args, expect=expect)


def test_the_dc_dying_mid_search_changes_nothing_and_the_next_sync_works(estate):
    direct = write_config(estate, url="ldaps://localhost:636")
    run(direct, "run", "--once")
    before = states(estate["folder"])
    assert sum(1 for s in before.values() if s == "active") >= 300
    report_before = json.loads(run(direct, "report").stdout)

    proxy = CuttingProxy(("127.0.0.1", 636), cut_after=40_000)  # a few pages of 25 computers
    try:
        cut = write_config(estate, url=f"ldaps://localhost:{proxy.port}")
        failed = run(cut, "sync", expect=3)
    finally:
        proxy.close()
    assert proxy.cuts >= 1
    assert "corp: sync FAILED, nothing was changed" in failed.stderr
    assert "lost during the read" in failed.stderr and "incomplete and was discarded" in failed.stderr
    assert "R3ad-Only-Pass" not in failed.stdout + failed.stderr
    sync = last_sync(estate["folder"])
    assert sync.status == "failed" and sync.error
    assert states(estate["folder"]) == before  # nobody left because the DC died

    run(cut, "reconcile")
    after = json.loads(run(cut, "report").stdout)
    assert after["findings"] == report_before["findings"] and after["drift"]["new"] == []
    assert after["directories"][0]["last_sync"]["status"] == "failed"

    direct = write_config(estate, url="ldaps://localhost:636")
    run(direct, "sync")  # the next cycle, with the DC back, succeeds
    assert last_sync(estate["folder"]).status == "ok"
    assert states(estate["folder"]) == before


def test_an_unreachable_dc_is_a_clear_error_and_changes_nothing(estate):
    direct = write_config(estate, url="ldaps://localhost:636")
    run(direct, "sync")
    before = states(estate["folder"])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    down = write_config(estate, url=f"ldaps://localhost:{closed_port}")
    failed = run(down, "sync", expect=3)
    assert "corp: sync FAILED, nothing was changed" in failed.stderr
    assert states(estate["folder"]) == before


def test_an_empty_read_is_held_by_the_departure_guard(estate):
    direct = write_config(estate, url="ldaps://localhost:636")
    run(direct, "sync")
    before = states(estate["folder"])
    empty = write_config(estate, url="ldaps://localhost:636", base_dn=f"OU=Empty,{estate['root']}")
    held = run(empty, "sync", expect=3)
    assert "more than the limit" in held.stderr and "--accept-departures" in held.stderr
    assert last_sync(estate["folder"]).status == "held"
    assert states(estate["folder"]) == before


def test_the_bind_password_appears_in_no_output_log_report_or_file(estate):
    config = write_config(estate, url="ldaps://localhost:636")
    outputs = []
    for args in (("--log-level", "debug", "--log-format", "json", "run", "--once"),
                 ("--log-level", "debug", "test-connection"), ("report", "--format", "html"),
                 ("report", "--format", "csv"), ("status",), ("audit-pack", "--output", str(estate["folder"] / "pack"))):
        proc = run(config, *args, expect=None)
        outputs += [proc.stdout, proc.stderr]
    assert any("ldapsearch" in o for o in outputs)  # the debug log did log the searches
    secret = estate["password"]
    assert all(secret not in o for o in outputs)
    for path in estate["folder"].rglob("*"):
        if path.is_file() and path.name != "bind-password":
            assert secret.encode() not in path.read_bytes(), path

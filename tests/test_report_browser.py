"""The HTML report opened in a real browser (headless Chromium): what an admin sees, checked on the
DOM Chromium built and on a rendered PNG, with hostile directory values in the data."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from tests.test_register import Site, ldif_group, ldif_user

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>\r\nBcc: victim@example.com'
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
         "--disable-component-update", "--disable-sync", "--disable-quic"]


def browse(chromium: str, page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", *extra, page.as_uri()],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def report_page(tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser")
    site = Site(folder, f"sqlite:///{folder}/state.db")
    site.run("run", "--once")
    staff = ["ann", "bob", "cat", "dan", "eve"]
    users = [ldif_user(n) for n in staff if n != "bob"]
    users += [ldif_user("bob", disabled=True, ou="Leavers", display=HOSTILE), ldif_user("lee", disabled=True,
                                                                                          ou="Leavers")]
    (folder / "acme.ldif").write_text("\n".join(users + [ldif_group("staff", staff)]) + "\n")
    site.run("run", "--once")
    return folder / "reports" / "latest.html"


def test_browser_shows_headline_products_drift_findings_and_trend(chromium, report_page, tmp_path):
    proc = browse(chromium, report_page, tmp_path / "profile", "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    from html.parser import HTMLParser

    class Dom(HTMLParser):
        def __init__(self):
            super().__init__()
            self.ids, self.text, self.scripts, self.imgs, self.handlers, self.svgs = set(), [], 0, 0, [], 0

        def handle_starttag(self, tag, attrs):
            self.ids.update(v for k, v in attrs if k == "id")
            self.scripts += tag == "script"
            self.imgs += tag == "img"
            self.svgs += tag == "svg"
            self.handlers += [k for k, _ in attrs if k.startswith("on")]

        def handle_data(self, data):
            self.text.append(data)

    dom = Dom()
    dom.feed(proc.stdout)
    text = " ".join(" ".join(dom.text).split())
    for section in ("headline", "products", "trend", "drift", "leavers", "findings", "licences"):
        assert section in dom.ids, section
    assert "Not compliant" in text
    assert "Windows Server CAL" in text
    assert "Compared with run 1" in text and "Stale assignments" in text
    assert dom.svgs >= 1  # the trend chart was drawn
    # The hostile display name is shown as text; the browser built no script, image or handler from it.
    assert '<script>alert("x")</script>' in text
    assert dom.scripts == 0 and dom.imgs == 0 and dom.handlers == []


def test_browser_renders_the_report_to_a_png(chromium, report_page, tmp_path):
    shot = tmp_path / "report.png"
    proc = browse(chromium, report_page, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,2400",
                  "--hide-scrollbars")
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1280, 2400)
    assert len(data) > 50_000  # a page with tables and a chart, not a blank screen

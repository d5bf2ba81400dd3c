"""Alerts: real `cal-agent` runs on a small LDIF estate, a real SMTP server (aiosmtpd, STARTTLS
with a test CA, AUTH), a real HTTP webhook receiver, and the outbox on SQLite and PostgreSQL.
The trigger rules and the message builders are pure and tested with plain report dicts."""

from __future__ import annotations

import base64
import contextlib
import io
import json
from datetime import date, datetime, timedelta, timezone

import pytest
import yaml
from sqlalchemy import select, update

from agent import alerts, engine
from agent.alerts import message, outbox
from agent.alerts.triggers import digest_due, evaluate
from agent.cli import run_cli
from agent.config import AlertsConfig, ConfigError, load_config, parse_config
from agent.store.models import OutboxMessage
from tests.test_register import Site, ldif_group, ldif_user

# The SMTPS test server offers AUTH on its implicit-TLS connection; aiosmtpd warns as if it were plain.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

STAFF = ["ann", "bob", "cat", "dan", "eve"]
SMTP_PASSWORD_ENV = "CAL_AGENT_TEST_SMTP_PASSWORD"
WEBHOOK_ENV = "CAL_AGENT_TEST_WEBHOOK_URL"


# ------------------------------------------------------------------------------------ helpers


class AlertSite(Site):
    """Site (tests/test_register.py) with `alerts:` in its config and an editable LDIF."""

    def __init__(self, folder, database_url, alerts_config: dict) -> None:
        super().__init__(folder, database_url)
        self.extra_users: list[str] = []
        self.staff = list(STAFF)
        data = yaml.safe_load(self.config.read_text())
        data["alerts"] = alerts_config
        self.config.write_text(yaml.safe_dump(data))

    def write_ldif(self) -> None:
        (self.folder / "acme.ldif").write_text("\n".join(
            [ldif_user(n) for n in STAFF] + [ldif_user("lee", disabled=True, ou="Leavers")] + self.extra_users
            + [ldif_group("staff", self.staff)]) + "\n")

    def add_leaver(self, name: str, purchase: str) -> None:
        """A disabled account that still holds a seat."""
        self.extra_users.append(ldif_user(name, disabled=True, ou="Leavers"))
        self.write_ldif()
        self.inventory["assignments"].append({"purchase": purchase, "principal": name,
                                              "assigned_on": date(2026, 3, 1)})
        self.write_inventory()

    def add_staff(self, name: str, display_name: str | None = None) -> None:
        entry = ldif_user(name)
        if display_name is not None:
            encoded = base64.b64encode(display_name.encode()).decode()
            entry = entry.replace("objectGUID::", f"displayName:: {encoded}\nobjectGUID::")
        self.extra_users.append(entry)
        self.staff.append(name)
        self.write_ldif()

    def outbox(self) -> list[OutboxMessage]:
        store = engine.open_store(load_config(self.config))
        with store.session() as session:
            rows = session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).all()
            for row in rows:
                session.expunge(row)
        store.close()
        return list(rows)


def smtp_alerts(smtp_server, **overrides) -> dict:
    config = {"on": "change", "triggers": {"stale_after_days": None}, "email": smtp_server.agent_config()}
    config.update(overrides)
    return config


def parts(msg):
    """(text, html, attachments) of a received alert email."""
    body = msg.get_body(preferencelist=("plain",))
    html = msg.get_body(preferencelist=("html",))
    return body.get_content(), html.get_content(), list(msg.iter_attachments())


def cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_cli(list(args))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def site(tmp_path, database_url, smtp_server):
    return AlertSite(tmp_path, database_url, smtp_alerts(smtp_server))


# ------------------------------------------------------------------ email end to end (1)-(4)


def test_a_run_on_a_non_compliant_estate_sends_one_alert_mail(site, smtp_server):
    proc = site.run("run", "--once")
    assert "alerts: 1 email queued, sent" in proc.stdout
    (received,) = smtp_server.received
    assert received.tls and received.authenticated_as == smtp_server.user
    assert received.mail_from == "cal-agent@acme.example"
    assert received.rcpt_tos == ["licensing@acme.example", "it-ops@acme.example"]
    msg = received.message
    assert msg["Subject"] == "cal-agent: NOT COMPLIANT — 3 new findings"
    assert msg["Auto-Submitted"] == "auto-generated" and msg["X-Auto-Response-Suppress"] == "All"
    assert msg["Message-ID"].startswith("<") and msg["Message-ID"].endswith("@acme.example>")
    assert msg["Date"] is not None and msg["To"] == "licensing@acme.example, it-ops@acme.example"
    assert msg.get_content_type() == "multipart/mixed"
    alternative = msg.get_payload()[0]
    assert alternative.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in alternative.get_payload()] == ["text/plain", "text/html"]
    text, html, (attachment,) = parts(msg)
    assert "3 new findings on the first run" in text and "3 new findings on the first run" in html
    for name in ("cat", "dan", "eve"):
        assert f"Unlicensed user: {name}" in text and f"<td>{name}</td>" in html
    assert "lee" not in text  # stale_assignment does not trigger (stale_after_days: null)
    assert attachment.get_filename() == "cal-agent-run-000001.html"
    assert attachment.get_content_type() == "text/html"
    report_file = site.folder / "reports" / "run-000001.html"
    assert attachment.get_content() == report_file.read_text(encoding="utf-8")
    (row,) = site.outbox()
    assert (row.status, row.attempts, row.channel, row.kind, row.run_id) == ("sent", 1, "email", "change", 1)
    assert row.message_id == msg["Message-ID"]


def test_a_second_run_with_no_change_sends_nothing(site, smtp_server):
    site.run("run", "--once")
    proc = site.run("run", "--once")
    assert "alerts: nothing to send" in proc.stdout
    assert len(smtp_server.received) == 1
    proc = site.run("reconcile")  # reconcile is a cycle too
    assert "alerts: nothing to send" in proc.stdout and len(smtp_server.received) == 1


def test_a_damaged_stored_report_of_the_last_alerted_run_does_not_stop_alerts(tmp_path, database_url,
                                                                              smtp_server):
    # The last alerted run is the baseline; if its stored report cannot be read (the database was
    # changed behind cal-agent's back), the new run's own drift decides, as for a pruned run.
    from agent.store.models import Run

    site = AlertSite(tmp_path, database_url, smtp_alerts(smtp_server, triggers={"stale_after_days": 0}))
    site.run("run", "--once")
    store = engine.open_store(load_config(site.config))
    with store.session() as session:
        session.execute(update(Run).where(Run.id == 1).values(report_gz=b"\x1f\x8b damaged"))
    store.close()
    site.add_leaver("max", "PO-2")
    proc = site.run("run", "--once", expect=None)
    assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr, proc.stderr
    assert "alerts: 1 email queued, sent" in proc.stdout
    second = smtp_server.messages()[1]
    assert "Stale assignment: max" in parts(second)[0]


def test_a_baseline_report_found_damaged_half_way_through_its_findings_does_not_stop_alerts(
        tmp_path, database_url, smtp_server):
    # A baseline's findings are read out of its stored text as alerting goes (a parsed 100,000-user
    # report is ~1 GB); one whose start reads but whose findings break off half way must count as
    # missing too, not end the cycle in a traceback.
    import gzip

    from agent.reports.json_report import stored_header
    from agent.store.models import Run

    site = AlertSite(tmp_path, database_url, smtp_alerts(smtp_server, triggers={"stale_after_days": 0}))
    site.run("run", "--once")
    store = engine.open_store(load_config(site.config))
    with store.session() as session:
        text = gzip.decompress(session.scalars(select(Run.report_gz).where(Run.id == 1)).one())
        at = text.index(b'"findings": [') + 200
        cut = gzip.compress(text[:at])
        assert stored_header(cut)["run"]["id"] == 1  # its start reads
        session.execute(update(Run).where(Run.id == 1).values(report_gz=cut))
    store.close()
    site.add_leaver("max", "PO-2")
    proc = site.run("run", "--once", expect=None)
    assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr, proc.stderr
    assert "alerts: 1 email queued, sent" in proc.stdout
    assert "Stale assignment: max" in parts(smtp_server.messages()[1])[0]


def test_a_new_leaver_holding_a_seat_sends_one_mail_naming_only_it(tmp_path, database_url, smtp_server):
    site = AlertSite(tmp_path, database_url, smtp_alerts(smtp_server, triggers={"stale_after_days": 0}))
    site.run("run", "--once")
    first = smtp_server.messages()[0]
    assert first["Subject"] == "cal-agent: NOT COMPLIANT — 4 new findings"  # 3 unlicensed + lee's seat
    site.add_leaver("max", "PO-2")
    proc = site.run("run", "--once")
    assert "alerts: 1 email queued, sent" in proc.stdout
    assert len(smtp_server.received) == 2
    second = smtp_server.messages()[1]
    assert second["Subject"] == "cal-agent: NOT COMPLIANT — 1 new finding: stale_assignment max"
    text, html, _ = parts(second)
    assert "1 new finding since run 1" in text and "Stale assignment: max" in text
    for other in ("ann", "cat", "dan", "eve", "lee"):
        assert f": {other}\n" not in text and f"<td>{other}</td>" not in html
    assert first["Message-ID"] != second["Message-ID"]


def test_with_the_smtp_server_down_the_alert_waits_in_the_outbox_and_arrives_exactly_once(site, smtp_server):
    smtp_server.stop()
    proc = site.run("run", "--once")  # the run itself succeeds
    assert "alerts: 1 email queued, 1 waiting in the outbox (cannot reach SMTP server" in proc.stdout
    (row,) = site.outbox()
    assert (row.status, row.attempts) == ("pending", 1) and "Connection refused" in row.last_error
    status = site.run("alert")
    assert "#1 email pending" in status.stdout and "Connection refused" in status.stdout
    flush = site.run("alert", "--flush", expect=6)
    assert "FAILED #1 email" in flush.stdout and "1 still pending" in flush.stdout
    assert "stay in the outbox" in flush.stderr
    assert site.outbox()[0].attempts == 2
    again = site.run("run", "--once")  # nothing new; the retry at the start of the cycle fails once
    assert "alerts: 1 email waiting in the outbox (cannot reach SMTP server" in again.stdout
    assert site.outbox()[0].attempts == 3

    smtp_server.start()
    proc = site.run("run", "--once")  # the next cycle retries it first; nothing new to add
    assert "alerts: 1 earlier email sent" in proc.stdout
    assert len(smtp_server.received) == 1
    msg = smtp_server.messages()[0]
    assert msg["Subject"] == "cal-agent: NOT COMPLIANT — 3 new findings" and msg["Message-ID"] == row.message_id
    (row,) = site.outbox()
    assert (row.status, row.attempts) == ("sent", 4) and row.sent_at is not None
    site.run("run", "--once")
    assert site.run("alert", "--flush").stdout.strip() == "outbox: 0 sent, 0 still pending"
    assert len(smtp_server.received) == 1  # exactly once


def test_alert_flush_delivers_oldest_first_and_each_once(site, smtp_server):
    smtp_server.stop()
    site.run("run", "--once")
    site.add_leaver("max", "PO-2")  # not alert-worthy (stale_after_days: null) ...
    site.add_staff("fay")  # ... but a new unlicensed user is
    site.run("run", "--once")
    assert [r.status for r in site.outbox()] == ["pending", "pending"]
    smtp_server.start()
    flush = site.run("alert", "--flush")
    assert "sent #1 email" in flush.stdout and "sent #2 email" in flush.stdout
    assert flush.stdout.index("#1") < flush.stdout.index("#2")
    subjects = [m["Subject"] for m in smtp_server.messages()]
    assert subjects == ["cal-agent: NOT COMPLIANT — 3 new findings",
                        "cal-agent: NOT COMPLIANT — 1 new finding: unlicensed_user fay"]
    site.run("run", "--once")
    assert len(smtp_server.received) == 2


def test_a_send_interrupted_before_it_was_marked_is_retried_with_the_same_message_id(tmp_path, smtp_server):
    """The crash window: accepted by the server, cal-agent dies before marking it sent.  The row
    stays `sending`; after the lease it is sent again (at least once), as the same message."""
    site = AlertSite(tmp_path, f"sqlite:///{tmp_path}/state.db", smtp_alerts(smtp_server))
    site.run("run", "--once")
    config = load_config(site.config)
    store = engine.open_store(config)
    with store.session() as session:  # what a crash right after the server's 250 leaves behind
        session.execute(update(OutboxMessage).values(status="sending", sent_at=None,
                                                     last_attempt_at=datetime.now(timezone.utc)))
    assert alerts.retry(config, store).attempts == []  # within the lease: maybe still being sent
    later = datetime.now(timezone.utc) + outbox.LEASE + timedelta(minutes=1)
    delivery = alerts.retry(config, store, now=later)
    assert [a.ok for a in delivery.attempts] == [True]
    first, second = smtp_server.messages()
    assert first["Message-ID"] == second["Message-ID"]
    (row,) = site.outbox()
    assert row.status == "sent" and row.attempts == 2 and "may have been delivered" in (row.last_error or "")


# ------------------------------------------------------------------------ hostile values (5)


def test_a_display_name_with_line_breaks_and_html_neither_injects_headers_nor_renders(tmp_path, smtp_server):
    site = AlertSite(tmp_path, f"sqlite:///{tmp_path}/state.db", smtp_alerts(smtp_server))
    site.run("run", "--once")
    hostile = "Mallory\r\nBcc: victim@evil.example\r\nX-Injected: yes\r\n\r\n<script>alert(1)</script><b>boss</b>"
    site.add_staff("mallory", display_name=hostile)
    site.run("run", "--once")
    received = smtp_server.received[1]
    assert received.rcpt_tos == ["licensing@acme.example", "it-ops@acme.example"]
    msg = received.message
    assert msg["Bcc"] is None and msg["X-Injected"] is None
    assert not any(line.lower().startswith((b"bcc:", b"x-injected:")) for line in received.raw.splitlines())
    subject = msg["Subject"]
    assert "\n" not in subject and "\r" not in subject
    assert subject.startswith("cal-agent: NOT COMPLIANT — 1 new finding: unlicensed_user mallory (Mallory Bcc:")
    text, html, (attachment,) = parts(msg)
    assert "<script>" not in html and "<b>boss</b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;b&gt;boss&lt;/b&gt;" in html
    assert not any(line.startswith(("Bcc:", "X-Injected:")) for line in text.splitlines())
    assert "mallory (Mallory Bcc: victim@evil.example X-Injected: yes" in text
    assert "<script>alert(1)</script>" not in attachment.get_content()  # the report escapes too


# ------------------------------------------------------------------------------ alert --test (6)


def test_alert_test_sends_now_and_fails_clearly_with_a_wrong_password(site, smtp_server, monkeypatch):
    proc = site.run("alert", "--test")
    assert proc.stdout.startswith("email: sent to licensing@acme.example, it-ops@acme.example via localhost:")
    (received,) = smtp_server.received
    assert received.message["Subject"] == "cal-agent: test message"
    assert received.message["Auto-Submitted"] == "auto-generated"
    assert site.outbox() == []  # not through the outbox

    wrong = "Wr0ng-pa55word-XYZ"
    monkeypatch.setenv(SMTP_PASSWORD_ENV, wrong)
    code, out, err = cli("--config", str(site.config), "--log-level", "debug", "alert", "--test")
    assert code == 6
    assert "SMTP authentication as cal-agent failed" in err and "535" in err
    assert wrong not in out and wrong not in err
    assert smtp_server.auth_failures >= 1 and len(smtp_server.received) == 1  # smtplib tries PLAIN, LOGIN


def test_alert_test_names_an_untrusted_certificate(tmp_path, smtp_server):
    other_ca = tmp_path / "other-ca"
    from tests.servers.smtp import write_test_pki

    ca_file, _cert, _key = write_test_pki(other_ca)
    site = AlertSite(tmp_path, f"sqlite:///{tmp_path}/state.db",
                     smtp_alerts(smtp_server, email=smtp_server.agent_config(ca_file=str(ca_file))))
    proc = site.run("alert", "--test", expect=6)
    assert "TLS certificate of SMTP server" in proc.stderr and "not trusted" in proc.stderr
    assert smtp_server.received == []


def test_smtps_on_port_465_style_implicit_tls(tmp_path, smtp_pki, monkeypatch):
    from tests.servers.smtp import SmtpServer

    server = SmtpServer(smtp_pki, security="ssl").start()
    try:
        monkeypatch.setenv(SMTP_PASSWORD_ENV, server.password)
        site = AlertSite(tmp_path, f"sqlite:///{tmp_path}/state.db", smtp_alerts(server))
        assert "alerts: 1 email queued, sent" in site.run("run", "--once").stdout
        (received,) = server.received
        assert received.tls and received.authenticated_as == server.user
    finally:
        server.stop()


# ----------------------------------------------------------------------------- webhooks (7)


@pytest.mark.parametrize("fmt", ["slack", "teams"])
def test_webhook_payloads_arrive(tmp_path, webhook_server, monkeypatch, fmt):
    monkeypatch.setenv(WEBHOOK_ENV, webhook_server.url())
    site = AlertSite(tmp_path, f"sqlite:///{tmp_path}/state.db",
                     {"triggers": {"stale_after_days": None}, "webhook": {"url_env": WEBHOOK_ENV, "format": fmt}})
    code, out, err = cli("--config", str(site.config), "--log-level", "info", "--log-format", "json", "run", "--once")
    assert code == 0, err
    assert "alerts: 1 webhook message queued, sent" in out
    assert "s3cr3t-token" not in out + err  # the URL embeds a token: never printed or logged
    assert any(json.loads(line).get("event") == "alert.delivery" for line in err.splitlines() if line.startswith("{"))
    (post,) = webhook_server.posts
    assert post.path == "/hooks/T000/B000/s3cr3t-token"
    assert post.headers["Content-Type"].startswith("application/json")
    payload = post.json
    if fmt == "slack":
        assert set(payload) == {"text"}
        text = payload["text"]
    else:
        assert payload["type"] == "message"
        (attachment,) = payload["attachments"]
        assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
        card = attachment["content"]
        assert card["type"] == "AdaptiveCard" and card["version"] == "1.4"
        runs = [i for block in card["body"] for i in block["inlines"]]
        assert all(r["type"] == "TextRun" for r in runs)
        text = "\n".join(r["text"] for r in runs)
    assert "cal-agent: NOT COMPLIANT — 3 new findings" in text
    for name in ("cat", "dan", "eve"):
        assert f"Unlicensed user: {name}" in text
    site.run("run", "--once")
    assert len(webhook_server.posts) == 1

    test = site.run("alert", "--test")
    assert test.stdout.startswith(f"webhook: sent ({fmt} format), HTTP 200")
    assert len(webhook_server.posts) == 2


def test_a_failing_webhook_keeps_the_message_and_the_next_cycle_delivers_it(tmp_path, webhook_server, monkeypatch,
                                                                           smtp_server):
    monkeypatch.setenv(WEBHOOK_ENV, webhook_server.url())
    site = AlertSite(tmp_path, f"sqlite:///{tmp_path}/state.db",
                     smtp_alerts(smtp_server, webhook={"url_env": WEBHOOK_ENV}))
    webhook_server.status = 503
    proc = site.run("run", "--once")
    assert "alerts: 1 email queued, sent; 1 webhook message queued, 1 waiting in the outbox (webhook answered " \
           "HTTP 503" in proc.stdout
    assert "s3cr3t-token" not in proc.stdout + proc.stderr
    assert [(r.channel, r.status) for r in site.outbox()] == [("email", "sent"), ("webhook", "pending")]
    webhook_server.status = 200
    proc = site.run("run", "--once")
    assert "alerts: 1 earlier webhook message sent" in proc.stdout
    assert len(webhook_server.posts) == 1 and len(smtp_server.received) == 1


def test_an_https_webhook_is_verified_against_the_trusted_cas(tmp_path, smtp_pki, monkeypatch):
    from tests.servers.smtp import WebhookServer

    server = WebhookServer(tls=(smtp_pki / "cert.pem", smtp_pki / "key.pem")).start()
    try:
        monkeypatch.setenv(WEBHOOK_ENV, server.url())
        site = AlertSite(tmp_path, f"sqlite:///{tmp_path}/state.db", {"webhook": {"url_env": WEBHOOK_ENV}})
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-such-bundle.pem"))  # trust nothing
        failed = site.run("alert", "--test", expect=6)
        assert "webhook TLS certificate not trusted" in failed.stderr and "s3cr3t" not in failed.stderr
        monkeypatch.setenv("SSL_CERT_FILE", str(smtp_pki / "ca.pem"))  # the system trust store, here
        assert "webhook: sent (slack format), HTTP 200" in site.run("alert", "--test").stdout
        assert len(server.posts) == 1 and server.url().startswith("https://localhost:")
    finally:
        server.stop()


def test_slack_text_cannot_mention_or_link_and_teams_text_is_not_markdown():
    report = rep(1, None, [finding("unlicensed_user", "x", display="<!channel> <https://evil.example|click> [a](b)")])
    alert = evaluate(report, None, AlertsConfig())
    slack = message.slack_payload(alert)["text"]
    assert "<!channel>" not in slack and "&lt;!channel&gt;" in slack and "<https://evil" not in slack
    teams = message.teams_payload(alert)
    blocks = teams["attachments"][0]["content"]["body"]
    assert all(b["type"] == "RichTextBlock" and b["inlines"][0]["type"] == "TextRun" for b in blocks)


# ---------------------------------------------------------------- configuration of alerts


BASE = {"directories": [{"name": "x", "type": "ldif", "path": "a.ldif"}], "inventory": "i.yaml"}


@pytest.mark.parametrize("alerts_config,problem", [
    ({"email": {"host": "mail.corp.example", "security": "none", "from": "a@corp.example", "to": ["b@corp.example"]}},
     "alerts.email: security: none sends mail (and any password) in clear text to mail.corp.example"),
    ({"email": {"host": "smtp:25", "from": "a@corp.example", "to": ["b@corp.example"]}},
     "alerts.email.host: not a host name or IP address"),
    ({"email": {"host": "smtp", "from": "a@corp.example\r\nBcc: x@y", "to": ["b@corp.example"]}},
     "alerts.email.from: an e-mail address may not contain control characters"),
    ({"email": {"host": "smtp", "from": "a@corp.example", "to": ["b@corp.example"], "username": "u"}},
     "alerts.email: with username, give exactly one of password_env"),
    ({"email": {"host": "smtp", "from": "a@corp.example", "to": ["b@corp.example"], "password_env": "X"}},
     "alerts.email: password_env is given but username is not"),
    ({"webhook": {"format": "slack"}}, "alerts.webhook: give exactly one of url_env, url_file, url_credential"),
    ({"webhook": {"url_env": "X", "format": "discord"}}, "alerts.webhook.format:"),
    ({"on": "sometimes"}, "alerts.on:"),
    ({"digest": "hourly"}, "alerts.digest:"),
    ({"triggers": {"min_free": {"windows-server": 0}}}, "alerts.triggers.min_free.windows-server:"),
])
def test_bad_alert_settings_name_their_key(alerts_config, problem):
    with pytest.raises(ConfigError) as info:
        parse_config({**BASE, "alerts": alerts_config})
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems


def test_yaml_on_key_and_local_relay_without_tls(tmp_path):
    text = yaml.safe_dump(BASE) + ("alerts:\n  on: always\n  email: {host: localhost, security: none, "
                                   "from: a@corp.example, to: [b@corp.example]}\n")
    config = parse_config(yaml.safe_load(text))  # YAML reads a bare `on` key as true
    assert config.alerts.on == "always" and config.alerts.email.effective_port == 25


def test_secrets_of_alert_channels_are_checked_like_directory_passwords(tmp_path, monkeypatch):
    (tmp_path / "a.ldif").write_text("")
    (tmp_path / "i.yaml").write_text("purchases: []\n")
    secret = tmp_path / "smtp-password"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    url = tmp_path / "webhook-url"
    url.write_text("http://hooks.example.com/services/T/B/token-in-url\n")
    url.chmod(0o600)
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    data = {**BASE, "alerts": {
        "email": {"host": "smtp.corp.example", "from": "a@corp.example", "to": ["b@corp.example"],
                  "username": "u", "password_file": "smtp-password", "ca_file": "missing-ca.pem"},
        "webhook": {"url_file": "webhook-url"}}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert "alerts.email.password_file: " in text and "readable by group or others" in text
    assert "alerts.email.ca_file: file" in text
    assert "alerts.webhook.url_file: the webhook URL must start with https://" in text
    assert "token-in-url" not in text


# ---------------------------------------------------------------------- digest (9) and always


def test_a_daily_digest_goes_at_most_once_a_day(tmp_path, smtp_server):
    site = AlertSite(tmp_path, f"sqlite:///{tmp_path}/state.db", smtp_alerts(smtp_server, on="never", digest="daily"))
    config = load_config(site.config)
    store = engine.open_store(config)
    engine.sync_directories(config, store)

    def cycle(now):
        run = engine.reconcile_and_record(config, store, now=now)
        return alerts.after_run(config, store, run.report, now=now)

    day1 = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc).astimezone()
    assert cycle(day1).queued == {"email": 1}
    assert cycle(day1 + timedelta(hours=2)).queued == {}
    assert cycle(day1 + timedelta(hours=5)).queued == {}
    assert cycle(day1 + timedelta(days=1)).queued == {"email": 1}
    subjects = [m["Subject"] for m in smtp_server.messages()]
    assert subjects == ["cal-agent daily digest: NOT COMPLIANT — 4 findings"] * 2
    text, html, _ = parts(smtp_server.messages()[0])
    assert "Daily digest: the estate is NOT COMPLIANT, 4 findings, shortfall 0." in text
    assert "Unlicensed user: 3" in text and "Stale assignment: 1" in text
    assert [r.kind for r in site.outbox()] == ["digest", "digest"]


def test_a_change_alert_and_a_due_digest_are_one_message(tmp_path, smtp_server):
    site = AlertSite(tmp_path, f"sqlite:///{tmp_path}/state.db", smtp_alerts(smtp_server, digest="weekly"))
    site.run("run", "--once")
    site.run("run", "--once")
    (msg,) = smtp_server.messages()
    assert msg["Subject"] == "cal-agent: NOT COMPLIANT — 3 new findings"
    assert "Weekly digest: the estate is NOT COMPLIANT" in parts(msg)[0]


def test_on_always_alerts_every_cycle_while_it_lasts(tmp_path, smtp_server):
    site = AlertSite(tmp_path, f"sqlite:///{tmp_path}/state.db", smtp_alerts(smtp_server, on="always"))
    site.run("run", "--once")
    site.add_staff("fay")
    site.run("run", "--once")
    first, second = smtp_server.messages()
    assert first["Subject"] == "cal-agent: NOT COMPLIANT — 3 findings need attention"
    assert second["Subject"] == "cal-agent: NOT COMPLIANT — 4 findings need attention"
    text = parts(second)[0]
    assert "4 findings need attention (1 new)" in text and "Unlicensed user: fay (new)" in text


def test_sent_messages_are_pruned_after_keep_sent_days_and_unsent_ones_never(tmp_path, smtp_server):
    site = AlertSite(tmp_path, f"sqlite:///{tmp_path}/state.db", smtp_alerts(smtp_server, keep_sent_days=1))
    site.run("run", "--once")
    config = load_config(site.config)
    store = engine.open_store(config)
    with store.session() as session:
        outbox.add(session, channel="webhook", kind="change", subject="old, unsent", body="{}",
                   now=datetime.now(timezone.utc) - timedelta(days=30))
    alerts.retry(config, store, now=datetime.now(timezone.utc) + timedelta(days=2))
    assert [(r.subject, r.status) for r in site.outbox()] == [("old, unsent", "pending")]
    assert "alerts.webhook is not configured" in site.run("alert", "--flush", expect=6).stdout


# ------------------------------------------------------------------------- pure triggers (8)


T0 = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)


def finding(kind: str, name: str | None = None, *, reason: str | None = None, since: datetime | None = None,
            purchase: str | None = None, display: str | None = None, severity: str = "error") -> dict:
    principal = None if name is None else {"kind": "user", "name": name, "directory": "corp", "dn": f"CN={name}",
                                           "display_name": display, "state": "active", "guid": None}
    key = "|".join([kind, f"corp/{name}" if name else "", "windows-server", "2022", "user", purchase or "",
                    reason or ""])
    return {"key": key, "kind": kind, "severity": severity, "product": "windows-server", "version": "2022",
            "cal_type": "user", "principal": principal, "purchase": purchase, "reason": reason,
            "since": since.isoformat().replace("+00:00", "Z") if since else None,
            "message": f"{kind} about {name or purchase}", "details": {}}


def rep(run_id: int, previous: dict | None, findings: list[dict], *, free: int = 10, shortfall: int = 0,
        at: datetime | None = None) -> dict:
    old = {f["key"] for f in previous["findings"]} if previous else set()
    now = {f["key"] for f in findings}
    return {
        "generated_at": (at or T0 + timedelta(days=run_id)).isoformat().replace("+00:00", "Z"),
        "run": {"id": run_id, "previous_id": previous["run"]["id"] if previous else None},
        "compliant": not any(f["severity"] == "error" for f in findings),
        "summary": {"findings": len(findings), "errors": sum(f["severity"] == "error" for f in findings),
                    "warnings": sum(f["severity"] == "warning" for f in findings), "shortfall": shortfall,
                    "by_kind": {}},
        "products": [{"product": "windows-server", "product_name": "Windows Server CAL", "version": "2022",
                      "cal_type": "user", "required": 10, "owned": 10, "assigned": 10 - free, "licensed": 10,
                      "free": free, "shortfall": shortfall}],
        "findings": findings,
        "drift": {"new": [f for f in findings if f["key"] not in old],
                  "resolved": [f for f in (previous or {}).get("findings", []) if f["key"] not in now]},
    }


def cfg(**kw) -> AlertsConfig:
    return AlertsConfig.model_validate(kw)


def keys(alert) -> list[str]:
    return [] if alert is None else [f["principal"]["name"] if f["principal"] else f["purchase"]
                                     for f in alert.findings]


def test_on_change_alerts_each_finding_once_when_it_appears():
    a, b, orphan = finding("unlicensed_user", "a"), finding("unlicensed_user", "b"), finding(
        "orphan_assignment", "zed", severity="warning")
    r1 = rep(1, None, [a, orphan])
    assert keys(evaluate(r1, None, cfg())) == ["a"]  # orphan_assignment is not a trigger
    r2 = rep(2, r1, [a, orphan])
    assert evaluate(r2, r1, cfg()) is None
    r3 = rep(3, r2, [a, b])
    assert keys(evaluate(r3, r2, cfg())) == ["b"]
    r4 = rep(4, r3, [b])
    assert evaluate(r4, r3, cfg()) is None  # resolved: nothing to alert
    r5 = rep(5, r4, [a, b])
    assert keys(evaluate(r5, r4, cfg())) == ["a"]  # came back: alerts again
    # No baseline report (pruned, or alerts just configured): the run's own drift decides.
    assert keys(evaluate(r5, None, cfg())) == ["a"]


def test_on_always_and_never():
    a = finding("shortfall", None, purchase=None)
    r1 = rep(1, None, [a], shortfall=3)
    r2 = rep(2, r1, [a], shortfall=3)
    always = evaluate(r2, r1, cfg(on="always"))
    assert always is not None and len(always.findings) == 1 and always.new_keys == frozenset()
    assert message.subject(always) == "cal-agent: NOT COMPLIANT — 1 finding needs attention: shortfall windows-server (shortfall 3)"
    assert evaluate(rep(3, r2, []), r2, cfg(on="always")) is None
    assert evaluate(r1, None, cfg(on="never")) is None
    digest = evaluate(r1, None, cfg(on="never", digest="daily"), digest=True)
    assert digest.findings == () and digest.kind == "digest"
    assert message.subject(digest) == "cal-agent daily digest: NOT COMPLIANT — 1 finding (shortfall 3)"


def test_each_trigger_can_be_switched_off():
    found = [finding("shortfall", None), finding("unlicensed_user", "a"), finding("unlicensed_device", "pc1"),
             finding("expiring", None, purchase="PO-9", reason="30", severity="warning"),
             finding("expired", None, purchase="PO-8", severity="warning")]
    r1 = rep(1, None, found)
    assert len(evaluate(r1, None, cfg()).findings) == 5
    off = cfg(triggers={"shortfall": False, "unlicensed": False, "expiring": False})
    assert evaluate(r1, None, off) is None
    assert keys(evaluate(r1, None, cfg(triggers={"unlicensed": False}))) == [None, "PO-9", "PO-8"]


def test_min_free_alerts_once_when_a_line_drops_below_its_minimum():
    c = cfg(triggers={"min_free": {"windows-server": 5}})
    r1 = rep(1, None, [], free=6)
    assert evaluate(r1, None, c) is None
    r2 = rep(2, r1, [], free=4)
    alert = evaluate(r2, r1, c)
    assert [(l.product, l.free, l.minimum) for l in alert.low_free] == [("windows-server", 4, 5)]
    assert message.subject(alert) == "cal-agent: compliant — 1 product line low on free seats"
    assert "Windows Server CAL 2022 (user): 4 free, minimum 5" in message.text_body(message.view(alert))
    r3 = rep(3, r2, [], free=3)
    assert evaluate(r3, r2, c) is None  # still below: said already
    r4 = rep(4, r3, [], free=5)
    assert evaluate(r4, r3, c) is None  # back to the minimum
    r5 = rep(5, r4, [], free=0)
    assert evaluate(r5, r4, c).low_free[0].free == 0  # crossed again
    assert evaluate(r5, r4, cfg(on="always", triggers={"min_free": {"windows-server": 5}})).low_free
    assert evaluate(r5, r4, cfg(triggers={"min_free": {"exchange-standard": 5}})) is None


def test_stale_assignments_alert_once_when_they_are_older_than_stale_after_days():
    left = T0 - timedelta(days=20)
    stale = finding("stale_assignment", "lee", reason="disabled", since=left, purchase="PO-1", severity="warning")
    r1 = rep(1, None, [stale], at=T0)  # 20 days: not yet
    assert evaluate(r1, None, cfg()) is None
    r2 = rep(2, r1, [stale], at=T0 + timedelta(days=9))  # 29 days
    assert evaluate(r2, r1, cfg()) is None
    r3 = rep(3, r2, [stale], at=T0 + timedelta(days=10))  # 30 days: crosses, though not in drift.new
    assert r3["drift"]["new"] == [] and keys(evaluate(r3, r2, cfg())) == ["lee"]
    r4 = rep(4, r3, [stale], at=T0 + timedelta(days=11))
    assert evaluate(r4, r3, cfg()) is None
    assert evaluate(r3, r2, cfg(triggers={"stale_after_days": None})) is None
    assert keys(evaluate(r1, None, cfg(triggers={"stale_after_days": 0}))) == ["lee"]


def test_each_expiry_threshold_alerts_once():
    def expiring(threshold):
        return finding("expiring", None, purchase="PO-7", reason=str(threshold), severity="warning")

    r1 = rep(1, None, [expiring(90)])
    assert keys(evaluate(r1, None, cfg())) == ["PO-7"]
    r2 = rep(2, r1, [expiring(90)])
    assert evaluate(r2, r1, cfg()) is None
    r3 = rep(3, r2, [expiring(30)])
    alert = evaluate(r3, r2, cfg())
    assert [f["reason"] for f in alert.findings] == ["30"]
    r4 = rep(4, r3, [expiring(7)])
    assert [f["reason"] for f in evaluate(r4, r3, cfg()).findings] == ["7"]
    r5 = rep(5, r4, [finding("expired", None, purchase="PO-7", severity="warning")])
    assert [f["kind"] for f in evaluate(r5, r4, cfg()).findings] == ["expired"]
    r6 = rep(6, r5, [finding("expired", None, purchase="PO-7", severity="warning")])
    assert evaluate(r6, r5, cfg()) is None


def test_digest_due_once_per_calendar_day_or_iso_week():
    monday = datetime(2026, 11, 23, 9, 0).astimezone()
    assert digest_due(None, None, monday) is False
    assert digest_due("daily", None, monday) is True
    assert digest_due("daily", monday, monday + timedelta(hours=14)) is False
    assert digest_due("daily", monday, monday.replace(hour=0) + timedelta(days=1)) is True
    assert digest_due("weekly", monday, monday + timedelta(days=6)) is False  # Sunday
    assert digest_due("weekly", monday + timedelta(days=6), monday + timedelta(days=7)) is True  # next Monday


def test_subject_counts_new_findings_and_the_shortfall():
    found = [finding("shortfall", None), finding("unlicensed_user", "a"), finding("unlicensed_user", "b")]
    alert = evaluate(rep(1, None, found, shortfall=11), None, cfg())
    assert message.subject(alert) == "cal-agent: NOT COMPLIANT — 3 new findings (shortfall 11)"


def test_the_email_lists_at_most_a_hundred_findings_and_points_to_the_attachment():
    found = [finding("unlicensed_user", f"u{i:03d}") for i in range(130)]
    alert = evaluate(rep(1, None, found), None, cfg())
    msg = message.build_email(alert, sender="cal-agent <a@corp.example>", recipients=["b@corp.example"], now=T0,
                              attachment=("cal-agent-run-000001.html", "<html></html>"))
    text = msg.get_body(preferencelist=("plain",)).get_content()
    assert "u099" in text and "u100" not in text and "... and 30 more: see the attached report." in text
    assert msg["Message-ID"].endswith("@corp.example>") and msg["From"] == "cal-agent <a@corp.example>"
    assert all(len(line) <= 998 for line in message.email_bytes(msg).split(b"\r\n"))
    payload = message.slack_payload(alert)["text"]
    assert "u009" in payload and "u010" not in payload and "120 more" in payload


def test_on_always_the_heading_counts_every_finding_and_the_new_ones_beyond_those_listed():
    # The email lists a hundred; the counts are of them all (the findings are read as listed).
    found = [finding("unlicensed_user", f"u{i:03d}") for i in range(130)]
    r1 = rep(1, None, found[:120])
    alert = evaluate(rep(2, r1, found), r1, cfg(on="always"))
    v = message.view(alert)
    assert v["heading"] == "130 findings need attention (10 new)"
    assert len(v["findings"]) == 100 and v["more"] == 30 and not any(f["new"] for f in v["findings"])


def test_alert_secrets_appear_in_no_output_log_report_or_file(tmp_path, smtp_server, webhook_server, monkeypatch):
    """A whole cycle at debug level with the SMTP password and the webhook URL (its token) set:
    neither is in any output or any file the agent wrote (issue 7)."""
    monkeypatch.setenv(WEBHOOK_ENV, webhook_server.url())
    site = AlertSite(tmp_path, f"sqlite:///{tmp_path}/state.db", smtp_alerts(smtp_server, webhook={"url_env": WEBHOOK_ENV}))
    outputs = []
    for args in (("--log-level", "debug", "--log-format", "json", "run", "--once"),
                 ("--log-level", "debug", "alert", "--test"), ("--log-level", "debug", "alert", "--flush"),
                 ("report", "--format", "html"), ("status",), ("audit-pack", "--output", str(tmp_path / "pack"))):
        code, out, err = cli("--config", str(site.config), *args)
        outputs += [out, err]
    assert smtp_server.messages and webhook_server.posts  # the channels were really used
    secrets = [smtp_server.password, "s3cr3t-token"]
    for secret in secrets:
        assert all(secret not in text for text in outputs), secret
    for path in tmp_path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(secret.encode() in data for secret in secrets), path

"""A real SMTP server (aiosmtpd) and a real webhook receiver (http.server) for the alert tests.

`SmtpServer` listens on a free 127.0.0.1 port with a certificate from a throwaway test CA (the
same helper the Samba DC uses), offers STARTTLS (or implicit TLS, `security="ssl"`) and AUTH
LOGIN/PLAIN for one known user, refuses mail before TLS and authentication, and keeps every
message it accepted, parsed with the email package.  `stop()` and `start()` take it down and bring
it back on the same port, to test the outbox.

`WebhookServer` is http.server in a thread, recording each POST (path, headers, JSON body) and
answering with `status` (settable, to simulate an outage).
"""

from __future__ import annotations

import email
import email.policy
import json
import ssl
import threading
import warnings
from dataclasses import dataclass
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .common import ServerStartError, free_port
from .samba import _write_test_pki

# SMTPS below requires AUTH without "requiring TLS" in aiosmtpd's sense (STARTTLS): it is TLS.
warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")


def write_test_pki(tls_dir: Path) -> tuple[Path, Path, Path]:
    """(ca_file, cert_file, key_file): a throwaway CA and a cert for localhost / 127.0.0.1."""
    return _write_test_pki(tls_dir)


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    authenticated_as: str | None
    tls: bool

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.raw, policy=email.policy.default)


class _Handler:
    def __init__(self, server: "SmtpServer") -> None:
        self.server = server

    async def handle_DATA(self, smtp, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        auth = session.auth_data
        login = auth.login.decode() if auth is not None and hasattr(auth, "login") else None
        with self.server.lock:
            self.server.received.append(Received(
                mail_from=envelope.mail_from, rcpt_tos=list(envelope.rcpt_tos),
                raw=envelope.original_content or envelope.content, authenticated_as=login,
                tls=session.ssl is not None or self.server.security == "ssl"))
        return "250 2.0.0 Message accepted for delivery"


class SmtpServer:
    """See the module docstring.  ``user``/``password`` are the only credentials accepted."""

    def __init__(self, tls_dir: Path, *, security: str = "starttls", user: str = "cal-agent",
                 password: str = "Sm7p-test-pass", port: int | None = None) -> None:
        self.ca_file, self.cert_file, self.key_file = (
            (tls_dir / "ca.pem", tls_dir / "cert.pem", tls_dir / "key.pem")
            if (tls_dir / "key.pem").exists() else write_test_pki(tls_dir))
        self.security = security
        self.user, self.password = user, password
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.received: list[Received] = []
        self.auth_failures = 0
        self.lock = threading.Lock()
        self._controller = None

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        from aiosmtpd.smtp import AuthResult, LoginPassword

        ok = (isinstance(auth_data, LoginPassword) and auth_data.login == self.user.encode()
              and auth_data.password == self.password.encode())
        if not ok:
            with self.lock:
                self.auth_failures += 1
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    @property
    def running(self) -> bool:
        return self._controller is not None

    def start(self) -> "SmtpServer":
        from aiosmtpd.controller import Controller

        # Implicit TLS (SMTPS): aiosmtpd only counts STARTTLS as TLS for `auth_require_tls`, but
        # the whole connection is TLS there, so AUTH may be offered from the start.
        kwargs: dict[str, Any] = dict(authenticator=self._authenticate, auth_required=True,
                                      auth_require_tls=self.security != "ssl", server_hostname="localhost")
        if self.security == "ssl":
            controller = Controller(_Handler(self), hostname=self.host, port=self.port,
                                    ssl_context=self._context(), **kwargs)
        else:
            controller = Controller(_Handler(self), hostname=self.host, port=self.port,
                                    tls_context=self._context(), require_starttls=True, **kwargs)
        try:
            controller.start()
        except Exception as exc:  # noqa: BLE001 - report whatever aiosmtpd raised
            raise ServerStartError(f"SMTP test server on port {self.port} did not start: {exc}") from exc
        self._controller = controller
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def messages(self) -> list[EmailMessage]:
        with self.lock:
            return [r.message for r in self.received]

    def agent_config(self, **overrides: Any) -> dict[str, Any]:
        """The `alerts.email` block that reaches this server."""
        config = {"host": "localhost", "port": self.port, "security": self.security, "username": self.user,
                  "password_env": "CAL_AGENT_TEST_SMTP_PASSWORD", "from": "cal-agent@acme.example",
                  "to": ["licensing@acme.example", "it-ops@acme.example"], "ca_file": str(self.ca_file),
                  "timeout": 5}
        config.update(overrides)
        return config


@dataclass
class Post:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class WebhookServer:
    """A tiny real HTTP(S) server recording POSTs; ``status`` is what it answers."""

    def __init__(self, *, tls: tuple[Path, Path] | None = None) -> None:
        self.posts: list[Post] = []
        self.status = 200
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's hook name
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with owner.lock:
                    status = owner.status
                    if 200 <= status < 300:
                        owner.posts.append(Post(self.path, dict(self.headers), body))
                self.send_response(status)
                text = b"ok" if status < 300 else b"no_service"
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def log_message(self, *args):  # keep test output quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.scheme = "http"
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*tls)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
            self.scheme = "https"
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str = "/hooks/T000/B000/s3cr3t-token") -> str:
        host = "localhost" if self.scheme == "https" else "127.0.0.1"
        return f"{self.scheme}://{host}:{self.port}{path}"

    def start(self) -> "WebhookServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

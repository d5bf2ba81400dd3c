"""Sending one email with smtplib: STARTTLS or SMTPS with certificate and host name verification
always on (``ssl.create_default_context``), AUTH when a username is set.  Errors become
``AlertError`` with the server's answer; the password is never part of a message or a log."""

from __future__ import annotations

import smtplib
import ssl

from pydantic import SecretStr

from agent.config import EmailAlertConfig
from agent.errors import AlertError


def _server_text(exc: smtplib.SMTPResponseException) -> str:
    text = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
    return f"{exc.smtp_code} {' '.join(text.split())}"


def describe(cfg: EmailAlertConfig) -> str:
    return f"{cfg.host}:{cfg.effective_port} ({cfg.security})"


def send(cfg: EmailAlertConfig, password: SecretStr | None, sender: str, recipients: list[str],
         message: bytes) -> dict[str, str]:
    """Hand ``message`` to the SMTP server.  Returns the recipients it refused (while accepting
    others), recipient -> answer; raises AlertError when the server did not accept the message."""
    where = describe(cfg)
    context = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
    step = "connect"
    try:
        if cfg.security == "ssl":
            client = smtplib.SMTP_SSL(cfg.host, cfg.effective_port, timeout=cfg.timeout, context=context)
        else:
            client = smtplib.SMTP(cfg.host, cfg.effective_port, timeout=cfg.timeout)
        with client:
            step = "EHLO"
            client.ehlo()
            if cfg.security == "starttls":
                if not client.has_extn("starttls"):
                    raise AlertError(f"SMTP server {where} does not offer STARTTLS",
                                     hint="use security: ssl if it expects TLS from the start (port 465)")
                step = "STARTTLS"
                client.starttls(context=context)
                client.ehlo()
            if cfg.username:
                step = "AUTH"
                if password is None:
                    raise AlertError(f"no password for SMTP user {cfg.username}")
                client.login(cfg.username, password.get_secret_value())
            step = "send"
            refused = client.sendmail(sender, recipients, message)
    except AlertError:
        raise
    except smtplib.SMTPAuthenticationError as exc:
        raise AlertError(f"SMTP authentication as {cfg.username} failed at {where}: {_server_text(exc)}",
                         hint="check alerts.email.username and the password source") from None
    except smtplib.SMTPNotSupportedError as exc:
        raise AlertError(f"SMTP server {where} refused {step}: {exc}") from None
    except smtplib.SMTPRecipientsRefused as exc:
        answers = "; ".join(f"{r}: {_server_text(smtplib.SMTPResponseException(c, m))}"
                            for r, (c, m) in exc.recipients.items())
        raise AlertError(f"SMTP server {where} refused every recipient: {answers}") from None
    except smtplib.SMTPResponseException as exc:
        raise AlertError(f"SMTP server {where} refused the message at {step}: {_server_text(exc)}") from None
    except ssl.SSLCertVerificationError as exc:
        raise AlertError(f"TLS certificate of SMTP server {where} not trusted: {exc.verify_message}",
                         hint="set alerts.email.ca_file to the CA that issued it, and use the name the "
                         "certificate gives as host") from None
    except ssl.SSLError as exc:
        raise AlertError(f"TLS with SMTP server {where} failed at {step}: {exc.reason or exc}") from None
    except smtplib.SMTPServerDisconnected as exc:
        raise AlertError(f"SMTP server {where} closed the connection at {step}: {exc or 'no reason given'}") from None
    except smtplib.SMTPException as exc:
        raise AlertError(f"SMTP error with {where} at {step}: {exc}") from None
    except TimeoutError:
        raise AlertError(f"SMTP server {where} did not answer within {cfg.timeout:g} s at {step}") from None
    except OSError as exc:
        raise AlertError(f"cannot reach SMTP server {where}: {exc.strerror or exc}") from None
    return {r: _server_text(smtplib.SMTPResponseException(c, m)) for r, (c, m) in (refused or {}).items()}

"""Posting one JSON payload to an incoming webhook (Slack, Teams) with urllib.  The URL embeds a
token: it is never logged nor put in an error message.  Redirects are refused (a POST must not be
turned into something else, or sent elsewhere)."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request

from pydantic import SecretStr

from agent import __version__
from agent.errors import AlertError


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102
        return None


def post(url: SecretStr, body: str, *, timeout: float) -> int:
    """POST ``body`` (JSON); returns the HTTP status, raises AlertError unless it is 2xx."""
    request = urllib.request.Request(url.get_secret_value(), data=body.encode("utf-8"), method="POST",
                                     headers={"Content-Type": "application/json; charset=utf-8",
                                              "User-Agent": f"cal-agent/{__version__}"})
    opener = urllib.request.build_opener(_NoRedirect(), urllib.request.HTTPSHandler(
        context=ssl.create_default_context()))
    try:
        with opener.open(request, timeout=timeout) as response:
            response.read(4096)
            return response.status
    except urllib.error.HTTPError as exc:
        try:
            answer = " ".join(exc.read(300).decode("utf-8", "replace").split())
        except OSError:
            answer = ""
        raise AlertError(f"webhook answered HTTP {exc.code} {exc.reason}" + (f": {answer}" if answer else "")
                         ) from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ssl.SSLCertVerificationError):
            raise AlertError(f"webhook TLS certificate not trusted: {reason.verify_message}") from None
        text = getattr(reason, "strerror", None) or str(reason)
        raise AlertError(f"cannot reach the webhook: {text}") from None
    except TimeoutError:
        raise AlertError(f"the webhook did not answer within {timeout:g} s") from None
    except OSError as exc:
        raise AlertError(f"cannot reach the webhook: {exc.strerror or exc}") from None

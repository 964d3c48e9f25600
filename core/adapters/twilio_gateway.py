"""The real twilio client, pointed at Twilio or (sandbox) at our emulator."""

from __future__ import annotations

import json
import os
import threading
import urllib.request
from dataclasses import dataclass

from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from core.config import get_settings


@dataclass(frozen=True)
class SendResult:
    sid: str
    status: str


class SendRejected(Exception):
    """Twilio answered and refused the message; ``permanent`` says a retry cannot help."""

    def __init__(self, status: int, code: str | None, message: str):
        super().__init__(f"twilio {status} {code}: {message}")
        self.status = status
        self.code = code
        self.permanent = 400 <= status < 500 and status != 429


_local = threading.local()


def client() -> Client:
    """A twilio Client for the configured account (and base URL in sandbox mode).

    One per thread and configuration, so its HTTP session keeps its connections alive
    (a new client per message meant a new TCP, and in production TLS, connection each).
    With no proxy configured, requests is told not to scan the environment for one on
    every request (it walks all of os.environ twice per call); the CA bundle variables it
    would read are applied here instead.
    """
    s = get_settings()
    key = (s.twilio_account_sid, s.twilio_auth_token, s.twilio_api_base)
    cached = getattr(_local, "clients", {}).get(key)
    if cached is not None:
        return cached
    http = TwilioHttpClient(timeout=10)
    if http.session is not None and not urllib.request.getproxies():
        http.session.trust_env = False
        http.session.verify = (os.environ.get("REQUESTS_CA_BUNDLE")
                               or os.environ.get("CURL_CA_BUNDLE") or True)
    c = Client(s.twilio_account_sid, s.twilio_auth_token, http_client=http)
    if s.twilio_api_base:
        c.api.base_url = s.twilio_api_base
    _local.clients = {key: c}  # a changed configuration (tests) replaces the old client
    return c


def send_message(*, to: str, from_: str, body: str, media_url: str | None,
                 status_callback: str, content_sid: str | None = None,
                 content_variables: dict[str, str] | None = None) -> SendResult:
    """Create one message through the Messages API; raise SendRejected on a refusal.

    Network errors (connection refused, timeouts) propagate as requests exceptions:
    the caller decides whether the outcome is known.
    """
    kwargs: dict[str, object] = {"to": to, "from_": from_, "status_callback": status_callback}
    if content_sid:
        # An approved template (outside WhatsApp's 24-hour window): no free-form body.
        kwargs["content_sid"] = content_sid
        kwargs["content_variables"] = json.dumps(content_variables or {}, ensure_ascii=False)
    else:
        kwargs["body"] = body
    if media_url:
        kwargs["media_url"] = [media_url]
    try:
        msg = client().messages.create(**kwargs)
    except TwilioRestException as exc:
        raise SendRejected(exc.status, str(exc.code) if exc.code else None, exc.msg) from None
    return SendResult(sid=msg.sid or "", status=msg.status or "queued")

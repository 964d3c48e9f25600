"""The real twilio client, pointed at Twilio or (sandbox) at our emulator."""

from __future__ import annotations

import json
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


def client() -> Client:
    """A twilio Client for the configured account (and base URL in sandbox mode)."""
    s = get_settings()
    c = Client(s.twilio_account_sid, s.twilio_auth_token,
               http_client=TwilioHttpClient(timeout=10))
    if s.twilio_api_base:
        c.api.base_url = s.twilio_api_base
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
        msg = client().messages.create(**kwargs)  # type: ignore[arg-type]
    except TwilioRestException as exc:
        raise SendRejected(exc.status, str(exc.code) if exc.code else None, exc.msg) from None
    return SendResult(sid=msg.sid or "", status=msg.status or "queued")

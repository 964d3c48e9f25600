"""The real twilio client, pointed at Twilio or (sandbox) at our emulator."""

from __future__ import annotations

import json
import os
import threading
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta

import requests
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from core.config import get_settings


@dataclass(frozen=True)
class SendResult:
    sid: str
    status: str


# Twilio refusals (4xx) about our sender's state, not the message: tried again later.
# 21611: the From number has more queued than it sends in 10 hours ("slow down").
RETRYABLE_CODES = frozenset({"21611"})


class SendRejected(Exception):
    """Twilio answered with an error; ``permanent`` says a retry cannot help, and
    ``outcome_unknown`` that Twilio may have created the message all the same.

    A 5xx but 503 (500 is Twilio's 20500, "a timeout in the API"; 502 and 504 come from
    the way to it) may follow a message Twilio made: sending is not idempotent, so it is
    no "not sent" (a resend may deliver twice) but an unknown outcome, as a read timeout.
    503 (unavailable) and 429 (too many requests) turn the request away unmade."""

    def __init__(self, status: int, code: str | None, message: str):
        super().__init__(f"twilio {status} {code}: {message}")
        self.status = status
        self.code = code
        self.outcome_unknown = status >= 500 and status != 503
        # 401/403: our credentials (a rotation, a misconfiguration), not the message: it is
        # tried again, as the look-ups treat them (an outage).
        self.permanent = (400 <= status < 500 and status not in (401, 403, 429)
                          and code not in RETRYABLE_CODES)


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
    """Create one message through the Messages API; raise SendRejected on an error
    answer (see its ``outcome_unknown``).

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


@dataclass(frozen=True)
class ListedMessage:
    """A message Twilio holds, as its Messages list shows it."""

    sid: str
    body: str
    status: str
    error_code: str | None
    date_created: datetime | None


class LookupFailed(Exception):
    """Twilio could not be asked (no connection, an error answer): nothing is known.

    ``outage`` says the failure is Twilio's or the line's, not this question's (no
    connection, a timeout, a 5xx, a 429): every look-up would fail alike, so the caller
    pauses them all. Any other failure (a 4xx, an unreadable answer) is this look-up's own.
    """

    def __init__(self, reason: str, *, outage: bool):
        super().__init__(reason)
        self.outage = outage


LIST_PAGE_SIZE = 100
# Twilio lists by its own order (its sid, or the sent date: a message held queued is sent
# after one created later), not exactly by creation: reading stops only after this much
# older than ``since``, a whole page running.
LIST_ORDER_MARGIN = timedelta(minutes=10)


def messages_since(*, to: str, from_: str, since: datetime, limit: int) -> list[ListedMessage]:
    """The messages Twilio holds from ``from_`` to ``to`` created at or after ``since``
    (newest first, at most ``limit``).

    Asked by To and From only: Twilio's DateSent filters go by the sent date, which a
    message still queued at Twilio (for hours, within its validity period) has not got,
    so they would hide the very message a lost answer leaves queued. Twilio lists newest
    first, but not strictly by creation, and the stream fetches a page only when it
    reaches it, so reading stops after a page's worth of messages in a row created over
    LIST_ORDER_MARGIN before ``since``: not the recipient's whole history, and not at the
    first older message, which may sort ahead of ours. Raise LookupFailed when Twilio
    cannot be asked or refuses to answer, on any page.
    """
    found: list[ListedMessage] = []
    long_before, older_in_a_row = since - LIST_ORDER_MARGIN, 0
    try:
        for m in client().messages.stream(to=to, from_=from_, page_size=LIST_PAGE_SIZE):
            if m.date_created is not None and m.date_created < since:
                older_in_a_row = older_in_a_row + 1 if m.date_created < long_before else 0
                if older_in_a_row >= LIST_PAGE_SIZE:
                    break
                continue
            older_in_a_row = 0
            found.append(ListedMessage(
                sid=m.sid or "", body=m.body or "", status=m.status or "",
                error_code=str(m.error_code) if m.error_code else None,
                date_created=m.date_created))
            if len(found) >= limit:
                break
    except (TwilioException, requests.exceptions.RequestException, ValueError) as exc:
        status = _http_status(exc)
        raise LookupFailed(f"{type(exc).__name__} {status or ''}".strip(),
                           outage=_is_outage(exc, status)) from None
    return found


def _http_status(exc: Exception) -> int | None:
    """The HTTP status Twilio answered with, if it answered: the client raises a
    TwilioRestException, or (a list page) a TwilioException carrying the response."""
    if isinstance(exc, TwilioRestException):
        return exc.status
    response = exc.args[1] if isinstance(exc, TwilioException) and len(exc.args) > 1 else None
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def _is_outage(exc: Exception, status: int | None) -> bool:
    """No connection, a timeout, Twilio failing (5xx), throttling us (429) or refusing our
    credentials (401, 403: a rotated token, a key without read rights): every row's
    look-up would fail alike, so all of them pause, not each row on its own."""
    if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
        return True
    return status is not None and (status >= 500 or status in (401, 403, 429))


def template_fit(body: str, values: list[str]) -> int | None:
    """How much of a message body is not these variable values (the approved template's
    own words), or None if the body cannot be that template sent with them.

    Twilio lists a template message with the approved text filled in (not its content
    sid), so every value is in the body; the sandbox emulator shows the variables as the
    JSON we sent (a quote or backslash escaped). Containing the values is not enough to
    tell whose message it is (a longer text of another row contains a shorter one), so
    the caller compares fits: the fewer words besides the values, the closer. A template
    without values tells nothing.
    """
    rest = len(body)
    for value in (value for value in values if value.strip()):
        shown = next((form for form in (value, json.dumps(value, ensure_ascii=False)[1:-1])
                      if form in body), None)
        if shown is None:
            return None
        rest -= len(shown)
    return rest if rest < len(body) else None

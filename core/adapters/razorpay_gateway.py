"""The real `razorpay` client, pointed at Razorpay or (sandbox) at our emulator.

Calls are thin wrappers that return Razorpay's JSON dicts. The SDK's own retry
(``enable_retry``) is left off: it would repeat POSTs (creates, refunds, transfers) whose
outcome we cannot know; RQ retries our jobs instead, and each job looks before it creates.
Payloads are never logged (they carry customer contacts).
"""

from __future__ import annotations

import json
import re
from typing import Any

import razorpay
import requests
from razorpay.errors import BadRequestError, GatewayError, ServerError, SignatureVerificationError
from razorpay.utility.utility import Utility

from core.config import get_settings

__all__ = ["BadRequestError", "GatewayError", "ServerError", "client", "verify_webhook"]

TIMEOUT_S = 15
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")


# How an idempotent request's 409 is told to callers (see is_in_progress).
IN_PROGRESS_409 = "HTTP 409: a request with this idempotency key is still in progress"
_IDEMPOTENCY_HEADERS = ("x-refund-idempotency", "x-transfer-idempotency")


class _TimeoutSession(requests.Session):
    """A requests session with a default timeout (the SDK sets none), and error answers
    reshaped where the SDK's class for them (it reads the body's code, never the HTTP
    status) would mislead every caller:
    - not Razorpay's JSON (a proxy's HTML page for a 502 or 504): a server error; the SDK
      would raise a JSON decoding error, which no caller takes for the gateway's trouble
      (a refund poll stopped at it);
    - a 429 (the rate limit: "Request failed. Please try after sometime.", with the public
      code BAD_REQUEST_ERROR): a server error, "try again", not a refusal;
    - a 409 to a request with an idempotency key (Razorpay: "a request received while a
      prior request is still being processed"; "you may retry"): a BadRequestError that
      is_in_progress recognises, whatever its words."""

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", TIMEOUT_S)
        response = super().request(*args, **kwargs)
        status = response.status_code
        if status < 400:
            return response
        error = _razorpay_error(response)
        if error is None:
            _reshape(response, "SERVER_ERROR", f"HTTP {status} without Razorpay's error body")
        elif status == 429:
            _reshape(response, "SERVER_ERROR",
                     f"HTTP 429, rate limited: {error.get('description') or ''}")
        elif status == 409 and _idempotent(kwargs.get("headers")):
            _reshape(response, "BAD_REQUEST_ERROR",
                     f"{IN_PROGRESS_409} ({error.get('description') or ''})")
        return response


def _reshape(response: requests.Response, code: str, description: str) -> None:
    response._content = json.dumps({"error": {"code": code, "description": description}}
                                   ).encode()


def _idempotent(headers: Any) -> bool:
    return isinstance(headers, dict) and any(
        str(name).lower() in _IDEMPOTENCY_HEADERS for name in headers)


def _razorpay_error(response: requests.Response) -> dict | None:
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else None


def client() -> razorpay.Client:
    """A razorpay Client for the configured keys (and the emulator's base URL in sandbox)."""
    s = get_settings()
    options: dict[str, Any] = {}
    if s.razorpay_api_base:
        options["base_url"] = s.razorpay_api_base  # host (+ mount prefix); paths carry /v1
    c = razorpay.Client(session=_TimeoutSession(),
                        auth=(s.razorpay_key_id, s.razorpay_key_secret), **options)
    c.enable_retry(False)
    c.set_app_details({"title": "ridechain", "version": "1"})
    return c


def verify_webhook(body: str, signature: str) -> bool:
    """True if ``signature`` is the HMAC-SHA256 hex of the raw ``body`` with the webhook
    secret, or with one it replaced (Razorpay signs the retries of events sent before a
    secret change with the old one).

    Anything but 64 hex digits is refused first: the SDK's compare_digest raises on a
    non-ASCII str (a 500 where a bad signature gets a 403)."""
    if not _HEX_SHA256.fullmatch(signature or ""):
        return False
    settings = get_settings()
    for secret in (settings.razorpay_webhook_secret, *settings.razorpay_webhook_previous):
        try:
            if Utility(None).verify_webhook_signature(body, signature, secret):
                return True
        except SignatureVerificationError:
            continue
    return False


def is_in_progress(exc: Exception) -> bool:
    """Razorpay's 409 for a request whose idempotency key a twin request is still using
    ("Another request with the same idempotency key is still in progress"): that one may
    make the refund or transfer, so this is no refusal (the SDK raises it as a 400's).
    Any 409 to a request with an idempotency key counts (the session marks it): its
    words are not part of the API, and a request under that key may have made it."""
    said = str(exc).lower()
    return isinstance(exc, BadRequestError) and (
        IN_PROGRESS_409.lower() in said or ("idempotency" in said and "progress" in said))


# Our ids are PostgreSQL integers (bookings, legs, payment_refunds): a bigger number names
# nothing of ours. The same bound as core.api.spec.MAX_ID, which an adapter cannot import
# (core.api's package imports the services, which import this module).
MAX_ID = 2**31 - 1


def note_int(entity: dict, name: str) -> int | None:
    """A positive id we put in an entity's notes (a string there, or a number), else None:
    notes come back as sent, but an event's may be malformed ("²" is a digit to
    str.isdigit, not to int()), and another system on the same account may note its own
    ids there, past our integer columns (looking one up would raise, not miss)."""
    notes = entity.get("notes")
    raw = notes.get(name) if isinstance(notes, dict) else None
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str) or not (raw.isascii() and raw.isdigit()) \
            or len(raw) > len(str(MAX_ID)):
        return None
    value = int(raw)
    return value if 1 <= value <= MAX_ID else None


def is_duplicate_reference(exc: Exception) -> bool:
    """Razorpay's refusal of a second payment link with the same reference_id (its
    documented wording: "payment link creation with reference ID already attempted"; the
    field's name, "reference_id", is taken too)."""
    said = str(exc).lower().replace("_", " ")
    return isinstance(exc, BadRequestError) and "reference id" in said and "already" in said

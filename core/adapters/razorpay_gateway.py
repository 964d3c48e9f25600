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


class _TimeoutSession(requests.Session):
    """A requests session with a default timeout (the SDK sets none). An error answer
    that is not Razorpay's JSON (a proxy's HTML page for a 502 or 504) is given the shape
    of a server error: the SDK would raise a JSON decoding error, which no caller takes
    for the gateway's trouble (a refund poll stopped at it)."""

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", TIMEOUT_S)
        response = super().request(*args, **kwargs)
        if response.status_code >= 400 and not _razorpay_error(response):
            response._content = json.dumps({"error": {
                "code": "SERVER_ERROR",
                "description": f"HTTP {response.status_code} without Razorpay's error body"}}
            ).encode()
        return response


def _razorpay_error(response: requests.Response) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and isinstance(body.get("error"), dict)


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
    """Razorpay's 409 for a request whose idempotency key a twin request is still using:
    that one may make the refund, so this is no refusal (the SDK raises it as a 400's)."""
    said = str(exc).lower()
    return isinstance(exc, BadRequestError) and "idempotency" in said and "progress" in said


def note_int(entity: dict, name: str) -> int | None:
    """A positive id we put in an entity's notes (a string there, or a number), else None:
    notes come back as sent, but an event's may be malformed ("²" is a digit to
    str.isdigit, not to int())."""
    notes = entity.get("notes")
    raw = notes.get(name) if isinstance(notes, dict) else None
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str) or not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        return None
    return int(raw) or None


def is_duplicate_reference(exc: Exception) -> bool:
    """Razorpay's refusal of a second payment link with the same reference_id (its
    documented wording: "payment link creation with reference ID already attempted"; the
    field's name, "reference_id", is taken too)."""
    said = str(exc).lower().replace("_", " ")
    return isinstance(exc, BadRequestError) and "reference id" in said and "already" in said

"""POST /webhooks/razorpay: verify, store raw, answer at once; RQ does the work.

The signature is an HMAC-SHA256 of the raw body with the webhook secret: we verify the
bytes as received (decoded, never re-serialised). A bad or missing signature gets 403 and
nothing is stored; a repeated X-Razorpay-Event-Id gets 200 and changes nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import logging

from flask import Blueprint, abort, jsonify, request

from core.adapters import razorpay_gateway
from core.config import get_settings
from core.services import payments
from core.web import old_secrets

PREVIOUS = "RAZORPAY_WEBHOOK_SECRET_PREVIOUS"

log = logging.getLogger(__name__)

bp = Blueprint("razorpay_webhook", __name__)


@bp.post("/webhooks/razorpay")
def razorpay_webhook():
    settings = get_settings()
    if (request.content_length or 0) > settings.max_webhook_bytes:
        abort(413, "request body too large")
    raw = request.get_data(cache=False)
    if len(raw) > settings.max_webhook_bytes:
        abort(413, "request body too large")
    try:
        body = raw.decode("utf-8")
    except UnicodeDecodeError:
        abort(400, "request body is not valid UTF-8")
    signature = request.headers.get("X-Razorpay-Signature", "")
    ended = old_secrets.expired_keys(settings.razorpay_webhook_previous_keys,
                                     settings.razorpay_webhook_previous_until)
    old_secrets.note_ended(PREVIOUS, settings.razorpay_webhook_previous_until, ended)
    if not razorpay_gateway.verify_webhook(body, signature):
        if _signed_with(ended, body, signature):
            old_secrets.count_expired(PREVIOUS)
            log.warning("bad razorpay signature", extra={"expired_secret": PREVIOUS})
        else:
            log.warning("bad razorpay signature")
        abort(403, "invalid X-Razorpay-Signature")
    result = payments.receive_webhook(body, signature,
                                      request.headers.get("X-Razorpay-Event-Id", "").strip())
    return jsonify({"status": result.status, "event": result.event}), 200


def _signed_with(keys: tuple[str, ...], body: str, signature: str) -> bool:
    """``signature`` is the HMAC-SHA256 hex of ``body`` with one of ``keys`` (old webhook
    secrets past their end: refused, but counted)."""
    given = signature.encode("utf-8", "replace")
    return any(hmac.compare_digest(
        hmac.new(key.encode(), body.encode(), hashlib.sha256).hexdigest().encode(), given)
        for key in keys)

"""POST /webhooks/razorpay: verify, store raw, answer at once; RQ does the work.

The signature is an HMAC-SHA256 of the raw body with the webhook secret: we verify the
bytes as received (decoded, never re-serialised). A bad or missing signature gets 403 and
nothing is stored; a repeated X-Razorpay-Event-Id gets 200 and changes nothing.
"""

from __future__ import annotations

import logging

from flask import Blueprint, abort, jsonify, request

from core.adapters import razorpay_gateway
from core.config import get_settings
from core.services import payments

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
    if not razorpay_gateway.verify_webhook(body, signature):
        log.warning("bad razorpay signature")
        abort(403, "invalid X-Razorpay-Signature")
    result = payments.receive_webhook(body, signature,
                                      request.headers.get("X-Razorpay-Event-Id", "").strip())
    return jsonify({"status": result.status, "event": result.event}), 200

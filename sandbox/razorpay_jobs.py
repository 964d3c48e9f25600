"""RQ jobs of the Razorpay emulator: what Razorpay does after the API call returns."""

from __future__ import annotations

import hashlib
import hmac

import requests

from core.config import get_settings


def sign(body: str, secret: str | None = None) -> str:
    """X-Razorpay-Signature: HMAC-SHA256 hex of the raw body with the webhook secret."""
    key = (secret or get_settings().razorpay_webhook_secret).encode()
    return hmac.new(key, body.encode("utf-8"), hashlib.sha256).hexdigest()


def deliver_webhook(event_id: str, body: str) -> int:
    """POST one ``[event_id, raw body]`` delivery to the service, signed.

    A non-2xx answer (or no answer) fails the job, and its RQ Retry delivers it again
    later (sandbox.razorpay.WEBHOOK_RETRY_S), as Razorpay does for 24 hours."""
    url = f"{get_settings().public_base_url}/webhooks/razorpay"
    resp = requests.post(url, data=body.encode("utf-8"), timeout=10, headers={
        "Content-Type": "application/json", "X-Razorpay-Event-Id": event_id,
        "X-Razorpay-Signature": sign(body)})
    resp.raise_for_status()
    return resp.status_code


def settle_refund(refund_id: str) -> str:
    """The bank settles a refund a moment after it was asked for."""
    from sandbox.razorpay import settle_refund as settle

    return settle(refund_id)["status"]

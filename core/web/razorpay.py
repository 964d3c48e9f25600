"""POST /webhooks/razorpay (issue 5)."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("razorpay_webhook", __name__)

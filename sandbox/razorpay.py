"""Sandbox emulator of the Razorpay endpoints we use (issue 5)."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("sandbox_razorpay", __name__, url_prefix="/sandbox")

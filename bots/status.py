"""POST /webhooks/twilio/status: delivery reports for the messages we sent.

The webhook only checks and queues the report (one Redis round trip); a job applies the
queued reports in batches (core.services.outbox.apply_statuses)."""

from __future__ import annotations

from flask import Blueprint, Response, abort, request

from core.services import outbox
from core.web.twilio_request import signed

bp = Blueprint("twilio_status", __name__)


@bp.post("/webhooks/twilio/status")
@signed
def status_callback():
    sid = request.form.get("MessageSid", "")
    status = request.form.get("MessageStatus") or request.form.get("SmsStatus") or ""
    if not sid or not status:
        abort(400, "MessageSid and MessageStatus are required")
    raw_id = request.args.get("outbox_id", "")
    # Our row id, when the URL carries one that could be ours (anything else: find by sid).
    outbox_id = int(raw_id) if raw_id.isascii() and raw_id.isdigit() and len(raw_id) < 19 \
        else None
    error_code = (request.form.get("ErrorCode") or "")[:16] or None
    outbox.accept_status(outbox.StatusReport(outbox_id, sid[:64], status[:20], error_code))
    return Response(status=204)

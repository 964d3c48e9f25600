"""POST /webhooks/twilio/status: delivery reports for the messages we sent."""

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
    outbox_id = int(raw_id) if raw_id.isdigit() else None
    outbox.record_status(outbox_id=outbox_id, message_sid=sid[:64], status=status[:20],
                         error_code=(request.form.get("ErrorCode") or None))
    return Response(status=204)

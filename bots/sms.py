"""POST /webhooks/sms: partners answering offers and confirming jobs by SMS."""

from __future__ import annotations

from flask import Blueprint

from bots.twiml import messages
from core.services import inbound, partner_sms
from core.web.twilio_request import parse_message, signed

bp = Blueprint("sms", __name__)


@bp.post("/webhooks/sms")
@signed
def sms_webhook():
    msg = parse_message("sms")
    # Redis away: parked, answered with no reply, handled once it is back (by SMS then).
    outcome = inbound.answer(msg, partner_sms.handle)
    return messages(outcome.replies)

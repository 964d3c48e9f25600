"""POST /webhooks/sms: partners answering offers and confirming jobs by SMS."""

from __future__ import annotations

from flask import Blueprint

from bots.twiml import messages
from core.services import conversation, inbound
from core.web.twilio_request import parse_message, signed

bp = Blueprint("sms", __name__)


@bp.post("/webhooks/sms")
@signed
def sms_webhook():
    msg = parse_message("sms")
    outcome = inbound.process(msg, conversation.partner_sms_turn)
    return messages(outcome.replies)

"""POST /webhooks/whatsapp: customers chatting with the booking bot."""

from __future__ import annotations

from flask import Blueprint

from bots.twiml import messages
from core.services import conversation, inbound
from core.web.twilio_request import parse_message, signed

bp = Blueprint("whatsapp", __name__)


@bp.post("/webhooks/whatsapp")
@signed
def whatsapp_webhook():
    msg = parse_message("whatsapp")
    outcome = inbound.process(msg, conversation.whatsapp_turn)
    return messages(outcome.replies)

"""POST /webhooks/whatsapp: customers chatting with the booking bot."""

from __future__ import annotations

from flask import Blueprint
from sqlalchemy.orm import Session

from bots.twiml import messages
from bots.whatsapp_text import render
from core.services import conversation, inbound
from core.services.inbound import InboundMessage
from core.web.twilio_request import parse_message, signed

bp = Blueprint("whatsapp", __name__)


def handle(session: Session, msg: InboundMessage) -> list[str]:
    """One dialog turn rendered as WhatsApp text (stored with the MessageSid for retries)."""
    turn = conversation.whatsapp_turn(session, msg)
    return render(turn.outs, turn.lang)


@bp.post("/webhooks/whatsapp")
@signed
def whatsapp_webhook():
    msg = parse_message("whatsapp")
    outcome = inbound.process(msg, handle)
    return messages(outcome.replies)

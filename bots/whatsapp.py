"""POST /webhooks/whatsapp: customers chatting with the booking bot.

The webhook accepts the message (signature, dedupe, rate limit, queue: one Redis round
trip) and answers an empty TwiML at once; ``handle`` runs later in the contact's drain job
(workers.inbound) and its replies go out through the outbox, in order.
"""

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
    """One dialog turn rendered as WhatsApp text (sent as outbox rows keyed by the sid)."""
    try:
        turn = conversation.whatsapp_turn(session, msg)
    except inbound.TurnFailed as failed:
        apology = failed.answer
        raise inbound.TurnFailed(render(apology.outs, apology.lang)) from failed
    return render(turn.outs, turn.lang)


@bp.post("/webhooks/whatsapp")
@signed
def whatsapp_webhook():
    inbound.accept(parse_message("whatsapp"))
    return messages([])

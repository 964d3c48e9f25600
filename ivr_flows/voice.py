"""POST /webhooks/voice: feature-phone callers book and track parcels with the keypad.

``/webhooks/voice`` answers a new call; every prompt's ``<Gather>`` posts the keys to
``/webhooks/voice/gather?turn=N`` (the turn number makes a retried request recognisable);
``/webhooks/voice/status`` takes Twilio's call status callbacks (set it as the number's
"call status changes" URL) and closes the call's session. The flow itself is
core.dialog.voice driven by core.services.ivr; this module only parses and renders.
"""

from __future__ import annotations

import re

from flask import Blueprint, Response, abort, request
from sqlalchemy.orm import Session
from twilio.twiml.voice_response import VoiceResponse

from core.domain.errors import ValidationError
from core.domain.phone import normalize_phone
from core.services import ivr
from core.services.inbound import TurnFailed
from core.services.ivr import CallRequest
from core.web.twilio_request import signed
from ivr_flows import twiml

bp = Blueprint("voice", __name__)

_SID = re.compile(r"^CA[0-9A-Za-z]{1,62}$")
MAX_TURN = 1000


def _xml(body: str) -> Response:
    return Response(body, mimetype="application/xml")


def _caller() -> tuple[str, str | None]:
    """(CallSid, caller's E.164 number or None when hidden / not a phone number)."""
    form = request.form
    sid = form.get("CallSid", "")
    if not _SID.match(sid):
        abort(400, "CallSid is required")
    from_addr = form.get("From", "")
    if not from_addr:
        abort(400, "From is required")
    try:
        return sid, normalize_phone(from_addr)
    except ValidationError:
        return sid, None


def _turn_number() -> int:
    raw = request.args.get("turn", "")
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_TURN:
        abort(400, "turn must be a number from 1")
    return int(raw)


def _handle(session: Session, call: CallRequest) -> str:
    try:
        turn = ivr.voice_turn(session, call)
    except TurnFailed as failed:
        raise TurnFailed(twiml.render(failed.answer)) from failed
    return twiml.render(turn)


def _answer(turn: int) -> Response:
    sid, phone = _caller()
    if phone is None:
        return _xml(twiml.hangup_with("ivr.hidden_number"))
    digits = request.form.get("Digits", "")[:32]
    call = CallRequest(sid=sid, turn=turn, phone=phone, to_addr=request.form.get("To", ""),
                       digits=digits)
    body, _duplicate = ivr.process(call, _handle)
    return _xml(body)


@bp.post("/webhooks/voice")
@signed
def voice_webhook():
    """A call arrives: greet, then the language list, a draft to continue, or the menu."""
    return _answer(0)


@bp.post("/webhooks/voice/gather")
@signed
def voice_gather():
    """The caller's keys (or silence) for the prompt of the previous turn."""
    return _answer(_turn_number())


@bp.post("/webhooks/voice/status")
@signed
def voice_status():
    """Call status callback: a completed / failed call closes its session."""
    sid, phone = _caller()
    status = request.form.get("CallStatus", "")
    if phone is not None:
        ivr.call_status(phone, sid, status)
    return _xml(str(VoiceResponse()))

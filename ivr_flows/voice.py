"""POST /webhooks/voice: feature-phone callers book and track parcels with the keypad.

``/webhooks/voice`` answers a new call; every prompt's ``<Gather>`` posts the keys to
``/webhooks/voice/gather?turn=N`` (the turn number makes a retried request recognisable);
``/webhooks/voice/dial`` is told how a call put through to ops ended;
``/webhooks/voice/status`` takes Twilio's call status callbacks (set it as the number's
"call status changes" URL) and closes the call's session; ``/webhooks/voice/fallback`` is
the number's Fallback URL. The flow itself is core.dialog.voice driven by
core.services.ivr; this module only parses and renders.

Every answer is TwiML, even when something fails (the database, a bug): Twilio cannot
play a JSON error and would speak its own, in English. The apology is in the language of
the call's last prompt, which each action URL we hand Twilio carries (``lang=``), so
saying it needs no database; only the call's first request, whose URL has none, reads the
language the caller chose, if the database answers at once (else Hindi).
"""

from __future__ import annotations

import logging
import re
from functools import wraps
from typing import Any
from urllib.parse import parse_qs, urlsplit

from flask import Blueprint, Response, abort, request
from sqlalchemy.orm import Session
from twilio.twiml.voice_response import VoiceResponse
from werkzeug.exceptions import HTTPException

from core import i18n
from core.domain.errors import ValidationError
from core.domain.phone import is_hidden_number, is_indian_mobile, normalize_phone
from core.services import ivr
from core.services.inbound import TurnFailed
from core.services.ivr import CallRequest
from core.web.twilio_request import signed
from ivr_flows import twiml

log = logging.getLogger(__name__)

bp = Blueprint("voice", __name__)

_SID = re.compile(r"^CA[0-9A-Za-z]{1,62}$")
MAX_TURN = 1000


def _xml(body: str) -> Response:
    return Response(body, mimetype="application/xml")


def _call_language() -> str:
    """The language of the call's last prompt, from the URL Twilio called (at the Fallback
    URL: the one that failed, ErrorUrl). The call's first request has none (it is the
    number's own URL, /webhooks/voice): the language the caller chose with us, if the
    database says it at once (_chosen_language). Else Hindi."""
    lang = request.args.get("lang")
    failed = urlsplit(request.form.get("ErrorUrl", ""))
    if lang is None:
        lang = (parse_qs(failed.query).get("lang") or [""])[0]
    if lang in i18n.LANGUAGES:
        return lang
    first = request.endpoint == "voice.voice_webhook" or (
        request.endpoint == "voice.voice_fallback"
        and failed.path.rstrip("/").endswith("/webhooks/voice"))
    return (_chosen_language() if first else None) or i18n.DEFAULT_LANGUAGE


# The apology's read of the caller's language: a database that answers slower than this is
# not waited for (the apology must come within Twilio's 15 seconds, after what failed).
CHOSEN_LANGUAGE_TIMEOUT_MS = 1000


def _chosen_language() -> str | None:
    """The language the caller (the request's From) chose with us; None when it cannot be
    read (hidden number, a database that is away or slow, anything): never raises, as it
    is part of the apology for a failure."""
    try:
        from_addr = request.form.get("From", "")
        if not from_addr or is_hidden_number(from_addr):
            return None
        return ivr.chosen_language(normalize_phone(from_addr),
                                   timeout_ms=CHOSEN_LANGUAGE_TIMEOUT_MS)
    except Exception as exc:  # its message may hold the number: only its kind is logged
        log.warning("voice apology: the caller's language could not be read; Hindi",
                    extra={"error": type(exc).__name__})
        return None


def _apology() -> Response:
    return _xml(twiml.hangup_with("common.error_try_later", _call_language()))


def _twiml_even_on_failure(view):
    """Answer any failure of ``view`` with the apology and a hang-up; a refused request
    (bad signature, malformed form: 4xx) stays refused."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return view(*args, **kwargs)
        except HTTPException:
            raise
        except Exception:
            log.exception("voice webhook failed; answered with an apology",
                          extra={"path": request.path})
            return _apology()

    return wrapper


def _caller() -> tuple[str, str | None]:
    """(CallSid, caller's E.164 number; None when hidden or not a number we can serve)."""
    form = request.form
    sid = form.get("CallSid", "")
    if not _SID.match(sid):
        abort(400, "CallSid is required")
    from_addr = form.get("From", "")
    if not from_addr:
        abort(400, "From is required")
    if is_hidden_number(from_addr):
        return sid, None
    try:
        phone = normalize_phone(from_addr)
    except ValidationError:
        return sid, None
    # Booking details and the link go by SMS, which we send only to Indian mobiles (a
    # foreign number is also the classic way to run up SMS costs): such a caller hears
    # ivr.not_mobile.
    return sid, phone if is_indian_mobile(phone) else None


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
    if phone is None:  # hidden, or shown but not a mobile (SMS could not reach it)
        from_addr = request.form["From"]
        # In the language a known caller chose (a customer chatting from abroad), else
        # Hindi and English: the caller may well not be a Hindi speaker.
        if is_hidden_number(from_addr):  # nobody known: Hindi and English
            return _xml(twiml.hangup_with("ivr.hidden_number", i18n.DEFAULT_LANGUAGE, "en"))
        try:
            langs = ivr.languages_of_caller(normalize_phone(from_addr))
        except ValidationError:
            langs = (i18n.DEFAULT_LANGUAGE, "en")
        return _xml(twiml.hangup_with("ivr.not_mobile", *langs))
    # The tail: keys after the last "*" are the answer (ivr._answer), and a caller who
    # started again a few times keyed more than 32.
    digits = request.form.get("Digits", "")[-32:]
    call = CallRequest(sid=sid, turn=turn, phone=phone, to_addr=request.form.get("To", ""),
                       digits=digits)
    body, _duplicate = ivr.process(call, _handle)
    return _xml(body)


@bp.post("/webhooks/voice")
@_twiml_even_on_failure
@signed
def voice_webhook():
    """A call arrives: greet, then the language list, a draft to continue, or the menu."""
    return _answer(0)


@bp.post("/webhooks/voice/gather")
@_twiml_even_on_failure
@signed
def voice_gather():
    """The caller's keys (or silence) for the prompt of the previous turn."""
    return _answer(_turn_number())


@bp.post("/webhooks/voice/status")
@_twiml_even_on_failure
@signed
def voice_status():
    """Call status callback: a completed / failed call closes its session."""
    sid, phone = _caller()
    status = request.form.get("CallStatus", "")
    if phone is not None:
        ivr.call_status(phone, sid, status)
    return _xml(str(VoiceResponse()))


@bp.post("/webhooks/voice/dial")
@_twiml_even_on_failure
@signed
def voice_dial():
    """The <Dial> to ops ended: goodbye if someone answered, else when we will call back."""
    sid, phone = _caller()
    status = request.form.get("DialCallStatus", "")
    return _xml(twiml.render(ivr.dial_ended(phone, status, _call_language(), sid)))


def _screened_call() -> tuple[int, str]:
    """The caller's conversation and call that the operators' phone is asked to take (the
    URL's conv and call, which Twilio's signature covers)."""
    conv, sid = request.args.get("conv", ""), request.args.get("call", "")
    if not conv.isascii() or not conv.isdigit() or not 1 <= int(conv) <= 2**63 - 1 \
            or not _SID.match(sid):
        abort(400, "conv and call are required")
    return int(conv), sid


@bp.post(twiml.SCREEN_PATH)
@_twiml_even_on_failure
@signed
def voice_screen():
    """The operators' phone answered a caller's <Dial>: ask it to take the call."""
    conv, sid = _screened_call()
    return _xml(twiml.screen(conv, sid, ivr.ops_language()))


@bp.post(twiml.TAKE_PATH)
@_twiml_even_on_failure
@signed
def voice_screen_take():
    """The key pressed at the operators' phone: the take key puts the caller through (an
    empty answer ends the screening and Twilio bridges the calls); anything else, or
    nothing, hangs up that phone and the caller hears when we will call back."""
    conv, sid = _screened_call()
    if request.form.get("Digits", "")[:1] == twiml.TAKE_KEY and ivr.operator_took(conv, sid):
        return _xml(str(VoiceResponse()))
    response = VoiceResponse()
    response.hangup()
    return _xml(str(response))


# Twilio's error codes for an answer it could not fetch (11xxx: no answer in time, a
# connection or HTTP failure). Others (12xxx: a document it could not parse or play) are
# of an answer it got: sent again, it would fail again.
NOT_FETCHED = "11"


def _failed_turn() -> tuple[str, int] | None:
    """(CallSid, turn) of the answer Twilio could not fetch, at the Fallback URL: the
    call's first webhook (turn 0) or a Gather's action (its ``turn``), named by ErrorUrl;
    None for any other URL (the dial's, the status callback's), a malformed one, or an
    answer fetched that Twilio could not play."""
    sid = request.form.get("CallSid", "")
    failed = urlsplit(request.form.get("ErrorUrl", ""))
    if not _SID.match(sid) or not request.form.get("ErrorCode", "").startswith(NOT_FETCHED):
        return None
    path = failed.path.rstrip("/")
    if path.endswith("/webhooks/voice"):
        return sid, 0
    if not path.endswith("/webhooks/voice/gather"):
        return None
    raw = (parse_qs(failed.query).get("turn") or [""])[0]
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_TURN:
        return None
    return sid, int(raw)


@bp.post("/webhooks/voice/fallback")
@_twiml_even_on_failure
@signed
def voice_fallback():
    """The number's Fallback URL: Twilio could not fetch or play our answer. A turn that
    was done all the same (its answer stored: a slow turn whose answer came after
    Twilio's 15 seconds) is answered with what it answered, so the caller hears what was
    done ("booked, number ...") and goes on from there, as a retry of it would; one still
    running is waited for a few seconds (ivr.FALLBACK_WAITS_FOR_TURN), as it may yet
    book. Else apologise and hang up; never the flow again (it is what just failed)."""
    log.warning("voice fallback called",
                extra={"error_code": request.form.get("ErrorCode", "")[:8]})
    failed = _failed_turn()
    phone = _caller()[1] if failed is not None else None
    answer = ivr.answer_on_record(*failed, phone) if failed is not None and phone else None
    return _xml(answer) if answer else _apology()

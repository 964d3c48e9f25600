"""POST /webhooks/voice: feature-phone callers (keypad IVR).

The full booking call flow is issue 4; this answers every call in the caller's
languages with the language menu and ends politely after it, never looping.
"""

from __future__ import annotations

from flask import Blueprint, Response, abort, request
from twilio.twiml.voice_response import VoiceResponse

from core import i18n
from core.web.twilio_request import signed

bp = Blueprint("voice", __name__)


@bp.post("/webhooks/voice")
@signed
def voice_webhook():
    if not request.form.get("CallSid"):
        abort(400, "CallSid is required")
    twiml = VoiceResponse()
    gather = twiml.gather(num_digits=1, action="/webhooks/voice/language", method="POST",
                          timeout=5)
    for lang in i18n.LANGUAGES:
        gather.say(i18n.t("voice.language_option", lang), language=i18n.SAY_LOCALES[lang])
    twiml.say(i18n.t("voice.goodbye", i18n.DEFAULT_LANGUAGE),
              language=i18n.SAY_LOCALES[i18n.DEFAULT_LANGUAGE])
    twiml.hangup()
    return Response(str(twiml), mimetype="application/xml")


@bp.post("/webhooks/voice/language")
@signed
def voice_language():
    digits = request.form.get("Digits", "")
    index = int(digits) - 1 if digits.isdigit() else -1
    lang = i18n.LANGUAGES[index] if 0 <= index < len(i18n.LANGUAGES) else i18n.DEFAULT_LANGUAGE
    twiml = VoiceResponse()
    twiml.say(i18n.t("common.coming_soon", lang), language=i18n.SAY_LOCALES[lang])
    twiml.say(i18n.t("voice.goodbye", lang), language=i18n.SAY_LOCALES[lang])
    twiml.hangup()
    return Response(str(twiml), mimetype="application/xml")

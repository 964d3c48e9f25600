"""TwiML rendering of the dialog engine's output for a phone call.

Each ``Say`` becomes one spoken segment; a ``Choices`` list becomes "label — press 1"
pairs (and "press 9 for more"), each label and each "press N" its own segment, so the
fixed ones are pre-rendered audio. A segment whose audio is cached is played with
``<Play>``; otherwise it is spoken with ``<Say>`` in its language's locale and voice
(``say_voices``), and its rendering is queued (ivr_flows.audio): a request never waits on
gTTS.
"""

from __future__ import annotations

import functools
import os
from typing import Any
from urllib.parse import urlencode

from twilio.twiml.voice_response import VoiceResponse

from core import i18n
from core.config import get_settings
from core.dialog.engine import Choices, Out, Say
from core.services.ivr import VoiceTurn
from ivr_flows import audio

GATHER_PATH = "/webhooks/voice/gather"
DIAL_PATH = "/webhooks/voice/dial"
SCREEN_PATH = "/webhooks/voice/screen"  # the operators' phone answered: take the caller?
TAKE_PATH = "/webhooks/voice/screen/take"  # the key pressed there
TAKE_KEY = "1"
KEY_TIMEOUT_S = 6  # one key: seconds to wait after the prompt
ENTRY_TIMEOUT_S = 8  # several digits: seconds to wait for the next one
DIAL_TIMEOUT_S = 30


def webhook_url(path: str, **query: object) -> str:
    """A URL of ours for Twilio to call next, absolute on PUBLIC_BASE_URL: Twilio resolves
    a relative one against the host, outside an app mounted under a path."""
    return f"{get_settings().public_base_url}{path}?{urlencode(query)}"


def text_of(say: Say, lang: str) -> str:
    """Catalog text of ``say`` in its own language if it has one; nested messages first."""
    lang = say.lang or lang
    params: dict[str, Any] = {
        k: (text_of(v, lang) if isinstance(v, Say) else v) for k, v in say.params.items()
    }
    return " ".join(i18n.t(say.key, lang, **params).split())


def segments(outs: list[Out], lang: str) -> list[tuple[str, str]]:
    """(language, text) of every piece the caller hears, in order."""
    out: list[tuple[str, str]] = []
    for item in outs:
        if isinstance(item, Choices):
            for n, option in enumerate(item.options, start=1):
                label = text_of(option, lang) if isinstance(option, Say) else str(option)
                out.append((lang, label))
                out.append((lang, i18n.t(f"ivr.press.{n}", lang)))
            if item.more:
                out.append((lang, i18n.t("ivr.more", lang)))
        else:
            out.append((item.lang or lang, text_of(item, lang)))
    return [(seg_lang, text) for seg_lang, text in out if text.strip()]


def private_texts(outs: list[Out], lang: str) -> set[str]:
    """The texts of the pieces marked private (Say.private), as segments gives them."""
    says = [o for item in outs
            for o in (item.options if isinstance(item, Choices) else (item,))
            if isinstance(o, Say) and o.private]
    return {" ".join(text_of(say, lang).split()) for say in says}


# The standard Google voice Twilio lists for each locale (its Text-to-Speech voice table):
# the A voice where Twilio has one; for Bengali, Gujarati, Kannada and Tamil Twilio lists
# only the C and D voices (Google replaced A and B there), so C (also a woman's voice).
_DEFAULT_VOICE_LETTER = {"bn": "C", "gu": "C", "kn": "C", "ta": "C"}


@functools.cache
def say_voices() -> dict[str, str]:
    """Twilio's <Say> voice per language. Twilio's default voice ("man") speaks none of
    our Indian locales, and a voice that cannot speak the language fails the <Say>; so a
    voice is always named: IVR_VOICE_<LANG> if set, else a standard Google voice Twilio
    lists for the locale (Google.hi-IN-Standard-A, Google.ta-IN-Standard-C)."""
    return {lang: os.environ.get(f"IVR_VOICE_{lang.upper()}", "").strip()
            or f"Google.{locale}-Standard-{_DEFAULT_VOICE_LETTER.get(lang, 'A')}"
            for lang, locale in i18n.SAY_LOCALES.items()}


def _speak(verb: Any, seg_lang: str, text: str, missing: list[tuple[str, str]],
           private: frozenset[str] | set[str] = frozenset(), root: str | None = None) -> None:
    url = None if text in private else audio.audio_url(seg_lang, text, missing=missing,
                                                       root=root)
    if url:
        verb.play(url)
    else:
        lang = seg_lang if seg_lang in i18n.SAY_LOCALES else "hi"
        verb.say(text, language=i18n.SAY_LOCALES[lang], voice=say_voices()[lang])


def render(turn: VoiceTurn) -> str:
    """The TwiML for one turn: prompts inside a <Gather>, or a <Dial>, or goodbye."""
    response = VoiceResponse()
    missing: list[tuple[str, str]] = []  # prompts without audio yet, queued at the end
    private = private_texts(turn.outs, turn.lang)  # spoken by <Say> only
    root = str(audio.cache_dir())  # looked up once for all the turn's prompts
    goodbye = i18n.t("voice.goodbye", turn.lang)
    if turn.action == "gather":
        if turn.keypad == 1:
            # No finishing key: a "#" pressed alone is sent as the answer ("#", a wrong
            # key), not taken as the end of nothing (an empty answer, heard as silence:
            # "no key was pressed"). Twilio's finishOnKey="" turns it off.
            options: dict[str, Any] = {"finish_on_key": "", "num_digits": 1,
                                       "timeout": KEY_TIMEOUT_S}
        else:
            options = {"finish_on_key": "#", "timeout": ENTRY_TIMEOUT_S}
        action = webhook_url(GATHER_PATH, turn=turn.next_turn, lang=turn.lang)
        gather = response.gather(input="dtmf", action=action, method="POST",
                                 action_on_empty_result=True, **options)
        for seg_lang, text in segments(turn.outs, turn.lang):
            _speak(gather, seg_lang, text, missing, private, root)
        # Reached only if Twilio did not post the empty answer: end rather than loop.
        _speak(response, turn.lang, goodbye, missing, root=root)
        response.hangup()
    elif turn.action == "dial" and turn.dial:
        for seg_lang, text in segments(turn.outs, turn.lang):
            _speak(response, seg_lang, text, missing, private, root)
        # The caller hears ringing (answerOnBridge) until the operator takes the call: the
        # operators' phone first hears who is calling and presses 1 (screen()); a voicemail
        # or a network's message that answers it presses nothing and takes nobody.
        dial = response.dial(timeout=DIAL_TIMEOUT_S, method="POST", answer_on_bridge=True,
                             action=webhook_url(DIAL_PATH, lang=turn.lang))
        if turn.screen is not None:
            conv_id, sid = turn.screen
            dial.number(turn.dial, method="POST",
                        url=webhook_url(SCREEN_PATH, conv=conv_id, call=sid))
        else:
            dial.number(turn.dial)
        # Reached only if Twilio did not request the action: end politely.
        _speak(response, turn.lang, goodbye, missing, root=root)
        response.hangup()
    else:
        for seg_lang, text in segments(turn.outs, turn.lang):
            _speak(response, seg_lang, text, missing, private, root)
        _speak(response, turn.lang, goodbye, missing, root=root)
        response.hangup()
    audio.queue_renders(missing)
    return str(response)


def screen(conv_id: int, sid: str, lang: str) -> str:
    """What the operators' phone hears when it answers, before the caller is put through:
    who is waiting, and the key that takes them; nothing pressed, it hangs up (the caller
    is told we will call back)."""
    response = VoiceResponse()
    missing: list[tuple[str, str]] = []
    gather = response.gather(input="dtmf", num_digits=1, timeout=KEY_TIMEOUT_S, method="POST",
                             action=webhook_url(TAKE_PATH, conv=conv_id, call=sid, lang=lang),
                             action_on_empty_result=True)
    for _ in range(2):  # said again: the phone may be answered mid-sentence
        _speak(gather, lang, i18n.t("ivr.ops.screen", lang), missing)
    response.hangup()
    audio.queue_renders(missing)
    return str(response)


def hangup_with(key: str, lang: str = i18n.DEFAULT_LANGUAGE, *also: str) -> str:
    """A short message and goodbye (calls we cannot serve, e.g. a hidden number), said in
    ``lang`` and then in each of the ``also`` languages."""
    langs = (lang, *also)
    return render(VoiceTurn(langs[-1], [Say(key, lang=each) for each in langs],
                            action="hangup"))  # goodbye in the last language heard

"""The customer chat's yes and no (s35, HD), read as the partner SMS parser reads them
(s34): the one-word refusals of each language ("முடியாது", "కుదరదు", "ಆಗಲ್ಲ", "লাগবেনা")
and a no in a few words ("no thanks", "nahi ji", "nahi chahiye") are a no; a "not" turns
a request around ("cancel mat karo", "বাতিল করবনা"); a "no problem" ("વાંધો નથી",
"koi baat nahi") is no refusal: alone it is asked again at "book it?" and at the cancel
question, with a yes beside it it is that yes. Played through the signed WhatsApp
webhook and its drain job, in several languages; real PostgreSQL and Redis, the clock
frozen and stepped."""

from __future__ import annotations

from datetime import timedelta
from itertools import count

import pytest
from sqlalchemy import select

from core import clock, i18n
from core.adapters.db import transaction
from core.adapters.models import Booking
from core.adapters.redis_conn import redis_client
from core.dialog import words
from core.domain.dispatch import NO_PROBLEM, WORDS, Kind, parse_command
from core.services import conversation
from core.services.inbound import rate_counter
from tests.test_chat_journey_review29 import (  # noqa: F401  (demo: a fixture)
    PICKUP_BETTIAH,
    REST,
    Chat,
    demo,
    newest_ref,
)

pytestmark = pytest.mark.db

# The first message in each language's script: "shall we talk in <it>?", "1" yes, "1" book.
HELLO = {"hi": "नमस्ते", "ta": "வணக்கம்", "te": "నమస్కారం", "kn": "ನಮಸ್ಕಾರ", "bn": "নমস্কার",
         "gu": "નમસ્તે", "en": "hello"}


_phones = count(1)


def _phone() -> str:
    return f"+9198123{next(_phones):05d}"


def _quiet(chat: Chat) -> None:
    redis_client().delete(rate_counter("whatsapp", chat.phone.lstrip("+")))


def _read_on() -> None:
    """The customer reads the question before answering (the read-first guard's grace)."""
    clock.freeze(clock.now() + conversation.SEEN_GRACE + timedelta(seconds=1))


def _to_pickup(chat: Chat, lang: str) -> None:
    if lang == "en":  # no script to guess from: the language list, 2 = English
        chat.play("hello", "2", "1")
    else:
        chat.play(HELLO[lang], "1", "1")
    assert chat.step() == "pickup", lang


def _at_the_summary(chat: Chat, lang: str) -> None:
    _to_pickup(chat, lang)
    chat.play(*PICKUP_BETTIAH)
    _quiet(chat)
    chat.play(*REST)
    assert chat.step() == "confirm"
    _read_on()


def _status(ref: str) -> str:
    with transaction() as s:
        return s.scalar(select(Booking.status).where(Booking.reference == ref))


def _at_the_cancel_question(chat: Chat, lang: str) -> str:
    _at_the_summary(chat, lang)
    chat.say("1")  # booked, a payment link sent
    ref = newest_ref(chat.phone)
    assert ref is not None
    _quiet(chat)
    chat.say("3")  # cancel: which booking?
    assert chat.step() == "cancel_pick"
    chat.say("1")
    assert chat.step() == "cancel_confirm"
    _read_on()
    return ref


# --- 1. a refusal at "book it?" --------------------------------------------------------

@pytest.mark.parametrize(("lang", "said"), [
    ("ta", "முடியாது"), ("ta", "வேணாம்"), ("te", "కుదరదు"), ("kn", "ಆಗಲ್ಲ"),
    ("kn", "ಇಲ್ಲಾ"), ("bn", "লাগবেনা"), ("bn", "চাইনা"), ("gu", "નથી જોઈતું"),
    ("hi", "nahi chahiye"), ("hi", "ji nahi"), ("hi", "nhi"), ("en", "no thanks"),
])
def test_a_refusal_at_book_it_does_not_book(client, demo, lang: str, said: str) -> None:  # noqa: F811
    """At "book it?" a Tamil customer's "முடியாது" (cannot), a Kannada "ಆಗಲ್ಲ", a Bengali
    "লাগবেনা" (not needed), a Hindi "nahi chahiye", an English "no thanks": the partner
    parser reads each as no; the chat said "Sorry, I did not understand" (a miss, the
    third offering a person). A no: nothing booked, nothing to pay."""
    chat = Chat(client, _phone())
    _at_the_summary(chat, lang)
    reply = chat.say(said)
    assert newest_ref(chat.phone) is None, reply
    assert i18n.t("bot.confirm.dropped", lang) in reply, reply
    assert chat.step() == "menu"
    assert not chat.slots(), "the dropped draft is kept"


# --- 2. "no problem" at "book it?": asked again, or the yes said with it ---------------

@pytest.mark.parametrize(("lang", "said"), [
    ("gu", "વાંધો નથી"), ("ta", "பிரச்சனை இல்லை"), ("kn", "ತೊಂದರೆ ಇಲ್ಲ"),
    ("hi", "koi baat nahi"), ("en", "no problem"),
])
def test_no_problem_alone_at_book_it_is_asked_again(client, demo, lang: str,  # noqa: F811
                                                     said: str) -> None:
    """"વાંધો નથી" (no objection), "koi baat nahi" (no matter; also "never mind": book
    it, or forget it?) begin or end with a no and refuse nothing: never the draft
    dropped. Alone they are no sure yes either: the question again, its choices shown."""
    chat = Chat(client, _phone())
    _at_the_summary(chat, lang)
    reply = chat.say(said)
    assert newest_ref(chat.phone) is None, reply
    assert chat.step() == "confirm", reply
    assert i18n.t("bot.confirm.dropped", lang) not in reply
    assert i18n.t("bot.retry", lang) in reply, reply
    assert chat.slots().get("recipient_name") == "Sita"


@pytest.mark.parametrize(("lang", "said"), [
    ("gu", "વાંધો નથી, હા"), ("hi", "koi baat nahi, haan"), ("te", "సమస్య లేదు సరే"),
])
def test_no_problem_with_a_yes_at_book_it_books(client, demo, lang: str,  # noqa: F811
                                                said: str) -> None:
    """"વાંધો નથી, હા" (no objection, yes): the partner parser takes the yes ("koi baat
    nahi, haan" takes the job); the chat asked again. The yes books."""
    chat = Chat(client, _phone())
    _at_the_summary(chat, lang)
    reply = chat.say(said)
    assert newest_ref(chat.phone) is not None, reply


# --- 3. the cancel question ------------------------------------------------------------

@pytest.mark.parametrize(("lang", "said"), [
    ("ta", "வேணாம்"), ("te", "వద్దండి"), ("kn", "ಬೇಡಾ ಸರ್"), ("bn", "না না"),
    ("hi", "nahi karna"), ("en", "no thanks"),
])
def test_a_refusal_at_the_cancel_question_keeps_the_booking(client, demo, lang: str,  # noqa: F811
                                                            said: str) -> None:
    """"Cancel booking ...?" answered "வேணாம்" (do not), "ಬೇಡಾ ಸರ್", "না না", "nahi
    karna", "no thanks": a no, the booking kept and said so (it was a miss)."""
    chat = Chat(client, _phone())
    ref = _at_the_cancel_question(chat, lang)
    before = _status(ref)
    reply = chat.say(said)
    assert _status(ref) == before
    assert i18n.t("bot.cancel.kept", lang, ref=ref) in reply, reply
    assert chat.step() == "menu"


@pytest.mark.parametrize(("lang", "said"), [("gu", "વાંધો નથી"), ("ta", "பிரச்சனை இல்லை")])
def test_no_problem_at_the_cancel_question_cancels_nothing(client, demo, lang: str,  # noqa: F811
                                                           said: str) -> None:
    """A "no problem" at the cancel question neither cancels (a fee may be due) nor is
    a no: asked again."""
    chat = Chat(client, _phone())
    ref = _at_the_cancel_question(chat, lang)
    before = _status(ref)
    reply = chat.say(said)
    assert _status(ref) == before
    assert chat.step() == "cancel_confirm", reply
    assert i18n.t("bot.retry", lang) in reply, reply


# --- 4. a "not" at the menu; "no problem" there -----------------------------------------

@pytest.mark.parametrize(("lang", "said"), [
    ("hi", "cancel mat karo"), ("en", "don't cancel"), ("bn", "বাতিল করবনা"),
    ("ta", "ரத்து வேணாம்"), ("hi", "book mat karo"),
])
def test_a_request_turned_around_is_not_taken(client, demo, lang: str, said: str) -> None:  # noqa: F811
    """With a booking made, "cancel mat karo" (do not cancel), "don't cancel", "বাতিল
    করবনা" (I will not cancel) at the menu asked "Cancel booking ...?"; "book mat karo"
    (do not book) started a new one: the chat saw "cancel" or "book" and no word it
    knew for no. A "not" turns it around, as in the partner parser: the menu again."""
    chat = Chat(client, _phone())
    _at_the_summary(chat, lang)
    chat.say("1")  # booked: the menu
    assert newest_ref(chat.phone) is not None
    _quiet(chat)
    assert chat.step() == "menu"
    reply = chat.say(said)
    assert chat.step() == "menu", reply


@pytest.mark.parametrize(("lang", "said"), [
    ("hi", "koi baat nahi"), ("gu", "વાંધો નથી"), ("en", "no problem, thanks"),
])
def test_no_problem_at_the_menu_is_understood(client, demo, lang: str, said: str) -> None:  # noqa: F811
    """"koi baat nahi" after a booking or a status is an ok: understood, nothing asked
    (it was a miss, and "baat" must not ask for a person either)."""
    chat = Chat(client, _phone())
    _to_pickup(chat, lang)
    chat.say("0")
    reply = chat.say(said)
    assert i18n.t("bot.welcome", lang) in reply, reply
    assert i18n.t("bot.retry", lang) not in reply
    assert chat.step() == "menu"


@pytest.mark.parametrize("said", ["not tamil", "tamil mat", "don't tamil"])
def test_a_language_named_with_a_not_shows_the_list(client, demo, said: str) -> None:  # noqa: F811
    """"Shall we talk in Tamil?" answered "not tamil": Tamil was chosen (only a no word
    showed the list). With a "not" which language is meant is not sure: the list."""
    chat = Chat(client, _phone())
    chat.say(HELLO["ta"])
    assert chat.step() == "language_guess"
    reply = chat.say(said)
    assert chat.step() == "language", reply


# --- 5. "is there a landmark?" ----------------------------------------------------------

@pytest.mark.parametrize(("lang", "said"), [("hi", "nahi ji"), ("kn", "ಇಲ್ಲಾ"),
                                            ("ta", "முடியாது"), ("en", "no no")])
def test_a_no_at_the_landmark_question_is_no_landmark(client, demo, lang: str,  # noqa: F811
                                                      said: str) -> None:
    """"nahi ji", "ಇಲ್ಲಾ", "no no" at "Is there a landmark near the pickup?" were kept as
    the landmark (the rider's offer would read "Bettiah, nahi ji"): none."""
    chat = Chat(client, _phone())
    _to_pickup(chat, lang)
    chat.play(*PICKUP_BETTIAH)
    assert chat.step() == "pickup_landmark"
    chat.say(said)
    assert chat.slots()["pickup"].get("landmark") is None
    assert chat.step() == "drop"


# --- 6. one list, read alike ------------------------------------------------------------

def test_the_partners_refusals_are_the_chats_and_no_problem_is_none() -> None:
    """The chat reads every refusal the partner parser does as a no, and none of its "no
    problem" phrases as a no or a yes (nor does the partner parser)."""
    for refusal in WORDS[Kind.DECLINE]:
        assert words.is_no(refusal), refusal
    for phrase in NO_PROBLEM:
        assert not words.is_no(phrase) and not words.is_yes(phrase), phrase
        assert parse_command(phrase).kind is Kind.UNKNOWN, phrase
    assert not words.YES_WORDS & words.NO_WORDS
    for said in ("ok nahi", "haan nahi", "theek nahi", "code nahi mila 57", "ok na"):
        assert not words.is_no(said) and not words.is_yes(said), said

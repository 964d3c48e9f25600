"""A new customer's FIRST message in Hindi written in Latin letters ("parcel bhejna
hai", "mujhe parcel bhejna hai") is offered Hindi ("shall we talk in Hindi?", the
language_guess step), as a first message in Devanagari is, not shown the list of eight
languages (s39, after hchat4). Words other languages write alike ("hello", "ok",
"nahi", "accha", "namaskar"), a greeting alone ("namaste", "Hai sir": how many type
"Hi"), and a message with a word of Marathi, Gujarati or Bengali ("Namaste, mala parcel
pathvaycha aahe") still get the list (words.hinglish_first; hchat5 after review rnew1).
Played through the signed WhatsApp webhook; real PostgreSQL and Redis."""

from __future__ import annotations

from itertools import count

import pytest
from sqlalchemy import select

from core import i18n
from core.adapters.db import transaction
from core.adapters.models import Person
from core.dialog import engine, words
from core.dialog.booking import BOOKING_DIALOG, note_request
from core.dialog.engine import BACK_AFTER_LANGUAGE, Ctx, DialogState, UserInput
from tests.test_chat_journey_review29 import Chat, demo  # noqa: F401  (demo: a fixture)
from tests.test_dialog import FakePorts, keys

_phones = count(1)

LATIN_HINDI = ["parcel bhejna hai", "mujhe parcel bhejna hai", "Mujhe parcel bhejna hai!",
               "haan", "namaste ji, mujhe madad chahiye", "Hai, mujhe parcel bhejna hai",
               "mera parcel kab aayega", "mera parcel kab",
               # review rnew6: "hai" as the verb, a Hindi name, a Hindi number
               "parcel bhejne hai", "Patna se Delhi parcel bhejne hai",
               "ek parcel pickup karwana hai", "parcel ka rate kya hai", "booking kaha hai?",
               "rider abhi tak nahi aaya hai", "Hello, main Amar, mujhe parcel bhejna hai",
               "mujhe chhe parcel bhejne hai"]
# "namaste", "namaste ji" were offered Hindi here before rnew1: a greeting every
# language has, not Hindi; they get the list (1. हिंदी first).
NOT_HINDI_ALONE = ["hello", "ok", "nahi", "accha", "namaskar", "hi", "thik ache",
                   "namaste", "namaste ji", "Hai", "Hai sir", "Hai anna",
                   "Hai, I want to send a parcel", "booking karo", "kab",
                   "Namaste, mala parcel pathvaycha aahe",  # Marathi
                   "Kem cho, mare parcel moklvu che",  # Gujarati
                   "ami parcel pathate chai", "amar parcel kothay"]  # Bengali
OFFER_HI = i18n.t("bot.lang_guess", "hi", language=i18n.LANGUAGE_NAMES["hi"])


def _language(phone: str) -> str | None:
    with transaction() as s:
        return s.scalar(select(Person.preferred_language).where(Person.phone == phone))


def _chat(client: object) -> Chat:
    return Chat(client, f"+9198139{next(_phones):05d}")


# --- through the webhook -----------------------------------------------------------------

@pytest.mark.db
@pytest.mark.parametrize("first", LATIN_HINDI)
def test_a_first_message_in_latin_hindi_is_offered_hindi(
        client, demo, first: str) -> None:  # noqa: F811
    """The same offer a Devanagari first message gets ("क्या हम हिंदी में बात करें?"),
    not the list of languages."""
    devanagari = _chat(client)
    expected = devanagari.say("नमस्ते")
    assert devanagari.step() == "language_guess"
    chat = _chat(client)
    reply = chat.say(first)
    assert chat.step() == "language_guess", reply
    assert chat.conv()[1].get("lang_guess") == "hi"
    assert OFFER_HI in reply and i18n.t("lang.menu", "hi") not in reply, reply
    assert reply == expected
    assert _language(chat.phone) is None  # offered, not chosen yet


@pytest.mark.db
@pytest.mark.parametrize("yes", ["haan", "1", "haan ji"])
def test_yes_to_the_offer_chooses_hindi(client, demo, yes: str) -> None:  # noqa: F811
    chat = _chat(client)
    chat.say("namaste ji, mujhe madad chahiye")
    reply = chat.say(yes)
    assert chat.step() == "menu", reply
    assert i18n.t("lang.saved", "hi", language="हिंदी") in reply, reply
    assert _language(chat.phone) == "hi"


@pytest.mark.db
@pytest.mark.parametrize(("first", "yes"), [
    ("parcel bhejna hai", "haan"), ("mujhe parcel bhejna hai", "1"),
    ("पार्सल भेजना है", "1"),  # the Devanagari path, the same
])
def test_asked_to_send_a_parcel_the_booking_starts_once_hindi_is_chosen(
        client, demo, first: str, yes: str) -> None:  # noqa: F811
    """"parcel bhejna hai", then yes to Hindi: the booking starts (the pickup question),
    as after "पार्सल भेजना है"; she is not asked again from the menu."""
    chat = _chat(client)
    chat.say(first)
    assert chat.step() == "language_guess"
    reply = chat.say(yes)
    assert chat.step() == "pickup", reply
    assert _language(chat.phone) == "hi"


@pytest.mark.db
def test_two_at_the_offer_shows_the_list_where_english_can_be_chosen(
        client, demo) -> None:  # noqa: F811
    """"2" (another language) shows the list; "haan" there is not offered Hindi again
    (she asked for the list); "2" on the list is English."""
    chat = _chat(client)
    chat.say("mujhe parcel bhejna hai")
    reply = chat.say("2")
    assert chat.step() == "language", reply
    assert i18n.t("lang.menu", "hi") in reply, reply
    chat.say("haan")
    assert chat.step() == "language"
    reply = chat.say("2")
    assert _language(chat.phone) == "en"
    assert chat.step() == "pickup", reply  # what the first message asked for


@pytest.mark.db
@pytest.mark.parametrize(("said", "lang"), [("tamil", "ta"), ("English", "en"),
                                            ("bangla mein", "bn")])
def test_another_language_named_at_the_offer_is_chosen(
        client, demo, said: str, lang: str) -> None:  # noqa: F811
    chat = _chat(client)
    chat.say("namaste ji, mujhe madad chahiye")
    chat.say(said)
    assert _language(chat.phone) == lang
    assert chat.step() == "menu"


@pytest.mark.db
@pytest.mark.parametrize("first", NOT_HINDI_ALONE)
def test_words_not_hindi_alone_still_get_the_list(
        client, demo, first: str) -> None:  # noqa: F811
    chat = _chat(client)
    reply = chat.say(first)
    assert chat.step() == "language", reply
    assert "lang_guess" not in chat.conv()[1]


@pytest.mark.db
def test_a_language_named_in_latin_hindi_is_offered_that_language(
        client, demo) -> None:  # noqa: F811
    """"tamil mein baat karni hai": the language she names is offered, not Hindi."""
    chat = _chat(client)
    chat.say("tamil mein baat karni hai")
    assert chat.step() == "language_guess"
    assert chat.conv()[1].get("lang_guess") == "ta"


# --- the steps themselves ------------------------------------------------------------------

def _first(text: str, data: dict[str, object] | None = None) -> tuple[DialogState, list]:
    """As conversation.dialog_turn enters the list for a first message in Latin letters."""
    state = DialogState("start", data=dict(data or {}))
    note_request(state.data, text)
    outs = engine.enter(BOOKING_DIALOG, Ctx(state, FakePorts(), "hi"), "language")
    return state, outs


def test_the_list_entered_for_latin_hindi_offers_hindi_and_forgets_the_note() -> None:
    state, outs = _first("parcel bhejna hai")
    assert state.step == "language_guess" and state.data.get("lang_guess") == "hi"
    assert "bot.lang_guess" in keys(outs) and "lang.menu" not in keys(outs)
    assert set(state.data) == {"lang_guess", "asked_first"}  # the note is used up
    # "2": the list, which shows (no offer again)
    outs = engine.turn(BOOKING_DIALOG, state, UserInput(text="2"), FakePorts(), "hi")
    assert state.step == "language" and "lang.menu" in keys(outs)


def test_a_question_waiting_for_the_language_keeps_the_list() -> None:
    """A question to ask again once the language is chosen (BACK_AFTER_LANGUAGE) stays
    with the list: not lost to the offer."""
    state, outs = _first("haan", {BACK_AFTER_LANGUAGE: "rate"})
    assert state.step == "language" and "lang.menu" in keys(outs)


@pytest.mark.parametrize("first", NOT_HINDI_ALONE)
def test_not_hindi_alone_enters_the_list(first: str) -> None:
    state, outs = _first(first)
    assert state.step == "language" and "lang.menu" in keys(outs)


@pytest.mark.db
@pytest.mark.parametrize("first", ["namaste", "Hai sir"])
def test_a_greeting_gets_the_list_and_haan_there_offers_hindi(
        client, demo, first: str) -> None:  # noqa: F811
    """A greeting alone gets the list; "haan" there (Hindi in Latin letters at the list,
    words.hinglish) is offered Hindi, and "1" chooses it."""
    chat = _chat(client)
    reply = chat.say(first)
    assert chat.step() == "language" and OFFER_HI not in reply, reply
    reply = chat.say("haan")
    assert chat.step() == "language_guess" and OFFER_HI in reply, reply
    chat.say("1")
    assert _language(chat.phone) == "hi"


@pytest.mark.parametrize(("text", "hindi"), [
    *((t, True) for t in LATIN_HINDI), *((t, False) for t in NOT_HINDI_ALONE),
    ("namaste hai", True),  # "hai" after a word is Hindi's verb (rnew6), not "Hi"
    ("Hai, booking karo", True),  # two, not both greetings
    ("mujhe parcel bhejna hai, mala", False),  # a Marathi word rules Hindi out
    ("पार्सल भेजना है", False),  # Devanagari: offered by its script, not by this
])
def test_hinglish_first(text: str, hindi: bool) -> None:
    assert words.hinglish_first(text) is hindi


@pytest.mark.parametrize("text", ["namaste", "Hai sir", "kab", "booking karo"])
def test_the_list_still_reads_shared_words_as_hindi(text: str) -> None:
    """At the list (a second message) words.hinglish is unchanged: "namaste" there is
    Hindi, as test_chat_when_s37 pins."""
    assert words.hinglish(text)

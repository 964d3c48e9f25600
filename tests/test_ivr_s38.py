"""Session 38: IVR fixes after review rivr2, through the signed voice webhooks.

1. A caller who chose a language long ago, at the language list again (the menu's 4),
   silent to the end: "we did not get an answer" was said in all eight languages, as to
   a new caller who never chose one. He hears it in his own (as _too_long says it).
2. "1 = book" pressed, then hung up at once, Twilio's status callback handled before the
   Gather's request with his key: the key did nothing (the call was closed), so the
   customer, who pressed "book", got no booking, no SMS and no word. The key of the call's
   last question counts as it does when the two requests come the other way round: the
   booking is made, its details SMS goes, and the next call says it was made.
3. "one rupees", "one paise", "zero rupees and fifty paise" (and the Hindi, Marathi,
   Gujarati and Telugu plural after one): one rupee, one paisa, fifty paise.

Real PostgreSQL, Redis and RQ; the clock frozen.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from core import clock, i18n
from core.adapters.db import transaction
from core.adapters.models import Booking, Conversation, OutboxMessage, Person
from core.dialog import spoken
from core.dialog.voice import amount
from core.services import ivr
from ivr_flows.twiml import text_of
from tests.conftest import run_jobs
from tests.test_ivr import START, Caller, phone, prompts, step_of, t  # noqa: F401

pytestmark = pytest.mark.db


def _caller_in(caller: Caller, lang: str) -> None:
    with transaction() as s:
        s.add(Person(phone=caller.phone, role="customer", preferred_language=lang))


def _to_the_confirm(caller: Caller, lang: str) -> None:
    """From the menu to "book it?" (Bettiah 845438 to Laxmipur 845450, standard)."""
    for keys in ("1", "845438#", "2", "1", "845450#", "7", "1", "9876543210#", "1", "1",
                 "1"):
        caller.press(keys)
    heard = caller.press("2")
    assert t("ivr.confirm.yes", lang) in heard.text, heard.text
    assert step_of(caller.phone) == "confirm"


def _bookings() -> list[Booking]:
    with transaction() as s:
        found = list(s.scalars(select(Booking)))
        s.expunge_all()
        return found


def _call_state(number: str) -> dict:
    with transaction() as s:
        conv = s.scalar(select(Conversation).where(Conversation.channel == "voice",
                                                   Conversation.contact == number))
        return dict(conv.state or {})


# --- 1. silence at the language list, from the menu ------------------------------------

@pytest.mark.parametrize("lang", ["ta", "en"])
def test_silence_at_the_language_list_from_the_menu_ends_in_the_callers_language(
        phone: Caller, lang: str) -> None:  # noqa: F811
    _caller_in(phone, lang)
    phone.call()
    heard = phone.press("4")  # the language list
    assert t("voice.language_option", "te") in heard.text, heard.text
    for _ in range(ivr.MAX_SILENT_REPEATS + 1):
        heard = phone.silence()
        assert heard.gather is not None, heard.text  # the list again
    heard = phone.silence()
    assert heard.hangup and heard.gather is None, heard.text
    said = [text for _, text in heard.says]
    assert t("ivr.no_answer", lang) in said, said
    others = [other for other in i18n.LANGUAGES if other != lang]
    assert not any(t("ivr.no_answer", other) in said for other in others), said
    assert {seg_lang for seg_lang, _ in heard.says} == {i18n.SAY_LOCALES[lang]}, heard.says


def test_a_new_caller_silent_at_the_list_still_hears_it_in_every_language(
        phone: Caller) -> None:  # noqa: F811
    """A guard: who never chose a language hears the goodbye in all of them."""
    phone.call()
    for _ in range(ivr.MAX_SILENT_REPEATS + 1):
        assert phone.silence().gather is not None
    heard = phone.silence()
    said = [text for _, text in heard.says]
    assert heard.hangup and all(t("ivr.no_answer", lang) in said
                                for lang in i18n.LANGUAGES), said


# --- 2. "1 = book", then the status callback before the key -----------------------------

def _details_sms(booking_id: int) -> list[OutboxMessage]:
    with transaction() as s:
        found = list(s.scalars(select(OutboxMessage).where(
            OutboxMessage.dedupe_key == ivr.details_key(booking_id))))
        s.expunge_all()
        return found


def test_book_pressed_then_hung_up_with_the_status_callback_first_books_and_tells(
        phone: Caller) -> None:  # noqa: F811
    _caller_in(phone, "en")
    phone.call()
    _to_the_confirm(phone, "en")
    action = phone.action
    phone.hang_up()  # the status callback is handled first ...
    assert "call" not in _call_state(phone.phone)
    phone.action = action
    heard = phone.press("1")  # ... then the Gather's request with his "book"
    assert heard.hangup and heard.gather is None and heard.dial is None, heard.text
    (booking,) = _bookings()  # made, as when the two requests come the other way round
    assert booking.status == "awaiting_payment"
    assert booking.customer_id is not None
    (sms,) = _details_sms(booking.id)  # its details (and where the link comes) by SMS
    assert sms.to_addr.endswith(phone.phone[-10:])
    data = _call_state(phone.phone)
    assert "call" not in data and "draft_step" not in data, data  # the draft became it
    # Twilio retries the same request: answered from record, nothing booked twice.
    again = phone.repeat()
    assert again.xml == heard.xml and len(_bookings()) == 1
    run_jobs()
    # Calling back, he hears it was made (its number, how its link comes), not "finish
    # your booking?" nor a plain menu that books it twice.
    clock.freeze(START + timedelta(minutes=2))
    heard = phone.call()
    assert t("ivr.callback.booked", "en", digits=spoken.spell_digits(booking.reference)) \
        in heard.text, heard.text
    assert t("ivr.resume.continue", "en") not in heard.text
    assert step_of(phone.phone) == "menu"


def test_do_not_book_pressed_then_hung_up_with_the_status_callback_first(
        phone: Caller) -> None:  # noqa: F811
    """3 = "do not book": nothing is made, nothing half-made stays, no draft offered."""
    _caller_in(phone, "en")
    phone.call()
    _to_the_confirm(phone, "en")
    action = phone.action
    phone.hang_up()
    phone.action = action
    heard = phone.press("3")
    assert heard.hangup and _bookings() == []
    heard = phone.call()
    assert t("ivr.resume.continue", "en") not in heard.text, heard.text


def test_keys_of_a_closed_call_after_the_next_call_began_do_nothing(
        phone: Caller) -> None:  # noqa: F811
    """A guard: once he called again, the old call's keys book nothing (that new call
    says "continue your booking?")."""
    _caller_in(phone, "en")
    phone.call()
    _to_the_confirm(phone, "en")
    old_sid, action = phone.sid, phone.action
    phone.hang_up()
    heard = phone.call()  # calls back at once
    assert t("ivr.resume.continue", "en") in heard.text, heard.text
    new_sid = phone.sid
    phone.sid, phone.action = old_sid, action
    heard = phone.press("1")
    assert heard.hangup and _bookings() == []
    assert (_call_state(phone.phone).get("call") or {}).get("sid") == new_sid


def test_a_late_key_long_after_the_call_closed_does_nothing(phone: Caller) -> None:  # noqa: F811
    _caller_in(phone, "en")
    phone.call()
    _to_the_confirm(phone, "en")
    action = phone.action
    phone.hang_up()
    clock.freeze(clock.now() + ivr.LATE_KEYS_TAKEN + timedelta(seconds=1))
    phone.action = action
    assert phone.press("1").hangup and _bookings() == []


# --- 3. one rupee, one paisa ------------------------------------------------------------

@pytest.mark.parametrize(("paise", "lang", "said"), [
    (100, "en", "one rupee"),
    (1, "en", "one paisa"),
    (50, "en", "fifty paise"),
    (150, "en", "one rupee and fifty paise"),
    (201, "en", "two rupees and one paisa"),
    (101, "en", "one rupee and one paisa"),
    (200, "en", "two rupees"),
    (250, "en", "two rupees and fifty paise"),
    (100, "hi", "एक रुपया"),
    (150, "hi", "एक रुपया पचास पैसे"),
    (1, "hi", "एक पैसा"),
    (50, "hi", "पचास पैसे"),
    (250, "hi", "दो रुपये पचास पैसे"),
    (100, "gu", "એક રૂપિયો"),
    (100, "mr", "एक रुपया"),
    (100, "te", "ఒక రూపాయి"),
])
def test_one_rupee_and_one_paisa_are_said_in_the_singular(paise: int, lang: str,
                                                           said: str) -> None:
    assert text_of(amount(paise, lang), lang) == said


def test_a_fare_of_many_rupees_reads_as_before() -> None:
    for lang in i18n.LANGUAGES:
        assert text_of(amount(12500, lang), lang) == " ".join(i18n.t(
            "ivr.amount", lang, rupees=spoken.number_words(125, lang)).split())
        assert text_of(amount(2550, lang), lang) == " ".join(i18n.t(
            "ivr.amount_paise", lang, rupees=spoken.number_words(25, lang),
            paise=spoken.number_words(50, lang)).split())

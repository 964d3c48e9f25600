"""Session 35: IVR fixes after review, through the signed voice webhooks.

1. "The payment link is still being made: press 2 again in a minute", then the done step,
   where silence hung up: the caller who waited as told was cut off. After it, silence
   repeats the done prompt (MAX_SILENT_REPEATS times), then goodbye as usual.
2. Keys of a call that a second call from the same number took over heard only "Thank
   you for calling. Goodbye.": they hear why (ivr.taken_over), and a retry of a turn that
   did something still hears what it did.
3. "Please pay within 1 minutes": one minute is said as such (ivr.confirm.pay_time_one).
4. The apology for a call's first request (or the Fallback URL for it) was always Hindi:
   it is in the language the caller chose, when the database can say it.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from core import clock
from core.adapters.db import transaction
from core.adapters.models import Booking, Person
from core.config import get_settings
from core.dialog import spoken
from core.services import ivr
from tests.conftest import post_twilio, run_jobs
from tests.test_ivr import Caller, Heard, book_in_hindi, phone, prompts, step_of, t  # noqa: F401

pytestmark = pytest.mark.db


def _heard(caller: Caller, path: str, form: dict[str, str]) -> Heard:
    r = post_twilio(caller.client, path, form)
    assert r.status_code == 200 and r.mimetype == "application/xml", r.get_data(as_text=True)
    return Heard.parse(r.get_data(as_text=True))


def _caller_in(caller: Caller, lang: str) -> None:
    with transaction() as s:
        s.add(Person(phone=caller.phone, role="customer", preferred_language=lang))


def _to_the_confirm(caller: Caller) -> None:
    """From the menu to "book it?" (Bettiah 845438 to Laxmipur 845450, standard)."""
    for keys in ("1", "845438#", "2", "1", "845450#", "7", "1", "9876543210#", "1", "1",
                 "1"):
        caller.press(keys)
    heard = caller.press("2")
    assert t("ivr.confirm.yes", caller_lang(caller)) in heard.text, heard.text


def caller_lang(caller: Caller) -> str:
    with transaction() as s:
        return s.scalar(select(Person.preferred_language).where(
            Person.phone == caller.phone)) or "hi"


def _bookings() -> int:
    with transaction() as s:
        return int(s.scalar(select(func.count()).select_from(Booking)) or 0)


# --- 1. "press 2 again in a minute", and the caller waits -------------------------------

def test_waiting_as_told_after_link_not_ready_does_not_end_the_call(phone: Caller) -> None:  # noqa: F811
    book_in_hindi(phone)
    phone.press("2")  # send the link to another phone
    phone.press("9123456789#")
    heard = phone.press("1")  # right: the link is still being made
    assert t("ivr.link_phone.not_ready") in heard.text, heard.text
    for _ in range(ivr.MAX_SILENT_REPEATS):
        heard = phone.silence()  # the caller waits, as told (the Gather times out)
        assert heard.gather is not None, heard.text  # asked again, not hung up on
        assert t("ivr.done.other_phone") in heard.text and t("ivr.done.prompt") in heard.text
        assert t("ivr.silence") not in heard.text  # they were told to wait: no telling off
        assert step_of(phone.phone) == "done"
    run_jobs()  # the link is made meanwhile
    heard = phone.press("2")  # as they were told: it works now
    assert t("ivr.link_phone.ask") in heard.text, heard.text


def test_silence_after_link_not_ready_still_ends_the_call_in_the_end(phone: Caller) -> None:  # noqa: F811
    book_in_hindi(phone)
    phone.press("2")
    phone.press("9123456789#")
    phone.press("1")  # not ready
    for _ in range(ivr.MAX_SILENT_REPEATS):
        assert phone.silence().gather is not None
    heard = phone.silence()
    # Goodbye, as silence at the done step always says it: no "no answer", no person.
    assert heard.hangup and heard.gather is None and heard.dial is None, heard.text
    assert heard.text.strip() == t("voice.goodbye"), heard.text


def test_silence_at_done_without_a_wait_asked_for_still_ends_at_once(phone: Caller) -> None:  # noqa: F811
    book_in_hindi(phone)
    heard = phone.silence()
    assert heard.hangup and heard.text.strip() == t("voice.goodbye"), heard.text


# --- 2. keys of a call that a second call took over -------------------------------------

def _second_call_takes_over(caller: Caller) -> Caller:
    other = Caller(caller.client, caller.phone)  # the same number, on a second line
    other.calls = 7
    other.call()
    return other


def test_book_it_on_a_call_taken_over_says_why_nothing_happens(phone: Caller) -> None:  # noqa: F811
    _caller_in(phone, "en")
    phone.call()
    _to_the_confirm(phone)
    a_sid, a_action = phone.sid, phone.action
    _second_call_takes_over(phone)
    phone.sid, phone.action = a_sid, a_action
    heard = phone.press("1")  # "Book it" on the first call
    assert _bookings() == 0
    assert heard.hangup and heard.gather is None
    assert t("ivr.taken_over", "en") in heard.text, heard.text
    assert heard.text.strip() != t("voice.goodbye", "en")


def test_a_retry_of_a_turn_that_booked_hears_the_booking_after_a_take_over(
        phone: Caller) -> None:  # noqa: F811
    _caller_in(phone, "en")
    phone.call()
    _to_the_confirm(phone)
    done = phone.press("1")  # booked on the first call
    assert _bookings() == 1
    a_sid = phone.sid
    _second_call_takes_over(phone)
    phone.sid = a_sid
    heard = phone.repeat()  # Twilio retries the booking turn of the first call
    assert heard.xml == done.xml  # what it did, never "nothing was done"
    assert t("ivr.taken_over", "en") not in heard.text


# --- 3. one minute left to pay ----------------------------------------------------------

def test_one_minute_left_to_pay_is_not_said_as_1_minutes(phone: Caller) -> None:  # noqa: F811
    _caller_in(phone, "en")
    phone.call()
    _to_the_confirm(phone)
    phone.press("1")  # booked; the line drops before the caller hears it
    phone.hang_up()
    with transaction() as s:
        booking = s.scalar(select(Booking))
        assert booking is not None and booking.expires_at is not None
        ref, expires_at = booking.reference, booking.expires_at
    clock.freeze(expires_at - timedelta(seconds=40))
    heard = phone.call()  # calls back: told the booking was made, and the time to pay
    assert t("ivr.callback.booked", "en", digits=spoken.spell_digits(ref)) in heard.text
    assert "1 minutes" not in heard.text, heard.text
    assert t("ivr.confirm.pay_time_one", "en") in heard.text, heard.text


def test_more_minutes_left_to_pay_are_said_with_their_count(phone: Caller) -> None:  # noqa: F811
    _caller_in(phone, "en")
    phone.call()
    _to_the_confirm(phone)
    phone.press("1")
    phone.hang_up()
    with transaction() as s:
        expires_at = s.scalar(select(Booking.expires_at))
    clock.freeze(expires_at - timedelta(seconds=100))
    heard = phone.call()
    assert t("ivr.confirm.pay_time", "en", minutes=2) in heard.text, heard.text


# --- 4. the apology for a call's first request ------------------------------------------

def test_a_first_request_that_fails_apologises_in_the_callers_language(
        phone: Caller, monkeypatch) -> None:  # noqa: F811
    _caller_in(phone, "ta")

    def broken(*_: object) -> None:
        raise RuntimeError("a bug in the first turn")

    monkeypatch.setattr(ivr, "process", broken)
    phone.sid = "CA0000000000001"
    heard = _heard(phone, "/webhooks/voice", phone.form(CallStatus="ringing"))
    assert heard.hangup and t("common.error_try_later", "ta") in heard.text, heard.xml


def test_the_fallback_for_a_first_request_apologises_in_the_callers_language(
        phone: Caller, monkeypatch) -> None:  # noqa: F811
    _caller_in(phone, "en")
    phone.sid = "CA0000000000002"
    first = f"{get_settings().public_base_url}/webhooks/voice"
    heard = _heard(phone, "/webhooks/voice/fallback",
                   phone.form(ErrorCode="11205", ErrorUrl=first))
    assert heard.hangup and t("common.error_try_later", "en") in heard.text, heard.xml


def test_the_first_requests_apology_stays_hindi_when_the_language_cannot_be_read(
        phone: Caller, monkeypatch) -> None:  # noqa: F811
    _caller_in(phone, "en")

    def broken(*_: object) -> None:
        raise RuntimeError("the database is away")

    monkeypatch.setattr(ivr, "process", broken)
    real_transaction = ivr.transaction
    monkeypatch.setattr(ivr, "transaction", broken)  # its language cannot be read either
    phone.sid = "CA0000000000003"
    heard = _heard(phone, "/webhooks/voice", phone.form(CallStatus="ringing"))
    assert heard.hangup and t("common.error_try_later", "hi") in heard.text, heard.xml
    stranger = Caller(phone.client, "+919812300199")  # never called: Hindi
    stranger.sid = "CA0000000000004"
    monkeypatch.setattr(ivr, "transaction", real_transaction)
    heard = _heard(stranger, "/webhooks/voice", stranger.form(CallStatus="ringing"))
    assert heard.hangup and t("common.error_try_later", "hi") in heard.text, heard.xml

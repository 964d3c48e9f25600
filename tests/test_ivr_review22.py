"""IVR review 22: what a caller hears and is sent, told truthfully. Calls go through the
real, signed voice webhooks.

1. A caller asking for the payment link again heard "we have sent you the link again"
   though no message went: one goes at most once per payments.LINK_AGAIN_EVERY (from when
   the last went, since session 34). They now hear that it went a few minutes ago, and
   after how many minutes it can go again.
2. A booking cancelled in the call it was made in still had its details SMS sent. One not
   sent yet is withdrawn; once details (or the link) went, an SMS says it is cancelled.
3. The English speed labels were read out as "within 3 h r": the IVR says the hours in
   words in every language ("within one hour" for one), and the SMS keeps the short label.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import select

from core import clock, i18n
from core.adapters.db import transaction
from core.adapters.models import Booking, OutboxMessage
from core.services import dispatch
from tests.test_ivr import START, Caller, Heard, book_in_hindi, phone, prompts, t  # noqa: F401
from tests.test_ivr_more import (
    chats_on_whatsapp,
    jobs,
    pay_links_to,
    stops_sms,
    track_first,
)
from tests.test_ivr_texts import details_to

pytestmark = pytest.mark.db


def at(minutes: float) -> None:
    """The clock at START plus ``minutes``."""
    clock.freeze(START + timedelta(minutes=minutes))


def track_again(caller: Caller) -> Heard:
    """From the menu, in the same call: track, then the most recent booking."""
    caller.press("2")
    return caller.press("1")


def booked_and_linked(caller: Caller) -> None:
    """A Hindi booking whose payment link was made and sent, the call over."""
    book_in_hindi(caller)
    caller.hang_up()
    jobs()


# --- 1. the payment link asked for again ------------------------------------------------

def test_the_link_asked_again_within_ten_minutes_is_not_said_to_be_sent(live, phone):  # noqa: F811
    booked_and_linked(phone)
    sent = len(pay_links_to(phone.phone))
    at(3)
    heard = track_first(phone)
    assert t("ivr.track.link_sent") in heard.text
    assert len(pay_links_to(phone.phone)) == sent + 1

    heard = track_again(phone)  # just after it went: nothing goes
    assert len(pay_links_to(phone.phone)) == sent + 1
    assert t("ivr.track.link_sent") not in heard.text, heard.text
    assert t("ivr.track.link_recent", minutes=10) in heard.text
    assert t("ivr.menu") in heard.text
    phone.hang_up()

    at(12.5)  # half a minute left: "after 2 minutes", never "after 1 minutes" nor 0
    heard = track_first(phone)
    assert t("ivr.track.link_recent", minutes=2) in heard.text
    assert len(pay_links_to(phone.phone)) == sent + 1
    phone.hang_up()

    at(13)  # what was said holds: 10 minutes after it went, it goes again
    heard = track_first(phone)
    assert t("ivr.track.link_sent") in heard.text
    assert len(pay_links_to(phone.phone)) == sent + 2


def test_the_link_asked_again_on_whatsapp_within_ten_minutes_is_not_said_to_be_sent(
        live, phone):  # noqa: F811
    booked_and_linked(phone)
    stops_sms(phone.phone)
    chats_on_whatsapp(phone.phone)
    at(1)
    heard = track_first(phone)
    assert t("ivr.reach.whatsapp_sent") in heard.text
    sent = len(pay_links_to(phone.phone))
    heard = track_again(phone)
    assert t("ivr.reach.whatsapp_sent") not in heard.text, heard.text
    assert t("ivr.track.link_recent", minutes=10) in heard.text
    assert len(pay_links_to(phone.phone)) == sent


# --- 2. a booking cancelled in the call it was made in ----------------------------------

def cancel_the_one_just_booked(caller: Caller) -> Heard:
    caller.press("0")  # the menu
    caller.press("5")  # cancel a booking
    heard = caller.press("1")  # the only one
    assert t("ivr.cancel.yes") in heard.text
    heard = caller.press("1")
    assert t("ivr.cancel.done") in heard.text
    return heard


def sms_to(number: str) -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.to_addr == number).order_by(OutboxMessage.id)))


def the_ref() -> str:
    with transaction() as s:
        return s.scalars(select(Booking.reference)).one()


def test_no_details_go_for_a_booking_cancelled_in_its_own_call(live, phone):  # noqa: F811
    book_in_hindi(phone)  # its details are written, not sent yet
    cancel_the_one_just_booked(phone)
    phone.hang_up()
    jobs()
    assert details_to(phone.phone) == []
    assert sms_to(phone.phone) == []  # no link either, so nothing to take back


def test_details_already_sent_are_followed_by_one_saying_cancelled(live, phone):  # noqa: F811
    book_in_hindi(phone)
    jobs()  # details and link go while the caller is still on the line
    assert len(details_to(phone.phone)) == 1 and len(pay_links_to(phone.phone)) == 1
    cancel_the_one_just_booked(phone)
    phone.hang_up()
    jobs()
    bodies = sms_to(phone.phone)
    assert len(bodies) == 3, bodies
    assert bodies[-1] == i18n.t("ivr.sms.cancelled", "hi", ref=the_ref())


# --- 3. speed labels said in words -------------------------------------------------------

# Short forms a voice reads letter by letter, or as something else.
ABBREVIATIONS = re.compile(
    r"\b(?:hrs?|h|km|kms|kg|mins?)\b|किमी|कि\.मी|कि\.ग्रा|কিমি|கி\.மீ|கிமீ|కి\.మీ|ಕಿ\.ಮೀ|ಕಿಮೀ|"
    r"ಕೆಜಿ|કિમી", re.IGNORECASE)
HOURS_WORD = {"en": "hours", "hi": "घंटे", "mr": "तास", "bn": "ঘণ্টা", "ta": "மணி நேர",
              "te": "గంట", "kn": "ಗಂಟೆ", "gu": "કલાક"}


def to_the_speed_question(caller: Caller, lang: str) -> Heard:
    caller.call()
    caller.press(str(i18n.LANGUAGES.index(lang) + 1))
    for keys in ("1", "845438#", "2", "1", "845450#", "7", "1", "9876543210#", "1", "1"):
        caller.press(keys)
    return caller.press("1")  # up to 5 kg: the speed question


@pytest.fixture
def one_hour(monkeypatch):
    monkeypatch.setenv("DISPATCH_DELIVERY_HOURS", "express=1,standard=8,economy=24")
    dispatch.reset_config()
    yield
    monkeypatch.delenv("DISPATCH_DELIVERY_HOURS")
    dispatch.reset_config()


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_the_speeds_are_said_in_words(phone, lang):  # noqa: F811
    heard = to_the_speed_question(phone, lang)
    assert not ABBREVIATIONS.search(heard.text), heard.text
    assert heard.text.count(HOURS_WORD[lang]) >= 3, heard.text  # one for each speed
    heard = phone.press("2")  # normal: the booking read back
    assert t("ivr.confirm.yes", lang) in heard.text
    assert not ABBREVIATIONS.search(heard.text), heard.text
    assert HOURS_WORD[lang] in heard.text


def test_english_says_one_hour_and_hours_and_the_sms_stays_short(phone, one_hour):  # noqa: F811
    heard = to_the_speed_question(phone, "en")
    assert "within one hour" in heard.text and "1 hour" not in heard.text, heard.text
    assert "within 8 hours" in heard.text and "within 24 hours" in heard.text
    phone.press("2")
    phone.press("1")  # book it
    [details] = details_to(phone.phone)
    assert i18n.t("tier.standard", "en", hours=8) in details.body  # "(within 8 hr)"

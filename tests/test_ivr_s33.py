"""Review R4's IVR defects (session 33).

1. A call that drops as "1 = book" is pressed (or whose answer came too late, so Twilio
   played the number's Fallback URL): the booking is made, the caller heard nothing of it
   (or "something went wrong"), and calling back they met the plain menu and booked the
   same parcel again. Now the next call opens with the booking's number, that it needs
   no booking again and how its link comes, until an answer shows the caller heard it;
   and the Fallback URL answers a turn that was done with that turn's answer.
2. The caller's own number keyed in for "send the link to another phone" was told "sent"
   always: also when our SMS cannot reach them, or when the link went minutes ago and
   nothing went now. It is the link again, as tracking sends it.
3. The same other number once per 10 minutes was a clock slot: two SMS 20 s apart across
   a slot's edge, and one of the booking's OTHER_PAYERS spent.
4. Digits were cut to their first 32: the keys after the last * (the answer) were lost.

Real PostgreSQL, Redis and RQ; the clock frozen.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from core import clock
from core.adapters.db import transaction
from core.adapters.models import Booking, Conversation, Person
from core.dialog import spoken
from core.services import ivr
from tests.conftest import post_twilio, run_jobs
from tests.test_ivr import START, Caller, Heard, phone, prompts, step_of, t  # noqa: F401
from tests.test_ivr_link_other import SON, _booked, _send_to, _sms_to
from tests.test_ivr_s30 import book_from_menu, hindi_caller

pytestmark = pytest.mark.db


def _references() -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(Booking.reference).order_by(Booking.id)))


def _to_the_confirm(caller: Caller) -> str:
    """A Hindi caller's booking up to "book it?"; the action URL its 1 goes to."""
    hindi_caller(caller)
    caller.call()
    caller.press("1")  # book
    for keys in ("845438#", "2", "1", "845450#", "7", "1", "9876543210#", "1", "1", "1"):
        caller.press(keys)
    heard = caller.press("2")  # standard
    assert t("ivr.confirm.yes") in heard.text, heard.text
    assert caller.action
    return caller.action


def _fallback(caller: Caller, failed_url: str, code: str = "11205") -> Heard:
    """Twilio at the number's Fallback URL: the answer at ``failed_url`` came too late
    (11205), or could not be played (``code``)."""
    r = post_twilio(caller.client, "/webhooks/voice/fallback",
                    caller.form(ErrorCode=code, ErrorUrl=failed_url))
    assert r.status_code == 200 and r.mimetype == "application/xml"
    return Heard.parse(r.get_data(as_text=True))


def _told_booked(heard: Heard, ref: str) -> bool:
    return t("ivr.callback.booked", digits=spoken.spell_digits(ref)) in heard.text


# --- 1. a booking made as the line dropped ----------------------------------------------

def test_a_call_dropped_as_the_booking_is_made_opens_the_call_back_with_it(
        phone: Caller) -> None:  # noqa: F811
    _to_the_confirm(phone)
    phone.press("1")  # book it: made (committed), but the answer never reached the caller
    phone.hang_up()  # the line dropped
    (ref,) = _references()
    clock.freeze(START + timedelta(minutes=2))
    heard = phone.call()  # calls straight back: what happened to my booking?
    assert _told_booked(heard, ref), heard.text
    assert t("ivr.callback.link_sms") in heard.text, heard.text
    with transaction() as s:
        booking = s.scalar(select(Booking).where(Booking.reference == ref))
        assert booking is not None and booking.expires_at is not None
        minutes = -(-int((booking.expires_at - clock.now()).total_seconds()) // 60)
    assert t("ivr.confirm.pay_time", minutes=minutes) in heard.text, heard.text
    # Before the menu, after the welcome; then the menu as always.
    assert heard.text.index(t("ivr.welcome")) < heard.text.index(
        t("ivr.callback.booked", digits=spoken.spell_digits(ref))) < heard.text.index(
        t("ivr.menu"))
    assert step_of(phone.phone) == "menu"
    # Heard (the caller answered the menu): the next call does not say it again.
    phone.press("9")  # a key the menu has not
    phone.hang_up()
    heard = phone.call()
    assert not _told_booked(heard, ref) and t("ivr.menu") in heard.text, heard.text


def test_said_again_while_no_answer_shows_it_was_heard(phone: Caller) -> None:  # noqa: F811
    _to_the_confirm(phone)
    phone.press("1")
    (ref,) = _references()
    # No status callback at all (lost): the next call closes the last one.
    heard = phone.call()
    assert _told_booked(heard, ref), heard.text
    phone.hang_up()  # hung up while it was said: not known to be heard
    heard = phone.call()
    assert _told_booked(heard, ref), heard.text
    phone.silence()  # the prompt played out: heard
    phone.hang_up()
    assert not _told_booked(phone.call(), ref)


def test_a_booking_heard_made_is_not_said_again(phone: Caller) -> None:  # noqa: F811
    _to_the_confirm(phone)
    heard = phone.press("1")
    (ref,) = _references()
    assert t("ivr.confirm.done", digits=spoken.spell_digits(ref)) in heard.text
    phone.press("1")  # "the booking number again": the caller heard the booking
    phone.hang_up()
    heard = phone.call()
    assert not _told_booked(heard, ref) and t("ivr.menu") in heard.text, heard.text


@pytest.mark.parametrize("after", ["paid", "time_over", "cancelled"])
def test_a_booking_paid_closed_or_out_of_time_is_not_said(phone: Caller, after: str  # noqa: F811
                                                          ) -> None:
    _to_the_confirm(phone)
    phone.press("1")
    phone.hang_up()
    (ref,) = _references()
    with transaction() as s:
        booking = s.scalar(select(Booking).where(Booking.reference == ref))
        assert booking is not None and booking.expires_at is not None
        if after == "paid":
            booking.status = "paid"
        elif after == "cancelled":
            booking.status = "cancelled"
        else:
            clock.freeze(booking.expires_at + timedelta(seconds=1))
    heard = phone.call()
    assert not _told_booked(heard, ref) and t("ivr.menu") in heard.text, heard.text
    with transaction() as s:
        conv = s.scalar(select(Conversation).where(Conversation.channel == "voice",
                                                   Conversation.contact == phone.phone))
        assert conv is not None
        assert ivr.UNHEARD not in (conv.state or {}).get("data", {}), conv.state  # forgotten
    phone.hang_up()
    assert not _told_booked(phone.call(), ref)


def test_a_caller_who_stopped_our_sms_hears_how_the_link_can_reach_them(
        phone: Caller) -> None:  # noqa: F811
    with transaction() as s:
        s.add(Person(phone=phone.phone, role="customer", preferred_language="hi",
                     sms_opted_out=True))
    phone.call()
    book_from_menu(phone)
    phone.hang_up()
    (ref,) = _references()
    heard = phone.call()
    assert _told_booked(heard, ref), heard.text
    assert t("ivr.reach.stopped") in heard.text and t("ivr.callback.link_sms") not in heard.text


def test_the_fallback_url_answers_a_turn_that_was_done_with_its_answer(
        phone: Caller) -> None:  # noqa: F811
    confirm_url = _to_the_confirm(phone)
    done = phone.press("1")  # made; its answer came too late for Twilio
    (ref,) = _references()
    heard = _fallback(phone, confirm_url)
    assert heard.xml == done.xml  # what the turn answered: the booking's number
    assert t("ivr.confirm.done", digits=spoken.spell_digits(ref)) in heard.text
    assert t("common.error_try_later") not in heard.text
    assert heard.gather is not None  # the call goes on from there
    # An answer Twilio got but could not play (a document error) is not sent again.
    heard = _fallback(phone, confirm_url, code="12100")
    assert t("common.error_try_later") in heard.text and heard.hangup, heard.xml
    phone.press("0")
    # A turn that never came to an end: the apology, as before.
    heard = _fallback(phone, confirm_url.replace(f"turn={_turn(confirm_url)}", "turn=99"))
    assert t("common.error_try_later") in heard.text and heard.hangup, heard.xml
    # Another call's turn is not answered with this one's.
    other = Caller(phone.client, "+919812300199")
    other.sid = "CAother0001"
    heard = _fallback(other, confirm_url)
    assert t("common.error_try_later") in heard.text and heard.hangup, heard.xml
    # The call's first answer, failed: /webhooks/voice is turn 0.
    first = Caller(phone.client, phone.phone)
    first.sid = phone.sid
    heard = _fallback(first, confirm_url.split("/gather")[0])
    assert t("ivr.welcome") in heard.text, heard.xml
    assert len(_references()) == 1


def _turn(url: str) -> str:
    return url.split("turn=")[1].split("&")[0]


def test_r4_a_fallback_then_a_call_back_does_not_book_the_parcel_twice(
        phone: Caller) -> None:  # noqa: F811
    """R4's probe: the confirm's answer too late, the fallback, a hang-up, a call back."""
    confirm_url = _to_the_confirm(phone)
    phone.press("1")
    _fallback(phone, confirm_url)
    phone.hang_up()
    (ref,) = _references()
    clock.freeze(START + timedelta(minutes=2))
    opening = phone.call()
    assert _told_booked(opening, ref), opening.text


# --- 2. the caller's own number keyed for the link -----------------------------------------

def test_own_number_keyed_for_the_link_is_the_link_again_as_tracking_sends_it(
        live, phone: Caller) -> None:  # noqa: F811
    _booked(phone)
    run_jobs()  # the link is made and sent
    before = len(_sms_to(phone.phone))
    heard = _send_to(phone, phone.phone)
    told_sent = t("ivr.link_phone.sent", digits=spoken.spell_digits(phone.phone[-4:]))
    assert t("ivr.track.link_sent") in heard.text and told_sent not in heard.text, heard.text
    assert len(_sms_to(phone.phone)) == before + 1  # it went again
    assert step_of(phone.phone) == "done"
    # Asked again a minute later: nothing goes, and they hear so, with when it can.
    clock.freeze(START + timedelta(minutes=1))
    heard = _send_to(phone, phone.phone)
    assert t("ivr.track.link_recent", minutes=ivr.link_again_in(
        clock.now(), START + ivr.payments.LINK_AGAIN_EVERY)) in heard.text, \
        heard.text
    assert told_sent not in heard.text and t("ivr.track.link_sent") not in heard.text
    assert len(_sms_to(phone.phone)) == before + 1


def test_own_number_keyed_for_the_link_after_sms_stop_is_not_told_sent(
        live, phone: Caller) -> None:  # noqa: F811
    """R4's probe: the caller stopped our SMS (no WhatsApp either): nothing can go."""
    with transaction() as s:
        s.add(Person(phone=phone.phone, role="customer", preferred_language="hi",
                     sms_opted_out=True))
    phone.call()
    heard = book_from_menu(phone)
    assert t("ivr.reach.stopped") in heard.text, heard.text
    run_jobs()  # the link is made (nothing can reach this caller by SMS)
    before = _sms_to(phone.phone)
    heard = _send_to(phone, phone.phone)
    assert t("ivr.link_phone.sent", digits=spoken.spell_digits(phone.phone[-4:])) \
        not in heard.text, heard.text
    assert t("ivr.reach.stopped") in heard.text, heard.text  # why, and what to do
    assert _sms_to(phone.phone) == before


# --- 3. the same other number once per LINK_AGAIN_EVERY -----------------------------------

def test_same_other_number_twice_within_ten_minutes_across_a_slot(live, phone: Caller  # noqa: F811
                                                                  ) -> None:
    """R4's probe: 9 min 50 s and 10 min 10 s after START (a slot of the clock ends
    between): one SMS, and one of the booking's OTHER_PAYERS spent."""
    _booked(phone)
    run_jobs()
    told = t("ivr.link_phone.sent", digits=spoken.spell_digits("6780"))
    clock.freeze(START + timedelta(minutes=9, seconds=50))
    assert told in _send_to(phone, SON).text
    clock.freeze(START + timedelta(minutes=10, seconds=10))  # 20 s later
    assert told in _send_to(phone, SON).text
    assert len(_sms_to(SON)) == 1, _sms_to(SON)
    clock.freeze(START + timedelta(minutes=19, seconds=49))  # still within 10 minutes
    assert told in _send_to(phone, SON).text
    assert len(_sms_to(SON)) == 1
    clock.freeze(START + timedelta(minutes=19, seconds=51))  # 10 minutes on: again
    assert told in _send_to(phone, SON).text
    assert len(_sms_to(SON)) == 2


def test_a_link_sent_before_keys_said_the_second_still_counts_in_its_slot() -> None:
    every = ivr.payments.LINK_AGAIN_EVERY
    slot = int(START.timestamp() // every.total_seconds())
    assert ivr._other_link_sent_at(f"paylink-7-other-0123456789abcdef-{slot}") == START
    at = START + timedelta(minutes=3, seconds=7)
    assert ivr._other_link_sent_at(
        f"paylink-7-other-0123456789abcdef-s{int(at.timestamp())}") == at


# --- 4. the keys after the last * -----------------------------------------------------------

def test_keys_after_star_beyond_32_are_kept(phone: Caller) -> None:  # noqa: F811
    """R4's probe: restarted twice after typos; the 6 digits after the last * are the
    answer, and come after the 32nd key."""
    hindi_caller(phone)
    phone.call()
    phone.press("1")  # book
    keys = "8454319999*8454311111*845430000*845438#"
    assert len(keys) > 33
    heard = phone.press(keys)
    assert t("ivr.place.pincode", digits="8 4 5, 4 3 8") in heard.text, heard.text
    assert step_of(phone.phone) == "pickup_office"

"""Session 39 (hivr5): "1 = cancel" pressed, then hung up at once, Twilio's status callback
handled before the Gather's request with his key (the late keys of test_ivr2_s38),
through the signed voice webhooks; each SMS through the outbox to the Twilio emulator.

1. The booking could no longer be cancelled at all when his key came (the rider picked
   the parcel up meanwhile, or it was delivered): nothing was
   cancelled and nothing said, and he hung up believing it cancelled. One SMS in his
   language says it was not cancelled, why, and how to hear where it is.
2. The late key did cancel: on the line he would hear "cancelled, X goes back"; a
   customer's own cancel sends no SMS (payments._tell_cancelled: he heard it), so nothing
   reached him. One SMS confirms it with the refund he heard (bot.cancel.done_*, what a
   cancel by ops tells a customer). A booking of that same call whose details went is
   told once, by take_back_details' own (ivr.sms.cancelled), not twice.
3. (hivr6) Each "not cancelled" SMS said "call and press 2" (or 5), but a caller with a
   booking draft kept is greeted at "finish your booking?", where 2 starts a new booking
   (his draft thrown away): they now say "press 0, then 2", true at either opening. One
   cancelled by ops or expired meanwhile gets no "not cancelled on your call" after its
   own SMS.

Real PostgreSQL, Redis and RQ; the clock frozen.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import select

from core import clock, i18n
from core.adapters.db import transaction
from core.adapters.models import Booking, Leg, OutboxMessage, Person, SandboxMessage
from core.config import get_settings
from core.domain.booking import Actor, BookingStatus, LegStatus
from core.services import payments
from core.services.booking import move_booking, move_leg
from tests.test_ivr import Caller, book_in_hindi, phone, prompts, step_of, t  # noqa: F401
from tests.test_ivr2_s38 import _data, _hang_up_first, _refunds, _sms, _to_cancel_confirm
from tests.test_ivr_cancel import DROP, said, status_of
from tests.test_ivr_more import jobs
from tests.test_payments_support import (
    advance,
    confirmed_booking,
    new_partner,
    paid_booking,
    run,
)

pytestmark = pytest.mark.db

SYSTEM = Actor("system", "test")


def _picked_up(booking_id: int) -> None:
    """The rider took the job and picked the parcel up (dispatch's part, without its code)."""
    partner = new_partner()
    with transaction() as s:
        b = s.get(Booking, booking_id)
        leg = s.scalar(select(Leg).where(Leg.booking_id == booking_id))
        for bs, ls in ((BookingStatus.DISPATCHING, LegStatus.OFFERING),
                       (BookingStatus.ASSIGNED, LegStatus.ASSIGNED),
                       (BookingStatus.PICKED_UP, LegStatus.PICKED_UP)):
            if ls is LegStatus.ASSIGNED:
                leg.partner_id = partner
            move_leg(s, leg, ls, SYSTEM, "test")
            move_booking(s, b, bs, SYSTEM, "test")


def _received(number: str) -> list[str]:
    """What the phone got: the messages the Twilio emulator accepted for it."""
    with transaction() as s:
        return list(s.scalars(select(SandboxMessage.body).where(
            SandboxMessage.to_addr == number).order_by(SandboxMessage.id)))


def _queued_to(number: str) -> list[OutboxMessage]:
    with transaction() as s:
        found = list(s.scalars(select(OutboxMessage).where(
            OutboxMessage.to_addr.in_([number, f"whatsapp:{number}"]))
            .order_by(OutboxMessage.id)))
        s.expunge_all()
        return found


def _in_language(number: str, lang: str) -> None:
    with transaction() as s:
        s.scalar(select(Person).where(Person.phone == number)).preferred_language = lang


def _to_cancel_confirm_in(caller: Caller, bid: int, lang: str) -> str:
    """Menu, 5, the only booking: "cancel it?" in ``lang``; its reference."""
    if lang == "en":
        return _to_cancel_confirm(caller, bid)[0]
    with transaction() as s:
        ref = s.get(Booking, bid).reference
    caller.call()
    caller.press("5")
    caller.press("1")
    assert step_of(caller.phone) == "cancel_confirm"
    return ref


# --- 1. a late "cancel" when it could not be cancelled any more ------------------------------

@pytest.mark.parametrize("lang", ["en", "hi"])
def test_a_late_cancel_key_after_the_pickup_says_by_sms_it_was_not_cancelled(
        live, phone: Caller, lang: str) -> None:  # noqa: ANN001, F811
    bid = paid_booking(phone.phone)
    _in_language(phone.phone, lang)
    ref = _to_cancel_confirm_in(phone, bid, lang)
    _picked_up(bid)  # the rider picks the parcel up as he presses "1" and hangs up
    _hang_up_first(phone)
    heard = phone.press("1")
    assert heard.hangup and heard.gather is None, heard.text
    assert status_of(ref) == "picked_up" and _refunds(bid) == []
    (sms,) = _sms(f"ivr-not-cancelled-{bid}-")
    expected = i18n.t("ivr.sms.not_cancelled_picked_up", lang, ref=ref)
    assert sms.body == expected, sms.body
    # Twilio's retry: answered from record, no second SMS.
    phone.repeat()
    assert len(_sms(f"ivr-not-cancelled-{bid}-")) == 1 and status_of(ref) == "picked_up"
    jobs()
    assert _received(phone.phone).count(expected) == 1, _received(phone.phone)


def test_a_late_cancel_key_after_delivery_says_it_could_not_be_cancelled(
        live, phone: Caller) -> None:  # noqa: F811
    bid = paid_booking(phone.phone)
    ref = _to_cancel_confirm_in(phone, bid, "en")
    advance(bid, new_partner(), to="delivered")
    _hang_up_first(phone)
    assert phone.press("1").hangup
    assert status_of(ref) == "delivered" and _refunds(bid) == []
    (sms,) = _sms(f"ivr-not-cancelled-{bid}-")
    expected = i18n.t("ivr.sms.not_cancelled_closed", "en", ref=ref)
    assert sms.body == expected and "2" in expected, sms.body
    jobs()
    assert _received(phone.phone).count(expected) == 1, _received(phone.phone)


def test_a_late_cancel_key_after_ops_cancelled_it_cancels_nothing_more(
        live, phone: Caller) -> None:  # noqa: F811
    """Ops cancelled it as he pressed "1" (hivr6): his key, late, cancels nothing more, no
    second refund, and adds nothing to ops' own SMS ("cancelled, X goes back"): "was not
    cancelled on your call" after it would read as if the booking still stood."""
    bid = paid_booking(phone.phone)
    ref, total = _to_cancel_confirm(phone, bid)
    jobs()
    before = _received(phone.phone)
    with transaction() as s:
        payments.cancel_booking(s, s.get(Booking, bid), Actor("ops", "1"), "asked by phone")
    _hang_up_first(phone)
    assert phone.press("1").hangup
    assert status_of(ref) == "cancelled" and len(_refunds(bid)) == 1
    assert _sms(f"ivr-not-cancelled-{bid}-") == [] and _sms(f"ivr-late-cancelled-{bid}-") == []
    phone.repeat()  # Twilio's retry: nothing either
    assert _sms(f"ivr-not-cancelled-{bid}-") == []
    jobs()
    got = _received(phone.phone)[len(before):]
    # Ops' "cancelled, X goes back", then the refund's own word (the sandbox pays it at once).
    assert got[0] == i18n.t("bot.cancel.done_refund", "en", ref=ref, refund_paise=total), got
    assert i18n.t("ivr.sms.not_cancelled_closed", "en", ref=ref) not in got, got
    assert [m.dedupe_key.split("-")[0] for m in _queued_to(phone.phone)][-len(got):] == [
        "cancelled", "refund"], got


def test_a_late_cancel_key_after_the_booking_expired_adds_nothing_to_its_sms(
        live, phone: Caller) -> None:  # noqa: F811
    """Unpaid, its time to pay ran out as he pressed "1" (hivr6): the expiry's own SMS
    ("the time to pay is over, the booking is closed") is all he gets."""
    bid = confirmed_booking(phone.phone)
    run()  # its link
    jobs()
    with transaction() as s:
        b = s.get(Booking, bid)
        ref, expires_at = b.reference, b.expires_at
    before = _received(phone.phone)
    phone.call()
    phone.press("5")
    phone.press("1")
    assert step_of(phone.phone) == "cancel_confirm"
    clock.freeze(expires_at + timedelta(minutes=2))
    assert payments.expire_unpaid() == 1  # the gateway says the link is unpaid: closed
    _hang_up_first(phone)
    assert phone.press("1").hangup
    assert status_of(ref) == "expired"
    assert _sms(f"ivr-not-cancelled-{bid}-") == [] and _sms(f"ivr-late-cancelled-{bid}-") == []
    jobs()
    assert _received(phone.phone)[len(before):] == [i18n.t("payment.expired", "en", ref=ref)]


def test_on_the_line_a_booking_picked_up_meanwhile_is_said_not_sent(
        live, phone: Caller) -> None:  # noqa: F811
    """A guard: on the line he hears "it cannot be cancelled now": no SMS."""
    bid = paid_booking(phone.phone)
    ref = _to_cancel_confirm_in(phone, bid, "en")
    _picked_up(bid)
    heard = phone.press("1")
    assert t("ivr.cancel.picked_up", "en") in heard.text, heard.text
    assert status_of(ref) == "picked_up" and _sms("ivr-not-cancelled-") == []


# --- 2. a late "cancel" that cancelled ------------------------------------------------------

def test_on_the_line_a_customers_cancel_sends_no_sms(live, phone: Caller) -> None:  # noqa: F811
    """What a cancel on the line sends: nothing (he hears it; payments._tell_cancelled
    tells only a cancel by someone else), until the refund is processed days later."""
    bid = paid_booking(phone.phone)
    ref, total = _to_cancel_confirm(phone, bid)
    before = len(_queued_to(phone.phone))
    heard = phone.press("1")
    assert t("ivr.cancel.done_refund", "en", refund=said(total)) in heard.text, heard.text
    assert status_of(ref) == "cancelled"
    assert len(_queued_to(phone.phone)) == before
    assert _sms(f"ivr-late-cancelled-{bid}-") == []


def test_a_late_cancel_key_that_cancelled_confirms_it_by_sms(live, phone: Caller) -> None:  # noqa: F811
    bid = paid_booking(phone.phone)
    ref, total = _to_cancel_confirm(phone, bid)
    _hang_up_first(phone)
    assert phone.press("1").hangup
    assert status_of(ref) == "cancelled"
    (refund,) = _refunds(bid)
    assert refund.amount_paise == total
    (sms,) = _sms(f"ivr-late-cancelled-{bid}-")
    expected = i18n.t("bot.cancel.done_refund", "en", ref=ref, refund_paise=total)
    assert sms.body == expected, sms.body
    assert _sms("ivr-not-cancelled-") == []
    phone.repeat()  # Twilio's retry: nothing twice
    assert len(_sms(f"ivr-late-cancelled-{bid}-")) == 1 and len(_refunds(bid)) == 1
    jobs()
    assert _received(phone.phone).count(expected) == 1, _received(phone.phone)


def test_a_late_cancel_key_with_a_riders_fee_confirms_the_fee_and_the_refund(
        live, phone: Caller) -> None:  # noqa: F811
    """A rider had the job when he heard "cancel it?": he heard the fee and the refund."""
    bid = paid_booking(phone.phone)
    advance(bid, new_partner(), to="assigned")
    with transaction() as s:
        quote = payments.cancellation_preview(s, s.get(Booking, bid))
        ref = s.get(Booking, bid).reference
    assert quote.fee_paise > 0 and quote.refund_paise > 0
    phone.call()
    phone.press("5")
    heard = phone.press("1")
    assert t("ivr.cancel.fee", "en", place=DROP, fee=said(quote.fee_paise),
             refund=said(quote.refund_paise)) in heard.text, heard.text
    _hang_up_first(phone)
    assert phone.press("1").hangup
    assert status_of(ref) == "cancelled"
    (sms,) = _sms(f"ivr-late-cancelled-{bid}-")
    assert sms.body == i18n.t("bot.cancel.done_fee", "en", ref=ref,
                              refund_paise=quote.refund_paise, fee_paise=quote.fee_paise)


def test_a_late_cancel_of_a_booking_of_that_call_whose_details_went_is_told_once(
        live, phone: Caller) -> None:  # noqa: F811
    """Booked and cancelled in one call, its details sent meanwhile: take_back_details'
    "cancelled, as you asked on the call" is the one SMS of the cancel."""
    book_in_hindi(phone)
    jobs()  # details and link go while the caller is still on the line
    phone.press("0")  # the menu
    phone.press("5")
    phone.press("1")  # the only one
    assert step_of(phone.phone) == "cancel_confirm"
    _hang_up_first(phone)
    assert phone.press("1").hangup
    with transaction() as s:
        ref = s.scalars(select(Booking.reference)).one()
    assert status_of(ref) == "cancelled"
    assert [m.body for m in _sms("ivr-cancelled-")] == [
        i18n.t("ivr.sms.cancelled", "hi", ref=ref)]
    assert _sms("ivr-late-cancelled-") == [] and _sms("ivr-not-cancelled-") == []


# --- 3. what the SMS says to press, followed ------------------------------------------------
# hivr6: a caller whose booking draft is kept (a call dropped mid-booking, within a day) is
# greeted at "finish your booking?", where 2 starts a new one (the draft thrown away) and 5
# is no choice; at the menu otherwise. Each ivr.sms.not_cancelled* says "press 0" first:
# the menu at either opening, the draft kept.

def _keys_to_press(sms: str) -> list[str]:
    """The keys an SMS says to press once its number (ivr_phone) is called, in order."""
    number = get_settings().twilio_voice_number
    assert number in sms, sms
    return re.findall(r"[0-9]", sms.split(number, 1)[1])


def _draft_kept(caller: Caller) -> None:
    """A call dropped at the drop's pincode, a pickup chosen: a draft kept for a day."""
    caller.call()
    caller.press("1")  # send a parcel
    caller.press("845438#")
    caller.press("2")  # Bettiah
    caller.press("1")
    caller.hang_up()
    clock.freeze(clock.now() + timedelta(minutes=10))


def _follow(caller: Caller, sms: str) -> str:
    """He calls and presses what ``sms`` says; what he heard after his last key."""
    opening = caller.call()
    keys = _keys_to_press(sms)
    assert keys, sms
    heard = opening
    for key in keys:
        heard = caller.press(key)
    return heard.text


@pytest.mark.parametrize("lang", ["en", "hi"])
def test_a_caller_with_a_draft_who_does_what_the_sms_says_hears_where_his_parcel_is(
        live, phone: Caller, lang: str) -> None:  # noqa: F811
    """The late "1 = cancel" after the pickup, with a draft kept: its SMS, followed, tells
    where the parcel is; the draft is still offered after (old: "press 2" at "finish your
    booking?" threw it away and started a new booking)."""
    bid = paid_booking(phone.phone)
    _in_language(phone.phone, lang)
    with transaction() as s:
        ref = s.get(Booking, bid).reference
    _draft_kept(phone)
    heard = phone.call()
    assert step_of(phone.phone) == "resume", heard.text
    phone.press("0")  # the menu, the draft kept
    phone.press("5")
    phone.press("1")
    assert step_of(phone.phone) == "cancel_confirm"
    _picked_up(bid)
    _hang_up_first(phone)
    assert phone.press("1").hangup
    (sms,) = _sms(f"ivr-not-cancelled-{bid}-")
    clock.freeze(clock.now() + timedelta(minutes=5))
    _follow(phone, sms.body)
    assert step_of(phone.phone) == "track"
    assert _data(phone.phone).get("slots", {}).get("pickup"), _data(phone.phone)
    assert status_of(ref) == "picked_up"
    phone.press("0")
    phone.press("1")  # send a parcel: the draft is offered again
    assert step_of(phone.phone) == "resume"


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
@pytest.mark.parametrize("draft", [True, False])
@pytest.mark.parametrize(("key", "step"), [("ivr.sms.not_cancelled_picked_up", "track"),
                                           ("ivr.sms.not_cancelled_closed", "track"),
                                           ("ivr.sms.not_cancelled", "cancel_pick")])
def test_each_not_cancelled_sms_leads_where_it_says_in_every_language(
        live, phone: Caller, lang: str, draft: bool, key: str, step: str) -> None:  # noqa: F811
    """Whatever the call opens at ("finish your booking?" with a draft kept, the menu
    without), the keys each SMS names reach what it promises: where the parcel is (2), or
    the bookings to cancel, their amounts said again (5); a draft is kept."""
    bid = paid_booking(phone.phone)
    _in_language(phone.phone, lang)
    with transaction() as s:
        ref = s.get(Booking, bid).reference
    if draft:
        _draft_kept(phone)
    sms = i18n.t(key, lang, ref=ref)
    _follow(phone, sms)
    assert step_of(phone.phone) == step, (lang, _keys_to_press(sms))
    assert bool(_data(phone.phone).get("draft_step")) is draft

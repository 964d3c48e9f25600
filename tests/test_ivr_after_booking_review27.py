"""Review r6 on the phone (IVR): what a caller hears after booking, where the chat was
just put right (core.dialog.booking, core.services.conversation). Calls go through the
real, signed voice webhooks (the ``Caller`` of tests/test_ivr.py); payments through the
sandbox gateway. Each test fails on the code as it was; its docstring says what was
wrong and what should happen.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core.adapters.db import transaction
from core.adapters.models import Booking, Leg, Person
from core.dialog import spoken
from core.domain.booking import Actor, BookingStatus, LegStatus
from core.services import payments
from core.services.booking import move_booking, move_leg
from tests.test_ivr import Caller, Heard, phone, prompts, step_of, t  # noqa: F401
from tests.test_ivr_cancel import DROP, said, status_of, unpaid_booking
from tests.test_payments_support import advance, new_partner, paid_booking

pytestmark = pytest.mark.db


def reference_of(booking_id: int) -> str:
    with transaction() as s:
        return s.get(Booking, booking_id).reference


def picked_up(booking_id: int) -> None:
    """The rider picks the parcel up (dispatch's part, played on the single leg)."""
    with transaction() as s:
        leg = s.scalar(select(Leg).where(Leg.booking_id == booking_id))
        move_leg(s, leg, LegStatus.PICKED_UP, Actor.system(), "test")
        move_booking(s, s.get(Booking, booking_id), BookingStatus.PICKED_UP, Actor.system(),
                     "test")


# --- 1. the cancel question asked again once the parcel is picked up -------------------

@pytest.mark.parametrize("answer", ["7", "*", ""], ids=["wrong_key", "star", "silence"])
def test_the_cancel_question_asked_again_after_pickup_says_it_cannot_be_cancelled(
        live, phone, answer: str):  # noqa: F811
    """"Cancel the booking to Bettiah? A rider is already coming, so ten rupees go to the
    rider... 1 cancel it, 2 keep it"; the rider picks the parcel up while she listens. A
    key the question does not take, star or silence asks it again with a fresh quote:
    not allowed now, which voice._cancel_confirm_prompt said as "Our team already gave
    your money back" (cancel_kind reads a quote of nothing back as paid_back), and a 1
    then would only be told it cannot be cancelled. She should hear the booking cannot be
    cancelled now, the parcel being picked up, and the menu."""
    bid = paid_booking(phone.phone)  # an English-speaking caller
    advance(bid, new_partner(), to="assigned")
    ref = reference_of(bid)
    with transaction() as s:
        quote = payments.cancellation_preview(s, s.get(Booking, bid))
    assert quote.fee_paise > 0
    phone.call()
    phone.press("5")
    heard = phone.press("1")
    assert t("ivr.cancel.fee", "en", place=DROP, fee=said(quote.fee_paise),
             refund=said(quote.refund_paise)) in heard.text, heard.text

    picked_up(bid)
    heard = phone.press(answer) if answer else phone.silence()
    assert t("ivr.cancel.paid_back", "en", place=DROP) not in heard.text, heard.text
    assert t("ivr.cancel.picked_up", "en") in heard.text, heard.text
    assert t("ivr.menu", "en") in heard.text and step_of(phone.phone) == "menu"
    heard = phone.press("1")  # the menu's 1: a new booking, not "cancel it"
    assert t("ivr.pickup.ask", "en") in heard.text, heard.text
    assert status_of(ref) == BookingStatus.PICKED_UP.value


# --- 3. tracking a booking closed because its payment link could not be made -----------

def test_tracking_a_booking_whose_link_was_refused_says_why_it_closed(phone):  # noqa: F811
    """The gateway refused the booking's payment link: it closes (expired) and she is told
    by SMS "we could not make your payment link" (payments._close_unlinked). Tracking it
    on the phone said "time ran out, so it is closed" and "the time to pay for this
    booking is over, press 1 to book it again" (IvrPorts.payment_over took every expired
    booking for one whose time to pay ran out): she never had a link to pay by. She
    should hear it closed because we could not make its payment link (as the chat says
    it, booking.status.no_link)."""
    with transaction() as s:
        s.add(Person(phone=phone.phone, role="customer", preferred_language="en"))
    ref = unpaid_booking(phone.phone)
    with transaction() as s:
        bid = s.scalar(select(Booking.id).where(Booking.reference == ref))
    payments._link_refused(bid, "the gateway said no")
    assert status_of(ref) == BookingStatus.EXPIRED.value
    phone.call()
    phone.press("2")
    heard = phone.press("1")
    spelled = spoken.spell_digits(ref)
    assert t("booking.status.expired", "en", ref=spelled) not in heard.text, heard.text
    assert t("ivr.rebook.offer", "en") not in heard.text, heard.text
    assert t("booking.status.no_link", "en", ref=spelled) in heard.text, heard.text
    assert t("ivr.menu", "en") in heard.text

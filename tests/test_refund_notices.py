"""A payment the booking cannot take is given back, and the customer hears why at once,
in their language: after the time to pay was over, a second payment on a paid booking,
a wrong amount while the booking still awaits payment (payments.record_capture). Not only
days later, when the refund settles (payment.refunded). Once per payment, however often
the gateway delivers its event.

Through RQ, the real client, the sandbox emulator and its signed webhooks."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from core import clock, i18n
from core.adapters.db import transaction
from core.adapters.models import Booking, OutboxMessage, Person
from core.adapters.payment_models import GatewayEvent, Refund
from core.domain.booking import BookingStatus
from sandbox import razorpay as emu
from tests.test_payments_support import (
    advance,
    booking,
    confirmed_booking,
    ledger_checked,
    link_of,
    new_partner,
    paid_booking,
    pay,
    run,
    summary,
)

pytestmark = pytest.mark.db


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


# --- helpers --------------------------------------------------------------------------------


def speaks(booking_id: int, lang: str) -> str:
    """The booking's customer prefers ``lang``; returns their phone."""
    with transaction() as s:
        person = s.get(Person, booking(booking_id).customer_id)
        assert person is not None
        person.preferred_language = lang
        s.get(Booking, booking_id).language = lang  # made in it (a booking keeps its language)
        return person.phone


def late_payment(booking_id: int, amount: int) -> dict:
    """A payment of ``amount`` the gateway captured for the booking (its notes name it),
    delivered as payment.captured twice under one event id (a redelivery), then once more
    under another (the gateway's retry of a delivery it thinks failed); all run."""
    with transaction() as s:
        reference = s.get(Booking, booking_id).reference
    payment = emu.create_payment(amount, notes={"booking_id": str(booking_id),
                                                "reference": reference})
    event = emu._event("payment.captured", {"payment": payment})
    emu.control("webhook_repeat", 2)
    emu.send_webhooks([event])
    run()
    emu.control("webhook_repeat", 1)
    emu.send_webhooks([event])
    run()
    return payment


def told(booking_id: int) -> list[tuple[str, str, str]]:
    """(to, body, dedupe key) of what the customer was told about a payment going back."""
    with transaction() as s:
        rows = s.execute(select(OutboxMessage.to_addr, OutboxMessage.body,
                                OutboxMessage.dedupe_key).where(
            OutboxMessage.booking_id == booking_id,
            OutboxMessage.dedupe_key.like("late-pay-%")).order_by(OutboxMessage.id)).all()
    return [(str(to), str(body), str(key)) for to, body, key in rows]


def capture_outcomes() -> list[str]:
    with transaction() as s:
        return [str(o) for o in s.scalars(select(GatewayEvent.outcome).where(
            GatewayEvent.event == "payment.captured").order_by(GatewayEvent.id))]


def refunds_of(payment_id: str) -> list[int]:
    with transaction() as s:
        return [int(a) for a in s.scalars(select(Refund.amount_paise).where(
            Refund.payment_id == payment_id))]


# --- after the time to pay was over ----------------------------------------------------------


def test_a_payment_after_the_booking_expired_is_told_at_once_in_hindi(live):
    bid = confirmed_booking()
    phone = speaks(bid, "hi")
    run()  # the link is made and sent
    emu.expire_link(link_of(bid).gateway_id)
    run()
    b = booking(bid)
    assert b.status == BookingStatus.EXPIRED.value
    payment = late_payment(bid, b.total_paise)  # captured late, after the link expired
    assert capture_outcomes() == ["refund-late-payment", "duplicate-capture"]
    assert refunds_of(payment["id"]) == [b.total_paise]
    text = i18n.t("payment.after_expiry", "hi", ref=b.reference, refund_paise=b.total_paise)
    assert text.startswith(f"बुकिंग {b.reference}: ₹") and "देर से आए" in text
    assert told(bid) == [(phone, text, f"late-pay-{payment['id']}")]
    assert summary(bid)["escrow_paise"] == 0


# --- a second payment on a booking already paid -----------------------------------------------


@pytest.mark.parametrize(("stage", "lang"), [("paid", "en"), ("assigned", "ta")])
def test_a_second_payment_on_a_paid_booking_is_told_at_once(live, stage: str, lang: str):
    bid = paid_booking()
    phone = speaks(bid, lang)
    if stage == "assigned":
        advance(bid, new_partner(), to="assigned")
    b = booking(bid)
    assert b.status == stage
    payment = late_payment(bid, b.total_paise)
    assert booking(bid).status == stage  # the booking goes on as it was
    assert refunds_of(payment["id"]) == [b.total_paise]
    text = i18n.t("payment.extra", lang, ref=b.reference, refund_paise=b.total_paise)
    assert told(bid) == [(phone, text, f"late-pay-{payment['id']}")]
    s = summary(bid)
    assert s["captured_paise"] == 2 * b.total_paise
    assert s["escrow_paise"] == b.total_paise  # the booking's own payment stays


# --- the wrong amount while the booking awaits payment ---------------------------------------


def test_a_wrong_amount_is_told_at_once_and_the_same_link_then_pays(live):
    bid = confirmed_booking()
    phone = speaks(bid, "bn")
    run()
    total = booking(bid).total_paise
    wrong = total - 100
    payment = late_payment(bid, wrong)
    b = booking(bid)
    assert b.status == BookingStatus.AWAITING_PAYMENT.value
    assert refunds_of(payment["id"]) == [wrong]
    text = i18n.t("payment.wrong_amount", "bn", ref=b.reference, refund_paise=wrong,
                  total_paise=total)
    assert told(bid) == [(phone, text, f"late-pay-{payment['id']}")]
    # What it says is true: the same link still takes the fare, and that pays the booking.
    assert pay(bid).status_code == 200
    run()
    assert booking(bid).status == BookingStatus.PAID.value
    assert len(told(bid)) == 1


def test_a_wrong_amount_after_the_link_ran_out_does_not_ask_to_pay_by_it(live):
    bid = confirmed_booking()
    phone = speaks(bid, "en")
    run()
    link = link_of(bid)
    assert link.expire_by is not None
    # The link's time is over; its expiry has not reached the booking yet (webhook late).
    clock.freeze(link.expire_by + timedelta(seconds=30))
    total = booking(bid).total_paise
    payment = late_payment(bid, total + 500)
    b = booking(bid)
    assert b.status == BookingStatus.AWAITING_PAYMENT.value
    text = i18n.t("payment.wrong_amount_no_link", "en", ref=b.reference,
                  refund_paise=total + 500, total_paise=total)
    assert "link" not in text
    assert told(bid) == [(phone, text, f"late-pay-{payment['id']}")]
    assert pay(bid).status_code == 400  # true: the link cannot be paid any more

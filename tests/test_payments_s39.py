"""A payment made in time whose word reaches us after the booking closed is not called late
(helper hpay3), through RQ, the real razorpay client, the emulator and its signed
webhooks; the clock is frozen and moved.

Session 38 told such a payment apart (payment.expired_unconfirmed) only where the sweep
had closed the booking without the gateway's word. But the gateway may answer at the
expiry, truly, that the link is not paid: a UPI payment she made in the last minute is
still pending at her bank, and is captured minutes after the booking closed. Her payment's
own time at Razorpay (the payment entity's ``created_at``: when she made it; its
``payment.captured`` webhook carries it) was within the time to pay, yet she was told it
"was paid too late" (payment.after_expiry). Now the notice follows the payment's own time:
made in time and before the booking closed -> payment.expired_unconfirmed; made after ->
payment.after_expiry as before. The money goes back in full either way."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from core import clock, i18n
from core.adapters import razorpay_gateway as gw
from core.domain.booking import BookingStatus
from core.services import payments
from sandbox import razorpay as emu
from tests.conftest import release_scheduled
from tests.test_payments_support import (
    booking,
    confirmed_booking,
    ledger_checked,
    link_of,
    run,
    summary,
)
from tests.test_payments_timing import ref, to_customer

pytestmark = pytest.mark.db


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


def linked_booking() -> tuple[int, datetime]:
    """A booking awaiting payment with its link made and sent: (id, its time to pay)."""
    clock.freeze(clock.now())
    bid = confirmed_booking()
    run()
    expires_at = booking(bid).expires_at
    assert expires_at is not None
    return bid, expires_at


def pending_payment(booking_id: int) -> dict:
    """She pays by the booking's link now; the payment is made at Razorpay (its
    ``created_at`` now) but her bank confirms it only later: the link is not paid yet, and
    no webhook of it comes until capture() sends it."""
    link = emu.get_object(link_of(booking_id).gateway_id)
    assert link is not None and link["status"] == "created"
    return emu._attempt(link, "captured")


def capture(payment: dict) -> None:
    """Her bank confirms: Razorpay captures the payment and says so by webhook (signed, to
    /webhooks/razorpay), with the payment as Razorpay has it (its own time unchanged)."""
    emu.send_webhooks([emu._event("payment.captured", {"payment": payment})])
    run()
    for _ in range(3):  # the refund's own jobs and webhooks
        release_scheduled(timedelta(hours=1))
        run()


def stray_payment(booking_id: int) -> dict:
    """A payment naming the booking (its notes) made now, not by its link."""
    b = booking(booking_id)
    return emu.create_payment(b.total_paise, notes={"booking_id": str(booking_id),
                                                    "reference": b.reference})


def sweep_closes_it(booking_id: int, expires_at: datetime) -> None:
    """The sweep, past the time to pay, asks the gateway: the link is not paid (it has
    expired there), so the booking is closed, told so, and its link closed."""
    clock.freeze(expires_at + timedelta(minutes=1, seconds=30))
    assert payments.expire_unpaid() == 1
    run()
    assert booking(booking_id).status == BookingStatus.EXPIRED.value


def link_expiry_closes_it(booking_id: int, expires_at: datetime) -> None:
    """The link expires at its time, and its payment_link.expired webhook closes the
    booking."""
    clock.freeze(expires_at)
    emu.expire_link(link_of(booking_id).gateway_id)
    run()
    assert booking(booking_id).status == BookingStatus.EXPIRED.value


def notices(booking_id: int) -> tuple[str, str]:
    """(payment.expired_unconfirmed, payment.after_expiry) as the customer would get them."""
    b = booking(booking_id)
    args = {"ref": ref(booking_id), "refund_paise": b.total_paise}
    return (i18n.t("payment.expired_unconfirmed", "en", **args),
            i18n.t("payment.after_expiry", "en", **args))


def refunded_in_full(booking_id: int, payment: dict) -> None:
    total = booking(booking_id).total_paise
    assert [(r["payment_id"], r["amount"], r["status"]) for r in emu._all("refund")] == [
        (payment["id"], total, "processed")]
    assert summary(booking_id)["refunded_paise"] == total
    assert summary(booking_id)["escrow_paise"] == 0


@pytest.mark.parametrize("closed_by", ["sweep", "link_expired"])
def test_a_payment_made_in_time_and_captured_after_the_expiry_is_not_called_late(
        live, closed_by):
    bid, expires_at = linked_booking()
    clock.freeze(expires_at - timedelta(minutes=1))
    payment = pending_payment(bid)  # in her time to pay; pending at her bank
    if closed_by == "sweep":  # the gateway answers: the link is not paid
        sweep_closes_it(bid, expires_at)
    else:
        link_expiry_closes_it(bid, expires_at)
    clock.freeze(expires_at + timedelta(minutes=6))
    capture(payment)  # captured minutes after the booking closed
    unconfirmed, late = notices(bid)
    said = to_customer(bid)
    assert said.count(unconfirmed) == 1, said
    assert late not in said
    refunded_in_full(bid, payment)


def test_a_payment_pending_as_the_link_was_cancelled_at_the_gateway_is_not_called_late(live):
    bid, expires_at = linked_booking()
    clock.freeze(expires_at - timedelta(minutes=20))
    payment = pending_payment(bid)
    clock.freeze(expires_at - timedelta(minutes=18))
    gw.client().payment_link.cancel(link_of(bid).gateway_id)  # as the dashboard does
    run()
    assert booking(bid).status == BookingStatus.EXPIRED.value
    clock.freeze(expires_at - timedelta(minutes=15))
    capture(payment)
    unconfirmed, late = notices(bid)
    said = to_customer(bid)
    assert said.count(unconfirmed) == 1, said
    assert late not in said
    refunded_in_full(bid, payment)


@pytest.mark.parametrize("when", ["after_expiry", "after_early_close"])
def test_a_payment_made_after_the_booking_closed_is_still_called_late(live, when):
    bid, expires_at = linked_booking()
    if when == "after_expiry":
        sweep_closes_it(bid, expires_at)
        clock.freeze(expires_at + timedelta(minutes=5))
    else:  # closed inside its time to pay: what comes after the close is late too
        clock.freeze(expires_at - timedelta(minutes=18))
        gw.client().payment_link.cancel(link_of(bid).gateway_id)
        run()
        assert booking(bid).status == BookingStatus.EXPIRED.value
        clock.freeze(expires_at - timedelta(minutes=17, seconds=59))  # the next second
    payment = stray_payment(bid)
    capture(payment)
    unconfirmed, late = notices(bid)
    said = to_customer(bid)
    assert said.count(late) == 1, said
    assert unconfirmed not in said
    refunded_in_full(bid, payment)

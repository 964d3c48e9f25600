"""A payment made before the customer cancelled, whose word came after, is not "paid
after the booking was cancelled" (hpay3's note, after 7255a66).

She pays by UPI; her bank holds the payment; she cancels meanwhile; her bank confirms
minutes later and Razorpay captures it. She was told "{refund} was paid after the booking
was cancelled" (payment.after_cancel), which is false: her payment's own time at Razorpay
(created_at) is before the cancel. She is told payment.expired_unconfirmed ("closed
before we could check your payment"), as for an expiry. A payment made after the cancel
is still after_cancel. The money goes back in full either way."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core import clock, i18n
from core.adapters.db import transaction
from core.services import ledger, payments
from tests.test_payments_s39 import (  # noqa: F401  (ledger_balanced: autouse fixture)
    capture,
    ledger_balanced,
    linked_booking,
    pending_payment,
    refunded_in_full,
)
from tests.test_payments_support import CUSTOMER, booking
from tests.test_payments_timing import ref, to_customer

pytestmark = pytest.mark.db


def _cancel(booking_id: int) -> None:
    with transaction() as s:
        payments.cancel_booking(s, ledger.lock_booking(s, booking_id), CUSTOMER,
                                "no longer needed")


def _said(booking_id: int) -> tuple[str, str]:
    args = {"ref": ref(booking_id), "refund_paise": booking(booking_id).total_paise}
    return (i18n.t("payment.expired_unconfirmed", "en", **args),
            i18n.t("payment.after_cancel", "en", **args))


@pytest.mark.parametrize("made", ["before", "after"])
def test_a_payment_made_before_the_cancel_is_not_called_paid_after_it(live, made):
    bid, expires_at = linked_booking()
    start = expires_at - timedelta(minutes=30)
    clock.freeze(start)
    if made == "before":
        payment = pending_payment(bid)  # pending at her bank
        clock.freeze(start + timedelta(minutes=2))
        _cancel(bid)
    else:
        _cancel(bid)
        clock.freeze(start + timedelta(minutes=2))
        payment = pending_payment(bid)  # the link still open at the gateway
    clock.freeze(start + timedelta(minutes=8))
    capture(payment)
    unconfirmed, after = _said(bid)
    said = to_customer(bid)
    if made == "before":
        assert said.count(unconfirmed) == 1 and after not in said, said
    else:
        assert said.count(after) == 1 and unconfirmed not in said, said
    refunded_in_full(bid, payment)

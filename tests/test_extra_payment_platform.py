"""An extra payment's money in escrow pays no fee or release: a stuck relay ended by ops
after a dashboard refund (found by review of b75c961/dce3c5c; payments._escrow_paid_for).

The holder's fee is now his leg's payout in full, what escrow lacks given by the
platform's commission (payments._platform_gives: rules.fee_platform). "What escrow
lacks" is read from the whole escrow balance, which also holds the money of an extra
payment (a UPI retry charged twice) whose refund is not made yet: it waits behind
another open refund, or the bank refused it and it is retried later. That money is the
customer's, to go back against its own payment; before b75c961 the fee (capped by what
the paying payment had left) never touched it. Now it pays the holder's fee instead of
the platform, and the extra payment's refund later finds escrow short of it.

Through RQ, the real razorpay client, the sandbox emulator and its signed webhooks."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core.adapters.db import transaction
from core.adapters.models import Booking
from core.adapters.payment_models import Refund
from core.domain import ledger as rules
from core.domain.booking import Actor
from core.services import ledger, payments
from sandbox import razorpay as emu
from tests.test_payments_gaps import pay_again
from tests.test_payments_support import failed_jobs, ledger_checked, run
from tests.test_stuck_relay_platform import (
    dashboard_refund,
    held_by_its_only_rider,
    platform_cost,
    quoted,
)

pytestmark = pytest.mark.db
OPS = Actor("ops", "1")
PAYOUT = 3_000


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


def extra_refunds(booking_id: int) -> list[tuple[str, int, str]]:
    """(payment, amount, status) of the booking's extra payments' refund attempts."""
    with transaction() as s:
        return [tuple(r) for r in s.execute(  # type: ignore[misc]
            select(Refund.payment_id, Refund.amount_paise, Refund.status)
            .where(Refund.booking_id == booking_id,
                   Refund.reason == payments.EXTRA_PAYMENT)
            .order_by(Refund.attempt))]


def charged_again(booking_id: int) -> str:
    """One more extra payment captured at the gateway and recorded (its webhook's path)
    while the first one's refund is still open at the gateway."""
    with transaction() as s:
        b = s.get(Booking, booking_id)
        assert b is not None
        total, ref = b.total_paise, b.reference
    payment = emu.create_payment(total, notes={"booking_id": str(booking_id),
                                               "reference": ref})
    assert payments.record_capture(booking_id, payment["id"], total,
                                   cause=f"test:{payment['id']}") == "refund-late-payment"
    return str(payment["id"])


def refunded_at_gateway(payment_id: str) -> int:
    payment = emu.get_object(payment_id)
    assert payment is not None
    return int(payment["amount_refunded"])


def escrow_of(booking_id: int) -> int:
    with transaction() as s:
        return ledger.balance(s, rules.escrow(booking_id))


def test_an_extra_payment_whose_refund_waits_does_not_pay_the_holders_fee(
        live, monkeypatch):
    """Support refunded the whole fare from the dashboard. The customer's UPI app then
    charged her twice more: the first extra payment's refund is open at the gateway, the
    second's waits for it (one open refund per booking), its money in escrow. Ops end
    the stuck relay: the holder's fee must be the platform's cost (the dashboard took
    the booking's money), not taken out of the waiting extra payment. Once the first
    refund settles, the second extra payment goes back in full and no job fails."""
    bid, leg_id = held_by_its_only_rider(monkeypatch, PAYOUT)
    with transaction() as s:
        total = s.get(Booking, bid).total_paise  # type: ignore[union-attr]
    dashboard_refund(bid)
    first = pay_again(bid, settle=False)
    second = charged_again(bid)
    assert extra_refunds(bid) == [(first, total, "pending")]  # the second one waits
    assert escrow_of(bid) == total  # the second extra payment, not refunded yet
    assert quoted(bid, cancel=True) == (0, PAYOUT)
    # The holder's fee: all of it the platform's cost, as with nothing else in escrow.
    assert platform_cost(bid) == [
        ("release_platform", f"fee:leg:{leg_id}:platform", PAYOUT)]
    assert escrow_of(bid) == total
    run()  # the first extra refund settles; its webhook starts the second's
    assert not failed_jobs()
    assert extra_refunds(bid) == [(first, total, "processed"), (second, total, "processed")]
    assert refunded_at_gateway(second) == total


def test_an_extra_payment_whose_refund_failed_is_given_back_in_full_after_the_fee(
        live, monkeypatch):
    """As above, one extra payment whose refund the bank refused: its money is back in
    escrow until the retry. Ops end the stuck relay meanwhile: the retry must still give
    the customer all of her extra payment back, the holder's fee being the platform's."""
    bid, leg_id = held_by_its_only_rider(monkeypatch, PAYOUT)
    with transaction() as s:
        total = s.get(Booking, bid).total_paise  # type: ignore[union-attr]
    dashboard_refund(bid)
    emu.control("refund_outcome", "failed")
    second = pay_again(bid)
    emu.control("refund_outcome", "processed")
    assert extra_refunds(bid) == [(second, total, "failed")]
    assert escrow_of(bid) == total
    assert quoted(bid, cancel=True) == (0, PAYOUT)
    run()
    with transaction() as s:
        payments.retry_refund_now(s, ledger.lock_booking(s, bid), OPS)
    run()
    assert not failed_jobs()
    assert extra_refunds(bid)[-1] == (second, total, "processed")
    assert refunded_at_gateway(second) == total
    assert platform_cost(bid) == [
        ("release_platform", f"fee:leg:{leg_id}:platform", PAYOUT)]


def test_support_refunding_a_delivered_booking_takes_nothing_of_an_extra_payment(live):
    """The rider was paid out of the booking (escrow holds none of its payment); an extra
    payment's refund was refused by the bank, so its money is back in escrow until the
    retry. Support then refunds the booking's payment in full from the dashboard: all of
    it is the platform's cost, and the retry still gives the extra payment back in full."""
    from tests.test_money_escrow_short import OTHER_CUSTOMER, entries
    from tests.test_money_escrow_short import dashboard_refund as support_refunds
    from tests.test_payments_support import paid_booking
    from tests.test_transfer_reversal import paid_out_leg

    # Razorpay pays refunds out of the platform's balance: the rider's payout and the
    # dashboard refund leave it short of the extra payment's refund without this.
    paid_booking(OTHER_CUSTOMER)  # the platform's balance holds other customers' money
    _partner, bid, _leg_id, _t = paid_out_leg()
    with transaction() as s:
        total = s.get(Booking, bid).total_paise  # type: ignore[union-attr]
    emu.control("refund_outcome", "failed")
    extra = pay_again(bid)
    emu.control("refund_outcome", "processed")
    assert extra_refunds(bid) == [(extra, total, "failed")]
    assert escrow_of(bid) == total
    support_refunds(bid)
    assert entries(bid, "outside_refund_platform") == [("outside_refund_platform", total)]
    assert escrow_of(bid) == total  # the extra payment's, untouched
    with transaction() as s:
        payments.retry_refund_now(s, ledger.lock_booking(s, bid), OPS)
    run()
    assert not failed_jobs()
    assert extra_refunds(bid)[-1] == (extra, total, "processed")
    assert refunded_at_gateway(extra) == total

"""Reviewer r2: money after capture (route holds and release, refunds failing and retried,
owed legs, the ledger). Each test states the defect it shows; every one fails on the code
as reviewed. Through RQ, the real razorpay client, the sandbox emulator and its signed
webhooks, as the other payment tests do."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core.adapters import razorpay_gateway as gw
from core.adapters.db import transaction
from core.adapters.models import Booking, Leg
from core.adapters.payment_models import LegTransfer, Refund
from core.domain.booking import Actor, BookingStatus, LegStatus
from core.domain.errors import Conflict
from core.services import admin, ledger, payments
from core.services.booking import move_booking, move_leg
from sandbox import razorpay as emu
from tests.test_payments_support import (
    CUSTOMER,
    advance,
    failed_jobs,
    ledger_checked,
    link_of,
    new_partner,
    paid_booking,
    run,
)

pytestmark = pytest.mark.db
SYSTEM = Actor.system()


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


def refunds(booking_id: int) -> list[Refund]:
    with transaction() as s:
        return list(s.scalars(select(Refund).where(Refund.booking_id == booking_id)
                              .order_by(Refund.attempt)))


# --- 1. a given-back rider's reversed hold stays "on hold" for good ---------------------


def test_a_reversed_hold_of_a_rider_who_gave_the_job_back_does_not_block_his_account(live):
    """Ravi takes a job (his payout is held for him at Razorpay), gives it back before
    pickup, nobody else takes it and the booking is cancelled: the refund's settle
    reverses his hold at the gateway, but _save_transfer returns early for a leg with no
    partner, so his transfer row still says "on_hold". set_payout_account then refuses to
    change his bank account for ever (409 partner_has_jobs, "payouts on hold"), though
    nothing of his is held."""
    partner = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, partner, to="assigned")
    assert payments.hold_leg_transfer(leg_id) == "held"
    run()
    with transaction() as s:  # what dispatch's give-back does: the leg goes back to offering
        leg, b = s.get(Leg, leg_id), s.get(Booking, bid)
        assert leg is not None and b is not None
        leg.partner_id = None
        move_leg(s, leg, LegStatus.OFFERING, SYSTEM, "partner gave the job back")
        move_booking(s, b, BookingStatus.DISPATCHING, SYSTEM, "partner gave the job back")
    with transaction() as s:  # nobody else takes it; the customer cancels (full refund)
        quote = payments.cancel_booking(s, ledger.lock_booking(s, bid), CUSTOMER, "no")
    assert quote.fee_paise == 0
    run()
    assert not failed_jobs()
    (held,) = emu._all("transfer")
    assert held["status"] == "reversed"  # the gateway holds nothing for him any more
    with transaction() as s:
        row = s.scalar(select(LegTransfer).where(LegTransfer.leg_id == leg_id))
        assert row is not None
        row_status = row.status
        try:
            outcome = admin.set_payout_account(s, partner, "acc_newbank0001", actor="ops:1")
        except Conflict as exc:
            pytest.fail(f"the account change is refused ({exc.code}: {exc}); his transfer "
                        f"row says {row_status!r} while Razorpay says {held['status']!r}")
    assert outcome.changed
    assert row_status != "on_hold"


# --- 2. a refund attempt cut by the gateway is counted as a failed try ----------------------


def test_an_attempt_cut_to_what_the_payment_has_left_is_not_counted_as_a_try(live,
                                                                           monkeypatch):
    """Support gave ₹1 back from the dashboard (its event lost); the customer cancels. Our
    refund of the whole fare is refused (more than the payment has left) and _cut_attempt
    asks again at once for the rest, "no try counted". That new attempt fails at the bank
    once. _tries counts the cut attempt as a try too, so with REFUND_ATTEMPTS=2 the
    refund gives up after a single real attempt: no retry is planned, ops are told it is
    stuck, and the customer's money waits in escrow for a person."""
    monkeypatch.setenv("REFUND_ATTEMPTS", "2")
    bid = paid_booking()
    payment_id = link_of(bid).payment_id
    assert payment_id is not None
    total = emu.get_object(payment_id)["amount"]
    real_send = emu.send_webhooks

    def lose_dashboard_refund_events(events):  # a refund with none of our notes
        real_send([e for e in events if not e["event"].startswith("refund.")
                   or e["payload"]["refund"]["entity"]["notes"]])

    monkeypatch.setattr(emu, "send_webhooks", lose_dashboard_refund_events)
    gw.client().payment.refund(payment_id, {"amount": 100})  # support, in the dashboard
    run()  # processed at the gateway; its refund.processed is lost
    emu.control("refund_outcome", "failed")  # the bank refuses the next refunds
    with transaction() as s:
        quote = payments.cancel_booking(s, ledger.lock_booking(s, bid), CUSTOMER, "no")
    assert quote.refund_paise == total
    run()
    rows = refunds(bid)
    assert [(r.status, r.amount_paise) for r in rows] == [
        ("failed", total), ("failed", total - 100)]
    assert rows[0].last_error is not None and rows[0].last_error.startswith("cut:")
    # One real attempt was made and failed: with two allowed, a second one is planned.
    assert rows[1].retry_at is not None, (
        "the refund gave up after one real attempt: the cut attempt counted as a try")

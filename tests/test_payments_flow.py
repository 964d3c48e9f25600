"""Payments end to end: link job -> real razorpay client -> sandbox emulator -> signed
webhooks -> RQ -> ledger, through release, refunds and expiry."""

from __future__ import annotations

from datetime import timedelta

import pytest
import requests
from sqlalchemy import select

from core import clock
from core.adapters.db import transaction
from core.adapters.models import Booking, Leg, OutboxMessage
from core.adapters.payment_models import GatewayEvent, LegTransfer, Refund
from core.adapters.redis_conn import redis_client
from core.domain import ledger as rules
from core.domain.booking import Actor, BookingStatus, LegStatus
from core.domain.errors import Conflict
from core.services import ledger, payments
from core.services.booking import move_booking, move_leg
from sandbox import razorpay as emu
from tests.conftest import release_scheduled
from tests.test_payments_support import (
    CUSTOMER,
    SKIPPED,
    advance,
    booking,
    confirmed_booking,
    failed_jobs,
    ledger_checked,
    link_of,
    new_partner,
    paid_booking,
    pay,
    run,
    summary,
)

pytestmark = pytest.mark.db
SYSTEM = Actor.system()


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


def messages(booking_id: int) -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.booking_id == booking_id).order_by(OutboxMessage.id)))


def test_paying_the_link_moves_the_booking_to_paid_and_asks_for_dispatch(live):
    bid = confirmed_booking()
    run()
    link = link_of(bid)
    assert link.short_url == f"{live.base_url}/sandbox/payment_links/{link.gateway_id}"
    b = booking(bid)
    assert link.amount_paise == b.total_paise and link.reference_id == b.reference
    assert any(link.short_url in m and b.reference in m for m in messages(bid))
    page = requests.get(link.short_url, timeout=5)
    assert page.status_code == 200 and "Pay" in page.text
    assert pay(bid).status_code == 200
    run()
    assert booking(bid).status == BookingStatus.PAID.value
    assert f"dispatch-{bid}" in SKIPPED
    s = summary(bid)
    assert s["captured_paise"] == s["escrow_paise"] == b.total_paise
    with transaction() as sess:
        events = sorted(sess.scalars(select(GatewayEvent.event)))
    assert events == ["payment.captured", "payment_link.paid"]
    assert link_of(bid).status == "paid"
    assert not failed_jobs()


@pytest.mark.parametrize("order,repeat", [("reversed", 1), ("normal", 2), ("reversed", 2)])
def test_out_of_order_and_duplicate_webhooks_capture_once(live, order, repeat):
    emu.control("webhook_order", order)
    emu.control("webhook_repeat", repeat)
    bid = paid_booking()
    b = booking(bid)
    assert summary(bid)["captured_paise"] == b.total_paise
    with transaction() as s:
        assert len(s.scalars(select(GatewayEvent)).all()) == 2  # duplicates stored once
    assert SKIPPED.count(f"dispatch-{bid}") == 1
    assert not failed_jobs()


def test_a_retry_after_a_lost_answer_fetches_the_existing_link(live):
    redis_client().set("sandbox:razorpay:lose_next:create_link", 1)
    bid = confirmed_booking()
    run()  # the link was created at the gateway but the answer was lost: job fails, retries
    assert release_scheduled(timedelta(seconds=11)) == 1
    run()
    link = link_of(bid)
    assert len(emu._all("payment_link")) == 1
    assert link.gateway_id == emu._all("payment_link")[0]["id"]
    assert sum(link.short_url in m for m in messages(bid)) == 1


def test_a_failed_payment_keeps_the_link_payable(live):
    bid = confirmed_booking()
    run()
    assert pay(bid, fail="1").status_code == 200
    run()
    assert booking(bid).status == BookingStatus.AWAITING_PAYMENT.value
    assert any("did not go through" in m for m in messages(bid))
    assert pay(bid).status_code == 200
    run()
    assert booking(bid).status == BookingStatus.PAID.value


def test_an_expired_link_expires_the_booking(live):
    bid = confirmed_booking()
    run()
    emu.expire_link(link_of(bid).gateway_id)
    run()
    assert booking(bid).status == BookingStatus.EXPIRED.value
    assert link_of(bid).status == "expired"
    assert summary(bid)["captured_paise"] == 0


def test_the_sweep_expires_a_booking_whose_expiry_webhook_was_lost(live):
    bid = confirmed_booking()
    run()
    clock.freeze(clock.now() + timedelta(minutes=32))
    assert payments.expire_unpaid() == 1
    run()  # asks the gateway to cancel the link: past its expire_by it is expired there
    assert booking(bid).status == BookingStatus.EXPIRED.value
    assert link_of(bid).status == "expired"
    assert pay(bid).status_code == 400  # it can no longer be paid


def test_delivering_the_leg_releases_payout_and_commission_and_transfers_once(live):
    partner = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, partner, to="delivered")
    b = booking(bid)
    from core.adapters.queue import enqueue

    enqueue("workers.payments.release_leg", leg_id, job_id=f"release-{leg_id}")
    run()
    s = summary(bid)
    assert s["escrow_paise"] == 0
    assert s["released_paise"] == b.total_paise
    assert s["commission_paise"] == b.commission_paise
    with transaction() as sess:
        t = sess.scalar(select(LegTransfer).where(LegTransfer.leg_id == leg_id))
        assert t is not None and t.status in ("released", "processed")
        assert t.amount_paise == b.partner_share_paise
        # releasing the hold paid the payable out: nothing owed to the partner any more
        assert ledger.partner_balance(sess, partner) == 0
        # The platform bears Razorpay's fee on the payment (session 30): its commission
        # less that fee, which the gateway's fees hold.
        # And Route's fee on the transfer (session 31), out of the platform's balance too.
        (fee,) = [p["fee"] for p in emu._all("payment")]
        (route_fee,) = [t["fees"] for t in emu._all("transfer")]
        assert fee > 0 and route_fee > 0
        assert ledger.balance(sess, rules.COMMISSION) == b.commission_paise - fee - route_fee
        assert ledger.balance(sess, rules.FEES) == fee + route_fee
    gw = emu._all("transfer")
    assert len(gw) == 1 and gw[0]["on_hold"] is False and gw[0]["amount"] == b.partner_share_paise
    # A second release (retried job, duplicate enqueue) changes nothing, creates no transfer.
    assert payments.release_leg(leg_id) == "already-released"
    run()
    assert len(emu._all("transfer")) == 1
    assert summary(bid)["released_paise"] == b.total_paise


def test_a_transfer_retry_never_creates_a_second_transfer(live):
    partner = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, partner, to="delivered")
    emu.fail_next("edit_transfer")  # created on hold, then the release call fails
    assert payments.release_leg(leg_id) == "released"
    run()
    assert emu._all("transfer")[0]["on_hold"] is True
    assert release_scheduled(timedelta(seconds=11)) == 1
    run()
    gw = emu._all("transfer")
    assert len(gw) == 1 and gw[0]["on_hold"] is False


def test_cancel_before_a_partner_refunds_in_full(live):
    bid = paid_booking()
    with transaction() as s:
        b = ledger.lock_booking(s, bid)
        q = payments.cancel_booking(s, b, CUSTOMER, "changed my mind")
    total = booking(bid).total_paise
    assert (q.refund_paise, q.fee_paise) == (total, 0)
    assert summary(bid)["refunds_pending_paise"] == total
    run()
    s = summary(bid)
    assert s["refunded_paise"] == total and s["escrow_paise"] == 0
    assert s["refunds_pending_paise"] == 0
    assert booking(bid).status == BookingStatus.REFUNDED.value
    refunds = emu._all("refund")
    assert len(refunds) == 1 and refunds[0]["amount"] == total
    # The job again (a retry) does not refund twice.
    assert payments.refund_booking(bid, "cancelled") == "already-processed"


def test_cancel_after_assignment_keeps_a_fee_for_the_partner(live):
    partner = new_partner()
    bid = paid_booking()
    advance(bid, partner, to="assigned")
    with transaction() as s:
        q = payments.cancel_booking(s, ledger.lock_booking(s, bid), CUSTOMER, "not needed")
    total = booking(bid).total_paise
    assert q.fee_paise > 0 and q.refund_paise + q.fee_paise == total
    run()
    s = summary(bid)
    assert s["fee_paise"] == q.fee_paise and s["refunded_paise"] == q.refund_paise
    assert s["escrow_paise"] == 0
    assert [t["amount"] for t in emu._all("transfer")] == [q.fee_paise]
    assert booking(bid).status == BookingStatus.REFUNDED.value


def test_no_cancel_after_pickup(live):
    partner = new_partner()
    bid = paid_booking()
    advance(bid, partner, to="delivered")
    with pytest.raises(Conflict), transaction() as s:
        payments.cancel_booking(s, ledger.lock_booking(s, bid), CUSTOMER, "too late")


def test_no_partner_refunds_everything_automatically(live):
    bid = paid_booking()
    with transaction() as s:
        from core.services.booking import move_booking

        b = ledger.lock_booking(s, bid)
        move_booking(s, b, BookingStatus.DISPATCHING, CUSTOMER, "test")
        move_booking(s, b, BookingStatus.FAILED, CUSTOMER, "no partner")
    from core.adapters.queue import enqueue

    enqueue("workers.payments.refund_booking", bid, "no_partner", job_id=f"refund-{bid}")
    run()
    assert summary(bid)["refunded_paise"] == booking(bid).total_paise
    assert booking(bid).status == BookingStatus.REFUNDED.value


def test_a_failed_refund_goes_back_to_escrow(live):
    emu.control("refund_outcome", "failed")
    bid = paid_booking()
    with transaction() as s:
        payments.cancel_booking(s, ledger.lock_booking(s, bid), CUSTOMER, "changed my mind")
    run()
    s = summary(bid)
    assert s["refunded_paise"] == 0 and s["escrow_paise"] == booking(bid).total_paise
    with transaction() as sess:
        assert sess.scalar(select(Refund.status)) == "failed"
    assert booking(bid).status == BookingStatus.CANCELLED.value


def test_paying_after_cancellation_is_refunded(live):
    bid = confirmed_booking()
    run()
    url = link_of(bid).short_url
    with transaction() as s:
        payments.cancel_booking(s, ledger.lock_booking(s, bid), CUSTOMER, "no longer needed")
    # The customer pays before the cancel job reached the gateway.
    assert requests.post(url + "/pay", timeout=10).status_code == 200
    run()
    s = summary(bid)
    assert s["captured_paise"] == s["refunded_paise"] == booking(bid).total_paise
    assert s["escrow_paise"] == 0
    assert f"dispatch-{bid}" not in SKIPPED


def test_the_payout_is_held_for_the_assigned_partner_and_released_on_delivery(live):
    partner = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, partner, to="assigned")
    assert payments.hold_leg_transfer(leg_id) == "held"
    assert payments.hold_leg_transfer(leg_id) == "already-held"  # a retry makes no twin
    (held,) = emu._all("transfer")
    assert held["on_hold"] is True and held["recipient"] == "acc_partner0001"
    with transaction() as s:
        payout = s.get(Leg, leg_id).payout_paise
    assert held["amount"] == payout
    with transaction() as s:  # picked up and delivered
        leg = s.get(Leg, leg_id)
        b = s.get(Booking, bid)
        for bs, ls in ((BookingStatus.PICKED_UP, LegStatus.PICKED_UP),
                       (BookingStatus.DELIVERED, LegStatus.DELIVERED)):
            move_leg(s, leg, ls, SYSTEM, "test")
            move_booking(s, b, bs, SYSTEM, "test")
    assert payments.release_leg(leg_id) == "released"
    run()
    (released,) = emu._all("transfer")
    assert released["id"] == held["id"] and released["on_hold"] is False


def test_a_partner_who_gives_the_job_back_has_the_hold_reversed(live):
    first = new_partner()
    second = new_partner("+919812349002", "acc_partner0002")
    bid = paid_booking()
    leg_id = advance(bid, first, to="assigned")
    assert payments.hold_leg_transfer(leg_id) == "held"
    run()  # Razorpay processes the hold: only a processed transfer can be reversed
    with transaction() as s:  # the job goes to someone else
        s.get(Leg, leg_id).partner_id = second
    assert payments.hold_leg_transfer(leg_id) == "held"
    transfers = {t["recipient"]: t for t in emu._all("transfer")}
    assert transfers["acc_partner0001"]["status"] == "reversed"
    assert transfers["acc_partner0002"]["on_hold"] is True


def test_a_reference_taken_by_another_link_is_not_sent_as_this_bookings(live):
    # Another system on the same Razorpay account made a link with this booking's
    # reference (for another amount): the gateway refuses ours as a duplicate, and what
    # it finds by the reference is not this booking's to send.
    from core.adapters import razorpay_gateway as gw

    bid = confirmed_booking()
    b = booking(bid)
    other = gw.client().payment_link.create({
        "amount": b.total_paise + 500, "currency": "INR", "reference_id": b.reference,
        "description": "someone else's", "notes": {"booking_id": "999999"}})
    run()
    assert booking(bid).status == BookingStatus.EXPIRED.value  # closed: it cannot be paid
    sent = messages(bid)
    assert not any(other["short_url"] in m for m in sent)
    with transaction() as s:
        keys = set(s.scalars(select(OutboxMessage.dedupe_key).where(
            OutboxMessage.booking_id == bid)))
    assert f"paylink-{bid}-failed" in keys and f"paylink-{bid}" not in keys  # told why

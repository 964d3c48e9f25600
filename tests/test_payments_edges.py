"""Money at the edges: gateway events that are malformed or name nothing, a payment of
the wrong amount given back, a payout voided after reconciliation saw it, and a
cancellation fee whose partner changed bank account. Each of these went wrong once."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core.adapters.db import transaction
from core.adapters.payment_models import GatewayEvent, Refund
from core.adapters.queue import queue
from core.domain.booking import BookingStatus
from core.services import ledger, payments, reconciliation
from sandbox import razorpay as emu
from tests.conftest import run_jobs
from tests.test_payments_support import (
    CUSTOMER,
    booking,
    confirmed_booking,
    ledger_checked,
    link_of,
    paid_booking,
    run,
    summary,
)

pytestmark = pytest.mark.db


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


def last_outcome(event: str) -> str | None:
    with transaction() as s:
        return s.scalar(select(GatewayEvent.outcome).where(GatewayEvent.event == event)
                        .order_by(GatewayEvent.id.desc()).limit(1))


# --- a refund event without an id settles no refund of ours ----------------------------


def test_a_refund_event_without_an_id_settles_no_refund(live):
    # A paid booking is cancelled; its refund is reserved and its gateway call is still to
    # be made (no gateway refund id yet). A refund.processed event whose entity has no id
    # (malformed) must change nothing, as a transfer event without an id does.
    bid = paid_booking()
    with transaction() as s:
        payments.cancel_booking(s, ledger.lock_booking(s, bid), CUSTOMER, "no")
    nameless = {"entity": "refund", "amount": 100, "currency": "INR", "notes": {},
                "status": "processed"}
    queue().empty()  # the refund job has not run: its gateway call is still to be made
    emu.send_webhooks([emu._event("refund.processed", {"refund": nameless})])
    run_jobs(("sandbox",))  # the webhook reaches the service and is stored
    with transaction() as s:
        (row_id,) = s.scalars(select(GatewayEvent.id).where(
            GatewayEvent.event == "refund.processed"))
    payments.process_event(row_id)
    with transaction() as s:
        (refund,) = s.scalars(select(Refund).where(Refund.booking_id == bid))
        status = refund.status
    assert last_outcome("refund.processed") == "refund-without-id"
    assert status == "requested"
    assert summary(bid)["refunded_paise"] == 0
    assert booking(bid).status == BookingStatus.CANCELLED.value
    # The refund job then finds the attempt settled and never asks the gateway: the
    # customer's money would never go back while the ledger says it did.
    assert payments.refund_booking(bid, "cancelled") == "requested"


# --- a mismatch the ledger fixed by voiding a payout is resolved -------------------------


def test_a_payout_mismatch_resolved_by_its_void_is_no_longer_listed(live):
    # A leg's released transfer fails at the gateway; the hourly run sees the ledger's
    # payout before the failure event voids it ("not settled at the gateway": right then).
    # Once voided, the books match the gateway: the mismatch used to stay open for ever.
    from tests.test_payments_transfers import fail_released, paid_out_leg

    _partner, _leg_id, first = paid_out_leg()
    fail_released(first, webhook=False)
    assert reconciliation.run()["mismatches"] == 1
    emu.send_webhooks([emu._event("transfer.failed", {"transfer": emu.get_object(first["id"])})])
    run()  # voided, and the leg paid again by a new transfer
    assert reconciliation.run()["mismatches"] == 0
    with transaction() as s:
        still_open = [(m["kind"], m["gateway_id"]) for m in reconciliation.list_mismatches(s)]
    assert still_open == []


# --- a wrong-amount payment, given back, does not keep its booking open ----------------


def test_a_refunded_wrong_amount_payment_does_not_keep_the_booking_from_expiring(live):
    # A payment of the wrong amount is captured for a booking awaiting payment: it is
    # refunded (record_capture: "twice or the wrong amount: give it all back"). The link
    # itself was never paid, yet the service marked it paid, and its expiry (webhook or
    # sweep) read the refunded capture as "already paid": the booking stayed awaiting
    # payment for ever, and a later cancel left the link payable.
    from datetime import timedelta

    from core import clock

    bid = confirmed_booking()
    run()
    total = booking(bid).total_paise
    wrong = emu.create_payment(total - 100, notes={"booking_id": str(bid),
                                                 "reference": booking(bid).reference})
    emu.send_webhooks([emu._event("payment.captured", {"payment": wrong})])
    run()
    s = summary(bid)
    assert s["refunded_paise"] == total - 100 and s["escrow_paise"] == 0
    assert booking(bid).status == BookingStatus.AWAITING_PAYMENT.value
    emu.expire_link(link_of(bid).gateway_id)
    run()
    clock.freeze(clock.now() + timedelta(hours=3))
    payments.expire_unpaid()
    assert booking(bid).status == BookingStatus.EXPIRED.value
    assert link_of(bid).status == "expired"  # nobody paid the link (it was marked "paid")


# --- an event id RQ cannot take as a job id is processed -------------------------------


def test_an_event_id_with_a_dot_is_processed_and_does_not_break_the_sweep(client):
    # X-Razorpay-Event-Id is not covered by the signature, and receive_webhook accepts any
    # 1..64 chars; a job id must match RQ's [A-Za-z0-9_-]+. The event was stored and
    # answered 200, its job never enqueued, and every sweep after 5 minutes raised at the
    # re-enqueue, before refund retries, stale refunds, waiting refunds, lost link jobs
    # and unpaid transfers were looked at.
    from datetime import timedelta

    from core import clock
    from sandbox.razorpay_jobs import sign

    body = ('{"entity":"event","event":"payment.failed","contains":["payment"],'
            '"payload":{"payment":{"entity":{"id":"pay_x1","amount":5000,"notes":{}}}}}')
    r = client.post("/webhooks/razorpay", data=body.encode(), headers={
        "Content-Type": "application/json", "X-Razorpay-Event-Id": "evt.2026:1",
        "X-Razorpay-Signature": sign(body)})
    assert r.status_code == 200
    clock.freeze(clock.now() + timedelta(minutes=10))
    payments.sweep()  # raised ValueError from RQ's job id check
    run_jobs()
    assert last_outcome("payment.failed") == "payment-failed"


# --- a malformed (signed) event settles with an outcome --------------------------------


@pytest.mark.parametrize("payload", ['"payload":"x"', '"payload":{"refund":"x"}',
                                     '"payload":{"payment":{"entity":{"id":"pay_1",'
                                     '"amount":100,"notes":{"booking_id":"\\u00b2"}}}}'])
def test_a_malformed_event_is_settled_with_an_outcome_not_a_crash(client, payload):
    # Stored and answered 200, then process_event raised (AttributeError on a payload that
    # is no object; ValueError on a note whose digits str.isdigit accepts and int() does
    # not). The row never got processed_at, so after RQ's retries the sweep enqueued it
    # again every minute, for ever, and 200 of them would fill its batch.
    from sandbox.razorpay_jobs import sign

    event = "payment.captured" if "payment" in payload else "refund.processed"
    body = '{"entity":"event","event":"' + event + '",' + payload + "}"
    r = client.post("/webhooks/razorpay", data=body.encode(), headers={
        "Content-Type": "application/json", "X-Razorpay-Event-Id": "evt_bad1",
        "X-Razorpay-Signature": sign(body)})
    assert r.status_code == 200
    with transaction() as s:
        (row_id,) = s.scalars(select(GatewayEvent.id))
    payments.process_event(row_id)
    with transaction() as s:
        assert s.get(GatewayEvent, row_id).processed_at is not None


# --- a cancellation fee whose hold went to an old account is paid ----------------------


def test_a_fee_whose_hold_is_for_an_old_account_is_paid_before_the_refund(live):
    # The partner was held the payout on their old linked account; they change it (a new
    # bank), then the customer cancels: a fee for them. refund_booking skipped settling the
    # leg first ("a hold covers it"), but that hold is for another account, so the fee
    # needs a new transfer, which the gateway refuses once the refund was asked. With two
    # workers the refund job can run first (here: it does).
    from core.adapters.models import PartnerProfile
    from core.adapters.queue import enqueue
    from tests.test_payments_support import advance, new_partner

    partner = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, partner, to="assigned")
    enqueue("workers.payments.hold_leg_transfer", leg_id, job_id=f"hold-{leg_id}-1")
    run()
    with transaction() as s:
        s.get(PartnerProfile, partner).payout_account_id = "acc_partner0009"
    with transaction() as s:
        fee = payments.cancel_booking(s, ledger.lock_booking(s, bid), CUSTOMER, "no").fee_paise
    assert fee > 0
    assert payments.refund_booking(bid, "cancelled") == "requested"  # a worker takes it first
    run()  # the leg's transfer job, the webhooks
    with transaction() as s:
        assert ledger.leg_paid_out(s, leg_id) == fee
        assert ledger.partner_balance(s, partner) == 0


# --- a partner's earnings show the fee they were promised ---------------------------------


def test_a_cancellation_fee_counts_in_the_partners_earnings_on_the_day_of_the_cancel(live):
    from datetime import timedelta

    from core import clock
    from core.services import partner_app
    from tests.test_payments_support import advance, new_partner

    partner = new_partner()
    bid = paid_booking()
    advance(bid, partner, to="assigned")
    with transaction() as s:
        fee = payments.cancel_booking(s, ledger.lock_booking(s, bid), CUSTOMER, "no").fee_paise
    assert fee > 0
    with transaction() as s:
        e = partner_app.earnings(s, partner)
    assert (e.today_paise, e.week_paise, e.total_paise, e.fees_paise, e.delivered_legs) == (
        fee, fee, fee, fee, 0)
    clock.freeze(clock.now() + timedelta(days=2))
    with transaction() as s:
        e = partner_app.earnings(s, partner)
    assert (e.today_paise, e.week_paise, e.total_paise) == (0, fee, fee)

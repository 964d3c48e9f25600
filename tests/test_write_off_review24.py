"""Review of d6cb9c1 (writing off a reversed payout of Rs 1 or more once the customer's
payment is refunded in full).

Through the ops REST API, RQ, the real razorpay client, the sandbox emulator and its
signed webhooks, as tests/test_reversed_payout_write_off.py does."""

from __future__ import annotations

import pytest
from rq.serializers import JSONSerializer
from sqlalchemy import select

from core.adapters import razorpay_gateway as gw
from core.adapters.db import transaction
from core.adapters.models import Booking, PartnerProfile
from core.adapters.payment_models import Refund
from core.adapters.queue import QUEUES, queue
from core.adapters.redis_conn import redis_client
from core.domain import ledger as rules
from core.services import ledger, payments, reconciliation
from sandbox import razorpay as emu
from tests.test_money_escrow_short import dashboard_refund
from tests.test_payments_support import PaymentsWorker, link_of, run
from tests.test_reversed_payouts_ops import audits, ledger_balanced, ops, resolve, reversed_leg
from tests.test_transfer_reversal import paid_out_leg, send_reversed_event

pytestmark = pytest.mark.db
__all__ = ["ledger_balanced", "ops"]  # fixtures


def held(leg_id: int) -> int:
    with transaction() as s:
        return ledger.leg_reversed_payouts(s, leg_id)[1]


def commission() -> int:
    with transaction() as s:
        return ledger.balance(s, rules.COMMISSION)


def run_service_jobs() -> None:
    """Run the service's own queued jobs, not the emulator's: the bank has not settled
    the refunds the gateway took yet (its refund.processed is still to come)."""
    worker = PaymentsWorker([queue(n) for n in QUEUES], connection=redis_client(),
                            serializer=JSONSerializer)
    worker.work(burst=True, with_scheduler=False, logging_level="WARNING")


def left_at_gateway(payment_id: str) -> int:
    p = gw.client().payment.fetch(payment_id)
    return int(p["amount"]) - int(p["amount_refunded"])


def test_a_refund_the_gateway_made_is_not_counted_twice_to_allow_a_write_off(live, client,
                                                                              ops):
    """What is wrong: payments.refundable_left takes our refunds still "requested" with no
    gateway id off what the gateway says is left. A refund the gateway made but whose
    answer we lost (409 "still in progress", a timeout: the row stays requested, no id,
    until the job's retry) is then counted twice, already in the payment's
    amount_refunded and again as waiting. The payment still has money to give back (no
    one refunded it from the dashboard at all), yet refundable reads 0, so
    resolve_reversed_payout lets ops write off Rs 1 or more as "the customer's payment
    refunded in full": the platform keeps what the customer could still get back, and the
    ledger's memo says something false. Before this change that subtraction could never
    decide anything (the refund path refuses 409 refund_open first).

    What should happen: while the payment can still give something back, a write-off of
    Rs 1 or more is refused (409 write_off_too_large, or refund_open while a refund of the
    booking is under way) and nothing changes. A fix: refuse a write-off of Rs 1 or more
    while the booking has an open refund (_open_row, as the refund action does), so
    refundable_left need not guess which requested refunds the gateway has made."""
    partner, bid, leg_id, t = paid_out_leg()
    with transaction() as s:
        p = s.get(PartnerProfile, partner)
        assert p is not None
        p.kyc_status = "verified"
        ref = s.get(Booking, bid).reference  # type: ignore[union-attr]
    payment_id = link_of(bid).payment_id
    assert payment_id is not None
    total = left_at_gateway(payment_id)  # nothing refunded yet: the fare
    first = (total + 1) // 2  # the rider's payout is disputed: half the fare comes back
    second = t["amount"] - first  # and, later, the rest of his payout
    assert second >= payments.WRITE_OFF_UNDER_PAISE, (total, t["amount"])

    gw.client().transfer.reverse(t["id"], {"amount": first})
    send_reversed_event(t["id"])
    assert held(leg_id) == first
    r = resolve(client, ops, ref, leg_id, "refund")  # ops give that part back
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["amount_paise"] == first
    # The gateway makes the refund, but its answer is lost (a twin request "still in
    # progress"): our attempt stays requested, no gateway id, its retry planned.
    emu.control("in_progress_next:refund", 1)
    run_service_jobs()
    with transaction() as s:
        (row,) = s.scalars(select(Refund).where(Refund.booking_id == bid)).all()
        assert (row.status, row.gateway_refund_id, row.amount_paise) == (
            "requested", None, first)
    assert left_at_gateway(payment_id) == total - first  # made once at the gateway

    # The rest of the payout is reversed too, found by the hourly reconciliation (no
    # webhook comes for a reversal made in the dashboard): held for ops.
    gw.client().transfer.reverse(t["id"], {"amount": second})
    reconciliation.run()
    run_service_jobs()
    assert held(leg_id) == second

    # Nobody refunded the payment from the dashboard: it can still give back the rest.
    left = left_at_gateway(payment_id)
    assert left == total - first >= payments.REFUND_MIN_PAISE
    before = commission()
    r = resolve(client, ops, ref, leg_id, "write_off")
    assert r.status_code == 409, (
        f"wrote off {second} paise as 'refunded in full' while the payment can still "
        f"give back {left}: {r.get_json()}")
    assert r.get_json()["error"]["code"] in ("write_off_too_large", "refund_open")
    assert held(leg_id) == second and commission() == before
    assert [d["decision"] for _, d in audits()] == ["refund"]
    run()  # the bank settles the refund: the customer has that part back
    assert left_at_gateway(payment_id) == total - first


def test_a_gateway_that_does_not_answer_is_no_write_off_too_large(live, client, ops):
    """What is wrong: with the gateway not answering the payment look-up, a write-off of
    Rs 1 or more is answered 409 write_off_too_large ("... can be paid: pay the partner
    again (pay_again) or refund the customer (refund)"), core/api/ops.py _refundable_left
    returning None for a write-off. After support's full refund that is false (a refund
    is 409 payment_refunded) and the code says ops' decision is wrong for good, so a
    client or an operator does not try again; the route's own summary says
    write_off_too_large is "while the payment can still refund", which nobody knows here.

    What should happen: as for a refund, 503 gateway_unavailable (try again: nothing
    changed); a write-off under Rs 1, which needs no answer, may go on without it."""
    _partner, bid, leg_id, t, ref = reversed_leg()
    dashboard_refund(bid)
    emu.fail_next("fetch_payment")
    r = resolve(client, ops, ref, leg_id, "write_off")
    assert (r.status_code, r.get_json()["error"]["code"]) == (503, "gateway_unavailable"), \
        r.get_json()
    assert held(leg_id) == t["amount"] and audits() == []

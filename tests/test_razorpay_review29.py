"""Reviewer r9: money against Razorpay's real behaviours (Route, refunds, webhooks, ledger).

Each test makes the emulator behave as Razorpay does (its documented sandbox controls, or
a signed webhook posted as Razorpay would) and shows where we lose, double or misplace
money, leave the ledger wrong, or leave someone untold."""

from __future__ import annotations

import pytest
from rq import SimpleWorker
from rq.serializers import JSONSerializer
from sqlalchemy import select

from core.adapters.db import transaction
from core.adapters.models import OutboxMessage
from core.adapters.payment_models import Refund
from core.adapters.queue import QUEUES, SANDBOX_QUEUE, queue
from core.adapters.redis_conn import redis_client
from core.config import get_settings
from core.domain import ledger as rules
from core.domain.phone import normalize_phone
from core.services import ledger, payments
from sandbox import razorpay as emu
from tests.conftest import run_jobs
from tests.test_money_fidelity import deliver, held_leg
from tests.test_payments_support import CUSTOMER, confirmed_booking, ledger_checked, paid_booking

pytestmark = pytest.mark.db


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


def run_at_most(n: int) -> None:
    """Run queued jobs through RQ, but no more than ``n`` of them (a loop of jobs that
    feed each other would make a burst worker run for ever)."""
    w = SimpleWorker([queue(q) for q in (*QUEUES, SANDBOX_QUEUE)], connection=redis_client(),
                     serializer=JSONSerializer)
    w.work(burst=True, with_scheduler=False, logging_level="ERROR", max_jobs=n)


def ops_messages(booking_id: int) -> list[str]:
    ops = normalize_phone(get_settings().ops_phone)
    with transaction() as s:
        return list(s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.booking_id == booking_id, OutboxMessage.to_addr.contains(ops))))


# --- 1. Route: a linked account whose transfers keep failing ---------------------------------


def test_a_rider_whose_transfers_keep_failing_is_not_retried_in_a_hot_loop_and_ops_hear(live):
    """Razorpay fails a transfer (transfer.failed) when the linked account cannot take it:
    an account suspended or closed after its KYC was questioned fails every transfer to
    it, not only the first. Today each transfer.failed makes a new transfer at once
    (_on_transfer -> _resettle_after_failure -> settle_leg_transfer), whose failure makes
    the next: an endless loop of transfers hammering Razorpay's API (and its rate limit),
    one webhook each, and nobody is told the rider is not being paid (the 'owed long'
    alert comes only days later, from the sweep). After a few failures the service should
    stop making new transfers at once (back off, as the sweep does) and tell ops once."""
    _partner, bid, leg_id = held_leg(pending=1)  # the hold is still being processed
    deliver(bid, leg_id)  # released: Razorpay still processes it
    (first,) = emu._all("transfer")
    # From now on Razorpay fails every transfer to this rider's linked account.
    emu.control("transfer_outcome", "failed")
    emu.settle_transfer(first["id"])
    run_at_most(120)
    made = [t for t in emu._all("transfer") if t["notes"].get("leg_id") == str(leg_id)]
    assert len(made) <= 4, (
        f"{len(made)} transfers made for one leg, each failing, each made again at once")
    assert ops_messages(bid), "ops were never told the rider's payout keeps failing"
    (told,) = ops_messages(bid)  # once, not once per failed transfer
    assert "failed in a row" in told
    # Handed to the sweep: it makes the next transfer, then backs off; ops hear no more.
    assert payments.sweep()["transfers"] == 1
    run_at_most(120)
    assert len([t for t in emu._all("transfer")
                if t["notes"].get("leg_id") == str(leg_id)]) == len(made) + 1
    assert payments.sweep()["transfers"] == 0  # not due again yet
    assert ops_messages(bid) == [told]


# --- 2. Ledger: a retry under the same key with another body -----------------------------------


def test_an_entry_retried_under_its_key_with_another_amount_is_an_error_not_a_silent_success(
        clean_db):
    """REFERENCE (ledgers, as TigerBeetle/Formance do): ids chosen by the client make a
    retry harmless: same id -> "exists", a different body -> an error. ledger_post()
    answers 'exists' whatever the body: a capture of pay_X recorded for ₹100 and then
    told as ₹120 (a corrected amount, a bug computing it twice differently) is silently
    taken as 'already recorded', and the ₹20 difference is in no book and no log."""
    bid = confirmed_booking()
    with transaction() as s:
        ledger.lock_booking(s, bid)
        assert ledger.post(s, rules.capture(bid, "pay_rev9same", 10_000), actor="test")
    with transaction() as s:
        ledger.lock_booking(s, bid)
        # The very same entry again: a harmless retry.
        assert ledger.post(s, rules.capture(bid, "pay_rev9same", 10_000), actor="test") is False
    with pytest.raises(Exception):  # noqa: B017 (any refusal will do; False is the fault)
        with transaction() as s:
            ledger.lock_booking(s, bid)
            ledger.post(s, rules.capture(bid, "pay_rev9same", 12_000), actor="test")


@pytest.mark.parametrize("first, then", [("failed", "processed"), ("processed", "failed")])
def test_a_refund_told_settled_the_other_way_afterwards_is_a_duplicate_not_a_conflict(
        live, first, then):
    """A refund settles one way only (one key for both outcomes). Told the other way after
    it settled (a refund.processed after the attempt was settled failed), the event is
    a duplicate, as before: the ledger refusing a different entry under that key must
    not fail the event's job (retried, then left failed) nor change the money."""
    bid = paid_booking()
    with transaction() as s:
        payments.cancel_booking(s, ledger.lock_booking(s, bid), CUSTOMER, "no")
    run_jobs(QUEUES)  # asked; the gateway (the sandbox queue) has not answered yet
    with transaction() as s:
        (rid,) = s.scalars(select(Refund.gateway_refund_id).where(Refund.booking_id == bid))
    assert rid is not None
    entity = emu.get_object(rid)
    assert payments.apply_settled_refund({**entity, "status": first}, "test") in (
        "refunded", "refund-failed")
    with transaction() as s:
        before = ledger.booking_summary(s, bid)
    assert payments.apply_settled_refund({**entity, "status": then}, "late") == (
        "duplicate-refund-event")
    with transaction() as s:
        assert ledger.booking_summary(s, bid) == before

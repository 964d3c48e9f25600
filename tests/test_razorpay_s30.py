"""Session 30, Razorpay: a failed payment of our link that carries none of our notes is
still the booking's (found by its order); a late transfer.processed after a partial
reversal agrees with the settle job's entry; RQ's failed-job registry forgets a job that
later succeeded. Through RQ, the real razorpay client, the emulator and its signed
webhooks; the clock is frozen and moved, never waited for."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from core import clock, i18n
from core.adapters import razorpay_gateway as gw
from core.adapters.db import transaction
from core.adapters.models import OutboxMessage, Person
from core.adapters.payment_models import GatewayEvent, LedgerPosting, LedgerTransaction
from core.adapters.queue import enqueue
from core.domain import ledger as rules
from core.domain.booking import BookingStatus
from core.services import ledger, payments
from sandbox import razorpay as emu
from tests.test_payments_support import (
    advance,
    booking,
    confirmed_booking,
    failed_jobs,
    ledger_checked,
    new_partner,
    paid_booking,
    pay,
    run,
)
from tests.test_payments_transfers import deliver, hold

pytestmark = pytest.mark.db


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


def _messages(booking_id: int) -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.booking_id == booking_id).order_by(OutboxMessage.id)))


def _outcomes(event: str) -> list[str | None]:
    with transaction() as s:
        return list(s.scalars(select(GatewayEvent.outcome).where(GatewayEvent.event == event)))


# --- 1. a failed payment without our notes ---------------------------------------------


def test_a_failed_link_payment_without_our_notes_still_asks_to_try_again(live):
    bid = confirmed_booking()
    run()
    emu.control("payment_notes", "none")
    answer = pay(bid, fail="1")
    assert answer.status_code == 200
    payment = emu.get_object(answer.json()["payment_id"])
    assert payment is not None and not payment["notes"] and payment["order_id"]
    run()
    assert _outcomes("payment.failed") == ["payment-failed"]
    again = i18n.t("payment.failed", "en", ref=booking(bid).reference)
    assert _messages(bid).count(again) == 1
    assert booking(bid).status == BookingStatus.AWAITING_PAYMENT.value
    # The next attempt is of the same order, and it pays the booking.
    paid = pay(bid)
    assert paid.status_code == 200
    assert emu.get_object(paid.json()["payment_id"])["order_id"] == payment["order_id"]
    run()
    assert booking(bid).status == BookingStatus.PAID.value
    assert failed_jobs() == []


def test_a_failed_payment_of_an_order_not_ours_is_no_bookings(live):
    bid = confirmed_booking()
    run()
    foreign = emu.put_object({**emu._payment(
        {"amount": 5000, "currency": "INR", "description": "theirs", "customer": {},
         "notes": {}, "order_id": "order_unknown000001"}, "failed"), "notes": []})
    emu.send_webhooks([emu._event("payment.failed", {"payment": foreign})])
    run()
    assert _outcomes("payment.failed") == ["payment-failed"]
    assert _messages(bid)[-1:] != [i18n.t("payment.failed", "en", ref=booking(bid).reference)]
    assert failed_jobs() == []


# --- 2. a late transfer.processed after a partial reversal --------------------------------


def _payout_entries() -> list[tuple[int, str]]:
    """Every transfer_processed entry: (amount paid out, gateway transfer id)."""
    with transaction() as s:
        return sorted((-int(a), str(ref)) for a, ref in s.execute(
            select(LedgerPosting.amount_paise, LedgerTransaction.gateway_ref)
            .join(LedgerTransaction, LedgerTransaction.id == LedgerPosting.transaction_id)
            .where(LedgerTransaction.kind == rules.EntryKind.TRANSFER_PROCESSED.value,
                   LedgerPosting.account_kind == rules.AccountKind.PARTNER_PAYABLE.value)))


def test_a_late_transfer_processed_after_a_partial_reversal_keeps_the_settled_payout(live):
    # Released while the gateway still processes it; the gateway processes it (its
    # transfer.processed, the full amount, is delivered late); ops reverse part of it in
    # the dashboard; the sweep's settle of the unpaid leg posts what is left. Then the
    # late webhook: the event job must not fail, and nothing more is recorded.
    partner = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, partner, to="assigned")
    emu.control("pending_next:transfer", 1)
    hold(leg_id)
    deliver(bid, leg_id)
    (t,) = emu._all("transfer")
    assert (t["status"], t["on_hold"]) == ("pending", False) and _payout_entries() == []
    emu.settle_transfer(t["id"])  # its webhook is queued, not delivered yet
    gw.client().transfer.reverse(t["id"], {"amount": 500})
    assert payments.settle_leg_transfer(leg_id) == "released"
    left = t["amount"] - 500
    assert _payout_entries() == [(left, t["id"])]
    run()
    assert _outcomes("transfer.processed") == ["transfer-processed-before"]
    assert _payout_entries() == [(left, t["id"])]  # nothing more recorded
    assert failed_jobs() == []



# --- 3. a rider owed long for want of a payout account --------------------------------


OPERATOR = "+919000000097"


@pytest.mark.parametrize("lang", ["kn", "en"])
def test_a_rider_owed_a_week_without_a_payout_account_is_told_as_such(live, lang):
    with transaction() as s:
        s.add(Person(phone=OPERATOR, name="Meena", preferred_language=lang, role="ops"))
    partner = new_partner(account=None)
    bid = paid_booking()
    leg_id = advance(bid, partner, to="delivered")
    enqueue("workers.payments.release_leg", leg_id, job_id=f"release-{leg_id}")
    run()
    start = clock.now()
    for hours in range(0, 9 * 24, 6):
        clock.freeze(start + timedelta(hours=hours, minutes=1))
        payments.sweep()
        run()
    with transaction() as s:
        owed = ledger.leg_payable(s, leg_id) - ledger.leg_paid_out(s, leg_id)
        told = list(s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.to_addr == OPERATOR).order_by(OutboxMessage.id)))
    assert owed > 0
    said = i18n.t("payment.ops_owed_long_no_account", lang, ref=booking(bid).reference,
                  leg=leg_id, payout_paise=owed, days=7)
    assert told.count(said) == 1, told  # once, a week on
    assert failed_jobs() == []


# --- 4. a job failed for good, then run again under its id and succeeded -----------------


@pytest.mark.parametrize("worker_class", ["JobLoggingSimpleWorker", "JobLoggingWorker"])
def test_a_job_that_succeeds_after_failing_for_good_leaves_the_failed_count(client,
                                                                            worker_class):
    from rq.registry import FailedJobRegistry
    from rq.serializers import JSONSerializer

    from core.adapters import queue as rq_queue
    from core.adapters.redis_conn import redis_client
    from tests.test_metrics_jobs import _gauge

    def work() -> None:
        worker = getattr(rq_queue, worker_class)(
            [rq_queue.queue("default")], connection=redis_client(), serializer=JSONSerializer)
        worker.work(burst=True, with_scheduler=False, logging_level="WARNING")

    enqueue("builtins.int", "not a number", job_id="flaky-1")  # raises ValueError
    work()
    failed = FailedJobRegistry(queue=rq_queue.queue("default"))
    assert failed.get_job_ids() == ["flaky-1"]
    # Enqueued again under its id (the sweep, ops), and it succeeds this time.
    enqueue("builtins.int", "7", job_id="flaky-1")
    work()
    assert rq_queue.queue("default").fetch_job("flaky-1").get_status() == "finished"
    assert failed.get_job_ids() == []
    text = client.get("/metrics").get_data(as_text=True)
    assert _gauge(text, "rq_failed_jobs", "default") == 0

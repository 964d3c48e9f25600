"""Refunds that fail are attempted again: refund.failed at the gateway, or a refusal before
the refund exists (Razorpay's answer when the balance is too low after payouts). Each
attempt is its own row, idempotency key and ledger entries; ops hear of every failure and
of the last one; the sweep makes due attempts and re-sends requests whose job died.
Through RQ, the real client, the emulator and its webhooks."""

from __future__ import annotations

import json
from datetime import timedelta
from types import SimpleNamespace

import pytest
import requests
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from core import clock, i18n
from core.adapters import razorpay_gateway
from core.adapters.api_models import AuditEntry
from core.adapters.db import transaction
from core.adapters.models import OutboxMessage
from core.adapters.payment_models import LedgerTransaction, Refund
from core.adapters.queue import enqueue, queue
from core.domain import ledger as rules
from core.domain.booking import BookingStatus
from core.services import ledger, payments
from core.services.booking import move_booking
from sandbox import razorpay as emu
from tests.conftest import release_scheduled
from tests.test_api import API, sign_in
from tests.test_payments_support import (
    CUSTOMER,
    booking,
    failed_jobs,
    ledger_checked,
    paid_booking,
    run,
    summary,
)

pytestmark = pytest.mark.db
OPS_PHONE = "+919000000099"  # OPS_PHONE's sandbox default: ops alerts go to it
# What Razorpay answers a refund it cannot make for want of balance (HTTP 400).
LOW_BALANCE = {"error": {
    "code": "BAD_REQUEST_ERROR", "source": "business", "step": "refund_initiation",
    "reason": "insufficient_balance", "field": None, "metadata": {},
    "description": "Your account does not have enough balance to carry out the refund "
                   "operation. You can add funds to your account from your Razorpay "
                   "dashboard or capture new payments."}}
RETRY_DELAY = timedelta(minutes=2)  # REFUND_RETRY_MIN's sandbox default


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


@pytest.fixture
def gateway(monkeypatch):
    """The HTTP under the real client: records each refund request's X-Refund-Idempotency
    and, while ``refuse`` > 0, answers it as Razorpay does when the balance is too low
    (the emulator has no such control)."""
    state = SimpleNamespace(keys=[], refuse=0)
    real = razorpay_gateway._TimeoutSession.request

    def request(self, method, url, *args, **kwargs):
        if method.upper() == "POST" and url.endswith("/refund"):
            state.keys.append((kwargs.get("headers") or {}).get("X-Refund-Idempotency"))
            if state.refuse > 0:
                state.refuse -= 1
                refused = requests.Response()
                refused.status_code = 400
                refused.headers["Content-Type"] = "application/json"
                refused._content = json.dumps(LOW_BALANCE).encode()
                return refused
        return real(self, method, url, *args, **kwargs)

    monkeypatch.setattr(razorpay_gateway._TimeoutSession, "request", request)
    return state


def cancel(booking_id: int) -> None:
    with transaction() as s:
        payments.cancel_booking(s, ledger.lock_booking(s, booking_id), CUSTOMER, "no")


def fail_for_no_partner(booking_id: int) -> None:
    """What dispatch does when nobody takes the job: the booking fails, the refund job is
    enqueued without a Retry."""
    with transaction() as s:
        b = ledger.lock_booking(s, booking_id)
        move_booking(s, b, BookingStatus.DISPATCHING, CUSTOMER, "test")
        move_booking(s, b, BookingStatus.FAILED, CUSTOMER, "no partner")
    enqueue("workers.payments.refund_booking", booking_id, "no_partner",
            job_id=f"refund-{booking_id}")


def attempts(booking_id: int) -> list[tuple[int, str, int]]:
    """(attempt, status, amount) of each refund attempt."""
    with transaction() as s:
        return [tuple(r) for r in s.execute(
            select(Refund.attempt, Refund.status, Refund.amount_paise)
            .where(Refund.booking_id == booking_id).order_by(Refund.attempt))]


def refund_ids(booking_id: int) -> list[int]:
    with transaction() as s:
        return list(s.scalars(select(Refund.id).where(Refund.booking_id == booking_id)
                              .order_by(Refund.attempt)))


def requested_entries(booking_id: int) -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(LedgerTransaction.idempotency_key).where(
            LedgerTransaction.booking_id == booking_id,
            LedgerTransaction.kind == rules.EntryKind.REFUND_REQUESTED.value)
            .order_by(LedgerTransaction.id)))


def ops_alerts(booking_id: int) -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.booking_id == booking_id, OutboxMessage.to_addr == OPS_PHONE)
            .order_by(OutboxMessage.id)))


def alert(key: str, **params: object) -> str:
    return i18n.t(key, i18n.DEFAULT_LANGUAGE, **params)  # the operator has no language set


def test_a_failed_refund_is_made_again_after_the_delay_with_a_new_key(live, gateway):
    emu.control("refund_outcome", "failed")
    bid = paid_booking()
    total = booking(bid).total_paise
    cancel(bid)
    run()  # attempt 1 reaches the gateway; refund.failed comes back
    assert attempts(bid) == [(1, "failed", total)]
    s = summary(bid)
    assert s["escrow_paise"] == total and s["refunds_pending_paise"] == 0
    # No alert for a try made again by itself: only the last failed try asks a person.
    assert ops_alerts(bid) == []
    emu.control("refund_outcome", "processed")
    assert release_scheduled(RETRY_DELAY - timedelta(seconds=30)) == 0  # not before its time
    assert release_scheduled(RETRY_DELAY + timedelta(seconds=30)) == 1
    run()
    assert attempts(bid) == [(1, "failed", total), (2, "processed", total)]
    first, second = refund_ids(bid)
    assert gateway.keys == [f"ridechain-refund-{first}", f"ridechain-refund-{second}"]
    assert requested_entries(bid) == [f"refund:{first}:requested", f"refund:{second}:requested"]
    s = summary(bid)
    assert s["refunded_paise"] == total and s["escrow_paise"] == s["refunds_pending_paise"] == 0
    assert booking(bid).status == BookingStatus.REFUNDED.value
    assert sorted(r["status"] for r in emu._all("refund")) == ["failed", "processed"]
    assert payments.retry_refund(bid, 2) == "not-due"  # the scheduled job again: no third
    assert payments.refund_booking(bid, "cancelled") == "already-processed"
    assert not failed_jobs()


def test_retries_of_one_attempt_keep_its_key(live, gateway):
    bid = paid_booking()
    emu.fail_next("refund")  # 503: the outcome is unknown to us
    cancel(bid)
    run()
    assert release_scheduled(timedelta(seconds=11)) == 1
    run()
    (only,) = refund_ids(bid)
    assert gateway.keys == [f"ridechain-refund-{only}"] * 2
    assert attempts(bid) == [(1, "processed", booking(bid).total_paise)]


def test_a_refusal_for_low_balance_ends_the_attempt_once_rq_gives_up(live, gateway):
    bid = paid_booking()
    total = booking(bid).total_paise
    gateway.refuse = 6  # the job's first try and its five retries
    cancel(bid)
    run()
    assert attempts(bid) == [(1, "requested", total)]  # RQ tries again
    with transaction() as s:
        assert s.scalar(select(Refund.last_error)).startswith("refused: Your account")
    # Only a person can top the balance up: ops hear at the first refusal (session 30),
    # once for the attempt, however many of its retries are refused.
    told = [alert("payment.ops_refund_no_balance", ref=booking(bid).reference,
                  refund_paise=total)]
    for _ in range(5):
        assert ops_alerts(bid) == told
        assert release_scheduled(timedelta(minutes=31)) == 1
        run()
    assert attempts(bid) == [(1, "failed", total)]  # no refund exists: back in escrow
    s = summary(bid)
    assert s["escrow_paise"] == total and s["refunds_pending_paise"] == 0
    assert ops_alerts(bid) == told  # a next attempt comes by itself: no stuck alert yet
    assert len(gateway.keys) == 6 and len(set(gateway.keys)) == 1
    assert not emu._all("refund") and not failed_jobs()
    # The balance is topped up; the next attempt, under a key of its own, goes through.
    assert release_scheduled(RETRY_DELAY + timedelta(seconds=30)) == 1
    run()
    assert attempts(bid) == [(1, "failed", total), (2, "processed", total)]
    assert gateway.keys[-1] != gateway.keys[0]
    assert summary(bid)["refunded_paise"] == total


def test_after_the_last_attempt_a_person_is_asked_and_can_try_again(live, gateway, client):
    emu.control("refund_outcome", "failed")
    bid = paid_booking()
    total, ref = booking(bid).total_paise, booking(bid).reference
    fail_for_no_partner(bid)
    run()
    for _ in range(2):
        assert release_scheduled(RETRY_DELAY + timedelta(seconds=30)) == 1
        run()
    assert attempts(bid) == [(n, "failed", total) for n in (1, 2, 3)]
    assert len(set(gateway.keys)) == 3
    (stuck,) = ops_alerts(bid)  # not one per try: the service tried again by itself
    assert stuck == alert("payment.ops_refund_stuck", ref=ref, refund_paise=total, attempts=3)
    assert release_scheduled(timedelta(hours=2)) == 0  # no fourth by itself
    clock.freeze(clock.now() + timedelta(hours=2))
    assert payments.sweep()["refund_retries"] == 0
    clock.freeze(None)
    assert summary(bid)["escrow_paise"] == total  # the money waits in escrow
    # Ops sort the cause out and try again.
    emu.control("refund_outcome", "processed")
    ops = sign_in(client, "+919812300004", role="ops")
    r = client.post(f"{API}/ops/bookings/{ref}/refund/retry", headers=ops)
    assert r.status_code == 200, r.get_json()
    assert r.get_json() == {"reference": ref, "attempt": 4, "amount_paise": total,
                            "status": "requested", "reason": "no_partner",
                            "payment_id": emu._all("payment")[0]["id"]}
    assert client.post(f"{API}/ops/bookings/{ref}/refund/retry", headers=ops).status_code == 409
    run()
    assert attempts(bid)[-1] == (4, "processed", total)
    assert booking(bid).status == BookingStatus.REFUNDED.value
    with transaction() as s:
        assert s.scalar(select(AuditEntry.action)) == "refund.retry"


def test_a_refusal_without_rq_retries_ends_the_attempt_at_once(live, gateway):
    gateway.refuse = 1
    bid = paid_booking()
    fail_for_no_partner(bid)  # dispatch's job has no Retry: its one try is its last
    run()
    assert attempts(bid) == [(1, "failed", booking(bid).total_paise)]
    assert release_scheduled(RETRY_DELAY + timedelta(seconds=30)) == 1
    run()
    assert [a[:2] for a in attempts(bid)] == [(1, "failed"), (2, "processed")]
    assert not failed_jobs()


def test_the_sweep_sends_again_a_refund_whose_job_died(live, gateway):
    bid = paid_booking()
    emu.fail_next("refund")
    fail_for_no_partner(bid)
    run()  # 503 and no Retry: the job is dead, the money reserved
    assert attempts(bid) == [(1, "requested", booking(bid).total_paise)]
    assert summary(bid)["refunds_pending_paise"] == booking(bid).total_paise
    assert payments.sweep()["refunds_requeued"] == 0  # too recent to be judged lost
    clock.freeze(clock.now() + timedelta(minutes=6))
    assert payments.sweep()["refunds_requeued"] == 1
    assert payments.sweep()["refunds_requeued"] == 0  # its job is queued now
    run()
    assert attempts(bid) == [(1, "processed", booking(bid).total_paise)]
    assert len(set(gateway.keys)) == 1  # the same attempt, the same key


def test_the_sweep_makes_a_due_attempt_whose_job_was_lost(live):
    emu.control("refund_outcome", "failed")
    bid = paid_booking()
    cancel(bid)
    run()
    queue("default").fetch_job(f"refund-retry-{bid}-2").delete()
    emu.control("refund_outcome", "processed")
    assert payments.sweep()["refund_retries"] == 0
    clock.freeze(clock.now() + RETRY_DELAY + timedelta(seconds=1))
    assert payments.sweep()["refund_retries"] == 1
    run()
    assert [a[:2] for a in attempts(bid)] == [(1, "failed"), (2, "processed")]


def test_a_booking_has_one_open_refund_attempt_at_most(live):
    bid = paid_booking()
    cancel(bid)
    (first,) = refund_ids(bid)
    with pytest.raises(IntegrityError), transaction() as s:
        s.add(Refund(booking_id=bid, attempt=2, payment_id="pay_x", amount_paise=100,
                     fee_paise=0, reason="cancelled", actor="test", status="requested"))
    run()
    assert attempts(bid)[0][1] == "processed" and refund_ids(bid) == [first]

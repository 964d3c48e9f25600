"""Review rpay's two suspicions about refunds (helper hpay2), through RQ, the real razorpay
client, the emulator and its signed webhooks; the clock is frozen and moved.

1. A refund whose create call got no usable answer (Razorpay made it, but answered 409
   "in progress" to every try, or 503) is never closed as failed, so no second attempt
   under a new key refunds the money again: the webhook settles the one attempt, and
   Razorpay holds one refund (a guard: it passed before).
2. A link paid in time whose webhooks are held back by a gateway outage of over an hour:
   the sweep expires the booking without asking, and the late webhook refunds the
   payment. The customer hears that the booking closed while we could not confirm her
   payment (payment.expired_unconfirmed), not that she paid after the time to pay was over
   (payment.after_expiry). Failed before the fix."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest
import requests
from sqlalchemy import select

from core import clock, i18n
from core.adapters import razorpay_gateway as gw
from core.adapters.db import transaction
from core.adapters.payment_models import Refund
from core.adapters.queue import SANDBOX_QUEUE, enqueue, queue
from core.domain.booking import BookingStatus
from core.services import ledger, payments
from sandbox import razorpay as emu
from tests.conftest import release_scheduled
from tests.test_payments_support import (
    CUSTOMER,
    booking,
    confirmed_booking,
    ledger_checked,
    paid_booking,
    pay,
    run,
    summary,
)
from tests.test_payments_timing import ref, to_customer

pytestmark = pytest.mark.db


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


def attempts(booking_id: int) -> list[tuple[int, str]]:
    with transaction() as s:
        return [(r.attempt, r.status) for r in s.scalars(
            select(Refund).where(Refund.booking_id == booking_id).order_by(Refund.attempt))]


@pytest.mark.parametrize("trouble", ["in_progress", "unavailable"])
def test_a_refund_without_an_answer_is_asked_again_never_twice(live, trouble):
    t0 = clock.now()
    clock.freeze(t0)
    bid = paid_booking()
    if trouble == "in_progress":  # made at once, answered 409 to every try
        emu.control("in_progress_next:refund", 50)
    else:
        emu.fail_next("refund", 50)  # 503, nothing made
    with transaction() as s:
        q = payments.cancel_booking(s, ledger.lock_booking(s, bid), CUSTOMER, "no")
    run()
    for hour in range(1, 21):  # the job's retries, then the sweep's, hours of them
        clock.freeze(t0 + timedelta(hours=hour))
        release_scheduled(timedelta(hours=1))
        enqueue("workers.payments.sweep", job_id=f"test-sweep-{hour}")
        run()
        assert all(st != "failed" for _, st in attempts(bid)), attempts(bid)
    emu.control("in_progress_next:refund", 0)
    emu.fail_next("refund", 0)
    for hour in range(21, 24):
        clock.freeze(t0 + timedelta(hours=hour))
        release_scheduled(timedelta(hours=1))
        enqueue("workers.payments.sweep", job_id=f"test-sweep-{hour}")
        run()
    made = emu._all("refund")
    assert [(r["amount"], r["status"]) for r in made] == [(q.refund_paise, "processed")]
    assert attempts(bid) == [(1, "processed")]
    assert summary(bid)["refunded_paise"] == q.refund_paise
    assert booking(bid).status == BookingStatus.REFUNDED.value


def test_a_payment_in_time_held_back_by_an_outage_is_not_called_late(live, monkeypatch):
    t0 = clock.now()
    clock.freeze(t0)
    bid = confirmed_booking()
    run()  # the link is made and sent; it expires at t0 + 30 min
    clock.freeze(t0 + timedelta(minutes=29))
    assert pay(bid).status_code == 200  # paid in time
    hooks = queue(SANDBOX_QUEUE)
    held = hooks.get_jobs()  # its webhooks are held back by the outage
    assert held
    for job in held:
        hooks.remove(job)

    def fetch(gateway_id: str) -> dict:
        raise requests.ConnectionError("gateway unreachable")

    monkeypatch.setattr(gw, "client", lambda: SimpleNamespace(
        payment_link=SimpleNamespace(fetch=fetch)))
    clock.freeze(t0 + timedelta(minutes=91, seconds=30))  # an hour past the link's time
    assert payments.expire_unpaid() == 1  # closed without the gateway's word
    monkeypatch.undo()
    for job in held:  # the gateway is back: its webhooks come
        hooks.enqueue_job(job)
    run()
    for _ in range(3):
        release_scheduled(timedelta(hours=1))
        run()
    total = booking(bid).total_paise
    said = to_customer(bid)
    unconfirmed = i18n.t("payment.expired_unconfirmed", "en", ref=ref(bid), refund_paise=total)
    late = i18n.t("payment.after_expiry", "en", ref=ref(bid), refund_paise=total)
    assert unconfirmed in said and said.count(unconfirmed) == 1
    assert late not in said
    assert [(r["amount"], r["status"]) for r in emu._all("refund")] == [(total, "processed")]
    assert summary(bid)["refunded_paise"] == total


"""Session 34, payment-link closing: a link cancelled from Razorpay's dashboard while the
booking waits for payment closes the booking, and the customer hears just that (the link
was stopped, nothing to pay), never "the time to pay is over"; and a link's closing
event never overwrites a payment committed while the event was being handled (the row
is read again under the booking's lock). Through RQ, the real razorpay client, the
emulator and its signed webhooks; the race is played at the booking's lock."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core import i18n
from core.adapters import razorpay_gateway as gw
from core.adapters.db import transaction
from core.adapters.models import Booking, OutboxMessage
from core.domain.booking import BookingStatus
from core.services import ledger, payments
from sandbox import razorpay as emu
from tests.test_payments_support import (
    SKIPPED,
    booking,
    confirmed_booking,
    failed_jobs,
    ledger_checked,
    link_of,
    pay,
    run,
    summary,
)

pytestmark = pytest.mark.db


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


def messages(booking_id: int) -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.booking_id == booking_id).order_by(OutboxMessage.id)))


def booked_in(lang: str) -> int:
    """A booking awaiting payment, made in ``lang``, its link sent."""
    bid = confirmed_booking()
    with transaction() as s:
        b = s.get(Booking, bid)
        assert b is not None
        b.language = lang
    run()
    assert link_of(bid).status == "created"
    return bid


@pytest.mark.parametrize("lang", ["en", "hi"])
def test_a_link_cancelled_in_the_dashboard_is_told_as_stopped_not_as_time_over(live, lang):
    """Support cancels the link in Razorpay's dashboard, well inside the customer's time
    to pay: she was told "the time to pay is over", untrue. The booking closes (it has
    one link, none is sent again), and she hears, in her booking's language, that the
    link was stopped, the booking closed and nothing is to pay, with how to book again."""
    bid = booked_in(lang)
    gw.client().payment_link.cancel(link_of(bid).gateway_id)  # as the dashboard does
    run()  # the signed payment_link.cancelled webhook, and its job
    assert not failed_jobs()
    b = booking(bid)
    assert b.status == BookingStatus.EXPIRED.value
    assert link_of(bid).status == "cancelled"
    told = i18n.t("payment.link_cancelled", lang, ref=b.reference)
    assert messages(bid)[-1] == told
    assert messages(bid).count(told) == 1
    assert i18n.t("payment.expired", lang, ref=b.reference) not in messages(bid)
    assert summary(bid)["captured_paise"] == 0
    # The sweep that closes unpaid bookings finds nothing more to do or say.
    assert payments.expire_unpaid() == 0
    run()
    assert messages(bid).count(told) == 1


@pytest.mark.parametrize("event", ["payment_link.expired", "payment_link.cancelled"])
def test_a_capture_committed_while_a_link_closes_leaves_the_link_paid(live, monkeypatch,
                                                                     event):
    """The closing event's job read the link row ("created"), then the link's capture
    committed (the link "paid", the booking paid) before the job took the booking's lock:
    the job wrote the stale row back as "expired"/"cancelled" over "paid". Now it reads
    the row again under the lock: the link stays paid, the booking too, nobody is told
    it closed."""
    bid = booked_in("en")
    assert pay(bid).status_code == 200  # its webhooks are queued, not yet run
    ((payment,),) = [emu._all("payment")]
    gateway_id = link_of(bid).gateway_id
    real_lock = ledger.lock_booking
    captured: list[str] = []

    def capture_then_lock(session, booking_id):
        if not captured:  # the closing job's lock: the capture commits first
            captured.append("capturing")  # (record_capture takes the lock too)
            captured[0] = payments.record_capture(
                bid, payment["id"], int(payment["amount"]), cause="test:capture-first",
                link_status="paid")
        return real_lock(session, booking_id)

    data = {"event": event,
            "payload": {"payment_link": {"entity": {"id": gateway_id, "status": "x"}}}}
    with monkeypatch.context() as m:
        m.setattr(ledger, "lock_booking", capture_then_lock)
        outcome = payments._on_link_closed(data, "test:link-closed")
    assert captured == ["paid"]
    assert outcome == "ignored-paid"
    assert link_of(bid).status == "paid"
    assert booking(bid).status == BookingStatus.PAID.value
    run()  # the payment's own webhooks come late: the same payment, once
    assert not failed_jobs()
    assert link_of(bid).status == "paid"
    assert booking(bid).status == BookingStatus.PAID.value
    s = summary(bid)
    assert s["captured_paise"] == s["escrow_paise"] == booking(bid).total_paise
    assert s["refunds_pending_paise"] == s["refunded_paise"] == 0
    assert SKIPPED.count(f"dispatch-{bid}") == 1
    ref = booking(bid).reference
    assert not {i18n.t("payment.expired", "en", ref=ref),
                i18n.t("payment.link_cancelled", "en", ref=ref)} & set(messages(bid))

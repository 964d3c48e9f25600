"""Payments against the clock: a link paid in time whose webhook is late, a gateway that
does not answer the sweep, a link job that runs after the payment window or is lost, a
booking cancelled by ops. Through RQ, the real razorpay client, the emulator and its
signed webhooks; the clock is frozen and moved, never waited for."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest
import requests
from sqlalchemy import select

from core import clock, i18n
from core.adapters import razorpay_gateway as gw
from core.adapters.db import transaction
from core.adapters.models import Booking, OutboxMessage, Person
from core.adapters.queue import SANDBOX_QUEUE, enqueue, queue
from core.adapters.redis_conn import redis_client
from core.domain.booking import Actor, BookingStatus
from core.services import ledger, payments
from sandbox import razorpay as emu
from tests.conftest import release_scheduled, run_jobs
from tests.test_api import sign_in
from tests.test_dispatch import LAXMIPUR, legs_of, make_partner, sms
from tests.test_ops_s30 import no_drop_code_night  # noqa: F401  (fixture)
from tests.test_payments_support import (
    SKIPPED,
    booking,
    confirmed_booking,
    failed_jobs,
    ledger_checked,
    link_of,
    paid_booking,
    pay,
    run,
    summary,
)

pytestmark = pytest.mark.db
OPS_PHONE = "+919000000099"  # OPS_PHONE's sandbox default: ops alerts go to it
OPERATOR = "+919000000098"
RECIPIENT = "+919876500020"


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


def to_customer(booking_id: int) -> list[str]:
    """What the booking's customer was sent about it, in order."""
    with transaction() as s:
        b = s.get(Booking, booking_id)
        assert b is not None
        phone = s.get(Person, b.customer_id).phone
        return list(s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.booking_id == booking_id,
            OutboxMessage.to_addr.in_([phone, f"whatsapp:{phone}"]))
            .order_by(OutboxMessage.id)))


def sent_to(phone: str) -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.to_addr.in_([phone, f"whatsapp:{phone}"])).order_by(OutboxMessage.id)))


def ref(booking_id: int) -> str:
    return booking(booking_id).reference


def drop_webhooks() -> None:
    """The emulator's webhook deliveries queued so far never arrive."""
    queue(SANDBOX_QUEUE).empty()


# --- the sweep asks the gateway before it expires a booking ----------------------------------


def test_a_link_paid_in_time_whose_webhook_is_late_is_paid_not_refunded(live):
    t0 = clock.now()
    clock.freeze(t0)
    bid = confirmed_booking()
    run()  # the link is made and sent; it expires at t0 + 30 min
    clock.freeze(t0 + timedelta(minutes=29))
    assert pay(bid).status_code == 200  # paid in time; the webhooks are still on their way
    clock.freeze(t0 + timedelta(minutes=31, seconds=30))
    assert payments.expire_unpaid() == 0  # the gateway says paid: recorded, not expired
    assert booking(bid).status == BookingStatus.PAID.value
    run()  # the webhooks arrive late: the same payment, recorded once
    total = booking(bid).total_paise
    assert booking(bid).status == BookingStatus.PAID.value
    s = summary(bid)
    assert s["captured_paise"] == s["escrow_paise"] == total
    assert s["refunds_pending_paise"] == s["refunded_paise"] == 0
    assert emu._all("refund") == []
    assert SKIPPED.count(f"dispatch-{bid}") == 1
    received = i18n.t("payment.received", "en", ref=ref(bid), total_paise=total)
    assert to_customer(bid).count(received) == 1
    assert i18n.t("payment.expired", "en", ref=ref(bid)) not in to_customer(bid)
    assert not failed_jobs()


def test_the_sweep_waits_for_an_unreachable_gateway_then_expires_after_an_hour(live, monkeypatch):
    t0 = clock.now()
    clock.freeze(t0)
    first, second = confirmed_booking("+919812340001"), confirmed_booking("+919812340002")
    run()
    asked: list[str] = []

    def fetch(gateway_id: str) -> dict:
        asked.append(gateway_id)
        raise requests.ConnectionError("gateway unreachable")

    monkeypatch.setattr(gw, "client", lambda: SimpleNamespace(
        payment_link=SimpleNamespace(fetch=fetch)))
    clock.freeze(t0 + timedelta(minutes=31, seconds=30))
    assert payments.expire_unpaid() == 0
    assert len(asked) == 1  # the first timeout spares the others this round
    clock.freeze(t0 + timedelta(minutes=60))
    assert payments.expire_unpaid() == 0
    assert [booking(b).status for b in (first, second)] == [
        BookingStatus.AWAITING_PAYMENT.value] * 2
    clock.freeze(t0 + timedelta(minutes=91, seconds=30))  # an hour past the link's time
    assert payments.expire_unpaid() == 2
    monkeypatch.undo()
    run()  # the links: an hour past their expire_by, the gateway has them expired
    for b in (first, second):
        assert booking(b).status == BookingStatus.EXPIRED.value
        assert to_customer(b)[-1] == i18n.t("payment.expired", "en", ref=ref(b))
        assert link_of(b).status == "expired"


def test_the_link_cancel_job_records_a_paid_link_whose_webhooks_were_lost(live):
    bid = confirmed_booking()
    run()
    assert pay(bid).status_code == 200
    drop_webhooks()
    with transaction() as s:
        b = ledger.lock_booking(s, bid)
        payments.cancel_booking(s, b, Actor("customer", str(b.customer_id)), "changed my mind")
    run()  # the link cannot be cancelled: it is paid, so its payment is recorded and refunded
    total = booking(bid).total_paise
    s = summary(bid)
    assert s["captured_paise"] == s["refunded_paise"] == total
    assert s["escrow_paise"] == 0
    assert link_of(bid).status == "paid"
    (refund,) = emu._all("refund")
    assert refund["amount"] == total
    assert not failed_jobs()


# --- a booking whose link was never made --------------------------------------------------


def test_a_link_job_running_after_the_payment_window_tells_the_customer_and_ops_once(live):
    t0 = clock.now()
    clock.freeze(t0)
    bid = confirmed_booking()
    clock.freeze(t0 + timedelta(minutes=40))  # the workers were down: the link job runs late
    run()
    assert booking(bid).status == BookingStatus.EXPIRED.value
    assert emu._all("payment_link") == []
    failed = i18n.t("payment.link_failed", "en", ref=ref(bid))
    # The cause is ours, so ops read it in their language (payment.ops_link_timeout).
    alert = i18n.t("payment.ops_link_timeout", i18n.DEFAULT_LANGUAGE, ref=ref(bid))
    assert to_customer(bid) == [failed]
    assert sent_to(OPS_PHONE) == [alert]
    payments.sweep()
    enqueue("workers.payments.create_payment_link", bid)  # a second copy of the job
    run()
    assert to_customer(bid) == [failed] and sent_to(OPS_PHONE) == [alert]


def test_a_link_the_gateway_could_not_make_in_time_is_not_time_to_pay_over(live):
    emu.fail_next("create_link", 20)  # the gateway is down for a while
    bid = confirmed_booking()
    run()  # the first try fails; RQ tries again later
    clock.freeze(clock.now() + timedelta(minutes=32))
    assert payments.expire_unpaid() == 1
    assert booking(bid).status == BookingStatus.EXPIRED.value
    failed = i18n.t("payment.link_failed", "en", ref=ref(bid))
    assert to_customer(bid) == [failed]  # never "the time to pay is over": nothing was sent
    assert sent_to(OPS_PHONE) == [i18n.t("payment.ops_link_timeout", i18n.DEFAULT_LANGUAGE,
                                         ref=ref(bid))]
    assert release_scheduled(timedelta(seconds=11)) == 1  # the link job's retry
    run()
    assert emu._all("payment_link") == []
    assert to_customer(bid) == [failed] and len(sent_to(OPS_PHONE)) == 1


def lose_the_job_in_a_flush(monkeypatch) -> int:
    bid = confirmed_booking()
    redis_client().flushdb()  # the paylink-<booking> job is gone
    return bid


def lose_the_job_in_a_redis_blip(monkeypatch) -> int:
    import redis

    import core.adapters.queue as q

    def down(*args, **kwargs):
        raise redis.exceptions.ConnectionError("Connection refused")

    monkeypatch.setattr(q, "queue", down)
    bid = confirmed_booking()  # committed; the enqueue after the commit failed
    monkeypatch.undo()
    return bid


@pytest.mark.parametrize("lose", [lose_the_job_in_a_flush, lose_the_job_in_a_redis_blip])
def test_the_sweep_makes_a_link_whose_job_was_lost(live, monkeypatch, lose):
    t0 = clock.now()
    clock.freeze(t0)
    bid = lose(monkeypatch)
    clock.freeze(t0 + timedelta(seconds=30))
    payments.sweep()
    assert queue("default").fetch_job(f"paylink-{bid}") is None  # it may be on its way
    clock.freeze(t0 + timedelta(minutes=2))
    payments.sweep()
    assert queue("default").fetch_job(f"paylink-{bid}") is not None, "no sweep made it"
    assert payments.sweep()["links_requeued"] == 0  # enqueued once: its job is alive now
    run()
    link = link_of(bid)
    assert booking(bid).status == BookingStatus.AWAITING_PAYMENT.value
    assert to_customer(bid) == [i18n.t("pay.link", "en", ref=ref(bid),
                                       total_paise=booking(bid).total_paise,
                                       url=link.short_url, minutes=28)]
    assert payments.sweep()["links_requeued"] == 0  # it has its link


# --- cancelled by ops -----------------------------------------------------------------------


def test_ops_cancelling_a_paid_booking_tells_the_customer_and_the_recipient(
        client, live, no_drop_code_night):  # noqa: F811  (the wall clock's hour)
    bid = paid_booking()
    with transaction() as s:
        b = s.get(Booking, bid)
        b.recipient_name, b.recipient_phone = "Sita", RECIPIENT
    _, rider = make_partner("Ramesh", LAXMIPUR)
    enqueue("workers.dispatch.start_dispatch", bid, job_id=f"dispatch-{bid}")
    run_jobs()
    assert sms(client, rider, "1")  # Ramesh takes the job: the recipient gets the drop code
    assert len(sent_to(RECIPIENT)) == 1
    before, to_rider = len(to_customer(bid)), len(sent_to(rider))
    ops = sign_in(client, OPERATOR, role="ops")
    r = client.post(f"/api/v1/bookings/{ref(bid)}/cancel", headers=ops)
    assert r.status_code == 200 and r.get_json()["cancelled"], r.get_json()
    refund = r.get_json()["refund_paise"]
    assert 0 < refund < booking(bid).total_paise  # the rider keeps a fee
    fee = r.get_json()["fee_paise"]
    assert to_customer(bid)[before:] == [
        i18n.t("bot.cancel.done_fee", "en", ref=ref(bid), fee_paise=fee, refund_paise=refund)]
    assert sent_to(RECIPIENT)[1:] == [i18n.t("dispatch.recipient_cancelled", "en", ref=ref(bid))]
    # The rider hears it once: not to go, and the fee that is theirs.
    (leg,) = legs_of(bid)
    assert sent_to(rider)[to_rider:] == [
        i18n.t("dispatch.job_cancelled_fee", "hi", job=str(leg.id), fee_paise=fee)]
    run_jobs()


def test_ops_cancelling_an_unpaid_booking_tells_the_customer_who_cancelling_hears_nothing_more(
        client, live):
    by_ops, by_customer = confirmed_booking("+919812340001"), confirmed_booking("+919812340002")
    run()
    ops = sign_in(client, OPERATOR, role="ops")
    r = client.post(f"/api/v1/bookings/{ref(by_ops)}/cancel", headers=ops)
    assert r.status_code == 200 and r.get_json()["refund_paise"] == 0
    assert to_customer(by_ops)[-1] == i18n.t("bot.cancel.done", "en", ref=ref(by_ops))
    before = to_customer(by_customer)
    me = sign_in(client, "+919812340002")
    r = client.post(f"/api/v1/bookings/{ref(by_customer)}/cancel", headers=me)
    assert r.status_code == 200 and r.get_json()["cancelled"], r.get_json()
    assert to_customer(by_customer) == before  # the app showed it; no message on top
    run()
    assert [link_of(b).status for b in (by_ops, by_customer)] == ["cancelled", "cancelled"]

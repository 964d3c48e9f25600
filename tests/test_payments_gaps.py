"""Gaps in the money flow closed after review: a booking paid twice, legs whose payout was
lost on the way, a relay's cancellation fee, refunds settled days later, link expiry.
Through RQ, the real razorpay client, the emulator and its signed webhooks."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import select

from core import clock, i18n
from core.adapters import razorpay_gateway as gw
from core.adapters.db import transaction
from core.adapters.models import Booking, Leg, OutboxMessage
from core.adapters.payment_models import LegTransfer, Refund
from core.adapters.queue import QUEUES, enqueue
from core.config import ConfigError
from core.domain import ledger as rules
from core.domain.booking import BookingStatus
from core.services import ledger, payments, reconciliation
from core.services.booking import move_booking
from sandbox import razorpay as emu
from sandbox.razorpay_jobs import sign
from tests.conftest import release_scheduled, run_jobs
from tests.test_payments_support import (
    CUSTOMER,
    advance,
    booking,
    confirmed_booking,
    failed_jobs,
    ledger_checked,
    legs,
    new_partner,
    paid_booking,
    pay,
    run,
    summary,
)

pytestmark = pytest.mark.db
OPS_PHONE = "+919000000099"  # OPS_PHONE's sandbox default: ops alerts go to it


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


def refunds(booking_id: int) -> list[tuple[str, str, int, str]]:
    """(reason, payment, amount, status) of each refund attempt, in order."""
    with transaction() as s:
        return [tuple(r) for r in s.execute(
            select(Refund.reason, Refund.payment_id, Refund.amount_paise, Refund.status)
            .where(Refund.booking_id == booking_id).order_by(Refund.attempt))]


def first_payment() -> str:
    (paid,) = emu._all("payment")
    return paid["id"]


def pay_again(booking_id: int, *, settle: bool = True) -> str:
    """The customer pays the booking a second time (a UPI retry charged twice): the
    gateway captures it and says so by webhook. Unless ``settle``, the gateway does not
    get to process the refund the service asks for (it stays pending)."""
    payment = emu.create_payment(booking(booking_id).total_paise,
                                 notes={"booking_id": str(booking_id),
                                        "reference": booking(booking_id).reference})
    emu.send_webhooks([emu._event("payment.captured", {"payment": payment})])
    run_jobs(("sandbox",))  # the webhook reaches the service
    if settle:
        run()
    else:
        run_jobs(QUEUES)
    return payment["id"]


def cancel(booking_id: int):
    with transaction() as s:
        return payments.cancel_booking(s, ledger.lock_booking(s, booking_id), CUSTOMER, "no")


# --- a booking paid twice ------------------------------------------------------------------


def test_an_extra_payment_is_refunded_from_itself_and_the_partner_is_still_paid(live):
    partner = new_partner()
    bid = paid_booking()
    first = first_payment()
    second = pay_again(bid)
    total = booking(bid).total_paise
    assert refunds(bid) == [("late_payment", second, total, "processed")]
    assert emu.get_object(first)["amount_refunded"] == 0
    assert emu.get_object(second)["amount_refunded"] == total
    leg_id = advance(bid, partner, to="delivered")
    assert payments.release_leg(leg_id) == "released"
    # Released while Razorpay still processes the transfer (pending): paid out once it does.
    assert payments.settle_leg_transfer(leg_id) == "released-pending"
    run()
    (transfer,) = emu._all("transfer")
    assert transfer["source"] == first
    with transaction() as s:
        assert ledger.partner_balance(s, partner) == 0
    assert summary(bid)["escrow_paise"] == 0


def test_cancelling_after_an_extra_payment_refunds_both_payments(live):
    bid = paid_booking()
    first = first_payment()
    total = booking(bid).total_paise
    second = pay_again(bid)
    quote = cancel(bid)
    assert (quote.refund_paise, quote.fee_paise) == (total, 0)  # the extra is not counted
    run()
    assert refunds(bid) == [("late_payment", second, total, "processed"),
                            ("cancelled", first, total, "processed")]
    s = summary(bid)
    assert (s["refunded_paise"], s["escrow_paise"]) == (2 * total, 0)
    assert booking(bid).status == BookingStatus.REFUNDED.value


def test_a_cancellation_refund_waits_for_the_open_extra_refund_then_follows(live):
    bid = paid_booking()
    first = first_payment()
    total = booking(bid).total_paise
    second = pay_again(bid, settle=False)
    assert refunds(bid) == [("late_payment", second, total, "pending")]
    cancel(bid)
    run_jobs(QUEUES)
    # One open refund per booking: the cancellation's waits, nothing is lost meanwhile.
    assert refunds(bid) == [("late_payment", second, total, "pending")]
    assert summary(bid)["escrow_paise"] == total
    run()  # the gateway processes the extra refund; its webhook starts the next one
    assert refunds(bid) == [("late_payment", second, total, "processed"),
                            ("cancelled", first, total, "processed")]
    assert summary(bid)["refunded_paise"] == 2 * total


def test_the_sweep_starts_a_refund_whose_start_was_missed(live):
    bid = paid_booking()
    total = booking(bid).total_paise
    second = pay_again(bid, settle=False)
    cancel(bid)
    run_jobs(QUEUES)
    with transaction() as s:  # the extra refund settled, but nothing started the next
        row = s.scalar(select(Refund).where(Refund.booking_id == bid))
        ledger.post(s, rules.refund_processed(bid, row.id, total, None),
                    actor="test", cause="test")
        row.status = "processed"
    assert payments.sweep()["refunds_started"] == 1
    assert payments.sweep()["refunds_started"] == 0
    run()
    assert [r[:2] for r in refunds(bid)] == [("late_payment", second),
                                             ("cancelled", first_payment_of(bid))]
    assert summary(bid)["escrow_paise"] == 0


def first_payment_of(booking_id: int) -> str:
    with transaction() as s:
        return str(payments._capture_payment_id(s, booking_id))


def test_a_no_partner_refund_is_made_after_an_extra_payment_was_refunded(live):
    bid = paid_booking()
    first = first_payment()
    total = booking(bid).total_paise
    pay_again(bid)
    with transaction() as s:  # dispatch finds nobody: the booking fails, refund job
        b = ledger.lock_booking(s, bid)
        move_booking(s, b, BookingStatus.DISPATCHING, CUSTOMER, "test")
        move_booking(s, b, BookingStatus.FAILED, CUSTOMER, "no partner")
    enqueue("workers.payments.refund_booking", bid, "no_partner", job_id=f"refund-{bid}")
    run()
    assert refunds(bid)[1] == ("no_partner", first, total, "processed")
    assert summary(bid)["escrow_paise"] == 0
    assert booking(bid).status == BookingStatus.REFUNDED.value


def test_the_sweep_refunds_a_failed_booking_whose_refund_job_was_lost(live):
    bid = paid_booking()
    total = booking(bid).total_paise
    with transaction() as s:  # dispatch finds nobody; its refund job never runs
        b = ledger.lock_booking(s, bid)
        move_booking(s, b, BookingStatus.DISPATCHING, CUSTOMER, "test")
        move_booking(s, b, BookingStatus.FAILED, CUSTOMER, "no partner")
    assert payments.sweep()["refunds_started"] == 1
    assert payments.sweep()["refunds_started"] == 0  # open now: once
    run()
    assert refunds(bid) == [("no_partner", first_payment_of(bid), total, "processed")]
    assert summary(bid)["escrow_paise"] == 0
    assert booking(bid).status == BookingStatus.REFUNDED.value
    assert payments.sweep()["refunds_started"] == 0


# --- legs left unpaid ----------------------------------------------------------------------


def owed(partner_id: int) -> int:
    with transaction() as s:
        return ledger.partner_balance(s, partner_id)


def ops_alerts() -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.to_addr == OPS_PHONE).order_by(OutboxMessage.id)))


def test_the_sweep_releases_a_delivered_leg_whose_release_job_was_lost(live):
    partner = new_partner()
    bid = paid_booking()
    advance(bid, partner, to="delivered")  # delivered; the release job never came
    assert payments.sweep()["releases"] == 1
    run()
    s = summary(bid)
    assert s["released_paise"] == s["captured_paise"] and s["escrow_paise"] == 0
    assert owed(partner) == 0
    assert payments.sweep()["releases"] == 0


def test_the_sweep_pays_a_leg_whose_transfer_job_ran_out_of_retries(live):
    partner = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, partner, to="delivered")
    emu.fail_next("transfer", 6)  # Razorpay down for longer than GATEWAY_RETRY lasts
    enqueue("workers.payments.release_leg", leg_id, job_id=f"release-{leg_id}")
    run()
    for _ in range(5):
        release_scheduled(timedelta(seconds=1801))
        run()
    assert f"transfer-{leg_id}" in failed_jobs() and owed(partner) > 0
    assert payments.sweep()["transfers"] == 1
    run()
    assert owed(partner) == 0
    (transfer,) = emu._all("transfer")
    assert transfer["on_hold"] is False
    assert payments.sweep()["transfers"] == 0  # paid: nothing left to do


def test_a_refused_transfer_is_recorded_told_to_ops_once_and_tried_again_less_often(live):
    partner = new_partner(account="acc_suspended01")
    emu.refuse_account("acc_suspended01")
    bid = paid_booking()
    leg_id = advance(bid, partner, to="delivered")
    payout = legs(bid)[0].payout_paise
    enqueue("workers.payments.release_leg", leg_id, job_id=f"release-{leg_id}")
    run()
    assert failed_jobs() == []  # a refusal is no error to retry in a loop
    with transaction() as s:
        row = s.scalar(select(LegTransfer).where(LegTransfer.leg_id == leg_id))
        assert (row.status, row.amount_paise) == ("failed", payout)
        assert "not activated" in row.last_error
    ref = booking(bid).reference
    expected = i18n.t("payment.ops_transfer_refused", i18n.DEFAULT_LANGUAGE, ref=ref,
                      leg=leg_id, payout_paise=payout,
                      error="Linked account acc_suspended01 is not activated")
    assert ops_alerts() == [expected]
    t0 = clock.now()
    assert payments.sweep()["transfers"] == 1
    run()
    assert payments.sweep()["transfers"] == 0  # backing off
    clock.freeze(t0 + timedelta(minutes=4))
    assert payments.sweep()["transfers"] == 0
    clock.freeze(t0 + timedelta(minutes=6))
    assert payments.sweep()["transfers"] == 1
    run()
    clock.freeze(t0 + timedelta(minutes=15))
    assert payments.sweep()["transfers"] == 0  # the second wait is twice as long
    assert ops_alerts() == [expected]  # told once
    emu.refuse_account("acc_suspended01", refused=False)  # ops had the account activated
    clock.freeze(t0 + timedelta(minutes=17))
    assert payments.sweep()["transfers"] == 1
    run()
    assert owed(partner) == 0
    with transaction() as s:
        row = s.scalar(select(LegTransfer).where(LegTransfer.leg_id == leg_id))
        assert row.status == "released"


# --- a relay's cancellation fee ------------------------------------------------------------


def make_relay(booking_id: int, first_leg_payout: int) -> None:
    """What dispatch plans for a relay: a short first leg to the nearest Point (a small
    payout), then a long second leg."""
    with transaction() as s:
        b = s.get(Booking, booking_id)
        leg = s.scalar(select(Leg).where(Leg.booking_id == booking_id))
        leg.payout_paise = first_leg_payout
        s.add(Leg(booking_id=booking_id, sequence=2, status="pending", from_lat=0, from_lng=0,
                  to_lat=0, to_lng=0, distance_m=40_000,
                  payout_paise=b.partner_share_paise - first_leg_payout, otp_failures=0))


@pytest.mark.parametrize("refund_first", [False, True])
def test_a_cancellation_fee_above_the_held_payout_is_paid_in_full(live, refund_first):
    partner = new_partner()
    bid = paid_booking()
    make_relay(bid, 600)  # Rs 6 held for the first leg; the fee is at least Rs 10
    leg_id = advance(bid, partner, to="assigned")
    assert payments.hold_leg_transfer(leg_id) == "held"
    quote = cancel(bid)
    assert quote.fee_paise > 600
    if refund_first:  # the refund job runs before the leg's transfer job
        assert payments.refund_booking(bid, "cancelled") == "requested"
    run()
    assert owed(partner) == 0
    assert failed_jobs() == []
    live_transfers = [t for t in emu._all("transfer") if t["status"] != "reversed"]
    assert [(t["amount"], t["on_hold"]) for t in live_transfers] == [(quote.fee_paise, False)]
    assert summary(bid)["refunded_paise"] == quote.refund_paise


def test_the_emulator_refuses_a_transfer_on_a_payment_with_a_refund(live):
    bid = paid_booking()
    cancel(bid)
    run()
    with pytest.raises(gw.BadRequestError, match="refund"):
        gw.client().payment.transfer(first_payment(), {"transfers": [{
            "account": "acc_partner0001", "amount": 1000, "currency": "INR"}]})


# --- refunds and transfers settled long after they were made -------------------------------


def refund_left_pending(booking_id: int) -> dict:
    """Cancel: the refund is asked of the gateway, which keeps it pending (days, for a
    normal refund); its refund.processed webhook will never come."""
    cancel(booking_id)
    run_jobs(QUEUES)  # our jobs only: the gateway does not settle it now
    (refund,) = emu._all("refund")
    assert refund["status"] == "pending"
    return refund


def test_the_hourly_run_applies_a_refund_settled_days_later_without_its_webhook(live):
    t0 = clock.now()
    bid = paid_booking()
    refund = refund_left_pending(bid)
    clock.freeze(t0 + timedelta(hours=1))
    enqueue("workers.payments.reconcile", job_id="reconcile-test-1")
    run_jobs(QUEUES)
    assert refunds(bid)[0][3] == "pending"  # still pending at the gateway: nothing to do
    clock.freeze(t0 + timedelta(days=5))
    emu.set_fields(refund["id"], status="processed")
    enqueue("workers.payments.reconcile", job_id="reconcile-test-2")
    run_jobs(QUEUES)
    assert refunds(bid)[0][3] == "processed"
    s = summary(bid)
    assert (s["refunds_pending_paise"], s["refunded_paise"]) == (0, refund["amount"])
    assert booking(bid).status == BookingStatus.REFUNDED.value
    with transaction() as s:
        assert reconciliation.list_mismatches(s, include_resolved=True) == []
    assert payments.poll_refunds(timedelta(0)) == {}  # nothing pending any more


def test_reconciliation_compares_open_items_created_before_its_window(live):
    t0 = clock.now()
    partner = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, partner, to="assigned")
    assert payments.hold_leg_transfer(leg_id) == "held"
    other = paid_booking("+919812340002")
    refund = refund_left_pending(other)
    clock.freeze(t0 + timedelta(days=5))  # both settle behind the ledger's back, days later
    (held,) = emu._all("transfer")
    emu.set_fields(held["id"], on_hold=False)
    emu.set_fields(refund["id"], status="processed")
    reconciliation.run()
    with transaction() as s:
        found = {(m["kind"], m["entity"], m["gateway_id"])
                 for m in reconciliation.list_mismatches(s)}
        status = s.scalar(select(Refund.status).where(Refund.gateway_refund_id == refund["id"]))
    # The transfer is listed; our own refund (its webhook lost) is applied, not listed.
    assert found == {("missing_in_ledger", "transfer", held["id"])}
    assert status == "processed"


# --- payment link expiry -------------------------------------------------------------------


def test_a_late_link_job_still_gives_the_customer_a_link_of_16_minutes(live):
    bid = confirmed_booking()
    # The link job runs 20 minutes after the customer confirmed (retries after 503s, a
    # worker backlog): 10 minutes of the 30-minute TTL are left.
    clock.freeze(clock.now() + timedelta(minutes=20))
    run()
    (link,) = emu._all("payment_link")
    assert link["expire_by"] - int(clock.now().timestamp()) == 16 * 60
    assert int(booking(bid).expires_at.timestamp()) == link["expire_by"]
    assert booking(bid).status == BookingStatus.AWAITING_PAYMENT.value
    assert pay(bid).status_code == 200


def test_a_payment_link_ttl_under_16_minutes_is_refused(monkeypatch):
    monkeypatch.setenv("PAYMENT_LINK_TTL_MIN", "15")
    with pytest.raises(ConfigError, match="PAYMENT_LINK_TTL_MIN"):
        payments.payment_link_ttl()
    monkeypatch.setenv("PAYMENT_LINK_TTL_MIN", "16")
    assert payments.payment_link_ttl() == timedelta(minutes=16)


def test_the_emulator_refuses_a_link_expiring_within_15_minutes(live):
    now = int(clock.now().timestamp())
    link = {"amount": 10000, "currency": "INR", "notify": {"sms": False, "email": False}}
    with pytest.raises(gw.BadRequestError, match="at least 15 minutes"):
        gw.client().payment_link.create({**link, "reference_id": "1001",
                                         "expire_by": now + 899})
    assert gw.client().payment_link.create({**link, "reference_id": "1002",
                                            "expire_by": now + 900})["id"]


def test_a_refused_link_closes_the_booking_and_tells_the_customer_and_ops(live, monkeypatch):
    bid = confirmed_booking()
    real = gw.client

    def refusing():
        c = real()

        def create(payload, **kwargs):
            raise gw.BadRequestError("The contact field is invalid")

        c.payment_link.create = create
        return c

    monkeypatch.setattr(gw, "client", refusing)
    run()
    b = booking(bid)
    assert b.status == BookingStatus.EXPIRED.value
    with transaction() as s:
        to_customer = list(s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.booking_id == bid, OutboxMessage.to_addr != OPS_PHONE)))
    assert to_customer == [i18n.t("payment.link_failed", "en", ref=b.reference)]
    assert ops_alerts() == [i18n.t("payment.ops_link_refused", i18n.DEFAULT_LANGUAGE,
                                   ref=b.reference, error="The contact field is invalid")]


# --- webhook signatures --------------------------------------------------------------------


@pytest.mark.parametrize("signature", ["\u00e9" * 64, "g" * 64, "ab" * 31, ""])
def test_a_malformed_razorpay_signature_is_a_403(client, signature):
    body = json.dumps({"event": "payment.captured", "payload": {}})
    r = client.post("/webhooks/razorpay", data=body.encode(), headers={
        "Content-Type": "application/json", "X-Razorpay-Event-Id": "evt_bad_sig1",
        "X-Razorpay-Signature": signature})
    assert r.status_code == 403


def test_a_well_signed_razorpay_webhook_still_passes():
    body = json.dumps({"event": "payment.captured", "payload": {}})
    assert gw.verify_webhook(body, sign(body))
    assert not gw.verify_webhook(body, sign(body + " "))


# --- the sweep's passes are not crowded out by what cannot progress ------------------------


def released_leg(n: int, partner: int) -> int:
    """A leg delivered for ``partner``, its payout in their payable (release posted)."""
    bid = confirmed_booking(f"+9198123{n:05d}")
    with transaction() as s:
        b = ledger.lock_booking(s, bid)
        leg = s.scalar(select(Leg).where(Leg.booking_id == bid))
        ledger.post(s, rules.capture(bid, f"pay_u{bid:06d}", b.total_paise),
                    actor="test", cause="test")
        ledger.post(s, rules.release(bid, leg.id, partner, leg.payout_paise, 0),
                    actor="test", cause="test")
        return leg.id


def test_legs_waiting_for_a_linked_account_do_not_hide_a_leg_that_can_be_paid(live):
    unlinked = new_partner("+919812349002", account=None)
    for n in range(3):
        released_leg(n, unlinked)
    linked = new_partner("+919812349003", account="acc_partner0003")
    owed = released_leg(900, linked)  # its transfer job ran out of retries
    with transaction() as s:
        assert payments.unpaid_legs(s) == [owed]
    assert payments.sweep()["transfers"] == 1


def failed_booking_paid(n: int) -> int:
    bid = confirmed_booking(f"+9198124{n:05d}")
    with transaction() as s:
        b = ledger.lock_booking(s, bid)
        ledger.post(s, rules.capture(bid, f"pay_f{bid:06d}", b.total_paise),
                    actor="test", cause="test")
        for status in (BookingStatus.PAID, BookingStatus.DISPATCHING, BookingStatus.FAILED):
            move_booking(s, b, status, CUSTOMER, "test")
    return bid


def test_bookings_whose_refund_failed_for_good_do_not_crowd_out_a_lost_refund(live):
    for n in range(3):  # each refund failed three times: ops must act
        bid = failed_booking_paid(n)
        with transaction() as s:
            for attempt in (1, 2, 3):
                s.add(Refund(booking_id=bid, attempt=attempt, payment_id=f"pay_f{bid:06d}",
                             amount_paise=100, fee_paise=0, reason="no_partner",
                             actor="system", status="failed", last_error="refused"))
    lost = failed_booking_paid(500)  # failed just now; its refund job was lost
    with transaction() as s:
        assert payments.waiting_refunds(s) == [lost]
    assert [payments.sweep()["refunds_started"] for _ in range(2)] == [1, 0]
    with transaction() as s:
        assert s.scalar(select(Refund.reason).where(Refund.booking_id == lost)) == "no_partner"


def test_the_ops_retry_takes_the_refund_that_gave_up_not_one_retrying_by_itself(live, client):
    from tests.test_api import API, sign_in

    bid = paid_booking()
    ref = booking(bid).reference
    emu.control("refund_outcome", "failed")
    pay_again(bid)  # the extra payment's refund fails three times: ops must act
    for _ in range(2):
        release_scheduled(timedelta(minutes=2, seconds=30))
        run()
    cancel(bid)  # the cancellation's refund fails once; its own retry is scheduled
    run()
    emu.control("refund_outcome", "processed")  # ops fixed the balance
    ops = sign_in(client, "+919812300004", role="ops")
    r = client.post(f"{API}/ops/bookings/{ref}/refund/retry", headers=ops)
    assert r.status_code == 200 and r.get_json()["reason"] == "late_payment", r.get_json()
    run()
    with transaction() as s:
        extra = s.scalar(select(Refund.status).where(
            Refund.booking_id == bid, Refund.reason == "late_payment")
            .order_by(Refund.attempt.desc()).limit(1))
    assert extra == "processed"


def test_one_refund_the_gateway_cannot_answer_about_does_not_hold_up_the_others(live):
    first, second = paid_booking(), paid_booking("+919812340002")
    refund_left_pending(first)
    cancel(second)
    run_jobs(QUEUES)
    pending = [r for r in emu._all("refund") if r["status"] == "pending"]
    assert len(pending) == 2
    for r in pending:
        emu.set_fields(r["id"], status="processed")
    emu.fail_next("fetch_refund")  # the first one asked: a 503
    assert payments.poll_refunds(timedelta(0)) == {"not-asked": 1, "refunded": 1}
    assert sorted(refunds(b)[0][3] for b in (first, second)) == ["pending", "processed"]
    assert payments.poll_refunds(timedelta(0)) == {"refunded": 1}  # the next hour's run
    assert [refunds(b)[0][3] for b in (first, second)] == ["processed", "processed"]

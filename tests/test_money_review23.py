"""Review of 2fc8ab2 (a dashboard refund beyond escrow is the platform's cost).

A refund of ours that the gateway accepted ("pending") still holds its reservation out
of escrow, and can still fail: refund.failed puts it back. record_outside_refund only
waits for a refund of ours that is "requested", so a dashboard refund that stood in for
our failed one (support refunding the customer by hand), seen before our refund.failed,
is booked as the platform's cost; when the failure comes, the booking's money is back
in escrow for good and the platform's commission is short by as much. It waits now while
any refund of ours is open, and a later run records it: out of escrow if ours failed,
the platform paying what escrow lacks if ours was processed.

Also: the ops ledger view says what the platform paid (platform_paid_paise), or its
numbers do not add up after such a refund; the alert of a shortfall no refund explains
says what the platform paid and how much of it is unexplained (it gave only the
unexplained part, as if that was all the platform paid); and ops ending a stuck relay
after a dashboard refund no longer tell the rider "you get Rs 0" or the customer "Rs 0
will come back".

Through RQ, the real razorpay client, the sandbox emulator and its signed webhooks."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core import i18n
from core.adapters import razorpay_gateway as gw
from core.adapters.db import transaction
from core.adapters.models import Booking, Leg, OutboxMessage, Person
from core.adapters.payment_models import LedgerPosting, LedgerTransaction, Refund
from core.config import get_settings
from core.domain import ledger as rules
from core.domain.booking import Actor, BookingStatus, LegStatus
from core.services import dispatch, ledger, payments, reconciliation
from sandbox import razorpay as emu
from tests.test_api import API, sign_in
from tests.test_money_escrow_short import OTHER_CUSTOMER, stuck_relay
from tests.test_payments_support import (
    CUSTOMER,
    advance,
    failed_jobs,
    ledger_checked,
    link_of,
    new_partner,
    paid_booking,
    run,
)
from tests.test_transfer_reversal import deliver, ops_alerts

pytestmark = pytest.mark.db
SYSTEM = Actor.system()
OPERATOR = "+919812300077"
RIDER2 = "+919812349002"
PLATFORM = (rules.EntryKind.OUTSIDE_REFUND_PLATFORM.value,
            rules.EntryKind.RELEASE_PLATFORM.value)


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


def platform_cost(booking_id: int) -> list[tuple[str, int]]:
    """(kind, paise out of the platform's commission) of the booking's entries that say
    the platform paid."""
    with transaction() as s:
        return [(str(k), -int(a)) for k, a in s.execute(
            select(LedgerTransaction.kind, LedgerPosting.amount_paise)
            .join(LedgerPosting, LedgerPosting.transaction_id == LedgerTransaction.id)
            .where(LedgerTransaction.booking_id == booking_id,
                   LedgerTransaction.kind.in_(PLATFORM),
                   LedgerPosting.account_kind == rules.AccountKind.PLATFORM_COMMISSION.value))]


def test_a_dashboard_refund_standing_in_for_our_failed_refund_is_not_the_platforms_cost(
        live, monkeypatch):
    """The customer cancels a paid booking; our refund of the whole fare is accepted by
    the gateway (pending), then the bank refuses it. Support refunds her by hand in the
    dashboard, and that refund.processed is seen before our refund.failed (Razorpay
    keeps no order between events; a lost one is polled hours later). The booking's
    own money paid her: once both are known, nothing is the platform's cost, escrow is
    empty and the booking is refunded. Now the dashboard's refund is booked as the
    platform's cost (escrow looked empty: our reservation), and our refund.failed then
    leaves the whole fare in the escrow of a booking already paid back."""
    bid = paid_booking()
    payment_id = link_of(bid).payment_id
    assert payment_id is not None
    payment = emu.get_object(payment_id)
    assert payment is not None
    total = payment["amount"]
    with transaction() as s:
        commission_before = ledger.balance(s, rules.COMMISSION)
        quote = payments.cancel_booking(s, ledger.lock_booking(s, bid), CUSTOMER, "no")
    assert quote.refund_paise == total
    real_send = emu.send_webhooks
    late: list[dict] = []

    def hold_refund_failed(events: list[dict]) -> None:
        late.extend(e for e in events if e["event"] == "refund.failed")
        real_send([e for e in events if e["event"] != "refund.failed"])

    monkeypatch.setattr(emu, "send_webhooks", hold_refund_failed)
    emu.control("refund_outcome", "failed")
    run()  # ours is asked (pending here); the bank refuses it; its event is on its way
    emu.control("refund_outcome", "processed")
    with transaction() as s:
        assert [r.status for r in s.scalars(select(Refund).where(
            Refund.booking_id == bid))] == ["pending"]
    gw.client().payment.refund(payment_id, {})  # support pays her back by hand
    run()  # the dashboard's refund.processed comes first
    assert len(late) == 1
    real_send(late)  # then ours: refund.failed
    run()
    monkeypatch.setattr(emu, "send_webhooks", real_send)
    reconciliation.run()
    run()
    assert not failed_jobs()
    with transaction() as s:
        money = ledger.booking_summary(s, bid)
        commission = ledger.balance(s, rules.COMMISSION)
        status = s.get(Booking, bid).status  # type: ignore[union-attr]
    assert platform_cost(bid) == []
    assert (money["refunded_paise"], money["escrow_paise"], money["refunds_pending_paise"]) \
        == (total, 0, 0)
    assert commission == commission_before
    assert status == BookingStatus.REFUNDED.value


def held_back(monkeypatch, event: str) -> list[dict]:
    """Hold the sandbox's webhooks of ``event`` back (Razorpay keeps no order between
    events): they are sent when the test says so, by emu.send_webhooks after undo."""
    real_send = emu.send_webhooks
    late: list[dict] = []

    def hold(events: list[dict]) -> None:
        late.extend(e for e in events if e["event"] == event)
        real_send([e for e in events if e["event"] != event])

    monkeypatch.setattr(emu, "send_webhooks", hold)
    return late


def test_a_dashboard_refund_seen_before_our_accepted_refund_is_processed_waits(
        live, monkeypatch):
    """The rider who took the job gets the cancellation fee; our refund of the rest is
    accepted by the gateway (pending). Support, thinking it lost, refunds the customer
    the rest of her payment from the dashboard (the fee's part) before ours is
    processed. It waits while ours is open, then a later run records it: ours processed,
    escrow holds nothing and the platform pays it all."""
    partner = new_partner()
    paid_booking(OTHER_CUSTOMER)  # the platform's balance holds other customers' money
    bid = paid_booking()
    advance(bid, partner, to="assigned")
    payment_id = link_of(bid).payment_id
    assert payment_id is not None
    with transaction() as s:
        quote = payments.cancel_booking(s, ledger.lock_booking(s, bid), CUSTOMER, "no")
    assert quote.fee_paise > 0 and quote.refund_paise > 0
    late = held_back(monkeypatch, "refund.processed")
    run()  # the fee's transfer, then our refund: accepted, processed, its event held
    with transaction() as s:
        assert [r.status for r in s.scalars(select(Refund).where(
            Refund.booking_id == bid))] == ["pending"]
    dashboard = gw.client().payment.refund(payment_id, {})  # what the payment has left
    assert dashboard["amount"] == quote.fee_paise
    run()
    monkeypatch.undo()
    assert [e["event"] for e in late] == ["refund.processed", "refund.processed"]
    assert platform_cost(bid) == []  # ours is open: nothing recorded yet
    emu.send_webhooks([e for e in late
                       if e["payload"]["refund"]["entity"]["id"] != dashboard["id"]])
    run()
    reconciliation.run()
    run()
    assert not failed_jobs()
    assert platform_cost(bid) == [("outside_refund_platform", quote.fee_paise)]
    with transaction() as s:
        money = ledger.booking_summary(s, bid)
        status = s.get(Booking, bid).status  # type: ignore[union-attr]
    assert (money["refunded_paise"], money["escrow_paise"], money["refunds_pending_paise"]) \
        == (quote.refund_paise + quote.fee_paise, 0, 0)
    assert status == BookingStatus.REFUNDED.value
    assert reconciliation.run()["mismatches"] == 0


# --- the ops ledger view: what the platform paid ---------------------------------------------


def test_the_ops_ledger_view_says_what_the_platform_paid(live, client):
    """A delivered booking's rider was paid out of escrow; support then refunds the whole
    fare from the dashboard, the platform's cost. The ops view showed captured = refunded
    and released (and commission) beside an empty escrow: more left than came in, and no
    field said who paid the rest. platform_paid_paise says it, documented, and the
    numbers add up with it."""
    ops = sign_in(client, OPERATOR, role="ops")
    partner = new_partner()
    paid_booking(OTHER_CUSTOMER)  # the platform's balance holds other customers' money
    bid = paid_booking()
    leg_id = advance(bid, partner, to="assigned")
    assert payments.hold_leg_transfer(leg_id) == "held"
    run()
    deliver(bid, leg_id)
    with transaction() as s:
        b = s.get(Booking, bid)
        assert b is not None
        ref, total = b.reference, b.total_paise
    r = client.get(f"{API}/ops/bookings/{ref}/ledger", headers=ops)
    assert r.status_code == 200 and r.get_json().get("platform_paid_paise") == 0
    gw.client().payment.refund(link_of(bid).payment_id, {})
    run()
    assert not failed_jobs()
    money = client.get(f"{API}/ops/bookings/{ref}/ledger", headers=ops).get_json()
    assert money["platform_paid_paise"] == total == money["refunded_paise"]
    assert money["captured_paise"] + money["platform_paid_paise"] == (
        money["released_paise"] + money["fee_paise"] + money["refunded_paise"]
        + money["escrow_paise"] + money["refunds_pending_paise"])
    doc = client.get(f"{API}/openapi.json").get_json()
    answer = doc["paths"][f"{API}/ops/bookings/{{ref}}/ledger"]["get"]["responses"]["200"]
    field = answer["content"]["application/json"]["schema"]["properties"][
        "platform_paid_paise"]
    assert "dashboard" in field["description"]


# --- the alert of a shortfall no refund explains ---------------------------------------------


def test_the_short_escrow_alert_says_what_the_platform_paid(live):
    """Escrow is short of a leg's payout by Rs 2: a dashboard refund of Rs 1 explains
    half, the other half nothing does (money gone from escrow, here an entry a bug might
    post). The platform pays the whole Rs 2; ops read "Rs 1 short", as if it had paid
    only that. Now they read both: what the platform paid, and what no refund explains."""
    partner = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, partner, to="assigned")
    assert payments.hold_leg_transfer(leg_id) == "held"
    run()
    with transaction() as s:
        b = ledger.lock_booking(s, bid)
        leg = s.get(Leg, leg_id)
        assert leg is not None
        ref, payout = b.reference, leg.payout_paise
        ledger.post(s, rules.refund_requested(bid, 987654, b.total_paise - payout + 100),
                    actor="bug")
    gw.client().payment.refund(link_of(bid).payment_id, {"amount": 100})
    run()
    deliver(bid, leg_id)
    assert not failed_jobs()
    assert platform_cost(bid) == [("release_platform", 200)]
    alert = i18n.t("payment.ops_escrow_short", i18n.DEFAULT_LANGUAGE, ref=ref, leg=leg_id,
                   short_paise=200, unexplained_paise=100)
    assert ops_alerts(bid) == [alert]


# --- ending a stuck relay after a dashboard refund ------------------------------------------


def told(phone: str, booking_id: int) -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.booking_id == booking_id, OutboxMessage.to_addr == phone)
            .order_by(OutboxMessage.id)))


def stuck_relay_refunded_outside() -> tuple[int, Leg]:
    """A relay of three legs: leg 1 delivered (its release job not run), leg 2's rider
    (RIDER2) holds the parcel, nobody takes leg 3 for hours; support refunded from the
    dashboard all but less than leg 1's payout. (booking, leg 2)."""
    bid, leg1_id, holder_id = stuck_relay(RIDER2)
    with transaction() as s:
        total = s.get(Booking, bid).total_paise  # type: ignore[union-attr]
        left = s.get(Leg, leg1_id).payout_paise - 100  # type: ignore[union-attr]
    gw.client().payment.refund(link_of(bid).payment_id, {"amount": total - left})
    run()
    with transaction() as s:
        holder = s.get(Leg, holder_id)
        assert holder is not None
        s.expunge(holder)
    return bid, holder


def test_ending_a_stuck_relay_after_a_dashboard_refund_promises_nobody_rs_0(live):
    """Nothing is left to refund: the dashboard gave the customer back all the booking
    still held. Ops end the stuck relay: the rider read "You get Rs 0 for it" and the
    customer "Rs 0 will come back in 5 to 7 days". Now the customer hears that the
    delivery failed and we will call her: no sum of nothing. The rider holding the
    parcel is paid his leg's payout all the same, out of the platform's commission
    (support's refund is the platform's cost: test_stuck_relay_platform), and hears it."""
    bid, holder = stuck_relay_refunded_outside()
    with transaction() as s:
        b = ledger.lock_booking(s, bid)
        quote = payments.cancel_booking(s, b, Actor("ops", "1"), "no rider at the Point")
        ref = b.reference
        customer = s.scalar(select(Person.phone).where(Person.id == b.customer_id))
        lang = s.scalar(select(Person.preferred_language).where(Person.id == b.customer_id))
    run()
    assert not failed_jobs()
    assert (quote.refund_paise, quote.fee_paise) == (0, holder.payout_paise)
    ops_phone, job = get_settings().ops_phone, dispatch.job_code(holder)
    assert customer is not None
    zero = (i18n.t("dispatch.holder_cancelled", "hi", job=job, fee_paise=0,
                   ops_phone=ops_phone),
            i18n.t("dispatch.customer_stuck_cancelled", lang, ref=ref, refund_paise=0))
    rider, her = told(RIDER2, bid), told(customer, bid)
    assert zero[0] not in rider and zero[1] not in her
    assert i18n.t("dispatch.holder_cancelled", "hi", job=job, fee_paise=holder.payout_paise,
                  ops_phone=ops_phone) in rider
    assert i18n.t("dispatch.customer_stuck_no_refund", lang, ref=ref) in her
    with transaction() as s:
        leg = s.get(Leg, holder.id)
        b = s.get(Booking, bid)
        assert leg is not None and b is not None
        assert (leg.status, b.status) == (LegStatus.FAILED.value, BookingStatus.FAILED.value)
        assert s.scalar(select(Refund.id).where(Refund.booking_id == bid,
                                                Refund.reason != payments.OUTSIDE_REFUND)) \
            is None
        assert ledger.leg_payable(s, holder.id) == holder.payout_paise

"""A booking cancelled while its rider is on the way, after a dashboard refund: support's
refund is the platform's cost, not the rider's.

The assigned rider's cancellation fee was worked out on what the payment had left after
support refunded part of it from the Razorpay dashboard (payments.record_outside_refund),
and capped at it: a refund that left escrow Rs 4 paid him Rs 4 of his Rs 10, one of
everything paid him nothing, and on a dearer fare the fee's percentage shrank with the
refund. A delivered leg's release and a stuck relay's holder's fee are paid in full out
of the platform's commission (release_platform, fee_platform); this fee was not.

Now the fee is what it would be without the dashboard refund (the same percentage and
minimum), what escrow lacks of it given by the platform's commission (rules.fee_platform,
keyed once per leg), and the customer gets back only what escrow holds of her payment
beyond it, floored as any refund (nothing under Rs 1 asked of the gateway). The preview
(dry run, the chat's question, expected_fee_paise) and the cancel agree; an extra
payment's money waiting in escrow pays none of it.

Through RQ, the real razorpay client, the sandbox emulator and its signed webhooks."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core import i18n
from core.adapters.db import transaction
from core.adapters.models import Booking, Leg
from core.domain import ledger as rules
from core.domain.booking import (
    CANCELLATION_MIN_FEE_PAISE,
    Actor,
    BookingStatus,
    cancellation_refund,
)
from core.domain.pricing import ParcelCategory, SizeBucket, SpeedTier, WeightBucket
from core.services import dispatch, ledger, payments, reconciliation
from core.services.booking import ParcelSpec, create_booking
from sandbox import razorpay as emu
from tests.test_api import API, sign_in
from tests.test_extra_payment_platform import extra_refunds, refunded_at_gateway
from tests.test_money_escrow_short import short_alerts
from tests.test_payments_gaps import pay_again
from tests.test_payments_support import (
    BETTIAH,
    LAXMIPUR,
    advance,
    failed_jobs,
    ledger_checked,
    link_of,
    new_customer,
    new_partner,
    paid_booking,
    pay,
    run,
)
from tests.test_stuck_relay_platform import dashboard_refund, ours, platform_cost, told

pytestmark = pytest.mark.db
OPS = Actor("ops", "1")
OPERATOR = "+919812300077"
CUSTOMER = "+919812340001"  # paid_booking's customer (English)
OTHER_CUSTOMER = "+919812340002"
THIRD_CUSTOMER = "+919812340003"
RIDER = "+919812349001"  # new_partner's (Hindi)
SACK = ParcelSpec(ParcelCategory.GRAIN_PRODUCE, SizeBucket.SACK, WeightBucket.W50)


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


# --- helpers --------------------------------------------------------------------------------


def full_fee(total: int) -> int:
    """The fee of cancelling a booking of ``total`` paise with a rider on the way, as it
    is with no refund made outside the service."""
    return cancellation_refund(BookingStatus.ASSIGNED, total).fee_paise


def dear_booking(phone: str = "+919812340001") -> int:
    """A paid booking whose fee is its percentage, not the minimum (a sack of grain sent
    express)."""
    customer = new_customer(phone)
    with transaction() as s:
        b = create_booking(s, customer_id=customer, channel="sms", pickup=LAXMIPUR,
                           drop=BETTIAH, parcel=SACK, tier=SpeedTier.EXPRESS,
                           recipient_name=None, recipient_phone=None,
                           actor=Actor("customer", str(customer)))
        payments.request_payment_link(s, b, Actor("customer", str(customer)))
        bid = b.id
    run()
    assert pay(bid).status_code == 200
    run()
    with transaction() as s:
        b = s.get(Booking, bid)
        assert b is not None and b.status == BookingStatus.PAID.value
        assert full_fee(b.total_paise) > CANCELLATION_MIN_FEE_PAISE, "the percentage must decide"
    return bid


def assigned(booking_id: int | None = None, *, held: bool = True) -> tuple[int, int, int]:
    """A paid booking (another customer's money in the platform's balance too) whose rider
    is on the way, his leg's transfer held on the payment as dispatch asks it. (booking,
    leg, total)."""
    partner = new_partner()
    paid_booking(OTHER_CUSTOMER)
    bid = booking_id if booking_id is not None else paid_booking()
    leg_id = advance(bid, partner, to="assigned")
    if held:
        assert payments.hold_leg_transfer(leg_id) == "held"
        run()
    with transaction() as s:
        total = s.get(Booking, bid).total_paise  # type: ignore[union-attr]
    return bid, leg_id, total


def quoted(booking_id: int, *, cancel: bool, actor: Actor | None = None) -> tuple[int, int]:
    """(refund, fee) of the customer's preview, or of her cancel."""
    with transaction() as s:
        b = ledger.lock_booking(s, booking_id)
        who = actor or Actor("customer", str(b.customer_id))
        q = payments.cancel_booking(s, b, who, "no") if cancel else (
            payments.cancellation_preview(s, b, by_ops=who.kind == "ops"))
        assert q.reason_code == "cancellation_fee", q
        return q.refund_paise, q.fee_paise


def paid_in_full(leg_id: int, fee: int) -> None:
    with transaction() as s:
        assert ledger.leg_payable(s, leg_id) == ledger.leg_paid_out(s, leg_id) == fee


def link_payment(booking_id: int) -> str:
    payment_id = link_of(booking_id).payment_id
    assert payment_id is not None
    return payment_id


def money(booking_id: int) -> tuple[int, int, int, int]:
    """(fee, refunded, escrow, refunds pending) of the booking, as the ledger has them."""
    with transaction() as s:
        m = ledger.booking_summary(s, booking_id)
    return (m["fee_paise"], m["refunded_paise"], m["escrow_paise"],
            m["refunds_pending_paise"])


# --- the rule ---------------------------------------------------------------------------------


def test_the_fee_after_a_dashboard_refund_is_the_fee_without_it():
    """The policy: support's refund changes neither the fee's percentage nor its minimum;
    the customer gets back what her payment has left beyond the fee, and nothing below
    zero. With no such refund, the quote is what it always was."""
    q = cancellation_refund(BookingStatus.ASSIGNED, 20_000 - 15_000,
                            refunded_outside_paise=15_000)
    assert (q.refund_paise, q.fee_paise) == (3_000, 2_000)
    q = cancellation_refund(BookingStatus.ASSIGNED, 400, refunded_outside_paise=8_800)
    assert (q.refund_paise, q.fee_paise) == (0, 1_000)
    q = cancellation_refund(BookingStatus.ASSIGNED, 0, refunded_outside_paise=9_200)
    assert (q.refund_paise, q.fee_paise) == (0, 1_000)
    q = cancellation_refund(BookingStatus.ASSIGNED, 0, refunded_outside_paise=600)
    assert (q.refund_paise, q.fee_paise) == (0, 600)  # never more than was paid
    assert cancellation_refund(BookingStatus.ASSIGNED, 5_000, refunded_outside_paise=500,
                               rider_late=True).refund_paise == 5_000
    assert cancellation_refund(BookingStatus.DISPATCHING, 5_000,
                               refunded_outside_paise=500).fee_paise == 0


# --- the fee in full, the platform paying what escrow lacks -----------------------------------


def test_a_customer_cancelling_after_a_dashboard_refund_pays_her_rider_his_full_fee(
        live, client):
    """Support gave back all but Rs 4 from the dashboard while the rider was on his way;
    the customer then cancels in the app. Her dry run and her cancel (at the fee shown)
    say: the rider's fee is Rs 10 as on any booking, nothing comes back. Escrow pays its
    Rs 4 of it, the platform's commission the other Rs 6, once; the rider is paid and
    told Rs 10; no refund of ours is asked; the ledger and the gateway agree."""
    bid, leg_id, total = assigned()
    fee, held = full_fee(total), 400
    with transaction() as s:
        ref = s.get(Booking, bid).reference  # type: ignore[union-attr]
        leg = s.get(Leg, leg_id)
        assert leg is not None
        job = dispatch.job_code(leg)
    dashboard_refund(bid, total - held)
    me = sign_in(client, CUSTOMER)
    look = client.post(f"{API}/bookings/{ref}/cancel?dry_run=1", headers=me)
    assert look.status_code == 200, look.get_json()
    assert (look.get_json()["fee_paise"], look.get_json()["refund_paise"]) == (fee, 0)
    r = client.post(f"{API}/bookings/{ref}/cancel?expected_fee_paise={fee}", headers=me)
    assert r.status_code == 200, r.get_json()
    assert (r.get_json()["fee_paise"], r.get_json()["refund_paise"]) == (fee, 0)
    run()
    assert not failed_jobs()
    assert platform_cost(bid) == [
        ("release_platform", f"fee:leg:{leg_id}:platform", fee - held)]
    paid_in_full(leg_id, fee)
    assert money(bid) == (fee, total - held, 0, 0)
    assert ours(bid) == []
    assert i18n.t("dispatch.job_cancelled_fee", "hi", job=job, fee_paise=fee) in told(RIDER, bid)
    assert short_alerts(bid) == []  # the dashboard's refund explains it all
    assert reconciliation.run()["mismatches"] == 0


def test_ops_cancelling_after_a_full_dashboard_refund_pay_the_rider_out_of_commission(
        live, client):
    """Support refunded the whole fare from the dashboard; ops then cancel the booking
    whose rider is on the way (no hold on the payment yet). The fee ops are shown and
    agree to is the rider's full fee, all of it the platform's cost; the customer hears
    the booking is cancelled, and is promised no Rs 0."""
    bid, leg_id, total = assigned(held=False)
    fee = full_fee(total)
    with transaction() as s:
        ref = s.get(Booking, bid).reference  # type: ignore[union-attr]
        commission_before = ledger.balance(s, rules.COMMISSION)
        fees_before = ledger.balance(s, rules.FEES)
    dashboard_refund(bid)
    ops = sign_in(client, OPERATOR, role="ops")
    look = client.post(f"{API}/bookings/{ref}/cancel?dry_run=1", headers=ops)
    assert (look.get_json()["fee_paise"], look.get_json()["refund_paise"]) == (fee, 0)
    r = client.post(f"{API}/bookings/{ref}/cancel?reason=customer+asked"
                    f"&expected_fee_paise={fee}", headers=ops)
    assert r.status_code == 200, r.get_json()
    assert (r.get_json()["fee_paise"], r.get_json()["refund_paise"]) == (fee, 0)
    run()
    assert not failed_jobs()
    assert platform_cost(bid) == [("release_platform", f"fee:leg:{leg_id}:platform", fee)]
    paid_in_full(leg_id, fee)
    with transaction() as s:
        # Less Route's fee on the payout made meanwhile (session 31), the platform's too.
        route_fees = ledger.balance(s, rules.FEES) - fees_before
        assert route_fees > 0
        assert ledger.balance(s, rules.COMMISSION) == commission_before - fee - route_fees
        assert payments.platform_paid(s, bid) == fee
        assert s.get(Booking, bid).status == BookingStatus.CANCELLED.value  # type: ignore[union-attr]
    assert money(bid) == (fee, total, 0, 0)
    assert ours(bid) == []
    her = told(CUSTOMER, bid)
    assert i18n.t("bot.cancel.done", "en", ref=ref) in her
    assert i18n.t("bot.cancel.done_fee", "en", ref=ref, fee_paise=fee, refund_paise=0) \
        not in her
    assert short_alerts(bid) == []
    assert reconciliation.run()["mismatches"] == 0


# --- the customer gets back what escrow holds beyond the fee ----------------------------------


def test_the_fees_percentage_is_of_the_fare_and_the_customer_gets_the_rest_of_escrow(live):
    """A fare whose fee is its percentage: support gave back three quarters of it from the
    dashboard. The fee was the percentage of the quarter left (so the minimum); it is the
    percentage of the fare. Escrow holds more than the fee: it pays all of it, the
    platform nothing, and the customer gets back what escrow holds beyond it."""
    # Razorpay pays a dashboard refund out of the platform's balance, and the rider's
    # held transfer is not in it: the cheap booking assigned() adds cannot cover this one.
    dear_booking(THIRD_CUSTOMER)
    bid, leg_id, total = assigned(dear_booking())
    fee, outside = full_fee(total), total * 3 // 4
    dashboard_refund(bid, outside)
    left = total - outside
    assert left > fee
    assert quoted(bid, cancel=False) == (left - fee, fee)
    assert quoted(bid, cancel=True) == (left - fee, fee)
    run()
    assert not failed_jobs()
    assert platform_cost(bid) == []
    paid_in_full(leg_id, fee)
    assert ours(bid) == [left - fee]
    assert money(bid) == (fee, total - fee, 0, 0)
    assert refunded_at_gateway(link_payment(bid)) == total - fee
    assert reconciliation.run()["mismatches"] == 0


def test_a_rest_under_a_rupee_beyond_the_full_fee_is_floored_as_any_refund(live):
    """Escrow holds the fee and 50 paise more: no 50-paise refund is asked of the gateway
    (under its Rs 1). As the refund floor does with any quote, the fee gives up 50 paise
    and the customer gets Rs 1: preview and cancel agree, and escrow is left empty."""
    # Razorpay pays a dashboard refund out of the platform's balance, and the rider's
    # held transfer is not in it: the cheap booking assigned() adds cannot cover this one.
    dear_booking(THIRD_CUSTOMER)
    bid, leg_id, total = assigned(dear_booking())
    fee = full_fee(total)
    dashboard_refund(bid, total - fee - 50)
    assert quoted(bid, cancel=False) == (100, fee - 50)
    assert quoted(bid, cancel=True) == (100, fee - 50)
    run()
    assert not failed_jobs()
    assert platform_cost(bid) == []
    paid_in_full(leg_id, fee - 50)
    assert ours(bid) == [100]
    assert money(bid) == (fee - 50, total - fee + 50, 0, 0)


# --- an extra payment's money pays none of it -------------------------------------------------


def test_an_extra_payment_waiting_in_escrow_pays_none_of_the_fee(live):
    """Support refunded the whole fare from the dashboard; the customer's UPI app then
    charged her again, and the bank refused that extra payment's refund (its money back in
    escrow until the retry). She cancels: the rider's full fee is the platform's cost,
    none of it out of her extra payment, which the retry gives back in full."""
    bid, leg_id, total = assigned()
    fee = full_fee(total)
    dashboard_refund(bid)
    emu.control("refund_outcome", "failed")
    extra = pay_again(bid)
    emu.control("refund_outcome", "processed")
    assert extra_refunds(bid) == [(extra, total, "failed")]
    assert quoted(bid, cancel=False) == (0, fee)
    assert quoted(bid, cancel=True) == (0, fee)
    assert platform_cost(bid) == [("release_platform", f"fee:leg:{leg_id}:platform", fee)]
    run()
    with transaction() as s:
        payments.retry_refund_now(s, ledger.lock_booking(s, bid), OPS)
    run()
    assert not failed_jobs()
    assert extra_refunds(bid)[-1] == (extra, total, "processed")
    assert refunded_at_gateway(extra) == total
    paid_in_full(leg_id, fee)
    with transaction() as s:
        assert ledger.balance(s, rules.escrow(bid)) == 0
        assert s.scalar(select(Booking.status).where(Booking.id == bid)) \
            == BookingStatus.CANCELLED.value

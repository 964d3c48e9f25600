"""Ops end a stuck relay after a dashboard refund: support's refund is the platform's cost.

1. The rider holding the parcel was quoted no more than escrow held (the policy's cap):
   after a full refund from the Razorpay dashboard, fee 0, and he read "job cancelled"
   with nothing for the ride he made, while a delivered leg's rider is paid in full out of
   the platform's commission (release_platform). Now his fee is his leg's payout in full,
   what escrow lacks given by the platform's commission (a release_platform keyed by the
   fee: rules.fee_platform, once per leg); the customer gets back only what escrow holds
   beyond it. The preview ops see (dry run) and the cancel agree.
2. Tracking such a booking said "the rest will come back to you" with nothing to come
   back: it says only that the delivery could not be finished.
3. A stuck relay's refund of 1 to 99 paise with no fee was promised to the customer
   ("Rs 0.50 will come back") and never asked of the gateway (under its minimum): as the
   refund floor does for any quote, it goes to the rider as his fee.

Through RQ, the real razorpay client, the sandbox emulator and its signed webhooks."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core import i18n
from core.adapters import razorpay_gateway as gw
from core.adapters.db import transaction
from core.adapters.models import Booking, Leg, OutboxMessage
from core.adapters.payment_models import LedgerPosting, LedgerTransaction, Refund
from core.config import get_settings
from core.domain import ledger as rules
from core.domain.booking import Actor, BookingStatus, LegStatus
from core.services import dispatch, ledger, payments, reconciliation
from core.services.booking import move_booking, move_leg
from tests.test_api import API, sign_in
from tests.test_dialog_gaps import Chat
from tests.test_money_escrow_short import short_alerts, stuck_relay
from tests.test_payments_support import (
    advance,
    failed_jobs,
    ledger_checked,
    link_of,
    new_partner,
    paid_booking,
    run,
)

pytestmark = pytest.mark.db
SYSTEM = Actor.system()
OPS = Actor("ops", "1")
OPERATOR = "+919812300077"
CUSTOMER = "+919812340001"  # paid_booking's customer (English)
OTHER_CUSTOMER = "+919812340002"
RIDER2 = "+919812349002"


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


# --- helpers --------------------------------------------------------------------------------


def platform_cost(booking_id: int) -> list[tuple[str, str, int]]:
    """(kind, key, paise out of the platform's commission) of the booking's entries that
    say the platform paid, oldest first."""
    kinds = (rules.EntryKind.OUTSIDE_REFUND_PLATFORM.value,
             rules.EntryKind.RELEASE_PLATFORM.value)
    with transaction() as s:
        return [(str(k), str(key), -int(a)) for k, key, a in s.execute(
            select(LedgerTransaction.kind, LedgerTransaction.idempotency_key,
                   LedgerPosting.amount_paise)
            .join(LedgerPosting, LedgerPosting.transaction_id == LedgerTransaction.id)
            .where(LedgerTransaction.booking_id == booking_id,
                   LedgerTransaction.kind.in_(kinds),
                   LedgerPosting.account_kind == rules.AccountKind.PLATFORM_COMMISSION.value)
            .order_by(LedgerTransaction.id))]


def told(phone: str, booking_id: int) -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.booking_id == booking_id, OutboxMessage.to_addr == phone)
            .order_by(OutboxMessage.id)))


def ours(booking_id: int) -> list[int]:
    """The amounts of the booking's refunds of ours (not the dashboard's)."""
    with transaction() as s:
        return list(s.scalars(select(Refund.amount_paise).where(
            Refund.booking_id == booking_id, Refund.reason != payments.OUTSIDE_REFUND)))


def held_by_its_only_rider(monkeypatch, payout: int) -> tuple[int, int]:
    """One leg, picked up, its rider paid ``payout``; dispatch.stuck_holder says he holds
    the parcel of a stuck relay (as test_money_review22 does). (booking, leg)."""
    partner = new_partner()
    paid_booking(OTHER_CUSTOMER)  # the platform's balance holds other customers' money
    bid = paid_booking()
    leg_id = advance(bid, partner, to="assigned")
    with transaction() as s:
        b = ledger.lock_booking(s, bid)
        leg = s.get(Leg, leg_id)
        assert leg is not None
        leg.payout_paise = payout
        move_leg(s, leg, LegStatus.PICKED_UP, SYSTEM, "test")
        move_booking(s, b, BookingStatus.PICKED_UP, SYSTEM, "test")

    def holder(session, b):
        return session.scalar(select(Leg).where(Leg.booking_id == b.id,
                                                Leg.status == LegStatus.PICKED_UP.value))

    monkeypatch.setattr(dispatch, "stuck_holder", holder)
    return bid, leg_id


def dashboard_refund(booking_id: int, amount: int | None = None) -> None:
    """Support refunds the booking's payment in the dashboard (all that is left, or
    ``amount``); its refund.processed is recorded when the jobs run."""
    gw.client().payment.refund(link_of(booking_id).payment_id,
                               {} if amount is None else {"amount": amount})
    run()
    with transaction() as s:
        assert s.scalar(select(Refund.status).where(
            Refund.booking_id == booking_id,
            Refund.reason == payments.OUTSIDE_REFUND)) == "processed"


def quoted(booking_id: int, *, cancel: bool) -> tuple[int, int]:
    """(refund, fee) of ops' preview, or of ops' cancel."""
    with transaction() as s:
        b = ledger.lock_booking(s, booking_id)
        q = payments.cancel_booking(s, b, OPS, "no rider at the Point") if cancel else (
            payments.cancellation_preview(s, b, by_ops=True))
        assert q.reason_code == payments.STUCK_RELAY
        return q.refund_paise, q.fee_paise


# --- 1. the holder's fee in full, the platform paying what escrow lacks ---------------------


def test_a_stuck_relay_ended_after_a_full_dashboard_refund_pays_the_holder_in_full(
        live, client):
    """Support refunded the whole fare from the dashboard; ops then end the stuck relay.
    The dry run ops see and the cancel both say: the holder's fee is his leg's payout, no
    refund. Leg 1's release and the holder's fee are each the platform's cost, once; the
    holder is paid in full and told his fee; the customer is told of no sum; the ledger
    and the gateway agree."""
    bid, leg1, holder = stuck_relay()
    with transaction() as s:
        b = s.get(Booking, bid)
        l1, l2 = s.get(Leg, leg1), s.get(Leg, holder)
        assert b is not None and l1 is not None and l2 is not None
        ref, payout1, fee = b.reference, l1.payout_paise, l2.payout_paise
        commission_before = ledger.balance(s, rules.COMMISSION)
        fees_before = ledger.balance(s, rules.FEES)
    dashboard_refund(bid)
    ops = sign_in(client, OPERATOR, role="ops")
    look = client.post(f"{API}/bookings/{ref}/cancel?dry_run=1", headers=ops)
    assert look.status_code == 200, look.get_json()
    assert (look.get_json()["fee_paise"], look.get_json()["refund_paise"]) == (fee, 0)
    r = client.post(f"{API}/bookings/{ref}/cancel?reason=no+rider+at+the+Point"
                    f"&expected_fee_paise={fee}", headers=ops)
    assert r.status_code == 200, r.get_json()
    assert (r.get_json()["fee_paise"], r.get_json()["refund_paise"]) == (fee, 0)
    run()
    assert not failed_jobs()
    assert platform_cost(bid) == [
        ("release_platform", f"release:leg:{leg1}:platform", payout1),
        ("release_platform", f"fee:leg:{holder}:platform", fee)]
    with transaction() as s:
        assert ledger.leg_payable(s, holder) == ledger.leg_paid_out(s, holder) == fee
        money = ledger.booking_summary(s, bid)
        # Less Route's fees on the payouts made meanwhile (session 31), the platform's too.
        route_fees = ledger.balance(s, rules.FEES) - fees_before
        assert route_fees > 0
        assert ledger.balance(s, rules.COMMISSION) == (
            commission_before - payout1 - fee - route_fees)
        assert payments.platform_paid(s, bid) == payout1 + fee
    assert (money["fee_paise"], money["escrow_paise"], money["refunds_pending_paise"]) == (
        fee, 0, 0)
    assert ours(bid) == []
    ops_phone, job = get_settings().ops_phone, dispatch.job_code(l2)
    rider = told(RIDER2, bid)
    assert i18n.t("dispatch.holder_cancelled", "hi", job=job, fee_paise=fee,
                  ops_phone=ops_phone) in rider
    assert i18n.t("dispatch.holder_cancelled_no_fee", "hi", job=job,
                  ops_phone=ops_phone) not in rider
    assert i18n.t("dispatch.customer_stuck_no_refund", "en", ref=ref) in told(CUSTOMER, bid)
    assert short_alerts(bid) == []  # the dashboard's refund explains it all
    assert reconciliation.run()["mismatches"] == 0


def test_escrow_pays_what_it_holds_of_the_holders_fee_and_the_platform_the_rest(
        live, monkeypatch):
    """Support refunded all but a third of the holder's payout: escrow gives that third
    of his fee, the platform's commission the rest; the customer gets nothing more back,
    and the preview said so."""
    payout = 3_000
    bid, leg_id = held_by_its_only_rider(monkeypatch, payout)
    with transaction() as s:
        total = s.get(Booking, bid).total_paise  # type: ignore[union-attr]
    held = payout // 3
    dashboard_refund(bid, total - held)
    assert quoted(bid, cancel=False) == (0, payout)
    assert quoted(bid, cancel=True) == (0, payout)
    run()
    assert not failed_jobs()
    assert platform_cost(bid) == [
        ("release_platform", f"fee:leg:{leg_id}:platform", payout - held)]
    with transaction() as s:
        assert ledger.leg_payable(s, leg_id) == ledger.leg_paid_out(s, leg_id) == payout
        money = ledger.booking_summary(s, bid)
        assert s.get(Booking, bid).status == BookingStatus.FAILED.value  # type: ignore[union-attr]
    assert (money["fee_paise"], money["escrow_paise"], money["refunded_paise"]) == (
        payout, 0, total - held)
    assert ours(bid) == []


# --- 2. tracking it: no "the rest will come back" -------------------------------------------


def test_tracking_a_stuck_relay_ended_with_nothing_to_give_back_promises_no_money(
        live, client, monkeypatch):
    """The booking stays failed with nothing to give back (support refunded it all):
    tracking said "The rest will come back to you". It says the delivery could not be
    finished, and no more."""
    bid, _leg_id = held_by_its_only_rider(monkeypatch, 3_000)
    dashboard_refund(bid)
    assert quoted(bid, cancel=True)[0] == 0
    run()
    with transaction() as s:
        b = s.get(Booking, bid)
        assert b is not None and b.status == BookingStatus.FAILED.value
        ref = b.reference
    chat = Chat(client, CUSTOMER)
    chat.send("hi")
    listed = chat.send("2")
    tracked = chat.send(ref)
    for said in (listed, tracked):
        assert i18n.t("booking.status.stuck_ended", "en", ref=ref) not in said, said
        assert i18n.t("booking.status.stuck_no_refund", "en", ref=ref) in said, said
        assert "come back" not in said, said


# --- 3. the refund floor ----------------------------------------------------------------------


def test_a_stuck_relays_rest_under_a_rupee_with_no_fee_is_the_holders_fee(live, monkeypatch):
    """The holder's leg pays nothing and escrow holds 50 paise: the customer was told
    "Rs 0.50 will come back", which no refund ever asks of the gateway (under its Rs 1).
    As the refund floor does with any quote, the rider gets it as his fee: the preview
    says so, nobody is promised what will not come, and nothing stays in escrow."""
    bid, leg_id = held_by_its_only_rider(monkeypatch, 0)
    with transaction() as s:
        b = s.get(Booking, bid)
        assert b is not None
        total, ref = b.total_paise, b.reference
    dashboard_refund(bid, total - 50)
    assert quoted(bid, cancel=False) == (0, 50)
    assert quoted(bid, cancel=True) == (0, 50)
    with transaction() as s:
        assert ledger.leg_payable(s, leg_id) == 50
        money = ledger.booking_summary(s, bid)
    assert (money["fee_paise"], money["escrow_paise"], money["refunds_pending_paise"]) == (
        50, 0, 0)
    assert ours(bid) == []
    assert platform_cost(bid) == []
    her = told(CUSTOMER, bid)
    assert i18n.t("dispatch.customer_stuck_cancelled", "en", ref=ref, refund_paise=50) \
        not in her
    assert i18n.t("dispatch.customer_stuck_no_refund", "en", ref=ref) in her

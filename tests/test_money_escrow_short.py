"""Escrow short of the money leaving it: support's refund is the platform's cost.

1. A refund made in the Razorpay dashboard (no notes of ours) of a booking whose legs
   were paid out is more than its escrow holds. The money left all the same (Razorpay
   took it from the platform's balance), yet it was logged "outside-refund-unrecorded"
   and the reconciliation listed it for ever. It is recorded now: what escrow holds from
   escrow, the rest out of the platform's commission (``outside_refund_platform``), once
   however often its event or the reconciliation sees it; the customer is told, and the
   ledger and the gateway agree.
2. A leg delivered after such a refund (escrow short of its payout) failed to release:
   the release job raised InsufficientEscrow on every retry and every sweep, the rider's
   hold was never released, and nobody was told. It is released now, the rider paid in
   full, the shortfall out of the platform's commission (``release_platform``); so is a
   delivered leg's release when ops end a stuck relay. A shortfall no refund made
   outside the service explains is paid too, and ops are told once.
3. Migration 0035 widens the entry kind CHECK; its downgrade refuses while the ledger
   holds such entries.

Through RQ, the real razorpay client, the sandbox emulator and its signed webhooks."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from alembic import command
from sqlalchemy import func, select, text

from core import clock, i18n
from core.adapters import razorpay_gateway as gw
from core.adapters.db import transaction
from core.adapters.models import Booking, Leg, OutboxMessage, Person
from core.adapters.payment_models import LedgerPosting, LedgerTransaction, Refund
from core.adapters.queue import enqueue
from core.domain import ledger as rules
from core.domain.booking import Actor, BookingStatus, LegStatus
from core.services import ledger, payments, reconciliation
from core.services.booking import move_booking, move_leg
from sandbox import razorpay as emu
from tests.test_migrations_live import db, engine, template  # noqa: F401 (fixtures)
from tests.test_payments_gaps import make_relay
from tests.test_payments_support import (
    advance,
    failed_jobs,
    ledger_checked,
    link_of,
    new_partner,
    paid_booking,
    run,
)
from tests.test_transfer_reversal import deliver, ops_alerts, paid_out_leg

pytestmark = pytest.mark.db
SYSTEM = Actor.system()
OTHER_CUSTOMER = "+919812340002"
RIDER2 = "+919812349002"
PLATFORM = (rules.EntryKind.OUTSIDE_REFUND_PLATFORM.value,
            rules.EntryKind.RELEASE_PLATFORM.value)


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


# --- helpers --------------------------------------------------------------------------------


def entries(booking_id: int, *kinds: str) -> list[tuple[str, int]]:
    """(kind, amount out of the platform's commission) of the booking's entries of
    ``kinds``, oldest first."""
    with transaction() as s:
        return [(str(k), -int(a)) for k, a in s.execute(
            select(LedgerTransaction.kind, LedgerPosting.amount_paise)
            .join(LedgerPosting, LedgerPosting.transaction_id == LedgerTransaction.id)
            .where(LedgerTransaction.booking_id == booking_id,
                   LedgerTransaction.kind.in_(kinds),
                   LedgerPosting.account_kind == rules.AccountKind.PLATFORM_COMMISSION.value)
            .order_by(LedgerTransaction.id))]


def dashboard_refund(booking_id: int, amount: int | None = None) -> dict:
    """Support refunds the booking's payment in the dashboard (all of what is left, or
    ``amount``); its refund.processed comes by webhook when the jobs run."""
    body = {} if amount is None else {"amount": amount}
    refund = gw.client().payment.refund(link_of(booking_id).payment_id, body)
    run()
    return refund


def told_customer(booking_id: int) -> list[str]:
    with transaction() as s:
        b = s.get(Booking, booking_id)
        assert b is not None
        phone = s.scalar(select(Person.phone).where(Person.id == b.customer_id))
        return list(s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.booking_id == booking_id, OutboxMessage.to_addr == phone)
            .order_by(OutboxMessage.id)))


def short_alerts(booking_id: int) -> list[str]:
    """The ops alerts of the booking saying escrow was short and no refund explains it."""
    tail = i18n.raw("payment.ops_escrow_short", i18n.DEFAULT_LANGUAGE).rsplit("}", 1)[1]
    return [a for a in ops_alerts(booking_id) if a.endswith(tail)]


def outside_rows(booking_id: int) -> list[tuple[str, int, str | None]]:
    with transaction() as s:
        return [(r.status, r.amount_paise, r.gateway_refund_id) for r in s.scalars(
            select(Refund).where(Refund.booking_id == booking_id,
                                 Refund.reason == payments.OUTSIDE_REFUND))]


def deliver_leg(booking_id: int, leg_id: int, partner_id: int,
                booking_steps: tuple[BookingStatus, ...]) -> None:
    """Assign, pick up and deliver a relay leg, moving the booking through
    ``booking_steps`` (dispatch's part, without its code); then its release job and the
    transfer job after it run."""
    with transaction() as s:
        leg, b = s.get(Leg, leg_id), s.get(Booking, booking_id)
        assert leg is not None and b is not None
        leg.partner_id = partner_id
        for ls in (LegStatus.OFFERING, LegStatus.ASSIGNED, LegStatus.PICKED_UP,
                   LegStatus.DELIVERED):
            move_leg(s, leg, ls, SYSTEM, "test")
        for bs in booking_steps:
            move_booking(s, b, bs, SYSTEM, "test")
    enqueue("workers.payments.release_leg", leg_id, job_id=f"release-{leg_id}")
    run()


def stuck_relay(rider2: str = RIDER2) -> tuple[int, int, int]:
    """A relay of three legs: leg 1 delivered (its release job not run), leg 2's rider
    (``rider2``, Hindi) holds the parcel, nobody takes leg 3 for hours. (booking, leg 1,
    leg 2)."""
    from core.adapters.dispatch_models import DispatchSearch  # after models (a cycle)

    partners = [new_partner(), new_partner(rider2, "acc_partner0002")]
    paid_booking(OTHER_CUSTOMER)  # the platform's balance holds other customers' money
    bid = paid_booking()
    with transaction() as s:
        b = s.get(Booking, bid)
        assert b is not None
        share = b.partner_share_paise
        leg1 = s.scalar(select(Leg).where(Leg.booking_id == bid))
        assert leg1 is not None
        leg1.payout_paise = share // 2
        legs = [leg1] + [Leg(booking_id=bid, sequence=n, status="pending", from_lat=0,
                              from_lng=0, to_lat=0, to_lng=0, distance_m=10_000,
                              payout_paise=p, otp_failures=0)
                         for n, p in ((2, share // 4), (3, share - share // 2 - share // 4))]
        s.add_all(legs[1:])
        s.flush()
        for leg, partner, steps in (
                (legs[0], partners[0], (LegStatus.OFFERING, LegStatus.ASSIGNED,
                                        LegStatus.PICKED_UP, LegStatus.DELIVERED)),
                (legs[1], partners[1], (LegStatus.OFFERING, LegStatus.ASSIGNED,
                                        LegStatus.PICKED_UP))):
            leg.partner_id = partner
            for ls in steps:
                move_leg(s, leg, ls, SYSTEM, "test")
        for bs in (BookingStatus.DISPATCHING, BookingStatus.ASSIGNED, BookingStatus.PICKED_UP,
                   BookingStatus.IN_TRANSIT):
            move_booking(s, b, bs, SYSTEM, "test")
        now = clock.now()
        s.add(DispatchSearch(leg_id=legs[2].id, status="paused", deadline_at=now - timedelta(
            minutes=1), started_at=now - timedelta(hours=9)))
        return bid, legs[0].id, legs[1].id


# --- 1. a dashboard refund more than escrow holds -------------------------------------------


def test_a_dashboard_refund_of_a_delivered_booking_is_the_platforms_cost(live):
    """The rider was paid out of the booking; support then refunds the customer in full
    from the dashboard. Escrow holds nothing: all of it is the platform's cost, recorded
    as the booking's refund (the customer is told), and the reconciliation agrees."""
    paid_booking(OTHER_CUSTOMER)  # the platform's balance holds other customers' money
    _partner, bid, _leg_id, _t = paid_out_leg()
    with transaction() as s:
        b = s.get(Booking, bid)
        assert b is not None
        total, ref = b.total_paise, b.reference
        commission_before = ledger.balance(s, rules.COMMISSION)
        assert ledger.balance(s, rules.escrow(bid)) == 0
    refund = dashboard_refund(bid)
    assert not failed_jobs()
    assert outside_rows(bid) == [("processed", total, refund["id"])]
    assert entries(bid, *PLATFORM) == [("outside_refund_platform", total)]
    with transaction() as s:
        money = ledger.booking_summary(s, bid)
        assert ledger.balance(s, rules.COMMISSION) == commission_before - total
    assert (money["refunded_paise"], money["escrow_paise"], money["refunds_pending_paise"]) \
        == (total, 0, 0)
    assert i18n.t("payment.refunded", "en", ref=ref, refund_paise=total) in told_customer(bid)
    assert reconciliation.run()["mismatches"] == 0


def test_a_dashboard_refund_beyond_escrow_is_recorded_once(live):
    """Its event three times and two reconciliation runs: one refund of the booking, one
    entry of each kind, one message to the customer."""
    _partner, bid, _leg_id, _t = paid_out_leg()
    refund = dashboard_refund(bid, 250)
    settled = emu.get_object(refund["id"])
    assert settled is not None and settled["status"] == "processed"
    emu.control("webhook_repeat", 3)
    emu.send_webhooks([emu._event("refund.processed", {"refund": settled})])
    run()
    emu.control("webhook_repeat", 1)
    assert payments.record_outside_refund(settled, "again") == "duplicate-refund-event"
    assert reconciliation.run()["mismatches"] == 0
    assert reconciliation.run()["mismatches"] == 0
    assert outside_rows(bid) == [("processed", 250, refund["id"])]
    assert entries(bid, *PLATFORM) == [("outside_refund_platform", 250)]
    with transaction() as s:
        kinds = dict(s.execute(
            select(LedgerTransaction.kind, func.count()).where(
                LedgerTransaction.booking_id == bid,
                LedgerTransaction.kind.in_(("refund_requested", "refund_processed")))
            .group_by(LedgerTransaction.kind)).tuples().all())
        ref = s.get(Booking, bid).reference  # type: ignore[union-attr]
    assert kinds == {"refund_requested": 1, "refund_processed": 1}
    notice = i18n.t("payment.refunded", "en", ref=ref, refund_paise=250)
    assert told_customer(bid).count(notice) == 1


def test_a_relay_refunded_in_full_half_way_pays_its_next_rider_in_full(live):
    """A relay's first leg was delivered and paid; support refunds the whole fare from
    the dashboard before the second leg is ridden. Escrow gives what it held, the
    platform's commission the rest; the second rider is then paid his payout in full,
    out of the platform's commission too (no refund of ours is asked of the gateway), by
    a direct transfer from the platform's balance (Razorpay takes no transfer on a
    payment refunded)."""
    partners = [new_partner(), new_partner("+919812349002", "acc_partner0002")]
    paid_booking(OTHER_CUSTOMER)  # the platform's balance holds other customers' money
    bid = paid_booking()
    with transaction() as s:
        b = s.get(Booking, bid)
        assert b is not None
        total, half = b.total_paise, b.partner_share_paise // 2
    make_relay(bid, half)
    with transaction() as s:
        leg1, leg2 = s.scalars(select(Leg).where(Leg.booking_id == bid)
                               .order_by(Leg.sequence)).all()
        ids, payouts = (leg1.id, leg2.id), (leg1.payout_paise, leg2.payout_paise)
    deliver_leg(bid, ids[0], partners[0], (BookingStatus.DISPATCHING, BookingStatus.ASSIGNED,
                                          BookingStatus.PICKED_UP, BookingStatus.IN_TRANSIT))
    with transaction() as s:
        held = ledger.balance(s, rules.escrow(bid))
    assert 0 < held < total
    dashboard_refund(bid)
    assert entries(bid, *PLATFORM) == [("outside_refund_platform", total - held)]
    deliver_leg(bid, ids[1], partners[1], (BookingStatus.DELIVERED,))
    assert not failed_jobs()
    assert entries(bid, *PLATFORM) == [("outside_refund_platform", total - held),
                                       ("release_platform", payouts[1])]
    with transaction() as s:
        for leg_id, payout in zip(ids, payouts, strict=True):
            assert ledger.leg_paid_out(s, leg_id) == ledger.leg_payable(s, leg_id) == payout
        money = ledger.booking_summary(s, bid)
        assert s.scalar(select(func.count()).select_from(Refund).where(
            Refund.booking_id == bid)) == 1  # the dashboard's: none of ours
    assert (money["refunded_paise"], money["escrow_paise"]) == (total, 0)
    assert short_alerts(bid) == []  # the dashboard's refund explains it
    assert reconciliation.run()["mismatches"] == 0


# --- 2. a leg's payout more than escrow holds ------------------------------------------------


def test_a_leg_delivered_after_a_full_dashboard_refund_is_paid_in_full(live):
    """Support refunded the whole fare from the dashboard while the rider was on his
    way: recorded out of escrow, it leaves nothing there. The delivered leg's release
    raised InsufficientEscrow on every try and every sweep, and the rider was never
    paid. Now he is paid his payout in full, out of the platform's commission (the
    leg's commission gives way), and the ledger and the gateway agree."""
    partner = new_partner()
    paid_booking(OTHER_CUSTOMER)  # the platform's balance holds other customers' money
    bid = paid_booking()
    leg_id = advance(bid, partner, to="assigned")
    assert payments.hold_leg_transfer(leg_id) == "held"
    run()
    with transaction() as s:
        b = s.get(Booking, bid)
        leg = s.get(Leg, leg_id)
        assert b is not None and leg is not None
        total, payout = b.total_paise, leg.payout_paise
    dashboard_refund(bid)
    assert entries(bid, *PLATFORM) == []  # escrow held it all
    deliver(bid, leg_id)
    assert not failed_jobs()
    assert entries(bid, *PLATFORM) == [("release_platform", payout)]
    with transaction() as s:
        assert ledger.leg_paid_out(s, leg_id) == ledger.leg_payable(s, leg_id) == payout
        assert ledger.partner_balance(s, partner) == 0
        money = ledger.booking_summary(s, bid)
    assert (money["refunded_paise"], money["escrow_paise"], money["commission_paise"]) == (
        total, 0, 0)
    assert payments.release_leg(leg_id) == "already-released"
    assert entries(bid, *PLATFORM) == [("release_platform", payout)]
    assert short_alerts(bid) == []
    assert reconciliation.run()["mismatches"] == 0


def test_a_shortfall_no_refund_explains_is_paid_and_ops_are_told_once(live):
    """Escrow lost money no refund made outside the service explains (here an entry a
    bug might have posted). The rider is paid in full all the same, out of the
    platform's commission, and ops hear of it once: a person must look at the booking."""
    partner = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, partner, to="assigned")
    with transaction() as s:
        b = ledger.lock_booking(s, bid)
        leg = s.get(Leg, leg_id)
        assert leg is not None
        payout, ref = leg.payout_paise, b.reference
        gone = b.total_paise - payout + 150
        ledger.post(s, rules.refund_requested(bid, 987654, gone), actor="bug")
    deliver(bid, leg_id)
    assert not failed_jobs()
    assert entries(bid, *PLATFORM) == [("release_platform", 150)]
    with transaction() as s:
        assert ledger.leg_paid_out(s, leg_id) == ledger.leg_payable(s, leg_id) == payout
    alert = i18n.t("payment.ops_escrow_short", i18n.DEFAULT_LANGUAGE, ref=ref, leg=leg_id,
                   short_paise=150, unexplained_paise=150)
    assert short_alerts(bid) == [alert]
    payments.sweep()
    run()
    assert short_alerts(bid) == [alert]


def test_ops_ending_a_stuck_relay_after_a_dashboard_refund_release_its_delivered_leg(
        live):
    """Leg 1 was delivered (its release job not run yet), leg 2's rider holds the parcel
    and nobody takes leg 3; support had refunded most of the fare from the dashboard.
    Ops end the stuck relay: leg 1's release is posted first, and escrow holds less than
    its payout. That raised InsufficientEscrow (409 to ops: the relay could not be
    ended); now the platform's commission gives the shortfall and leg 1's rider is paid
    in full."""
    bid, leg1, _holder = stuck_relay()
    with transaction() as s:
        b = s.get(Booking, bid)
        assert b is not None
        share, total = b.partner_share_paise, b.total_paise
        payout1 = s.get(Leg, leg1).payout_paise  # type: ignore[union-attr]
    left = payout1 - 100  # escrow keeps less than leg 1's payout
    dashboard_refund(bid, total - left)
    assert entries(bid, *PLATFORM) == []
    with transaction() as s:
        b = ledger.lock_booking(s, bid)
        payments.cancel_booking(s, b, Actor("ops", "1"), "no rider at the Point")
    run()
    assert not failed_jobs()
    # Then the holder's fee (his leg's payout), escrow empty: the platform's cost too.
    assert entries(bid, *PLATFORM) == [("release_platform", 100),
                                       ("release_platform", share // 4)]
    with transaction() as s:
        assert ledger.leg_paid_out(s, leg1) == ledger.leg_payable(s, leg1) == payout1
        assert s.get(Booking, bid).status == BookingStatus.FAILED.value  # type: ignore[union-attr]
    assert short_alerts(bid) == []  # the dashboard's refund explains it


# --- the rules ------------------------------------------------------------------------------


def test_the_platforms_cost_entries_top_up_escrow_from_the_commission():
    assert [rules.shortfall(e, 500) for e in (0, 200, 500, 900, -5)] == [500, 300, 0, 0, 500]
    refund = rules.outside_refund_platform(7, 31, 300)
    release = rules.release_platform(7, 12, 400)
    assert (refund.idempotency_key, release.idempotency_key) == (
        "refund:31:platform", "release:leg:12:platform")
    for entry, amount in ((refund, 300), (release, 400)):
        assert entry.delta(rules.escrow(7)) == amount == -entry.delta(rules.COMMISSION)
    with pytest.raises(Exception):  # noqa: B017 (ValidationError: no entry of 0 paise)
        rules.release_platform(7, 12, 0)


# --- 3. migration 0035 ----------------------------------------------------------------------


def test_0035_takes_the_platform_kinds_and_refuses_to_go_back_while_used(db, engine):  # noqa: F811
    from tests.test_migrations_live import LOCK_TIMEOUT_MS, alembic_config, upgrade, version

    upgrade(db, "0034")
    with engine.connect() as conn:
        before = conn.exec_driver_sql("SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                                      "WHERE conname = 'ck_ledger_transactions_kind'").scalar()
    assert "'release_platform'" not in before and "'outside_refund_platform'" not in before
    upgrade(db, "0035")
    with engine.connect() as conn:
        (checked, definition) = conn.exec_driver_sql(
            "SELECT convalidated, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conname = 'ck_ledger_transactions_kind'").one()
    assert checked
    for kind in rules.EntryKind:
        if kind not in (rules.EntryKind.REMAINDER_KEPT,  # 0039's
                        rules.EntryKind.GATEWAY_FEE):  # 0045's
            assert f"'{kind.value}'" in definition
    config = alembic_config(db, LOCK_TIMEOUT_MS, [])
    command.downgrade(config, "0034")  # nothing of theirs yet: it goes back
    upgrade(db, "0035")
    postings = [{"account": "platform_commission", "account_kind": "platform_commission",
                 "booking_id": 1, "partner_id": None, "leg_id": None, "amount_paise": -100},
                {"account": "escrow:b1", "account_kind": "escrow", "booking_id": 1,
                 "partner_id": None, "leg_id": None, "amount_paise": 100}]
    with engine.begin() as conn:
        assert conn.execute(text(
            "SELECT ledger_post(1, 'release:leg:1:platform', 'release_platform', NULL, 'test', "
            "NULL, 'test', now(), CAST(:postings AS jsonb), CAST('{}' AS jsonb))"),
            {"postings": json.dumps(postings)}).scalar() == "posted"
    with pytest.raises(RuntimeError, match="cannot go back to 0034"):
        command.downgrade(config, "0034")
    with engine.connect() as conn:
        assert version(conn) == "0035"

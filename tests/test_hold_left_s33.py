"""Session 33: a rider's hold left on the customer's payment when a cancel refunds nothing.

A rider's payout is held on the payment (a Route transfer on hold to his linked account)
when he takes a job; the hold went back only as a side effect of a refund (refund_booking
settles the legs before asking it) or of a fee (its leg's settle). A booking that closed
with nothing to refund and no fee (support refunded it all from the Razorpay dashboard
first) left the hold there for good: the platform's money held at the rider, Route's fee
charged, the reconciliation seeing nothing (a hold is no payout), and ops unable to
change or clear that rider's payout account (partner_has_jobs).

Now every leg a cancel stops whose transfer row is still on hold has its settle queued
(``transfer-<leg>``), refund or not; refund_booking settles the legs also when it finds
nothing to ask (a booking failed for want of a rider after a dashboard refund); and the
hourly reconciliation settles the legs of closed bookings whose row is still on hold
(payments.settle_left_holds), leaving a hold whose reversal waits for the gateway to its
own event (REVERSAL_WAITS).

Through RQ, the real razorpay client, the sandbox emulator and its signed webhooks."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from core import clock
from core.adapters.db import transaction
from core.adapters.models import Booking, Leg
from core.adapters.payment_models import LegTransfer
from core.adapters.queue import queue
from core.domain.booking import Actor, BookingStatus, LegStatus
from core.services import admin, dispatch, ledger, payments, reconciliation
from core.services.booking import move_booking, move_leg
from sandbox import razorpay as emu
from tests.test_cancel_fee_platform import assigned
from tests.test_money_s32 import give_back
from tests.test_payments_support import (
    advance,
    failed_jobs,
    ledger_checked,
    new_partner,
    paid_booking,
    run,
)
from tests.test_stuck_relay_platform import dashboard_refund

pytestmark = pytest.mark.db
SYSTEM = Actor.system()
OPS = Actor("ops", "1")
OPS_ACTOR = "ops:+919000000095"


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


def row(leg_id: int) -> tuple[str, str | None]:
    """The leg's transfer row: (status, last_error)."""
    with transaction() as s:
        found = s.scalar(select(LegTransfer).where(LegTransfer.leg_id == leg_id))
        assert found is not None
        return found.status, found.last_error


def holds_of(leg_id: int) -> list[tuple[int, bool, str]]:
    """The leg's transfers at the gateway: (what is left on each, on hold, status)."""
    return [(t["amount"] - int(t.get("amount_reversed") or 0), bool(t.get("on_hold")),
             t["status"])
            for t in emu._all("transfer") if (t.get("notes") or {}).get("leg_id") == str(leg_id)]


def nothing_held(leg_id: int) -> bool:
    return all(left == 0 and status == "reversed" for left, _, status in holds_of(leg_id))


def partner_of(leg_id: int) -> int:
    with transaction() as s:
        leg = s.get(Leg, leg_id)
        assert leg is not None and leg.partner_id is not None
        return leg.partner_id


def late_cancel(booking_id: int) -> None:
    """The customer cancels while her rider is late for the pickup: no fee."""
    clock.freeze(clock.now() + dispatch.pickup_window() + timedelta(minutes=1))
    with transaction() as s:
        b = ledger.lock_booking(s, booking_id)
        q = payments.cancel_booking(s, b, Actor("customer", str(b.customer_id)), "late")
    assert (q.refund_paise, q.fee_paise) == (0, 0), q


def queued() -> list[str]:
    return list(queue("default").job_ids)


# --- 1. a cancel that refunds nothing ------------------------------------------------------


def test_a_late_riders_hold_goes_back_when_the_cancel_refunds_nothing(live):
    """R3: support refunded the whole payment from the dashboard; the customer cancels
    while her rider is late (no fee). Nothing was refunded or paid, so nothing reversed
    his hold: it stayed on the payment, and ops could not change his payout account."""
    bid, leg_id, _ = assigned()
    ravi = partner_of(leg_id)
    dashboard_refund(bid)
    late_cancel(bid)
    assert f"transfer-{leg_id}" in queued()
    run()
    assert not failed_jobs()
    assert holds_of(leg_id) and nothing_held(leg_id), holds_of(leg_id)
    assert row(leg_id) == ("reversed", None)
    with transaction() as s:
        assert ledger.leg_payable(s, leg_id) == 0
    assert reconciliation.run()["mismatches"] == 0
    with transaction() as s:  # nothing of his is on hold: ops may change his account
        assert admin.set_payout_account(s, ravi, "acc_newbank00001", actor=OPS_ACTOR).changed


def test_a_given_back_riders_hold_goes_back_when_the_cancel_refunds_nothing(live):
    """R1: Ravi gave the job back (his hold waits for the next rider's, which reverses
    it); support refunds it all from the dashboard and ops cancel: no next rider comes,
    no refund is asked, and his hold stayed for good."""
    ravi = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, ravi, to="assigned")
    assert payments.hold_leg_transfer(leg_id) == "held"
    run()
    give_back(bid, leg_id)
    dashboard_refund(bid)
    with transaction() as s:
        q = payments.cancel_booking(s, s.get(Booking, bid), OPS, "refunded")
    assert (q.refund_paise, q.fee_paise) == (0, 0), q
    run()
    assert not failed_jobs()
    assert holds_of(leg_id) and nothing_held(leg_id), holds_of(leg_id)
    assert row(leg_id) == ("reversed", None)
    with transaction() as s:
        assert admin.set_payout_account(s, ravi, "acc_newbank00001", actor=OPS_ACTOR).changed


def test_a_cancel_with_a_refund_still_gives_the_hold_back_once(live):
    """A cancel that refunds (no dashboard refund): the settle queued for the stopped leg
    and the refund's own settling make one reversal, and the refund is asked."""
    bid, leg_id, total = assigned()
    clock.freeze(clock.now() + dispatch.pickup_window() + timedelta(minutes=1))
    with transaction() as s:
        b = ledger.lock_booking(s, bid)
        q = payments.cancel_booking(s, b, Actor("customer", str(b.customer_id)), "late")
    assert (q.refund_paise, q.fee_paise) == (total, 0), q
    run()
    assert not failed_jobs()
    assert nothing_held(leg_id) and len(emu._all("reversal")) == 1
    assert [(r["amount"], r["status"]) for r in emu._all("refund")] == [(total, "processed")]
    assert row(leg_id) == ("reversed", None)


# --- 2. a booking failed for want of a rider -----------------------------------------------


def test_a_failed_bookings_hold_goes_back_with_nothing_left_to_refund(live):
    """R1: a given-back rider's hold, the payment refunded in full from the dashboard, and
    the booking fails for want of a rider: its refund job (no_partner) found the refund
    made already and returned before it settled the legs."""
    ravi = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, ravi, to="assigned")
    assert payments.hold_leg_transfer(leg_id) == "held"
    run()
    give_back(bid, leg_id)
    dashboard_refund(bid)
    # Nobody takes it before the deadline: the leg and the booking fail (dispatch's
    # _fail_search), whose refund job finds nothing to ask.
    _move(bid, leg_id, None, (LegStatus.FAILED,), (BookingStatus.FAILED,))
    assert payments.refund_booking(bid, "no_partner") == "already-processed"
    run()
    assert not failed_jobs()
    assert holds_of(leg_id) and nothing_held(leg_id), holds_of(leg_id)
    assert row(leg_id) == ("reversed", None)
    # Asked again (a retry, the sweep): nothing more is reversed or queued.
    assert payments.refund_booking(bid, "no_partner") == "already-processed"
    assert f"transfer-{leg_id}" not in queued()
    run()
    assert len(emu._all("reversal")) == 1


# --- 3. ops end a stuck relay with nothing left to refund ----------------------------------


def _move(bid: int, leg_id: int, partner: int | None, steps, bsteps=(), clear=False) -> None:
    with transaction() as s:
        leg, b = s.get(Leg, leg_id), s.get(Booking, bid)
        assert leg is not None and b is not None
        if partner is not None:
            leg.partner_id = partner
        if clear:
            leg.partner_id = None
        for ls in steps:
            move_leg(s, leg, ls, SYSTEM, "test")
        for bs in bsteps:
            move_booking(s, b, bs, SYSTEM, "test")


def test_a_taken_back_riders_hold_goes_back_when_a_stuck_relay_ends_with_no_refund(live):
    """R1: leg 1 delivered (Ravi paid), Asha holds the parcel on leg 2, Tara took leg 3 and
    it was taken back from her (late at the Point); nobody else takes it. Support refunds
    from the dashboard what leg 3 would not earn, and ops end the stuck relay: Asha is
    paid her leg, nothing is refunded, and Tara's hold stayed for good."""
    from core.adapters.dispatch_models import DispatchSearch

    ravi = new_partner()
    asha = new_partner("+919812349002", "acc_partner0002")
    tara = new_partner("+919812349003", "acc_partner0003")
    bid = paid_booking()
    with transaction() as s:
        b = s.get(Booking, bid)
        assert b is not None
        share = b.partner_share_paise
        leg1 = s.scalar(select(Leg).where(Leg.booking_id == bid))
        assert leg1 is not None
        leg1.payout_paise = share // 2
        extra = [Leg(booking_id=bid, sequence=n, status="pending", from_lat=0, from_lng=0,
                     to_lat=0, to_lng=0, distance_m=10_000, payout_paise=p, otp_failures=0)
                 for n, p in ((2, share // 4), (3, share - share // 2 - share // 4))]
        s.add_all(extra)
        s.flush()
        l1, l2, l3 = leg1.id, extra[0].id, extra[1].id
        leg3_payout = extra[1].payout_paise
    _move(bid, l1, ravi, (LegStatus.OFFERING, LegStatus.ASSIGNED),
          (BookingStatus.DISPATCHING, BookingStatus.ASSIGNED))
    assert payments.hold_leg_transfer(l1) == "held"
    _move(bid, l1, None, (LegStatus.PICKED_UP,), (BookingStatus.PICKED_UP,))
    _move(bid, l2, asha, (LegStatus.OFFERING, LegStatus.ASSIGNED))
    assert payments.hold_leg_transfer(l2) == "held"
    _move(bid, l1, None, (LegStatus.DELIVERED,), (BookingStatus.IN_TRANSIT,))
    assert payments.release_leg(l1) == "released"
    run()
    _move(bid, l2, None, (LegStatus.PICKED_UP,))
    _move(bid, l3, tara, (LegStatus.OFFERING, LegStatus.ASSIGNED))
    assert payments.hold_leg_transfer(l3) == "held"
    run()
    _move(bid, l3, None, (LegStatus.OFFERING, LegStatus.PENDING), clear=True)
    with transaction() as s:
        now = clock.now()
        s.add(DispatchSearch(leg_id=l3, status="paused", deadline_at=now - timedelta(minutes=1),
                             started_at=now - timedelta(hours=9)))
    # Support gives back from the dashboard what leg 3 would not earn: all ops' preview
    # would refund.
    with transaction() as s:
        left = payments.cancellation_preview(s, s.get(Booking, bid), by_ops=True).refund_paise
    assert left >= leg3_payout
    dashboard_refund(bid, left)
    with transaction() as s:
        q = payments.cancel_booking(s, s.get(Booking, bid), OPS, "nobody at Point B")
    assert q.refund_paise == 0 and q.reason_code == payments.STUCK_RELAY, q
    run()
    assert not failed_jobs()
    taras = [(t["amount"] - int(t.get("amount_reversed") or 0), t["status"])
             for t in emu._all("transfer") if t["recipient"] == "acc_partner0003"]
    assert taras == [(0, "reversed")], taras
    assert row(l3) == ("reversed", None)
    assert row(l1)[0] == row(l2)[0] == "released"  # Ravi and Asha are paid
    with transaction() as s:
        assert admin.set_payout_account(s, tara, "acc_taranew0003", actor=OPS_ACTOR).changed


# --- 4. the safety net: the reconciliation settles holds left on closed bookings ----------


def test_the_reconciliation_gives_back_a_hold_left_on_a_closed_booking(live):
    """The settle queued by the cancel was lost (Redis lost it, a deploy): the hold stays
    on the payment, the sweep sees no leg owed. The hourly reconciliation finds the leg
    of the closed booking still on hold and settles it, once."""
    bid, leg_id, _ = assigned()
    # Another booking's rider on the way: his hold stays.
    other_bid = paid_booking("+919812340003")
    other_leg = advance(other_bid, new_partner("+919812349005"), to="assigned")
    assert payments.hold_leg_transfer(other_leg) == "held"
    run()
    dashboard_refund(bid)
    late_cancel(bid)
    lost = queue("default").fetch_job(f"transfer-{leg_id}")
    if lost is not None:  # Redis lost it
        lost.delete()
    run()
    assert row(leg_id)[0] == "on_hold"
    payments.sweep()
    run()
    assert row(leg_id)[0] == "on_hold"  # no leg owed: the sweep has nothing to do
    reconciliation.run()
    assert f"transfer-{leg_id}" in queued() and f"transfer-{other_leg}" not in queued()
    run()
    assert not failed_jobs()
    assert nothing_held(leg_id) and row(leg_id) == ("reversed", None)
    assert row(other_leg)[0] == "on_hold"
    assert holds_of(other_leg)[0][1:] == (True, "processed")
    reconciliation.run()  # nothing left to settle
    assert f"transfer-{leg_id}" not in queued()
    assert len(emu._all("reversal")) == 1


def test_the_reconciliation_leaves_a_waiting_reversal_to_its_event(live):
    """A left hold the gateway has not processed yet cannot be reversed: its reversal
    waits (REVERSAL_WAITS on the row, the row on hold). The reconciliation runs only the
    leg's resumed job for it, not a settle of its own besides; once the gateway
    processes the transfer, its event reverses it."""
    bid, leg_id, _ = assigned(held=False)
    emu.hold_unprocessed()
    assert payments.hold_leg_transfer(leg_id) == "held"
    (hold,) = emu._all("transfer")
    dashboard_refund(bid)
    late_cancel(bid)
    run()
    assert row(leg_id) == ("on_hold", payments.REVERSAL_WAITS)
    reconciliation.run()
    jobs = queued()
    assert f"transfer-{leg_id}-after-resumed" in jobs and f"transfer-{leg_id}" not in jobs
    run()
    assert row(leg_id) == ("on_hold", payments.REVERSAL_WAITS)
    emu.settle_transfer(hold["id"])
    run()
    assert not failed_jobs()
    assert nothing_held(leg_id) and row(leg_id) == ("reversed", None)
    reconciliation.run()
    assert not [j for j in queued() if j.startswith(f"transfer-{leg_id}")]

"""Session 33, money leftovers: the last rider's hold goes back when the leg's next rider
has no payout account (at his hold job, or at the leg's settle; a hold the gateway has
not processed yet waits for it); a payout never goes to an account ops changed or cleared
while its job was on its way to the gateway, and a change made while a transfer to the
old account is being made waits for it. Through RQ, the real razorpay client, the
emulator and its signed webhooks; the races are played at the gateway boundary."""

from __future__ import annotations

import pytest
from razorpay.resources.payment import Payment
from razorpay.resources.transfer import Transfer
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError

from core.adapters.db import transaction
from core.adapters.models import Booking, Leg, PartnerProfile
from core.adapters.payment_models import LegTransfer
from core.domain.booking import Actor, BookingStatus, LegStatus
from core.services import admin, ledger, payments
from core.services.booking import move_booking, move_leg
from sandbox import razorpay as emu
from tests.test_payments_support import (
    advance,
    failed_jobs,
    ledger_checked,
    new_partner,
    paid_booking,
    run,
)

pytestmark = pytest.mark.db
SYSTEM = Actor.system()
RAVI_ACCOUNT = "acc_partner0001"
SUNIL_PHONE = "+919812349002"
OPS = "ops:+919000000095"


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


def row(leg_id: int) -> LegTransfer:
    with transaction() as s:
        found = s.scalar(select(LegTransfer).where(LegTransfer.leg_id == leg_id))
        assert found is not None
        s.expunge(found)
        return found


def give_back(booking_id: int, leg_id: int) -> None:
    """What dispatch's give-back does: the leg has no rider and is offered again."""
    with transaction() as s:
        leg, b = s.get(Leg, leg_id), s.get(Booking, booking_id)
        assert leg is not None and b is not None
        leg.partner_id = None
        move_leg(s, leg, LegStatus.OFFERING, SYSTEM, "partner gave the job back")
        move_booking(s, b, BookingStatus.DISPATCHING, SYSTEM, "partner gave the job back")


def assign(booking_id: int, leg_id: int, partner_id: int) -> None:
    """What dispatch's accept does: the leg offered again is another rider's."""
    with transaction() as s:
        leg, b = s.get(Leg, leg_id), s.get(Booking, booking_id)
        assert leg is not None and b is not None
        leg.partner_id = partner_id
        move_leg(s, leg, LegStatus.ASSIGNED, SYSTEM, "accepted")
        move_booking(s, b, BookingStatus.ASSIGNED, SYSTEM, "accepted")


def deliver(booking_id: int, leg_id: int) -> None:
    with transaction() as s:
        leg, b = s.get(Leg, leg_id), s.get(Booking, booking_id)
        assert leg is not None and b is not None
        for bs, ls in ((BookingStatus.PICKED_UP, LegStatus.PICKED_UP),
                       (BookingStatus.DELIVERED, LegStatus.DELIVERED)):
            move_leg(s, leg, ls, SYSTEM, "test")
            move_booking(s, b, bs, SYSTEM, "test")


def set_account(partner_id: int, account: str | None) -> admin.Outcome:
    """What ops' set-payout-account (or clear-payout-account, for None) does."""
    with transaction() as s:
        if account is None:
            return admin.clear_payout_account(s, partner_id, actor=OPS)
        return admin.set_payout_account(s, partner_id, account, actor=OPS)


def paid_to(account: str) -> list[tuple[int, bool, str]]:
    """The transfers to ``account``: (what is left on each, on hold, status)."""
    return [(t["amount"] - t["amount_reversed"], bool(t["on_hold"]), t["status"])
            for t in emu._all("transfer") if t["recipient"] == account]


def payable(partner_id: int) -> int:
    with transaction() as s:
        return ledger.partner_balance(s, partner_id)


# --- 1. the last rider's hold goes back when the next one has no payout account ------------


def test_the_last_riders_hold_goes_back_when_the_next_has_no_account(live):
    """Ravi's hold is made; he gives the job back and Sunil, who has no payout account yet,
    takes it. Sunil's hold job made nothing (as before) but left Ravi's hold on the
    customer's payment until the leg settled: money held for a rider who no longer has the
    job, and Ravi's row on hold kept ops from changing his payout account. Now it goes
    back at once; Sunil is paid once he has an account, after delivery."""
    ravi = new_partner()
    sunil = new_partner(SUNIL_PHONE, account=None)
    bid = paid_booking()
    leg_id = advance(bid, ravi, to="assigned")
    assert payments.hold_leg_transfer(leg_id) == "held"
    run()  # the gateway processes it
    (first,) = emu._all("transfer")
    give_back(bid, leg_id)
    assign(bid, leg_id, sunil)
    assert payments.hold_leg_transfer(leg_id) == "no-account"
    assert paid_to(RAVI_ACCOUNT) == [(0, True, "reversed")]
    assert len(emu._all("transfer")) == 1  # none for Sunil
    assert (row(leg_id).partner_id, row(leg_id).status, row(leg_id).last_error) == (
        ravi, "reversed", None)
    assert payments.hold_leg_transfer(leg_id) == "no-account"  # again: nothing more
    assert len(emu._all("reversal")) == 1
    # Nothing of Ravi's is on hold now: ops may change his account.
    assert set_account(ravi, "acc_ravinew0001").changed
    deliver(bid, leg_id)
    assert payments.release_leg(leg_id) == "released"
    run()
    assert payable(sunil) == first["amount"]  # owed, waiting for his account
    assert len(emu._all("transfer")) == 1
    assert set_account(sunil, "acc_sunil00002").changed
    run()
    assert paid_to("acc_sunil00002") == [(first["amount"], False, "processed")]
    assert payable(sunil) == 0 and row(leg_id).status == "released"
    assert not failed_jobs()


def test_the_last_riders_unprocessed_hold_goes_back_once_processed(live):
    """As above, but Ravi's hold is still being processed at the gateway when Sunil (no
    account) takes the leg: its reversal waits, noted on the leg's row, and the transfer's
    transfer.processed runs the leg's hold job again, which reverses it, once."""
    ravi = new_partner()
    sunil = new_partner(SUNIL_PHONE, account=None)
    bid = paid_booking()
    leg_id = advance(bid, ravi, to="assigned")
    emu.hold_unprocessed()
    assert payments.hold_leg_transfer(leg_id) == "held"
    (first,) = emu._all("transfer")
    give_back(bid, leg_id)
    assign(bid, leg_id, sunil)
    assert payments.hold_leg_transfer(leg_id) == "no-account"
    assert emu.get_object(first["id"])["status"] == "pending"
    assert (row(leg_id).status, row(leg_id).last_error) == ("on_hold", payments.REVERSAL_WAITS)
    emu.settle_transfer(first["id"])
    run()
    assert not failed_jobs()
    assert paid_to(RAVI_ACCOUNT) == [(0, True, "reversed")]
    assert len(emu._all("transfer")) == 1 and len(emu._all("reversal")) == 1
    assert (row(leg_id).partner_id, row(leg_id).status, row(leg_id).last_error) == (
        ravi, "reversed", None)


def test_the_settle_of_a_leg_whose_rider_has_no_account_reverses_the_last_ones_hold(live):
    """Sunil's hold job never ran (lost): the leg's settle after delivery, finding Sunil
    without an account, left Ravi's hold on the payment (and would for as long as Sunil
    had none). It goes back there too; Sunil's pay waits for his account."""
    ravi = new_partner()
    sunil = new_partner(SUNIL_PHONE, account=None)
    bid = paid_booking()
    leg_id = advance(bid, ravi, to="assigned")
    assert payments.hold_leg_transfer(leg_id) == "held"
    run()  # the gateway processes it
    (first,) = emu._all("transfer")
    give_back(bid, leg_id)
    assign(bid, leg_id, sunil)
    deliver(bid, leg_id)
    assert payments.release_leg(leg_id) == "released"
    run()
    assert not failed_jobs()
    assert paid_to(RAVI_ACCOUNT) == [(0, True, "reversed")]
    assert payable(sunil) == first["amount"]
    assert (row(leg_id).status, row(leg_id).last_error) == (
        "pending", payments.NO_ACCOUNT_ERROR)
    assert set_account(sunil, "acc_sunil00002").changed
    run()
    assert paid_to("acc_sunil00002") == [(first["amount"], False, "processed")]
    assert payable(sunil) == 0 and len(emu._all("reversal")) == 1
    assert not failed_jobs()


# --- 2. a payout racing a change of the rider's payout account ------------------------------


def delivered_without_hold(account: str = RAVI_ACCOUNT) -> tuple[int, int, int]:
    """Ravi's delivered leg, released, whose transfer is still to be made (its hold job
    lost): ops may change his account, nothing of his being on hold. (partner, booking,
    leg); the leg's settle job is queued."""
    ravi = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, ravi, to="delivered")
    assert payments.release_leg(leg_id) == "released"
    return ravi, bid, leg_id


@pytest.mark.parametrize("new_account", ["acc_ravinew0001", None])
def test_a_payout_never_goes_to_an_account_changed_while_its_job_ran(live, monkeypatch,
                                                                   new_account):
    """The settle read Ravi's account, then ops changed it (or took it away) and committed,
    while the job asked the gateway for the payment's transfers: the job made the hold and
    released it to the old account all the same. Now the job, before each call that sends
    money to an account, reads it again under a lock: changed, it starts again with the
    account now (paid to the new one; none: it waits for one)."""
    ravi, _, leg_id = delivered_without_hold()
    real = Payment.transfers
    changed: list[object] = []

    def transfers_then_ops_change(self, payment_id, data=None, **kwargs):
        if not changed:
            changed.append(set_account(ravi, new_account))
        return real(self, payment_id, data or {}, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(Payment, "transfers", transfers_then_ops_change)
        outcome = payments.settle_leg_transfer(leg_id)
    assert changed and paid_to(RAVI_ACCOUNT) == []  # nothing made to the old account
    run()
    assert not failed_jobs()
    assert paid_to(RAVI_ACCOUNT) == []
    if new_account is None:
        assert outcome == "no-account"
        assert emu._all("transfer") == [] and payable(ravi) > 0
    else:
        assert outcome == "released-pending"  # the gateway processes it (run above)
        assert [(on_hold, status) for _, on_hold, status in paid_to(new_account)] == [
            (False, "processed")]
        assert payable(ravi) == 0
        assert row(leg_id).account == new_account


@pytest.mark.parametrize("call", ["create", "release"])
def test_a_change_of_account_waits_while_a_transfer_to_the_old_one_is_made(live, monkeypatch,
                                                                          call):
    """Ops change Ravi's account while the settle is inside its call to the gateway to the
    old one. Making the hold: the change went through at once (no row of his on hold
    yet), and the hold was released to an account he no longer had. Releasing it: the
    change was refused (his row on hold), but only because the row was saved between the
    two calls. Now the change waits for either call (the job holds his row's lock for
    it): shown by a lock timeout here, in the same thread. Made after, it goes through,
    and the payout made before it stands."""
    ravi, _, leg_id = delivered_without_hold()
    tried: list[str] = []
    real_create, real_edit = Payment.transfer, Transfer.edit

    def change_during_the_call() -> None:
        if tried:
            return
        with pytest.raises(OperationalError, match="lock timeout"), transaction() as s:
            s.execute(text("SET LOCAL lock_timeout = '100ms'"))
            admin.set_payout_account(s, ravi, "acc_ravinew0001", actor=OPS)
        tried.append(call)

    def creating(self, payment_id, data=None, **kwargs):
        if call == "create":
            change_during_the_call()
        return real_create(self, payment_id, data or {}, **kwargs)

    def releasing(self, transfer_id, data=None, **kwargs):
        if call == "release":
            change_during_the_call()
        return real_edit(self, transfer_id, data or {}, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(Payment, "transfer", creating)
        m.setattr(Transfer, "edit", releasing)
        assert payments.settle_leg_transfer(leg_id) == "released-pending"
    assert tried == [call]
    with transaction() as s:
        p = s.get(PartnerProfile, ravi)
        assert p is not None and p.payout_account_id == RAVI_ACCOUNT  # the change waited
    run()  # the gateway processes the transfer made before the change
    ((paid, on_hold, status),) = paid_to(RAVI_ACCOUNT)
    assert (paid > 0, on_hold, status) == (True, False, "processed")
    assert set_account(ravi, "acc_ravinew0001").changed  # after the transfer: it goes
    run()
    assert not failed_jobs()
    assert paid_to("acc_ravinew0001") == [] and payable(ravi) == 0
    assert payments.settle_leg_transfer(leg_id) == "already-paid"


def test_a_reversed_payout_paid_again_never_goes_to_an_account_changed_meanwhile(live,
                                                                             monkeypatch):
    """Ops chose to pay Ravi again a payout reversed in the dashboard; while its job looked
    for a repay transfer made before (the gateway's list of transfers), ops changed his
    account: the direct transfer went to the old one. Now it goes to the new one."""
    from tests.test_reversed_payouts_ops import reversed_leg

    ravi, bid, leg_id, t, _ = reversed_leg()
    with transaction() as s:
        payments.resolve_reversed_payout(s, ledger.lock_booking(s, bid), leg_id,
                                         payments.PAY_AGAIN, Actor("ops", "1"))
    real = Transfer.all
    changed: list[object] = []

    def listing_then_ops_change(self, data=None, **kwargs):
        if not changed:
            changed.append(set_account(ravi, "acc_ravinew0001"))
        return real(self, data or {}, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(Transfer, "all", listing_then_ops_change)
        run()
    assert changed
    run()
    assert not failed_jobs()
    again = [x for x in emu._all("transfer") if x["id"] != t["id"]]
    assert [(x["recipient"], x["amount"], x["status"]) for x in again] == [
        ("acc_ravinew0001", t["amount"], "processed")]
    with transaction() as s:
        assert ledger.leg_owed(s, leg_id) == 0 and ledger.partner_balance(s, ravi) == 0

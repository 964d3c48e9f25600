"""Session 32, the money review of waiting reversals (b8a5eb0): a settle went past a waiting
reversal and made a second transfer (ops told of a refusal, or two live transfers for one
leg, the old hold then left for good with its event lost); a transfer processed between
the refusal and the note was missed; a refund refused for the balance a waiting hold
takes told ops to top it up; the note outlived what it waited for; a leg locked at pickup
never had its reversal made. Through RQ, the real razorpay client, the emulator and its
signed webhooks; the clock is frozen, never waited for."""

from __future__ import annotations

import pytest
import razorpay
from sqlalchemy import select

from core.adapters import razorpay_gateway as gw
from core.adapters.db import transaction
from core.adapters.models import Booking, Leg, Person
from core.adapters.payment_models import LegTransfer, Refund
from core.adapters.queue import queue
from core.domain.booking import BookingStatus, LegStatus
from core.services import ledger, payments, reconciliation
from core.services.booking import move_booking, move_leg
from sandbox import razorpay as emu
from tests.test_money_s32 import SUNIL, SYSTEM, assign, give_back, ops_alerts, row
from tests.test_payments_support import (
    CUSTOMER,
    advance,
    failed_jobs,
    ledger_checked,
    new_partner,
    paid_booking,
    run,
)

pytestmark = pytest.mark.db


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


def ops() -> None:
    with transaction() as s:
        s.add(Person(phone="+919000000096", name="Meena", preferred_language="en",
                     role="ops"))


def deliver(bid: int, leg_id: int) -> None:
    with transaction() as s:
        leg, b = s.get(Leg, leg_id), s.get(Booking, bid)
        for bs, ls in ((BookingStatus.PICKED_UP, LegStatus.PICKED_UP),
                       (BookingStatus.DELIVERED, LegStatus.DELIVERED)):
            move_leg(s, leg, ls, SYSTEM, "test")
            move_booking(s, b, bs, SYSTEM, "test")


def by_recipient() -> dict[str, dict]:
    return {t["recipient"]: t for t in emu._all("transfer")}


def paid_out(leg_id: int) -> int:
    with transaction() as s:
        return ledger.leg_paid_out(s, leg_id)


def waiting_for_ravi():
    """Ravi's hold is still being processed when he gives the job back; Sunil takes it and
    his hold waits for Ravi's reversal (noted on the leg's row)."""
    ops()
    ravi = new_partner()
    sunil = new_partner(*SUNIL)
    bid = paid_booking()
    leg_id = advance(bid, ravi, to="assigned")
    emu.hold_unprocessed()
    assert payments.hold_leg_transfer(leg_id) == "held"
    (first,) = emu._all("transfer")
    give_back(bid, leg_id)
    assign(bid, leg_id, sunil)
    assert payments.hold_leg_transfer(leg_id) == "reversal-waits"
    return bid, leg_id, first, sunil


# --- 2. a settle waits for the reversal, it makes no second transfer -----------------------


def test_settle_while_the_last_riders_reversal_waits_alerts_ops_wrongly(live):
    """Sunil delivers before Ravi's hold is processed: the settle went past the waiting
    reversal and asked for a new transfer the payment cannot carry (ops told "Transfer
    amount exceeds the captured amount"). Now it waits; Ravi's transfer.processed runs the
    settle, which reverses his hold and pays Sunil, once."""
    bid, leg_id, first, sunil = waiting_for_ravi()
    deliver(bid, leg_id)
    payments.release_leg(leg_id)
    run()
    assert len(emu._all("transfer")) == 1  # nothing made beside Ravi's hold
    assert row(leg_id).last_error == payments.REVERSAL_WAITS
    emu.settle_transfer(first["id"])
    run()
    assert not failed_jobs()
    assert ops_alerts() == [], "ops told a transfer was refused while it only waits"
    transfers = by_recipient()
    assert transfers["acc_partner0001"]["status"] == "reversed"
    assert transfers["acc_partner0002"]["on_hold"] is False
    assert len(transfers) == 2 and len(emu._all("reversal")) == 1
    assert (row(leg_id).status, row(leg_id).last_error) == ("released", None)
    assert paid_out(leg_id) == transfers["acc_partner0002"]["amount"]


# --- 1. every noted row is resumed by the reconciliation -----------------------------------


def test_two_holds_at_once_and_a_lost_event_leaves_the_old_hold_for_good(live, monkeypatch):
    """A leg whose payout is under half the payment (a relay's leg): Sunil delivers while
    Ravi's reversal waits. The settle made and released Sunil's transfer beside Ravi's
    hold and saved the row released, which the reconciliation's resume never looked at:
    Ravi's hold, its event lost, stayed for good. Now the settle waits, and the
    reconciliation runs the job of every leg whose row notes a waiting reversal."""
    ops()
    ravi = new_partner()
    sunil = new_partner(*SUNIL)
    bid = paid_booking()
    leg_id = advance(bid, ravi, to="assigned")
    with transaction() as s:
        s.get(Leg, leg_id).payout_paise = 4000
    emu.hold_unprocessed()
    assert payments.hold_leg_transfer(leg_id) == "held"
    (first,) = emu._all("transfer")
    give_back(bid, leg_id)
    assign(bid, leg_id, sunil)
    assert payments.hold_leg_transfer(leg_id) == "reversal-waits"
    deliver(bid, leg_id)
    payments.release_leg(leg_id)
    run()
    with monkeypatch.context() as m:  # Ravi's hold processed, its webhook lost
        m.setattr(emu, "send_webhooks", lambda events: None)
        emu.settle_transfer(first["id"])
    run()
    reconciliation.run()
    run()
    payments.sweep()
    run()
    assert not failed_jobs()
    assert emu.get_object(first["id"])["status"] == "reversed", \
        "Ravi's hold is left on the payment for good"
    sunils = by_recipient()["acc_partner0002"]
    assert (sunils["amount"], sunils["on_hold"]) == (4000, False)
    assert (row(leg_id).status, row(leg_id).last_error) == ("released", None)
    assert paid_out(leg_id) == 4000
    assert payments.resume_waiting_reversals() == 0  # nothing left to run every hour


def test_a_noted_row_whatever_its_status_has_its_job_run_by_the_reconciliation(live):
    """The note on a row saved released (as the settle used to leave it), the transfer it
    waited for not the row's: the reconciliation runs the leg's job, under one id."""
    ravi = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, ravi, to="delivered")
    payments.release_leg(leg_id)
    run()
    with transaction() as s:
        s.scalar(select(LegTransfer).where(LegTransfer.leg_id == leg_id)).last_error = \
            payments.REVERSAL_WAITS
    assert row(leg_id).status == "released"
    reconciliation.run()
    reconciliation.run()  # the same job, not a second one
    assert queue("default").job_ids.count(f"transfer-{leg_id}-after-resumed") == 1
    run()
    assert row(leg_id).last_error is None  # paid, nothing waits: the note goes
    assert payments.resume_waiting_reversals() == 0
    assert not failed_jobs()


# --- 3. processed between the refusal and the note -----------------------------------------


def test_processed_between_the_refusal_and_the_note_is_missed(live, monkeypatch):
    """Ravi's hold is processed (and its transfer.processed handled) after Sunil's hold job
    got the 400 but before its note was written: nothing ran again, and Sunil had no hold
    until the hourly reconciliation. Now the job asks about the transfer once more after
    the note, and runs the leg's job at once."""
    ops()
    ravi = new_partner()
    sunil = new_partner(*SUNIL)
    bid = paid_booking()
    leg_id = advance(bid, ravi, to="assigned")
    emu.hold_unprocessed()
    assert payments.hold_leg_transfer(leg_id) == "held"
    (first,) = emu._all("transfer")
    give_back(bid, leg_id)
    assign(bid, leg_id, sunil)
    keep = payments._keep_reversal_waiting

    def late(leg):
        emu.settle_transfer(first["id"])  # processed now; its webhook handled at once
        run()
        keep(leg)

    monkeypatch.setattr(payments, "_keep_reversal_waiting", late)
    assert payments.hold_leg_transfer(leg_id) == "reversal-waits"
    monkeypatch.setattr(payments, "_keep_reversal_waiting", keep)
    run()
    assert not failed_jobs()
    transfers = by_recipient()
    assert "acc_partner0002" in transfers, \
        "Sunil has no hold; nothing will run until reconciliation"
    assert transfers["acc_partner0001"]["status"] == "reversed"
    assert transfers["acc_partner0002"]["on_hold"] is True
    assert len(emu._all("reversal")) == 1 and len(transfers) == 2
    assert (row(leg_id).partner_id, row(leg_id).last_error) == (sunil, None)


# --- 2 and 1: a cancellation with a fee while the reversal waits ---------------------------


def test_cancel_with_a_fee_while_the_last_riders_reversal_waits_lost_event(live, monkeypatch):
    """Single-leg booking: Ravi's hold still pending, he gives the job back, Sunil takes it
    (his hold waits), the customer cancels: Sunil's 10 % fee was paid by a new transfer
    beside Ravi's hold, the refund went, and the row was saved released; Ravi's
    transfer.processed lost, nothing reversed his hold ever. Now the fee waits with the
    reversal; the reconciliation runs the leg's settle, which reverses Ravi's hold and
    pays Sunil's fee (a direct transfer: the refund was asked)."""
    bid, leg_id, first, sunil = waiting_for_ravi()
    with transaction() as s:
        quote = payments.cancel_booking(s, ledger.lock_booking(s, bid), CUSTOMER, "no")
    assert quote.fee_paise > 0
    run()
    assert [r["status"] for r in emu._all("refund")] == ["processed"]
    assert list(by_recipient()) == ["acc_partner0001"]
    with monkeypatch.context() as m:
        m.setattr(emu, "send_webhooks", lambda events: None)
        emu.settle_transfer(first["id"])
    run()
    for _ in range(3):
        reconciliation.run()
        run()
        payments.sweep()
        run()
    assert not failed_jobs()
    assert emu.get_object(first["id"])["status"] == "reversed", \
        "Ravi's hold is left on the refunded payment for good"
    fee = by_recipient()["acc_partner0002"]
    assert fee["amount"] == quote.fee_paise and fee["on_hold"] is False
    assert paid_out(leg_id) == quote.fee_paise
    assert row(leg_id).last_error is None
    assert ops_alerts() == []


def test_cancel_with_a_fee_while_waiting_event_delivered(live):
    """As above with Ravi's transfer.processed delivered: his hold goes back and Sunil's
    fee is paid once (guards the fee once the settle waits for the reversal)."""
    bid, leg_id, first, sunil = waiting_for_ravi()
    with transaction() as s:
        quote = payments.cancel_booking(s, ledger.lock_booking(s, bid), CUSTOMER, "no")
    run()
    emu.settle_transfer(first["id"])
    run()
    assert emu.get_object(first["id"])["status"] == "reversed"
    assert not failed_jobs()
    fees = [t for t in emu._all("transfer") if t["recipient"] == "acc_partner0002"]
    assert [t["amount"] for t in fees] == [quote.fee_paise]
    assert paid_out(leg_id) == quote.fee_paise
    assert row(leg_id).last_error is None and ops_alerts() == []


# --- 4. a refund refused for the balance a waiting hold takes ------------------------------


def test_a_refund_refused_while_a_hold_it_waits_for_takes_the_balance_tells_no_one(live):
    """The platform's balance covers the refund only once Ravi's hold goes back, which
    waits for the gateway to process it: the refusal is retried, and ops are not asked to
    top the balance up (the reversal gives it back)."""
    ops()
    ravi = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, ravi, to="assigned")
    emu.hold_unprocessed()
    assert payments.hold_leg_transfer(leg_id) == "held"
    (t,) = emu._all("transfer")
    payment = emu.get_object(t["source"])
    # The balance: the payment less its fee and the hold, and 100 paise besides.
    emu.control("opening_balance", payment["fee"] + 100)
    give_back(bid, leg_id)
    with transaction() as s:
        payments.cancel_booking(s, ledger.lock_booking(s, bid), CUSTOMER, "no")
    run()
    assert emu._all("refund") == []  # refused: the hold still takes its share
    with transaction() as s:
        refund = s.scalar(select(Refund).where(Refund.booking_id == bid))
        assert (refund.status, refund.last_error[:8]) == ("requested", "refused:")
    assert not [a for a in ops_alerts() if "top it up" in a]
    assert row(leg_id).last_error == payments.REVERSAL_WAITS
    emu.settle_transfer(t["id"])  # processed: the reversal gives the balance back
    run()
    assert emu.get_object(t["id"])["status"] == "reversed"
    assert emu.platform_balance() >= payment["amount"]  # the retry is covered now
    assert ops_alerts() == [] and not failed_jobs()


# --- 5. the note goes once nothing waits ---------------------------------------------------


def test_a_paid_leg_whose_others_are_reversed_keeps_no_note(live):
    """``already-paid`` reverses the holds of others without saving the row: the note
    stayed, and the reconciliation ran the leg's job every hour for good."""
    ravi = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, ravi, to="delivered")
    payments.release_leg(leg_id)
    run()
    with transaction() as s:
        s.scalar(select(LegTransfer).where(LegTransfer.leg_id == leg_id)).last_error = \
            payments.REVERSAL_WAITS
    assert payments.settle_leg_transfer(leg_id) == "already-paid"
    assert row(leg_id).last_error is None
    assert payments.resume_waiting_reversals() == 0


def test_a_reversal_refused_after_processing_ends_in_the_jobs_failure_not_an_hourly_loop(
        live, monkeypatch):
    """Ravi's hold is processed, but its reversal is refused for another reason: the job
    fails as any refused call does (RQ's retries, then its failed jobs), and no note is
    left for the reconciliation to run it again every hour without end."""
    bid, leg_id, first, sunil = waiting_for_ravi()

    def refuse(self, transfer_id, data=None, **kwargs):
        raise gw.BadRequestError("The reversal is not allowed for this transfer")

    monkeypatch.setattr(razorpay.resources.transfer.Transfer, "reverse", refuse)
    emu.settle_transfer(first["id"])
    run()
    assert emu.get_object(first["id"])["status"] == "processed"  # not reversed
    assert row(leg_id).last_error != payments.REVERSAL_WAITS
    assert payments.resume_waiting_reversals() == 0
    monkeypatch.undo()
    payments.hold_leg_transfer(leg_id)  # the gateway takes it now (a person, or RQ's retry)
    assert emu.get_object(first["id"])["status"] == "reversed"
    run()


# --- 6. a leg locked at pickup --------------------------------------------------------------


def test_a_locked_legs_waiting_reversal_is_made(live):
    """Sunil's leg is locked (wrong codes at pickup) while Ravi's reversal waits: the hold
    job the processing runs answered "not-assigned" and reversed nothing. Now a locked
    leg is still its rider's: Ravi's hold goes back and Sunil's is made."""
    bid, leg_id, first, sunil = waiting_for_ravi()
    with transaction() as s:
        move_leg(s, s.get(Leg, leg_id), LegStatus.LOCKED, SYSTEM, "wrong codes")
    emu.settle_transfer(first["id"])
    run()
    assert not failed_jobs()
    transfers = by_recipient()
    assert transfers["acc_partner0001"]["status"] == "reversed"
    assert transfers["acc_partner0002"]["on_hold"] is True
    assert (row(leg_id).partner_id, row(leg_id).last_error) == (sunil, None)

"""Session 32, money leftovers: the reversal of a hold the gateway has not processed yet
waits for it (no retries burnt, no alert, reversed once when it is processed); every leg
owed long to a rider without a payout account is told in turn; Route's fee on a hold
that is never released is compared too. Through RQ, the real razorpay client, the
emulator and its signed webhooks; the clock is frozen and moved, never waited for."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from core import clock
from core.adapters import razorpay_gateway as gw
from core.adapters.db import transaction
from core.adapters.models import Booking, Leg, OutboxMessage, Person
from core.adapters.payment_models import LedgerTransaction, LegTransfer
from core.domain import ledger as rules
from core.domain.booking import Actor, BookingStatus, LegStatus
from core.services import ledger, payments, reconciliation
from core.services.booking import move_booking, move_leg
from sandbox import razorpay as emu
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
SYSTEM = Actor.system()
SUNIL = ("+919812349002", "acc_partner0002")


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


def row(leg_id: int) -> LegTransfer:
    with transaction() as s:
        found = s.scalar(select(LegTransfer).where(LegTransfer.leg_id == leg_id))
        assert found is not None
        s.expunge(found)
        return found


def fee_entries(transfer_id: str) -> int:
    """How many entries of Route's fee on the transfer the ledger holds."""
    with transaction() as s:
        return len(s.scalars(select(LedgerTransaction.id).where(
            LedgerTransaction.kind == rules.EntryKind.GATEWAY_FEE.value,
            LedgerTransaction.gateway_ref == transfer_id)).all())


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


def ops_alerts() -> list[str]:
    """Every message written to an operator (role ops)."""
    with transaction() as s:
        ops = select(Person.phone).where(Person.role == "ops")
        return list(s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.to_addr.in_(ops))))


# --- 1. the reversal of a hold the gateway has not processed yet waits for it ---------------


def test_the_sandbox_refuses_to_reverse_a_transfer_it_has_not_processed(live):
    ravi = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, ravi, to="assigned")
    emu.hold_unprocessed()
    assert payments.hold_leg_transfer(leg_id) == "held"
    (t,) = emu._all("transfer")
    assert t["status"] == "pending"
    with pytest.raises(gw.BadRequestError, match="balance to process a reversal"):
        gw.client().transfer.reverse(t["id"], {"amount": t["amount"]})
    assert emu.get_object(t["id"])["amount_reversed"] == 0
    emu.settle_transfer(t["id"])
    gw.client().transfer.reverse(t["id"], {"amount": t["amount"]})  # processed: it goes
    assert emu.get_object(t["id"])["status"] == "reversed"
    run()
    assert not failed_jobs()


def test_a_cancelled_legs_hold_not_processed_yet_is_reversed_once_it_is(live):
    """Ravi's hold is still being processed at the gateway when the customer cancels (he
    gave the job back: nothing earned). The settle before her refund asked for its
    reversal, Razorpay refused it (400), and the refund job failed on it and was retried
    until its tries ran out, the hold left on her payment. Now the refund goes, the
    reversal waits (noted on the leg's row), and the transfer's transfer.processed runs
    the leg's settle, which reverses it: once, its fee booked once."""
    with transaction() as s:
        s.add(Person(phone="+919000000096", name="Meena", preferred_language="en",
                     role="ops"))
    ravi = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, ravi, to="assigned")
    emu.hold_unprocessed()
    assert payments.hold_leg_transfer(leg_id) == "held"
    (t,) = emu._all("transfer")
    give_back(bid, leg_id)
    with transaction() as s:
        quote = payments.cancel_booking(s, ledger.lock_booking(s, bid), CUSTOMER, "no")
    assert quote.fee_paise == 0
    run()
    assert not failed_jobs()
    assert [r["status"] for r in emu._all("refund")] == ["processed"]
    held = emu.get_object(t["id"])
    assert (held["status"], held["amount_reversed"]) == ("pending", 0)
    assert (row(leg_id).status, row(leg_id).last_error) == ("on_hold", payments.REVERSAL_WAITS)
    assert ops_alerts() == []  # a wait, not a trouble
    emu.settle_transfer(t["id"])  # the gateway processes it: transfer.processed comes
    run()
    assert not failed_jobs()
    done = emu.get_object(t["id"])
    assert (done["status"], done["amount_reversed"]) == ("reversed", t["amount"])
    assert [r["transfer_id"] for r in emu._all("reversal")] == [t["id"]]  # once
    assert (row(leg_id).status, row(leg_id).last_error) == ("reversed", None)
    assert emu.get_object(done["source"])["amount_transferred"] == 0
    assert fee_entries(t["id"]) == 1
    assert ops_alerts() == []
    # The event again (a duplicate delivery): nothing more is reversed or booked.
    emu.send_webhooks([emu._event("transfer.processed", {"transfer": done})])
    run()
    assert len(emu._all("reversal")) == 1 and fee_entries(t["id"]) == 1
    assert not failed_jobs()


def test_the_next_riders_hold_waits_for_the_last_ones_to_be_processed(live):
    """Ravi gave the job back while his hold was still being processed; Sunil took it.
    Sunil's hold job asked for Ravi's reversal first and failed on Razorpay's 400 (a job
    dispatch enqueues with few tries: no hold for Sunil). Now it waits: Ravi's
    transfer.processed runs the leg's hold job again, which reverses Ravi's hold and makes
    Sunil's, each once."""
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
    assert len(emu._all("transfer")) == 1  # the payment may not carry both holds
    assert row(leg_id).last_error == payments.REVERSAL_WAITS
    emu.settle_transfer(first["id"])
    run()
    assert not failed_jobs()
    transfers = {t["recipient"]: t for t in emu._all("transfer")}
    assert transfers["acc_partner0001"]["status"] == "reversed"
    assert (transfers["acc_partner0002"]["status"], transfers["acc_partner0002"]["on_hold"]) \
        == ("processed", True)
    assert len(transfers) == 2 and len(emu._all("reversal")) == 1
    assert (row(leg_id).partner_id, row(leg_id).transfer_id, row(leg_id).last_error) == (
        sunil, transfers["acc_partner0002"]["id"], None)
    # Delivered: Sunil's hold is released and paid, Ravi's stays reversed.
    with transaction() as s:
        leg, b = s.get(Leg, leg_id), s.get(Booking, bid)
        for bs, ls in ((BookingStatus.PICKED_UP, LegStatus.PICKED_UP),
                       (BookingStatus.DELIVERED, LegStatus.DELIVERED)):
            move_leg(s, leg, ls, SYSTEM, "test")
            move_booking(s, b, bs, SYSTEM, "test")
    assert payments.release_leg(leg_id) == "released"
    run()
    assert row(leg_id).status == "released" and len(emu._all("reversal")) == 1
    assert not failed_jobs()


def test_a_failed_transfer_whose_reversal_waited_needs_none(live):
    """Ravi's hold, still being processed, then fails at the gateway: nothing to reverse.
    Its transfer.failed runs the leg's hold job again, which makes Sunil's hold."""
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
    emu.control("transfer_outcome", "failed")
    emu.settle_transfer(first["id"])
    emu.control("transfer_outcome", "")
    run()
    assert not failed_jobs()
    transfers = {t["recipient"]: t for t in emu._all("transfer")}
    assert transfers["acc_partner0001"]["status"] == "failed"
    assert transfers["acc_partner0002"]["on_hold"] and emu._all("reversal") == []
    assert (row(leg_id).partner_id, row(leg_id).status) == (sunil, "on_hold")


def test_a_waiting_reversal_whose_event_is_lost_is_made_by_the_reconciliation(live,
                                                                             monkeypatch):
    """As above, but the gateway's transfer.processed never comes: the hourly
    reconciliation, asking the gateway about the holds our rows show open, finds the
    transfer processed and runs the leg's settle, which reverses it."""
    ravi = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, ravi, to="assigned")
    emu.hold_unprocessed()
    assert payments.hold_leg_transfer(leg_id) == "held"
    (t,) = emu._all("transfer")
    give_back(bid, leg_id)
    with transaction() as s:
        payments.cancel_booking(s, ledger.lock_booking(s, bid), CUSTOMER, "no")
    run()
    assert row(leg_id).last_error == payments.REVERSAL_WAITS
    with monkeypatch.context() as m:  # processed, its webhook lost
        m.setattr(emu, "send_webhooks", lambda events: None)
        emu.settle_transfer(t["id"])
    run()
    assert emu.get_object(t["id"])["status"] == "processed"  # nothing told us
    reconciliation.run()
    run()
    assert emu.get_object(t["id"])["status"] == "reversed"
    assert len(emu._all("reversal")) == 1 and row(leg_id).status == "reversed"
    assert fee_entries(t["id"]) == 1  # booked by the reconciliation, once
    assert not failed_jobs()


# --- 2. every leg owed long to a rider without a payout account is told, in turn ------------

OPERATOR = "+919000000095"


def owed_legs_told() -> list[int]:
    """The legs ops were told are owed long to a rider without a payout account, in order."""
    with transaction() as s:
        keys = s.scalars(select(OutboxMessage.dedupe_key).where(
            OutboxMessage.to_addr == OPERATOR,
            OutboxMessage.dedupe_key.like("transfer-%-owed-%")).order_by(OutboxMessage.id))
        return [int(k.split("-")[1]) for k in keys if k]


def delivered_unpaid(partner: int, phones: range) -> list[int]:
    """One delivered leg of the rider per customer phone, released now: with no payout
    account each waits, owed from now. Their leg ids."""
    from core.adapters.queue import enqueue

    legs = []
    for n in phones:
        bid = paid_booking(f"+91981230{n:04d}")
        legs.append(advance(bid, partner, to="delivered"))
        enqueue("workers.payments.release_leg", legs[-1], job_id=f"release-{legs[-1]}")
    run()
    return legs


def test_every_leg_owed_long_without_an_account_is_told_oldest_first(live, monkeypatch):
    """More legs owed a week to a rider without a payout account than a sweep takes
    (SETTLE_BATCH, 3 here). The sweep took the most lately owed, and those told stayed
    owed and kept their places: the oldest leg was never told while they were owed. Now
    each sweep takes the next ones in turn, the oldest first: every leg is told, once."""
    monkeypatch.setattr(payments, "SETTLE_BATCH", 3)
    with transaction() as s:
        s.add(Person(phone=OPERATOR, name="Meena", preferred_language="en", role="ops"))
    t0 = clock.now()
    clock.freeze(t0)
    rider = new_partner(account=None)
    (oldest,) = delivered_unpaid(rider, range(1))
    clock.freeze(t0 + timedelta(days=1))
    newer = delivered_unpaid(rider, range(1, 5))
    clock.freeze(t0 + timedelta(days=9))
    payments.sweep()
    run()
    assert owed_legs_told() == [oldest, *newer[:2]]  # the oldest first
    clock.freeze(t0 + timedelta(days=9, minutes=1))
    payments.sweep()
    run()
    assert owed_legs_told() == [oldest, *newer]  # the rest in the next sweep, each once
    clock.freeze(t0 + timedelta(days=9, minutes=2))
    payments.sweep()
    run()
    assert sorted(owed_legs_told()) == sorted([oldest, *newer])
    assert not failed_jobs()


# --- 3. Route's fee on a hold never released is compared too --------------------------------


@pytest.mark.parametrize("given_back", [False, True])
def test_routes_fee_on_a_hold_never_released_is_compared_too(live, given_back):
    """Route charged its fee when it processed Ravi's hold, which stays on hold (or was
    given back: reversed, the fee kept). The reconciliation compared the fee of released
    transfers only: the gateway's fee otherwise than the ledger's was never reported."""
    ravi = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, ravi, to="assigned")
    assert payments.hold_leg_transfer(leg_id) == "held"
    run()  # processed on hold: Route took its fee, booked from transfer.processed
    (t,) = emu._all("transfer")
    assert t["on_hold"] and t["fees"] > 0 and fee_entries(t["id"]) == 1
    if given_back:
        give_back(bid, leg_id)
        with transaction() as s:
            payments.cancel_booking(s, ledger.lock_booking(s, bid), CUSTOMER, "no")
        run()
        assert emu.get_object(t["id"])["status"] == "reversed"
    assert reconciliation.run()["mismatches"] == 0
    emu.set_fields(t["id"], fees=t["fees"] + 100)  # the gateway says otherwise
    assert reconciliation.run()["mismatches"] == 1
    with transaction() as s:
        (found,) = reconciliation.list_mismatches(s)
    assert (found["kind"], found["entity"], found["gateway_id"], found["booking_id"]) == (
        "fee_differs", "transfer", t["id"], bid)
    assert (found["ledger_amount_paise"], found["gateway_amount_paise"]) == (
        t["fees"], t["fees"] + 100)
    # A later run whose window the transfer is out of asks it again (its row on hold, or
    # its open mismatch): compared again, the mismatch stays open while it differs.
    later = clock.now() + timedelta(days=2)
    assert reconciliation.run(later, later + timedelta(days=1))["mismatches"] == 1
    emu.set_fields(t["id"], fees=t["fees"])  # it agrees again: resolved
    assert reconciliation.run(later, later + timedelta(days=1))["mismatches"] == 0
    with transaction() as s:
        assert reconciliation.list_mismatches(s) == []
    assert fee_entries(t["id"]) == 1
    assert not failed_jobs()


# --- 4. a failed transfer says why ------------------------------------------------------------


def test_a_failed_transfer_says_why_and_ops_read_the_gateways_words(live):
    """The sandbox failed transfers with an empty error object, so the reason we quote to
    ops (the entity's error description) was never exercised: ops read "no reason
    given". Razorpay's failed transfer says why; the sandbox now does too."""
    from tests.test_money_fidelity import deliver, held_leg

    with transaction() as s:
        s.add(Person(phone="+919000000094", name="Meena", preferred_language="en",
                     role="ops"))
    _partner, bid, leg_id = held_leg(pending=1)  # the hold still being processed
    deliver(bid, leg_id)  # released while Razorpay processes it
    (first,) = emu._all("transfer")
    emu.control("transfer_outcome", "failed")  # every transfer to the account fails
    emu.control("transfer_error", "Account suspended")
    emu.settle_transfer(first["id"])
    run()  # fails three times in a row: the sweep makes the next, ops are told once
    failed = emu.get_object(first["id"])
    assert (failed["status"], failed["error"]["code"], failed["error"]["description"]) == (
        "failed", "BAD_REQUEST_ERROR", "Account suspended")
    assert row(leg_id).last_error == "gateway reported transfer.failed: Account suspended"
    (told,) = ops_alerts()
    assert "3 failed in a row: Account suspended" in told
    assert not failed_jobs()

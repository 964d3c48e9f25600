"""Money-side fidelity: Route transfers that Razorpay processes later than they are made
(pending first, as documented), one reconciliation run at a time, a reversed transfer's
mismatch resolved, and a payment that came after the cancellation told at once.

Through RQ, the real client, the sandbox emulator and its webhooks."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

import pytest
from sqlalchemy import select, text

from core import i18n
from core.adapters import razorpay_gateway as gw
from core.adapters.db import transaction
from core.adapters.models import Booking, Leg, OutboxMessage, Person
from core.adapters.payment_models import (
    GatewayEvent,
    LedgerPosting,
    LedgerTransaction,
    LegTransfer,
    Refund,
)
from core.adapters.queue import SANDBOX_QUEUE, enqueue, queue
from core.domain import ledger as rules
from core.domain.booking import Actor, BookingStatus, LegStatus
from core.services import ledger, payments, reconciliation
from core.services.booking import move_booking, move_leg
from sandbox import razorpay as emu
from tests.conftest import release_scheduled
from tests.test_payments_support import (
    CUSTOMER,
    advance,
    confirmed_booking,
    failed_jobs,
    ledger_checked,
    link_of,
    new_partner,
    paid_booking,
    pay,
    run,
)

pytestmark = pytest.mark.db
SYSTEM = Actor.system()


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


# --- helpers --------------------------------------------------------------------------------


def payouts() -> list[tuple[int, int, str]]:
    """Every transfer_processed entry: (partner, amount paid out, gateway transfer id)."""
    with transaction() as s:
        return sorted((int(p), -int(a), str(ref)) for p, a, ref in s.execute(
            select(LedgerPosting.partner_id, LedgerPosting.amount_paise,
                   LedgerTransaction.gateway_ref)
            .join(LedgerTransaction, LedgerTransaction.id == LedgerPosting.transaction_id)
            .where(LedgerTransaction.kind == rules.EntryKind.TRANSFER_PROCESSED.value,
                   LedgerPosting.account_kind == rules.AccountKind.PARTNER_PAYABLE.value)))


def voided() -> int:
    with transaction() as s:
        return len(list(s.scalars(select(LedgerTransaction.id).where(
            LedgerTransaction.kind == rules.EntryKind.TRANSFER_FAILED.value))))


def payable(partner_id: int) -> int:
    with transaction() as s:
        return ledger.partner_balance(s, partner_id)


def row(leg_id: int) -> LegTransfer:
    with transaction() as s:
        r = s.scalar(select(LegTransfer).where(LegTransfer.leg_id == leg_id))
        assert r is not None
        return r


def payout_of(leg_id: int) -> int:
    with transaction() as s:
        leg = s.get(Leg, leg_id)
        assert leg is not None
        return leg.payout_paise


def outcomes(event: str) -> list[str]:
    with transaction() as s:
        return [str(o) for o in s.scalars(select(GatewayEvent.outcome).where(
            GatewayEvent.event == event).order_by(GatewayEvent.id))]


def deliver(booking_id: int, leg_id: int) -> None:
    """Pick up and deliver the held leg, then run its release job (and the transfer job)."""
    with transaction() as s:
        leg, b = s.get(Leg, leg_id), s.get(Booking, booking_id)
        for bs, ls in ((BookingStatus.PICKED_UP, LegStatus.PICKED_UP),
                       (BookingStatus.DELIVERED, LegStatus.DELIVERED)):
            move_leg(s, leg, ls, SYSTEM, "test")
            move_booking(s, b, bs, SYSTEM, "test")
    enqueue("workers.payments.release_leg", leg_id, job_id=f"release-{leg_id}")
    run()


def held_leg(*, pending: int) -> tuple[int, int, int]:
    """A paid booking whose leg is assigned and held; the next ``pending`` transfers the
    gateway makes stay pending until settled by hand. (partner, booking, leg)."""
    partner = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, partner, to="assigned")
    emu.control("pending_next:transfer", pending)
    assert payments.hold_leg_transfer(leg_id) == "held"
    run()
    return partner, bid, leg_id


LOCKS = ("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = :k "
         "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")


def open_mismatches() -> dict[str, dict]:
    with transaction() as s:
        return {m["gateway_id"]: m for m in reconciliation.list_mismatches(s)}


# --- 1. a transfer starts pending; money moves when the gateway processes it ---------------


def test_a_transfer_starts_pending_and_is_processed_later_with_its_webhook(live):
    partner, _bid, leg_id = held_leg(pending=1)
    (t,) = emu._all("transfer")
    # Razorpay's documented answer to POST /v1/payments/:id/transfers.
    assert (t["status"], t["processed_at"], t["on_hold"]) == ("pending", None, True)
    assert outcomes("transfer.processed") == []  # nothing processed, nothing said
    assert row(leg_id).status == "on_hold" and payouts() == []
    processed = emu.settle_transfer(t["id"])
    assert processed["status"] == "processed" and processed["processed_at"] is not None
    run()
    assert outcomes("transfer.processed") == ["transfer-on-hold"]  # a hold is no payout
    assert payouts() == [] and payable(partner) == 0
    # Settled once: a second settle (a repeated job) changes nothing and says nothing.
    assert emu.settle_transfer(t["id"])["processed_at"] == processed["processed_at"]
    run()
    assert outcomes("transfer.processed") == ["transfer-on-hold"]
    assert not failed_jobs()


def test_without_the_control_the_gateway_processes_a_transfer_a_moment_later(live):
    partner = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, partner, to="assigned")
    assert payments.hold_leg_transfer(leg_id) == "held"
    assert emu._all("transfer")[0]["status"] == "pending"
    run()  # the emulator's own job processes it, and its webhook comes
    (t,) = emu._all("transfer")
    assert t["status"] == "processed" and t["processed_at"] is not None
    assert outcomes("transfer.processed") == ["transfer-on-hold"]
    assert not failed_jobs()


def test_a_hold_released_while_pending_is_paid_out_only_once_processed(live):
    partner, bid, leg_id = held_leg(pending=1)
    payout = payout_of(leg_id)
    deliver(bid, leg_id)  # the release reaches the gateway before it processed the transfer
    (t,) = emu._all("transfer")
    assert (t["status"], t["on_hold"]) == ("pending", False)
    # The hold is released, but no money has moved: no payout in the ledger yet.
    assert row(leg_id).status == "released"
    assert payouts() == [] and payable(partner) == payout
    # The books agree with the gateway meanwhile: a pending transfer is no payout there.
    assert reconciliation.run()["mismatches"] == 0
    # A settle of the leg meanwhile (a retry, the sweep) waits for it; makes no other.
    assert payments.settle_leg_transfer(leg_id) == "released-pending"
    assert len(emu._all("transfer")) == 1 and payouts() == []
    emu.settle_transfer(t["id"])
    run()
    assert outcomes("transfer.processed") == ["transfer-processed"]
    assert payouts() == [(partner, payout, t["id"])] and payable(partner) == 0
    assert payments.settle_leg_transfer(leg_id) == "already-paid"
    assert reconciliation.run()["mismatches"] == 0 and open_mismatches() == {}
    assert not failed_jobs()


def test_a_released_pending_transfer_whose_webhook_is_lost_is_paid_by_the_sweep(live):
    partner, bid, leg_id = held_leg(pending=1)
    payout = payout_of(leg_id)
    deliver(bid, leg_id)
    (t,) = emu._all("transfer")
    emu.settle_transfer(t["id"])
    queue(SANDBOX_QUEUE).empty()  # its transfer.processed is never delivered
    run()
    assert emu.get_object(t["id"])["status"] == "processed" and payouts() == []
    assert payments.sweep()["transfers"] == 1  # the leg is still owed: settled again
    run()
    assert payouts() == [(partner, payout, t["id"])] and payable(partner) == 0
    assert len(emu._all("transfer")) == 1
    assert not failed_jobs()


def test_a_released_pending_transfer_that_fails_is_made_again_and_paid_once(live):
    partner, bid, leg_id = held_leg(pending=2)  # the replacement waits too
    payout = payout_of(leg_id)
    deliver(bid, leg_id)
    (first,) = emu._all("transfer")
    emu.control("transfer_outcome", "failed")
    assert emu.settle_transfer(first["id"])["status"] == "failed"
    emu.control("transfer_outcome", "")
    run()  # transfer.failed: nothing was paid out, so nothing is voided; made again
    assert outcomes("transfer.failed") == ["transfer-failed"]
    assert voided() == 0 and payouts() == []
    (second,) = [t for t in emu._all("transfer") if t["id"] != first["id"]]
    assert (second["status"], second["on_hold"], second["amount"]) == ("pending", False,
                                                                       payout)
    emu.settle_transfer(second["id"])
    run()
    assert payouts() == [(partner, payout, second["id"])] and payable(partner) == 0
    assert (row(leg_id).transfer_id, row(leg_id).status) == (second["id"], "released")
    assert emu.get_object(first["source"])["amount_transferred"] == payout
    assert reconciliation.run()["mismatches"] == 0
    assert not failed_jobs()


def test_a_partial_reversal_leaves_a_processed_transfer_partially_reversed(live):
    _partner, bid, leg_id = held_leg(pending=0)
    (t,) = emu._all("transfer")
    assert t["status"] == "processed"
    gw.client().transfer.reverse(t["id"], {"amount": 100})
    assert emu.get_object(t["id"])["status"] == "partially_reversed"
    gw.client().transfer.reverse(t["id"], {"amount": t["amount"] - 100})
    assert emu.get_object(t["id"])["status"] == "reversed"


# --- 2. one reconciliation run at a time ------------------------------------------------------


def test_a_second_reconciliation_run_meanwhile_is_skipped_not_raced(live, caplog, monkeypatch):
    """Two runs at once, each on its own thread and database session: the second, started
    while the first holds the lock, does nothing (it would otherwise record what it saw,
    and the older run, committing later, would reopen what the newer one resolved)."""
    emu.create_payment(12_300)  # unknown to the ledger: a mismatch to record
    real_record = reconciliation._record
    recording, go_on = threading.Event(), threading.Event()

    def slow_record(findings, checked):
        if threading.current_thread().name == "first-run":
            recording.set()
            assert go_on.wait(30)
        real_record(findings, checked)

    monkeypatch.setattr(reconciliation, "_record", slow_record)
    results: dict[str, dict] = {}
    first = threading.Thread(target=lambda: results.update(first=reconciliation.run()),
                             name="first-run")
    first.start()
    try:
        assert recording.wait(30)  # the first run has compared; it has not recorded yet
        with transaction() as s:  # its lock, as operators see it
            assert s.scalar(text(LOCKS), {"k": reconciliation.RECONCILE_LOCK_KEY}) == 1
        with caplog.at_level(logging.WARNING, logger="core.services.reconciliation"):
            second = reconciliation.run()
    finally:
        go_on.set()
        first.join(30)
    assert second.get("skipped") == 1 and second["payments"] == 0
    assert "another run is in progress" in caplog.text
    assert results["first"]["mismatches"] == 1 and "skipped" not in results["first"]
    assert {m["kind"] for m in open_mismatches().values()} == {"missing_in_ledger"}
    # The lock went with the first run: the next one runs.
    assert "skipped" not in reconciliation.run()


def test_the_lock_is_not_kept_by_a_run_that_fails(live, monkeypatch):
    def broken(*args, **kwargs):
        raise gw.ServerError("the gateway is down")

    monkeypatch.setattr(reconciliation, "_pages", broken)
    with pytest.raises(gw.ServerError):
        reconciliation.run()
    with transaction() as s:  # released with the failed run, not left on a pooled session
        assert s.scalar(text(LOCKS), {"k": reconciliation.RECONCILE_LOCK_KEY}) == 0
    monkeypatch.undo()
    assert "skipped" not in reconciliation.run()


# --- 3. a reversed transfer's missing_in_ledger mismatch ----------------------------------------


def test_a_payout_missing_in_the_ledger_is_resolved_once_its_transfer_is_reversed(live):
    _partner, bid, leg_id = held_leg(pending=0)
    (held,) = emu._all("transfer")
    emu.set_fields(held["id"], on_hold=False)  # released at the gateway behind our back
    reconciliation.run()
    (m,) = open_mismatches().values()
    assert (m["kind"], m["gateway_id"], m["gateway_amount_paise"]) == (
        "missing_in_ledger", held["id"], held["amount"])
    # Half of it comes back first: still paid out, for what is left.
    gw.client().transfer.reverse(held["id"], {"amount": held["amount"] // 2})
    reconciliation.run()
    (m,) = open_mismatches().values()
    assert m["gateway_amount_paise"] == held["amount"] - held["amount"] // 2
    # Then all of it: nobody was paid, and the ledger shows no payout: they agree.
    gw.client().transfer.reverse(held["id"], {"amount": held["amount"] - held["amount"] // 2})
    assert emu.get_object(held["id"])["status"] == "reversed"
    assert reconciliation.run()["mismatches"] == 0
    assert open_mismatches() == {}
    with transaction() as s:
        (every,) = reconciliation.list_mismatches(s, include_resolved=True)
        assert every["resolved_at"] is not None
        assert ledger.leg_paid_out(s, leg_id) == 0
    assert payouts() == []


def test_a_mismatched_transfer_the_gateway_cannot_show_stays_open(live):
    _partner, _bid, _leg_id = held_leg(pending=0)
    (held,) = emu._all("transfer")
    emu.set_fields(held["id"], on_hold=False)
    reconciliation.run()
    assert set(open_mismatches()) == {held["id"]}
    gw.client().transfer.reverse(held["id"], {"amount": held["amount"]})
    from razorpay.resources.transfer import Transfer

    real_fetch = Transfer.fetch

    def down(self, transfer_id, data=None, **kwargs):
        if transfer_id == held["id"]:
            raise gw.ServerError("the gateway could not show it")
        return real_fetch(self, transfer_id, data or {}, **kwargs)

    import unittest.mock

    with unittest.mock.patch.object(Transfer, "fetch", down):
        reconciliation.run()
    assert set(open_mismatches()) == {held["id"]}  # not resolved on no answer
    reconciliation.run()
    assert open_mismatches() == {}


# --- 4. a link paid after the booking was cancelled ---------------------------------------------


def test_a_payment_after_the_cancellation_is_told_at_once_then_refunded(live):
    bid = confirmed_booking()
    run()
    link_of(bid)  # the link was sent
    with transaction() as s:
        payments.cancel_booking(s, ledger.lock_booking(s, bid), CUSTOMER, "no longer needed")
    assert pay(bid).status_code == 200  # before the cancel job reached the gateway
    emu.fail_next("refund")  # the refund's first call gets no answer: it is retried later
    run()
    b = booking(bid)
    assert b.status == BookingStatus.CANCELLED.value
    total = b.total_paise
    with transaction() as s:
        person = s.get(Person, b.customer_id)
        assert person is not None
        phone = person.phone
        assert s.scalar(select(Refund.status)) == "requested"  # not refunded yet
    told = i18n.t("payment.after_cancel", "en", ref=b.reference, refund_paise=total)
    assert sent(bid) == [(phone, told)]
    assert release_scheduled(timedelta(seconds=11)) == 1
    run()
    refunded = i18n.t("payment.refunded", "en", ref=b.reference, refund_paise=total)
    assert sent(bid) == [(phone, told), (phone, refunded)]
    # The capture's event again (a duplicate delivery) tells nothing twice.
    payment_id = emu._all("payment")[0]["id"]
    assert payments.record_capture(bid, payment_id, total, cause="again") == "duplicate-capture"
    assert len(sent(bid)) == 2


def booking(booking_id: int) -> Booking:
    with transaction() as s:
        b = s.get(Booking, booking_id)
        assert b is not None
        return b


def sent(booking_id: int) -> list[tuple[str, str]]:
    """(to, body) of what the booking's customer was told about its money coming back
    (the late payment, the refund), in order."""
    with transaction() as s:
        rows = s.execute(select(OutboxMessage.to_addr, OutboxMessage.body).where(
            OutboxMessage.booking_id == booking_id,
            OutboxMessage.dedupe_key.like("late-pay-%")
            | OutboxMessage.dedupe_key.like("refund-%")).order_by(OutboxMessage.id)).all()
    return [(str(to), str(body)) for to, body in rows]

"""Route transfers held for a leg's partner: the ledger counts a payout only once the hold
is released (a hold can still be reversed), to the partner who did the job, for what is
left on the transfer. Through RQ, the real client, the emulator and its webhooks."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from core.adapters.db import transaction
from core.adapters.models import Booking, Leg
from core.adapters.payment_models import LedgerPosting, LedgerTransaction, LegTransfer
from core.adapters.queue import enqueue
from core.domain import ledger as rules
from core.domain.booking import Actor, BookingStatus, LegStatus
from core.services import ledger, payments
from core.services.booking import move_booking, move_leg
from sandbox import razorpay as emu
from tests.conftest import release_scheduled
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


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


def hold(leg_id: int, tag: str = "1") -> None:
    """What dispatch does on assignment: the hold job, then its transfer.processed webhook."""
    enqueue("workers.payments.hold_leg_transfer", leg_id, job_id=f"hold-{leg_id}-{tag}")
    run()


def deliver(booking_id: int, leg_id: int) -> None:
    """Pick up and deliver the leg, then run its release job (and the transfer job after)."""
    with transaction() as s:
        leg, b = s.get(Leg, leg_id), s.get(Booking, booking_id)
        for bs, ls in ((BookingStatus.PICKED_UP, LegStatus.PICKED_UP),
                       (BookingStatus.DELIVERED, LegStatus.DELIVERED)):
            move_leg(s, leg, ls, SYSTEM, "test")
            move_booking(s, b, bs, SYSTEM, "test")
    enqueue("workers.payments.release_leg", leg_id, job_id=f"release-{leg_id}")
    run()


def payable(partner_id: int) -> int:
    with transaction() as s:
        return ledger.partner_balance(s, partner_id)


def payouts() -> list[tuple[int, int, str]]:
    """Every transfer_processed entry: (partner, amount paid out, gateway transfer id)."""
    with transaction() as s:
        return sorted((int(p), -int(a), str(ref)) for p, a, ref in s.execute(
            select(LedgerPosting.partner_id, LedgerPosting.amount_paise,
                   LedgerTransaction.gateway_ref)
            .join(LedgerTransaction, LedgerTransaction.id == LedgerPosting.transaction_id)
            .where(LedgerTransaction.kind == rules.EntryKind.TRANSFER_PROCESSED.value,
                   LedgerPosting.account_kind == rules.AccountKind.PARTNER_PAYABLE.value)))


def row(leg_id: int) -> LegTransfer:
    with transaction() as s:
        r = s.scalar(select(LegTransfer).where(LegTransfer.leg_id == leg_id))
        assert r is not None
        return r


def left(transfer: dict) -> int:
    return transfer["amount"] - transfer["amount_reversed"]


def cancel(booking_id: int) -> int:
    """The customer cancels after assignment; return the fee kept for the partner."""
    with transaction() as s:
        q = payments.cancel_booking(s, ledger.lock_booking(s, booking_id), CUSTOMER, "no")
    assert q.fee_paise > 0
    return q.fee_paise


def test_a_held_transfer_is_no_payout_and_a_cancellation_pays_out_only_the_fee(live):
    partner = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, partner, to="assigned")
    hold(leg_id)  # transfer.processed arrived with on_hold: true
    (held,) = emu._all("transfer")
    assert held["on_hold"] is True
    assert payable(partner) == 0 and payouts() == []
    assert row(leg_id).status == "on_hold"
    fee = cancel(bid)
    run()
    (t,) = emu._all("transfer")
    assert t["id"] == held["id"] and t["on_hold"] is False and left(t) == fee
    assert payouts() == [(partner, fee, t["id"])]
    assert payable(partner) == 0  # earned the fee, was paid the fee
    r = row(leg_id)
    assert (r.status, r.amount_paise, r.partner_id) == ("released", fee, partner)
    assert not failed_jobs()


def test_a_reassigned_leg_pays_the_partner_who_delivered_and_nothing_to_the_first(live):
    first = new_partner()
    second = new_partner("+919812349002", "acc_partner0002")
    bid = paid_booking()
    leg_id = advance(bid, first, to="assigned")
    hold(leg_id, "1")
    with transaction() as s:  # the first partner gives the job back; the second takes it
        s.get(Leg, leg_id).partner_id = second
        payout = s.get(Leg, leg_id).payout_paise
    hold(leg_id, "2")
    r = row(leg_id)
    assert (r.partner_id, r.account, r.status) == (second, "acc_partner0002", "on_hold")
    deliver(bid, leg_id)
    transfers = {t["recipient"]: t for t in emu._all("transfer")}
    assert transfers["acc_partner0001"]["status"] == "reversed"
    paid = transfers["acc_partner0002"]
    assert paid["on_hold"] is False and left(paid) == payout
    assert payouts() == [(second, payout, paid["id"])]
    assert payable(first) == 0 and payable(second) == 0
    r = row(leg_id)
    assert (r.transfer_id, r.partner_id, r.status) == (paid["id"], second, "released")
    assert not failed_jobs()


def test_a_settle_retried_after_a_failed_release_releases_the_fee(live):
    partner = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, partner, to="assigned")
    hold(leg_id)
    payout = emu._all("transfer")[0]["amount"]
    emu.fail_next("edit_transfer")
    fee = cancel(bid)
    run()  # the excess is reversed, then the release call fails: the job is retried later
    (t,) = emu._all("transfer")
    assert t["on_hold"] is True and left(t) == fee
    assert payable(partner) == fee and payouts() == []  # earned, not yet paid out
    assert release_scheduled(timedelta(seconds=11)) == 1
    run()
    (t,) = emu._all("transfer")
    assert t["on_hold"] is False and t["amount_reversed"] == payout - fee  # reversed once
    assert payouts() == [(partner, fee, t["id"])]
    assert payable(partner) == 0
    assert row(leg_id).status == "released"
    assert not failed_jobs()
    # The job once more (a duplicate enqueue): nothing moves, nothing is posted twice.
    assert payments.settle_leg_transfer(leg_id) == "already-paid"
    assert payouts() == [(partner, fee, t["id"])] and len(emu._all("reversal")) == 1


def test_a_hold_and_a_settle_at_once_make_a_single_transfer(live, monkeypatch):
    """The partner accepts while the customer cancels: the hold job (hold-<leg>-<offer>) has
    listed the payment's transfers and found none when the cancellation's transfer job
    (transfer-<leg>) runs on another worker. Each used to create a transfer: the hold's was
    left on hold with nothing to reverse it."""
    from razorpay.resources.payment import Payment

    monkeypatch.setattr(payments, "LEG_LOCK_WAIT_S", 0)  # the other worker gives way at once
    partner = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, partner, to="assigned")
    real_list = Payment.transfers
    fee: list[int] = []

    def list_then_cancel(self, payment_id, data=None, **kwargs):
        found = real_list(self, payment_id, data or {}, **kwargs)
        if not fee:  # the hold job's list: now the customer cancels; its jobs run meanwhile
            fee.append(cancel(bid))
            emu.fail_next("refund")  # (the refund comes later: it does not touch the leg)
            run()
        return found

    monkeypatch.setattr(Payment, "transfers", list_then_cancel)
    assert payments.hold_leg_transfer(leg_id) == "held"
    assert len(emu._all("transfer")) == 1  # the cancellation's transfer job waits its turn
    assert release_scheduled(timedelta(seconds=11)) == 2  # it, and the refund
    run()
    (t,) = emu._all("transfer")
    assert t["on_hold"] is False and left(t) == fee[0]
    assert payouts() == [(partner, fee[0], t["id"])] and payable(partner) == 0
    assert row(leg_id).status == "released"
    assert not failed_jobs()


def test_a_job_that_finds_the_leg_busy_runs_again_later_even_without_a_retry(live, monkeypatch):
    from core.adapters.redis_conn import redis_client

    monkeypatch.setattr(payments, "LEG_LOCK_WAIT_S", 0)
    partner = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, partner, to="assigned")
    busy = redis_client().lock(f"lock:leg-transfer:{leg_id}", timeout=60)
    assert busy.acquire(blocking=False)  # another worker is working on the leg
    hold(leg_id)  # enqueued as dispatch does it: without a Retry
    assert emu._all("transfer") == [] and not failed_jobs()
    busy.release()
    assert release_scheduled(timedelta(seconds=6)) == 1
    run()
    (t,) = emu._all("transfer")
    assert t["on_hold"] is True and row(leg_id).status == "on_hold"
    assert not failed_jobs()


def test_a_failed_transfer_whose_row_was_not_saved_is_made_again(live, monkeypatch):
    """transfer.failed for a transfer the job that made it has not saved (it died, or the
    webhook came first): the leg is re-derived from the gateway at once."""
    from core.adapters.payment_models import GatewayEvent

    partner = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, partner, to="delivered")
    save = payments._save_transfer

    def died(*args, **kwargs):
        raise RuntimeError("the worker died before saving the transfer")

    monkeypatch.setattr(payments, "_save_transfer", died)
    enqueue("workers.payments.release_leg", leg_id, job_id=f"release-{leg_id}")
    run()  # released in the ledger; the transfer job made the transfer and died
    monkeypatch.setattr(payments, "_save_transfer", save)
    (lost,) = emu._all("transfer")
    with transaction() as s:
        assert s.scalar(select(LegTransfer)) is None
        payout = s.get(Leg, leg_id).payout_paise
    # The gateway fails that transfer (and gives the payment's amount back).
    lost = emu.set_fields(lost["id"], status="failed")
    emu.set_fields(lost["source"], amount_transferred=0)
    emu.send_webhooks([emu._event("transfer.failed", {"transfer": lost})])
    run()
    with transaction() as s:
        assert s.scalar(select(GatewayEvent.outcome).where(
            GatewayEvent.event == "transfer.failed")) == "unknown-transfer-failed"
    made = [t for t in emu._all("transfer") if t["id"] != lost["id"]]
    assert len(made) == 1 and made[0]["on_hold"] is False and left(made[0]) == payout
    assert payouts() == [(partner, payout, made[0]["id"])] and payable(partner) == 0
    assert (row(leg_id).transfer_id, row(leg_id).status) == (made[0]["id"], "released")
    # The dead job's own retry later finds the leg settled: nothing more is made or posted.
    assert release_scheduled(timedelta(seconds=11)) == 1
    run()
    assert len(emu._all("transfer")) == 2 and len(payouts()) == 1


def paid_out_leg() -> tuple[int, int, dict]:
    """A leg held, delivered and paid out: (partner, leg id, its released transfer)."""
    partner = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, partner, to="assigned")
    hold(leg_id)
    deliver(bid, leg_id)
    (paid,) = emu._all("transfer")
    return partner, leg_id, paid


def test_a_paid_leg_is_not_paid_again_after_the_partner_changes_account(live):
    # Delivered and paid out; later the partner's linked account changes (a new bank),
    # and the leg's settle job runs again (a retry, ops): nothing more is paid.
    from core.adapters.models import PartnerProfile

    partner, leg_id, paid = paid_out_leg()
    assert paid["on_hold"] is False
    with transaction() as s:
        s.get(PartnerProfile, partner).payout_account_id = "acc_partner0009"
    assert payments.settle_leg_transfer(leg_id) == "already-paid"
    assert [t["id"] for t in emu._all("transfer")] == [paid["id"]]
    assert payouts() == [(partner, left(paid), paid["id"])]
    assert payable(partner) == 0


def fail_released(transfer: dict, *, webhook: bool = True) -> dict:
    """The gateway fails a transfer after its hold was released (the linked account could
    not take it), giving the payment its amount back; optionally tells us by webhook."""
    failed = emu.set_fields(transfer["id"], status="failed")
    payment = emu.set_fields(transfer["source"], amount_transferred=0)
    assert payment["amount_transferred"] == 0
    if webhook:
        emu.send_webhooks([emu._event("transfer.failed", {"transfer": failed})])
    return failed


def voided() -> list[tuple[int, int, str]]:
    """Every transfer_failed entry: (partner, amount owed again, gateway transfer id)."""
    with transaction() as s:
        return sorted((int(p), int(a), str(ref)) for p, a, ref in s.execute(
            select(LedgerPosting.partner_id, LedgerPosting.amount_paise,
                   LedgerTransaction.gateway_ref)
            .join(LedgerTransaction, LedgerTransaction.id == LedgerPosting.transaction_id)
            .where(LedgerTransaction.kind == rules.EntryKind.TRANSFER_FAILED.value,
                   LedgerPosting.account_kind == rules.AccountKind.PARTNER_PAYABLE.value)))


def test_a_released_transfer_that_fails_later_is_voided_and_made_again(live):
    # Paid out at delivery; then the gateway fails that transfer. The partner never got the
    # money: the payout is voided (owed again) and a new transfer pays it, once.
    from core.services import reconciliation

    partner, leg_id, first = paid_out_leg()
    earned = left(first)
    assert payouts() == [(partner, earned, first["id"])] and payable(partner) == 0
    fail_released(first)
    run()
    assert voided() == [(partner, earned, first["id"])]
    second = [t for t in emu._all("transfer") if t["id"] != first["id"]]
    assert len(second) == 1 and second[0]["on_hold"] is False and left(second[0]) == earned
    assert payouts() == sorted([(partner, earned, first["id"]),
                                (partner, earned, second[0]["id"])])
    assert payable(partner) == 0
    with transaction() as s:
        assert ledger.leg_paid_out(s, leg_id) == earned
    assert (row(leg_id).transfer_id, row(leg_id).status) == (second[0]["id"], "released")
    # The same failure told again, and the leg settled again: nothing more moves.
    emu.send_webhooks([emu._event("transfer.failed", {"transfer": emu.get_object(first["id"])})])
    run()
    assert payments.settle_leg_transfer(leg_id) == "already-paid"
    assert len(emu._all("transfer")) == 2 and len(voided()) == 1 and len(payouts()) == 2
    # The books match the gateway: the failed transfer's voided payout is no mismatch.
    assert reconciliation.run()["mismatches"] == 0
    assert not failed_jobs()


def test_a_lost_failure_of_a_released_transfer_is_found_when_the_leg_is_settled(live):
    # transfer.failed never arrives; the next settle of the leg (ops, a retry) reads the
    # failure at the gateway, voids the payout and pays the partner again.
    partner, leg_id, first = paid_out_leg()
    fail_released(first, webhook=False)
    # The new transfer is released while Razorpay still processes it (pending).
    assert payments.settle_leg_transfer(leg_id) == "released-pending"
    run()
    assert voided() == [(partner, left(first), first["id"])]
    assert len(emu._all("transfer")) == 2 and payable(partner) == 0
    with transaction() as s:
        assert ledger.leg_paid_out(s, leg_id) == left(first)
    assert not failed_jobs()


def test_a_transfer_event_without_an_id_changes_nothing(live):
    from core.adapters.payment_models import GatewayEvent

    partner, leg_id, paid = paid_out_leg()
    before = payouts()
    nameless = {k: v for k, v in paid.items() if k != "id"} | {"on_hold": False}
    emu.send_webhooks([emu._event("transfer.processed", {"transfer": nameless})])
    run()
    with transaction() as s:
        assert s.scalar(select(GatewayEvent.outcome).where(
            GatewayEvent.event == "transfer.processed")
            .order_by(GatewayEvent.id.desc()).limit(1)) == "transfer-without-id"
    assert payouts() == before and payable(partner) == 0

"""Money after payout: a leg's transfer released to its partner and reversed later (ops in
the Razorpay dashboard, all of it or part), a hold asked on a payment already refunded,
and a direct transfer found again by its id.

Through RQ, the real razorpay client, the sandbox emulator and its signed webhooks."""

from __future__ import annotations

import pytest
from razorpay.resources.transfer import Transfer
from sqlalchemy import func, select

from core import i18n
from core.adapters import razorpay_gateway as gw
from core.adapters.db import transaction
from core.adapters.models import Booking, Leg, OutboxMessage
from core.adapters.payment_models import LedgerPosting, LedgerTransaction, LegTransfer
from core.adapters.queue import enqueue
from core.domain import ledger as rules
from core.domain.booking import Actor, BookingStatus, LegStatus
from core.services import ledger, payments, reconciliation
from core.services.booking import move_booking, move_leg
from sandbox import razorpay as emu
from tests.test_migrations_live import db, engine, template  # noqa: F401 (fixtures)
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

pytestmark = pytest.mark.db
SYSTEM = Actor.system()
OPS_PHONE = "+919000000099"  # OPS_PHONE's sandbox default: ops alerts go to it


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


# --- helpers --------------------------------------------------------------------------------


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


def paid_out_leg() -> tuple[int, int, int, dict]:
    """A delivered leg whose transfer was released and processed: the ledger shows its
    payout. (partner, booking, leg, the gateway's transfer)."""
    partner = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, partner, to="assigned")
    assert payments.hold_leg_transfer(leg_id) == "held"
    run()
    deliver(bid, leg_id)
    (t,) = emu._all("transfer")
    assert (t["status"], t["on_hold"]) == ("processed", False)
    with transaction() as s:
        assert ledger.leg_paid_out(s, leg_id) == t["amount"] > 0
        assert ledger.partner_balance(s, partner) == 0
    return partner, bid, leg_id, t


def reversals() -> list[tuple[int, str, int]]:
    """Every transfer_reversed entry: (amount, gateway transfer id, leg)."""
    with transaction() as s:
        return [(int(a), str(ref), int(leg)) for a, ref, leg in s.execute(
            select(LedgerPosting.amount_paise, LedgerTransaction.gateway_ref,
                   LedgerPosting.leg_id)
            .join(LedgerTransaction, LedgerTransaction.id == LedgerPosting.transaction_id)
            .where(LedgerTransaction.kind == rules.EntryKind.TRANSFER_REVERSED.value,
                   LedgerPosting.account_kind == rules.AccountKind.REVERSED_PAYOUTS.value)
            .order_by(LedgerTransaction.id))]


def held_for_ops(booking_id: int) -> int:
    with transaction() as s:
        return ledger.reversed_payouts(s, booking_id)


def ops_alerts(booking_id: int) -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.booking_id == booking_id, OutboxMessage.to_addr == OPS_PHONE)
            .order_by(OutboxMessage.id)))


def reversed_alert(booking_id: int, leg_id: int, amount: int) -> str:
    with transaction() as s:
        ref = s.get(Booking, booking_id).reference  # type: ignore[union-attr]
    return i18n.t("payment.ops_transfer_reversed", i18n.DEFAULT_LANGUAGE, ref=ref, leg=leg_id,
                  reversed_paise=amount)


def send_reversed_event(transfer_id: str, times: int = 1) -> None:
    """The gateway's transfer.reversed webhook for the transfer as it is now (``times``
    deliveries: a retried webhook)."""
    entity = emu.get_object(transfer_id)
    emu.control("webhook_repeat", times)
    emu.send_webhooks([emu._event("transfer.reversed", {"transfer": entity})])
    run()
    emu.control("webhook_repeat", 1)


# --- 1. a payout reversed after it was made -------------------------------------------------


def test_a_payout_reversed_in_the_dashboard_is_recorded_once_and_ops_told_once(live):
    """Ops reverse a rider's released payout in the Razorpay dashboard: the money is back
    in the platform's balance. The ledger must say so (the partner was not paid it after
    all; the booking holds it for ops), once however often the webhook comes, and ops
    hear once, to pay the rider again or refund the customer. Not paid again by itself."""
    partner, bid, leg_id, t = paid_out_leg()
    gw.client().transfer.reverse(t["id"], {"amount": t["amount"]})
    send_reversed_event(t["id"], times=2)
    assert reversals() == [(t["amount"], t["id"], leg_id)]
    assert held_for_ops(bid) == t["amount"]
    assert ops_alerts(bid) == [reversed_alert(bid, leg_id, t["amount"])]
    with transaction() as s:
        row = s.scalar(select(LegTransfer).where(LegTransfer.leg_id == leg_id))
        assert row is not None and row.status == "reversed"
        assert ledger.partner_balance(s, partner) == 0  # ops decide, not the sweep
    assert payments.settle_leg_transfer(leg_id) == "already-paid"
    assert payments.sweep()["transfers"] == 0
    # The reconciliation sees the same reversal: nothing new, and the books agree.
    assert reconciliation.run()["mismatches"] == 0
    assert reversals() == [(t["amount"], t["id"], leg_id)]
    assert ops_alerts(bid) == [reversed_alert(bid, leg_id, t["amount"])]
    assert not failed_jobs()


def test_a_partial_reversal_found_by_the_reconciliation_records_only_what_came_back(live):
    """No webhook comes (Razorpay documents none for a reversal): the hourly reconciliation
    finds less left on the released transfer than the ledger paid out and records the
    difference; a second partial reversal later is a second entry, for its own amount."""
    _partner, bid, leg_id, t = paid_out_leg()
    first = t["amount"] // 3
    gw.client().transfer.reverse(t["id"], {"amount": first})
    assert reconciliation.run()["mismatches"] == 0
    assert reversals() == [(first, t["id"], leg_id)]
    assert held_for_ops(bid) == first
    assert reconciliation.run()["mismatches"] == 0  # run again: nothing new
    assert reversals() == [(first, t["id"], leg_id)]
    second = t["amount"] - first
    gw.client().transfer.reverse(t["id"], {"amount": second})
    send_reversed_event(t["id"])  # its event comes too, after the first run's entry
    assert reconciliation.run()["mismatches"] == 0
    assert reversals() == [(first, t["id"], leg_id), (second, t["id"], leg_id)]
    assert held_for_ops(bid) == t["amount"]
    assert ops_alerts(bid) == [reversed_alert(bid, leg_id, first),
                               reversed_alert(bid, leg_id, second)]
    assert not failed_jobs()


def test_a_reversed_event_of_a_hold_given_back_records_nothing(live):
    """A hold reversed before it was released (a rider gave the job back) was never posted
    as paid out: its reversal moves nothing in the ledger and tells ops nothing."""
    partner = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, partner, to="assigned")
    assert payments.hold_leg_transfer(leg_id) == "held"
    run()
    (t,) = emu._all("transfer")
    gw.client().transfer.reverse(t["id"], {"amount": t["amount"]})
    send_reversed_event(t["id"])
    assert reversals() == [] and ops_alerts(bid) == []
    assert not failed_jobs()


# --- 2. no hold on a refunded payment -------------------------------------------------------


def test_no_hold_is_asked_on_a_payment_refunded_in_the_dashboard(live):
    """The customer's payment was partly refunded from the dashboard while a rider was
    assigned: Razorpay takes no transfer on it now. The hold job must not fail on the
    refusal (nothing is owed yet); the rider's payout goes by direct transfer once the
    leg is delivered."""
    partner = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, partner, to="assigned")
    gw.client().payment.refund(link_of(bid).payment_id, {"amount": 100})
    assert payments.hold_leg_transfer(leg_id) == "refund-asked"
    assert emu._all("transfer") == []
    deliver(bid, leg_id)
    (t,) = emu._all("transfer")
    assert (t["status"], t["on_hold"], t["source"].startswith("pay_")) == (
        "processed", False, False)
    with transaction() as s:
        assert ledger.leg_paid_out(s, leg_id) == ledger.leg_payable(s, leg_id) == t["amount"]
        assert ledger.partner_balance(s, partner) == 0
    assert not failed_jobs()


def test_no_hold_is_even_asked_once_our_refund_of_the_payment_was_asked(live):
    """Our own refund of the payment reached the gateway (a cancellation racing the hold
    job): the job knows it and asks the gateway for no transfer at all."""
    partner = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, partner, to="assigned")
    with transaction() as s:  # the cancellation's refund, asked while the job waited
        booking = ledger.lock_booking(s, bid)
        payments._open_refund(s, booking, 100, 0, "cancelled", str(CUSTOMER))
    run()
    emu.fail_next("transfer")  # any transfer asked of the payment now would fail loudly
    assert payments.hold_leg_transfer(leg_id) == "refund-asked"
    assert emu._all("transfer") == []
    emu.control("fail_next:transfer", 0)


# --- 3. a direct transfer is fetched by its id, not looked for in every transfer ------------


def test_a_direct_transfer_whose_id_is_known_is_fetched_not_listed(live, monkeypatch):
    """A fee paid by direct transfer (the payment refunded first): the next settle of the
    leg (the sweep, a refund's settle) fetches the transfer the row names instead of
    paging through every transfer of the account."""
    partner = new_partner(account=None)
    bid = paid_booking()
    leg_id = advance(bid, partner, to="assigned")
    with transaction() as s:
        quote = payments.cancel_booking(s, ledger.lock_booking(s, bid), CUSTOMER, "no")
    run()
    with transaction() as s:
        from core.adapters.models import PartnerProfile

        profile = s.get(PartnerProfile, partner)
        assert profile is not None
        profile.payout_account_id = "acc_latelinked09"
    assert payments.settle_leg_transfer(leg_id) in ("released", "released-pending")
    run()
    listed: list[dict] = []
    real_all = Transfer.all

    def counting_all(self, data=None, **kwargs):
        listed.append(dict(data or {}))
        return real_all(self, data or {}, **kwargs)

    monkeypatch.setattr(Transfer, "all", counting_all)
    assert payments.settle_leg_transfer(leg_id) == "already-paid"
    assert listed == []
    (t,) = emu._all("transfer")
    assert (t["amount"], t["status"]) == (quote.fee_paise, "processed")
    with transaction() as s:
        assert s.scalar(select(func.count()).select_from(LegTransfer)) == 1
    assert not failed_jobs()


# --- the migration that lets the ledger hold reversals ----------------------------------------


def test_0027_runs_again_from_its_start_and_leaves_its_checks_validated(db, engine):  # noqa: F811
    """0027 commits part-way (its VALIDATEs run after a commit): stopped there, it is run
    again from its start and goes through; its checks take the new kinds, and hold."""
    from alembic import command

    from tests.test_migrations_live import LOCK_TIMEOUT_MS, alembic_config, upgrade, version

    upgrade(db, "0027")
    command.stamp(alembic_config(db, LOCK_TIMEOUT_MS, []), "0026")  # its work done, unrecorded
    upgrade(db, "0027")
    with engine.connect() as conn:
        assert version(conn) == "0027"
        checks = dict(conn.exec_driver_sql(
            "SELECT conname, convalidated FROM pg_constraint WHERE conname IN "
            "('ck_ledger_transactions_kind', 'ck_ledger_postings_account_kind', "
            "'ck_ledger_postings_account_shape')").all())
        assert checks == {"ck_ledger_transactions_kind": True,
                          "ck_ledger_postings_account_kind": True,
                          "ck_ledger_postings_account_shape": True}
        defs = " ".join(conn.exec_driver_sql(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname LIKE "
            "'ck_ledger_%%'").scalars())
        assert "transfer_reversed" in defs and "reversed_payouts" in defs
    command.downgrade(alembic_config(db, LOCK_TIMEOUT_MS, []), "0026")  # no reversal yet
    with engine.connect() as conn:
        assert version(conn) == "0026"

"""Session 31, money: a leg left with no rider gives back every hold made for it; the tests
the last money review found missing (the week-owed sweep with more than a batch of legs, a
failed payment found by its order's notes); Route's fee on each transfer is booked.
Through RQ, the real razorpay client, the emulator and its signed webhooks; the clock is
frozen and moved, never waited for."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from core import clock, i18n
from core.adapters import razorpay_gateway as gw
from core.adapters.db import transaction
from core.adapters.models import Booking, Leg, OutboxMessage, Person
from core.adapters.payment_models import LedgerPosting, LedgerTransaction, LegTransfer
from core.adapters.queue import enqueue
from core.domain import ledger as rules
from core.domain.booking import Actor, BookingStatus, LegStatus
from core.services import ledger, payments, reconciliation
from core.services.booking import move_booking, move_leg
from sandbox import razorpay as emu
from tests.test_payments_support import (
    CUSTOMER,
    advance,
    booking,
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


# --- 1. a leg with no rider gives back every hold made for it ------------------------------


def give_back(booking_id: int, leg_id: int) -> None:
    """What dispatch's give-back does: the leg has no rider and is offered again."""
    with transaction() as s:
        leg, b = s.get(Leg, leg_id), s.get(Booking, booking_id)
        assert leg is not None and b is not None
        leg.partner_id = None
        move_leg(s, leg, LegStatus.OFFERING, SYSTEM, "partner gave the job back")
        move_booking(s, b, BookingStatus.DISPATCHING, SYSTEM, "partner gave the job back")


def stray_hold(payment_id: str, booking_id: int, leg_id: int) -> None:
    """A hold of Rs 2 for Sunil on the leg, made by a hold job that outlived the leg's
    lock (the payment carries Ravi's payout and this)."""
    gw.client().payment.transfer(payment_id, {"transfers": [{
        "account": "acc_partner0002", "amount": 200, "currency": "INR",
        "on_hold": True, "notes": {"leg_id": str(leg_id), "booking_id": str(booking_id)}}]})


def on_payment(payment_id: str) -> list[dict]:
    """The payment's transfers as the gateway lists them (oldest first)."""
    return gw.client().payment.transfers(payment_id, {})["items"]


def test_a_leg_earning_nothing_gives_back_its_riders_second_hold_too(live):
    """Ravi keeps the job and the booking is cancelled with nothing earned by his leg; a
    hold job that outlived the leg's lock made him a second hold. The settle reversed
    only the first of his holds the gateway listed (the others' holds go by account, and
    his own second one was never looked for): it stayed on the customer's payment."""
    ravi = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, ravi, to="assigned")
    (payment,) = emu._all("payment")
    assert payments.hold_leg_transfer(leg_id) == "held"
    gw.client().payment.transfer(payment["id"], {"transfers": [{
        "account": "acc_partner0001", "amount": 200, "currency": "INR", "on_hold": True,
        "notes": {"leg_id": str(leg_id), "booking_id": str(bid)}}]})
    run()
    held = on_payment(payment["id"])
    assert [(t["recipient"], t["on_hold"]) for t in held] == [
        ("acc_partner0001", True), ("acc_partner0001", True)]
    clock.freeze(clock.now() + timedelta(hours=6))  # he never came: no fee for him
    with transaction() as s:
        quote = payments.cancel_booking(s, ledger.lock_booking(s, bid), CUSTOMER, "late")
    assert quote.fee_paise == 0, "a leg that earns nothing"
    with transaction() as s:  # kept, as a cancellation keeps it
        assert s.scalar(select(Leg.partner_id).where(Leg.id == leg_id)) == ravi
    run()
    assert not failed_jobs()
    assert [t["status"] for t in on_payment(payment["id"])] == ["reversed", "reversed"]
    assert emu.get_object(payment["id"])["amount_transferred"] == 0


@pytest.mark.parametrize("stray_first", [False, True])
def test_a_leg_with_no_rider_gives_back_every_hold_made_for_it(live, monkeypatch,
                                                               stray_first):
    """Two holds live for one leg: Ravi's, and Sunil's made by a hold job that outlived
    the leg's lock, after Ravi's or between Ravi's job's look and its hold. Both riders
    gave the job back and the customer cancels. The settle before her refund reversed
    only the first hold the gateway listed: the other stayed on hold on her payment for
    good, and when that was Ravi's, his row said "on_hold" still."""
    ravi = new_partner()
    new_partner("+919812349002", "acc_partner0002")
    bid = paid_booking()
    leg_id = advance(bid, ravi, to="assigned")
    (payment,) = emu._all("payment")
    if stray_first:
        looked = payments._reverse_others

        def and_meanwhile(c, transfers, leg, account):
            n = looked(c, transfers, leg, account)
            stray_hold(payment["id"], bid, leg_id)
            return n

        monkeypatch.setattr(payments, "_reverse_others", and_meanwhile)
    assert payments.hold_leg_transfer(leg_id) == "held"
    monkeypatch.undo()
    if not stray_first:
        stray_hold(payment["id"], bid, leg_id)
    run()
    held = on_payment(payment["id"])
    assert [(t["recipient"], t["status"], t["on_hold"]) for t in held] == [
        ("acc_partner0002" if stray_first else "acc_partner0001", "processed", True),
        ("acc_partner0001" if stray_first else "acc_partner0002", "processed", True)]
    give_back(bid, leg_id)
    with transaction() as s:
        quote = payments.cancel_booking(s, ledger.lock_booking(s, bid), CUSTOMER, "no")
    assert quote.fee_paise == 0
    run()
    assert not failed_jobs()
    assert [(t["status"], t["amount_reversed"]) for t in on_payment(payment["id"])] == [
        ("reversed", t["amount"]) for t in held]
    # Her refund in full, nothing of her payment held for anyone, Ravi's row not on hold.
    assert emu.get_object(payment["id"])["amount_transferred"] == 0
    assert [r["amount"] for r in emu._all("refund")] == [payment["amount"]]
    with transaction() as s:
        row = s.scalar(select(LegTransfer).where(LegTransfer.leg_id == leg_id))
        assert row is not None
        assert (row.partner_id, row.status) == (ravi, "reversed")


# --- 2. the tests the last money review found missing ---------------------------------------

OPERATOR = "+919000000098"


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
    legs = []
    for n in phones:
        bid = paid_booking(f"+91981230{n:04d}")
        legs.append(advance(bid, partner, to="delivered"))
        enqueue("workers.payments.release_leg", legs[-1], job_id=f"release-{legs[-1]}")
    run()
    return legs


def test_the_owed_without_account_sweep_takes_a_newer_leg_past_twenty_told_ones(live):
    """Twenty legs of a rider without a payout account are owed a week and told; another,
    owed since two days later, is owed a week in turn. The sweep took the 20 lowest legs
    owed lately: the twenty told ones kept it out for as long as they were owed. Now it
    takes the legs owed a week already, in turn (session 32: the oldest leg first, each
    sweep going on from the last leg it took); a leg owed less than a week takes no
    place."""
    assert payments.SETTLE_BATCH == 20
    with transaction() as s:
        s.add(Person(phone=OPERATOR, name="Meena", preferred_language="en", role="ops"))
    t0 = clock.now()
    clock.freeze(t0)
    rider = new_partner(account=None)
    first = delivered_unpaid(rider, range(20))
    clock.freeze(t0 + timedelta(days=2))
    (later,) = delivered_unpaid(rider, range(20, 21))
    clock.freeze(t0 + timedelta(days=8))
    payments.sweep()
    run()
    assert sorted(owed_legs_told()) == first  # told once each; the later leg not yet
    clock.freeze(t0 + timedelta(days=9))
    (young,) = delivered_unpaid(rider, range(21, 22))  # owed a day: no place for it
    clock.freeze(t0 + timedelta(days=10))
    payments.sweep()
    run()
    assert owed_legs_told()[20:] == [later]
    assert young not in owed_legs_told()
    with transaction() as s:  # the oldest first, of those owed a week
        assert payments.owed_without_account(s) == first
    assert not failed_jobs()


def asked_to_try_again(booking_id: int) -> int:
    """How many times the customer was told her payment failed, to try the link again."""
    with transaction() as s:
        b = s.get(Booking, booking_id)
        assert b is not None
        said = i18n.t("payment.failed", "en", ref=b.reference)
        return list(s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.booking_id == booking_id))).count(said)


def test_a_failed_payment_without_notes_is_found_by_its_orders_notes(live):
    """A failed payment of our link carries no notes; its order carries the link's (as
    Razorpay's payment_link.paid samples show the order) but not the link's reference as
    its receipt. The order's receipt alone decided: the customer was not told to try
    again."""
    bid = confirmed_booking()
    run()
    emu.control("payment_notes", "none")
    answer = pay(bid, fail="1")
    assert answer.status_code == 200
    payment = emu.get_object(answer.json()["payment_id"])
    assert payment is not None and not payment["notes"]
    link = emu.get_object(link_of(bid).gateway_id)
    assert link is not None and link["notes"]
    emu.set_fields(payment["order_id"], notes=link["notes"], receipt=None)
    run()  # the payment.failed event's job asks for the order
    assert asked_to_try_again(bid) == 1
    assert not failed_jobs()


def test_a_failed_payment_of_another_systems_order_with_our_reference_is_not_ours(live):
    """Another system on the account made an order whose receipt is one of our links'
    references (receipts are not unique), for another amount, and a payment of it failed:
    no notes of ours anywhere. The receipt alone decided: our customer, who had paid
    nothing, was told her payment failed."""
    bid = confirmed_booking()
    run()
    link = link_of(bid)
    order = emu.put_object({
        "id": "order_theirs000001", "entity": "order", "amount": link.amount_paise + 100,
        "amount_paid": 0, "amount_due": link.amount_paise + 100, "currency": "INR",
        "receipt": link.reference_id, "status": "attempted", "attempts": 1, "notes": [],
        "created_at": emu._now()})
    theirs = emu.put_object({**emu._payment(
        {"amount": order["amount"], "currency": "INR", "description": "theirs",
         "customer": {}, "notes": {}, "order_id": order["id"]}, "failed"), "notes": []})
    emu.send_webhooks([emu._event("payment.failed", {"payment": theirs})])
    run()
    assert asked_to_try_again(bid) == 0
    # The link's own amount: the receipt names it (an order of ours without notes).
    emu.set_fields(order["id"], amount=link.amount_paise)
    again = emu.put_object({**theirs, "id": "pay_ours0000000001", "amount": link.amount_paise})
    emu.send_webhooks([emu._event("payment.failed", {"payment": again})])
    run()
    assert asked_to_try_again(bid) == 1
    assert not failed_jobs()


# --- 3. Route's fee on each transfer is booked ----------------------------------------------


def transfer_fees() -> list[tuple[str, str | None, list[tuple[str, int]]]]:
    """(idempotency key, gateway ref, [(account, amount)]) of the entries of Route's fee."""
    with transaction() as s:
        rows = s.scalars(select(LedgerTransaction).where(
            LedgerTransaction.kind == rules.EntryKind.GATEWAY_FEE.value,
            LedgerTransaction.idempotency_key.like("transfer:%"))
            .order_by(LedgerTransaction.id)).all()
        return [(t.idempotency_key, t.gateway_ref, sorted(
            (p.account, p.amount_paise) for p in s.scalars(select(LedgerPosting).where(
                LedgerPosting.transaction_id == t.id)))) for t in rows]


def platform_holds() -> int:
    """What the platform's own accounts hold: what its Razorpay balance should hold."""
    with transaction() as s:
        return -(ledger.balance(s, rules.GATEWAY) + ledger.balance(s, rules.FEES))


def booked(tid: str, fee: int) -> tuple[str, str, list[tuple[str, int]]]:
    return (f"transfer:{tid}:fee", tid, sorted([("gateway_fees", fee),
                                               ("platform_commission", -fee)]))


@pytest.fixture
def route_fee(clean_db):
    """Route takes its standard fee (0.25% and GST) on each transfer it processes."""
    emu.control("transfer_fee_bps", 25)


def test_the_sandbox_takes_routes_fee_and_its_gst(route_fee):
    # Razorpay's example: Rs 900 moved at 0.25% is Rs 2.25, with 18% GST Rs 2.66.
    assert emu.transfer_fee_and_tax(90_000) == (266, 41)
    emu.control("transfer_fee_bps", 0)
    assert emu.transfer_fee_and_tax(90_000) == (0, 0)


def test_a_delivered_leg_books_routes_fee_and_the_ledger_agrees_with_the_balance(live, route_fee):
    partner = new_partner()
    bid = paid_booking()
    b = booking(bid)
    leg_id = advance(bid, partner, to="delivered")
    enqueue("workers.payments.release_leg", leg_id, job_id=f"release-{leg_id}")
    run()
    (payment,) = emu._all("payment")
    (transfer,) = emu._all("transfer")
    fee = transfer["fees"]
    assert transfer["amount"] == b.partner_share_paise  # the rider's payout whole
    assert (fee, transfer["tax"]) == emu.transfer_fee_and_tax(transfer["amount"]) and fee > 0
    assert transfer_fees() == [booked(transfer["id"], fee)]
    with transaction() as s:
        assert ledger.balance(s, rules.COMMISSION) == (
            b.commission_paise - payment["fee"] - fee)
        assert ledger.balance(s, rules.FEES) == payment["fee"] + fee
    # What the ledger's platform holds is what Razorpay's balance holds after the payout.
    assert platform_holds() == emu.platform_balance() - emu.OPENING_BALANCE
    # Told again (its event delivered twice, the reconciliation): nothing more.
    assert not payments.record_transfer_fee(emu.get_object(transfer["id"]), "again")
    assert len(transfer_fees()) == 1
    assert not failed_jobs()


def test_a_hold_given_back_keeps_its_fee_booked(live, route_fee):
    ravi = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, ravi, to="assigned")
    assert payments.hold_leg_transfer(leg_id) == "held"
    run()  # processed on hold: Route took its fee
    (held,) = emu._all("transfer")
    assert held["on_hold"] and held["fees"] > 0
    give_back(bid, leg_id)
    with transaction() as s:
        payments.cancel_booking(s, ledger.lock_booking(s, bid), CUSTOMER, "no")
    run()
    assert emu.get_object(held["id"])["status"] == "reversed"
    assert transfer_fees() == [booked(held["id"], held["fees"])]
    assert platform_holds() == emu.platform_balance() - emu.OPENING_BALANCE
    assert not failed_jobs()


def test_the_reconciliation_books_a_lost_transfer_fee_and_reports_one_that_differs(
        live, route_fee, monkeypatch):
    partner = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, partner, to="delivered")
    with monkeypatch.context() as m:  # its transfer.processed lost: no fee told
        m.setattr(payments, "processed_fee", lambda transfer: None)
        enqueue("workers.payments.release_leg", leg_id, job_id=f"release-{leg_id}")
        run()
    (transfer,) = emu._all("transfer")
    assert transfer["fees"] > 0 and transfer_fees() == []
    assert platform_holds() != emu.platform_balance() - emu.OPENING_BALANCE
    assert reconciliation.run()["mismatches"] == 0
    assert transfer_fees() == [booked(transfer["id"], transfer["fees"])]
    assert platform_holds() == emu.platform_balance() - emu.OPENING_BALANCE
    emu.set_fields(transfer["id"], fees=transfer["fees"] + 100)  # the gateway says otherwise
    assert reconciliation.run()["mismatches"] == 1
    with transaction() as s:
        (found,) = reconciliation.list_mismatches(s)
    assert (found["kind"], found["entity"], found["gateway_id"], found["booking_id"]) == (
        "fee_differs", "transfer", transfer["id"], bid)
    assert (found["ledger_amount_paise"], found["gateway_amount_paise"]) == (
        transfer["fees"], transfer["fees"] + 100)
    # A later run whose window the transfer is out of asks it again (an open mismatch):
    # its fee is compared again, and the mismatch stays open while it differs.
    later = clock.now() + timedelta(days=2)
    assert reconciliation.run(later, later + timedelta(days=1))["mismatches"] == 1
    with transaction() as s:
        assert [m["gateway_id"] for m in reconciliation.list_mismatches(s)] == [transfer["id"]]
    emu.set_fields(transfer["id"], fees=transfer["fees"])  # it agrees again: resolved
    assert reconciliation.run()["mismatches"] == 0
    with transaction() as s:
        assert reconciliation.list_mismatches(s) == []

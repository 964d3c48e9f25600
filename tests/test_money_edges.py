"""Money at the edges: gateway items naming bookings we do not have, amounts and ids our
columns cannot hold, and a gateway that cannot show one item during a reconciliation run.
Each must settle (an event with an outcome, a run recorded and its window marker moved),
never fail for ever."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from core import clock
from core.adapters.db import transaction
from core.adapters.payment_models import GatewayEvent, LedgerPosting, LedgerTransaction
from core.adapters.redis_conn import redis_client
from core.domain.booking import BookingStatus
from core.services import ledger, payments, reconciliation
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
    run,
)

pytestmark = pytest.mark.db

FOREIGN_BOOKING = "987654"  # another system's numbering on the same Razorpay account


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


def open_mismatches() -> list[dict]:
    with transaction() as s:
        return reconciliation.list_mismatches(s)


def postings() -> int:
    with transaction() as s:
        return s.scalar(select(func.count()).select_from(LedgerPosting)) or 0


def entries(kind: str) -> int:
    with transaction() as s:
        return s.scalar(select(func.count()).select_from(LedgerTransaction)
                        .where(LedgerTransaction.kind == kind)) or 0


def outcome_of(event: str) -> tuple[str | None, bool]:
    """The outcome of the last stored event named ``event``, and whether it is settled."""
    with transaction() as s:
        row = s.scalars(select(GatewayEvent).where(GatewayEvent.event == event)
                        .order_by(GatewayEvent.id.desc())).first()
        assert row is not None, f"no {event} event was stored"
        return row.outcome, row.processed_at is not None


def marker() -> int | None:
    raw = redis_client().get(reconciliation.LAST_UNTIL_KEY)
    return int(raw) if raw is not None else None


# --- gateway items naming a booking we do not have ----------------------------------------


def test_a_stray_payment_naming_a_booking_not_ours_is_reported_without_that_booking(live):
    """Another system's payment on the account, its notes naming a booking id of its own:
    a missing_in_ledger finding that refers to no booking (the note is in its detail),
    and the run is recorded. A stray payment naming one of our bookings keeps it."""
    clock.freeze(clock.now())
    ours = confirmed_booking()
    foreign = emu.create_payment(12_300, notes={"booking_id": FOREIGN_BOOKING})
    # Ours as our links' payments are: our booking's reference beside its id.
    on_ours = emu.create_payment(45_600, notes={"booking_id": str(ours),
                                                "reference": booking(ours).reference})
    result = reconciliation.run()
    assert result["mismatches"] == 2
    rows = {m["gateway_id"]: m for m in open_mismatches()}
    assert {gid: (m["kind"], m["entity"], m["booking_id"]) for gid, m in rows.items()} == {
        foreign["id"]: ("missing_in_ledger", "payment", None),
        on_ours["id"]: ("missing_in_ledger", "payment", ours)}
    assert FOREIGN_BOOKING in rows[foreign["id"]]["detail"]
    assert marker() == int(clock.now().timestamp())


def test_a_captured_payment_naming_a_booking_not_ours_settles_as_unknown(live):
    """Its payment.captured is settled as a payment of no booking of ours (not raised on
    every retry and re-enqueued by the sweep); nothing is posted, and the reconciliation
    reports the payment as one the ledger does not have."""
    foreign = emu.create_payment(12_300, notes={"booking_id": FOREIGN_BOOKING})
    emu.send_webhooks([emu._event("payment.captured", {"payment": foreign})])
    run()
    assert outcome_of("payment.captured") == ("unknown-payment", True)
    assert not failed_jobs()
    assert postings() == 0
    reconciliation.run()
    assert [(m["kind"], m["entity"], m["gateway_id"], m["booking_id"])
            for m in open_mismatches()] == [("missing_in_ledger", "payment", foreign["id"], None)]


# --- amounts and ids our columns cannot hold ------------------------------------------------


@pytest.mark.parametrize("amount", [2**63, 10_00_00_000_00 + 1])  # ₹10 crore and a paisa
def test_a_captured_amount_beyond_the_cap_settles_as_a_bad_payload(live, amount):
    """A signed payment.captured on our booking whose amount is beyond any we take (one
    no BIGINT holds, or just above the cap): a malformed event, settled with an outcome;
    the ledger and the booking are untouched."""
    bid = confirmed_booking()
    run()  # the payment link is made
    payment = emu.create_payment(12_300, notes={"booking_id": str(bid)})
    emu.send_webhooks([emu._event("payment.captured",
                                  {"payment": {**payment, "amount": amount}})])
    run()
    assert outcome_of("payment.captured") == ("bad-payload", True)
    assert not failed_jobs()
    assert postings() == 0
    assert booking(bid).status == BookingStatus.AWAITING_PAYMENT.value


@pytest.mark.parametrize(("payment_id", "amount"), [
    ("pay_" + "x" * 40, None),  # longer than the ledger's gateway_ref (40)
    (None, 2**63),
])
def test_a_paid_link_whose_payment_our_columns_cannot_hold_records_nothing(
        live, payment_id, amount):
    """The gateway says the link is paid, with a payment whose id or amount no column of
    ours holds: the link job ends as a paid link without a usable payment (not a database
    error on every retry), nothing posted, the booking still awaiting payment."""
    bid = confirmed_booking()
    run()  # the payment link is made
    link = link_of(bid)
    total = booking(bid).total_paise
    emu.set_fields(link.gateway_id, status="paid", amount_paid=total, payments=[
        {"payment_id": payment_id or "pay_ok0000000001", "amount": amount or total,
         "status": "captured", "method": "upi", "created_at": int(clock.now().timestamp())}])
    assert payments.cancel_payment_link(bid) == payments.LINK_WITHOUT_PAYMENT
    assert postings() == 0
    assert booking(bid).status == BookingStatus.AWAITING_PAYMENT.value


@pytest.mark.parametrize("field", ["amount", "amount_reversed"])
def test_a_transfer_processed_with_an_amount_beyond_the_cap_is_a_bad_payload(live, field):
    """transfer.processed of a leg's held transfer, released, but with an amount (or an
    amount reversed) no ledger entry can take: settled as malformed, no payout posted,
    the transfer still held."""
    from core.adapters.payment_models import LegTransfer

    partner = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, partner, to="assigned")
    assert payments.hold_leg_transfer(leg_id) == "held"
    run()
    (held,) = emu._all("transfer")
    emu.send_webhooks([emu._event("transfer.processed", {
        "transfer": {**held, "on_hold": False, field: 2**63}})])
    run()
    assert outcome_of("transfer.processed") == ("bad-payload", True)
    assert not failed_jobs()
    assert entries("transfer_processed") == 0
    with transaction() as s:
        row = s.scalar(select(LegTransfer).where(LegTransfer.leg_id == leg_id))
        assert row is not None and row.status == "on_hold"


# --- a gateway that cannot show one item ------------------------------------------------------


def test_one_open_refund_the_gateway_cannot_show_does_not_stop_the_run(live):
    """A 503 for the one pending refund fetched one by one: the run still records the
    stray payment beside it and moves its window marker; the refund, still open in our
    rows, is asked again on the next run (here: processed meanwhile, its webhook lost, so
    applied as that webhook would be, not listed)."""
    from core.adapters.queue import QUEUES
    from tests.conftest import run_jobs

    clock.freeze(clock.now())
    bid = paid_booking()
    with transaction() as s:
        payments.cancel_booking(s, ledger.lock_booking(s, bid), CUSTOMER, "no")
    run_jobs(QUEUES)  # the refund is asked; the sandbox bank has not settled it yet
    (refund,) = emu._all("refund")
    assert refund["status"] == "pending"
    stray = emu.create_payment(12_300)
    emu.fail_next("fetch_refund")
    reconciliation.run()
    assert [(m["kind"], m["gateway_id"]) for m in open_mismatches()] == [
        ("missing_in_ledger", stray["id"])]
    assert marker() == int(clock.now().timestamp())
    # Processed at the gateway, its webhook not yet here; and made long ago, so that only
    # the open-row fetch can find it.
    emu.set_fields(refund["id"], status="processed",
                   created_at=int((clock.now() - timedelta(days=10)).timestamp()))
    assert entries("refund_processed") == 0
    reconciliation.run()
    assert {(m["kind"], m["entity"], m["gateway_id"]) for m in open_mismatches()} == {
        ("missing_in_ledger", "payment", stray["id"])}
    assert entries("refund_processed") == 1


def test_a_ledger_refund_the_gateway_cannot_show_is_left_open_and_compared_later(live):
    """A refund in the ledger that the gateway lists in no window is fetched by itself.
    A 503 there is "not compared this run": not missing at the gateway, an earlier
    finding of it not marked resolved. And the window marker stays at its ledger entry:
    the next run, a day after that entry, still compares it."""
    start = clock.now()
    clock.freeze(start)
    bid = paid_booking()
    with transaction() as s:
        payments.cancel_booking(s, ledger.lock_booking(s, bid), CUSTOMER, "no")
    run()  # asked, processed at the gateway, its webhook applied
    (refund,) = emu._all("refund")
    assert refund["status"] == "processed" and entries("refund_processed") == 1
    emu.set_fields(refund["id"], amount=99,
                   created_at=int((start - timedelta(days=10)).timestamp()))

    def refund_findings() -> list[tuple[str, str]]:
        return [(m["kind"], m["last_seen_at"]) for m in open_mismatches()
                if m["gateway_id"] == refund["id"]]

    clock.freeze(start + timedelta(hours=1))
    reconciliation.run()
    seen_at = clock.now().isoformat()
    assert refund_findings() == [("amount_differs", seen_at)]
    clock.freeze(start + timedelta(hours=2))
    emu.fail_next("fetch_refund")
    reconciliation.run()
    assert refund_findings() == [("amount_differs", seen_at)]  # still open, not missing
    # Just before the entry leaves the last day: the gateway cannot show it again.
    clock.freeze(start + timedelta(hours=23))
    emu.fail_next("fetch_refund")
    reconciliation.run()
    assert refund_findings() == [("amount_differs", seen_at)]
    # Two hours on, the entry is more than a day old: compared again all the same.
    clock.freeze(start + timedelta(hours=25))
    reconciliation.run()
    assert refund_findings() == [("amount_differs", clock.now().isoformat())]
    assert {m["kind"] for m in open_mismatches()} == {"amount_differs"}


def test_a_gateway_item_our_columns_cannot_hold_is_left_out_not_a_failed_run():
    """Findings come from the gateway's list answers too: an id over 60 characters or an
    amount beyond bigint (no real answer has one) must not fail the run's other findings."""
    F = reconciliation.Finding
    odd = [F("missing_in_ledger", "payment", "pay_" + "x" * 80, None, None, 100, "long id"),
           F("missing_in_ledger", "payment", "pay_huge", None, None, 2**63, "huge amount")]
    fine = F("missing_in_ledger", "payment", "pay_ok000000001", None, None, 500, "stray")
    reconciliation._record([*odd, fine], {"payment": set()})
    with transaction() as s:
        rows = [m["gateway_id"] for m in reconciliation.list_mismatches(s)]
    assert rows == ["pay_ok000000001"]


def test_more_open_refunds_than_a_run_asks_about_are_each_asked_in_turn(live, monkeypatch):
    """A run asks the gateway about OPEN_ITEMS open rows; the next run goes on after
    them, so none is left unasked for good however many are open."""
    from core.adapters import razorpay_gateway as gw
    from core.adapters.payment_models import Refund
    from tests.test_payments_support import confirmed_booking

    monkeypatch.setattr(reconciliation, "OPEN_ITEMS", 2)
    for n in (1, 2, 3):  # one open refund a booking
        bid = confirmed_booking(f"+91981240{n:04d}")
        with transaction() as s:
            s.add(Refund(booking_id=bid, attempt=1, payment_id=f"pay_open{n:06d}",
                         gateway_refund_id=f"rfnd_open{n:06d}", amount_paise=100,
                         fee_paise=0, reason="cancelled", actor="system", status="pending"))
    asked: list[str] = []
    c = gw.client()
    real = c.refund.fetch
    monkeypatch.setattr(c.refund, "fetch", lambda rid, *a, **kw: (asked.append(rid),
                                                                    real(rid, *a, **kw))[1])
    runs = []
    for _ in range(3):
        asked.clear()
        reconciliation._add_open_items(c, {}, {})
        runs.append(sorted(asked))
    assert set(runs[0]) | set(runs[1]) == {f"rfnd_open{n:06d}" for n in (1, 2, 3)}, runs
    assert all(len(r) == 2 for r in runs), runs

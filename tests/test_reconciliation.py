"""Reconciliation: each kind of mismatch, made through the sandbox gateway, is reported."""

from __future__ import annotations

import pytest

from core.adapters import razorpay_gateway
from core.adapters.db import transaction
from core.services import ledger, payments, reconciliation
from sandbox import razorpay as emu
from tests.test_payments_support import (
    CUSTOMER,
    advance,
    ledger_checked,
    new_partner,
    paid_booking,
    run,
)

pytestmark = pytest.mark.db


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


def mismatches() -> set[tuple[str, str]]:
    with transaction() as s:
        return {(m["kind"], m["entity"]) for m in reconciliation.list_mismatches(s)}


def payment_of(booking_id: int) -> str:
    with transaction() as s:
        pid = payments._capture_payment_id(s, booking_id)
    assert pid is not None
    return pid


def test_a_clean_day_reports_nothing(live):
    partner = new_partner()
    delivered = paid_booking("+919812340001")
    leg_id = advance(delivered, partner, to="delivered")
    payments.release_leg(leg_id)
    cancelled = paid_booking("+919812340002")
    with transaction() as s:
        payments.cancel_booking(s, ledger.lock_booking(s, cancelled), CUSTOMER, "no")
    run()
    result = reconciliation.run()
    assert result["payments"] == 2 and result["refunds"] == 1 and result["transfers"] == 1
    assert result["mismatches"] == 0
    assert mismatches() == set()


def test_every_kind_of_mismatch_is_recorded_and_listed(live):
    stray = emu.create_payment(12_300)  # paid at the gateway, unknown to the ledger
    differs = paid_booking("+919812340001")
    emu.set_fields(payment_of(differs), amount=1)
    missing = paid_booking("+919812340002")
    emu.delete_object(payment_of(missing))
    refunded = paid_booking("+919812340003")
    with transaction() as s:
        payments.cancel_booking(s, ledger.lock_booking(s, refunded), CUSTOMER, "no")
    run()
    refund_id = emu._all("refund")[0]["id"]
    emu.set_fields(refund_id, amount=99)
    # A transfer someone made at the gateway outside our flow.
    other = paid_booking("+919812340004")
    razorpay_gateway.client().payment.transfer(payment_of(other), {"transfers": [
        {"account": "acc_stranger01", "amount": 500, "currency": "INR"}]})
    run()
    reconciliation.run()
    assert mismatches() == {
        ("missing_in_ledger", "payment"), ("amount_differs", "payment"),
        ("missing_at_gateway", "payment"), ("amount_differs", "refund"),
        ("missing_in_ledger", "transfer"),
    }
    with transaction() as s:
        rows = {m["gateway_id"]: m for m in reconciliation.list_mismatches(s)}
    assert rows[stray["id"]]["gateway_amount_paise"] == 12_300
    assert rows[refund_id]["gateway_amount_paise"] == 99
    # Running again records nothing new; fixing the gateway side resolves the entry.
    reconciliation.run()
    emu.set_fields(refund_id, amount=rows[refund_id]["ledger_amount_paise"])
    reconciliation.run()
    with transaction() as s:
        assert len(reconciliation.list_mismatches(s)) == 4
        every = reconciliation.list_mismatches(s, include_resolved=True)
        assert len(every) == 5
        # Operators page through them, newest first, none twice.
        pages = [reconciliation.list_mismatches(s, include_resolved=True, offset=o, limit=2)
                 for o in (0, 2, 4)]
        assert [len(p) for p in pages] == [2, 2, 1]
        assert [m["id"] for p in pages for m in p] == [m["id"] for m in every]


def test_a_transfer_on_hold_is_no_mismatch_but_a_release_missing_in_the_ledger_is(live):
    partner = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, partner, to="assigned")
    assert payments.hold_leg_transfer(leg_id) == "held"
    run()
    result = reconciliation.run()
    assert result["mismatches"] == 0 and result["transfers"] == 0
    assert mismatches() == set()
    # The hold is released at the gateway behind the ledger's back.
    (held,) = emu._all("transfer")
    emu.set_fields(held["id"], on_hold=False)
    reconciliation.run()
    with transaction() as s:
        (m,) = reconciliation.list_mismatches(s)
    assert (m["kind"], m["entity"], m["gateway_id"]) == ("missing_in_ledger", "transfer",
                                                           held["id"])
    assert m["gateway_amount_paise"] == held["amount"] and m["booking_id"] == bid


def test_a_payout_in_the_ledger_whose_transfer_is_on_hold_is_a_mismatch(live):
    partner = new_partner()
    bid = paid_booking()
    leg_id = advance(bid, partner, to="delivered")
    payments.release_leg(leg_id)
    run()
    assert reconciliation.run()["mismatches"] == 0
    (paid,) = emu._all("transfer")
    emu.set_fields(paid["id"], on_hold=True)  # the gateway still holds what we counted paid
    reconciliation.run()
    with transaction() as s:
        (m,) = reconciliation.list_mismatches(s)
    assert (m["kind"], m["entity"], m["gateway_id"]) == ("missing_at_gateway", "transfer",
                                                           paid["id"])
    assert m["ledger_amount_paise"] == paid["amount"] and m["gateway_amount_paise"] is None


def test_a_refund_made_on_its_second_attempt_reconciles_clean(live):
    from datetime import timedelta

    from tests.conftest import release_scheduled

    emu.control("refund_outcome", "failed")
    bid = paid_booking()
    with transaction() as s:
        payments.cancel_booking(s, ledger.lock_booking(s, bid), CUSTOMER, "no")
    run()
    emu.control("refund_outcome", "processed")
    assert release_scheduled(payments.refund_retry_delay() + timedelta(seconds=30)) == 1
    run()
    assert sorted(r["status"] for r in emu._all("refund")) == ["failed", "processed"]
    result = reconciliation.run()
    assert result["refunds"] == 1 and result["mismatches"] == 0
    assert mismatches() == set()


def test_a_run_after_days_without_one_covers_the_gap(live):
    """The workers were down three days: the next run starts where the last one ended,
    not a day back, so a payment of the gap unknown to the ledger is still found."""
    from datetime import timedelta

    from core import clock

    start = clock.now()
    assert reconciliation.run()["mismatches"] == 0  # the last run before the outage
    clock.freeze(start + timedelta(hours=12))
    emu.create_payment(12_300)  # paid at the gateway, unknown to the ledger
    clock.freeze(start + timedelta(days=3))
    result = reconciliation.run()
    assert result["payments"] == 1 and result["mismatches"] == 1
    assert mismatches() == {("missing_in_ledger", "payment")}

"""Ledger leftovers (r26, fixer f12).

1. A leg's transfer released in the Razorpay dashboard (behind our back) before a
   cancellation fee cut what the leg earned: the rider keeps more than he earned, and the
   excess is no longer on hold to reverse. Ops hear of it once.
2. Our own refund, processed at the gateway, its refund.processed lost: the
   reconciliation that fetched it processed applies it as that webhook would (once), not
   listing it as missing in the ledger until the poll comes hours later.

Through RQ, the real razorpay client, the sandbox emulator and its signed webhooks."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from core import clock, i18n
from core.adapters.db import transaction
from core.adapters.models import Booking
from core.adapters.payment_models import Refund
from core.adapters.queue import QUEUES
from core.services import ledger, payments, reconciliation
from sandbox import razorpay as emu
from tests.conftest import run_jobs
from tests.test_cancel_fee_platform import assigned, full_fee, quoted
from tests.test_payments_gaps import ops_alerts
from tests.test_payments_support import (
    CUSTOMER,
    failed_jobs,
    ledger_checked,
    paid_booking,
    run,
)

pytestmark = pytest.mark.db


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


def open_mismatches() -> set[tuple[str, str, str]]:
    with transaction() as s:
        return {(m["kind"], m["entity"], m["gateway_id"])
                for m in reconciliation.list_mismatches(s)}


# --- 1. a rider paid more than his leg earned -------------------------------------------------


def test_a_rider_paid_more_than_his_fee_by_a_dashboard_release_is_told_to_ops_once(live):
    """The rider is on his way, his leg's transfer held on the payment; someone releases
    the hold in the Razorpay dashboard. The customer then cancels: the leg earns only the
    cancellation fee, but the transfer, no longer on hold, cannot be cut. The payout is
    recorded as the gateway made it, and ops hear once what the rider got beyond it."""
    bid, leg_id, total = assigned()
    (held,) = emu._all("transfer")
    emu.set_fields(held["id"], on_hold=False)  # released in the dashboard behind our back
    fee = full_fee(total)
    assert held["amount"] > fee
    assert quoted(bid, cancel=True)[1] == fee
    run()
    assert not failed_jobs()
    (transfer,) = emu._all("transfer")
    assert (transfer["amount"], transfer["amount_reversed"]) == (held["amount"], 0)
    with transaction() as s:
        assert ledger.leg_payable(s, leg_id) == fee
        assert ledger.leg_paid_out(s, leg_id) == held["amount"]
        ref = s.get(Booking, bid).reference  # type: ignore[union-attr]
    expected = i18n.t("payment.ops_transfer_overpaid", i18n.DEFAULT_LANGUAGE, ref=ref,
                      leg=leg_id, paid_paise=held["amount"],
                      over_paise=held["amount"] - fee)
    assert ops_alerts() == [expected]
    # Settled again (a retry, the sweep): told once.
    payments.settle_leg_transfer(leg_id)
    payments.sweep()
    run()
    assert ops_alerts() == [expected]


# --- 2. our refund processed, its webhook lost ------------------------------------------------


def test_our_refund_found_processed_by_the_reconciliation_is_applied_not_listed(live):
    """Our refund's refund.processed was lost; the reconciliation (an hour on, before the
    6-hour poll) fetched it processed and listed it as missing in the ledger. It applies
    it as the webhook would, once: the next run, and the webhook coming late after all,
    change nothing."""
    bid = paid_booking()
    with transaction() as s:
        payments.cancel_booking(s, ledger.lock_booking(s, bid), CUSTOMER, "no")
    run_jobs(QUEUES)  # asked; the gateway (the sandbox queue) has not answered yet
    with transaction() as s:
        (row,) = s.scalars(select(Refund).where(Refund.booking_id == bid))
        rid, amount = row.gateway_refund_id, row.amount_paise
    assert row.status == "pending" and rid is not None
    emu.set_fields(rid, status="processed")  # its webhook never comes
    clock.freeze(clock.now() + timedelta(hours=1))
    reconciliation.run()
    assert open_mismatches() == set()

    def state() -> tuple[str | None, int, int, str | None]:
        with transaction() as s:
            m = ledger.booking_summary(s, bid)
            return (s.scalar(select(Refund.status).where(Refund.gateway_refund_id == rid)),
                    m["refunded_paise"], m["refunds_pending_paise"],
                    s.get(Booking, bid).status)  # type: ignore[union-attr]

    applied = state()
    assert applied[:3] == ("processed", amount, 0)
    assert applied[3] == "refunded"
    clock.freeze(clock.now() + timedelta(hours=1))
    assert reconciliation.run()["mismatches"] == 0
    late = emu.get_object(rid)  # its webhook comes after all
    assert late is not None
    assert payments.apply_settled_refund(late, f"webhook:{rid}") == "duplicate-refund-event"
    assert state() == applied
    assert open_mismatches() == set()

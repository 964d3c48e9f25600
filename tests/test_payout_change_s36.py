"""A leg's payout released to a rider's old account is not paid a second time to the new
one after ops change it (set_payout_account's pay_owed_now), while Razorpay has that
transfer processed but its transfer.processed is late, or still pending: the settle finds
it among the payment's transfers, posts it as the leg's payout (once, under the same key
the event posts it with) or waits for it, and makes none to the new account."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core.adapters.db import transaction
from core.adapters.payment_models import LegTransfer
from core.services import admin, ledger, payments, reconciliation
from sandbox import razorpay as emu
from tests.test_payments_gaps import make_relay, ops_alerts
from tests.test_payments_support import (
    advance,
    failed_jobs,
    ledger_checked,
    new_partner,
    paid_booking,
    run,
)

pytestmark = pytest.mark.db
OLD, NEW = "acc_partner0001", "acc_ravinew0001"


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


def _to(account: str) -> list[tuple[int, bool, str]]:
    return [(t["amount"] - t["amount_reversed"], bool(t["on_hold"]), t["status"])
            for t in emu._all("transfer") if t["recipient"] == account]


def _released_to_old(relay: bool) -> tuple[int, int, str, int]:
    """Ravi's leg delivered and its payout released to OLD, still pending at Razorpay.
    Returns (partner, leg, the transfer's id, the leg's payout)."""
    ravi = new_partner()
    bid = paid_booking()
    if relay:
        make_relay(bid, 3000)  # his short first leg (Rs 30): the payment has room for more
    leg_id = advance(bid, ravi, to="delivered")
    emu.hold_unprocessed(5)
    assert payments.release_leg(leg_id) == "released"
    run()  # the settle the release queued: the hold made and released, pending
    with transaction() as s:
        row = s.scalar(select(LegTransfer).where(LegTransfer.leg_id == leg_id))
        assert row is not None and row.status == "released" and row.account == OLD
        tid = str(row.transfer_id)
        payout = ledger.leg_payable(s, leg_id)
        assert ledger.leg_paid_out(s, leg_id) == 0
    assert _to(OLD) == [(payout, False, "pending")]
    return ravi, leg_id, tid, payout


def _change_account(ravi: int) -> None:
    with transaction() as s:  # nothing in his hands, nothing on hold: allowed
        assert admin.set_payout_account(s, ravi, NEW, actor="ops:1").changed


def _paid_out(leg_id: int) -> int:
    with transaction() as s:
        return ledger.leg_paid_out(s, leg_id)


@pytest.mark.parametrize("relay", [True, False])
def test_a_processed_payout_to_the_old_account_is_not_paid_again_to_the_new(live, relay):
    ravi, leg_id, tid, payout = _released_to_old(relay)
    # Razorpay processes it; its transfer.processed is queued, not delivered yet.
    emu.settle_transfer(tid)
    _change_account(ravi)
    # The settle pay_owed_now queued runs before the event is handled.
    assert payments.settle_leg_transfer(leg_id) == "paid-before"
    assert _to(NEW) == []  # before: a second transfer of the payout, to NEW
    assert _paid_out(leg_id) == payout  # his payout, to the old account, in the ledger
    with transaction() as s:
        row = s.scalar(select(LegTransfer).where(LegTransfer.leg_id == leg_id))
        assert row is not None
        assert (row.transfer_id, row.account, row.status) == (tid, OLD, "released")
        assert ledger.partner_balance(s, ravi) == 0
    run()  # the late transfer.processed, and pay_owed_now's own settle
    assert _to(NEW) == []
    assert _to(OLD) == [(payout, False, "processed")]
    assert _paid_out(leg_id) == payout  # posted once, not twice
    assert payments.settle_leg_transfer(leg_id) == "already-paid"
    # No false alert of a refused transfer (a single leg's payment had no room for one).
    assert not [a for a in ops_alerts() if "refused" in a.lower()]
    assert failed_jobs() == []
    reconciliation.run()
    with transaction() as s:
        assert [m for m in reconciliation.list_mismatches(s)
                if m["entity"] == "transfer"] == []


def test_a_payout_still_on_its_way_to_the_old_account_is_waited_for(live):
    ravi, leg_id, tid, payout = _released_to_old(relay=True)
    _change_account(ravi)
    assert payments.settle_leg_transfer(leg_id) == "transfer-pending"
    run()
    assert _to(NEW) == []
    assert _paid_out(leg_id) == 0
    emu.settle_transfer(tid)  # processed at last: its event posts the payout
    run()
    assert _paid_out(leg_id) == payout
    assert payments.settle_leg_transfer(leg_id) == "already-paid"
    assert _to(NEW) == []
    assert failed_jobs() == []


def test_a_payout_that_failed_at_the_old_account_goes_to_the_new_one_once(live):
    ravi, leg_id, tid, payout = _released_to_old(relay=True)
    _change_account(ravi)
    emu.control("transfer_outcome", "failed")
    emu.settle_transfer(tid)  # the old account could not take it
    emu.control("transfer_outcome", "")
    run()  # its transfer.failed makes it anew, to NEW (pending: hold_unprocessed)
    assert [(a, h) for a, h, _ in _to(NEW)] == [(payout, False)]
    (made,) = [t for t in emu._all("transfer") if t["recipient"] == NEW]
    emu.settle_transfer(made["id"])
    run()
    assert _paid_out(leg_id) == payout
    assert len(_to(NEW)) == 1
    assert failed_jobs() == []

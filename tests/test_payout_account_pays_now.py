"""Ops give a rider a new payout account after Razorpay refused every transfer to the old
one: what he is owed goes to the new account at once, not after the sweep's back-off
(up to 6 hours after refused transfers)."""

from __future__ import annotations

import pytest

from core.adapters.db import transaction
from core.adapters.redis_conn import redis_client
from core.services import admin, ledger, payments
from sandbox import razorpay as emu
from tests.test_money_fidelity import deliver, held_leg
from tests.test_payments_support import ledger_checked
from tests.test_razorpay_review29 import run_at_most

pytestmark = pytest.mark.db


@pytest.fixture(autouse=True)
def ledger_balanced(clean_db):
    yield from ledger_checked()


def test_a_new_payout_account_is_paid_what_is_owed_at_once(live):
    partner, bid, leg_id = held_leg(pending=1)
    deliver(bid, leg_id)
    (first,) = emu._all("transfer")
    emu.control("transfer_outcome", "failed")  # the old account takes no transfer
    emu.settle_transfer(first["id"])
    run_at_most(120)
    assert payments.sweep()["transfers"] == 1  # the streak went to the sweep's back-off
    run_at_most(120)
    assert payments.sweep()["transfers"] == 0  # ... which waits now (5 min, then more)
    with transaction() as s:
        assert ledger.leg_paid_out(s, leg_id) == 0
        owed = ledger.leg_payable(s, leg_id)
    assert redis_client().exists(f"payments:settle-backoff:{leg_id}")

    emu.control("transfer_outcome", "")  # the new account takes transfers
    with transaction() as s:
        done = admin.set_payout_account(s, partner, "acc_newaccount01", actor="ops:1")
    assert done.changed
    run_at_most(60)
    made = [t for t in emu._all("transfer") if t["notes"].get("leg_id") == str(leg_id)]
    assert [t["recipient"] for t in made].count("acc_newaccount01") == 1, made
    for t in made:
        if t["status"] in ("created", "pending"):
            emu.settle_transfer(t["id"])
    run_at_most(60)
    with transaction() as s:
        assert ledger.leg_paid_out(s, leg_id) == owed  # paid now, not in hours
    assert not redis_client().exists(f"payments:settle-backoff:{leg_id}")
